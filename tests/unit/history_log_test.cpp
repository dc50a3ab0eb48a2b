// The durable history log (issue 18 item 4): windows come back in offset
// order with their epoch, a new epoch forgets the old one's rows, and
// trimming or expiry never deletes a topic's newest row (the epoch's last
// offset), so a restart never gives an offset out twice.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>

#include "pubsub/history_log.hpp"

using synapse::pubsub::HistoryLog;

namespace {

struct TempDir {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("synapse-history-test-" + std::to_string(::getpid()) + "-" +
                               std::to_string(reinterpret_cast<std::uintptr_t>(this)));
  TempDir() { std::filesystem::create_directories(dir); }
  ~TempDir() { std::filesystem::remove_all(dir); }
  std::string path() const { return (dir / "history.db").string(); }
};

std::string frame(std::uint64_t offset) { return "[null,null,\"room:a\",\"e\",{\"n\":" + std::to_string(offset) + "}]"; }

}  // namespace

TEST(HistoryLog, AWindowComesBackInOrderWithItsEpochAfterReopening) {
  TempDir tmp;
  {
    HistoryLog log(tmp.path());
    EXPECT_TRUE(log.load(100, 0, 1000).empty());
    for (std::uint64_t o = 1; o <= 20; ++o) log.append("room:a", "E1", o, 1000 + o, frame(o), 100);
    log.append("room:b", "E2", 1, 2000, "b1", 100);
  }
  HistoryLog again(tmp.path());
  auto windows = again.load(5, 0, 3000);
  ASSERT_EQ(windows.size(), 2u);
  const auto& a = windows[0].topic == "room:a" ? windows[0] : windows[1];
  const auto& b = windows[0].topic == "room:a" ? windows[1] : windows[0];
  EXPECT_EQ(a.epoch, "E1");
  EXPECT_EQ(a.last_offset, 20u);
  ASSERT_EQ(a.entries.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(a.entries[i].offset, 16 + i);
    EXPECT_EQ(a.entries[i].frame, frame(16 + i));
  }
  EXPECT_EQ(b.epoch, "E2");
  ASSERT_EQ(b.entries.size(), 1u);
  EXPECT_EQ(b.entries[0].frame, "b1");
}

TEST(HistoryLog, ANewEpochForgetsTheOldOnesRows) {
  TempDir tmp;
  HistoryLog log(tmp.path());
  for (std::uint64_t o = 1; o <= 5; ++o) log.append("room:a", "OLD", o, 1000, frame(o), 100);
  log.append("room:a", "NEW", 1, 2000, frame(1), 100);
  auto w = log.load(100, 0, 3000);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].epoch, "NEW");
  EXPECT_EQ(w[0].last_offset, 1u);
  EXPECT_EQ(w[0].entries.size(), 1u);
}

TEST(HistoryLog, TrimmingKeepsTheWindowAndTheNewestRow) {
  TempDir tmp;
  HistoryLog log(tmp.path());
  for (std::uint64_t o = 1; o <= 300; ++o) log.append("room:a", "E", o, 1000, frame(o), 1);
  auto w = log.load(1000, 0, 2000);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].last_offset, 300u);
  EXPECT_LE(w[0].entries.size(), 64u);  // at most one trim step behind
  EXPECT_EQ(w[0].entries.back().offset, 300u);
}

TEST(HistoryLog, ExpiryDropsOldRowsButNotTheEpochsLastOffset) {
  TempDir tmp;
  HistoryLog log(tmp.path());
  for (std::uint64_t o = 1; o <= 10; ++o) log.append("room:a", "E", o, 1000 + static_cast<std::int64_t>(o), frame(o), 100);
  log.expire(100, 100'000);  // every row is old
  auto w = log.load(100, 0, 100'000);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].last_offset, 10u);
  ASSERT_EQ(w[0].entries.size(), 1u);
  EXPECT_EQ(w[0].entries[0].offset, 10u);
  // Loading with the ttl returns none of them as recoverable.
  auto fresh = log.load(100, 100, 100'000);
  ASSERT_EQ(fresh.size(), 1u);
  EXPECT_EQ(fresh[0].last_offset, 10u);
  EXPECT_TRUE(fresh[0].entries.empty());
}
