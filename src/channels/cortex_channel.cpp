#include "channels/cortex_channel.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "core/crypto.hpp"
#include "channels/session.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/agent_hub.hpp"
#include "cortex/agent_routes.hpp"
#include "cortex/arg_schema.hpp"
#include "cortex/cortex.hpp"
#include "cortex/query_engine.hpp"
#include "cortex/runs.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "protocol/topic.hpp"
#include "wire/message.hpp"

namespace synapse::channels {
namespace json = boost::json;
namespace reason = protocol::reason;

namespace {

constexpr std::size_t max_ref_bytes = 128;
constexpr std::int64_t max_result_limit = 100;

class CortexChannel;

// Work on other threads reaches the channel through this: the channel clears
// `channel` when it leaves, and posted tasks find nothing to do.
struct Board {
  CortexChannel* channel = nullptr;
};

// The live events of the runs a channel follows, on their way from the
// runs' fan-out (any thread, under each run's lock) to the channel's thread.
// The first event into an empty inbox posts one task, which takes everything
// that arrived by the time it runs: a run streaming thousands of tokens a
// second costs a post per batch, not per token, and each run's events keep
// their order (they are added under the run's lock).
struct Inbox {
  std::mutex mu;
  std::vector<std::pair<std::uint64_t, cortex::RunEventPtr>> events;  // (follow key, event)
  bool posted = false;
};

using cortex::RunEnd;

// A run this connection follows: one it started, or one it attached to.
struct Follow {
  cortex::RunPtr run;
  std::uint64_t sub = 0;       // the run's subscriber id; 0 once the run ended
  std::uint64_t last_seq = 0;  // the newest event this connection was sent
  bool mine = false;           // started here: counts toward limits.max_running
  std::uint64_t key = 0;       // this channel's name for the subscription (Inbox)
};

// At most this many runs followed per connection (own and attached).
constexpr std::size_t max_follows = 256;

// An optional integer field in [lo, hi].
bool int_field(const json::object& p, std::string_view key, std::int64_t lo, std::int64_t hi, std::int64_t& out,
               std::vector<protocol::FieldError>& errors) {
  const json::value* v = p.if_contains(key);
  if (!v) return false;
  if (!v->is_int64() || v->get_int64() < lo || v->get_int64() > hi) {
    errors.push_back({std::string(key), fmt::format("must be an integer from {} to {}", lo, hi)});
    return false;
  }
  out = v->get_int64();
  return true;
}

class CortexChannel final : public Channel {
 public:
  CortexChannel(Session& session, const protocol::Envelope& env, std::string agent)
      : Channel(env),
        session_(session),
        cortex_(session.services().cortex),
        registry_(*session.services().runs),
        agent_(std::move(agent)),
        board_(std::make_shared<Board>()) {
    board_->channel = this;
    // [join_ref, null, topic, " : every event's frame starts so.
    frame_head_ = "[";
    if (const auto jr = join_ref()) {
      protocol::append_json_string(frame_head_, *jr);
    } else {
      frame_head_ += "null";
    }
    frame_head_ += ",null,";
    protocol::append_json_string(frame_head_, topic());
    frame_head_ += ",\"";
  }

  ~CortexChannel() override { leave(); }

  void handle_in(const protocol::Envelope& env) override {
    if (env.event == "query") {
      on_query(env);
    } else if (env.event == "tool") {
      on_tool(env);
    } else if (env.event == "interrupt") {
      on_interrupt(env);
    } else if (env.event == "attach") {
      on_attach(env);
    } else if (env.event == "runs") {
      on_runs(env);
    } else if (env.event == "tools") {
      json::array tools = cortex_.describe_tools();
      if (auto* hub = session_.services().hub) {
        for (auto& t : hub->describe_tools(session_.principal().tenant, agent_)) tools.push_back(std::move(t));
      }
      session_.reply_ok(env, json::object{{"tools", std::move(tools)}});
    } else if (env.event == "ping") {
      session_.reply_ok(env, json::object{{"pong", unix_ms()}});
    } else {
      session_.reply_error(env, reason::unknown_event,
                           "cortex topics take query, tool, interrupt, attach, runs, tools and ping");
    }
  }

  // Leaving (phx_leave, disconnect, crash) no longer ends runs: the channel
  // stops following them, and a run nobody follows any more goes on for
  // cortex.detach_grace_s (docs/cortex.md "Runs outlive their connection").
  void leave() override {
    if (!board_->channel) return;
    board_->channel = nullptr;
    auto follows = std::move(follows_);
    follows_.clear();
    for (auto& f : follows) {
      if (f.sub) f.run->detach(f.sub);
    }
  }

  // Server shutdown: every run this connection follows ends now with
  // interrupted / server_shutdown, sent here before the close (not posted:
  // the connection may not run posted work any more).
  void shutdown() override {
    std::vector<cortex::RunPtr> runs;
    for (const auto& f : follows_) runs.push_back(f.run);
    for (const auto& r : runs) {
      if (auto ev = r->finish(RunEnd::interrupted, json::object{{"reason", "server_shutdown"}})) {
        deliver(r->id(), ev);
        continue;
      }
      // The run ended on its own a moment ago: its terminal event may still
      // be in this thread's queue, which a closing connection no longer
      // runs. Take what this channel has not sent from the log instead
      // (deliver's seq check drops what was sent already).
      Follow* f = find_follow(r->id());
      if (!f) continue;
      const auto missing = r->attach(f->last_seq, {});
      for (const auto& ev : missing.events) deliver(r->id(), ev);
    }
  }

  // --- called on the connection's thread by posted work ---------------------

  // One event of a followed run. Events reach the channel both from the
  // backlog of an attach and live from the run's fan-out; the seq check
  // makes every event go out once, in order.
  // An event decided on this thread (an interrupt, a shutdown, a failed
  // start) goes after the live events already in the inbox.
  void deliver(const std::string& run_id, const cortex::RunEventPtr& ev) {
    drain();
    Follow* f = find_follow(run_id);
    if (!f || ev->seq <= f->last_seq) return;
    send_event(*ev);
    f->last_seq = ev->seq;
    if (ev->terminal) erase_follow(run_id);
  }

  // The inbox's events, in the order they arrived, handed to the socket as
  // one batch (one gather write, at once: the pubsub fan-out's way).
  void drain() {
    {
      std::lock_guard lock(inbox_->mu);
      inbox_->posted = false;
      if (inbox_->events.empty()) return;
      batch_.swap(inbox_->events);
    }
    for (const auto& [key, ev] : batch_) {
      Follow* f = find_key(key);
      if (!f || ev->seq <= f->last_seq) continue;
      out_.push_back(frame(*ev));
      f->last_seq = ev->seq;
      if (ev->terminal) erase_key(key);
    }
    batch_.clear();
    if (out_.empty()) return;
    out_ptrs_.clear();
    for (const auto& m : out_) out_ptrs_.push_back(&m);
    session_.socket().send_batch(out_ptrs_.data(), out_ptrs_.size());
    out_.clear();
  }

 private:
  wire::Message frame(const cortex::RunEvent& ev) const {
    // Event names are plain identifiers; one that is not gets the general encoder.
    if (ev.event.find_first_of("\"\\") == std::string::npos) {
      return wire::Message::text_parts({frame_head_, ev.event, "\",", ev.payload, "]"});
    }
    return wire::Message::text(protocol::encode_raw(
        join_ref(), std::nullopt, topic(), ev.event,
        ev.payload));
  }

  void send_event(const cortex::RunEvent& ev) { session_.socket().send(frame(ev)); }

  Follow* find_key(std::uint64_t key) {
    for (auto& f : follows_) {
      if (f.key == key) return &f;
    }
    return nullptr;
  }

  void erase_key(std::uint64_t key) {
    std::erase_if(follows_, [&](const Follow& f) { return f.key == key; });
  }

  void push(std::string_view event, const json::object& payload) {
    session_.push(topic(), join_ref(), event, payload);
  }

  Follow* find_follow(std::string_view run_id) {
    for (auto& f : follows_) {
      if (f.run->id() == run_id) return &f;
    }
    return nullptr;
  }

  void erase_follow(std::string_view run_id) {
    std::erase_if(follows_, [&](const Follow& f) { return f.run->id() == run_id; });
  }

  // A running run under `ref` that this connection follows (its own first).
  Follow* find_ref(std::string_view ref) {
    Follow* other = nullptr;
    for (auto& f : follows_) {
      if (f.run->ref() != ref || !f.run->running()) continue;
      if (f.mine) return &f;
      if (!other) other = &f;
    }
    return other;
  }

  std::size_t running_here() const {
    std::size_t n = 0;
    for (const auto& f : follows_) n += f.mine && f.run->running();
    return n;
  }

  // Subscribes this connection to `run`: the run's fan-out posts each event
  // to this connection's thread, where deliver() sends it unless it was
  // already sent.
  // `key` names the subscription in the inbox (Follow::key).
  cortex::Run::Attached subscribe(const cortex::RunPtr& run, std::optional<std::uint64_t> after_seq,
                                  std::uint64_t key) {
    return run->attach(after_seq, [poster = session_.socket().poster(), board = std::weak_ptr<Board>(board_),
                                   inbox = inbox_, key](const cortex::RunEventPtr& ev) {
      bool post = false;
      {
        std::lock_guard lock(inbox->mu);
        inbox->events.emplace_back(key, ev);
        post = !std::exchange(inbox->posted, true);
      }
      if (!post) return;
      poster([board] {
        if (auto b = board.lock(); b && b->channel) b->channel->drain();
      });
    });
  }

  // Metrics of a run's start and end; the end is counted by the run itself,
  // on whichever thread decides it, so a run ending after its connection
  // left is counted too.
  cortex::Run::OnEnd count_start() {
    auto& m = session_.services().metrics;
    m.runs_active.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t conn = session_.socket().id();
    return [&m, conn, topic = std::string(topic())](const cortex::Run& run, RunEnd o) {
      m.run_duration.observe_us((mono_ms() - run.started_mono_ms()) * 1000);
      m.runs_active.fetch_sub(1, std::memory_order_relaxed);
      metrics::RunEnd e = metrics::RunEnd::cancelled;
      switch (o) {
        case RunEnd::result: e = metrics::RunEnd::result; break;
        case RunEnd::error: e = metrics::RunEnd::error; break;
        case RunEnd::interrupted: e = metrics::RunEnd::interrupted; break;
        case RunEnd::timeout: e = metrics::RunEnd::timeout; break;
        case RunEnd::cancelled: e = metrics::RunEnd::cancelled; break;
      }
      metrics::bump(m.runs_ended[static_cast<std::size_t>(e)]);
      m.runs.ended(run.id(), metrics::run_end_name(e), unix_ms());
      spdlog::debug("conn={} topic={} run={} ref={} ended: {}", conn, topic, run.id(), run.ref(),
                    metrics::run_end_name(e));
    };
  }

  void record_start(const cortex::Run& run) {
    metrics::RunRecord rec;
    rec.id = run.id();
    rec.connection_id = session_.socket().id();
    rec.topic = topic();
    rec.ref = run.ref();
    rec.agent_id = session_.principal().agent_id;
    rec.started_at_ms = unix_ms();
    spdlog::debug("conn={} topic={} run={} ref={} started", rec.connection_id, topic(), rec.id, rec.ref);
    session_.services().metrics.runs.started(std::move(rec));
  }

  // Reads ref and timeout_ms; false (with errors) when either is malformed.
  void common_fields(const json::object& p, std::optional<std::string>& ref, std::int64_t& timeout_ms,
                     std::vector<protocol::FieldError>& errors) {
    const auto& cfg = session_.services().config;
    if (const json::value* r = p.if_contains("ref")) {
      if (!r->is_string() || r->get_string().empty() || r->get_string().size() > max_ref_bytes) {
        errors.push_back({"ref", fmt::format("must be a string of 1..{} bytes", max_ref_bytes)});
      } else {
        ref = std::string(r->get_string());
      }
    }
    timeout_ms = cfg.default_timeout_ms;
    int_field(p, "timeout_ms", 1, cfg.max_timeout_ms, timeout_ms, errors);
  }

  // The checks every run passes before it exists; replies the first failure.
  bool admit(const protocol::Envelope& env, const std::optional<std::string>& ref) {
    // A draining server lets the runs it has finish and starts none: a new
    // one would hold the drain open or be interrupted by it.
    if (const auto* d = session_.services().draining; d && d->load(std::memory_order_relaxed)) {
      json::object r = protocol::error_response(reason::draining, "the server is shutting down; retry on another node");
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return false;
    }
    if (ref && find_ref(*ref)) {
      session_.reply_error(env, protocol::error_response(reason::duplicate_ref, "a run with this ref is running"));
      return false;
    }
    const auto max_running = session_.services().config.max_running;
    if (max_running > 0 && static_cast<std::int64_t>(running_here()) >= max_running) {
      json::object r = protocol::error_response(
          reason::too_many_running, fmt::format("at most {} queries or tools run at once per connection", max_running));
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return false;
    }
    if (follows_.size() >= max_follows) drop_ended_follows();
    if (follows_.size() >= max_follows) {
      session_.reply_error(env, protocol::error_response(
                                    reason::too_many_running,
                                    fmt::format("a connection follows at most {} runs at once", max_follows)));
      return false;
    }
    return session_.take_query_token(env);
  }

  void drop_ended_follows() {
    std::erase_if(follows_, [](const Follow& f) { return !f.run->running(); });
  }

  // A new run in the node's registry, followed by this connection from its
  // first event. Its timeout is the registry's: it applies after the
  // connection is gone too.
  cortex::RunPtr start(std::optional<std::string> ref, std::int64_t timeout_ms, std::string kind, std::string tool) {
    std::string r = ref ? std::move(*ref) : fmt::format("r{}", next_ref_++);
    auto on_end = count_start();
    auto run = registry_.start(std::move(r), std::move(kind), std::move(tool), session_.principal().tenant, agent_,
                               timeout_ms, std::move(on_end));
    record_start(*run);
    const std::uint64_t key = next_key_++;
    auto a = subscribe(run, std::uint64_t{0}, key);
    follows_.push_back(Follow{run, a.sub, 0, true, key});
    return run;
  }

  // Hands the job to the worker pool, in the lane of this connection's
  // tenant and key (the pool serves lanes round-robin, docs/cortex.md
  // "Scheduling"). Queueing never waits for a worker. If the whole queue, or
  // this tenant's share of it, is full, the run is dropped and the client
  // told, before the ok reply.
  bool submit(const protocol::Envelope& env, const cortex::RunPtr& run, cortex::WorkerPool::Job job) {
    const auto& principal = session_.principal();
    const cortex::Admit admit = cortex_.submit(cortex::Lane{principal.tenant, principal.key_id}, std::move(job));
    if (admit == cortex::Admit::accepted) return true;
    refuse_overloaded(env, run, admit);
    return false;
  }

  // Drops a run its queue refused and answers the client `overloaded`: no
  // run exists for the client (it leaves the registry at once).
  void refuse_overloaded(const protocol::Envelope& env, const cortex::RunPtr& run, cortex::Admit admit) {
    const std::string ref = run->ref();
    erase_follow(run->id());
    run->finish(RunEnd::cancelled, json::object{{"reason", "overloaded"}});
    registry_.discard(run->id());
    std::string why;
    switch (admit) {
      case cortex::Admit::tenant_full:
        why = fmt::format("this tenant already has {} runs waiting for a worker (its share of the queue); retry later",
                          cortex_.tenant_queue_limit());
        break;
      case cortex::Admit::provider_full:
        why = "the tool's provider already runs as many calls as it allows (its max_concurrent); retry later";
        break;
      default:
        why = "the server's run queue is full; retry later";
        break;
    }
    json::object r = protocol::error_response("overloaded", why);
    r["ref"] = ref;
    r["retry_after_ms"] = 1000;
    session_.reply_error(env, r);
  }

  void on_query(const protocol::Envelope& env) {
    const auto& cfg = session_.services().config;
    const json::object& p = *env.payload;
    std::vector<protocol::FieldError> errors;
    std::string q;
    const json::value* qv = p.if_contains("q");
    if (!qv) {
      errors.push_back({"q", "is required"});
    } else if (!qv->is_string()) {
      errors.push_back({"q", "must be a string"});
    } else {
      q = std::string(qv->get_string());
      const auto n = cortex::utf8_length(q);
      if (n == 0 || static_cast<std::int64_t>(n) > cfg.max_query_chars) {
        errors.push_back({"q", fmt::format("must be 1..{} characters", cfg.max_query_chars)});
      }
    }
    std::int64_t limit = cfg.default_result_limit;
    int_field(p, "limit", 1, max_result_limit, limit, errors);
    std::optional<std::string> ref;
    std::int64_t timeout_ms = 0;
    common_fields(p, ref, timeout_ms, errors);
    if (!errors.empty()) {
      session_.reply_error(env, reason::invalid_payload, "the query payload is invalid", errors);
      return;
    }
    if (!admit(env, ref)) return;

    cortex::RunPtr run = start(std::move(ref), timeout_ms, "query", "");
    const cortex::AgentRoutes* routes = session_.services().routes;
    if (const cortex::AgentRoute* route = routes ? &routes->find(agent_) : nullptr; route && route->backend) {
      cortex::AgentRequest req = agent_request("query", timeout_ms);
      req.q = q;
      req.limit = limit;
      const bool taken = route->backend->start(req, run) == cortex::AgentBackend::Start::accepted;
      if (taken || !route->fallback_builtin) {
        session_.reply_ok(env, json::object{{"ref", run->ref()}, {"status", "processing"}, {"run_id", run->id()}});
        if (!taken) fail_unavailable(run);
        return;
      }
      // workers_then_builtin with nobody free: the built-in engine answers.
    }
    cortex::Caller caller{session_.principal().tenant, agent_};
    cortex::QueryRequest req{std::move(q), static_cast<std::size_t>(limit)};
    // The job holds the run, not the channel: it goes on when the
    // connection is gone, and its events go to the run's log.
    auto job = [&cx = cortex_, caller, req, run](std::size_t worker) {
      const auto& cancel = run->cancel();
      if (cancel->cancelled()) return;
      try {
        auto data = cortex::run_query(cx.memory(), cx.ranking(), cx.budget(), caller, req, *cancel, worker,
                                      [&](json::object thought) {
                                        run->emit("thought", json::object{{"thought", std::move(thought)},
                                                                          {"ts", unix_ms()}});
                                      });
        run->finish(RunEnd::result, json::object{{"data", std::move(data)}});
      } catch (const cortex::Cancelled&) {
      } catch (const std::exception& e) {
        run->finish(RunEnd::error, json::object{{"reason", "internal"}, {"message", e.what()}});
      }
    };
    if (!submit(env, run, std::move(job))) return;
    session_.reply_ok(env, json::object{{"ref", run->ref()}, {"status", "processing"}, {"run_id", run->id()}});
  }

  void on_tool(const protocol::Envelope& env) {
    const json::object& p = *env.payload;
    std::vector<protocol::FieldError> errors;
    std::string name;
    const json::value* tv = p.if_contains("tool");
    if (!tv) {
      errors.push_back({"tool", "is required"});
    } else if (!tv->is_string()) {
      errors.push_back({"tool", "must be a string"});
    } else {
      name = std::string(tv->get_string());
    }
    json::object args;
    if (const json::value* av = p.if_contains("args")) {
      if (!av->is_object()) {
        errors.push_back({"args", "must be an object"});
      } else {
        args = av->get_object();
      }
    }
    std::optional<std::string> ref;
    std::int64_t timeout_ms = 0;
    common_fields(p, ref, timeout_ms, errors);
    if (!errors.empty()) {
      session_.reply_error(env, reason::invalid_payload, "the tool payload is invalid", errors);
      return;
    }
    // A shared_ptr: the run keeps its tool even if its provider replaces it.
    const std::shared_ptr<const cortex::Tool> tool = cortex_.find_tool(name);
    if (!tool) {
      if (auto* hub = session_.services().hub) {
        if (auto spec = hub->find_worker_tool(session_.principal().tenant, agent_, name)) {
          start_worker_tool(env, *hub, *spec, std::move(ref), timeout_ms, std::move(args));
          return;
        }
      }
      json::object r = protocol::error_response(reason::unknown_tool, "no tool named " + name + "; see the tools event");
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return;
    }
    if (name == cortex::debug_crash_tool) {
      throw std::runtime_error("debug.crash: fault injected into the cortex channel handler");
    }
    if (auto arg_errors = cortex::check_args(tool->spec().input_schema, args); !arg_errors.empty()) {
      json::object r = protocol::error_response(reason::invalid_args, "the arguments do not match the tool's schema",
                                                arg_errors);
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return;
    }
    if (!admit(env, ref)) return;

    cortex::RunPtr run = start(std::move(ref), timeout_ms, "tool", name);
    if (!start_tool(env, run, *tool, std::move(args))) return;
    session_.reply_ok(env, json::object{{"ref", run->ref()}, {"status", "running"}, {"run_id", run->id()}});
  }

  // What an agent backend is asked (the worker protocol's `run` push).
  cortex::AgentRequest agent_request(std::string kind, std::int64_t timeout_ms) const {
    const auto& principal = session_.principal();
    cortex::AgentRequest req;
    req.kind = std::move(kind);
    req.caller = cortex::Caller{principal.tenant, agent_, principal.key_id};
    req.deadline_ms = unix_ms() + timeout_ms;
    return req;
  }

  // A run its backend could not take (no worker with free capacity) ends
  // at once, right after the ok reply, sent here on this thread: the client
  // never waits in silence (docs/protocol.md section 10).
  void fail_unavailable(const cortex::RunPtr& run) {
    if (auto ev = run->finish(RunEnd::error, json::object{{"reason", "agent_unavailable"},
                                                          {"message", "no agent worker of " + agent_ +
                                                                          " is free to take this run"}})) {
      deliver(run->id(), ev);
    }
  }

  // A tool a worker of this agent declared: it goes to such a worker (the
  // route does not matter), and with none free ends `agent_unavailable`.
  void start_worker_tool(const protocol::Envelope& env, cortex::AgentHub& hub, const cortex::ToolSpec& spec,
                         std::optional<std::string> ref, std::int64_t timeout_ms, json::object args) {
    if (auto arg_errors = cortex::check_args(spec.input_schema, args); !arg_errors.empty()) {
      json::object r = protocol::error_response(reason::invalid_args, "the arguments do not match the tool's schema",
                                                arg_errors);
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return;
    }
    if (!admit(env, ref)) return;
    cortex::RunPtr run = start(std::move(ref), timeout_ms, "tool", spec.name);
    cortex::AgentRequest req = agent_request("tool", timeout_ms);
    req.tool = spec.name;
    req.args = std::move(args);
    const bool taken = hub.start(req, run) == cortex::AgentBackend::Start::accepted;
    session_.reply_ok(env, json::object{{"ref", run->ref()}, {"status", "running"}, {"run_id", run->id()}});
    if (!taken) fail_unavailable(run);
  }

  // Starts `tool` through the asynchronous seam (cortex/tool.hpp). Its
  // progress and outcome go to the run (its log and whoever follows it),
  // from whatever thread the provider reports on; an outcome after the run
  // ended (interrupt, timeout) is ignored by Run::finish. Interrupt cancels
  // the run's token, whose hook reaches the provider (an MCP call sends
  // notifications/cancelled). A refused start (the worker queue is full, or
  // an MCP server's max_concurrent calls are in flight) is answered like a
  // refused submit. A tool that streams text takes the
  // token sink in start() (cortex/runs.hpp, TokenScope).
  bool start_tool(const protocol::Envelope& env, const cortex::RunPtr& run, const cortex::Tool& tool,
                  json::object args) {
    const auto& principal = session_.principal();
    cortex::ToolCall call;
    call.args = std::move(args);
    call.caller = cortex::Caller{principal.tenant, agent_, principal.key_id};
    call.cancel = run->cancel();
    call.callbacks.progress = [run](double progress, double total, std::string message) {
      json::object update{{"progress", progress}};
      if (total >= 0) update["total"] = total;
      if (!message.empty()) update["message"] = std::move(message);
      run->emit("progress", std::move(update));
    };
    call.callbacks.done = [run](cortex::ToolOutcome out) {
      using K = cortex::ToolOutcome::Kind;
      if (out.kind == K::result) {
        run->finish(RunEnd::result, json::object{{"data", std::move(out.data)}});
        return;
      }
      const char* why = out.kind == K::tool_error ? "tool_error" : out.kind == K::unavailable ? "tool_unavailable" : "internal";
      run->finish(RunEnd::error, json::object{{"reason", why}, {"message", std::move(out.message)}});
    };
    cortex::TokenScope tokens([run](std::string_view delta) { run->emit_token(delta); });
    const cortex::Admit admit = tool.start(std::move(call)).admit;
    if (admit == cortex::Admit::accepted) return true;
    refuse_overloaded(env, run, admit);
    return false;
  }

  // interrupt {ref | run_id, reason?}: any connection following the run, or
  // of the run's agent and tenant, may end it; the terminal event reaches
  // every connection that follows it.
  void on_interrupt(const protocol::Envelope& env) {
    const json::object& p = *env.payload;
    std::vector<protocol::FieldError> errors;
    const json::value* rv = p.if_contains("ref");
    const json::value* iv = p.if_contains("run_id");
    if (rv && !rv->is_string()) errors.push_back({"ref", "must be a string"});
    if (iv && !iv->is_string()) errors.push_back({"run_id", "must be a string"});
    if (!rv && !iv) errors.push_back({"ref", "is required (or run_id)"});
    std::string why = "client";
    if (const json::value* w = p.if_contains("reason")) {
      if (!w->is_string() || w->get_string().size() > 256) {
        errors.push_back({"reason", "must be a string of at most 256 bytes"});
      } else {
        why = std::string(w->get_string());
      }
    }
    if (!errors.empty()) {
      session_.reply_error(env, reason::invalid_payload, "the interrupt payload is invalid", errors);
      return;
    }
    cortex::RunPtr run;
    if (iv && iv->is_string()) {
      run = registry_.find(iv->get_string());
      if (run && !visible(*run)) {
        session_.reply_error(env, reason::forbidden, "that run belongs to another agent or tenant");
        return;
      }
    } else if (Follow* f = find_ref(rv->get_string())) {
      run = f->run;
    }
    if (!run || !run->running()) {
      json::object r = protocol::error_response(reason::not_found, "nothing runs under that ref");
      if (rv && rv->is_string()) r["ref"] = rv->get_string();
      if (iv && iv->is_string()) r["run_id"] = iv->get_string();
      session_.reply_error(env, r);
      return;
    }
    json::object ok_reply{{"ref", run->ref()}, {"run_id", run->id()}};
    if (run->remote()) {
      // A proxy: its node decides, and the `interrupted` (or the result that
      // beat it) comes back through replay(); finish() only forwards.
      session_.reply_ok(env, std::move(ok_reply));
      run->finish(RunEnd::interrupted, json::object{{"reason", why}});
      return;
    }
    // Decided here, first: a worker may finish the run between running()
    // above and this line. Only the call that ends the run answers ok, so a
    // client never reads `ok` and then a `result` (the race seen under ASan).
    if (auto ev = run->finish(RunEnd::interrupted, json::object{{"reason", why}})) {
      session_.reply_ok(env, std::move(ok_reply));
      deliver(run->id(), ev);
      return;
    }
    json::object r = protocol::error_response(reason::not_found, "the run ended before the interrupt");
    if (rv && rv->is_string()) r["ref"] = rv->get_string();
    if (iv && iv->is_string()) r["run_id"] = iv->get_string();
    session_.reply_error(env, r);
  }

  bool visible(const cortex::Run& run) const {
    return run.tenant() == session_.principal().tenant && run.agent_id() == agent_;
  }

  // attach {run_id, after_seq?}: follow a run of this agent and tenant from
  // this connection. With after_seq, exactly the events after it, then the
  // live ones; without, a `snapshot` (tokens folded into one text, the
  // thoughts, the last progress) and then the events after it. The backlog
  // is sent here, on this thread, right after the reply; live events are
  // posted behind it and deliver() skips what the backlog already sent.
  void on_attach(const protocol::Envelope& env) {
    const json::object& p = *env.payload;
    std::vector<protocol::FieldError> errors;
    const json::value* iv = p.if_contains("run_id");
    if (!iv || !iv->is_string()) errors.push_back({"run_id", "is required and must be a string"});
    std::optional<std::uint64_t> after;
    if (const json::value* av = p.if_contains("after_seq"); av && !av->is_null()) {
      if (av->is_int64() && av->get_int64() >= 0) {
        after = static_cast<std::uint64_t>(av->get_int64());
      } else if (av->is_uint64()) {
        after = av->get_uint64();
      } else {
        errors.push_back({"after_seq", "must be a non-negative integer"});
      }
    }
    if (!errors.empty()) {
      session_.reply_error(env, reason::invalid_payload, "the attach payload is invalid", errors);
      return;
    }
    const std::string id(iv->get_string());
    cortex::RunPtr run = registry_.find(id);
    if (!run && registry_.observer()) {
      locate_remote(env, id, after);
      return;
    }
    attach_found(env, id, run, after);
  }

  // Cluster mode: a run another node executes. The lookup runs on the Redis
  // link's thread; its answer comes back to this connection's thread, where
  // the attach goes on as for a local run (the proxy holds the replayed log).
  // The reply needs the envelope's fields, so they are copied.
  void locate_remote(const protocol::Envelope& env, const std::string& id, std::optional<std::uint64_t> after) {
    struct Pending {
      std::optional<std::string> join_ref, ref;
      std::string topic;
    };
    auto pending = std::make_shared<Pending>();
    if (env.join_ref) pending->join_ref = std::string(*env.join_ref);
    if (env.ref) pending->ref = std::string(*env.ref);
    pending->topic = std::string(env.topic);
    registry_.observer()->locate(
        id, session_.principal().tenant, agent_,
        [poster = session_.socket().poster(), board = std::weak_ptr<Board>(board_), pending, id,
         after](cortex::RunPtr run, std::string why) {
          poster([board, pending, id, after, run = std::move(run), why = std::move(why)] {
            auto b = board.lock();
            if (!b || !b->channel) return;
            protocol::Envelope e;
            if (pending->join_ref) e.join_ref = *pending->join_ref;
            if (pending->ref) e.ref = *pending->ref;
            e.topic = pending->topic;
            e.event = "attach";
            b->channel->attach_located(e, id, run, why, after);
          });
        });
  }

 public:
  void attach_located(const protocol::Envelope& env, const std::string& id, const cortex::RunPtr& run,
                      const std::string& why, std::optional<std::uint64_t> after) {
    if (!run && why == "forbidden") {
      session_.reply_error(env, reason::forbidden, "that run belongs to another agent or tenant");
      return;
    }
    if (!run && why == "unavailable") {
      json::object r = protocol::error_response("unavailable", "the cluster's run logs cannot be read now; retry");
      r["run_id"] = id;
      session_.reply_error(env, r);
      return;
    }
    attach_found(env, id, run, after);
  }

 private:
  void attach_found(const protocol::Envelope& env, const std::string& id, const cortex::RunPtr& run,
                    std::optional<std::uint64_t> after) {
    if (!run) {
      json::object r = protocol::error_response("unknown_run", "no such run on this server, or it has expired");
      r["run_id"] = id;
      session_.reply_error(env, r);
      return;
    }
    if (!visible(*run)) {
      session_.reply_error(env, reason::forbidden, "that run belongs to another agent or tenant");
      return;
    }
    if (Follow* f = find_follow(id)) {
      if (f->sub) run->detach(f->sub);
      erase_follow(id);
    }
    if (follows_.size() >= max_follows) drop_ended_follows();
    if (follows_.size() >= max_follows) {
      session_.reply_error(env, protocol::error_response(
                                    reason::too_many_running,
                                    fmt::format("a connection follows at most {} runs at once", max_follows)));
      return;
    }
    const std::uint64_t key = next_key_++;
    auto a = subscribe(run, after, key);
    json::object r{{"run_id", id}, {"ref", run->ref()}, {"status", a.status}, {"last_seq", a.last_seq}};
    if (a.truncated) r["truncated"] = true;
    session_.reply_ok(env, r);
    std::uint64_t sent = after.value_or(0);
    if (a.snapshot) {
      sent = static_cast<std::uint64_t>((*a.snapshot)["seq"].to_number<std::int64_t>());
      push("snapshot", *a.snapshot);
    }
    bool ended = false;
    for (const auto& ev : a.events) {
      send_event(*ev);
      sent = ev->seq;
      ended = ended || ev->terminal;
    }
    if (a.sub && !ended) follows_.push_back(Follow{run, a.sub, sent, false, key});
  }

  // runs {}: this agent's active and recent runs on this node, newest first.
  void on_runs(const protocol::Envelope& env) {
    json::array out;
    for (const auto& i : registry_.list(session_.principal().tenant, agent_)) {
      json::object o{{"run_id", i.run_id}, {"ref", i.ref},         {"kind", i.kind},
                     {"status", i.status}, {"started_at", i.started_at_ms}, {"last_seq", i.last_seq},
                     {"attached", i.attached}};
      if (!i.tool.empty()) o["tool"] = i.tool;
      if (i.ended_at_ms) o["ended_at"] = *i.ended_at_ms;
      out.push_back(std::move(o));
    }
    session_.reply_ok(env, json::object{{"runs", std::move(out)}});
  }

  Session& session_;
  cortex::Cortex& cortex_;
  cortex::RunRegistry& registry_;
  std::string agent_;
  std::shared_ptr<Board> board_;
  std::vector<Follow> follows_;
  std::uint64_t next_ref_ = 1;
  std::uint64_t next_key_ = 1;
  std::string frame_head_;  // [join_ref, null, topic, "
  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>();
  std::vector<std::pair<std::uint64_t, cortex::RunEventPtr>> batch_;  // drain()'s, kept for its capacity
  std::vector<wire::Message> out_;                                     // drain()'s frames, likewise
  std::vector<const wire::Message*> out_ptrs_;
};

}  // namespace

std::unique_ptr<Channel> join_cortex(Session& session, const protocol::Envelope& env) {
  const auto& principal = session.principal();
  const std::string agent(protocol::cortex_agent(env.topic));
  if (principal.worker) {
    session.reply_error(env, reason::forbidden, "a worker credential serves agents on agent: topics; it cannot query");
    return nullptr;
  }
  if (agent != principal.agent_id && !principal.admin) {
    session.reply_error(env, reason::forbidden, "this credential's agent is " + principal.agent_id);
    return nullptr;
  }
  auto channel = std::make_unique<CortexChannel>(session, env, agent);
  session.reply_ok(env, json::object{{"agent_id", agent}, {"session", core::hex_encode(core::random_bytes(8))}});
  return channel;
}

}  // namespace synapse::channels
