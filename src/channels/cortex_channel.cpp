#include "channels/cortex_channel.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "auth/crypto.hpp"
#include "channels/session.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/arg_schema.hpp"
#include "cortex/cortex.hpp"
#include "cortex/query_engine.hpp"
#include "metrics/metrics.hpp"
#include "protocol/topic.hpp"

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

enum class Outcome { result, error, interrupted, timeout, cancelled };

struct Run {
  std::uint64_t id;
  std::string ref;
  std::shared_ptr<cortex::CancelToken> cancel;
  std::int64_t started_ms;
  std::uint64_t seq = 0;
};

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
      : session_(session),
        cortex_(session.services().cortex),
        topic_(env.topic),
        agent_(std::move(agent)),
        board_(std::make_shared<Board>()) {
    if (env.join_ref) join_ref_ = std::string(*env.join_ref);
    board_->channel = this;
  }

  ~CortexChannel() override { leave(); }

  void handle_in(const protocol::Envelope& env) override {
    if (env.event == "query") {
      on_query(env);
    } else if (env.event == "tool") {
      on_tool(env);
    } else if (env.event == "interrupt") {
      on_interrupt(env);
    } else if (env.event == "tools") {
      session_.reply_ok(env, json::object{{"tools", cortex_.describe_tools()}});
    } else if (env.event == "ping") {
      session_.reply_ok(env, json::object{{"pong", unix_ms()}});
    } else {
      session_.reply_error(env, reason::unknown_event, "cortex topics take query, tool, interrupt, tools and ping");
    }
  }

  void leave() override {
    if (!board_->channel) return;
    board_->channel = nullptr;
    for (auto& r : runs_) {
      r.cancel->cancel();
      count_end(Outcome::cancelled, r);
    }
    runs_.clear();
  }

  void shutdown() override {
    while (!runs_.empty()) {
      runs_.front().cancel->cancel();
      finish(runs_.front().id, Outcome::interrupted, json::object{{"reason", "server_shutdown"}});
    }
  }

  // --- called on the connection's thread by posted work ---------------------

  void emit(std::uint64_t run_id, std::string_view event, json::object payload) {
    Run* r = find_run(run_id);
    if (!r) return;  // the run already ended: nothing follows its terminal event
    if (event == "thought") {
      push(event, json::object{{"ref", r->ref}, {"seq", ++r->seq}, {"thought", std::move(payload)}, {"ts", unix_ms()}});
    } else {
      payload["ref"] = r->ref;
      push(event, payload);
    }
  }

  // The one place a run's terminal event is sent; whichever of result, error,
  // interrupt, timeout or disconnect comes first wins, the rest find no run.
  void finish(std::uint64_t run_id, Outcome outcome, json::object payload) {
    auto it = std::find_if(runs_.begin(), runs_.end(), [&](const Run& r) { return r.id == run_id; });
    if (it == runs_.end()) return;
    Run run = std::move(*it);
    runs_.erase(it);
    run.cancel->cancel();
    count_end(outcome, run);
    json::object p{{"ref", run.ref}};
    std::string_view event;
    switch (outcome) {
      case Outcome::result:
        event = "result";
        p["status"] = "success";
        p["data"] = std::move(payload["data"]);
        p["latency_ms"] = mono_ms() - run.started_ms;
        break;
      case Outcome::timeout:
      case Outcome::error:
        event = "error";
        p["reason"] = std::move(payload["reason"]);
        p["message"] = std::move(payload["message"]);
        break;
      case Outcome::interrupted:
        event = "interrupted";
        p["reason"] = std::move(payload["reason"]);
        break;
      case Outcome::cancelled:
        return;
    }
    push(event, p);
  }

 private:
  void push(std::string_view event, const json::object& payload) {
    session_.push(topic_, join_ref_ ? std::optional<std::string_view>(*join_ref_) : std::nullopt, event, payload);
  }

  // The admin API's name for a run: unique in the process.
  std::string run_key(const Run& r) const { return fmt::format("{}.{}", session_.socket().id(), r.id); }

  void count_end(Outcome o, const Run& run) {
    auto& m = session_.services().metrics;
    m.run_duration.observe_us((mono_ms() - run.started_ms) * 1000);
    m.runs_active.fetch_sub(1, std::memory_order_relaxed);
    metrics::RunEnd e = metrics::RunEnd::cancelled;
    switch (o) {
      case Outcome::result: e = metrics::RunEnd::result; break;
      case Outcome::error: e = metrics::RunEnd::error; break;
      case Outcome::interrupted: e = metrics::RunEnd::interrupted; break;
      case Outcome::timeout: e = metrics::RunEnd::timeout; break;
      case Outcome::cancelled: e = metrics::RunEnd::cancelled; break;
    }
    metrics::bump(m.runs_ended[static_cast<std::size_t>(e)]);
    m.runs.ended(run_key(run), metrics::run_end_name(e), unix_ms());
    spdlog::debug("conn={} topic={} run={} ref={} ended: {}", session_.socket().id(), topic_, run_key(run), run.ref,
                  metrics::run_end_name(e));
  }

  Run* find_run(std::uint64_t id) {
    for (auto& r : runs_) {
      if (r.id == id) return &r;
    }
    return nullptr;
  }

  Run* find_ref(std::string_view ref) {
    for (auto& r : runs_) {
      if (r.ref == ref) return &r;
    }
    return nullptr;
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
    if (ref && find_ref(*ref)) {
      session_.reply_error(env, protocol::error_response(reason::duplicate_ref, "a run with this ref is running"));
      return false;
    }
    const auto max_running = session_.services().config.max_running;
    if (max_running > 0 && static_cast<std::int64_t>(runs_.size()) >= max_running) {
      json::object r = protocol::error_response(
          reason::too_many_running, fmt::format("at most {} queries or tools run at once per connection", max_running));
      if (ref) r["ref"] = *ref;
      session_.reply_error(env, r);
      return false;
    }
    return session_.take_query_token(env);
  }

  Run& start(std::optional<std::string> ref, std::int64_t timeout_ms) {
    Run r;
    r.id = next_run_++;
    r.ref = ref ? std::move(*ref) : fmt::format("r{}", next_ref_++);
    r.cancel = std::make_shared<cortex::CancelToken>();
    r.started_ms = mono_ms();
    runs_.push_back(std::move(r));
    session_.services().metrics.runs_active.fetch_add(1, std::memory_order_relaxed);
    {
      const Run& added = runs_.back();
      metrics::RunRecord rec;
      rec.id = run_key(added);
      rec.connection_id = session_.socket().id();
      rec.topic = topic_;
      rec.ref = added.ref;
      rec.agent_id = session_.principal().agent_id;
      rec.started_at_ms = unix_ms();
      spdlog::debug("conn={} topic={} run={} ref={} started", rec.connection_id, topic_, rec.id, rec.ref);
      session_.services().metrics.runs.started(std::move(rec));
    }
    const std::uint64_t id = runs_.back().id;
    session_.socket().after(timeout_ms, [board = std::weak_ptr<Board>(board_), id, timeout_ms] {
      auto b = board.lock();
      if (!b || !b->channel) return;
      b->channel->finish(id, Outcome::timeout,
                         json::object{{"reason", "timeout"},
                                      {"message", fmt::format("the run did not finish within {} ms", timeout_ms)}});
    });
    return runs_.back();
  }

  // A function that runs `f(channel)` on the connection's thread, if the
  // channel is still there.
  auto relay() {
    return [poster = session_.socket().poster(), board = std::weak_ptr<Board>(board_)](
               std::function<void(CortexChannel&)> f) {
      poster([board, f = std::move(f)] {
        if (auto b = board.lock(); b && b->channel) f(*b->channel);
      });
    };
  }

  // Hands the job to the worker pool, in the lane of this connection's
  // tenant and key (the pool serves lanes round-robin, docs/cortex.md
  // "Scheduling"). Queueing never waits for a worker. If the whole queue, or
  // this tenant's share of it, is full, the run is dropped and the client
  // told, before the ok reply.
  bool submit(const protocol::Envelope& env, Run& run, cortex::WorkerPool::Job job) {
    const auto& principal = session_.principal();
    const cortex::Admit admit = cortex_.submit(cortex::Lane{principal.tenant, principal.key_id}, std::move(job));
    if (admit == cortex::Admit::accepted) return true;
    refuse_overloaded(env, run, admit);
    return false;
  }

  // Drops a run its queue refused and answers the client `overloaded`.
  void refuse_overloaded(const protocol::Envelope& env, Run& run, cortex::Admit admit) {
    const std::string ref = run.ref;
    auto it = std::find_if(runs_.begin(), runs_.end(), [&](const Run& r) { return r.id == run.id; });
    count_end(Outcome::cancelled, *it);  // before erase: `run` refers to the element
    runs_.erase(it);
    json::object r = protocol::error_response(
        "overloaded", admit == cortex::Admit::tenant_full
                          ? fmt::format("this tenant already has {} runs waiting for a worker (its share of the "
                                        "queue); retry later",
                                        cortex_.tenant_queue_limit())
                          : std::string("the server's run queue is full; retry later"));
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

    Run& run = start(std::move(ref), timeout_ms);
    const std::uint64_t id = run.id;
    auto relay_fn = relay();
    cortex::Caller caller{session_.principal().tenant, agent_};
    cortex::QueryRequest req{std::move(q), static_cast<std::size_t>(limit)};
    auto job = [&cx = cortex_, relay_fn, caller, req, id, cancel = run.cancel](std::size_t worker) {
      if (cancel->cancelled()) return;
      try {
        auto data = cortex::run_query(cx.memory(), cx.ranking(), cx.budget(), caller, req, *cancel, worker,
                                      [&](json::object thought) {
                                        relay_fn([id, t = std::move(thought)](CortexChannel& c) mutable {
                                          c.emit(id, "thought", std::move(t));
                                        });
                                      });
        relay_fn([id, d = std::move(data)](CortexChannel& c) mutable {
          c.finish(id, Outcome::result, json::object{{"data", std::move(d)}});
        });
      } catch (const cortex::Cancelled&) {
      } catch (const std::exception& e) {
        relay_fn([id, msg = std::string(e.what())](CortexChannel& c) {
          c.finish(id, Outcome::error, json::object{{"reason", "internal"}, {"message", msg}});
        });
      }
    };
    const std::string ref_copy = run.ref;
    if (!submit(env, run, std::move(job))) return;
    session_.reply_ok(env, json::object{{"ref", ref_copy}, {"status", "processing"}});
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

    Run& run = start(std::move(ref), timeout_ms);
    const std::string ref_copy = run.ref;
    if (!start_tool(env, run, *tool, std::move(args))) return;
    session_.reply_ok(env, json::object{{"ref", ref_copy}, {"status", "running"}});
  }

  // Starts `tool` through the asynchronous seam (cortex/tool.hpp). Its
  // progress and outcome are posted back to this connection's thread; an
  // outcome after the run ended (interrupt, timeout) finds no run and is
  // dropped. Interrupt cancels the run's token, whose hook reaches the
  // provider (an MCP call sends notifications/cancelled). A refused start
  // (the worker queue is full) is answered like a refused submit.
  bool start_tool(const protocol::Envelope& env, Run& run, const cortex::Tool& tool, json::object args) {
    const std::uint64_t id = run.id;
    auto relay_fn = relay();
    const auto& principal = session_.principal();
    cortex::ToolCall call;
    call.args = std::move(args);
    call.caller = cortex::Caller{principal.tenant, agent_, principal.key_id};
    call.cancel = run.cancel;
    call.callbacks.progress = [relay_fn, id](double progress, double total, std::string message) {
      json::object update{{"progress", progress}};
      if (total >= 0) update["total"] = total;
      if (!message.empty()) update["message"] = std::move(message);
      relay_fn([id, u = std::move(update)](CortexChannel& c) mutable { c.emit(id, "progress", std::move(u)); });
    };
    call.callbacks.done = [relay_fn, id](cortex::ToolOutcome out) {
      relay_fn([id, out = std::move(out)](CortexChannel& c) mutable {
        using K = cortex::ToolOutcome::Kind;
        if (out.kind == K::result) {
          c.finish(id, Outcome::result, json::object{{"data", std::move(out.data)}});
          return;
        }
        const char* why = out.kind == K::tool_error ? "tool_error" : out.kind == K::unavailable ? "tool_unavailable" : "internal";
        c.finish(id, Outcome::error, json::object{{"reason", why}, {"message", std::move(out.message)}});
      });
    };
    const cortex::Admit admit = tool.start(std::move(call)).admit;
    if (admit == cortex::Admit::accepted) return true;
    refuse_overloaded(env, run, admit);
    return false;
  }

  void on_interrupt(const protocol::Envelope& env) {
    const json::object& p = *env.payload;
    std::vector<protocol::FieldError> errors;
    const json::value* rv = p.if_contains("ref");
    if (!rv || !rv->is_string()) errors.push_back({"ref", "is required and must be a string"});
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
    const std::string ref(rv->get_string());
    Run* run = find_ref(ref);
    if (!run) {
      json::object r = protocol::error_response(reason::not_found, "nothing runs under that ref");
      r["ref"] = ref;
      session_.reply_error(env, r);
      return;
    }
    const std::uint64_t id = run->id;
    session_.reply_ok(env, json::object{{"ref", ref}});
    finish(id, Outcome::interrupted, json::object{{"reason", why}});
  }

  Session& session_;
  cortex::Cortex& cortex_;
  std::string topic_;
  std::string agent_;
  std::optional<std::string> join_ref_;
  std::shared_ptr<Board> board_;
  std::vector<Run> runs_;
  std::uint64_t next_run_ = 1;
  std::uint64_t next_ref_ = 1;
};

}  // namespace

std::unique_ptr<Channel> join_cortex(Session& session, const protocol::Envelope& env) {
  const auto& principal = session.principal();
  const std::string agent(protocol::cortex_agent(env.topic));
  if (agent != principal.agent_id && !principal.admin) {
    session.reply_error(env, reason::forbidden, "this credential's agent is " + principal.agent_id);
    return nullptr;
  }
  auto channel = std::make_unique<CortexChannel>(session, env, agent);
  session.reply_ok(env, json::object{{"agent_id", agent}, {"session", auth::hex_encode(auth::random_bytes(8))}});
  return channel;
}

}  // namespace synapse::channels
