// The agent seam: who answers a `query` (and a worker-provided `tool`) on
// `cortex:<agent_id>`. The built-in memory engine is one answer; agent
// workers connected over the WebSocket (cortex/agent_hub.*) and streaming
// HTTP backends (cortex/http_backend.*) are the others. Each is an
// AgentBackend; the cortex channel picks one per agent id from the routing
// table (`[cortex] backend` and `[[cortex.routes]]`, docs/protocol.md
// section 10).
//
// Contract. start() never blocks (I/O threads call it). When it returns
// `accepted`, the backend owns the run's outcome: it applies the events of
// the worker protocol to the run (apply_agent_event below) from whatever
// thread it runs on, and makes sure the run ends exactly once, with
// `error agent_unavailable` if whatever serves it goes away. Run::finish is
// the arbiter of "exactly once": the first terminal event wins, and
// anything the backend reports after the run ended (an interrupt, a
// timeout) is dropped by the run. Cancellation reaches the backend through
// run->cancel()->on_cancel(): a worker is sent `cancel {run_id}`, an HTTP
// request is closed. `unavailable` means nothing could take the run now
// (no live worker with free capacity): the run is untouched, and the
// caller falls back to the built-in engine or ends it with
// `agent_unavailable`, never waits.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "cortex/runs.hpp"
#include "cortex/tool.hpp"

namespace synapse::cortex {

// What a backend is asked to do: the `run` push of the worker protocol.
struct AgentRequest {
  std::string kind;  // "query" or "tool"
  std::string q;     // kind "query"
  std::int64_t limit = 0;
  std::string tool;         // kind "tool": the tool's name
  boost::json::object args;  // kind "tool": already checked against its schema
  Caller caller;
  std::int64_t deadline_ms = 0;  // unix ms at which the run times out
};

// The `run` push payload for `req` and `run_id` (worker protocol, section 10).
boost::json::object agent_run_payload(std::string_view run_id, const AgentRequest& req);

class AgentBackend {
 public:
  enum class Start { accepted, unavailable };
  virtual ~AgentBackend() = default;
  virtual Start start(const AgentRequest& req, const RunPtr& run) = 0;
};

// Applies one event of the worker protocol (`thought`, `token`, `progress`,
// `result`, `error`) to `run`: checks its shape, maps it onto the run log
// (a token's `text` becomes the client's `delta`; an error's reason is kept
// when it is a plain identifier, else `agent_error`) and emits or finishes.
enum class AgentEventResult {
  applied,     // appended to the run (or ended it)
  run_ended,   // the run had already ended: dropped, not the sender's fault
  bad_event,   // unknown event name
  bad_payload  // malformed payload; `why` says what
};
AgentEventResult apply_agent_event(Run& run, std::string_view event, const boost::json::object& payload,
                                   std::string* why = nullptr);

}  // namespace synapse::cortex
