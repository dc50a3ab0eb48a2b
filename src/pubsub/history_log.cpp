#include "pubsub/history_log.hpp"

#include <algorithm>

#include "store/sqlite.hpp"

namespace synapse::pubsub {

HistoryLog::HistoryLog(const std::string& path) : db_(std::make_unique<store::Database>(path)) {
  // WITHOUT ROWID: rows are stored in (topic, offset) order, so a topic's
  // window is one range read and a trim one range delete.
  db_->exec(R"sql(
    CREATE TABLE IF NOT EXISTS history_topics (
      topic TEXT PRIMARY KEY,
      epoch TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS history_messages (
      topic TEXT NOT NULL,
      offset INTEGER NOT NULL,
      unix_ms INTEGER NOT NULL,
      frame BLOB NOT NULL,
      PRIMARY KEY (topic, offset)
    ) WITHOUT ROWID;
  )sql");
  insert_ = std::make_unique<store::Statement>(
      *db_, "INSERT OR REPLACE INTO history_messages (topic, offset, unix_ms, frame) VALUES (?1, ?2, ?3, ?4)");
  upsert_topic_ = std::make_unique<store::Statement>(
      *db_,
      "INSERT INTO history_topics (topic, epoch) VALUES (?1, ?2) "
      "ON CONFLICT(topic) DO UPDATE SET epoch = excluded.epoch");
  trim_ = std::make_unique<store::Statement>(*db_, "DELETE FROM history_messages WHERE topic = ?1 AND offset <= ?2");
}

HistoryLog::~HistoryLog() {
  // A clean stop commits what the last batch appended.
  try {
    commit();
  } catch (const std::exception&) {
  }
}

void HistoryLog::commit_locked() {
  if (!in_txn_) return;
  in_txn_ = false;
  pending_.store(false, std::memory_order_release);
  try {
    db_->exec("COMMIT");
  } catch (...) {
    // Leave no transaction open behind a failed commit (the next append
    // begins a new one); the batch it held is lost for a restart only.
    try {
      db_->exec("ROLLBACK");
    } catch (...) {
    }
    throw;
  }
}

void HistoryLog::commit() {
  std::lock_guard lock(mu_);
  commit_locked();
}

std::vector<HistoryLog::TopicWindow> HistoryLog::load(std::size_t per_topic, std::int64_t ttl_ms,
                                                      std::int64_t now_unix_ms) {
  std::lock_guard lock(mu_);
  commit_locked();
  std::vector<TopicWindow> out;
  store::Statement topics(*db_, "SELECT topic, epoch FROM history_topics");
  while (topics.step()) {
    TopicWindow w;
    w.topic = topics.text(0);
    w.epoch = topics.text(1);
    out.push_back(std::move(w));
  }
  store::Statement rows(*db_,
                        "SELECT offset, unix_ms, frame FROM history_messages WHERE topic = ?1 AND unix_ms >= ?2 "
                        "ORDER BY offset DESC LIMIT ?3");
  store::Statement newest(*db_, "SELECT MAX(offset) FROM history_messages WHERE topic = ?1");
  for (auto& w : out) {
    // The newest row of a topic is never deleted (see expire and the
    // trim), so it is the last offset the epoch gave out.
    newest.reset();
    newest.bind(1, w.topic);
    if (newest.step() && !newest.is_null(0)) w.last_offset = static_cast<std::uint64_t>(newest.int64(0));
    if (per_topic == 0) continue;
    rows.reset();
    rows.bind(1, w.topic).bind(2, ttl_ms > 0 ? now_unix_ms - ttl_ms : std::int64_t{0});
    rows.bind(3, static_cast<std::int64_t>(per_topic));
    while (rows.step()) {
      w.entries.push_back({static_cast<std::uint64_t>(rows.int64(0)), rows.int64(1), rows.blob(2)});
    }
    std::reverse(w.entries.begin(), w.entries.end());
  }
  known_epoch_.clear();
  for (const auto& w : out) known_epoch_[w.topic] = w.epoch;
  return out;
}

void HistoryLog::append(std::string_view topic, std::string_view epoch, std::uint64_t offset, std::int64_t unix_ms,
                        std::string_view frame, std::size_t keep) {
  std::lock_guard lock(mu_);
  if (!in_txn_) {
    db_->exec("BEGIN");
    in_txn_ = true;
    pending_.store(true, std::memory_order_release);
  }
  const std::string name(topic);
  auto known = known_epoch_.find(name);
  const bool new_epoch = known == known_epoch_.end() || known->second != epoch;
  if (new_epoch) {
    // A topic that starts an epoch (first publish in this process, or the
    // topic was forgotten and made anew): the old epoch's rows are history
    // no client can recover into any more.
    store::Statement drop(*db_, "DELETE FROM history_messages WHERE topic = ?1");
    drop.bind(1, topic);
    drop.run();
    upsert_topic_->reset();
    upsert_topic_->bind(1, topic).bind(2, epoch);
    upsert_topic_->run();
    known_epoch_[name] = std::string(epoch);
  }
  insert_->reset();
  insert_->bind(1, topic).bind(2, static_cast<std::int64_t>(offset)).bind(3, unix_ms);
  insert_->bind_blob(4, frame.data(), frame.size());
  insert_->run();
  // Trimmed in steps, not per publish; `keep` >= 1 never reaches the
  // newest row.
  if (++appended_[name] % trim_every == 0 && offset > keep) {
    trim_->reset();
    trim_->bind(1, topic).bind(2, static_cast<std::int64_t>(offset - std::max<std::size_t>(keep, 1)));
    trim_->run();
  }
}

void HistoryLog::expire(std::int64_t ttl_ms, std::int64_t now_unix_ms) {
  if (ttl_ms <= 0) return;
  std::lock_guard lock(mu_);
  commit_locked();
  // Each topic's newest row stays: it carries the epoch's last offset, so a
  // restart never gives out an offset twice within one epoch.
  store::Statement st(*db_,
                      "DELETE FROM history_messages WHERE unix_ms < ?1 AND offset < "
                      "(SELECT MAX(h.offset) FROM history_messages h WHERE h.topic = history_messages.topic)");
  st.bind(1, now_unix_ms - ttl_ms);
  st.run();
}

}  // namespace synapse::pubsub
