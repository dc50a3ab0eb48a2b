#include "cortex/runs.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>

#include "core/crypto.hpp"
#include "core/clock.hpp"
#include "cortex/cortex.hpp"
#include "cortex/tool.hpp"
#include "protocol/envelope.hpp"

namespace synapse::cortex {
namespace json = boost::json;

namespace {

std::string make_token_tail(std::string_view ref, std::string_view id) {
  std::string t = ",\"ref\":";
  protocol::append_json_string(t, ref);
  t += ",\"run_id\":";
  protocol::append_json_string(t, id);
  t += ",\"seq\":";
  return t;
}

}  // namespace

std::string_view run_end_name(RunEnd e) {
  switch (e) {
    case RunEnd::result: return "result";
    case RunEnd::error: return "error";
    case RunEnd::interrupted: return "interrupted";
    case RunEnd::timeout: return "timeout";
    case RunEnd::cancelled: return "cancelled";
  }
  return "cancelled";
}

// --- Run ---------------------------------------------------------------------

Run::Run(RunRegistry& registry, std::string id, std::string ref, std::string kind, std::string tool,
         std::string tenant, std::string agent, OnEnd on_end)
    : registry_(registry),
      id_(std::move(id)),
      ref_(std::move(ref)),
      kind_(std::move(kind)),
      tool_(std::move(tool)),
      tenant_(std::move(tenant)),
      agent_(std::move(agent)),
      started_unix_(unix_ms()),
      started_mono_(mono_ms()),
      on_end_(std::move(on_end)),
      token_tail_(make_token_tail(ref_, id_)) {}

RunEventPtr Run::append_locked(std::string_view event, json::object& payload, bool terminal) {
  auto ev = std::make_shared<RunEvent>();
  ev->seq = next_seq_++;
  ev->event = std::string(event);
  ev->terminal = terminal;
  payload["ref"] = ref_;
  payload["run_id"] = id_;
  payload["seq"] = ev->seq;
  ev->payload = json::serialize(payload);
  keep_locked(ev);
  return ev;
}

void Run::keep_locked(const RunEventPtr& ev) {
  // The terminal event is always kept: a late attach must learn how it ended.
  if (registry_.options().keep || ev->terminal) {
    log_bytes_ += ev->bytes();
    log_.push_back(ev);
    trim_locked();
  }
  // Under the lock: the copy in Redis gets the events in their seq order.
  if (registry_.observer_ && !remote()) registry_.observer_->appended(*this, ev);
}

// The per-run bound: token deltas go first (the snapshot keeps their text),
// then the oldest events. The newest event always stays.
void Run::trim_locked() {
  const std::size_t cap = registry_.options().max_bytes_per_run;
  while (log_bytes_ > cap && log_.size() > 1) {
    auto it = std::find_if(log_.begin(), std::prev(log_.end()), [](const RunEventPtr& e) { return e->event == "token"; });
    if (it == std::prev(log_.end())) it = log_.begin();
    dropped_max_seq_ = std::max(dropped_max_seq_, (*it)->seq);
    log_bytes_ -= (*it)->bytes();
    log_.erase(it);
  }
}

void Run::fold_text_locked(std::string_view delta) {
  const std::size_t cap = registry_.options().max_bytes_per_run;
  if (text_.size() + delta.size() <= cap) {
    text_.append(delta);
  } else {
    text_truncated_ = true;
  }
}

void Run::fold_locked(std::string_view event, const json::object& payload) {
  if (event == "token") {
    if (const json::value* d = payload.if_contains("delta"); d && d->is_string()) fold_text_locked(d->get_string());
  } else if (event == "thought") {
    if (const json::value* t = payload.if_contains("thought")) thoughts_.push_back(*t);
  } else if (event == "progress") {
    progress_ = payload;
  }
}

json::object Run::snapshot_locked() const {
  json::object s{{"ref", ref_},       {"run_id", id_},          {"seq", folded_seq_},
                 {"status", status_}, {"text", text_},          {"thoughts", thoughts_}};
  if (text_truncated_) s["text_truncated"] = true;
  if (progress_) {
    json::object p;
    for (const char* k : {"progress", "total", "message"}) {
      if (const json::value* v = progress_->if_contains(k)) p[k] = *v;
    }
    s["progress"] = std::move(p);
  }
  return s;
}

void Run::emit(std::string_view event, json::object payload) {
  std::ptrdiff_t delta = 0;
  {
    std::lock_guard lock(mu_);
    if (status_ != "running") return;  // nothing follows the terminal event
    const std::size_t before = log_bytes_;
    RunEventPtr ev = append_locked(event, payload, false);
    if (registry_.options().keep) fold_locked(event, payload);
    folded_seq_ = ev->seq;
    for (auto& s : subs_) s.deliver(ev);
    delta = static_cast<std::ptrdiff_t>(log_bytes_) - static_cast<std::ptrdiff_t>(before);
  }
  registry_.account(delta);
}

bool Run::emit_token(std::string_view text) {
  std::ptrdiff_t delta = 0;
  {
    std::lock_guard lock(mu_);
    if (status_ != "running") return false;  // nothing follows the terminal event
    const std::size_t before = log_bytes_;
    auto ev = std::make_shared<RunEvent>();
    ev->seq = next_seq_++;
    ev->event = "token";
    // {"delta":<text>,"ref":<ref>,"run_id":<id>,"seq":<seq>}: what emit()
    // serializes for {"delta": text}, written in one go.
    std::string& p = ev->payload;
    p.reserve(10 + text.size() + text.size() / 8 + token_tail_.size() + 21);
    p.append("{\"delta\":");
    protocol::append_json_string(p, text);
    p.append(token_tail_);
    char digits[24];
    const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, ev->seq);
    (void)ec;
    p.append(digits, end);
    p.push_back('}');
    keep_locked(ev);
    if (registry_.options().keep) fold_text_locked(text);
    folded_seq_ = ev->seq;
    for (auto& s : subs_) s.deliver(ev);
    delta = static_cast<std::ptrdiff_t>(log_bytes_) - static_cast<std::ptrdiff_t>(before);
  }
  registry_.account(delta);
  return true;
}

RunEventPtr Run::finish(RunEnd end, json::object payload) {
  if (!remote()) return finish_here(end, std::move(payload));
  // A proxy: its node decides, and the terminal event comes back through
  // replay(). Only this node stopping ends the proxy here (the run goes on
  // there, and the client re-attaches through another node).
  const json::value* r = payload.if_contains("reason");
  const std::string reason = r && r->is_string() ? std::string(r->get_string()) : std::string("client");
  if (reason == "server_shutdown") return finish_here(end, std::move(payload));
  if (running() && registry_.observer_) registry_.observer_->interrupt_remote(*this, reason);
  return nullptr;
}

RunEventPtr Run::end_locally(RunEnd end, json::object payload) { return finish_here(end, std::move(payload)); }

void Run::replay(std::uint64_t seq, std::string_view event, std::string payload, bool terminal) {
  std::ptrdiff_t delta = 0;
  {
    std::lock_guard lock(mu_);
    if (status_ != "running" || seq < next_seq_) return;
    auto ev = std::make_shared<RunEvent>();
    ev->seq = seq;
    ev->event = std::string(event);
    ev->terminal = terminal;
    ev->payload = std::move(payload);
    // A gap (the node's copy in Redis was trimmed) is recorded like the byte
    // bound's drops: an attach from before it gets a snapshot.
    if (seq > next_seq_) dropped_max_seq_ = std::max(dropped_max_seq_, seq - 1);
    next_seq_ = seq + 1;
    const std::size_t before = log_bytes_;
    log_bytes_ += ev->bytes();
    log_.push_back(ev);
    trim_locked();
    if (!terminal) {
      boost::system::error_code ec;
      json::value v = json::parse(ev->payload, ec);
      if (!ec && v.is_object()) fold_locked(event, v.get_object());
      folded_seq_ = seq;
    } else {
      std::string why;
      boost::system::error_code ec;
      json::value v = json::parse(ev->payload, ec);
      if (!ec && v.is_object()) {
        if (const json::value* r = v.get_object().if_contains("reason"); r && r->is_string()) why = r->get_string();
      }
      status_ = event == "result"        ? "result"
                : event == "error"       ? (why == "timeout" ? "timeout" : "error")
                : why == "detached"      ? "cancelled"
                                         : "interrupted";
      ended_unix_ = unix_ms();
    }
    for (auto& s : subs_) s.deliver(ev);
    if (terminal) {
      subs_.clear();
      ++detach_gen_;
    }
    delta = static_cast<std::ptrdiff_t>(log_bytes_) - static_cast<std::ptrdiff_t>(before);
  }
  registry_.account(delta);
  if (terminal) {
    cancel_->cancel();
    registry_.ended(id_);
  }
}

RunEventPtr Run::finish_here(RunEnd end, json::object payload) {
  RunEventPtr ev;
  std::ptrdiff_t delta = 0;
  {
    std::lock_guard lock(mu_);
    if (status_ != "running") return nullptr;
    status_ = std::string(run_end_name(end));
    ended_unix_ = unix_ms();
    json::object p;
    std::string_view event;
    switch (end) {
      case RunEnd::result:
        event = "result";
        p["status"] = "success";
        p["data"] = std::move(payload["data"]);
        p["latency_ms"] = mono_ms() - started_mono_;
        break;
      case RunEnd::timeout:
      case RunEnd::error:
        event = "error";
        p["reason"] = std::move(payload["reason"]);
        p["message"] = std::move(payload["message"]);
        break;
      case RunEnd::interrupted:
      case RunEnd::cancelled:  // nobody followed it: the reason is kept in its log
        event = "interrupted";
        p["reason"] = std::move(payload["reason"]);
        break;
    }
    const std::size_t before = log_bytes_;
    ev = append_locked(event, p, true);
    for (auto& s : subs_) s.deliver(ev);
    subs_.clear();  // the terminal event is the last thing a subscriber gets
    ++detach_gen_;
    delta = static_cast<std::ptrdiff_t>(log_bytes_) - static_cast<std::ptrdiff_t>(before);
  }
  cancel_->cancel();
  registry_.account(delta);
  registry_.ended(id_);
  if (on_end_) on_end_(*this, end);
  return ev;
}

Run::Attached Run::attach(std::optional<std::uint64_t> after_seq, Deliver deliver) {
  std::lock_guard lock(mu_);
  Attached a;
  a.status = status_;
  a.last_seq = next_seq_ - 1;
  std::uint64_t from = 0;
  if (after_seq && *after_seq >= dropped_max_seq_) {
    from = *after_seq;
  } else {
    a.truncated = after_seq.has_value();
    a.snapshot = snapshot_locked();
    from = folded_seq_;
  }
  for (const auto& e : log_) {
    if (e->seq > from) a.events.push_back(e);
  }
  if (status_ == "running") {
    a.sub = next_sub_++;
    subs_.push_back(Sub{a.sub, std::move(deliver)});
    ++detach_gen_;
  }
  return a;
}

void Run::detach(std::uint64_t sub) {
  std::unique_lock lock(mu_);
  const auto it = std::find_if(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.id == sub; });
  if (it == subs_.end()) return;
  subs_.erase(it);
  if (!subs_.empty() || status_ != "running") return;
  if (remote()) {
    // The grace is the executing node's business; this node stops following.
    lock.unlock();
    if (registry_.observer_) registry_.observer_->unfollowed(*this);
    return;
  }
  const std::uint64_t gen = ++detach_gen_;
  const std::int64_t grace = registry_.options().detach_grace_ms;
  lock.unlock();
  if (grace <= 0) {
    finish(RunEnd::cancelled, json::object{{"reason", "detached"}});
    return;
  }
  // Nobody follows the run now: it goes on for the grace, then ends unless
  // somebody attached meanwhile (which bumps the generation).
  std::weak_ptr<Run> weak = shared_from_this();
  registry_.after(grace, [weak, gen] {
    auto run = weak.lock();
    if (!run) return;
    {
      std::lock_guard l(run->mu_);
      if (run->detach_gen_ != gen || !run->subs_.empty()) return;
    }
    run->finish(RunEnd::cancelled, json::object{{"reason", "detached"}});
  });
}

RunInfo Run::info() const {
  std::lock_guard lock(mu_);
  RunInfo i;
  i.run_id = id_;
  i.ref = ref_;
  i.kind = kind_;
  i.tool = tool_;
  i.tenant = tenant_;
  i.agent_id = agent_;
  i.status = status_;
  i.started_at_ms = started_unix_;
  i.ended_at_ms = ended_unix_;
  i.last_seq = next_seq_ - 1;
  i.attached = subs_.size();
  i.log_bytes = log_bytes_;
  return i;
}

bool Run::running() const {
  std::lock_guard lock(mu_);
  return status_ == "running";
}

// --- RunRegistry ---------------------------------------------------------------

RunRegistry::RunRegistry(RunOptions options) : options_(options) {
  timer_thread_ = std::thread([this] { timer_loop(); });
}

RunRegistry::~RunRegistry() {
  {
    std::lock_guard lock(timer_mu_);
    stopping_ = true;
  }
  timer_cv_.notify_all();
  timer_thread_.join();
}

RunPtr RunRegistry::start(std::string ref, std::string kind, std::string tool, std::string tenant, std::string agent,
                          std::int64_t timeout_ms, Run::OnEnd on_end) {
  // Unguessable, so a run id is no capability to watch somebody's run (the
  // tenant and agent are checked anyway).
  std::string id = "run_" + core::hex_encode(core::random_bytes(12));
  auto run = std::make_shared<Run>(*this, id, std::move(ref), std::move(kind), std::move(tool), std::move(tenant),
                                   std::move(agent), std::move(on_end));
  {
    std::lock_guard lock(mu_);
    runs_.emplace(id, run);
    ++counter_;
  }
  if (observer_) observer_->started(*run, timeout_ms);
  after(timeout_ms, [weak = std::weak_ptr<Run>(run), timeout_ms] {
    if (auto r = weak.lock()) {
      r->finish(RunEnd::timeout, json::object{{"reason", "timeout"},
                                              {"message", fmt::format("the run did not finish within {} ms", timeout_ms)}});
    }
  });
  return run;
}

RunPtr RunRegistry::adopt(const std::string& id, std::string origin, std::string ref, std::string kind,
                          std::string tool, std::string tenant, std::string agent, std::int64_t started_at_ms) {
  std::lock_guard lock(mu_);
  if (auto it = runs_.find(id); it != runs_.end()) return it->second;
  auto run = std::make_shared<Run>(*this, id, std::move(ref), std::move(kind), std::move(tool), std::move(tenant),
                                   std::move(agent), nullptr);
  run->origin_ = std::move(origin);
  run->started_unix_ = started_at_ms;
  runs_.emplace(id, run);
  return run;
}

RunPtr RunRegistry::find(std::string_view run_id) const {
  std::lock_guard lock(mu_);
  const auto it = runs_.find(run_id);
  return it == runs_.end() ? nullptr : it->second;
}

std::vector<RunInfo> RunRegistry::list(std::string_view tenant, std::string_view agent) const {
  std::vector<RunPtr> picked;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, r] : runs_) {
      if (r->tenant() == tenant && r->agent_id() == agent) picked.push_back(r);
    }
  }
  std::vector<RunInfo> out;
  out.reserve(picked.size());
  for (const auto& r : picked) out.push_back(r->info());
  std::sort(out.begin(), out.end(), [](const RunInfo& a, const RunInfo& b) { return a.started_at_ms > b.started_at_ms; });
  return out;
}

std::vector<RunInfo> RunRegistry::list_all() const {
  std::vector<RunPtr> picked;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, r] : runs_) picked.push_back(r);
  }
  std::vector<RunInfo> out;
  for (const auto& r : picked) out.push_back(r->info());
  std::sort(out.begin(), out.end(), [](const RunInfo& a, const RunInfo& b) { return a.started_at_ms > b.started_at_ms; });
  return out;
}

void RunRegistry::shutdown() {
  std::vector<RunPtr> all;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, r] : runs_) all.push_back(r);
  }
  for (const auto& r : all) r->end_locally(RunEnd::interrupted, json::object{{"reason", "server_shutdown"}});
}

std::size_t RunRegistry::running_count() const {
  // The registry's mutex, then each run's: the documented order.
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const auto& [id, r] : runs_) n += r->running();
  return n;
}

std::size_t RunRegistry::bytes() const {
  std::lock_guard lock(mu_);
  return total_bytes_;
}

void RunRegistry::after(std::int64_t delay_ms, std::function<void()> task) {
  {
    std::lock_guard lock(timer_mu_);
    if (stopping_) return;
    timers_.emplace(std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max<std::int64_t>(0, delay_ms)),
                    std::move(task));
  }
  timer_cv_.notify_all();
}

// The total bound: ended runs go whole, the oldest ended first, down to 7/8
// of the bound (so the pass is rare). Running runs are bounded by their own
// per-run bound only: a running run is never dropped.
void RunRegistry::account(std::ptrdiff_t delta) {
  std::lock_guard lock(mu_);
  total_bytes_ = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(total_bytes_) + delta);
  if (total_bytes_ <= options_.max_bytes_total) return;
  const std::size_t target = options_.max_bytes_total / 8 * 7;
  while (total_bytes_ > target && !ended_order_.empty()) {
    const std::string id = std::move(ended_order_.front());
    ended_order_.pop_front();
    const auto it = runs_.find(id);
    if (it == runs_.end()) continue;
    const RunInfo i = it->second->info();
    total_bytes_ -= std::min(total_bytes_, i.log_bytes);
    runs_.erase(it);
    spdlog::debug("run {} dropped: the run logs passed run_log_max_bytes", id);
  }
}

void RunRegistry::ended(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    ended_order_.push_back(id);
  }
  after(options_.retention_ms, [this, id] { expire(id); });
}

void RunRegistry::expire(const std::string& id) {
  std::lock_guard lock(mu_);
  const auto it = runs_.find(id);
  if (it == runs_.end()) return;
  total_bytes_ -= std::min(total_bytes_, it->second->info().log_bytes);
  runs_.erase(it);
  const auto o = std::find(ended_order_.begin(), ended_order_.end(), id);
  if (o != ended_order_.end()) ended_order_.erase(o);
}

void RunRegistry::timer_loop() {
  std::unique_lock lock(timer_mu_);
  while (!stopping_) {
    if (timers_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    const auto first = timers_.begin()->first;
    if (std::chrono::steady_clock::now() < first) {
      timer_cv_.wait_until(lock, first);
      continue;
    }
    auto task = std::move(timers_.begin()->second);
    timers_.erase(timers_.begin());
    lock.unlock();
    try {
      task();
    } catch (const std::exception& e) {
      spdlog::error("run registry timer task threw: {}", e.what());
    }
    lock.lock();
  }
}

// --- tokens ------------------------------------------------------------------

namespace {
thread_local TokenSink current_sink;
}

TokenSink current_token_sink() { return current_sink; }

TokenScope::TokenScope(TokenSink sink) : previous_(std::exchange(current_sink, std::move(sink))) {}
TokenScope::~TokenScope() { current_sink = std::move(previous_); }

namespace {

class DemoTokensTool final : public Tool {
 public:
  explicit DemoTokensTool(Cortex& cortex) : cortex_(cortex) {}
  const ToolSpec& spec() const override { return spec_; }
  StartResult start(ToolCall call) const override {
    auto arg = [&](std::string_view k, std::int64_t d) {
      const json::value* v = call.args.if_contains(k);
      return v && v->is_int64() ? v->get_int64() : d;
    };
    const std::int64_t count = arg("count", 10);
    const std::int64_t interval = arg("interval_ms", 0);
    const Lane lane{call.caller.tenant, call.caller.key};
    auto job = [count, interval, sink = current_token_sink(), call = std::move(call)](std::size_t) {
      const CancelToken& cancel = *call.cancel;
      for (std::int64_t i = 1; i <= count; ++i) {
        if (interval > 0 ? cancel.wait_for(std::chrono::milliseconds(interval)) : cancel.cancelled()) return;
        if (sink) sink(fmt::format("t{} ", i));
      }
      call.callbacks.done(ToolOutcome{ToolOutcome::Kind::result, json::object{{"tokens", count}}, {}});
    };
    return StartResult{cortex_.submit(lane, std::move(job))};
  }

 private:
  Cortex& cortex_;
  ToolSpec spec_{"demo.tokens", "Streams `count` token deltas (\"t1 \", \"t2 \", ...), one every `interval_ms`",
                 json::parse(R"({"type":"object","required":["count"],"additionalProperties":false,
      "properties":{"count":{"type":"integer","minimum":1,"maximum":1000000},
                    "interval_ms":{"type":"integer","minimum":0,"maximum":60000}}})")
                     .as_object()};
};

}  // namespace

std::shared_ptr<const Tool> make_demo_tokens_tool(Cortex& cortex) { return std::make_shared<DemoTokensTool>(cortex); }

}  // namespace synapse::cortex
