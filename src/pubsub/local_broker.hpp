// The in-process broker.
//
// Topics live in 16 shards, each guarded by one mutex that covers the shard's
// map and every topic in it (offsets, history, presence, per-thread member
// counts). Member lists are per I/O thread and touched only by that thread.
//
// Publish: under the shard lock the message gets its offset and is framed
// once; the same bytes go to the topic's history and to the Fanout's inbox of
// every I/O thread that has members. Because deliveries enter the inboxes
// under the topic's lock, every thread sees a topic's messages in offset order.
//
// Join: under the same lock the member is added to its thread's list with
// start_offset = the topic's latest offset, and recovery copies the history
// after the client's offset. A delivery already in the inbox with an offset at
// or below start_offset is skipped for that member, so a publish racing the
// join is received exactly once: from history or live, never both.
#pragma once

#include <array>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/poster.hpp"
#include "pubsub/fanout.hpp"
#include "presence/presence_tracker.hpp"
#include "pubsub/broker.hpp"

namespace synapse::metrics {
struct Metrics;
}

namespace synapse::pubsub {

class HistoryLog;

struct BrokerOptions {
  std::size_t history_size = 100;
  std::int64_t history_ttl_ms = 300'000;  // 0 = forever
  // Byte bounds of the history (frame bytes, as sent), oldest dropped first:
  // a count alone let one key park 100 x 1 MiB per topic. 0 = no bound.
  std::size_t history_max_bytes_per_topic = 4u << 20;
  std::size_t history_max_bytes = 256u << 20;  // all topics together
  // Bytes of presence metas one topic may track; a join past it is refused
  // (presence_full). 0 = no bound.
  std::size_t max_presence_bytes_per_topic = 8u << 20;
  // An empty topic (no members, no history) keeps its epoch and offset this
  // long, so a member that left and comes back can still recover.
  std::int64_t empty_topic_grace_ms = 30'000;
  // `history_store = "disk"`: every publish is appended here before it is
  // acknowledged, and the constructor restores every topic's window from it
  // (same epochs, same offsets). Not owned; null = history in memory only.
  HistoryLog* log = nullptr;
};

class LocalBroker final : public Broker {
 public:
  LocalBroker(BrokerOptions options, std::vector<Poster> threads, metrics::Metrics& metrics);
  ~LocalBroker() override;

  JoinResult join(Subscriber& sub, const JoinRequest& req) override;
  void leave(Subscriber& sub, std::string_view topic) override;
  PublishResult publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection) override;
  std::string presence_state(std::string_view topic) override;
  void tick() override;
  BrokerStats stats() override;
  void make_durable() noexcept override;
  // Defined in local_broker_admin.cpp (the admin API's reads).
  std::optional<std::vector<TopicSummary>> list_topics() override;
  std::optional<TopicHistory> inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) override;

 private:
  struct HistoryEntry {
    std::uint64_t offset;
    std::int64_t at_ms;  // monotonic
    std::uint64_t seq;   // across all topics: which message is older (ms ties in a burst)
    wire::Message msg;
  };

  struct Topic {
    std::uint64_t id = 0;
    std::string name;
    std::string epoch;
    std::uint64_t last_offset = 0;
    std::deque<HistoryEntry> history;
    std::size_t history_bytes = 0;  // sum of history[i].msg.size()
    std::vector<std::uint32_t> members_per_thread;
    std::vector<std::uint32_t> presence_per_thread;
    std::size_t members = 0;
    presence::PresenceTracker presence;
    std::uint64_t presence_seq = 0;  // diffs published so far
    bool presence_dirty = false;
    std::int64_t empty_since_ms = -1;  // monotonic; -1 while in use
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
  void mark_if_empty(Topic& t, std::int64_t now_ms);
  // Under the topic's shard lock: appends to the history, dropping the
  // oldest past the per-topic count and byte bounds.
  void keep_in_history(Topic& t, std::uint64_t offset, std::int64_t at_ms, const wire::Message& msg);
  // Loads options_.log's windows into topics (constructor only).
  void restore();

  BrokerOptions options_;
  metrics::Metrics& metrics_;
  Fanout fanout_;
  std::array<Shard, 16> shards_;
  std::atomic<std::uint64_t> history_seq_{0};
  std::atomic<std::size_t> history_bytes_{0};  // every topic's history_bytes
  std::mutex evict_mu_;                        // one enforce_total_history at a time
  std::atomic<std::uint64_t> next_topic_id_{1};
  std::atomic<std::uint64_t> next_presence_ref_{1};
  std::string ref_prefix_;  // differs per process so refs never repeat across restarts
  std::int64_t log_expired_ms_ = 0;          // last HistoryLog::expire, monotonic; tick() only
  std::atomic<std::int64_t> log_error_ms_{0};  // last logged append failure (rate limit)
};

}  // namespace synapse::pubsub
