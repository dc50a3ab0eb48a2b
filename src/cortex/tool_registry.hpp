// The tools a caller may run, filled by providers (the built-in engine, each
// MCP server, later agent workers) and changed while clients are connected.
//
// Names are namespaced `<namespace>.<tool>`: a provider claims namespaces
// when it registers (the built-in engine `memory`, `demo`, `debug`; an MCP
// server its configured name) and may only add names inside them. A name or
// namespace another provider holds is refused, never replaced.
//
// Thread-safety: every method may be called from any thread (I/O threads
// look tools up, an MCP client's thread replaces its server's tools); one
// mutex guards the maps, held only for map operations. Tools are handed out
// as shared_ptrs, so a run keeps its tool alive after the provider replaced
// or removed it.
#pragma once

#include <boost/json.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "cortex/tool.hpp"

namespace synapse::cortex {

class ToolRegistry {
 public:
  // Claims `ns` for `provider`; false if another provider holds it.
  bool claim(const std::string& provider, const std::string& ns);
  // Adds one tool; false (and logs why) if the name is taken or outside the
  // provider's namespaces.
  bool add(const std::string& provider, std::shared_ptr<const Tool> tool);
  // Replaces every tool of `provider` with `tools` (a refreshed MCP list);
  // names refused as by add() are left out and logged. Returns how many
  // were registered.
  std::size_t replace(const std::string& provider, std::vector<std::shared_ptr<const Tool>> tools);
  void remove_provider(const std::string& provider);

  std::shared_ptr<const Tool> find(std::string_view name) const;
  // [{"name", "description", "input_schema", "provider", "available"}], by name.
  boost::json::array describe() const;
  // Bumped by every change (lets a caller notice a changed list).
  std::uint64_t version() const;

 private:
  bool add_locked(const std::string& provider, std::shared_ptr<const Tool> tool);

  struct Entry {
    std::string provider;
    std::shared_ptr<const Tool> tool;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> tools_;
  std::map<std::string, std::string, std::less<>> namespaces_;  // namespace -> provider
  std::uint64_t version_ = 0;
};

}  // namespace synapse::cortex
