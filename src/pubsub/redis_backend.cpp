#include "pubsub/redis_backend.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/parse.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/redis_scripts.hpp"
#include "redis/link.hpp"

namespace synapse::pubsub {
namespace json = boost::json;
using core::parse_u64;

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

// What is left until `deadline`, at least 1 ms (the link's timers take a duration).
std::chrono::milliseconds until(Deadline deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(1));
}

}  // namespace

std::string redis_prefix(int db) { return "synapse:" + std::to_string(db) + ":"; }

RedisBackend::RedisBackend(RedisBackendOptions options, redis::Link& link, metrics::Metrics& metrics)
    : options_(std::move(options)),
      link_(link),
      metrics_(metrics),
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

RedisBackend::~RedisBackend() = default;

std::string RedisBackend::key(const char* kind, std::string_view topic) const {
  std::string k = options_.prefix;
  k += kind;
  k += ':';
  k += topic;
  return k;
}

RedisBackend::Shard& RedisBackend::shard_of(std::string_view name) {
  return shards_[std::hash<std::string_view>{}(name) % shard_count];
}

RedisBackend::Topic& RedisBackend::get_or_create(Shard& sh, std::string_view name) {
  auto [it, fresh] = sh.topics.try_emplace(std::string(name));
  if (fresh) {
    it->second.channel = channel_prefix_ + it->first;
    metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  }
  return it->second;
}

void RedisBackend::release_if_unused(Shard& sh, std::string_view name) {
  auto it = sh.topics.find(std::string(name));
  if (it == sh.topics.end() || it->second.subscribed > 0 || !it->second.own.empty()) return;
  sh.topics.erase(it);
  metrics_.topics.fetch_sub(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- the node

bool RedisBackend::register_node() {
  const auto r = redis::eval_call(link_, heartbeat_script_, {options_.prefix + "nodes"},
                                  {options_.node_id, std::to_string(options_.node_ttl_ms)}, options_.call_timeout);
  if (!r.ok()) return false;
  registered_.store(true, std::memory_order_release);
  last_heartbeat_ms_ = mono_ms();
  return true;
}

void RedisBackend::heartbeat(bool resync_if_forgotten) {
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

// Contract: on the link's thread, once the link is up with every wanted
// channel subscribed again (on_up), or after a heartbeat found the node
// forgotten. Registers the node, adds this node's presence entries again
// (Redis may have lost them; adding one twice publishes one more join,
// which every node ignores by phx_ref), then tells the Hub, which reads
// every topic's presence again and, after a lost link (`missed`), what each
// topic's stream received meanwhile; last, the connection counts.
void RedisBackend::resync(bool missed) {
  heartbeat(false);
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (const auto& [name, t] : sh.topics) {
      for (const auto& [ref, e] : t.own) send_track(name, t.channel, ref, e);
    }
  }
  if (events_) events_->on_backend_back(missed);
  if (reregister_) reregister_();
}

void RedisBackend::tick() {
  if (!link_.up()) return;
  const std::int64_t now = mono_ms();
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

void RedisBackend::stats(BrokerStats& s) {
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    s.topics += sh.topics.size();
  }
}

// ---------------------------------------------------------------- link events

// Contract: on the link's thread, one message at a time, in the order the
// subscriber connection received them (for one topic, Redis's offset
// order). Hands messages and the other nodes' presence changes to the Hub
// with no backend lock held; a payload that does not parse is dropped.
void RedisBackend::on_message(const std::string& channel, const std::string& payload) {
  if (!events_ || channel.compare(0, channel_prefix_.size(), channel_prefix_) != 0 || payload.empty()) return;
  const std::string_view name = std::string_view(channel).substr(channel_prefix_.size());
  if (payload[0] == 'm') {
    const auto parts = split_lines(std::string_view(payload).substr(1), 4);
    std::uint64_t offset = 0, conn = 0;
    if (parts.size() != 5 || !parse_u64(parts[1], offset) || !parse_u64(parts[3], conn)) return;
    // The publisher's own connection does not get its message: only ours.
    const std::uint64_t exclude = parts[2] == options_.node_id ? conn : 0;
    events_->on_message(name, parts[0], offset, exclude, parts[4]);
  } else if (payload[0] == 'p') {
    const auto parts = split_lines(std::string_view(payload).substr(1), 5);
    PresenceChange ev;
    if (parts.size() != 6 || !parse_u64(parts[0], ev.version) || (parts[1] != "j" && parts[1] != "l")) return;
    auto agent = parse_json_string(parts[4]);
    if (!agent) return;
    ev.join = parts[1] == "j";
    ev.mine = parts[2] == options_.node_id;
    ev.ref = std::string(parts[3]);
    ev.agent = std::move(*agent);
    ev.meta = std::string(parts[5]);
    events_->on_presence(name, ev);
  }
}

void RedisBackend::on_up() {
  if (registered_.load(std::memory_order_acquire)) resync(true);
}

void RedisBackend::on_down() {
  if (events_) events_->on_backend_lost();
}

// ---------------------------------------------------------------- topics

void RedisBackend::subscribe(std::string_view topic, Deadline deadline, std::function<void(bool)> done) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  Topic& t = get_or_create(sh, topic);
  ++t.subscribed;
  // Every call asks (one already subscribed is confirmed again by Redis),
  // so `done` means this call's subscription, whatever came before it.
  // Posted under the lock: the link sees SUBSCRIBE and UNSUBSCRIBE in the
  // order of the count.
  link_.subscribe(t.channel, until(deadline), std::move(done));
}

void RedisBackend::unsubscribe(std::string_view topic) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  auto it = sh.topics.find(std::string(topic));
  if (it == sh.topics.end() || it->second.subscribed == 0) return;
  if (--it->second.subscribed == 0) {
    link_.unsubscribe(it->second.channel);
    release_if_unused(sh, topic);
  }
}

void RedisBackend::position(std::string_view topic, const std::optional<Recover>& recover, Deadline deadline,
                            std::function<void(Position)> done) {
  if (std::chrono::steady_clock::now() >= deadline) {
    spdlog::warn("join of {}: Redis did not answer in time", topic);
    Position p;
    p.ok = false;
    done(std::move(p));
    return;
  }
  const bool rec = recover.has_value();
  redis::eval(
      link_, join_script_, {key("o", topic), key("e", topic), key("h", topic)},
      {new_epoch(), rec ? "1" : "0", rec ? std::to_string(recover->offset) : "0", rec ? recover->epoch : "",
       std::to_string(options_.history_ttl_ms), std::to_string(keep_ms)},
      [topic = std::string(topic), done = std::move(done)](redis::Reply r) {
        Position p;
        if (r.type == redis::Reply::Type::array && r.elements.size() >= 3) {
          p.offset = static_cast<std::uint64_t>(std::max<std::int64_t>(0, r.elements[0].as_int()));
          p.epoch = r.elements[1].str;
          p.recovered = r.elements[2].as_int() == 1;
          // The script returns the bodies of recover.offset+1 .. offset, every one present.
          for (std::size_t i = 3; i < r.elements.size(); ++i) p.bodies.push_back(std::move(r.elements[i].str));
        } else if (r.unsent()) {
          spdlog::warn("join of {} without Redis: {}", topic, r.str);
          p.offline = true;
        } else {
          // Sent, and no answer in time (or an error): the join is refused.
          spdlog::warn("join of {} failed: {}", topic, r.str.empty() ? "no answer from Redis" : r.str);
          p.ok = false;
        }
        done(std::move(p));
      },
      until(deadline));
}

// ---------------------------------------------------------------- publish

PublishResult RedisBackend::published(const redis::Reply& r) {
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

PublishResult RedisBackend::publish_local(std::string_view topic, const std::string& body,
                                          std::uint64_t exclude_connection) {
  if (events_) events_->on_local_message(topic, exclude_connection, body);
  metrics::bump(metrics_.publishes);
  PublishResult res;
  res.reach = PublishResult::Reach::local;
  return res;
}

void RedisBackend::publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
                           PublishDone done) {
  if (!link_.up()) {
    done(publish_local(topic, body, exclude_connection));
    return;
  }
  std::vector<std::string> args{body,
                                options_.node_id,
                                std::to_string(exclude_connection),
                                std::to_string(options_.history_size),
                                std::to_string(options_.history_ttl_ms > 0 ? options_.history_ttl_ms : keep_ms),
                                new_epoch(),
                                channel_prefix_ + std::string(topic),
                                std::to_string(keep_ms)};
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

// ---------------------------------------------------------------- presence

void RedisBackend::send_track(std::string_view topic, const std::string& channel, const std::string& ref,
                              const OwnEntry& e) {
  redis::eval(link_, track_script_, {key("p", topic), key("pv", topic), key("np", options_.node_id)},
              {ref, options_.node_id, json_string(e.agent), e.meta, channel, std::string(topic)}, {});
}

void RedisBackend::presence_add(std::string_view topic, const std::string& ref, const std::string& agent,
                                const std::string& meta) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  Topic& t = get_or_create(sh, topic);
  auto& e = t.own[ref];
  e = OwnEntry{agent, meta};
  send_track(topic, t.channel, ref, e);
}

void RedisBackend::presence_remove(std::string_view topic, const std::string& ref, const std::string& agent) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  auto it = sh.topics.find(std::string(topic));
  if (it == sh.topics.end()) return;
  it->second.own.erase(ref);
  redis::eval(link_, untrack_script_, {key("p", topic), key("pv", topic)},
              {ref, options_.node_id, json_string(agent), it->second.channel}, {});
  release_if_unused(sh, topic);
}

void RedisBackend::presence_snapshot(std::string_view topic, Deadline deadline,
                                     std::function<void(std::optional<PresenceSnapshot>)> done) {
  redis::eval(
      link_, snapshot_script_, {key("p", topic), key("pv", topic)}, {},
      [this, done = std::move(done)](redis::Reply r) {
        if (!r.ok() || r.type != redis::Reply::Type::array || r.elements.empty()) {
          done(std::nullopt);
          return;
        }
        PresenceSnapshot snap;
        snap.version = static_cast<std::uint64_t>(std::max<std::int64_t>(0, r.elements[0].as_int()));
        for (std::size_t i = 1; i + 1 < r.elements.size(); i += 2) {
          const auto parts = split_lines(r.elements[i + 1].str, 2);
          if (parts.size() != 3) continue;
          auto agent = parse_json_string(parts[1]);
          if (!agent) continue;
          snap.entries.push_back(PresenceSnapshot::Entry{r.elements[i].str, std::move(*agent), std::string(parts[2]),
                                                         parts[0] == options_.node_id});
        }
        done(std::move(snap));
      },
      until(deadline));
}

// ---------------------------------------------------------------- after a lost link

void RedisBackend::read_missed(std::string_view topic, const std::string& epoch, std::uint64_t offset,
                               std::function<void(Missed)> done) {
  redis::eval(link_, backfill_script_, {key("e", topic), key("h", topic), key("o", topic)},
              {epoch, std::to_string(offset + 1), new_epoch(), std::to_string(keep_ms)},
              [this, done = std::move(done)](redis::Reply r) {
                Missed m;
                if (r.type == redis::Reply::Type::lost || r.type == redis::Reply::Type::not_connected) {
                  // Lost with its connection: on_down follows and the next
                  // on_up reads again; the Hub keeps holding meanwhile.
                  m.ok = false;
                  m.lost = true;
                } else if (r.type != redis::Reply::Type::array || r.elements.empty()) {
                  spdlog::error("reading what the node missed failed: {}", r.str);
                  m.ok = false;
                } else {
                  m.epoch = r.elements[0].str;
                  // {epoch, id, body, node, connection, ...}; id "<offset>-1".
                  for (std::size_t i = 1; i + 3 < r.elements.size(); i += 4) {
                    const std::string& id = r.elements[i].str;
                    StoredMessage s;
                    std::uint64_t conn = 0;
                    if (!parse_u64(std::string_view(id).substr(0, id.find('-')), s.offset)) continue;
                    parse_u64(r.elements[i + 3].str, conn);
                    s.exclude = r.elements[i + 2].str == options_.node_id ? conn : 0;
                    s.body = std::move(r.elements[i + 1].str);
                    m.messages.push_back(std::move(s));
                  }
                }
                done(std::move(m));
              });
}

}  // namespace synapse::pubsub
