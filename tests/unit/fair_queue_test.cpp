// The worker pool's fair queue: round-robin over tenants, then over a
// tenant's keys, FIFO within a key; the total and per-tenant bounds.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "cortex/fair_queue.hpp"
#include "cortex/worker_pool.hpp"

using namespace synapse::cortex;

namespace {
std::vector<std::string> drain(FairQueue<std::string>& q) {
  std::vector<std::string> out;
  while (auto j = q.pop()) out.push_back(*j);
  return out;
}
}  // namespace

TEST(FairQueue, OneLaneIsFifo) {
  FairQueue<std::string> q(100, 0);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(q.push({"t", "k"}, "j" + std::to_string(i)), Admit::accepted);
  EXPECT_EQ(drain(q), (std::vector<std::string>{"j0", "j1", "j2", "j3", "j4"}));
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.pop().has_value());
}

TEST(FairQueue, ALateTenantWaitsOneTurnNotTheBacklog) {
  FairQueue<std::string> q(1000, 0);
  for (int i = 0; i < 100; ++i) q.push({"A", "a"}, "A" + std::to_string(i));
  q.push({"B", "b"}, "B0");
  // A's front job was first in the rotation; B's job comes right after it.
  EXPECT_EQ(*q.pop(), "A0");
  EXPECT_EQ(*q.pop(), "B0");
  EXPECT_EQ(*q.pop(), "A1");
  EXPECT_EQ(q.tenants(), 1u);
}

TEST(FairQueue, TenantsAlternateAndANewcomerQueuesBehindTheWaiting) {
  FairQueue<std::string> q(1000, 0);
  for (int i = 0; i < 3; ++i) {
    q.push({"A", "a"}, "A" + std::to_string(i));
    q.push({"B", "b"}, "B" + std::to_string(i));
  }
  EXPECT_EQ(*q.pop(), "A0");
  q.push({"C", "c"}, "C0");  // behind B, which was waiting, and A, now at the back
  EXPECT_EQ(drain(q), (std::vector<std::string>{"B0", "A1", "C0", "B1", "A2", "B2"}));
}

TEST(FairQueue, GuaranteeHoldsForEveryArrivalPoint) {
  // k busy tenants with deep backlogs; tenant X arrives after `skip` pops.
  // X's job must come within k + 1 pops of its arrival.
  for (std::size_t k = 1; k <= 5; ++k) {
    for (std::size_t skip = 0; skip < 3 * k; ++skip) {
      FairQueue<int> q(10'000, 0);
      for (int i = 0; i < 50; ++i) {
        for (std::size_t t = 0; t < k; ++t) q.push({"T" + std::to_string(t), "key"}, 0);
      }
      for (std::size_t i = 0; i < skip; ++i) q.pop();
      q.push({"X", "x"}, 1);
      std::size_t pops = 0;
      while (*q.pop() != 1) ++pops;
      EXPECT_LE(pops, k) << "k=" << k << " skip=" << skip;
    }
  }
}

TEST(FairQueue, KeysOfATenantShareItsTurns) {
  FairQueue<std::string> q(1000, 0);
  for (int i = 0; i < 4; ++i) q.push({"A", "k1"}, "k1-" + std::to_string(i));
  q.push({"A", "k2"}, "k2-0");
  q.push({"B", "b"}, "B0");
  q.push({"B", "b"}, "B1");
  // A's turns alternate k1 and k2; B gets every other pop.
  EXPECT_EQ(drain(q), (std::vector<std::string>{"k1-0", "B0", "k2-0", "B1", "k1-1", "k1-2", "k1-3"}));
}

TEST(FairQueue, TotalAndTenantBounds) {
  FairQueue<int> q(5, 3);
  EXPECT_EQ(q.push({"A", "a"}, 1), Admit::accepted);
  EXPECT_EQ(q.push({"A", "b"}, 2), Admit::accepted);
  EXPECT_EQ(q.push({"A", "a"}, 3), Admit::accepted);
  EXPECT_EQ(q.push({"A", "c"}, 4), Admit::tenant_full);  // the share counts every key of the tenant
  EXPECT_EQ(q.queued("A"), 3u);
  EXPECT_EQ(q.push({"B", "b"}, 5), Admit::accepted);
  EXPECT_EQ(q.push({"C", "c"}, 6), Admit::accepted);
  EXPECT_EQ(q.push({"D", "d"}, 7), Admit::queue_full);
  EXPECT_EQ(q.size(), 5u);
  q.pop();  // A's
  EXPECT_EQ(q.queued("A"), 2u);
  EXPECT_EQ(q.push({"A", "a"}, 8), Admit::accepted);
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.tenants(), 0u);
  EXPECT_EQ(q.push({"A", "a"}, 9), Admit::accepted);
}

TEST(FairQueue, NoTenantLimitMeansOnlyTheTotal) {
  FairQueue<int> q(4, 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(q.push({"A", "a"}, i), Admit::accepted);
  EXPECT_EQ(q.push({"B", "b"}, 9), Admit::queue_full);
}

// Through the real pool: one worker held busy, a backlog from tenant A, then
// one job from B: B runs second, not after A's backlog.
TEST(WorkerPool, ServesTenantsRoundRobin) {
  WorkerPool pool(1, 100, 0);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::string> order;
  ASSERT_EQ(pool.try_submit({"A", "a"},
                            [&](std::size_t) {
                              std::unique_lock lock(mu);
                              cv.wait(lock, [&] { return release; });
                              order.push_back("A-hold");
                            }),
            Admit::accepted);
  // Wait until the worker took the holding job, so the rest queue.
  for (int i = 0; i < 1000 && pool.queued() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (int i = 0; i < 5; ++i) {
    pool.try_submit({"A", "a"}, [&, i](std::size_t) {
      std::lock_guard lock(mu);
      order.push_back("A" + std::to_string(i));
    });
  }
  std::atomic<bool> b_done{false};
  pool.try_submit({"B", "b"}, [&](std::size_t) {
    std::lock_guard lock(mu);
    order.push_back("B");
    b_done = true;
  });
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  for (int i = 0; i < 5000 && pool.queued() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  pool.stop();
  ASSERT_TRUE(b_done);
  ASSERT_GE(order.size(), 3u);
  EXPECT_EQ(order[0], "A-hold");
  EXPECT_EQ(order[1], "A0");  // A was at the front of the rotation
  EXPECT_EQ(order[2], "B");
}

TEST(WorkerPool, StoppedPoolRefuses) {
  WorkerPool pool(1, 10, 0);
  pool.stop();
  EXPECT_EQ(pool.try_submit({"A", "a"}, [](std::size_t) {}), Admit::queue_full);
}
