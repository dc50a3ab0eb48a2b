#include "cluster/agent_relay.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/clock.hpp"
#include "cortex/agent_hub.hpp"
#include "cortex/runs.hpp"
#include "redis/link.hpp"

namespace synapse::cluster {
namespace json = boost::json;
using cortex::RunEnd;

namespace {

constexpr auto announce_every = std::chrono::milliseconds(250);
constexpr auto node_silent_after = std::chrono::seconds(3);

std::string str(const json::object& o, std::string_view k) {
  const json::value* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

std::int64_t num(const json::object& o, std::string_view k) {
  const json::value* v = o.if_contains(k);
  return v && v->is_int64() ? v->get_int64() : 0;
}

}  // namespace

AgentRelay::AgentRelay(redis::Link& link, std::string prefix, std::string node_id, cortex::AgentHub& hub,
                       cortex::RunRegistry& runs)
    : link_(link), prefix_(std::move(prefix)), node_(std::move(node_id)), hub_(hub), runs_(runs) {}

AgentRelay::~AgentRelay() { stop(); }

std::vector<std::string> AgentRelay::channels() const {
  return {prefix_ + "agents:announce", prefix_ + "agents:node:" + node_};
}

void AgentRelay::start_announcing() { announcer_ = std::thread([this] { announce_loop(); }); }

void AgentRelay::stop() {
  {
    std::unique_lock lock(alive_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  {
    std::lock_guard lock(announce_mu_);
    announce_stop_ = true;
  }
  announce_cv_.notify_all();
  if (announcer_.joinable()) announcer_.join();
  std::lock_guard lock(mu_);
  proxies_.clear();
  relayed_.clear();
}

void AgentRelay::publish(const std::string& channel, const json::object& msg) {
  link_.command({"PUBLISH", channel, json::serialize(msg)}, {});
}

void AgentRelay::announce_loop() {
  std::unique_lock lock(announce_mu_);
  while (!announce_stop_) {
    lock.unlock();
    json::array free;
    for (const auto& f : hub_.free_capacity()) {
      free.push_back(json::array{json::value(f.tenant), json::value(f.agent), json::value(f.free)});
    }
    publish(prefix_ + "agents:announce", json::object{{"node", node_}, {"free", std::move(free)}});
    reap_silent_nodes();
    lock.lock();
    announce_cv_.wait_for(lock, announce_every, [this] { return announce_stop_; });
  }
}

void AgentRelay::reap_silent_nodes() {
  std::vector<std::string> lost;
  {
    std::lock_guard lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto it = relayed_.begin(); it != relayed_.end();) {
      auto n = nodes_.find(it->second);
      if (n == nodes_.end() || now - n->second.seen > node_silent_after) {
        lost.push_back(it->first);
        it = relayed_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& id : lost) {
    if (auto run = runs_.find(id)) {
      run->finish(RunEnd::error, json::object{{"reason", "agent_unavailable"},
                                              {"message", "the cluster node serving this run went away"}});
    }
  }
}

cortex::AgentBackend::Start AgentRelay::start(const cortex::AgentRequest& req, const cortex::RunPtr& run) {
  if (hub_.start(req, run) == Start::accepted) return Start::accepted;
  if (req.kind != "query") return Start::unavailable;  // worker tools are served on their own node
  std::string target;
  {
    std::lock_guard lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    std::int64_t best = 0;
    std::map<std::pair<std::string, std::string>, std::int64_t>::iterator best_it;
    for (auto& [node, n] : nodes_) {
      if (node == node_ || now - n.seen > node_silent_after) continue;
      for (const auto& agent : {req.caller.agent_id, std::string("*")}) {
        auto it = n.free.find({req.caller.tenant, agent});
        if (it != n.free.end() && it->second > best) {
          best = it->second;
          best_it = it;
          target = node;
        }
      }
    }
    if (target.empty()) return Start::unavailable;
    --best_it->second;  // until the node's next announcement
    relayed_[run->id()] = target;
  }
  json::object m{{"t", "run"},
                 {"from", node_},
                 {"run_id", run->id()},
                 {"key", req.caller.key},
                 {"timeout_ms", std::max<std::int64_t>(1, req.deadline_ms - unix_ms())},
                 {"run", cortex::agent_run_payload(run->id(), req)}};
  publish(prefix_ + "agents:node:" + target, m);
  run->cancel()->on_cancel([this, id = run->id(), run_weak = std::weak_ptr<cortex::Run>(run)] {
    std::string node;
    {
      std::lock_guard lock(mu_);
      auto it = relayed_.find(id);
      if (it == relayed_.end()) return;  // ended by the remote worker's own terminal event
      node = it->second;
      relayed_.erase(it);
    }
    auto r = run_weak.lock();
    publish(prefix_ + "agents:node:" + node,
            json::object{{"t", "cancel"}, {"run_id", id}, {"reason", r ? r->info().status : "interrupted"}});
  });
  return Start::accepted;
}

bool AgentRelay::on_message(const std::string& channel, const std::string& payload) {
  const bool announce = channel == prefix_ + "agents:announce";
  const bool inbox = channel == prefix_ + "agents:node:" + node_;
  if (!announce && !inbox) return false;
  std::shared_lock alive(alive_mu_);
  if (stopped_) return true;
  boost::system::error_code ec;
  json::value v = json::parse(payload, ec);
  if (ec || !v.is_object()) return true;
  const json::object& m = v.get_object();
  if (announce) {
    const std::string node = str(m, "node");
    const json::value* free = m.if_contains("free");
    if (node.empty() || node == node_ || !free || !free->is_array()) return true;
    Node n;
    n.seen = std::chrono::steady_clock::now();
    for (const auto& e : free->get_array()) {
      const json::array* a = e.if_array();
      if (!a || a->size() != 3 || !(*a)[0].is_string() || !(*a)[1].is_string() || !(*a)[2].is_int64()) continue;
      n.free[{std::string((*a)[0].get_string()), std::string((*a)[1].get_string())}] = (*a)[2].get_int64();
    }
    std::lock_guard lock(mu_);
    nodes_[node] = std::move(n);
    return true;
  }
  const std::string t = str(m, "t");
  if (t == "run") {
    on_run(m);
  } else if (t == "cancel") {
    on_cancel(m);
  } else if (t == "ev") {
    on_event(m);
  }
  return true;
}

// A side: a run relayed here. The proxy's events go back to the origin.
void AgentRelay::on_run(const json::object& m) {
  const std::string from = str(m, "from");
  const std::string origin_id = str(m, "run_id");
  const json::value* rv = m.if_contains("run");
  if (from.empty() || origin_id.empty() || !rv || !rv->is_object()) return;
  const json::object& r = rv->get_object();
  cortex::AgentRequest req;
  req.kind = str(r, "kind");
  req.q = str(r, "q");
  req.limit = num(r, "limit");
  req.tool = str(r, "name");
  if (const json::value* a = r.if_contains("args"); a && a->is_object()) req.args = a->get_object();
  if (const json::value* c = r.if_contains("caller"); c && c->is_object()) {
    req.caller.tenant = str(c->get_object(), "tenant");
    req.caller.agent_id = str(c->get_object(), "agent_id");
  }
  req.caller.key = str(m, "key");
  req.deadline_ms = num(r, "deadline_ms");
  const std::string back = prefix_ + "agents:node:" + from;
  auto proxy = runs_.start("relay:" + origin_id, req.kind, req.tool, req.caller.tenant, req.caller.agent_id,
                           std::max<std::int64_t>(1, num(m, "timeout_ms")), {});
  // Every proxy event, in log order, to the origin; the terminal one also
  // ends the proxy's entry.
  proxy->attach(std::uint64_t{0}, [this, back, origin_id](const cortex::RunEventPtr& ev) {
    boost::system::error_code ec;
    json::value p = json::parse(ev->payload, ec);
    if (ec || !p.is_object()) return;
    json::object& o = p.get_object();
    o.erase("ref");
    o.erase("run_id");
    o.erase("seq");
    publish(back, json::object{{"t", "ev"}, {"run_id", origin_id}, {"event", ev->event}, {"payload", std::move(o)}});
    if (ev->terminal) {
      std::lock_guard lock(mu_);
      proxies_.erase(origin_id);
    }
  });
  {
    std::lock_guard lock(mu_);
    proxies_[origin_id] = proxy;
  }
  if (hub_.start(req, proxy) != Start::accepted) {
    proxy->finish(RunEnd::error, json::object{{"reason", "agent_unavailable"},
                                              {"message", "no agent worker of " + req.caller.agent_id +
                                                              " is free on node " + node_}});
  }
}

// A side: the origin's run ended (interrupt, timeout): end the proxy, whose
// hub pushes `cancel` to the worker.
void AgentRelay::on_cancel(const json::object& m) {
  cortex::RunPtr proxy;
  {
    std::lock_guard lock(mu_);
    auto it = proxies_.find(str(m, "run_id"));
    if (it == proxies_.end()) return;
    proxy = it->second;
    proxies_.erase(it);
  }
  const RunEnd end = str(m, "reason") == "timeout" ? RunEnd::timeout : RunEnd::interrupted;
  proxy->finish(end, json::object{{"reason", str(m, "reason")}, {"message", "ended on the client's node"}});
}

// B side: one event of a relayed run, appended to the real run.
void AgentRelay::on_event(const json::object& m) {
  const std::string id = str(m, "run_id");
  const std::string event = str(m, "event");
  const json::value* pv = m.if_contains("payload");
  if (id.empty() || !pv || !pv->is_object()) return;
  json::object p = pv->get_object();
  const bool terminal = event == "result" || event == "error" || event == "interrupted";
  if (terminal) {
    std::lock_guard lock(mu_);
    relayed_.erase(id);  // first: the cancel hook Run::finish triggers finds nothing
  }
  cortex::RunPtr run = runs_.find(id);
  if (!run) return;
  if (event == "result") {
    run->finish(RunEnd::result, json::object{{"data", p["data"]}});
  } else if (event == "error") {
    run->finish(RunEnd::error, json::object{{"reason", p["reason"]}, {"message", p["message"]}});
  } else if (event == "interrupted") {
    run->finish(RunEnd::interrupted, json::object{{"reason", p["reason"]}});
  } else if (event == "thought" || event == "token" || event == "progress") {
    run->emit(event, std::move(p));
  }
}

}  // namespace synapse::cluster
