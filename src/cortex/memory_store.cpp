#include "cortex/memory_store.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>

#include "core/clock.hpp"
#include "cortex/fts_query.hpp"
#include "cortex/query_router.hpp"
#include "store/sqlite.hpp"

#include <sqlite3.h>

namespace synapse::cortex {
namespace json = boost::json;

namespace {

constexpr const char* schema = R"sql(
CREATE TABLE IF NOT EXISTS memories (
  id INTEGER PRIMARY KEY,
  tenant TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  scope TEXT NOT NULL CHECK (scope IN ('agent', 'shared')),
  store TEXT NOT NULL,
  content TEXT NOT NULL,
  tags TEXT NOT NULL DEFAULT '[]',
  importance REAL NOT NULL DEFAULT 0.5,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_visible ON memories (tenant, scope, agent_id, created_at);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
  content, tags, content='memories', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
  INSERT INTO memories_fts (rowid, content, tags) VALUES (new.id, new.content, new.tags);
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
  INSERT INTO memories_fts (memories_fts, rowid, content, tags) VALUES ('delete', old.id, old.content, old.tags);
END;
CREATE TRIGGER IF NOT EXISTS memories_au AFTER UPDATE ON memories BEGIN
  INSERT INTO memories_fts (memories_fts, rowid, content, tags) VALUES ('delete', old.id, old.content, old.tags);
  INSERT INTO memories_fts (rowid, content, tags) VALUES (new.id, new.content, new.tags);
END;
)sql";

// Visible to the caller: same tenant, and shared or the caller's own.
constexpr const char* visible = "m.tenant = ?1 AND (m.scope = 'shared' OR m.agent_id = ?2)";

constexpr const char* columns = "m.id, m.content, m.tags, m.importance, m.scope, m.agent_id, m.store, m.created_at";

MemoryRecord read_record(const store::Statement& st) {
  MemoryRecord r;
  r.id = st.int64(0);
  r.content = st.text(1);
  boost::system::error_code ec;
  json::value tags = json::parse(st.text(2), ec);
  if (!ec && tags.is_array()) {
    for (const auto& t : tags.as_array()) {
      if (t.is_string()) r.tags.emplace_back(t.as_string());
    }
  }
  r.importance = st.real(3);
  r.scope = st.text(4);
  r.agent_id = st.text(5);
  r.store = st.text(6);
  r.created_at_ms = st.int64(7);
  return r;
}

}  // namespace

MemoryStore::MemoryStore(const std::string& db_path, std::size_t connections) {
  if (connections == 0) connections = 1;
  for (std::size_t i = 0; i < connections; ++i) {
    auto s = std::make_unique<Slot>();
    s->db = std::make_unique<store::Database>(db_path);
    if (i == 0) s->db->exec(schema);
    slots_.push_back(std::move(s));
  }
}

MemoryStore::~MemoryStore() = default;

std::int64_t MemoryStore::store(std::size_t conn, const Caller& caller, const NewMemory& m) {
  json::array tags;
  for (const auto& t : m.tags) tags.emplace_back(t);
  const std::string store_name = classify(m.content).store;
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  store::Statement st(*s.db,
                      "INSERT INTO memories (tenant, agent_id, scope, store, content, tags, importance, created_at) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, m.scope).bind(4, store_name);
  st.bind(5, m.content).bind(6, json::serialize(tags)).bind(7, m.importance).bind(8, unix_ms());
  st.run();
  return s.db->last_insert_rowid();
}

std::vector<Candidate> MemoryStore::recall(std::size_t conn, const Caller& caller, std::string_view text,
                                           std::size_t limit) {
  RecallBudget unbounded;
  unbounded.max_terms = max_query_terms;
  return recall(conn, caller, text, limit, unbounded).candidates;
}

namespace {

// Installed on a connection for one recall: SQLite calls it every
// `progress_steps` VM instructions; a non-zero return interrupts the
// statement (its step() then throws SqliteError).
class Watch {
 public:
  static constexpr int progress_steps = 1000;

  Watch(sqlite3* db, const RecallBudget& budget) : db_(db), deadline_(budget.deadline), cancel_(budget.cancel) {
    if (deadline_ || cancel_) sqlite3_progress_handler(db_, progress_steps, &Watch::check, this);
  }
  ~Watch() { sqlite3_progress_handler(db_, 0, nullptr, nullptr); }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  void drop_deadline() noexcept { deadline_.reset(); }
  bool expired() const noexcept { return expired_; }
  // After a SqliteError: Cancelled if the run was cancelled, nothing if the
  // deadline passed (the caller marks the result partial), else the error.
  void interrupted() const {
    if (cancelled_) throw Cancelled{};
    if (!expired_) throw;
  }

 private:
  static int check(void* self) noexcept {
    auto* w = static_cast<Watch*>(self);
    if (w->cancel_ && w->cancel_->cancelled()) {
      w->cancelled_ = true;
      return 1;
    }
    if (w->deadline_ && std::chrono::steady_clock::now() >= *w->deadline_) {
      w->expired_ = true;
      return 1;
    }
    return 0;
  }

  sqlite3* db_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  const CancelToken* cancel_;
  bool expired_ = false;
  bool cancelled_ = false;
};

struct Match {
  double relevance;
  std::int64_t id;
};

// Heap order for keeping the best: the least relevant (and, among equals,
// the oldest) on top, so it is the one replaced.
bool worse(const Match& a, const Match& b) {
  return a.relevance != b.relevance ? a.relevance > b.relevance : a.id > b.id;
}

}  // namespace

Recall MemoryStore::recall(std::size_t conn, const Caller& caller, std::string_view text, std::size_t limit,
                           const RecallBudget& budget) {
  Recall out;
  SearchTerms st_terms = search_terms(text, budget.max_terms);
  out.terms = std::move(st_terms.terms);
  out.dropped_terms = st_terms.dropped;
  const std::string match = fts_expression(out.terms);
  if (limit == 0) return out;
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  Watch watch(s.db->handle(), budget);
  if (!match.empty()) {
    std::vector<Match> best;  // a heap by worse()
    best.reserve(limit);
    try {
      store::Statement st(*s.db, std::string("SELECT m.id, bm25(memories_fts) FROM memories_fts JOIN memories m "
                                             "ON m.id = memories_fts.rowid WHERE memories_fts MATCH ?3 AND ") +
                                     visible + " ORDER BY memories_fts.rowid DESC");
      st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, match);
      while (st.step()) {
        const Match m{-st.real(1), st.int64(0)};
        if (best.size() < limit) {
          best.push_back(m);
          std::push_heap(best.begin(), best.end(), worse);
        } else if (m.relevance > best.front().relevance) {
          std::pop_heap(best.begin(), best.end(), worse);
          best.back() = m;
          std::push_heap(best.begin(), best.end(), worse);
        }
      }
    } catch (const store::SqliteError&) {
      watch.interrupted();
      out.partial = true;
    }
    if (!best.empty()) {
      std::sort_heap(best.begin(), best.end(), worse);  // most relevant first, newer first among equals
      // At most `limit` primary-key reads: not worth interrupting, and an
      // interruption here would lose results already paid for.
      watch.drop_deadline();
      store::Statement rec(*s.db, std::string("SELECT ") + columns + " FROM memories m WHERE m.id = ?1");
      for (const Match& m : best) {
        rec.reset();
        rec.bind(1, m.id);
        if (rec.step()) out.candidates.push_back(Candidate{read_record(rec), m.relevance, false});
      }
      return out;
    }
    if (out.partial) return out;
  }
  // No search terms (only punctuation, say), or terms the FTS tokenizer does
  // not index (emoji and other symbols): a literal substring scan, with the
  // text bound as a parameter, never parsed.
  if (text.empty()) return out;
  try {
    store::Statement st(*s.db, std::string("SELECT ") + columns + " FROM memories m WHERE " + visible +
                                   " AND instr(m.content, ?3) > 0 ORDER BY m.created_at DESC LIMIT ?4");
    st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, text).bind(4, static_cast<std::int64_t>(limit));
    while (st.step()) out.candidates.push_back(Candidate{read_record(st), 1.0, true});
  } catch (const store::SqliteError&) {
    watch.interrupted();
    out.partial = true;
  }
  return out;
}

bool MemoryStore::forget(std::size_t conn, const Caller& caller, std::int64_t id) {
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  store::Statement st(*s.db, std::string("DELETE FROM memories WHERE id = ?3 AND id IN (SELECT m.id FROM memories m WHERE ") +
                                 visible + ")");
  st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, id);
  st.run();
  return s.db->changes() > 0;
}

MemoryStats MemoryStore::stats(std::size_t conn, const Caller& caller) {
  MemoryStats out;
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  store::Statement st(*s.db, std::string("SELECT m.scope, m.store, COUNT(*), MIN(m.created_at), MAX(m.created_at) "
                                         "FROM memories m WHERE ") +
                                 visible + " GROUP BY m.scope, m.store");
  st.bind(1, caller.tenant).bind(2, caller.agent_id);
  while (st.step()) {
    const std::int64_t n = st.int64(2);
    out.visible += n;
    (st.text(0) == "shared" ? out.shared_scope : out.agent_scope) += n;
    out.by_store[st.text(1)] += n;
    const std::int64_t lo = st.int64(3), hi = st.int64(4);
    out.oldest_ms = out.oldest_ms == 0 ? lo : std::min(out.oldest_ms, lo);
    out.newest_ms = std::max(out.newest_ms, hi);
  }
  return out;
}

bool MemoryStore::integrity_ok(std::size_t conn) {
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  return s.db->integrity_ok();
}

std::vector<Ranked> rank(std::vector<Candidate> candidates, const RankingOptions& opts, std::string_view routed_store,
                         std::int64_t now_ms, std::size_t limit) {
  double best = 0;
  for (const auto& c : candidates) best = std::max(best, c.relevance);
  std::vector<Ranked> out;
  out.reserve(candidates.size());
  for (auto& c : candidates) {
    const double relevance = best > 0 ? c.relevance / best : 0.0;
    const double age_h = static_cast<double>(std::max<std::int64_t>(0, now_ms - c.rec.created_at_ms)) / 3'600'000.0;
    const double recency = std::pow(0.5, age_h / opts.recency_half_life_h);
    double score = opts.bm25_weight * relevance + opts.recency_weight * recency +
                   opts.importance_weight * std::clamp(c.rec.importance, 0.0, 1.0);
    if (c.rec.store == routed_store) score += opts.store_weight;
    out.push_back(Ranked{std::move(c.rec), score});
  }
  std::stable_sort(out.begin(), out.end(), [](const Ranked& a, const Ranked& b) { return a.score > b.score; });
  if (out.size() > limit) out.resize(limit);
  return out;
}

}  // namespace synapse::cortex
