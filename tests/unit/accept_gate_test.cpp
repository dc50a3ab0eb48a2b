// The accept gate (issue 19, item 11): sockets per address and in all,
// counted from accept, with a reserve for addresses holding few sockets.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "limits/accept_gate.hpp"

using namespace synapse::limits;

namespace {

std::vector<SocketPermit> take(AcceptGate& g, const char* ip, int n) {
  std::vector<SocketPermit> out;
  for (int i = 0; i < n; ++i) {
    SocketPermit p;
    EXPECT_EQ(g.admit(ip, p), AcceptVerdict::ok) << ip << " #" << i;
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace

TEST(AcceptGate, PerAddressLimitCountsEverySocketUntilItCloses) {
  AcceptGate g({.per_ip = 3, .capacity = 0, .reserve = 0, .reserve_share = 4});
  auto held = take(g, "10.0.0.1", 3);
  SocketPermit p;
  EXPECT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::per_ip_full);
  EXPECT_FALSE(p);
  EXPECT_EQ(g.admit("10.0.0.2", p), AcceptVerdict::ok);  // another address is not affected
  held.pop_back();                                      // one socket closes
  SocketPermit again;
  EXPECT_EQ(g.admit("10.0.0.1", again), AcceptVerdict::ok);
  EXPECT_EQ(g.open(), 4);
}

TEST(AcceptGate, TheReserveGoesOnlyToAddressesHoldingFewSockets) {
  AcceptGate g({.per_ip = 0, .capacity = 20, .reserve = 5, .reserve_share = 2});
  auto flood = take(g, "10.0.0.9", 15);  // up to capacity - reserve
  SocketPermit p;
  EXPECT_EQ(g.admit("10.0.0.9", p), AcceptVerdict::reserved);
  auto small = take(g, "10.0.0.1", 2);  // a new address still gets in
  EXPECT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::reserved);  // ... up to its share
  auto others = take(g, "10.0.0.2", 2);
  SocketPermit last;
  EXPECT_EQ(g.admit("10.0.0.3", last), AcceptVerdict::ok);  // the 20th socket
  EXPECT_EQ(g.admit("10.0.0.4", p), AcceptVerdict::full);
  EXPECT_TRUE(g.under_pressure());
}

TEST(AcceptGate, PressureStartsAtHalfTheCapacity) {
  AcceptGate g({.per_ip = 0, .capacity = 10, .reserve = 0, .reserve_share = 1});
  auto a = take(g, "10.0.0.1", 4);
  EXPECT_FALSE(g.under_pressure());
  auto b = take(g, "10.0.0.1", 1);
  EXPECT_TRUE(g.under_pressure());
  a.clear();
  EXPECT_FALSE(g.under_pressure());
}

TEST(AcceptGate, PermitsGiveBackOnceWhenMovedAndReleased) {
  AcceptGate g({.per_ip = 1, .capacity = 0, .reserve = 0, .reserve_share = 1});
  SocketPermit p;
  ASSERT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::ok);
  SocketPermit moved = std::move(p);
  p.release();  // moved-from: nothing to give back
  EXPECT_EQ(g.open(), 1);
  moved.release();
  moved.release();
  EXPECT_EQ(g.open(), 0);
  EXPECT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::ok);
}

// Admitting into a permit that already counts in the same gate gives the old
// one back after the gate's lock is released (giving back takes that lock:
// done under it, this deadlocked), and a refusal leaves the old one held.
TEST(AcceptGate, AdmittingIntoAHeldPermitOfTheSameGateGivesTheOldOneBack) {
  AcceptGate g({.per_ip = 1, .capacity = 0, .reserve = 0, .reserve_share = 1});
  SocketPermit p;
  ASSERT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::ok);
  ASSERT_EQ(g.admit("10.0.0.2", p), AcceptVerdict::ok);  // 10.0.0.1's socket is given back
  EXPECT_TRUE(p);
  EXPECT_EQ(g.open(), 1);
  SocketPermit other;
  EXPECT_EQ(g.admit("10.0.0.1", other), AcceptVerdict::ok);  // its count went back to 0
  EXPECT_EQ(g.admit("10.0.0.1", p), AcceptVerdict::per_ip_full);
  EXPECT_TRUE(p);  // refused: still 10.0.0.2's
  EXPECT_EQ(g.open(), 2);
  p.release();
  other.release();
  EXPECT_EQ(g.open(), 0);
}

// A permit is one pointer, to the gate's entry for its address (which names
// the gate): it gives back once, to its own gate, and the per-address
// counts are exact after many sockets opened and closed over many
// addresses (the map rehashing under the permits that point into it).
TEST(AcceptGate, PermitsPointAtTheirAddressEntryThroughManyOpensAndCloses) {
  EXPECT_EQ(sizeof(SocketPermit), sizeof(void*));
  AcceptGate g({.per_ip = 40, .capacity = 0, .reserve = 0, .reserve_share = 1});
  AcceptGate h({.per_ip = 1, .capacity = 0, .reserve = 0, .reserve_share = 1});
  SocketPermit mine, theirs;
  ASSERT_EQ(g.admit("10.0.0.1", mine), AcceptVerdict::ok);
  ASSERT_EQ(h.admit("10.0.0.1", theirs), AcceptVerdict::ok);
  mine = std::move(theirs);  // gives g's back, holds h's
  EXPECT_EQ(g.open(), 0);
  EXPECT_EQ(h.open(), 1);
  SocketPermit again;
  EXPECT_EQ(h.admit("10.0.0.1", again), AcceptVerdict::per_ip_full);
  mine.release();
  EXPECT_EQ(h.open(), 0);
  EXPECT_EQ(h.admit("10.0.0.1", again), AcceptVerdict::ok);

  std::vector<std::vector<SocketPermit>> by_ip(300);
  for (int round = 0; round < 40; ++round) {
    for (std::size_t i = 0; i < by_ip.size(); ++i) {
      const std::string ip = "10.9." + std::to_string(i / 256) + "." + std::to_string(i % 256);
      SocketPermit p;
      ASSERT_EQ(g.admit(ip, p), AcceptVerdict::ok) << ip << " round " << round;
      by_ip[i].push_back(std::move(p));
      if ((round + i) % 4 == 0) by_ip[i].erase(by_ip[i].begin());  // one closes
    }
  }
  std::int64_t held = 0;
  for (std::size_t i = 0; i < by_ip.size(); ++i) {
    held += static_cast<std::int64_t>(by_ip[i].size());
    // Up to the per-address bound, and no further: the address's count is exact.
    const std::string ip = "10.9." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    std::vector<SocketPermit> more;
    for (std::size_t n = by_ip[i].size(); n < 40; ++n) {
      more.emplace_back();
      ASSERT_EQ(g.admit(ip, more.back()), AcceptVerdict::ok) << ip;
    }
    SocketPermit over;
    EXPECT_EQ(g.admit(ip, over), AcceptVerdict::per_ip_full) << ip;
  }
  EXPECT_EQ(g.open(), held);
  by_ip.clear();
  EXPECT_EQ(g.open(), 0);
  SocketPermit fresh;
  EXPECT_EQ(g.admit("10.9.0.7", fresh), AcceptVerdict::ok);
}

TEST(AcceptGate, CapacityLeavesTheProcessItsOwnDescriptors) {
  EXPECT_EQ(socket_capacity(1024, 100), 924);
  EXPECT_EQ(socket_capacity(50, 100), 1);
}
