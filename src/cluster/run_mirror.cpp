#include "cluster/run_mirror.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <limits>

#include "core/clock.hpp"
#include "redis/link.hpp"

namespace synapse::cluster {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto tick_interval = std::chrono::seconds(1);
// A node that asked to follow and has not refreshed for this long is gone.
constexpr auto follower_ttl = std::chrono::seconds(5);
// A follow not confirmed for this long is asked again.
constexpr auto follow_retry = std::chrono::seconds(2);

std::string entry_of(const cortex::RunEvent& ev) {
  std::string e = fmt::format("{} {} {}\n", ev.seq, ev.terminal ? 1 : 0, ev.event);
  e += ev.payload;
  return e;
}

// "<seq> <terminal> <event>\n<payload>"
bool parse_entry(std::string_view e, std::uint64_t& seq, bool& terminal, std::string_view& event,
                 std::string_view& payload) {
  const auto nl = e.find('\n');
  if (nl == std::string_view::npos) return false;
  const std::string_view head = e.substr(0, nl);
  payload = e.substr(nl + 1);
  const auto s1 = head.find(' ');
  const auto s2 = s1 == std::string_view::npos ? s1 : head.find(' ', s1 + 1);
  if (s2 == std::string_view::npos) return false;
  try {
    seq = std::stoull(std::string(head.substr(0, s1)));
  } catch (const std::exception&) {
    return false;
  }
  terminal = head.substr(s1 + 1, s2 - s1 - 1) == "1";
  event = head.substr(s2 + 1);
  return seq > 0 && !event.empty();
}

// One XRANGE element: [id, [field, value]]; the value of field "e".
std::string stream_entry(const redis::Reply& e) {
  if (e.elements.size() < 2 || e.elements[1].elements.size() < 2) return {};
  return e.elements[1].elements[1].str;
}

std::string field(const redis::Reply& hash, std::string_view name) {
  for (std::size_t i = 0; i + 1 < hash.elements.size(); i += 2) {
    if (hash.elements[i].str == name) return hash.elements[i + 1].str;
  }
  return {};
}

}  // namespace

RunMirror::RunMirror(RunMirrorOptions o, redis::Link& link, cortex::RunRegistry& runs)
    : opt_(std::move(o)), link_(link), runs_(runs) {}

RunMirror::~RunMirror() { stop(); }

bool RunMirror::owns(const std::string& channel) const {
  return channel == ctl_channel(opt_.node_id) || channel == ev_channel(opt_.node_id);
}

void RunMirror::start() {
  tick_thread_ = std::thread([this] { tick_loop(); });
}

void RunMirror::stop() {
  {
    std::lock_guard lock(tick_mu_);
    stopping_ = true;
  }
  tick_cv_.notify_all();
  if (tick_thread_.joinable()) tick_thread_.join();
}

void RunMirror::tick_loop() {
  std::unique_lock lock(tick_mu_);
  while (!stopping_) {
    lock.unlock();
    link_.post([this] { tick(); });
    lock.lock();
    tick_cv_.wait_for(lock, tick_interval, [this] { return stopping_; });
  }
}

// --- the executing node ---------------------------------------------------------

void RunMirror::started(const cortex::Run& run, std::int64_t timeout_ms) {
  const std::string key = meta_key(run.id());
  link_.command({"HSET", key, "tenant", run.tenant(), "agent", run.agent_id(), "ref", run.ref(), "kind", run.kind(),
                 "tool", run.tool(), "node", opt_.node_id, "status", "running", "started_at",
                 std::to_string(unix_ms())},
                {});
  // Kept past the longest the run can take, then its retention.
  link_.command({"PEXPIRE", key, std::to_string(timeout_ms + opt_.retention_ms + 60'000)}, {});
}

// Contract: called under the run's mutex, in seq order, once per event of a
// local run. Queues the XADD, then (under mu_, so a follow registered on
// the link thread is either before or after it as a whole) the PUBLISH to
// each node that follows the run. Blocks on nothing: Link::command posts.
void RunMirror::appended(const cortex::Run& run, const cortex::RunEventPtr& ev) {
  const std::string entry = entry_of(*ev);
  const std::string log = log_key(run.id());
  std::lock_guard lock(mu_);
  // A stream entry with one field; MAXLEN ~ lets Redis trim whole nodes.
  link_.command({"XADD", log, "MAXLEN", "~", std::to_string(opt_.max_log_entries), "*", "e", entry}, {});
  if (ev->seq == 1 || ev->terminal) {
    const std::int64_t keep = ev->terminal ? opt_.retention_ms : opt_.retention_ms + 24 * 3600 * 1000LL;
    link_.command({"PEXPIRE", log, std::to_string(keep)}, {});
  }
  if (ev->terminal) {
    const std::string meta = meta_key(run.id());
    link_.command({"HSET", meta, "status", ev->event}, {});
    link_.command({"PEXPIRE", meta, std::to_string(opt_.retention_ms)}, {});
  }
  auto it = followers_.find(run.id());
  if (it == followers_.end()) return;
  for (const auto& [node, f] : it->second) {
    link_.command({"PUBLISH", ev_channel(node), "E " + run.id() + " " + entry}, {});
  }
  // The terminal event ended every subscription, the followers' too.
  if (ev->terminal) followers_.erase(it);
}

void RunMirror::follow_local(const std::string& id, const std::string& from) {
  cortex::RunPtr run = runs_.find(id);
  if (run && !run->remote() && run->running()) {
    bool known = false;
    {
      std::lock_guard lock(mu_);
      auto it = followers_.find(id);
      if (it != followers_.end()) {
        if (auto f = it->second.find(from); f != it->second.end()) {
          f->second.refreshed = Clock::now();
          known = true;
        }
      }
    }
    if (!known) {
      // A subscription that delivers nothing: while a node follows the run,
      // the run is followed, and its detach grace does not start.
      const auto a = run->attach(std::numeric_limits<std::uint64_t>::max(), [](const cortex::RunEventPtr&) {});
      std::uint64_t extra = 0;  // a second registration raced this one
      {
        std::lock_guard lock(mu_);
        if (a.sub != 0) {
          auto& f = followers_[id][from];
          if (f.sub == 0) {
            f.sub = a.sub;
          } else {
            extra = a.sub;
          }
          f.refreshed = Clock::now();
        }
        // Sent under mu_: see the contract of appended().
        link_.command({"PUBLISH", ev_channel(from), "F " + id}, {});
      }
      if (extra) run->detach(extra);
      return;
    }
  }
  // Ended, unknown, or already followed: the follower reads the log now.
  std::lock_guard lock(mu_);
  link_.command({"PUBLISH", ev_channel(from), "F " + id}, {});
}

void RunMirror::unfollow_local(const std::string& id, const std::string& from) {
  std::uint64_t sub = 0;
  {
    std::lock_guard lock(mu_);
    auto it = followers_.find(id);
    if (it == followers_.end()) return;
    auto f = it->second.find(from);
    if (f == it->second.end()) return;
    sub = f->second.sub;
    it->second.erase(f);
    if (it->second.empty()) followers_.erase(it);
  }
  if (auto run = runs_.find(id); run && sub) run->detach(sub);
}

void RunMirror::on_control(const std::string& payload) {
  boost::system::error_code ec;
  json::value v = json::parse(payload, ec);
  if (ec || !v.is_object()) return;
  const json::object& o = v.get_object();
  auto str = [&](std::string_view k) {
    const json::value* x = o.if_contains(k);
    return x && x->is_string() ? std::string(x->get_string()) : std::string();
  };
  const std::string op = str("op"), id = str("run"), from = str("from");
  if (id.empty()) return;
  if (op == "follow" && !from.empty()) {
    follow_local(id, from);
  } else if (op == "unfollow" && !from.empty()) {
    unfollow_local(id, from);
  } else if (op == "interrupt") {
    if (auto run = runs_.find(id); run && !run->remote()) {
      std::string reason = str("reason");
      if (reason.empty()) reason = "client";
      run->finish(cortex::RunEnd::interrupted, json::object{{"reason", reason}});
    }
  }
}

// --- the following node ---------------------------------------------------------

void RunMirror::interrupt_remote(const cortex::Run& run, const std::string& reason) {
  const std::string msg = json::serialize(json::object{{"op", "interrupt"}, {"run", run.id()}, {"reason", reason}});
  link_.command({"PUBLISH", ctl_channel(run.origin()), msg}, {});
}

void RunMirror::unfollowed(const cortex::Run& run) {
  link_.post([this, id = run.id(), origin = run.origin()] {
    auto it = proxies_.find(id);
    if (it == proxies_.end() || !it->second.waiting.empty()) return;
    // Nobody here follows it any more: forget the proxy (a later attach
    // reads the log again) and tell its node.
    proxies_.erase(it);
    runs_.discard(id);
    const std::string msg = json::serialize(json::object{{"op", "unfollow"}, {"run", id}, {"from", opt_.node_id}});
    link_.command({"PUBLISH", ctl_channel(origin), msg}, {});
  });
}

void RunMirror::locate(std::string run_id, std::string tenant, std::string agent, Located done) {
  link_.post([this, id = std::move(run_id), tenant = std::move(tenant), agent = std::move(agent),
              done = std::move(done)]() mutable {
    if (auto it = proxies_.find(id); it != proxies_.end()) {
      const auto& r = *it->second.run;
      if (r.tenant() != tenant || r.agent_id() != agent) {
        done(nullptr, "forbidden");
      } else if (it->second.loaded) {
        done(it->second.run, "");
      } else {
        it->second.waiting.push_back(std::move(done));
      }
      return;
    }
    link_.command({"HGETALL", meta_key(id)}, [this, id, tenant, agent, done = std::move(done)](redis::Reply r) mutable {
      if (!r.ok()) {
        done(nullptr, "unavailable");
        return;
      }
      if (r.elements.empty()) {
        done(nullptr, "unknown_run");
        return;
      }
      const std::string node = field(r, "node");
      if (field(r, "tenant") != tenant || field(r, "agent") != agent) {
        done(nullptr, "forbidden");
        return;
      }
      if (node == opt_.node_id) {
        done(nullptr, "unknown_run");  // this node's own run, already expired here
        return;
      }
      if (auto it = proxies_.find(id); it != proxies_.end()) {  // located meanwhile
        if (it->second.loaded) {
          done(it->second.run, "");
        } else {
          it->second.waiting.push_back(std::move(done));
        }
        return;
      }
      std::int64_t started = 0;
      try {
        started = std::stoll(field(r, "started_at"));
      } catch (const std::exception&) {
      }
      Proxy p;
      p.run = runs_.adopt(id, node, field(r, "ref"), field(r, "kind"), field(r, "tool"), tenant, agent, started);
      p.origin = node;
      p.waiting.push_back(std::move(done));
      p.asked = Clock::now();
      proxies_.emplace(id, std::move(p));
      if (field(r, "status") != "running") {
        load(id);  // ended: its log holds everything, the terminal event included
        return;
      }
      const std::string msg = json::serialize(json::object{{"op", "follow"}, {"run", id}, {"from", opt_.node_id}});
      link_.command({"PUBLISH", ctl_channel(node), msg}, {});
      // Nobody answers a follow for a node that is gone: find out now.
      link_.command({"EXISTS", alive_key(node)}, [this, id](redis::Reply e) {
        if (!e.ok() || e.as_int(1) != 0) return;
        auto it = proxies_.find(id);
        if (it != proxies_.end() && !it->second.loaded) load(id);
      });
    });
  });
}

// Reads the run's log and replays it into the proxy, then what came live
// meanwhile; the proxy is then loaded and the waiting attaches get it. A
// running run whose node is gone ends `error node_lost` here.
void RunMirror::load(const std::string& id) {
  link_.command({"XRANGE", log_key(id), "-", "+"}, [this, id](redis::Reply r) {
    auto it = proxies_.find(id);
    if (it == proxies_.end() || it->second.loaded) return;
    Proxy& p = it->second;
    if (!r.ok()) {
      auto waiting = std::move(p.waiting);
      proxies_.erase(it);
      runs_.discard(id);
      for (auto& w : waiting) w(nullptr, "unavailable");
      return;
    }
    for (const auto& e : r.elements) replay_entry(p, stream_entry(e));
    for (const auto& e : p.held) replay_entry(p, e);
    p.held.clear();
    p.loaded = true;
    auto waiting = std::move(p.waiting);
    p.waiting.clear();
    const cortex::RunPtr run = p.run;
    // Whether its node is alive is checked now for a run that still runs.
    if (run->running()) {
      link_.command({"EXISTS", alive_key(p.origin)}, [this, id](redis::Reply e) {
        if (!e.ok() || e.as_int(1) != 0) return;
        if (auto it2 = proxies_.find(id); it2 != proxies_.end()) lost(id, it2->second);
      });
    }
    for (auto& w : waiting) w(run, "");
  });
}

void RunMirror::replay_entry(Proxy& p, const std::string& entry) {
  std::uint64_t seq = 0;
  bool terminal = false;
  std::string_view event, payload;
  if (!parse_entry(entry, seq, terminal, event, payload)) return;
  p.run->replay(seq, event, std::string(payload), terminal);
}

void RunMirror::lost(const std::string& id, Proxy& p) {
  if (p.run->running()) {
    spdlog::warn("run {}: its node {} is gone; the run ends node_lost here", id, p.origin);
    p.run->end_locally(cortex::RunEnd::error,
                       json::object{{"reason", "node_lost"},
                                    {"message", "the node that ran it stopped before it ended"}});
  }
}

void RunMirror::on_message(const std::string& channel, const std::string& payload) {
  if (channel == ctl_channel(opt_.node_id)) {
    on_control(payload);
    return;
  }
  // runev: "F <id>" or "E <id> <entry>"
  if (payload.size() < 3 || payload[1] != ' ') return;
  const std::string_view rest = std::string_view(payload).substr(2);
  if (payload[0] == 'F') {
    const std::string id(rest);
    auto it = proxies_.find(id);
    if (it != proxies_.end() && !it->second.loaded) load(id);
    return;
  }
  if (payload[0] != 'E') return;
  const auto sp = rest.find(' ');
  if (sp == std::string_view::npos) return;
  auto it = proxies_.find(rest.substr(0, sp));
  if (it == proxies_.end()) return;
  std::string entry(rest.substr(sp + 1));
  if (!it->second.loaded) {
    it->second.held.push_back(std::move(entry));
  } else {
    replay_entry(it->second, entry);
  }
}

// After a reconnect: what was published meanwhile is gone, so every
// followed run's log is read again (replay drops what was seen) and the
// follows are renewed.
void RunMirror::on_up() {
  for (auto& [id, p] : proxies_) {
    if (!p.loaded || !p.run->running()) continue;
    const std::string msg = json::serialize(json::object{{"op", "follow"}, {"run", id}, {"from", opt_.node_id}});
    link_.command({"PUBLISH", ctl_channel(p.origin), msg}, {});
    link_.command({"XRANGE", log_key(id), "-", "+"}, [this, id = id](redis::Reply r) {
      auto it = proxies_.find(id);
      if (!r.ok() || it == proxies_.end()) return;
      for (const auto& e : r.elements) replay_entry(it->second, stream_entry(e));
    });
  }
}

void RunMirror::tick() {
  link_.command({"SET", alive_key(opt_.node_id), "1", "PX", std::to_string(opt_.node_ttl_ms)}, {});
  const auto now = Clock::now();
  // Following side: renew the follows, notice dead nodes, forget ended proxies.
  for (auto it = proxies_.begin(); it != proxies_.end();) {
    Proxy& p = it->second;
    if (p.loaded && !p.run->running()) {
      it = proxies_.erase(it);
      continue;
    }
    const std::string id = it->first;
    if (!p.loaded && now - p.asked < follow_retry) {
      ++it;
      continue;
    }
    if (!p.loaded) p.asked = now;
    const std::string msg = json::serialize(json::object{{"op", "follow"}, {"run", id}, {"from", opt_.node_id}});
    link_.command({"PUBLISH", ctl_channel(p.origin), msg}, {});
    link_.command({"EXISTS", alive_key(p.origin)}, [this, id](redis::Reply e) {
      if (!e.ok() || e.as_int(1) != 0) return;
      auto f = proxies_.find(id);
      if (f == proxies_.end()) return;
      if (!f->second.loaded) {
        load(id);  // load() ends it node_lost after the replay
      } else {
        lost(id, f->second);
      }
    });
    ++it;
  }
  // Executing side: followers that stopped renewing are gone.
  std::vector<std::pair<std::string, std::uint64_t>> expired;
  {
    std::lock_guard lock(mu_);
    for (auto it = followers_.begin(); it != followers_.end();) {
      for (auto f = it->second.begin(); f != it->second.end();) {
        if (now - f->second.refreshed > follower_ttl) {
          expired.emplace_back(it->first, f->second.sub);
          f = it->second.erase(f);
        } else {
          ++f;
        }
      }
      it = it->second.empty() ? followers_.erase(it) : std::next(it);
    }
  }
  for (const auto& [id, sub] : expired) {
    if (auto run = runs_.find(id); run && sub) run->detach(sub);
  }
}

}  // namespace synapse::cluster
