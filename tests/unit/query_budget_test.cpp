// Query cost: the term budget (distinct terms, the rest dropped and counted)
// and the time budget enforced inside SQLite (a partial result past the
// deadline; Cancelled when the run is cancelled mid-statement).
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "cortex/fts_query.hpp"
#include "cortex/memory_store.hpp"
#include "store/sqlite.hpp"

using namespace synapse::cortex;
namespace store = synapse::store;

namespace {

const Caller alice{"t1", "alice"};

// A store with `n` memories of alice's, written in one transaction (the tool
// path would take a commit per memory). Each holds 12 of 50 words, so a
// query of a few of those words matches most memories.
struct BigStore {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("synapse-budget-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::unique_ptr<MemoryStore> mem;

  explicit BigStore(int n) {
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "m.db").string();
    mem = std::make_unique<MemoryStore>(path, 1);  // creates the schema
    store::Database db(path);
    store::Transaction tx(db);
    store::Statement st(db,
                        "INSERT INTO memories (tenant, agent_id, scope, store, content, tags, importance, created_at) "
                        "VALUES ('t1', 'alice', 'agent', 'semantic', ?1, '[]', 0.5, ?2)");
    std::uint32_t x = 12345;
    for (int i = 0; i < n; ++i) {
      std::string content;
      for (int w = 0; w < 12; ++w) {
        x = x * 1103515245u + 12345u;
        content += "w" + std::to_string((x >> 16) % 50) + " ";
      }
      st.reset();
      st.bind(1, content).bind(2, static_cast<std::int64_t>(i));
      st.run();
    }
    tx.commit();
  }
  ~BigStore() {
    mem.reset();
    std::filesystem::remove_all(dir);
  }
  std::string path() const { return (dir / "m.db").string(); }
  static inline int counter = 0;
};

}  // namespace

TEST(SearchTerms, DistinctTermsUpToTheBudget) {
  auto t = search_terms("Deploy deploy DEPLOY the gateway, the GATEWAY!", 16);
  EXPECT_EQ(t.terms, (std::vector<std::string>{"Deploy", "the", "gateway"}));
  EXPECT_EQ(t.dropped, 0u);
  t = search_terms("a b c d e a f", 3);
  EXPECT_EQ(t.terms, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(t.dropped, 3u);  // d, e, f (the second a is not a new term)
  EXPECT_TRUE(search_terms("\"*:", 16).terms.empty());
  EXPECT_EQ(fts_expression(search_terms("x OR y", 16).terms), R"("x" OR "OR" OR "y")");
  // Non-ASCII bytes are compared as they are (only ASCII letters fold).
  EXPECT_EQ(search_terms("caf\xC3\xA9 CAF\xC3\xA9 caf\xC3\x89", 16).terms.size(), 2u);
}

TEST(QueryBudget, TermBudgetIsAppliedAndReported) {
  BigStore s(200);
  RecallBudget b;
  b.max_terms = 2;
  auto r = s.mem->recall(0, alice, "w1 w2 w3 w4 w1", 10, b);
  EXPECT_EQ(r.terms, (std::vector<std::string>{"w1", "w2"}));
  EXPECT_EQ(r.dropped_terms, 2u);
  EXPECT_FALSE(r.partial);
  for (const auto& c : r.candidates) {
    const bool has = c.rec.content.find("w1 ") != std::string::npos || c.rec.content.find("w2 ") != std::string::npos;
    EXPECT_TRUE(has) << c.rec.content;  // only the kept terms were searched
  }
}

TEST(QueryBudget, StreamedTopKEqualsSqliteOrderByBm25) {
  BigStore s(3000);
  auto got = s.mem->recall(0, alice, "w3 w7 w11", 50);
  ASSERT_EQ(got.size(), 50u);
  store::Database db(s.path());
  store::Statement st(db,
                      "SELECT bm25(memories_fts) FROM memories_fts WHERE memories_fts MATCH ?1 "
                      "ORDER BY bm25(memories_fts) LIMIT 50");
  st.bind(1, std::string_view(R"("w3" OR "w7" OR "w11")"));
  std::size_t i = 0;
  while (st.step()) {
    ASSERT_LT(i, got.size());
    EXPECT_NEAR(got[i].relevance, -st.real(0), 1e-9) << i;
    ++i;
  }
  EXPECT_EQ(i, 50u);
  for (std::size_t j = 1; j < got.size(); ++j) EXPECT_GE(got[j - 1].relevance, got[j].relevance);
}

TEST(QueryBudget, PastTheDeadlineTheResultIsPartial) {
  BigStore s(20000);
  RecallBudget unbounded;
  const auto t0 = std::chrono::steady_clock::now();
  auto full = s.mem->recall(0, alice, "w1 w2 w3 w4 w5 w6 w7 w8", 100, unbounded);
  const auto full_time = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(full.partial);
  EXPECT_EQ(full.candidates.size(), 100u);

  RecallBudget spent;
  spent.deadline = std::chrono::steady_clock::now();  // already passed: the first check interrupts
  const auto t1 = std::chrono::steady_clock::now();
  auto part = s.mem->recall(0, alice, "w1 w2 w3 w4 w5 w6 w7 w8", 100, spent);
  const auto part_time = std::chrono::steady_clock::now() - t1;
  EXPECT_TRUE(part.partial);
  EXPECT_LT(part_time, full_time);
  // What it found is real and in order; newest memories were examined first.
  for (std::size_t j = 1; j < part.candidates.size(); ++j) {
    EXPECT_GE(part.candidates[j - 1].relevance, part.candidates[j].relevance);
  }
  // The connection is usable afterwards, with no handler left behind.
  auto again = s.mem->recall(0, alice, "w1 w2 w3 w4 w5 w6 w7 w8", 100, unbounded);
  EXPECT_FALSE(again.partial);
  EXPECT_EQ(again.candidates.size(), 100u);
}

TEST(QueryBudget, LiteralScanIsBudgetedToo) {
  BigStore s(20000);
  RecallBudget spent;
  spent.deadline = std::chrono::steady_clock::now();
  auto r = s.mem->recall(0, alice, "\"*", 10, spent);  // no terms: the substring scan
  EXPECT_TRUE(r.partial);
}

TEST(QueryBudget, CancellationStopsTheStatement) {
  BigStore s(20000);
  CancelToken cancel;
  cancel.cancel();
  RecallBudget b;
  b.cancel = &cancel;
  EXPECT_THROW(s.mem->recall(0, alice, "w1 w2 w3 w4 w5 w6 w7 w8", 100, b), Cancelled);
  RecallBudget unbounded;
  EXPECT_FALSE(s.mem->recall(0, alice, "w1", 5, unbounded).partial);
}

TEST(QueryBudget, QueryBudgetStartsADeadline) {
  QueryBudget q;
  q.time = std::chrono::milliseconds(0);
  CancelToken c;
  EXPECT_FALSE(q.start(c).deadline.has_value());
  q.time = std::chrono::milliseconds(50);
  const auto b = q.start(c);
  ASSERT_TRUE(b.deadline.has_value());
  EXPECT_GT(*b.deadline, std::chrono::steady_clock::now());
  EXPECT_EQ(b.cancel, &c);
}
