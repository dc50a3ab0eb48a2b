#include "pubsub/local_broker.hpp"

#include <algorithm>

#include "core/crypto.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/history_log.hpp"
#include "pubsub/publish_frame.hpp"

#include <spdlog/spdlog.h>

namespace synapse::pubsub {
namespace json = boost::json;

namespace {

std::string new_epoch() { return core::hex_encode(core::random_bytes(8)); }

}  // namespace

LocalBroker::LocalBroker(BrokerOptions options, std::vector<Poster> threads, metrics::Metrics& metrics)
    : options_(options), metrics_(metrics), fanout_(std::move(threads), metrics) {
  ref_prefix_ = core::hex_encode(core::random_bytes(3));
  if (options_.log) restore();
}

void LocalBroker::restore() {
  const std::int64_t now_unix = unix_ms();
  const std::int64_t now_mono = mono_ms();
  std::size_t topics = 0, messages = 0;
  for (auto& w : options_.log->load(options_.history_size, options_.history_ttl_ms, now_unix)) {
    Shard& shard = shard_for(w.topic);
    std::lock_guard lock(shard.mu);
    Topic& t = get_or_create(shard, w.topic);
    t.epoch = std::move(w.epoch);
    t.last_offset = w.last_offset;
    for (auto& e : w.entries) {
      // Ages carry over: a message 200 s old before the restart has 100 s
      // left of a 300 s ttl after it.
      keep_in_history(t, e.offset, now_mono - std::max<std::int64_t>(0, now_unix - e.unix_ms),
                      wire::Message::text(e.frame));
      ++messages;
    }
    ++topics;
  }
  if (options_.history_max_bytes > 0) enforce_total_history();
  if (topics) spdlog::info("history: restored {} topics, {} messages from disk", topics, messages);
}

void LocalBroker::keep_in_history(Topic& t, std::uint64_t offset, std::int64_t at_ms, const wire::Message& msg) {
  if (options_.history_size == 0) return;
  t.history.push_back(HistoryEntry{offset, at_ms, history_seq_.fetch_add(1, std::memory_order_relaxed), msg});
  t.history_bytes += msg.size();
  history_bytes_.fetch_add(msg.size(), std::memory_order_relaxed);
  const std::size_t max_bytes = options_.history_max_bytes_per_topic;
  while (!t.history.empty() && (t.history.size() > options_.history_size ||
                                (max_bytes > 0 && t.history_bytes > max_bytes))) {
    drop_oldest(t);
  }
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

void LocalBroker::drop_oldest(Topic& t) {
  const std::size_t n = t.history.front().msg.size();
  t.history_bytes -= n;
  history_bytes_.fetch_sub(n, std::memory_order_relaxed);
  t.history.pop_front();
}

void LocalBroker::expire_history(Topic& t, std::int64_t now_ms) {
  if (options_.history_ttl_ms <= 0) return;
  while (!t.history.empty() && now_ms - t.history.front().at_ms > options_.history_ttl_ms) drop_oldest(t);
  if (t.history.empty()) t.history.shrink_to_fit();
}

void LocalBroker::enforce_total_history() {
  const std::size_t max = options_.history_max_bytes;
  // Evict down to 7/8 of the bound, so that a broker at its bound runs this
  // (which stops every shard for a moment) once per max/8 bytes published,
  // not at every publish. Another thread already evicting will do it.
  std::unique_lock evicting(evict_mu_, std::try_to_lock);
  if (!evicting || history_bytes_.load(std::memory_order_relaxed) <= max) return;
  const std::size_t target = max - max / 8;
  std::array<std::unique_lock<std::mutex>, 16> locks;
  for (std::size_t i = 0; i < shards_.size(); ++i) locks[i] = std::unique_lock(shards_[i].mu);
  // A min-heap of topics by the age of their oldest message: each pop drops
  // the oldest message held anywhere.
  using Item = std::pair<std::uint64_t, Topic*>;
  std::vector<Item> heap;
  for (Shard& shard : shards_) {
    for (auto& [name, t] : shard.topics) {
      if (!t->history.empty()) heap.emplace_back(t->history.front().seq, t.get());
    }
  }
  auto later = [](const Item& a, const Item& b) { return a.first > b.first; };
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty() && history_bytes_.load(std::memory_order_relaxed) > target) {
    std::pop_heap(heap.begin(), heap.end(), later);
    Topic* t = heap.back().second;
    drop_oldest(*t);
    if (t->history.empty()) {
      t->history.shrink_to_fit();
      heap.pop_back();
    } else {
      heap.back().first = t->history.front().seq;
      std::push_heap(heap.begin(), heap.end(), later);
    }
  }
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

  // Every member is tracked, so every join counts toward the topic's
  // presence bound; one past it is refused before anything is recorded.
  const std::string ref =
      ref_prefix_ + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
  std::string meta = presence::meta_json(req.meta, ref, unix_ms());
  const std::size_t cap = options_.max_presence_bytes_per_topic;
  if (req.tracked && cap > 0 && t.presence.bytes() + presence::entry_bytes(req.agent_id, meta) > cap) {
    r.presence_full = true;
    return r;
  }

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

  // Every member is tracked unless its credential may not appear (an empty
  // presence_ref then makes its leave untrack nothing); only presence
  // members receive presence traffic.
  if (req.tracked) {
    sub.presence_ref = ref;
    t.presence.track(sub.agent_id, sub.presence_ref, std::move(meta));
    t.presence_dirty = true;
  }
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
  {
    std::lock_guard lock(shard.mu);
    Topic& t = get_or_create(shard, topic);
    const std::uint64_t offset = ++t.last_offset;
    wire::Message msg = wire::Message::text_parts({head, numbered_tail(t.epoch, offset)});
    if (options_.log && options_.history_size > 0) {
      // Durable before it is acknowledged: appended under the shard lock,
      // so a topic's rows go in offset order.
      try {
        options_.log->append(topic, t.epoch, offset, unix_ms(), msg.payload(), options_.history_size);
      } catch (const std::exception& e) {
        // The message is still delivered and kept in memory; only its
        // survival of a restart is lost. Logged at most once a second.
        std::int64_t last = log_error_ms_.load(std::memory_order_relaxed);
        if (now - last >= 1000 && log_error_ms_.compare_exchange_strong(last, now)) {
          spdlog::error("history: cannot write topic {} to disk: {}", t.name, e.what());
        }
      }
    }
    keep_in_history(t, offset, now, msg);
    if (t.members > 0) {
      fanout_.queue(t.members_per_thread,
                    Delivery{t.id, offset, exclude_connection, std::move(msg), DeliveryKind::message});
    }
    metrics::bump(metrics_.publishes);
    r.offset = offset;
    r.epoch = t.epoch;
  }
  // Outside the shard lock: enforcing the total takes every shard's lock.
  if (options_.history_max_bytes > 0 &&
      history_bytes_.load(std::memory_order_relaxed) > options_.history_max_bytes) {
    enforce_total_history();
  }
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
  if (options_.log && options_.history_ttl_ms > 0 && now - log_expired_ms_ >= 10'000) {
    log_expired_ms_ = now;
    try {
      options_.log->expire(options_.history_ttl_ms, unix_ms());
    } catch (const std::exception& e) {
      spdlog::error("history: cannot expire old messages on disk: {}", e.what());
    }
  }
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

void LocalBroker::make_durable() noexcept {
  if (!options_.log || !options_.log->pending()) return;
  try {
    options_.log->commit();
  } catch (const std::exception& e) {
    const std::int64_t now = mono_ms();
    std::int64_t last = log_error_ms_.load(std::memory_order_relaxed);
    if (now - last >= 1000 && log_error_ms_.compare_exchange_strong(last, now)) {
      spdlog::error("history: cannot commit to disk: {}", e.what());
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
    }
  }
  s.history_bytes = history_bytes_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace synapse::pubsub
