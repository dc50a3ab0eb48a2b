#include "pubsub/redis_broker.hpp"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <set>
#include <spdlog/spdlog.h>

#include "core/crypto.hpp"
#include "core/clock.hpp"
#include "core/handoff.hpp"
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

namespace {

// A reply handed from the link's thread to a blocking join(); none in time
// is a lost link.
struct ReplyHandoff {
  core::Handoff<redis::Reply> value;
  void set(redis::Reply r) { value.set(std::move(r)); }
  redis::Reply wait(std::chrono::milliseconds timeout) {
    auto r = value.wait(timeout);
    if (!r) return redis::Reply::failure(redis::Reply::Type::lost, "Redis did not answer in time");
    return std::move(*r);
  }
};

}  // namespace

// The joiners of a topic that came while its first member subscribes: their
// next step runs when the subscription and the presence snapshot are in.
// Guarded by the topic's shard mutex; the continuations run outside it.
struct RedisBroker::Gate {
  bool open = false;
  std::vector<std::function<void()>> waiters;
};

struct RedisBroker::PendingJoin {
  // Set on the member's thread when the join starts; read-only afterwards.
  Subscriber* sub = nullptr;  // dereferenced on `thread` only, while pending_ lists this join
  std::string topic;
  std::uint64_t topic_id = 0;
  std::size_t thread = 0;
  bool presence = false;
  bool tracked = true;
  json::object meta;
  std::optional<Recover> recover;
  std::chrono::steady_clock::time_point deadline;
  JoinDone done;                          // join_async's; runs on `thread`
  std::shared_ptr<ReplyHandoff> handoff;  // a blocking join() waits here instead
  // Set by leave() (on `thread`); the link's steps read it only to skip
  // work nobody waits for. What decides is pending_, on `thread`.
  std::atomic<bool> cancelled{false};
};

RedisBroker::RedisBroker(RedisBrokerOptions options, redis::Link& link, std::vector<Poster> threads,
                         metrics::Metrics& metrics)
    : options_(std::move(options)),
      link_(link),
      metrics_(metrics),
      fanout_(threads, metrics),
      publish_script_(std::string(lua::now_ms) + lua::publish),
      join_script_(std::string(lua::now_ms) + lua::join),
      snapshot_script_(lua::presence_snapshot),
      track_script_(lua::track),
      untrack_script_(lua::untrack),
      heartbeat_script_(std::string(lua::now_ms) + lua::heartbeat),
      reap_script_(std::string(lua::now_ms) + lua::reap),
      backfill_script_(lua::backfill),
      channel_prefix_(options_.prefix + "c:"),
      posters_(std::move(threads)),  // after fanout_, which copied them
      pending_(fanout_.threads()) {
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

RedisBroker::Shard& RedisBroker::shard_of(std::string_view name) {
  return shards_[std::hash<std::string_view>{}(name) % shard_count];
}

RedisBroker::Topic* RedisBroker::find(Shard& sh, std::string_view name, std::uint64_t id) {
  auto it = sh.topics.find(std::string(name));
  if (it == sh.topics.end() || (id != 0 && it->second->id != id)) return nullptr;
  return it->second.get();
}

RedisBroker::Topic& RedisBroker::get_or_create(Shard& sh, std::string_view name) {
  auto it = sh.topics.find(std::string(name));
  if (it != sh.topics.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->id = next_topic_id_.fetch_add(1, std::memory_order_relaxed);
  t->name = std::string(name);
  t->channel = channel_prefix_ + t->name;
  t->members_per_thread.assign(fanout_.threads(), 0);
  t->presence_per_thread.assign(fanout_.threads(), 0);
  metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  return *sh.topics.emplace(t->name, std::move(t)).first->second;
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
                Shard& sh = shard_of(topic);
                std::lock_guard lock(sh.mu);
                Topic* topic_now = find(sh, topic, id);
                if (!topic_now) return;
                if (topic_now->backfilling && topic_now->backfill_seq == seq) finish_backfill(*topic_now, r);
              });
}

// Contract: called once per backfill, under the topic's shard lock, with the backfill script's
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
    const auto body = decode_body(r.elements[i + 1].str);
    if (!body) continue;  // not a body: a hole, reported as a gap like any other
    const std::uint64_t exclude = r.elements[i + 2].str == options_.node_id ? conn : 0;
    merged.emplace(offset, Live{epoch, offset, exclude, frame_numbered(t.name, *body, epoch, offset)});
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
    const auto body = decode_body(parts[4]);
    if (!body) {
      spdlog::warn("topic {}: dropped a message of offset {} that is not a message body", name, offset);
      return;
    }
    // Framed here, once for every member on this node: the delivery edge.
    wire::Message msg = frame_numbered(name, *body, parts[0], offset);
    Shard& sh = shard_of(name);
    std::lock_guard lock(sh.mu);
    Topic* tp = find(sh, name);
    if (!tp || tp->members == 0) return;
    Topic& t = *tp;
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
    Shard& sh = shard_of(name);
    std::lock_guard lock(sh.mu);
    Topic* tp = find(sh, name);
    if (!tp || tp->members == 0) return;
    Topic& t = *tp;
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
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto& [name, t] : sh.topics) {
      if (t->members == 0 || t->epoch.empty()) continue;
      // Whatever arrives after the reconnect waits for the backfill, so it
      // is delivered after what was missed, in order. A backfill in flight
      // on the lost connection no longer counts.
      t->backfilling = true;
      ++t->backfill_seq;
    }
  }
}

void RedisBroker::resync(bool after_link_loss) {
  heartbeat(false);
  std::vector<std::string> names;
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto& [name, t] : sh.topics) {
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
      Shard& sh = shard_of(name);
      std::lock_guard lock(sh.mu);
      Topic* t = find(sh, name);
      if (!t || !t->snapshot_pending) return;
      if (!r.ok()) {
        spdlog::warn("topic {}: presence snapshot failed: {}", name, r.str);
        r = redis::Reply{};
      }
      apply_snapshot(*t, r);
    });
  }
  if (reregister_) reregister_();
}

// ---------------------------------------------------------------- broker

std::chrono::milliseconds RedisBroker::remaining(const PendingJoin& pj) const {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(pj.deadline - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(1));
}

// Step 1, on the member's thread: count it, list it as pending, and start
// step 2 (the first member) or queue at the Gate / go to step 3 (the others).
std::shared_ptr<RedisBroker::PendingJoin> RedisBroker::begin_join(Subscriber& sub, const JoinRequest& req,
                                                                  JoinDone done, bool blocking) {
  auto pj = std::make_shared<PendingJoin>();
  pj->sub = &sub;
  pj->topic = std::string(req.topic);
  pj->thread = req.thread;
  pj->presence = req.presence;
  pj->tracked = req.tracked;
  pj->meta = req.meta;
  pj->recover = req.recover;
  pj->deadline = std::chrono::steady_clock::now() + options_.call_timeout;
  pj->done = std::move(done);
  if (blocking) pj->handoff = std::make_shared<ReplyHandoff>();
  sub.presence_ref.clear();

  bool go_on = false;  // straight to the join script
  {
    Shard& sh = shard_of(req.topic);
    std::lock_guard lock(sh.mu);
    Topic& t = get_or_create(sh, req.topic);
    pj->topic_id = t.id;
    // Counted before anything is asked of Redis: from here on every
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
      if (!t.epoch.empty()) t.prior_epoch = std::move(t.epoch);
      t.epoch.clear();
      t.last_offset = 0;
      // Posted under the lock, so it follows an unsubscribe posted by the
      // leave that emptied the topic before.
      link_.subscribe(t.channel, remaining(*pj),
                      [this, pj, gate = t.gate](bool confirmed) { on_subscribed(pj, gate, confirmed); });
    } else if (t.gate && !t.gate->open) {
      t.gate->waiters.push_back([this, pj] { send_join_script(pj); });
    } else {
      go_on = true;
    }
  }
  // The member's table is its thread's (ours): no drain runs before we return.
  fanout_.add_pending(sub, req, pj->topic_id);
  pending_[req.thread][&sub] = pj;
  if (go_on) send_join_script(pj);
  return pj;
}

// Step 2, on the link's thread: the first member's subscription answered.
void RedisBroker::on_subscribed(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate,
                                bool confirmed) {
  if (confirmed) {
    // The snapshot is the topic's, for every joiner at the gate, so it is
    // loaded even if this one has left meanwhile.
    redis::eval(
        link_, snapshot_script_, {key("p", pj->topic), key("pv", pj->topic)}, {},
        [this, pj, gate](redis::Reply r) {
          if (!r.ok()) spdlog::warn("topic {}: presence snapshot failed: {}", pj->topic, r.str);
          open_gate(pj, gate, &r);
        },
        remaining(*pj));
    return;
  }
  if (link_.up()) {
    // Redis is up but slow: the subscription will come, but messages
    // published before it are not delivered live to this join.
    spdlog::warn("topic {}: Redis did not confirm the subscription within {} ms", pj->topic,
                 options_.call_timeout.count());
  }
  // Not subscribed (Redis down): the link subscribes on reconnect and
  // resync() loads the snapshot then.
  open_gate(pj, gate, nullptr);
}

void RedisBroker::open_gate(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate,
                            const redis::Reply* snap) {
  std::vector<std::function<void()>> waiters;
  {
    Shard& sh = shard_of(pj->topic);
    std::lock_guard lock(sh.mu);
    // Only for the topic this subscription was made for: its last member
    // may have left, and a new first member be subscribing again.
    if (Topic* t = find(sh, pj->topic, pj->topic_id); t && t->gate == gate) {
      apply_snapshot(*t, snap && snap->ok() ? *snap : redis::Reply{});
    }
    gate->open = true;
    waiters.swap(gate->waiters);
  }
  send_join_script(pj);
  for (auto& w : waiters) w();
}

// Step 3, any thread: the join script, within what is left of the deadline.
void RedisBroker::send_join_script(const std::shared_ptr<PendingJoin>& pj) {
  if (pj->cancelled.load(std::memory_order_acquire)) return;  // left: nobody waits for it
  if (std::chrono::steady_clock::now() >= pj->deadline) {
    join_answered(pj, redis::Reply::failure(redis::Reply::Type::lost, "Redis did not answer in time"));
    return;
  }
  const bool recover = pj->recover.has_value();
  redis::eval(
      link_, join_script_, {key("o", pj->topic), key("e", pj->topic), key("h", pj->topic)},
      {new_epoch(), recover ? "1" : "0", recover ? std::to_string(pj->recover->offset) : "0",
       recover ? pj->recover->epoch : "", std::to_string(options_.history_ttl_ms), std::to_string(keep_ms)},
      [this, pj](redis::Reply r) { join_answered(pj, std::move(r)); }, remaining(*pj));
}

// The join script answered (or its deadline passed), on the link's thread:
// back to the member's thread.
void RedisBroker::join_answered(const std::shared_ptr<PendingJoin>& pj, redis::Reply r) {
  if (pj->handoff) {
    pj->handoff->set(std::move(r));
    return;
  }
  if (pj->cancelled.load(std::memory_order_acquire)) return;
  posters_[pj->thread]([this, pj, r = std::move(r)] { complete_join(pj, r); });
}

// Step 4, on the member's thread.
void RedisBroker::complete_join(const std::shared_ptr<PendingJoin>& pj, const redis::Reply& r) {
  auto& pending = pending_[pj->thread];
  auto it = pending.find(pj->sub);
  if (it == pending.end() || it->second != pj) return;  // left meanwhile: `sub` may be gone
  Subscriber& sub = *pj->sub;
  std::uint64_t presence_start = 0;
  JoinResult result = finish_join(*pj, r, presence_start);
  const bool joined = !result.unavailable;
  const std::uint64_t start = result.offset;
  // Still listed while `done` runs: a leave() from inside it cancels the
  // replay below (and may destroy `sub`).
  JoinDone done = std::move(pj->done);
  if (done) done(std::move(result));
  if (!joined) return;
  auto again = pending.find(pj->sub);
  if (again == pending.end() || again->second != pj) return;
  pending.erase(again);
  fanout_.activate(sub, start, presence_start);
}

JoinResult RedisBroker::finish_join(PendingJoin& pj, const redis::Reply& jr, std::uint64_t& presence_start) {
  Subscriber& sub = *pj.sub;
  JoinResult r;
  Shard& sh = shard_of(pj.topic);
  std::lock_guard lock(sh.mu);
  // A member keeps its topic: it cannot have been released meanwhile.
  Topic* tp = find(sh, pj.topic, pj.topic_id);
  if (!tp) {
    spdlog::error("join of {}: the topic went away under a pending member", pj.topic);
    pending_[pj.thread].erase(&sub);
    fanout_.remove(sub);
    sub.topic_id = 0;
    r.unavailable = true;
    return r;
  }
  Topic& t = *tp;
  if (jr.type == redis::Reply::Type::array && jr.elements.size() >= 3) {
    r.offset = static_cast<std::uint64_t>(std::max<std::int64_t>(0, jr.elements[0].as_int()));
    r.epoch = jr.elements[1].str;
    r.recovered = jr.elements[2].as_int() == 1;
    // The script returns the bodies of recover.offset+1 .. offset, every
    // one present: each is framed at its offset.
    std::uint64_t at = pj.recover ? pj.recover->offset : 0;
    for (std::size_t i = 3; i < jr.elements.size(); ++i) {
      ++at;
      if (const auto body = decode_body(jr.elements[i].str)) {
        r.backlog.push_back(frame_numbered(pj.topic, *body, r.epoch, at));
      } else {
        spdlog::warn("topic {}: history entry {} is not a message body; not recovered", pj.topic, at);
      }
    }
    if (t.epoch.empty()) t.epoch = r.epoch;
  } else if (jr.unsent()) {
    // Redis is down: the member joins this node's local delivery; its
    // offset and epoch are unknown, so a later recover starts afresh.
    spdlog::warn("join of {} without Redis: {}", pj.topic, jr.str);
    r.epoch = t.epoch.empty() ? t.prior_epoch : t.epoch;
  } else {
    // Sent, and no answer in time (or an error): refused, nothing kept.
    spdlog::warn("join of {} failed: {}", pj.topic, jr.str.empty() ? "no answer from Redis" : jr.str);
    pending_[pj.thread].erase(&sub);
    drop_member(t, sub);
    r.unavailable = true;
    return r;
  }
  if (pj.tracked) {
    sub.presence_ref =
        options_.node_id + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
    LocalEntry entry{sub.agent_id, presence::meta_json(pj.meta, sub.presence_ref, unix_ms())};
    t.presence.track(sub.agent_id, sub.presence_ref, entry.meta);
    t.presence_dirty = true;
    send_track(t, sub.presence_ref, entry);
    t.local.emplace(sub.presence_ref, std::move(entry));
  }
  // The state and the diff sequence it is current at, taken together: the
  // member gets every diff after it and none before.
  presence_start = t.presence_seq;
  if (pj.presence) r.presence_state_json = t.presence.state_for_joiner();
  return r;
}

void RedisBroker::join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) {
  begin_join(sub, req, std::move(done), false);
}

JoinResult RedisBroker::join(Subscriber& sub, const JoinRequest& req) {
  auto pj = begin_join(sub, req, {}, true);
  // Every step has the deadline; the margin only covers a stopped link.
  const redis::Reply r = pj->handoff->wait(options_.call_timeout + std::chrono::milliseconds(500));
  std::uint64_t presence_start = 0;
  JoinResult result = finish_join(*pj, r, presence_start);
  if (!result.unavailable) {
    pending_[pj->thread].erase(&sub);
    // This thread was blocked: nothing was drained, so nothing was held.
    fanout_.activate(sub, result.offset, presence_start);
  }
  return result;
}

void RedisBroker::drop_member(Topic& t, Subscriber& sub) {
  fanout_.remove(sub);
  --t.members_per_thread[sub.thread];
  if (sub.receives_presence) --t.presence_per_thread[sub.thread];
  --t.members;
  if (!sub.presence_ref.empty()) {  // empty: never tracked (see finish_join)
    t.presence.untrack(sub.agent_id, sub.presence_ref);
    t.local.erase(sub.presence_ref);
    t.presence_dirty = true;
    redis::eval(link_, untrack_script_, {key("p", t.name), key("pv", t.name)},
                {sub.presence_ref, options_.node_id, json_string(sub.agent_id), t.channel}, {});
  }
  if (t.members == 0) {
    // The last local member: stop listening, and forget the other nodes'
    // presence, which nobody here watches any more. Joiners still at the
    // gate cannot exist (they count as members).
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

void RedisBroker::leave(Subscriber& sub, std::string_view topic) {
  if (sub.thread < pending_.size()) {
    auto& pending = pending_[sub.thread];
    if (auto it = pending.find(&sub); it != pending.end()) {
      // A join in flight: its completion will find nothing and do nothing.
      it->second->cancelled.store(true, std::memory_order_release);
      pending.erase(it);
    }
  }
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  if (sub.topic_id == 0) return;  // never joined, or the join failed and was undone
  Topic* t = find(sh, topic, sub.topic_id);
  if (!t) return;
  drop_member(*t, sub);
}

std::vector<std::string> RedisBroker::publish_args(std::string_view topic, const std::string& body,
                                                   std::uint64_t exclude_connection) {
  return {body, options_.node_id, std::to_string(exclude_connection),
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

PublishResult RedisBroker::publish_local(std::string_view topic, const std::string& body,
                                         std::uint64_t exclude_connection) {
  PublishResult res;
  res.reach = PublishResult::Reach::local;
  const auto parts = decode_body(body);  // encode_body's: always decodes
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  if (Topic* tp = find(sh, topic); tp && tp->members > 0 && parts) {
    Topic& t = *tp;
    fanout_.queue(t.members_per_thread,
                  Delivery{t.id, unnumbered, exclude_connection, frame_local(topic, *parts), DeliveryKind::message});
  }
  metrics::bump(metrics_.publishes);
  return res;
}

PublishResult RedisBroker::publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                                   bool payload_empty, std::string_view from, std::uint64_t exclude_connection) {
  const std::string body = encode_body(event, payload_json, payload_empty, from, unix_ms());
  const auto r = redis::eval_call(link_, publish_script_, {key("o", topic), key("e", topic), key("h", topic)},
                                  publish_args(topic, body, exclude_connection), options_.call_timeout);
  if (r.unsent()) return publish_local(topic, body, exclude_connection);
  return published(r);
}

void RedisBroker::publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                                bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                                PublishDone done) {
  std::string body = encode_body(event, payload_json, payload_empty, from, unix_ms());
  if (!link_.up()) {
    done(publish_local(topic, body, exclude_connection));
    return;
  }
  auto args = publish_args(topic, body, exclude_connection);
  // Commands leave in order on one connection, so one client's publishes
  // get increasing offsets.
  redis::eval(link_, publish_script_, {key("o", topic), key("e", topic), key("h", topic)}, std::move(args),
              [this, t = std::string(topic), body = std::move(body), exclude_connection,
               done = std::move(done)](redis::Reply r) mutable {
                if (r.unsent()) {
                  done(publish_local(t, body, exclude_connection));
                } else {
                  done(published(r));
                }
              });
}

namespace {

// The cluster's presence of a topic from the snapshot script's reply.
std::string presence_from_snapshot(const redis::Reply& r) {
  presence::PresenceTracker all;
  for (std::size_t i = 1; i + 1 < r.elements.size(); i += 2) {
    const auto parts = split_lines(r.elements[i + 1].str, 2);
    if (parts.size() != 3) continue;
    if (auto agent = parse_json_string(parts[1])) all.track(*agent, r.elements[i].str, std::string(parts[2]));
  }
  return all.current_json();
}

}  // namespace

std::string RedisBroker::presence_state(std::string_view topic) {
  {
    Shard& sh = shard_of(topic);
    std::lock_guard lock(sh.mu);
    if (Topic* t = find(sh, topic); t && t->members > 0 && !t->snapshot_pending) return t->presence.current_json();
  }
  // Nobody here is in the topic: read the cluster's entries from Redis.
  return presence_from_snapshot(
      redis::eval_call(link_, snapshot_script_, {key("p", topic), key("pv", topic)}, {}, options_.call_timeout));
}

void RedisBroker::presence_state_async(std::string_view topic, PresenceDone done) {
  std::optional<std::string> here;
  {
    Shard& sh = shard_of(topic);
    std::lock_guard lock(sh.mu);
    if (Topic* t = find(sh, topic); t && t->members > 0 && !t->snapshot_pending) here = t->presence.current_json();
  }
  if (here) {
    done(std::move(here));
    return;
  }
  // Nobody here is in the topic (or its snapshot is loading): the cluster's
  // entries from Redis, answered on the link's thread.
  redis::eval(
      link_, snapshot_script_, {key("p", topic), key("pv", topic)}, {},
      [done = std::move(done)](redis::Reply r) {
        if (!r.ok() || r.type != redis::Reply::Type::array) {
          done(std::nullopt);
          return;
        }
        done(presence_from_snapshot(r));
      },
      options_.call_timeout);
}

void RedisBroker::tick() {
  const std::int64_t now = mono_ms();
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto it = sh.topics.begin(); it != sh.topics.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty && !t.snapshot_pending) {
        t.presence_dirty = false;
        fanout_.flush_presence(t.id, t.name, t.presence, t.presence_seq, t.presence_per_thread);
      }
      if (t.members == 0 && !t.wanted && t.presence.empty()) {
        it = sh.topics.erase(it);
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
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    s.topics += sh.topics.size();
    for (const auto& [name, t] : sh.topics) s.members += t->members;
  }
  return s;
}

}  // namespace synapse::pubsub
