#include "cortex/agent_hub.hpp"

#include <spdlog/spdlog.h>

#include <atomic>

#include "cortex/arg_schema.hpp"
#include "cortex/tool_registry.hpp"

namespace synapse::cortex {
namespace json = boost::json;

namespace {

// Ended runs remembered per worker (for `dropped` instead of `unknown_run`).
constexpr std::size_t max_remembered_ended = 4096;

bool serves(const WorkerSpec& spec, std::string_view tenant, std::string_view agent) {
  return spec.tenant == tenant && (spec.agent == "*" || spec.agent == agent);
}

const ToolSpec* declared(const WorkerSpec& spec, std::string_view name) {
  for (const auto& t : spec.tools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace

AgentHub::AgentHub(HubOptions options, ToolRegistry& tools) : options_(options), tools_(tools) {}

AgentHub::~AgentHub() = default;

std::uint64_t AgentHub::add_worker(WorkerSpec spec, WorkerPush push) {
  auto w = std::make_shared<Worker>();
  w->spec = std::move(spec);
  w->push = std::move(push);
  std::lock_guard lock(mu_);
  w->id = next_worker_++;
  workers_.emplace(w->id, w);
  spdlog::info("agent worker {} joined: tenant={} agent={} capacity={} tools={}", w->id, w->spec.tenant,
               w->spec.agent, w->spec.capacity, w->spec.tools.size());
  return w->id;
}

std::shared_ptr<AgentHub::Worker> AgentHub::pick_locked(const AgentRequest& req, std::uint64_t exclude) {
  std::shared_ptr<Worker> best;
  for (const auto& [id, w] : workers_) {
    if (id == exclude || w->inflight >= w->spec.capacity) continue;
    if (!serves(w->spec, req.caller.tenant, req.caller.agent_id)) continue;
    if (req.kind == "tool" && !declared(w->spec, req.tool)) continue;
    if (!best || w->inflight < best->inflight ||
        (w->inflight == best->inflight && w->last_assigned < best->last_assigned)) {
      best = w;
    }
  }
  return best;
}

void AgentHub::release_locked(Worker& w, std::string_view run_id) {
  if (w.inflight > 0) --w.inflight;
  if (w.ended_set.insert(std::string(run_id)).second) {
    w.ended.emplace_back(run_id);
    if (w.ended.size() > max_remembered_ended) {
      w.ended_set.erase(w.ended.front());
      w.ended.pop_front();
    }
  }
}

AgentBackend::Start AgentHub::start(const AgentRequest& req, const RunPtr& run) {
  std::shared_ptr<Worker> w;
  {
    std::lock_guard lock(mu_);
    w = pick_locked(req, 0);
    if (!w) return Start::unavailable;
    ++w->inflight;
    w->last_assigned = ++tick_;
    runs_[run->id()] = Owned{run, req, w->id, false, false};
  }
  w->push("run", agent_run_payload(run->id(), req));
  // Registered after the push: both post to the worker's thread in this
  // order, so a run cancelled at once still reaches the worker as `run`
  // then `cancel`. The hub outlives the run registry (main), so `this` is
  // safe whenever the hook runs.
  run->cancel()->on_cancel([this, id = run->id()] { on_run_cancelled(id); });
  return Start::accepted;
}

void AgentHub::on_run_cancelled(const std::string& run_id) {
  std::shared_ptr<Worker> w;
  RunPtr run;
  {
    std::lock_guard lock(mu_);
    auto it = runs_.find(run_id);
    // Not found: the worker's own terminal event ended it, or the worker
    // went away; neither needs a cancel.
    if (it == runs_.end()) return;
    run = std::move(it->second.run);
    if (auto wi = workers_.find(it->second.worker); wi != workers_.end()) {
      w = wi->second;
      release_locked(*w, run_id);
    }
    runs_.erase(it);
  }
  if (!w) return;
  // The run's status says why (interrupted, timeout); the hook runs after
  // Run::finish released the run's lock.
  w->push("cancel", json::object{{"run_id", run_id}, {"reason", run->info().status}});
}

void AgentHub::remove_worker(std::uint64_t id) {
  std::vector<std::pair<std::shared_ptr<Worker>, RunPtr>> moved;  // re-dispatched: (new worker, run)
  std::vector<RunPtr> failed;
  std::vector<AgentRequest> moved_req;
  {
    std::lock_guard lock(mu_);
    auto wi = workers_.find(id);
    if (wi == workers_.end()) return;
    workers_.erase(wi);
    for (auto it = runs_.begin(); it != runs_.end();) {
      Owned& o = it->second;
      if (o.worker != id) {
        ++it;
        continue;
      }
      if (options_.redispatch_unstarted && !o.streamed && !o.redispatched) {
        if (auto other = pick_locked(o.req, id)) {
          ++other->inflight;
          other->last_assigned = ++tick_;
          o.worker = other->id;
          o.redispatched = true;
          moved.emplace_back(other, o.run);
          moved_req.push_back(o.req);
          ++it;
          continue;
        }
      }
      failed.push_back(std::move(o.run));
      it = runs_.erase(it);
    }
  }
  spdlog::info("agent worker {} left: {} runs re-dispatched, {} ended agent_unavailable", id, moved.size(),
               failed.size());
  for (std::size_t i = 0; i < moved.size(); ++i) {
    moved[i].first->push("run", agent_run_payload(moved[i].second->id(), moved_req[i]));
  }
  for (const auto& run : failed) {
    run->finish(RunEnd::error, json::object{{"reason", "agent_unavailable"},
                                            {"message", "the agent worker serving this run went away"}});
  }
}

RunPtr AgentHub::claim(std::uint64_t worker, std::string_view run_id, bool terminal, HubReply& reply) {
  std::lock_guard lock(mu_);
  auto wi = workers_.find(worker);
  if (wi == workers_.end()) {
    reply = HubReply::error("unknown_run", "this worker has left");
    return nullptr;
  }
  auto it = runs_.find(run_id);
  if (it == runs_.end() || it->second.worker != worker) {
    if (wi->second->ended_set.contains(run_id)) {
      reply = HubReply{};
      reply.dropped = true;
    } else {
      reply = HubReply::error("unknown_run", "this worker was not given run " + std::string(run_id));
    }
    return nullptr;
  }
  RunPtr run = it->second.run;
  if (terminal) {
    // Ownership ends before the run does: the cancel hook that
    // Run::finish triggers then finds nothing to cancel.
    release_locked(*wi->second, run_id);
    runs_.erase(it);
  } else {
    it->second.streamed = true;
  }
  return run;
}

HubReply AgentHub::on_event(std::uint64_t worker, std::string_view event, const json::object& payload) {
  const bool terminal = event == "result" || event == "error";
  if (!terminal && event != "thought" && event != "token" && event != "progress") {
    return HubReply::error("unknown_event", "a worker sends thought, token, progress, result, error or call_tool");
  }
  const json::value* idv = payload.if_contains("run_id");
  if (!idv || !idv->is_string()) return HubReply::error("invalid_payload", "run_id must be a string");
  HubReply reply;
  const RunPtr run = claim(worker, idv->get_string(), terminal, reply);
  if (!run) return reply;
  std::string why;
  switch (apply_agent_event(*run, event, payload, &why)) {
    case AgentEventResult::applied: return HubReply::ok();
    case AgentEventResult::run_ended: {
      HubReply r;
      r.dropped = true;
      return r;
    }
    case AgentEventResult::bad_event: return HubReply::error("unknown_event", why);
    case AgentEventResult::bad_payload: break;
  }
  return HubReply::error("invalid_payload", why);
}

HubReply AgentHub::on_token(std::uint64_t worker, std::optional<std::string_view> run_id,
                            std::optional<std::string_view> text) {
  if (!run_id) return HubReply::error("invalid_payload", "run_id must be a string");
  HubReply reply;
  const RunPtr run = claim(worker, *run_id, false, reply);
  if (!run) return reply;
  // apply_agent_event's order: an ended run drops the event before its
  // payload is looked at.
  const bool applied = text ? run->emit_token(*text) : false;
  if (!applied && (text || !run->running())) {
    HubReply r;
    r.dropped = true;
    return r;
  }
  if (!text) return HubReply::error("invalid_payload", "text must be a string");
  return HubReply::ok();
}

HubReply AgentHub::call_tool(std::uint64_t worker, const json::object& payload, ToolReply reply) {
  const json::value* idv = payload.if_contains("run_id");
  if (!idv || !idv->is_string()) return HubReply::error("invalid_payload", "run_id must be a string");
  const json::value* nv = payload.if_contains("name");
  if (!nv || !nv->is_string()) return HubReply::error("invalid_payload", "name must be a string");
  json::object args;
  if (const json::value* av = payload.if_contains("args")) {
    if (!av->is_object()) return HubReply::error("invalid_payload", "args must be an object");
    args = av->get_object();
  }
  const std::string run_id(idv->get_string());
  RunPtr run;
  Caller caller;
  {
    std::lock_guard lock(mu_);
    auto it = runs_.find(run_id);
    if (it == runs_.end() || it->second.worker != worker) {
      auto wi = workers_.find(worker);
      if (wi != workers_.end() && wi->second->ended_set.contains(run_id)) {
        return HubReply::error("run_ended", "run " + run_id + " has ended");
      }
      return HubReply::error("unknown_run", "this worker was not given run " + run_id);
    }
    run = it->second.run;
    caller = it->second.req.caller;
  }
  const std::string name(nv->get_string());
  const std::shared_ptr<const Tool> tool = tools_.find(name);
  if (!tool) return HubReply::error("unknown_tool", "no Synapse tool named " + name);
  if (!tool->available()) return HubReply::error("tool_unavailable", name + " is not available now");
  if (auto errors = check_args(tool->spec().input_schema, args); !errors.empty()) {
    HubReply r = HubReply::error("invalid_args", "the arguments do not match the tool's schema");
    r.errors = std::move(errors);
    return r;
  }
  // Exactly one answer: the tool's outcome, or `run_ended` when the run
  // ends first (the tool is cancelled with the run, and a cancelled tool
  // reports nothing).
  auto answered = std::make_shared<std::atomic<bool>>(false);
  auto once = [answered, reply = std::move(reply)](bool ok, json::object response) {
    if (!answered->exchange(true)) reply(ok, std::move(response));
  };
  ToolCall call;
  call.args = std::move(args);
  call.caller = caller;
  call.cancel = run->cancel();
  call.callbacks.progress = [](double, double, std::string) {};
  call.callbacks.done = [once](ToolOutcome out) {
    using K = ToolOutcome::Kind;
    if (out.kind == K::result) {
      once(true, json::object{{"data", std::move(out.data)}});
      return;
    }
    const char* why = out.kind == K::tool_error ? "tool_error" : out.kind == K::unavailable ? "tool_unavailable" : "internal";
    once(false, json::object{{"reason", why}, {"message", std::move(out.message)}});
  };
  const StartResult started = tool->start(std::move(call));
  if (started.admit != Admit::accepted) {
    answered->store(true);
    return HubReply::error("overloaded", "the server's tool queue is full; retry later");
  }
  run->cancel()->on_cancel([once] {
    once(false, json::object{{"reason", "run_ended"}, {"message", "the run ended before the tool did"}});
  });
  HubReply r;
  r.pending = true;
  return r;
}

std::optional<ToolSpec> AgentHub::find_worker_tool(std::string_view tenant, std::string_view agent,
                                                   std::string_view name) const {
  std::lock_guard lock(mu_);
  for (const auto& [id, w] : workers_) {
    if (!serves(w->spec, tenant, agent)) continue;
    if (const ToolSpec* t = declared(w->spec, name)) return *t;
  }
  return std::nullopt;
}

json::array AgentHub::describe_tools(std::string_view tenant, std::string_view agent) const {
  std::map<std::string, ToolSpec> found;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, w] : workers_) {
      if (!serves(w->spec, tenant, agent)) continue;
      for (const auto& t : w->spec.tools) found.emplace(t.name, t);
    }
  }
  json::array out;
  for (const auto& [name, s] : found) {
    out.push_back(json::object{{"name", s.name},
                               {"description", s.description},
                               {"input_schema", s.input_schema},
                               {"provider", "worker"},
                               {"available", true}});
  }
  return out;
}

std::vector<AgentHub::Free> AgentHub::free_capacity() const {
  std::map<std::pair<std::string, std::string>, std::size_t> sum;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, w] : workers_) {
      sum[{w->spec.tenant, w->spec.agent}] += w->spec.capacity - std::min(w->inflight, w->spec.capacity);
    }
  }
  std::vector<Free> out;
  for (auto& [k, n] : sum) out.push_back(Free{k.first, k.second, n});
  return out;
}

AgentHub::Stats AgentHub::stats() const {
  std::lock_guard lock(mu_);
  return Stats{workers_.size(), runs_.size()};
}

}  // namespace synapse::cortex
