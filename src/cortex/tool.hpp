// The tool seam. Every tool, whoever provides it (the built-in engine, an MCP
// server, later an agent worker), implements one asynchronous interface:
//
//   start(args, call) -> StartResult
//
// `start` never blocks (I/O threads call it). The provider reports progress
// and, exactly once, an outcome through the ToolCallbacks, from whatever
// thread it runs on; the caller's callbacks post to the thread that owns the
// run. Cancellation reaches the provider through the run's CancelToken: the
// provider registers a hook with `on_cancel` (an MCP call sends
// `notifications/cancelled` from it) and may still report an outcome
// afterwards, which the caller ignores because the run already ended.
//
// Tools live in a ToolRegistry (cortex/tool_registry.hpp) as shared_ptrs: a
// run holds its tool, so a provider may replace or remove its tools while
// runs of them are still in flight.
#pragma once

#include <boost/json.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "cortex/cancel.hpp"
#include "cortex/fair_queue.hpp"

namespace synapse::cortex {

// Who a run acts for: memories belong to a tenant, `agent` scope to an agent.
// `key` is the API key (a token counts as its minting key): the worker pool's
// fairness lane.
struct Caller {
  std::string tenant;
  std::string agent_id;
  std::string key = {};  // defaulted: a query's Caller names only tenant and agent
};

struct ToolSpec {
  std::string name;
  std::string description;
  boost::json::object input_schema;
};

// How a call ended, as the provider saw it.
struct ToolOutcome {
  enum class Kind {
    result,       // `data` is the tool's result
    tool_error,   // the tool failed; `message` is for the client
    unavailable,  // the provider cannot run it now (MCP child down, hung, restarted)
    internal,     // a bug or an unexpected failure in Synapse
  };
  Kind kind = Kind::result;
  boost::json::value data;
  std::string message;
};

struct ToolCallbacks {
  // progress(value, total, message); total < 0 means "no total". Any thread.
  std::function<void(double, double, std::string)> progress;
  // Called at most once, from any thread. Not called for a call that noticed
  // its cancellation (the run already ended).
  std::function<void(ToolOutcome)> done;
};

struct ToolCall {
  boost::json::object args;  // already checked against the tool's input_schema
  Caller caller;
  std::shared_ptr<CancelToken> cancel;
  ToolCallbacks callbacks;
};

// Whether a call was taken. A refused call reports nothing through its
// callbacks; the caller answers the client (`overloaded`).
struct StartResult {
  Admit admit = Admit::accepted;
};

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const ToolSpec& spec() const = 0;
  // False while the provider cannot run it (an MCP server restarting); the
  // `tools` event shows it, and a call ends at once with `tool_unavailable`.
  virtual bool available() const { return true; }
  virtual StartResult start(ToolCall call) const = 0;
};

// --- tools that block: the built-in engine --------------------------------
//
// A built-in tool is written as a blocking function run on a cortex worker
// (it uses that worker's SQLite connection). PooledTool (cortex.cpp) puts it
// behind the asynchronous interface: start() queues it on the worker pool,
// whose worker completes the call.

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

class BlockingTool {
 public:
  virtual ~BlockingTool() = default;
  virtual const ToolSpec& spec() const = 0;
  // Returns the result, throws ToolError to fail or Cancelled when it noticed
  // the cancellation.
  virtual boost::json::value run(const boost::json::object& args, ToolContext& ctx) const = 0;
};

}  // namespace synapse::cortex
