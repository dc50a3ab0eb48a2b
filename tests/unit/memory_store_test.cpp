// The memory engine's storage: literal search, visibility, ranking, routing.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "cortex/fts_query.hpp"
#include "cortex/memory_store.hpp"
#include "cortex/query_router.hpp"

using namespace synapse::cortex;

namespace {
struct TempStore {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("synapse-mem-" + std::to_string(::getpid()) +
                                                                        "-" + std::to_string(counter++));
  std::unique_ptr<MemoryStore> store;
  TempStore() {
    std::filesystem::create_directories(dir);
    store = std::make_unique<MemoryStore>((dir / "m.db").string(), 2);
  }
  ~TempStore() {
    store.reset();
    std::filesystem::remove_all(dir);
  }
  static inline int counter = 0;
};

const Caller alice{"t1", "alice"};
const Caller bob{"t1", "bob"};
const Caller mallory{"t2", "alice"};  // same agent name, other tenant

std::int64_t put(MemoryStore& s, const Caller& c, std::string content, std::string scope = "agent",
                 double importance = 0.5) {
  NewMemory m;
  m.content = std::move(content);
  m.scope = std::move(scope);
  m.importance = importance;
  return s.store(0, c, m);
}
}  // namespace

TEST(FtsQuery, QuotesEveryTerm) {
  EXPECT_EQ(build_fts_query("hello world"), R"("hello" OR "world")");
  EXPECT_EQ(build_fts_query("a OR b"), R"("a" OR "OR" OR "b")");
  EXPECT_EQ(build_fts_query("NEAR(x y)"), R"("NEAR" OR "x" OR "y")");
  EXPECT_EQ(build_fts_query("\"*"), "");
  EXPECT_EQ(build_fts_query("'; DROP TABLE memories; --"), R"("DROP" OR "TABLE" OR "memories")");
  EXPECT_EQ(build_fts_query("caf\xC3\xA9"), "\"caf\xC3\xA9\"");
  std::string many;
  for (int i = 0; i < 100; ++i) many += "w" + std::to_string(i) + " ";
  EXPECT_EQ(query_terms(many).size(), max_query_terms);
}

TEST(MemoryStore, InjectionTextIsStoredAndFoundLiterally) {
  TempStore t;
  const char* hostile[] = {"\"", "*", "OR", "NEAR(", "'; DROP TABLE memories; --", "a\" OR \"1\"=\"1"};
  for (const char* h : hostile) put(*t.store, alice, std::string("note: ") + h);
  for (const char* h : hostile) {
    auto found = t.store->recall(0, alice, h, 50);
    bool hit = false;
    for (const auto& c : found) hit |= c.rec.content == std::string("note: ") + h;
    EXPECT_TRUE(hit) << h;
  }
  EXPECT_TRUE(t.store->integrity_ok(0));
  EXPECT_EQ(t.store->stats(0, alice).visible, 6);
}

TEST(MemoryStore, AgentScopeIsPrivateSharedIsTenantWide) {
  TempStore t;
  put(*t.store, alice, "alice secret plan");
  put(*t.store, alice, "team shared plan", "shared");
  auto mine = t.store->recall(0, alice, "plan", 10);
  EXPECT_EQ(mine.size(), 2u);
  auto theirs = t.store->recall(0, bob, "plan", 10);
  ASSERT_EQ(theirs.size(), 1u);
  EXPECT_EQ(theirs[0].rec.content, "team shared plan");
  EXPECT_TRUE(t.store->recall(0, mallory, "plan", 10).empty());
}

TEST(MemoryStore, ForgetOnlyWhatYouSee) {
  TempStore t;
  const auto id = put(*t.store, alice, "private thing");
  EXPECT_FALSE(t.store->forget(0, bob, id));
  EXPECT_FALSE(t.store->forget(0, mallory, id));
  EXPECT_TRUE(t.store->forget(0, alice, id));
  EXPECT_FALSE(t.store->forget(0, alice, id));
  EXPECT_TRUE(t.store->recall(0, alice, "private", 10).empty());
}

TEST(MemoryStore, RankingUsesImportanceWhenRelevanceTies) {
  TempStore t;
  put(*t.store, alice, "deploy service alpha", "agent", 0.1);
  put(*t.store, alice, "deploy service beta", "agent", 0.9);
  RankingOptions opts;
  auto ranked = rank(t.store->recall(0, alice, "deploy service", 10), opts, "", 0, 10);
  ASSERT_EQ(ranked.size(), 2u);
  EXPECT_EQ(ranked[0].rec.content, "deploy service beta");
  EXPECT_GT(ranked[0].score, ranked[1].score);
}

TEST(MemoryStore, RecencyDecays) {
  RankingOptions opts;
  opts.bm25_weight = 0;
  opts.importance_weight = 0;
  opts.store_weight = 0;
  opts.recency_half_life_h = 1;
  std::vector<Candidate> c(2);
  c[0].rec.content = "old";
  c[0].rec.created_at_ms = 0;
  c[1].rec.content = "new";
  c[1].rec.created_at_ms = 3'600'000;  // one hour later
  auto ranked = rank(c, opts, "", 3'600'000, 10);
  EXPECT_EQ(ranked[0].rec.content, "new");
  EXPECT_NEAR(ranked[0].score, 0.25, 1e-9);
  EXPECT_NEAR(ranked[1].score, 0.125, 1e-9);
}

TEST(QueryRouter, ClassifiesByCues) {
  EXPECT_EQ(classify("how to deploy the service").store, "procedural");
  EXPECT_EQ(classify("what happened in yesterday's meeting").store, "episodic");
  EXPECT_EQ(classify("what is a vector clock").store, "semantic");
  const Route none = classify("zebra");
  EXPECT_EQ(none.store, "semantic");
  EXPECT_NEAR(none.confidence, 1.0 / 3.0, 1e-9);
  EXPECT_GT(classify("how to install and configure step by step").confidence, 0.7);
}
