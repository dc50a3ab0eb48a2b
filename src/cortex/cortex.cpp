#include "cortex/cortex.hpp"

namespace synapse::cortex {

Cortex::Cortex(const CortexOptions& options, const std::string& db_path)
    : options_(options), memory_(db_path, options.workers), pool_(options.workers, options.queue_limit, options.tenant_queue_limit) {}

Cortex::~Cortex() { pool_.stop(); }

void Cortex::add_tool(std::unique_ptr<Tool> tool) { tools_.push_back(std::move(tool)); }

const Tool* Cortex::find_tool(std::string_view name) const {
  for (const auto& t : tools_) {
    if (t->spec().name == name) return t.get();
  }
  return nullptr;
}

boost::json::array Cortex::describe_tools() const {
  boost::json::array out;
  for (const auto& t : tools_) {
    const ToolSpec& s = t->spec();
    out.push_back(boost::json::object{{"name", s.name}, {"description", s.description}, {"input_schema", s.input_schema}});
  }
  return out;
}

}  // namespace synapse::cortex
