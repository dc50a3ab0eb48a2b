#include "cortex/memory_store.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>

#include "core/clock.hpp"
#include "cortex/fts_query.hpp"
#include "cortex/query_router.hpp"
#include "store/sqlite.hpp"

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
  std::vector<Candidate> out;
  const std::string match = build_fts_query(text);
  Slot& s = slot(conn);
  std::lock_guard lock(s.mu);
  if (!match.empty()) {
    store::Statement st(*s.db, std::string("SELECT ") + columns +
                                   ", bm25(memories_fts) FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid "
                                   "WHERE memories_fts MATCH ?3 AND " + visible +
                                   " ORDER BY bm25(memories_fts) LIMIT ?4");
    st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, match).bind(4, static_cast<std::int64_t>(limit));
    while (st.step()) out.push_back(Candidate{read_record(st), -st.real(8), false});
    if (!out.empty()) return out;
  }
  // No search terms (only punctuation, say), or terms the FTS tokenizer does
  // not index (emoji and other symbols): a literal substring scan, with the
  // text bound as a parameter, never parsed.
  if (text.empty()) return out;
  store::Statement st(*s.db, std::string("SELECT ") + columns + " FROM memories m WHERE " + visible +
                                 " AND instr(m.content, ?3) > 0 ORDER BY m.created_at DESC LIMIT ?4");
  st.bind(1, caller.tenant).bind(2, caller.agent_id).bind(3, text).bind(4, static_cast<std::int64_t>(limit));
  while (st.step()) out.push_back(Candidate{read_record(st), 1.0, true});
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
