// The tool interface: a name, a description, a JSON input schema, and
// run(args, context) on a worker thread. A tool reports progress through the
// context, checks the context's cancel token, returns its result as JSON, and
// throws to fail (the client sees `error` / `tool_error`).
#pragma once

#include <boost/json.hpp>
#include <functional>
#include <optional>
#include <string>

#include "cortex/cancel.hpp"

namespace synapse::cortex {

// Who a run acts for: memories belong to a tenant, `agent` scope to an agent.
struct Caller {
  std::string tenant;
  std::string agent_id;
};

struct ToolSpec {
  std::string name;
  std::string description;
  boost::json::object input_schema;
};

struct ToolContext {
  const Caller& caller;
  const CancelToken& cancel;
  // progress(value, total, message); total < 0 means "no total".
  std::function<void(double, double, std::string)> progress;
  std::size_t worker;  // which worker runs it (per-worker resources)
};

// A tool's own failure, with a message meant for the client.
struct ToolError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const ToolSpec& spec() const = 0;
  virtual boost::json::value run(const boost::json::object& args, ToolContext& ctx) const = 0;
};

}  // namespace synapse::cortex
