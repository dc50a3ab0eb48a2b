// The per-node run registry: cortex runs (queries and tools) owned below the
// channels, so that a run outlives the connection that started it
// (protocol.md section 9 "Runs"; docs/cortex.md "Run logs and retention").
//
// Thread ownership. Each Run has its own mutex guarding its log, its
// subscribers and its status; workers append events under it, I/O threads
// attach and detach under it, and the registry's timer thread ends runs and
// expires them under it. Fan-out happens under the run's mutex, so the order
// of a run's events is the same for every subscriber: a subscriber's
// `deliver` only hands the event to its connection's poster (never blocks,
// never calls back into the run). The registry's own mutex guards the index
// of runs and the byte totals; it is taken before a run's mutex, never after
// (code that holds a run's mutex never takes the registry's).
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "cortex/cancel.hpp"

namespace synapse::cortex {

struct RunOptions {
  std::int64_t retention_ms = 300'000;         // an ended run's log is kept this long
  std::int64_t detach_grace_ms = 60'000;       // a run nobody follows goes on this long; 0: ended at once
  std::size_t max_bytes_per_run = 1 << 20;     // one run's log
  std::size_t max_bytes_total = 64 << 20;      // every run's log on this node
  bool keep = true;  // false: events are numbered and relayed, not kept or folded (cortex.run_log)
};

enum class RunEnd { result, error, interrupted, timeout, cancelled };

// One event of a run's log; immutable once appended, shared by every
// subscriber and the log itself.
struct RunEvent {
  std::uint64_t seq = 0;
  std::string event;    // thought, token, progress, result, error, interrupted
  std::string payload;  // the push payload, serialized once (carries ref, run_id, seq)
  bool terminal = false;
  std::size_t bytes() const { return event.size() + payload.size() + 48; }
};
using RunEventPtr = std::shared_ptr<const RunEvent>;

// What `runs {}` and the admin API show of a run.
struct RunInfo {
  std::string run_id;
  std::string ref;
  std::string kind;  // "query" or "tool"
  std::string tool;  // the tool's name for kind "tool"
  std::string tenant;
  std::string agent_id;
  std::string status;  // running, result, error, interrupted, timeout, cancelled
  std::int64_t started_at_ms = 0;
  std::optional<std::int64_t> ended_at_ms;
  std::uint64_t last_seq = 0;
  std::size_t attached = 0;
  std::size_t log_bytes = 0;
};

class RunRegistry;
class Run;

// Cluster mode's view of the runs (cluster/run_mirror.*): told of every
// local run and event so that it can copy them to Redis, and asked to act
// for remote runs (proxies of runs that execute on another node). Every
// call must return at once: `appended` is called under the run's mutex
// (that is what keeps a run's events in one order everywhere), the others
// on whichever thread acts, an I/O thread included.
struct RunObserver {
  virtual ~RunObserver() = default;
  virtual void started(const Run& run, std::int64_t timeout_ms) = 0;
  virtual void appended(const Run& run, const RunEventPtr& ev) = 0;
  // A client interrupted a remote run: the node that executes it decides.
  virtual void interrupt_remote(const Run& run, const std::string& reason) = 0;
  // The last subscriber on this node left a remote run.
  virtual void unfollowed(const Run& run) = 0;
  // A run this node does not hold: looks for it on the other nodes and, if
  // it is of `tenant` and `agent`, follows it from here. `done` gets the
  // proxy (its backlog already replayed), or null and a reason:
  // unknown_run, forbidden or unavailable. It runs on another thread.
  using Located = std::function<void(std::shared_ptr<Run>, std::string reason)>;
  virtual void locate(std::string run_id, std::string tenant, std::string agent, Located done) = 0;
};

class Run : public std::enable_shared_from_this<Run> {
 public:
  using Deliver = std::function<void(const RunEventPtr&)>;
  // Called once, when the run's end is decided (on whichever thread decides).
  using OnEnd = std::function<void(const Run&, RunEnd)>;

  const std::string& id() const { return id_; }
  const std::string& ref() const { return ref_; }
  const std::string& tenant() const { return tenant_; }
  const std::string& agent_id() const { return agent_; }
  const std::shared_ptr<CancelToken>& cancel() const { return cancel_; }
  std::int64_t started_mono_ms() const { return started_mono_; }

  // Appends a non-terminal event (`payload` gets ref, run_id and seq) and
  // fans it out. Ignored once the run has ended.
  void emit(std::string_view event, boost::json::object payload);
  // emit("token", {"delta": text}) without a JSON tree: the payload's bytes
  // are written directly (the same keys in the same order). False when the
  // run has ended (nothing appended).
  bool emit_token(std::string_view text);
  // The one place a run's terminal event is decided: the first call wins and
  // returns its event; later calls (a result after an interrupt, a timeout
  // after a result...) return null. `payload` holds data / reason / message.
  RunEventPtr finish(RunEnd end, boost::json::object payload);

  // Subscribes and hands back, under the same lock, what the subscriber is
  // missing, so nothing falls between the backlog and the live events.
  // With `after_seq`: every kept event after it (`truncated` when some were
  // dropped by the byte bound: then `snapshot` is set and the events follow
  // it). Without: a compacted snapshot, then the events after it.
  struct Attached {
    std::uint64_t sub = 0;
    std::optional<boost::json::object> snapshot;  // the `snapshot` push payload
    std::vector<RunEventPtr> events;
    bool truncated = false;
    std::uint64_t last_seq = 0;
    std::string status;
  };
  Attached attach(std::optional<std::uint64_t> after_seq, Deliver deliver);
  // Removes a subscriber; the last one leaving a running run starts its grace.
  void detach(std::uint64_t sub);

  RunInfo info() const;
  bool running() const;
  // A proxy of a run executing on another node (cluster mode): its events
  // come from that node through replay(); finish() from a client is
  // forwarded there instead of deciding here.
  bool remote() const noexcept { return !origin_.empty(); }
  const std::string& origin() const noexcept { return origin_; }
  const std::string& kind() const noexcept { return kind_; }
  const std::string& tool() const noexcept { return tool_; }
  // Appends an event of a remote run exactly as its node logged it (its
  // payload already carries ref, run_id and seq) and fans it out. Events at
  // or below the last seq are dropped (a copy seen twice). The terminal
  // event ends the proxy.
  void replay(std::uint64_t seq, std::string_view event, std::string payload, bool terminal);
  // Ends a proxy here only (its node is gone, or this node stops): the run
  // itself is not told.
  RunEventPtr end_locally(RunEnd end, boost::json::object payload);

  Run(RunRegistry& registry, std::string id, std::string ref, std::string kind, std::string tool, std::string tenant,
      std::string agent, OnEnd on_end);

 private:
  friend class RunRegistry;
  struct Sub {
    std::uint64_t id;
    Deliver deliver;
  };
  // Appends under mu_ (the per-run byte bound applied).
  RunEventPtr append_locked(std::string_view event, boost::json::object& payload, bool terminal);
  // Keeps `ev` (already numbered and serialized) in the log and tells the observer.
  void keep_locked(const RunEventPtr& ev);
  void fold_text_locked(std::string_view delta);
  void fold_locked(std::string_view event, const boost::json::object& payload);
  boost::json::object snapshot_locked() const;
  void trim_locked();
  RunEventPtr finish_here(RunEnd end, boost::json::object payload);

  RunRegistry& registry_;
  const std::string id_, ref_, kind_, tool_, tenant_, agent_;
  const std::shared_ptr<CancelToken> cancel_ = std::make_shared<CancelToken>();
  std::int64_t started_unix_;  // set before the run is shared (adopt() gives a proxy its node's)
  const std::int64_t started_mono_;
  OnEnd on_end_;
  std::string origin_;  // the executing node of a proxy; empty for a local run
  // `,"ref":<ref>,"run_id":<id>,"seq":`: what follows a token's delta in its payload.
  const std::string token_tail_;

  mutable std::mutex mu_;
  std::string status_ = "running";
  std::optional<std::int64_t> ended_unix_;
  std::deque<RunEventPtr> log_;
  std::size_t log_bytes_ = 0;
  std::uint64_t next_seq_ = 1;
  std::uint64_t dropped_max_seq_ = 0;  // the newest seq the byte bound dropped
  // The compaction of every event so far (kept even when the log drops
  // events): token deltas folded into one text, the thoughts, the last progress.
  std::string text_;
  bool text_truncated_ = false;
  boost::json::array thoughts_;
  std::optional<boost::json::object> progress_;
  std::uint64_t folded_seq_ = 0;  // seq of the last non-terminal event folded
  std::vector<Sub> subs_;
  std::uint64_t next_sub_ = 1;
  std::uint64_t detach_gen_ = 0;  // bumped whenever the subscriber count changes
};

using RunPtr = std::shared_ptr<Run>;

class RunRegistry {
 public:
  explicit RunRegistry(RunOptions options);
  ~RunRegistry();
  RunRegistry(const RunRegistry&) = delete;
  RunRegistry& operator=(const RunRegistry&) = delete;

  // A new run, with a fresh unguessable id; its timeout is armed here so it
  // applies whether or not anybody follows it.
  RunPtr start(std::string ref, std::string kind, std::string tool, std::string tenant, std::string agent,
               std::int64_t timeout_ms, Run::OnEnd on_end);
  // Null when unknown or expired.
  RunPtr find(std::string_view run_id) const;
  // Active and recent runs of one agent of one tenant, newest first.
  std::vector<RunInfo> list(std::string_view tenant, std::string_view agent) const;
  // Every run this node holds (admin API), newest first.
  std::vector<RunInfo> list_all() const;
  // Removes a run at once (one its queue refused: for the client it never existed).
  void discard(const std::string& run_id) { expire(run_id); }
  // The proxy of remote run `id` executing on node `origin` (cluster mode);
  // the existing one if this node already has it. No timeout is armed: its
  // node decides how it ends.
  RunPtr adopt(const std::string& id, std::string origin, std::string ref, std::string kind, std::string tool,
               std::string tenant, std::string agent, std::int64_t started_at_ms);
  // Set once, before any run starts (cluster mode).
  void set_observer(RunObserver* o) { observer_ = o; }
  RunObserver* observer() const { return observer_; }
  // Ends every running run with interrupted / server_shutdown.
  void shutdown();
  // How many runs are still running (the server's drain waits for 0).
  std::size_t running_count() const;

  const RunOptions& options() const { return options_; }
  std::size_t bytes() const;

 private:
  friend class Run;
  // Runs `task` on the registry's timer thread after `delay_ms`.
  void after(std::int64_t delay_ms, std::function<void()> task);
  // Called by a run (without its lock held) after its log changed size.
  void account(std::ptrdiff_t delta);
  void ended(const std::string& id);
  void expire(const std::string& id);
  void timer_loop();

  RunOptions options_;
  RunObserver* observer_ = nullptr;
  mutable std::mutex mu_;
  std::map<std::string, RunPtr, std::less<>> runs_;
  std::deque<std::string> ended_order_;  // oldest ended first: what the total bound drops first
  std::size_t total_bytes_ = 0;
  std::uint64_t counter_ = 0;

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;
  bool stopping_ = false;
  std::thread timer_thread_;  // last: started when the rest exists
};

// Token deltas. The tool seam (tool.hpp) has no token callback yet, so the
// channel opens a TokenScope around Tool::start(): a tool that streams text
// takes current_token_sink() there, on the I/O thread, and calls the sink
// from any thread afterwards (each call is one `token` event of the run).
// Outside a scope the sink is empty.
using TokenSink = std::function<void(std::string_view)>;
TokenSink current_token_sink();
class TokenScope {
 public:
  explicit TokenScope(TokenSink sink);
  ~TokenScope();
  TokenScope(const TokenScope&) = delete;
  TokenScope& operator=(const TokenScope&) = delete;

 private:
  TokenSink previous_;
};

// `demo.tokens {count, interval_ms}`: streams `count` token deltas ("t1 ",
// "t2 ", ...), one every `interval_ms`, on the cortex's workers, then returns
// {"tokens": count}: a stand-in for a model's stream.
class Cortex;
class Tool;
std::shared_ptr<const Tool> make_demo_tokens_tool(Cortex& cortex);

std::string_view run_end_name(RunEnd e);

}  // namespace synapse::cortex
