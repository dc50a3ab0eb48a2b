// The agent workers connected to this node (docs/protocol.md section 10),
// and the AgentBackend that hands runs to them.
//
// A worker is one join of an `agent:<agent_id>` (or `agent:*`) topic. The
// channel that holds the join registers it here with a WorkerPush: the one
// way the hub talks to the worker. A push posts to the worker connection's
// own I/O thread and returns at once, so the hub never waits on a worker,
// and nothing a worker does ever waits on a client (a run's events go to
// the run log, which hands them to each client's thread).
//
// Ownership of runs. start() gives a run to the least-loaded live worker of
// the run's tenant and agent with free capacity (in-flight runs <
// capacity; ties go to the worker that got a run least recently) and
// records run -> worker. Only that worker's events reach the run; a
// worker's terminal event, the run's end by anyone else (interrupt,
// timeout: the run's cancel hook pushes `cancel` to the worker) and the
// worker's going away each end the ownership exactly once. Run::finish
// stays the arbiter of the run's one terminal event.
//
// Thread-safety. Workers live on different I/O threads; runs are cancelled
// from any thread (an I/O thread's interrupt, the registry's timer). One
// mutex guards the worker and ownership tables, held for table operations
// only: no Run method, no push and no tool start is called under it (a
// run's finish() runs its cancel hooks, which take this mutex).
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cortex/agent_backend.hpp"
#include "cortex/tool.hpp"
#include "protocol/errors.hpp"

namespace synapse::cortex {

class ToolRegistry;

// What a worker declared when it joined.
struct WorkerSpec {
  std::string tenant;
  std::string agent;  // an agent id, or "*": every agent of the tenant
  std::size_t capacity = 1;
  std::vector<ToolSpec> tools;  // tools it provides (`<namespace>.<name>`)
};

// Sends `event` with `payload` on the worker's agent topic. Thread-safe and
// non-blocking (it posts to the worker connection's thread); after the
// connection closed it does nothing.
using WorkerPush = std::function<void(std::string event, boost::json::object payload)>;

struct HubOptions {
  bool redispatch_unstarted = true;  // cortex.redispatch_unstarted
};

// The answer to one worker event: `reason` empty means ok (`dropped` when
// the run had already ended: not the worker's fault); otherwise an error
// reply with `reason` and `message`, counted against the worker's budget.
struct HubReply {
  std::string reason;
  std::string message;
  bool dropped = false;
  bool pending = false;  // call_tool: the answer comes later, through the ToolReply
  std::vector<protocol::FieldError> errors;  // invalid_args: the field errors
  static HubReply ok() { return {}; }
  static HubReply error(std::string reason, std::string message) {
    HubReply r;
    r.reason = std::move(reason);
    r.message = std::move(message);
    return r;
  }
};

class AgentHub final : public AgentBackend {
 public:
  AgentHub(HubOptions options, ToolRegistry& tools);
  ~AgentHub() override;
  AgentHub(const AgentHub&) = delete;
  AgentHub& operator=(const AgentHub&) = delete;

  // A worker joined; returns its id (never 0).
  std::uint64_t add_worker(WorkerSpec spec, WorkerPush push);
  // The worker's join ended (leave, disconnect, kill, heartbeat timeout).
  // Each run it owned ends with `error agent_unavailable`, except one that
  // streamed nothing yet and was not re-dispatched before, which goes to
  // another worker when one can take it (options.redispatch_unstarted).
  void remove_worker(std::uint64_t id);

  // AgentBackend: `unavailable` when no live worker of the run's tenant and
  // agent has free capacity (for kind "tool": none that declared the tool).
  Start start(const AgentRequest& req, const RunPtr& run) override;

  // thought, token, progress, result, error from worker `worker`.
  HubReply on_event(std::uint64_t worker, std::string_view event, const boost::json::object& payload);
  // on_event("token", {run_id, text}) for a payload read without a JSON tree
  // (protocol/flat_frame.hpp): the same checks and answers. A field that is
  // absent is nullopt.
  HubReply on_token(std::uint64_t worker, std::optional<std::string_view> run_id, std::optional<std::string_view> text);

  // call_tool {run_id, name, args}: runs a Synapse tool as the run's caller.
  // Errors known at once are returned; otherwise `pending`, and `reply` is
  // called exactly once, from any thread, with (true, {"data"}) or (false,
  // {"reason", "message"}) (`run_ended` when the run ends first).
  using ToolReply = std::function<void(bool ok, boost::json::object response)>;
  HubReply call_tool(std::uint64_t worker, const boost::json::object& payload, ToolReply reply);

  // A tool a live worker of this tenant and agent declared.
  std::optional<ToolSpec> find_worker_tool(std::string_view tenant, std::string_view agent,
                                           std::string_view name) const;
  // The declared tools of this tenant's and agent's live workers, in the
  // shape of the `tools` event (provider "worker").
  boost::json::array describe_tools(std::string_view tenant, std::string_view agent) const;

  // Free capacity (capacity - in flight) per tenant and agent ("*" for
  // workers of every agent), for other nodes of a cluster (cluster/agent_relay.*).
  struct Free {
    std::string tenant;
    std::string agent;
    std::size_t free = 0;
  };
  std::vector<Free> free_capacity() const;

  struct Stats {
    std::size_t workers = 0;
    std::size_t runs = 0;  // runs owned by a worker now
  };
  Stats stats() const;

 private:
  // Lookups by a run id's view, without making a string of it.
  struct IdHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using IdSet = std::unordered_set<std::string, IdHash, std::equal_to<>>;
  struct Worker {
    std::uint64_t id = 0;
    WorkerSpec spec;
    WorkerPush push;
    std::size_t inflight = 0;
    std::uint64_t last_assigned = 0;
    // Runs this worker owned that have ended: their late events are
    // answered `dropped`, not `unknown_run`. Bounded, oldest forgotten first.
    std::deque<std::string> ended;
    IdSet ended_set;
  };
  struct Owned {
    RunPtr run;
    AgentRequest req;
    std::uint64_t worker = 0;
    bool streamed = false;      // the worker sent an event for it
    bool redispatched = false;  // already given to a second worker once
  };

  // Under mu_: the worker to take `req` (not `exclude`), or null.
  std::shared_ptr<Worker> pick_locked(const AgentRequest& req, std::uint64_t exclude);
  // Under mu_: `w` no longer owns `run_id`.
  void release_locked(Worker& w, std::string_view run_id);
  // The run `worker` owns as `run_id`, taken for one of its events (a
  // terminal event ends the ownership); null with the answer in `reply`
  // when it owns no such run.
  RunPtr claim(std::uint64_t worker, std::string_view run_id, bool terminal, HubReply& reply);
  // The run's cancel hook: it ended without the worker's terminal event.
  void on_run_cancelled(const std::string& run_id);

  const HubOptions options_;
  ToolRegistry& tools_;
  mutable std::mutex mu_;
  std::map<std::uint64_t, std::shared_ptr<Worker>> workers_;
  std::unordered_map<std::string, Owned, IdHash, std::equal_to<>> runs_;
  std::uint64_t next_worker_ = 1;
  std::uint64_t tick_ = 0;
};

}  // namespace synapse::cortex
