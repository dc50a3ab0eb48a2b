#include "pubsub/local_backend.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/history_log.hpp"

namespace synapse::pubsub {

namespace {

std::string new_epoch() { return core::hex_encode(core::random_bytes(8)); }

}  // namespace

LocalBackend::LocalBackend(LocalBackendOptions options, metrics::Metrics& metrics)
    : options_(options), metrics_(metrics) {
  if (options_.log) restore();
}

LocalBackend::~LocalBackend() = default;

void LocalBackend::restore() {
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
      keep_in_history(t, e.offset, now_mono - std::max<std::int64_t>(0, now_unix - e.unix_ms), std::move(e.frame));
      ++messages;
    }
    ++topics;
  }
  if (options_.history_max_bytes > 0) enforce_total_history();
  if (topics) spdlog::info("history: restored {} topics, {} messages from disk", topics, messages);
}

void LocalBackend::keep_in_history(Topic& t, std::uint64_t offset, std::int64_t at_ms, std::string body) {
  if (options_.history_size == 0) return;
  const std::size_t n = body.size();
  t.history.push_back(HistoryEntry{offset, at_ms, history_seq_.fetch_add(1, std::memory_order_relaxed), std::move(body)});
  t.history_bytes += n;
  history_bytes_.fetch_add(n, std::memory_order_relaxed);
  const std::size_t max_bytes = options_.history_max_bytes_per_topic;
  while (!t.history.empty() && (t.history.size() > options_.history_size ||
                                (max_bytes > 0 && t.history_bytes > max_bytes))) {
    drop_oldest(t);
  }
}

LocalBackend::Shard& LocalBackend::shard_for(std::string_view topic) {
  return shards_[std::hash<std::string_view>{}(topic) % shards_.size()];
}

LocalBackend::Topic& LocalBackend::get_or_create(Shard& shard, std::string_view name) {
  auto it = shard.topics.find(std::string(name));
  if (it != shard.topics.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->name = std::string(name);
  t->epoch = new_epoch();
  t->idle_since_ms = mono_ms();
  metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  return *shard.topics.emplace(t->name, std::move(t)).first->second;
}

void LocalBackend::drop_oldest(Topic& t) {
  const std::size_t n = t.history.front().body.size();
  t.history_bytes -= n;
  history_bytes_.fetch_sub(n, std::memory_order_relaxed);
  t.history.pop_front();
}

void LocalBackend::expire_history(Topic& t, std::int64_t now_ms) {
  if (options_.history_ttl_ms <= 0) return;
  while (!t.history.empty() && now_ms - t.history.front().at_ms > options_.history_ttl_ms) drop_oldest(t);
  if (t.history.empty()) t.history.shrink_to_fit();
}

void LocalBackend::enforce_total_history() {
  const std::size_t max = options_.history_max_bytes;
  // Evict down to 7/8 of the bound, so that a node at its bound runs this
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

void LocalBackend::publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
                           PublishDone done) {
  PublishResult r;
  const std::int64_t now = mono_ms();
  Shard& shard = shard_for(topic);
  {
    std::lock_guard lock(shard.mu);
    Topic& t = get_or_create(shard, topic);
    const std::uint64_t offset = ++t.last_offset;
    if (options_.log && options_.history_size > 0) {
      // Durable before it is acknowledged: appended under the shard lock,
      // so a topic's rows go in offset order.
      try {
        options_.log->append(topic, t.epoch, offset, unix_ms(), body, options_.history_size);
      } catch (const std::exception& e) {
        // The message is still delivered and kept in memory; only its
        // survival of a restart is lost. Logged at most once a second.
        std::int64_t last = log_error_ms_.load(std::memory_order_relaxed);
        if (now - last >= 1000 && log_error_ms_.compare_exchange_strong(last, now)) {
          spdlog::error("history: cannot write topic {} to disk: {}", t.name, e.what());
        }
      }
    }
    // Handed on under the lock: every thread's inbox gets the topic's
    // messages in offset order (see the top of local_backend.hpp).
    if (t.subscribed > 0 && events_) events_->on_message(t.name, t.epoch, offset, exclude_connection, body);
    keep_in_history(t, offset, now, std::move(body));
    metrics::bump(metrics_.publishes);
    r.offset = offset;
    r.epoch = t.epoch;
  }
  // Outside the shard lock: enforcing the total takes every shard's lock.
  if (options_.history_max_bytes > 0 &&
      history_bytes_.load(std::memory_order_relaxed) > options_.history_max_bytes) {
    enforce_total_history();
  }
  done(std::move(r));
}

void LocalBackend::subscribe(std::string_view topic, Deadline /*answers at once*/, std::function<void(bool)> done) {
  {
    Shard& shard = shard_for(topic);
    std::lock_guard lock(shard.mu);
    Topic& t = get_or_create(shard, topic);
    ++t.subscribed;
    t.idle_since_ms = -1;
  }
  done(true);
}

void LocalBackend::unsubscribe(std::string_view topic) {
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end() || it->second->subscribed == 0) return;
  Topic& t = *it->second;
  if (--t.subscribed == 0) t.idle_since_ms = mono_ms();
}

void LocalBackend::position(std::string_view topic, const std::optional<Recover>& recover, Deadline /*at once*/,
                            std::function<void(Position)> done) {
  Position p;
  {
    Shard& shard = shard_for(topic);
    std::lock_guard lock(shard.mu);
    Topic& t = get_or_create(shard, topic);
    expire_history(t, mono_ms());
    p.offset = t.last_offset;
    p.epoch = t.epoch;
    if (recover && recover->epoch == t.epoch && recover->offset <= t.last_offset) {
      const std::uint64_t first = t.history.empty() ? t.last_offset + 1 : t.history.front().offset;
      if (recover->offset + 1 >= first) {
        p.recovered = true;
        for (const auto& h : t.history) {
          if (h.offset > recover->offset) p.bodies.push_back(h.body);
        }
      }
    }
  }
  done(std::move(p));
}

void LocalBackend::tick() {
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
      expire_history(t, now);
      const bool idle = t.subscribed == 0 && t.history.empty();
      if (idle && t.idle_since_ms >= 0 && now - t.idle_since_ms >= options_.empty_topic_grace_ms) {
        it = shard.topics.erase(it);
        metrics_.topics.fetch_sub(1, std::memory_order_relaxed);
      } else {
        ++it;
      }
    }
  }
}

void LocalBackend::make_durable() noexcept {
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

void LocalBackend::stats(BrokerStats& s) {
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    s.topics += shard.topics.size();
    for (const auto& [name, t] : shard.topics) s.history_messages += t->history.size();
  }
  s.history_bytes = history_bytes_.load(std::memory_order_relaxed);
}

}  // namespace synapse::pubsub
