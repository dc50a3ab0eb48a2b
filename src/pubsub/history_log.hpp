// Durable topic history for a single node (`pubsub.history_store = "disk"`):
// every published frame is appended to a SQLite database in the data
// directory before the publish is acknowledged, and a restart loads each
// topic's recoverable window back, with its epoch and offsets, so a client
// that recovers after a crash (SIGKILL included) gets exactly what it missed.
//
// Why SQLite in WAL mode rather than an append-only file of our own: the
// project already links SQLite and uses WAL for its keys and memories; one
// small transaction per publish is a single write() into the WAL (with
// synchronous=NORMAL there is no fsync per commit, only at checkpoints), and
// trimming old messages, reading one topic's window and surviving a torn
// last write come with it. The trade-off, documented in docs/protocol.md:
// a message acknowledged survives the process's death, not the machine's
// (power loss can drop the last commits before a checkpoint's fsync).
//
// Thread safety: one mutex around the one connection. Publishers call
// append() under their topic shard's lock, so appends of one topic arrive in
// offset order.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace synapse::store {
class Database;
class Statement;
}  // namespace synapse::store

namespace synapse::pubsub {

class HistoryLog {
 public:
  struct Entry {
    std::uint64_t offset = 0;
    std::int64_t unix_ms = 0;
    std::string frame;  // the message body as published (publish_frame.hpp), framed when read
  };
  struct TopicWindow {
    std::string topic;
    std::string epoch;
    std::uint64_t last_offset = 0;
    std::vector<Entry> entries;  // oldest first
  };

  // Opens (creating) `path`. Throws store::SqliteError.
  explicit HistoryLog(const std::string& path);
  ~HistoryLog();

  // Every topic's window: at most `per_topic` newest entries younger than
  // `ttl_ms` (0 = any age) at `now_unix_ms`. A topic whose entries all
  // expired still comes back with its epoch and last offset.
  std::vector<TopicWindow> load(std::size_t per_topic, std::int64_t ttl_ms, std::int64_t now_unix_ms);

  // Records one published frame. A new epoch for the topic deletes the old
  // epoch's rows. Every `trim_every` appends of a topic, rows more than
  // `keep` offsets behind are deleted (never the newest).
  void append(std::string_view topic, std::string_view epoch, std::uint64_t offset, std::int64_t unix_ms,
              std::string_view frame, std::size_t keep);

  // Deletes rows older than `ttl_ms` (0: nothing); called from housekeeping.
  void expire(std::int64_t ttl_ms, std::int64_t now_unix_ms);

  // Group commit: append() writes into an open transaction; commit() ends
  // it. The broker commits before any socket write (Broker::make_durable),
  // so one commit covers every publish of an I/O batch, on every thread.
  bool pending() const noexcept { return pending_.load(std::memory_order_acquire); }
  void commit();

 private:
  static constexpr std::uint64_t trim_every = 64;

  // Under mu_. Commits an open transaction (before reads and deletes of our own).
  void commit_locked();

  std::mutex mu_;
  bool in_txn_ = false;                // under mu_
  std::atomic<bool> pending_{false};   // set with in_txn_, read without the lock
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<store::Statement> insert_;
  std::unique_ptr<store::Statement> upsert_topic_;  // history_topics: a topic's epoch
  std::unique_ptr<store::Statement> trim_;
  std::unordered_map<std::string, std::uint64_t> appended_;   // per topic, for trim_every
  std::unordered_map<std::string, std::string> known_epoch_;  // per topic, what the database holds
};

}  // namespace synapse::pubsub
