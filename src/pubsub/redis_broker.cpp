#include "pubsub/redis_broker.hpp"

#include <algorithm>
#include <condition_variable>
#include <set>
#include <spdlog/spdlog.h>

#include "core/crypto.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/publish_frame.hpp"
#include "pubsub/redis_scripts.hpp"
#include "redis/link.hpp"

namespace synapse::pubsub {
namespace json = boost::json;

namespace {

// Offset and epoch keys outlive the history: a topic keeps its numbering
// while it is in use, and a day after its last publish or join.
constexpr std::int64_t keep_ms = 24 * 3600 * 1000;
constexpr std::int64_t reap_interval_ms = 1000;

std::string new_epoch() { return core::hex_encode(core::random_bytes(8)); }

// Splits `s` at the first `n` newlines; the last part is the rest.
std::vector<std::string_view> split_lines(std::string_view s, std::size_t n) {
  std::vector<std::string_view> out;
  out.reserve(n + 1);
  while (out.size() < n) {
    const auto nl = s.find('\n');
    if (nl == std::string_view::npos) break;
    out.push_back(s.substr(0, nl));
    s.remove_prefix(nl + 1);
  }
  out.push_back(s);
  return out;
}

bool parse_u64(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  out = v;
  return true;
}

std::string json_string(std::string_view s) {
  std::string out;
  protocol::append_json_string(out, s);
  return out;
}

std::optional<std::string> parse_json_string(std::string_view s) {
  boost::system::error_code ec;
  json::value v = json::parse(s, ec);
  if (ec || !v.is_string()) return std::nullopt;
  return std::string(v.get_string());
}

}  // namespace

std::string redis_prefix(int db) { return "synapse:" + std::to_string(db) + ":"; }

struct RedisBroker::Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;

  void release() {
    {
      std::lock_guard lock(mu);
      open = true;
    }
    cv.notify_all();
  }
  void wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, timeout, [this] { return open; });
  }
};

RedisBroker::RedisBroker(RedisBrokerOptions options, redis::Link& link, std::vector<Poster> threads,
                         metrics::Metrics& metrics)
    : options_(std::move(options)),
      link_(link),
      metrics_(metrics),
      fanout_(std::move(threads), metrics),
      publish_script_(std::string(lua::now_ms) + lua::publish),
      join_script_(std::string(lua::now_ms) + lua::join),
      snapshot_script_(lua::presence_snapshot),
      track_script_(lua::track),
      untrack_script_(lua::untrack),
      heartbeat_script_(std::string(lua::now_ms) + lua::heartbeat),
      reap_script_(std::string(lua::now_ms) + lua::reap),
      backfill_script_(lua::backfill),
      channel_prefix_(options_.prefix + "c:") {
  for (const auto* s : {&publish_script_, &join_script_, &snapshot_script_, &track_script_, &untrack_script_,
                        &heartbeat_script_, &reap_script_, &backfill_script_}) {
    link_.preload(s->text);
  }
}

RedisBroker::~RedisBroker() = default;

std::string RedisBroker::key(const char* kind, std::string_view topic) const {
  std::string k = options_.prefix;
  k += kind;
  k += ':';
  k += topic;
  return k;
}

RedisBroker::Topic& RedisBroker::get_or_create(std::string_view name) {
  auto it = topics_.find(std::string(name));
  if (it != topics_.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->id = next_topic_id_.fetch_add(1, std::memory_order_relaxed);
  t->name = std::string(name);
  t->channel = channel_prefix_ + t->name;
  t->members_per_thread.assign(fanout_.threads(), 0);
  t->presence_per_thread.assign(fanout_.threads(), 0);
  metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  return *topics_.emplace(t->name, std::move(t)).first->second;
}

void RedisBroker::adopt_epoch(Topic& t, std::string_view epoch) {
  if (t.epoch == epoch) return;
  if (!t.epoch.empty() && t.members > 0) {
    spdlog::warn("topic {}: epoch changed from {} to {} (its history in Redis was lost)", t.name, t.epoch, epoch);
    // Whatever the old epoch numbered after the last offset this node
    // delivered went with Redis's data, if there was any: an open-ended gap,
    // before the reset. Not before this membership's first message, whose
    // last_offset is stale (the joiners start where their join read).
    if (t.synced) notify_gap(t, t.last_offset + 1, std::nullopt, epoch);
    fanout_.queue(t.members_per_thread, Delivery{t.id, 0, 0, {}, DeliveryKind::reset});
  }
  t.epoch = std::string(epoch);
  t.last_offset = 0;
}

void RedisBroker::deliver(Topic& t, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude,
                          wire::Message msg) {
  adopt_epoch(t, epoch);
  if (offset <= t.last_offset) return;  // already delivered (a backfill overlaps the live stream)
  // Within an epoch every offset is published once, in order: a jump means
  // this node never received the ones in between and nobody can supply them.
  if (t.synced && offset > t.last_offset + 1) notify_gap(t, t.last_offset + 1, offset - 1, {});
  t.synced = true;
  t.last_offset = offset;
  fanout_.queue(t.members_per_thread, Delivery{t.id, offset, exclude, std::move(msg), DeliveryKind::message});
}

void RedisBroker::notify_gap(Topic& t, std::uint64_t from, std::optional<std::uint64_t> to,
                             std::string_view next_epoch) {
  spdlog::warn("topic {}: offsets {}..{} of epoch {} never reached this node and are not in the history; "
               "its members are told (phx_gap)",
               t.name, from, to ? std::to_string(*to) : std::string("end"), t.epoch);
  std::string body = "{\"recovered\":false,\"epoch\":";
  protocol::append_json_string(body, t.epoch);
  body += ",\"from\":" + std::to_string(from) + ",\"to\":" + (to ? std::to_string(*to) : std::string("null"));
  if (!next_epoch.empty()) {
    body += ",\"next_epoch\":";
    protocol::append_json_string(body, next_epoch);
  }
  body += '}';
  // Numbered `to`: a member whose start is at or past the gap (it joined
  // after it) does not get the push; the others get it in order, before what
  // follows. Open-ended (the epoch ended): every member gets it.
  fanout_.queue(t.members_per_thread,
                Delivery{t.id, to ? *to : unnumbered, 0,
                         wire::Message::text(protocol::encode_raw(std::nullopt, std::nullopt, t.name, "phx_gap", body)),
                         DeliveryKind::message});
}

void RedisBroker::start_backfill(Topic& t) {
  t.backfilling = true;
  const std::uint64_t seq = ++t.backfill_seq;
  redis::eval(link_, backfill_script_, {key("e", t.name), key("h", t.name), key("o", t.name)},
              {t.epoch, std::to_string(t.last_offset + 1), new_epoch(), std::to_string(keep_ms)},
              [this, topic = t.name, id = t.id, seq](redis::Reply r) {
                // Lost with its connection: on_down follows and the next on_up
                // reads again; the held messages stay held meanwhile.
                if (r.type == redis::Reply::Type::lost || r.type == redis::Reply::Type::not_connected) return;
                std::lock_guard lock(mu_);
                auto it = topics_.find(topic);
                if (it == topics_.end() || it->second->id != id) return;
                Topic& topic_now = *it->second;
                if (topic_now.backfilling && topic_now.backfill_seq == seq) finish_backfill(topic_now, r);
              });
}

// Contract: called once per backfill, under mu_, with the backfill script's
// reply. Delivers, in offset order and once each, the union of what the
// stream still holds from the node's last delivered offset on (or, under a
// new epoch, from offset 1) and the live messages held since the link was
// lost; a hole in that union is reported to the members (deliver ->
// notify_gap) before the messages after it. Afterwards live messages are
// delivered directly again. Messages still in flight on the subscriber
// connection that the stream also held are dropped as duplicates by
// deliver(); the stream keeps its newest entries, so anything it no longer
// holds is older than what it does.
void RedisBroker::finish_backfill(Topic& t, const redis::Reply& r) {
  t.backfilling = false;
  std::vector<Live> held = std::move(t.held);
  t.held.clear();
  if (r.type != redis::Reply::Type::array || r.elements.empty()) {
    spdlog::error("topic {}: reading what the node missed failed: {}", t.name, r.str);
    for (auto& live : held) deliver(t, live.epoch, live.offset, live.exclude, std::move(live.msg));
    return;
  }
  const std::string epoch = r.elements[0].str;
  if (epoch.empty()) {
    // No epoch in Redis (it lost its data, nothing published since): the
    // next epoch's messages all arrive live.
    for (auto& live : held) deliver(t, live.epoch, live.offset, live.exclude, std::move(live.msg));
    return;
  }
  std::map<std::uint64_t, Live> merged;
  for (auto& live : held) {
    if (live.epoch == epoch) {
      merged.emplace(live.offset, std::move(live));
    } else {
      // Received under the epoch that preceded the stream's (a restored
      // Redis renumbered the topic meanwhile): they come first.
      deliver(t, live.epoch, live.offset, live.exclude, std::move(live.msg));
    }
  }
  const std::uint64_t held_count = merged.size();
  // A new epoch resets the members' filters now, so its offset 1 is owed.
  adopt_epoch(t, epoch);
  for (std::size_t i = 1; i + 3 < r.elements.size(); i += 4) {
    const std::string& id = r.elements[i].str;
    std::uint64_t offset = 0, conn = 0;
    if (!parse_u64(std::string_view(id).substr(0, id.find('-')), offset)) continue;
    parse_u64(r.elements[i + 3].str, conn);
    const std::uint64_t exclude = r.elements[i + 2].str == options_.node_id ? conn : 0;
    merged.emplace(offset, Live{epoch, offset, exclude, wire::Message::text(r.elements[i + 1].str)});
  }
  std::uint64_t count = 0;
  for (auto& [offset, live] : merged) {
    const std::uint64_t before = t.last_offset;
    deliver(t, epoch, offset, live.exclude, std::move(live.msg));
    count += t.last_offset != before;
  }
  if (count) {
    spdlog::info("topic {}: delivered {} messages missed while the link was down ({} were held live), epoch {}",
                 t.name, count, held_count, epoch);
  }
}

bool RedisBroker::register_node() {
  const auto r = redis::eval_call(link_, heartbeat_script_, {options_.prefix + "nodes"},
                                  {options_.node_id, std::to_string(options_.node_ttl_ms)}, options_.call_timeout);
  if (!r.ok()) return false;
  registered_.store(true, std::memory_order_release);
  last_heartbeat_ms_ = mono_ms();
  return true;
}

void RedisBroker::heartbeat(bool resync_if_forgotten) {
  redis::eval(link_, heartbeat_script_, {options_.prefix + "nodes"},
              {options_.node_id, std::to_string(options_.node_ttl_ms)}, [this, resync_if_forgotten](redis::Reply r) {
                if (!r.ok() || !resync_if_forgotten) return;
                if (r.as_int() == 1 && registered_.load(std::memory_order_acquire)) {
                  // Redis did not know us: it restarted, or we were reaped after a
                  // stall and our entries are gone. Register everything again.
                  spdlog::warn("Redis had forgotten node {}; registering its presence and connections again",
                               options_.node_id);
                  resync(false);
                }
              });
}

// ---------------------------------------------------------------- presence

void RedisBroker::apply_presence(Topic& t, const PresenceEvent& ev) {
  t.presence_version = std::max(t.presence_version, ev.version);
  if (ev.node == options_.node_id) return;  // our own entries are tracked directly
  if (ev.join) {
    if (t.remote.count(ev.ref)) return;
    t.remote.emplace(ev.ref, RemoteEntry{ev.node, ev.agent});
    t.presence.track(ev.agent, ev.ref, ev.meta);
  } else {
    auto it = t.remote.find(ev.ref);
    if (it == t.remote.end()) return;
    t.presence.untrack(it->second.agent, ev.ref);
    t.remote.erase(it);
  }
  t.presence_dirty = true;
}

void RedisBroker::apply_snapshot(Topic& t, const redis::Reply& r) {
  if (r.type == redis::Reply::Type::array && !r.elements.empty()) {
    std::set<std::string> seen;
    for (std::size_t i = 1; i + 1 < r.elements.size(); i += 2) {
      const std::string& ref = r.elements[i].str;
      const auto parts = split_lines(r.elements[i + 1].str, 2);
      if (parts.size() != 3 || parts[0] == options_.node_id) continue;
      auto agent = parse_json_string(parts[1]);
      if (!agent) continue;
      seen.insert(ref);
      if (t.remote.count(ref)) continue;
      t.remote.emplace(ref, RemoteEntry{std::string(parts[0]), *agent});
      t.presence.track(*agent, ref, std::string(parts[2]));
      t.presence_dirty = true;
    }
    for (auto it = t.remote.begin(); it != t.remote.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      t.presence.untrack(it->second.agent, it->first);
      it = t.remote.erase(it);
      t.presence_dirty = true;
    }
    t.presence_version = static_cast<std::uint64_t>(r.elements[0].as_int());
  }
  // Changes that came while the snapshot loaded, in version order; those it
  // already includes are skipped by version.
  std::sort(t.buffered.begin(), t.buffered.end(),
            [](const PresenceEvent& a, const PresenceEvent& b) { return a.version < b.version; });
  for (const auto& ev : t.buffered) {
    if (ev.version > t.presence_version) apply_presence(t, ev);
  }
  t.buffered.clear();
  t.snapshot_pending = false;
}

void RedisBroker::send_track(const Topic& t, const std::string& ref, const LocalEntry& e) {
  redis::eval(link_, track_script_, {key("p", t.name), key("pv", t.name), key("np", options_.node_id)},
              {ref, options_.node_id, json_string(e.agent), e.meta, t.channel, t.name}, {});
}

// ---------------------------------------------------------------- link events

void RedisBroker::on_message(const std::string& channel, const std::string& payload) {
  if (channel.compare(0, channel_prefix_.size(), channel_prefix_) != 0 || payload.empty()) return;
  const std::string name = channel.substr(channel_prefix_.size());
  if (payload[0] == 'm') {
    const auto parts = split_lines(std::string_view(payload).substr(1), 4);
    std::uint64_t offset = 0, conn = 0;
    if (parts.size() != 5 || !parse_u64(parts[1], offset) || !parse_u64(parts[3], conn)) return;
    wire::Message msg = wire::Message::text(std::string(parts[4]));
    std::lock_guard lock(mu_);
    auto it = topics_.find(name);
    if (it == topics_.end() || it->second->members == 0) return;
    Topic& t = *it->second;
    const std::uint64_t exclude = parts[2] == options_.node_id ? conn : 0;
    if (t.backfilling) {
      t.held.push_back(Live{std::string(parts[0]), offset, exclude, std::move(msg)});
    } else {
      deliver(t, parts[0], offset, exclude, std::move(msg));
    }
  } else if (payload[0] == 'p') {
    const auto parts = split_lines(std::string_view(payload).substr(1), 5);
    PresenceEvent ev;
    if (parts.size() != 6 || !parse_u64(parts[0], ev.version) || (parts[1] != "j" && parts[1] != "l")) return;
    auto agent = parse_json_string(parts[4]);
    if (!agent) return;
    ev.join = parts[1] == "j";
    ev.node = std::string(parts[2]);
    ev.ref = std::string(parts[3]);
    ev.agent = std::move(*agent);
    ev.meta = std::string(parts[5]);
    std::lock_guard lock(mu_);
    auto it = topics_.find(name);
    if (it == topics_.end() || it->second->members == 0) return;
    Topic& t = *it->second;
    if (t.snapshot_pending) {
      t.buffered.push_back(std::move(ev));
    } else if (ev.version > t.presence_version) {
      apply_presence(t, ev);
    }
  }
}

void RedisBroker::on_up() {
  if (registered_.load(std::memory_order_acquire)) resync(true);
}

void RedisBroker::on_down() {
  std::lock_guard lock(mu_);
  for (auto& [name, t] : topics_) {
    if (t->members == 0 || t->epoch.empty()) continue;
    // Whatever arrives after the reconnect waits for the backfill, so it is
    // delivered after what was missed, in order. A backfill in flight on
    // the lost connection no longer counts.
    t->backfilling = true;
    ++t->backfill_seq;
  }
}

void RedisBroker::resync(bool after_link_loss) {
  heartbeat(false);
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (auto& [name, t] : topics_) {
      if (t->members == 0) continue;
      names.push_back(name);
      t->snapshot_pending = true;
      t->buffered.clear();
      for (const auto& [ref, e] : t->local) send_track(*t, ref, e);
      // The channel is subscribed again (on_up comes after that): read what
      // was published meanwhile. Without a link loss (Redis had only
      // forgotten the node) nothing was missed: the subscription stayed.
      if (after_link_loss && !t->epoch.empty()) start_backfill(*t);
    }
  }
  for (const auto& name : names) {
    redis::eval(link_, snapshot_script_, {key("p", name), key("pv", name)}, {}, [this, name](redis::Reply r) {
      std::lock_guard lock(mu_);
      auto it = topics_.find(name);
      if (it == topics_.end() || !it->second->snapshot_pending) return;
      if (!r.ok()) {
        spdlog::warn("topic {}: presence snapshot failed: {}", name, r.str);
        r = redis::Reply{};
      }
      apply_snapshot(*it->second, r);
    });
  }
  if (reregister_) reregister_();
}

// ---------------------------------------------------------------- broker

JoinResult RedisBroker::join(Subscriber& sub, const JoinRequest& req) {
  JoinResult r;
  Topic* tp = nullptr;
  std::shared_ptr<Gate> gate;
  bool first = false;
  std::string channel, name(req.topic), prior_epoch;
  {
    std::lock_guard lock(mu_);
    Topic& t = get_or_create(req.topic);
    tp = &t;
    // Counted before anything is read from Redis: from here on every
    // message this node receives for the topic is queued for our thread.
    ++t.members_per_thread[req.thread];
    if (req.presence) ++t.presence_per_thread[req.thread];
    ++t.members;
    if (!t.wanted) {
      t.wanted = true;
      t.snapshot_pending = true;
      t.buffered.clear();
      t.gate = std::make_shared<Gate>();
      t.synced = false;
      // A new membership: the epoch and offset last delivered here belong to
      // the previous one (its members all left), and Redis may have begun a
      // new epoch since. Kept, that stale epoch made the current epoch's
      // first message or backfill look like an epoch change, whose reset
      // cleared the new members' filters: they got messages from before
      // their join (tests/unit/broker_contract_test.cpp,
      // BackendDataLossStartsANewEpochAndMembersAreTold). The join's reply
      // sets the epoch again; a join while Redis is down still reports the
      // last one seen (protocol.md §9).
      prior_epoch = std::move(t.epoch);
      t.epoch.clear();
      t.last_offset = 0;
      first = true;
    }
    gate = t.gate;
    channel = t.channel;
  }
  // The topic cannot go away while we count as a member.
  if (first) {
    redis::Reply snap;
    if (link_.subscribe(channel, options_.call_timeout)) {
      snap = redis::eval_call(link_, snapshot_script_, {key("p", name), key("pv", name)}, {}, options_.call_timeout);
    } else if (link_.up()) {
      // Redis is up but slow: the subscription will come, but messages
      // published before it are not delivered live to this join.
      spdlog::warn("topic {}: Redis did not confirm the subscription within {} ms", name,
                   options_.call_timeout.count());
    }
    {
      std::lock_guard lock(mu_);
      // Not subscribed (Redis down): the link subscribes on reconnect and
      // resync() loads the snapshot then.
      apply_snapshot(*tp, snap.ok() ? snap : redis::Reply{});
    }
    gate->release();
  } else if (gate) {
    gate->wait(options_.call_timeout);
  }

  const bool recover = req.recover.has_value();
  const auto jr = redis::eval_call(
      link_, join_script_, {key("o", name), key("e", name), key("h", name)},
      {new_epoch(), recover ? "1" : "0", recover ? std::to_string(req.recover->offset) : "0",
       recover ? req.recover->epoch : "", std::to_string(options_.history_ttl_ms), std::to_string(keep_ms)},
      options_.call_timeout);

  std::lock_guard lock(mu_);
  Topic& t = *tp;
  if (jr.type == redis::Reply::Type::array && jr.elements.size() >= 3) {
    r.offset = static_cast<std::uint64_t>(std::max<std::int64_t>(0, jr.elements[0].as_int()));
    r.epoch = jr.elements[1].str;
    r.recovered = jr.elements[2].as_int() == 1;
    for (std::size_t i = 3; i < jr.elements.size(); ++i) r.backlog.push_back(wire::Message::text(jr.elements[i].str));
    if (t.epoch.empty()) t.epoch = r.epoch;
  } else {
    // Redis is down: the member joins this node's local delivery; its
    // offset and epoch are unknown, so a later recover starts afresh.
    spdlog::warn("join of {} without Redis: {}", name, jr.str);
    r.epoch = t.epoch.empty() ? prior_epoch : t.epoch;
  }

  fanout_.add(sub, req, t.id, r.offset, t.presence_seq);

  if (req.tracked) {
    sub.presence_ref =
        options_.node_id + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
    LocalEntry entry{sub.agent_id, presence::meta_json(req.meta, sub.presence_ref, unix_ms())};
    t.presence.track(sub.agent_id, sub.presence_ref, entry.meta);
    t.presence_dirty = true;
    send_track(t, sub.presence_ref, entry);
    t.local.emplace(sub.presence_ref, std::move(entry));
  }
  if (req.presence) r.presence_state_json = t.presence.state_for_joiner();
  return r;
}

void RedisBroker::leave(Subscriber& sub, std::string_view topic) {
  {
    std::lock_guard lock(mu_);
    auto it = topics_.find(std::string(topic));
    if (it == topics_.end() || it->second->id != sub.topic_id) return;
    Topic& t = *it->second;
    fanout_.remove(sub);
    --t.members_per_thread[sub.thread];
    if (sub.receives_presence) --t.presence_per_thread[sub.thread];
    --t.members;
    if (!sub.presence_ref.empty()) {  // empty: never tracked (see join)
      t.presence.untrack(sub.agent_id, sub.presence_ref);
      t.local.erase(sub.presence_ref);
      t.presence_dirty = true;
      redis::eval(link_, untrack_script_, {key("p", t.name), key("pv", t.name)},
                  {sub.presence_ref, options_.node_id, json_string(sub.agent_id), t.channel}, {});
    }
    if (t.members == 0) {
      // The last local member: stop listening, and forget the other nodes'
      // presence, which nobody here watches any more.
      const bool unsubscribe = t.wanted;
      t.wanted = false;
      t.gate.reset();
      for (const auto& [ref, e] : t.remote) t.presence.untrack(e.agent, ref);
      t.remote.clear();
      t.buffered.clear();
      t.snapshot_pending = false;
      t.held.clear();
      t.backfilling = false;
      ++t.backfill_seq;
      // Posted under the lock, so a join that follows subscribes after it.
      if (unsubscribe) link_.unsubscribe(t.channel);
    }
    sub.topic_id = 0;
  }
}

std::vector<std::string> RedisBroker::publish_args(std::string_view topic, const std::string& head,
                                                   std::uint64_t exclude_connection) {
  return {std::string(head), options_.node_id, std::to_string(exclude_connection),
          std::to_string(options_.history_size),
          std::to_string(options_.history_ttl_ms > 0 ? options_.history_ttl_ms : keep_ms), new_epoch(),
          channel_prefix_ + std::string(topic), std::to_string(keep_ms)};
}

PublishResult RedisBroker::published(const redis::Reply& r) {
  PublishResult res;
  if (r.type == redis::Reply::Type::array && r.elements.size() == 2) {
    res.offset = static_cast<std::uint64_t>(r.elements[0].as_int());
    res.epoch = r.elements[1].str;
    metrics::bump(metrics_.publishes);
    return res;
  }
  spdlog::warn("publish: Redis did not confirm: {}", r.str);
  res.reach = PublishResult::Reach::unknown;
  return res;
}

PublishResult RedisBroker::publish_local(std::string_view topic, std::string head, std::uint64_t exclude_connection) {
  PublishResult res;
  res.reach = PublishResult::Reach::local;
  head += local_tail;
  std::lock_guard lock(mu_);
  auto it = topics_.find(std::string(topic));
  if (it != topics_.end() && it->second->members > 0) {
    Topic& t = *it->second;
    fanout_.queue(t.members_per_thread,
                  Delivery{t.id, unnumbered, exclude_connection, wire::Message::text(std::move(head)),
                           DeliveryKind::message});
  }
  metrics::bump(metrics_.publishes);
  return res;
}

PublishResult RedisBroker::publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                                   bool payload_empty, std::string_view from, std::uint64_t exclude_connection) {
  std::string head = publish_head(topic, event, payload_json, payload_empty, from, unix_ms());
  const auto r = redis::eval_call(link_, publish_script_, {key("o", topic), key("e", topic), key("h", topic)},
                                  publish_args(topic, head, exclude_connection), options_.call_timeout);
  if (r.unsent()) return publish_local(topic, std::move(head), exclude_connection);
  return published(r);
}

void RedisBroker::publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                                bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                                PublishDone done) {
  std::string head = publish_head(topic, event, payload_json, payload_empty, from, unix_ms());
  if (!link_.up()) {
    done(publish_local(topic, std::move(head), exclude_connection));
    return;
  }
  auto args = publish_args(topic, head, exclude_connection);
  // Commands leave in order on one connection, so one client's publishes
  // get increasing offsets.
  redis::eval(link_, publish_script_, {key("o", topic), key("e", topic), key("h", topic)}, std::move(args),
              [this, t = std::string(topic), head = std::move(head), exclude_connection,
               done = std::move(done)](redis::Reply r) mutable {
                if (r.unsent()) {
                  done(publish_local(t, std::move(head), exclude_connection));
                } else {
                  done(published(r));
                }
              });
}

std::string RedisBroker::presence_state(std::string_view topic) {
  {
    std::lock_guard lock(mu_);
    auto it = topics_.find(std::string(topic));
    if (it != topics_.end() && it->second->members > 0 && !it->second->snapshot_pending) {
      return it->second->presence.current_json();
    }
  }
  // Nobody here is in the topic: read the cluster's entries from Redis.
  const auto r =
      redis::eval_call(link_, snapshot_script_, {key("p", topic), key("pv", topic)}, {}, options_.call_timeout);
  presence::PresenceTracker all;
  for (std::size_t i = 1; i + 1 < r.elements.size(); i += 2) {
    const auto parts = split_lines(r.elements[i + 1].str, 2);
    if (parts.size() != 3) continue;
    if (auto agent = parse_json_string(parts[1])) all.track(*agent, r.elements[i].str, std::string(parts[2]));
  }
  return all.current_json();
}

void RedisBroker::tick() {
  const std::int64_t now = mono_ms();
  {
    std::lock_guard lock(mu_);
    for (auto it = topics_.begin(); it != topics_.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty && !t.snapshot_pending) {
        t.presence_dirty = false;
        fanout_.flush_presence(t.id, t.name, t.presence, t.presence_seq, t.presence_per_thread);
      }
      if (t.members == 0 && !t.wanted && t.presence.empty()) {
        it = topics_.erase(it);
        metrics_.topics.fetch_sub(1, std::memory_order_relaxed);
      } else {
        ++it;
      }
    }
  }
  if (!link_.up()) return;
  if (now - last_heartbeat_ms_ >= std::max<std::int64_t>(options_.node_ttl_ms / 5, 100)) {
    last_heartbeat_ms_ = now;
    heartbeat(true);
  }
  if (now - last_reap_ms_ >= reap_interval_ms) {
    last_reap_ms_ = now;
    redis::eval(link_, reap_script_, {options_.prefix + "nodes"}, {options_.prefix}, [](redis::Reply r) {
      if (r.ok() && r.as_int() > 0) spdlog::warn("reaped {} node(s) whose heartbeat stopped", r.as_int());
    });
  }
}

BrokerStats RedisBroker::stats() {
  BrokerStats s;
  std::lock_guard lock(mu_);
  s.topics = topics_.size();
  for (const auto& [name, t] : topics_) s.members += t->members;
  return s;
}

}  // namespace synapse::pubsub
