#include "pubsub/local_broker.hpp"

#include "auth/crypto.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/publish_frame.hpp"

namespace synapse::pubsub {
namespace json = boost::json;

namespace {

std::string new_epoch() { return auth::hex_encode(auth::random_bytes(8)); }

}  // namespace

LocalBroker::LocalBroker(BrokerOptions options, std::vector<Poster> threads, metrics::Metrics& metrics)
    : options_(options), metrics_(metrics), fanout_(std::move(threads), metrics) {
  ref_prefix_ = auth::hex_encode(auth::random_bytes(3));
}

LocalBroker::~LocalBroker() = default;

LocalBroker::Shard& LocalBroker::shard_for(std::string_view topic) {
  return shards_[std::hash<std::string_view>{}(topic) % shards_.size()];
}

LocalBroker::Topic& LocalBroker::get_or_create(Shard& shard, std::string_view name) {
  auto it = shard.topics.find(std::string(name));
  if (it != shard.topics.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->id = next_topic_id_.fetch_add(1, std::memory_order_relaxed);
  t->name = std::string(name);
  t->epoch = new_epoch();
  t->members_per_thread.assign(fanout_.threads(), 0);
  t->presence_per_thread.assign(fanout_.threads(), 0);
  t->empty_since_ms = mono_ms();
  metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  return *shard.topics.emplace(t->name, std::move(t)).first->second;
}

void LocalBroker::expire_history(Topic& t, std::int64_t now_ms) {
  if (options_.history_ttl_ms <= 0) return;
  while (!t.history.empty() && now_ms - t.history.front().at_ms > options_.history_ttl_ms) {
    t.history.pop_front();
  }
  if (t.history.empty()) t.history.shrink_to_fit();
}

void LocalBroker::mark_if_empty(Topic& t, std::int64_t now_ms) {
  if (t.members == 0 && t.empty_since_ms < 0) t.empty_since_ms = now_ms;
}

JoinResult LocalBroker::join(Subscriber& sub, const JoinRequest& req) {
  JoinResult r;
  const std::int64_t now = mono_ms();
  Shard& shard = shard_for(req.topic);
  std::lock_guard lock(shard.mu);
  Topic& t = get_or_create(shard, req.topic);
  expire_history(t, now);

  fanout_.add(sub, req, t.id, t.last_offset, t.presence_seq);
  ++t.members_per_thread[req.thread];
  if (req.presence) ++t.presence_per_thread[req.thread];
  ++t.members;
  t.empty_since_ms = -1;

  r.offset = t.last_offset;
  r.epoch = t.epoch;
  if (req.recover && req.recover->epoch == t.epoch && req.recover->offset <= t.last_offset) {
    const std::uint64_t first = t.history.empty() ? t.last_offset + 1 : t.history.front().offset;
    if (req.recover->offset + 1 >= first) {
      r.recovered = true;
      for (const auto& h : t.history) {
        if (h.offset > req.recover->offset) r.backlog.push_back(h.msg);
      }
    }
  }

  // Every member is tracked; only presence members receive presence traffic.
  sub.presence_ref = ref_prefix_ + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
  t.presence.track(sub.agent_id, sub.presence_ref, presence::meta_json(req.meta, sub.presence_ref, unix_ms()));
  t.presence_dirty = true;
  if (req.presence) r.presence_state_json = t.presence.state_for_joiner();
  return r;
}

void LocalBroker::leave(Subscriber& sub, std::string_view topic) {
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end() || it->second->id != sub.topic_id) return;
  Topic& t = *it->second;
  fanout_.remove(sub);
  if (sub.receives_presence) --t.presence_per_thread[sub.thread];
  --t.members_per_thread[sub.thread];
  --t.members;
  t.presence.untrack(sub.agent_id, sub.presence_ref);
  t.presence_dirty = true;
  mark_if_empty(t, mono_ms());
  sub.topic_id = 0;
}

PublishResult LocalBroker::publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                                   bool payload_empty, std::string_view from, std::uint64_t exclude_connection) {
  // Everything but the offset and epoch is built before taking the lock: the
  // client's own payload bytes, with _meta spliced in before the closing brace.
  const std::string head = publish_head(topic, event, payload_json, payload_empty, from, unix_ms());

  PublishResult r;
  const std::int64_t now = mono_ms();
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  Topic& t = get_or_create(shard, topic);
  const std::uint64_t offset = ++t.last_offset;
  wire::Message msg = wire::Message::text_parts({head, numbered_tail(t.epoch, offset)});
  if (options_.history_size > 0) {
    t.history.push_back(HistoryEntry{offset, now, msg});
    while (t.history.size() > options_.history_size) t.history.pop_front();
  }
  if (t.members > 0) {
    fanout_.queue(t.members_per_thread, Delivery{t.id, offset, exclude_connection, std::move(msg), DeliveryKind::message});
  }
  metrics::bump(metrics_.publishes);
  r.offset = offset;
  r.epoch = t.epoch;
  return r;
}

std::string LocalBroker::presence_state(std::string_view topic) {
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end()) return "{}";
  return it->second->presence.current_json();
}

void LocalBroker::tick() {
  const std::int64_t now = mono_ms();
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (auto it = shard.topics.begin(); it != shard.topics.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty) {
        t.presence_dirty = false;
        fanout_.flush_presence(t.id, t.name, t.presence, t.presence_seq, t.presence_per_thread);
      }
      expire_history(t, now);
      const bool idle = t.members == 0 && t.history.empty() && t.presence.empty();
      if (idle && t.empty_since_ms >= 0 && now - t.empty_since_ms >= options_.empty_topic_grace_ms) {
        it = shard.topics.erase(it);
        metrics_.topics.fetch_sub(1, std::memory_order_relaxed);
      } else {
        ++it;
      }
    }
  }
}

BrokerStats LocalBroker::stats() {
  BrokerStats s;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    s.topics += shard.topics.size();
    for (const auto& [name, t] : shard.topics) {
      s.members += t->members;
      s.history_messages += t->history.size();
      for (const auto& h : t->history) s.history_bytes += h.msg.size();
    }
  }
  return s;
}

}  // namespace synapse::pubsub
