// The in-process backend: offsets, epochs and the recovery window of every
// topic, in memory and, with `history_store = "disk"`, in a HistoryLog. The
// Hub in front of it does membership, fan-out, framing and presence.
//
// Topics live in 16 shards, each guarded by one mutex that covers the
// shard's map and every topic in it (offset, epoch, history, subscription
// count). Publish: under the shard lock the body gets its offset, goes to
// the history (and the log) and, when this node is subscribed, to the Hub's
// on_message, still under the lock: so every I/O thread sees a topic's
// messages in offset order, and position(), which reads the latest offset
// under the same lock, sees every message at or below it already handed on.
// Every completion runs inline (asynchronous() is false).
//
// Lock order: a shard mutex, then the Hub's topic lock (inside on_message);
// the total-history eviction takes every shard mutex, in index order, with
// no other lock held.
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "pubsub/backend.hpp"

namespace synapse::metrics {
struct Metrics;
}

namespace synapse::pubsub {

class HistoryLog;

struct LocalBackendOptions {
  std::size_t history_size = 100;
  std::int64_t history_ttl_ms = 300'000;  // 0 = forever
  // Byte bounds of the history (body bytes), oldest dropped first: a count
  // alone let one key park 100 x 1 MiB per topic. 0 = no bound.
  std::size_t history_max_bytes_per_topic = 4u << 20;
  std::size_t history_max_bytes = 256u << 20;  // all topics together
  // An idle topic (nobody subscribed, no history) keeps its epoch and
  // offset this long, so a member that left and comes back can still recover.
  std::int64_t empty_topic_grace_ms = 30'000;
  // `history_store = "disk"`: every publish is appended here before it is
  // acknowledged, and the constructor restores every topic's window from it
  // (same epochs, same offsets). Not owned; null = history in memory only.
  HistoryLog* log = nullptr;
};

class LocalBackend final : public Backend {
 public:
  LocalBackend(LocalBackendOptions options, metrics::Metrics& metrics);
  ~LocalBackend() override;

  void attach(BackendEvents& events) override { events_ = &events; }
  void publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
               PublishDone done) override;
  void subscribe(std::string_view topic, Deadline deadline, std::function<void(bool)> done) override;
  void unsubscribe(std::string_view topic) override;
  void position(std::string_view topic, const std::optional<Recover>& recover, Deadline deadline,
                std::function<void(Position)> done) override;
  void tick() override;
  void stats(BrokerStats& s) override;
  void make_durable() noexcept override;
  // Defined in local_backend_admin.cpp.
  std::optional<std::vector<BackendTopic>> list_topics() override;
  std::optional<BackendTopic> inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) override;

 private:
  struct HistoryEntry {
    std::uint64_t offset;
    std::int64_t at_ms;  // monotonic
    std::uint64_t seq;   // across all topics: which message is older (ms ties in a burst)
    std::string body;
  };

  struct Topic {
    std::string name;
    std::string epoch;
    std::uint64_t last_offset = 0;
    std::deque<HistoryEntry> history;
    std::size_t history_bytes = 0;  // sum of history[i].body.size()
    std::size_t subscribed = 0;     // this node's subscribe() calls not yet undone
    std::int64_t idle_since_ms = -1;  // monotonic; -1 while subscribed
  };

  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::unique_ptr<Topic>> topics;
  };

  Shard& shard_for(std::string_view topic);
  Topic& get_or_create(Shard& shard, std::string_view name);
  void expire_history(Topic& t, std::int64_t now_ms);
  void drop_oldest(Topic& t);
  // Brings the history of all topics under history_max_bytes, oldest first
  // across topics (takes every shard's lock, in index order).
  void enforce_total_history();
  // Under the topic's shard lock: appends to the history, dropping the
  // oldest past the per-topic count and byte bounds.
  void keep_in_history(Topic& t, std::uint64_t offset, std::int64_t at_ms, std::string body);
  // Loads options_.log's windows into topics (constructor only).
  void restore();

  LocalBackendOptions options_;
  metrics::Metrics& metrics_;
  BackendEvents* events_ = nullptr;
  std::array<Shard, 16> shards_;
  std::atomic<std::uint64_t> history_seq_{0};
  std::atomic<std::size_t> history_bytes_{0};  // every topic's history_bytes
  std::mutex evict_mu_;                        // one enforce_total_history at a time
  std::int64_t log_expired_ms_ = 0;            // last HistoryLog::expire, monotonic; tick() only
  std::atomic<std::int64_t> log_error_ms_{0};  // last logged append failure (rate limit)
};

}  // namespace synapse::pubsub
