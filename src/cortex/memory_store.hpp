// The built-in memory engine's storage: SQLite with an FTS5 index, in the
// data directory. Memories belong to a tenant; `agent` scope is visible to its
// agent only, `shared` to the whole tenant.
//
// Threads: one SQLite connection per worker (WAL lets them read at once); a
// caller passes its worker index. Each connection has its own mutex, so any
// thread may use any index safely.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cortex/tool.hpp"

namespace synapse::store {
class Database;
}

namespace synapse::cortex {

struct NewMemory {
  std::string content;
  std::vector<std::string> tags;
  double importance = 0.5;
  std::string scope = "agent";
};

struct MemoryRecord {
  std::int64_t id = 0;
  std::string content;
  std::vector<std::string> tags;
  double importance = 0.5;
  std::string scope;
  std::string agent_id;
  std::string store;  // semantic / episodic / procedural, classified on store
  std::int64_t created_at_ms = 0;
};

struct Candidate {
  MemoryRecord rec;
  double relevance = 0;  // -bm25: larger is more relevant
  bool literal = false;  // found by substring match, not full-text search
};

struct MemoryStats {
  std::int64_t visible = 0;
  std::int64_t agent_scope = 0;
  std::int64_t shared_scope = 0;
  std::map<std::string, std::int64_t> by_store;
  std::int64_t oldest_ms = 0;
  std::int64_t newest_ms = 0;
};

struct RankingOptions {
  double bm25_weight = 0.6;
  double recency_weight = 0.25;
  double importance_weight = 0.15;
  double recency_half_life_h = 168;
  double store_weight = 0.1;  // bonus when a memory sits in the routed store
  std::size_t candidates = 100;
};

// What one recall may cost (docs/cortex.md, "Query cost").
struct RecallBudget {
  std::size_t max_terms = 16;  // distinct search terms used; the rest are dropped
  // When SQLite must give up; no deadline when unset.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Checked by SQLite as it runs: a cancelled run stops within microseconds
  // instead of finishing its statement (throws Cancelled).
  const CancelToken* cancel = nullptr;
};

// The configured budget of every query and memory.search
// (cortex.query_max_terms, cortex.query_budget_ms).
struct QueryBudget {
  std::size_t max_terms = 16;
  std::chrono::milliseconds time{200};  // zero: no time budget

  // The budget of one recall starting now.
  RecallBudget start(const CancelToken& cancel) const {
    RecallBudget b;
    b.max_terms = max_terms;
    if (time.count() > 0) b.deadline = std::chrono::steady_clock::now() + time;
    b.cancel = &cancel;
    return b;
  }
};

struct Recall {
  std::vector<Candidate> candidates;  // most relevant first
  std::vector<std::string> terms;     // the terms searched
  std::size_t dropped_terms = 0;      // distinct terms past the budget
  // The deadline passed before every match was examined: `candidates` are the
  // best among the matches examined so far (newest memories first).
  bool partial = false;
};

struct Ranked {
  MemoryRecord rec;
  double score = 0;
};

class MemoryStore {
 public:
  MemoryStore(const std::string& db_path, std::size_t connections);
  ~MemoryStore();

  std::int64_t store(std::size_t conn, const Caller& caller, const NewMemory& m);
  // Full-text candidates (BM25 order). When that finds nothing (text with no
  // search terms, or only terms the tokenizer skips, such as emoji) it falls
  // back to a literal substring scan, newest first.
  std::vector<Candidate> recall(std::size_t conn, const Caller& caller, std::string_view text, std::size_t limit);
  // The same under a budget. Contract: full-text matches are read newest
  // first (FTS5 rowid order, no sort) and the `limit` most relevant kept; the
  // records of those are then read by id. A progress handler on the worker's
  // connection checks the deadline and the cancel token every 1,000 SQLite
  // VM steps: past the deadline the statement is interrupted and the result
  // is marked partial (the literal scan is then skipped, its budget being
  // spent); on cancellation Cancelled is thrown. Reading the kept records is
  // bounded by `limit` and runs without the deadline.
  Recall recall(std::size_t conn, const Caller& caller, std::string_view text, std::size_t limit,
                const RecallBudget& budget);
  bool forget(std::size_t conn, const Caller& caller, std::int64_t id);
  MemoryStats stats(std::size_t conn, const Caller& caller);
  bool integrity_ok(std::size_t conn);

 private:
  struct Slot {
    std::mutex mu;
    std::unique_ptr<store::Database> db;
  };
  Slot& slot(std::size_t conn) { return *slots_[conn % slots_.size()]; }
  std::vector<std::unique_ptr<Slot>> slots_;
};

// Orders candidates by weighted relevance, recency and importance (each in
// 0..1, relevance normalized to the best candidate) plus the store bonus.
std::vector<Ranked> rank(std::vector<Candidate> candidates, const RankingOptions& opts,
                         std::string_view routed_store, std::int64_t now_ms, std::size_t limit);

}  // namespace synapse::cortex
