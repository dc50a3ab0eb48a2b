// Who answers each agent's queries (docs/protocol.md section 10): the
// `[[cortex.routes]]` tables in order, then `[cortex] backend`. Built by
// main before the server starts and read-only afterwards (I/O threads read
// it without a lock). The backends themselves are owned by main.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "cortex/agent_backend.hpp"
#include "protocol/topic.hpp"

namespace synapse::cortex {

struct AgentRoute {
  std::string pattern;  // an agent id, or a prefix ending in `*`
  std::string name;     // builtin, workers, workers_then_builtin, http (for logs and docs)
  // Null: the built-in engine answers.
  AgentBackend* backend = nullptr;
  // When `backend` has nobody to take a run: the built-in engine answers
  // instead of `error agent_unavailable`.
  bool fallback_builtin = false;
};

class AgentRoutes {
 public:
  void add(AgentRoute r) { routes_.push_back(std::move(r)); }
  void set_default(AgentRoute r) { default_ = std::move(r); }
  // The first route whose pattern matches `agent`, else the default.
  const AgentRoute& find(std::string_view agent) const {
    for (const auto& r : routes_) {
      if (protocol::topic_matches(r.pattern, agent)) return r;
    }
    return default_;
  }

 private:
  std::vector<AgentRoute> routes_;
  AgentRoute default_{"*", "builtin", nullptr, false};
};

}  // namespace synapse::cortex
