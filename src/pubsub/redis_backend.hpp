// The backend of a cluster (pubsub/backend.hpp): several nodes share one
// Redis, which assigns offsets, keeps history and presence, and carries
// every message and presence change to every node subscribed to the
// topic's channel (see redis_scripts.hpp for the keys and formats). The Hub
// in front of it does everything else, as it does for LocalBackend:
// membership, fan-out, join gating, ordering and gaps, framing, presence
// tracking.
//
// No I/O thread waits on Redis: every call sends its commands through the
// link and returns; the answers come on the link's thread, which runs the
// completion (the Hub posts a join's back to the member's thread). Each
// call answers by its deadline: a join step Redis does not answer in time
// fails (the join is refused, `unavailable`), one that cannot be sent
// because the link is down answers `offline` (joins) or `local` (publishes).
//
// What the backend keeps, per topic, under one of `shard_count` mutexes by
// the hash of the name: how many subscribe() calls are not undone (the
// first SUBSCRIBEs the channel, the last undo UNSUBSCRIBEs it; the link
// keeps the wanted channels and subscribes them again after a reconnect)
// and this node's own presence entries, published again whenever Redis
// forgot the node or restarted. Link commands are posted under that lock,
// so a channel's SUBSCRIBE and UNSUBSCRIBE leave in the order of the count.
// The lock is never held while calling BackendEvents (those run on the
// link's thread with no backend lock held), so the Hub may call
// presence_add() and presence_remove() under its own locks.
//
// The node: registered with a heartbeat (a sorted set of expiries); any
// node reaps the presence entries and connection counts of one whose
// heartbeat expired, publishing their leaves. When a heartbeat finds that
// Redis had forgotten this node, it registers everything again.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "pubsub/backend.hpp"
#include "redis/script.hpp"

namespace synapse::redis {
class Link;
struct Reply;
}  // namespace synapse::redis

namespace synapse::metrics {
struct Metrics;
}

namespace synapse::pubsub {

struct RedisBackendOptions {
  std::string node_id;
  std::string prefix;  // key and channel prefix, "synapse:<db>:"
  std::size_t history_size = 100;
  std::int64_t history_ttl_ms = 300'000;  // 0 = forever
  std::int64_t node_ttl_ms = 10'000;
  // The deadline of a join's steps, of a blocking publish and of a presence read.
  std::chrono::milliseconds call_timeout{2000};
};

class RedisBackend final : public Backend {
 public:
  RedisBackend(RedisBackendOptions options, redis::Link& link, metrics::Metrics& metrics);
  ~RedisBackend() override;

  // The link's handlers (on the link's thread).
  void on_message(const std::string& channel, const std::string& payload);
  void on_up();
  void on_down();
  // Called with the node's registration, and again whenever Redis had
  // forgotten the node (restart, or reaped after a stall): counters outside
  // the broker register their state again.
  void set_reregister_hook(std::function<void()> hook) { reregister_ = std::move(hook); }
  // Registers the node (blocking: startup only); false when Redis did not answer.
  bool register_node();

  void attach(BackendEvents& events) override { events_ = &events; }
  bool asynchronous() const override { return true; }
  bool shared() const override { return true; }
  void publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
               PublishDone done) override;
  void subscribe(std::string_view topic, Deadline deadline, std::function<void(bool)> done) override;
  void unsubscribe(std::string_view topic) override;
  void position(std::string_view topic, const std::optional<Recover>& recover, Deadline deadline,
                std::function<void(Position)> done) override;
  void presence_add(std::string_view topic, const std::string& ref, const std::string& agent,
                    const std::string& meta) override;
  void presence_remove(std::string_view topic, const std::string& ref, const std::string& agent) override;
  void presence_snapshot(std::string_view topic, Deadline deadline,
                         std::function<void(std::optional<PresenceSnapshot>)> done) override;
  void read_missed(std::string_view topic, const std::string& epoch, std::uint64_t offset,
                   std::function<void(Missed)> done) override;
  void tick() override;
  void stats(BrokerStats& s) override;

 private:
  struct OwnEntry {
    std::string agent;
    std::string meta;
  };
  struct Topic {
    std::string channel;
    std::size_t subscribed = 0;          // subscribe() calls not yet undone
    std::map<std::string, OwnEntry> own;  // phx_ref -> this node's entries
  };
  static constexpr std::size_t shard_count = 32;
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Topic> topics;
  };

  std::string key(const char* kind, std::string_view topic) const;
  Shard& shard_of(std::string_view name);
  // Under the shard's lock.
  Topic& get_or_create(Shard& sh, std::string_view name);
  void release_if_unused(Shard& sh, std::string_view name);
  void send_track(std::string_view topic, const std::string& channel, const std::string& ref, const OwnEntry& e);
  // Registers the node's presence entries and counts again, then tells the
  // Hub (`missed`: the link had been lost).
  void resync(bool missed);
  void heartbeat(bool resync_if_forgotten);
  PublishResult published(const redis::Reply& r);
  PublishResult publish_local(std::string_view topic, const std::string& body, std::uint64_t exclude_connection);

  RedisBackendOptions options_;
  redis::Link& link_;
  metrics::Metrics& metrics_;
  BackendEvents* events_ = nullptr;
  redis::Script publish_script_, join_script_, snapshot_script_, track_script_, untrack_script_,
      heartbeat_script_, reap_script_, backfill_script_;
  std::string channel_prefix_;
  std::array<Shard, shard_count> shards_;
  std::function<void()> reregister_;
  std::atomic<bool> registered_{false};
  std::int64_t last_heartbeat_ms_ = 0;  // tick()'s thread only
  std::int64_t last_reap_ms_ = 0;
};

// The prefix of every key and channel for database `db`.
std::string redis_prefix(int db);

}  // namespace synapse::pubsub
