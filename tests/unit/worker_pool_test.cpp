// The cortex's worker pool (cortex/worker_pool.*): jobs run on its own
// threads; waiting jobs are served round-robin across tenants and, within a
// tenant, across keys (fair_queue_test.cpp proves the queue alone; here the
// order is the one the threads really run); the bounds refuse instead of
// growing; a cancel reaches a running job; stop() joins every thread and
// drops (destroys) what still waits. Under ASan the suite also proves that
// no job or thread is leaked.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cortex/cancel.hpp"
#include "cortex/worker_pool.hpp"

using namespace synapse::cortex;
using namespace std::chrono_literals;

namespace {

// Holds the jobs that wait on it until opened.
class Gate {
 public:
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Waits until `pred` holds, up to 10 s.
template <class Pred>
bool eventually(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The order in which jobs ran, by name.
struct Order {
  std::mutex mu;
  std::vector<std::string> ran;
  WorkerPool::Job job(std::string name) {
    return [this, name](std::size_t) {
      std::lock_guard lock(mu);
      ran.push_back(name);
    };
  }
  std::vector<std::string> get() {
    std::lock_guard lock(mu);
    return ran;
  }
};

// Occupies the pool's only worker until the gate opens; returns once it runs.
void block_the_worker(WorkerPool& pool, Gate& gate, std::atomic<bool>& running) {
  ASSERT_EQ(pool.try_submit(Lane{"blocker", "k"}, [&](std::size_t) {
              running = true;
              gate.wait();
            }),
            Admit::accepted);
  ASSERT_TRUE(eventually([&] { return running.load(); }));
}

}  // namespace

TEST(WorkerPool, JobsRunOnThePoolsOwnThreadsWithTheirWorkerIndex) {
  WorkerPool pool(3, 100);
  EXPECT_EQ(pool.size(), 3u);
  std::mutex mu;
  std::set<std::thread::id> threads;
  std::set<std::size_t> indexes;
  std::atomic<int> done{0};
  for (int i = 0; i < 60; ++i) {
    ASSERT_EQ(pool.try_submit(Lane{"t", "k"},
                              [&](std::size_t worker) {
                                {
                                  std::lock_guard lock(mu);
                                  threads.insert(std::this_thread::get_id());
                                  indexes.insert(worker);
                                }
                                ++done;
                              }),
              Admit::accepted);
  }
  ASSERT_TRUE(eventually([&] { return done.load() == 60; }));
  std::lock_guard lock(mu);
  EXPECT_EQ(threads.count(std::this_thread::get_id()), 0u) << "never on the submitting (I/O) thread";
  EXPECT_LE(threads.size(), 3u);
  for (auto i : indexes) EXPECT_LT(i, 3u);
}

TEST(WorkerPool, WaitingJobsAreServedRoundRobinAcrossTenants) {
  WorkerPool pool(1, 100);
  Gate gate;
  std::atomic<bool> running{false};
  block_the_worker(pool, gate, running);
  Order order;
  // Tenant a queued a burst before b and c arrived.
  for (const char* n : {"a1", "a2", "a3"}) ASSERT_EQ(pool.try_submit(Lane{"a", "k"}, order.job(n)), Admit::accepted);
  ASSERT_EQ(pool.try_submit(Lane{"b", "k"}, order.job("b1")), Admit::accepted);
  ASSERT_EQ(pool.try_submit(Lane{"c", "k"}, order.job("c1")), Admit::accepted);
  EXPECT_EQ(pool.queued(), 5u);
  gate.open();
  ASSERT_TRUE(eventually([&] { return order.get().size() == 5; }));
  EXPECT_EQ(order.get(), (std::vector<std::string>{"a1", "b1", "c1", "a2", "a3"}));
  EXPECT_EQ(pool.queued(), 0u);
}

TEST(WorkerPool, WithinATenantKeysTakeTurns) {
  WorkerPool pool(1, 100);
  Gate gate;
  std::atomic<bool> running{false};
  block_the_worker(pool, gate, running);
  Order order;
  for (const char* n : {"k1-1", "k1-2", "k1-3"}) ASSERT_EQ(pool.try_submit(Lane{"a", "k1"}, order.job(n)), Admit::accepted);
  ASSERT_EQ(pool.try_submit(Lane{"a", "k2"}, order.job("k2-1")), Admit::accepted);
  gate.open();
  ASSERT_TRUE(eventually([&] { return order.get().size() == 4; }));
  EXPECT_EQ(order.get(), (std::vector<std::string>{"k1-1", "k2-1", "k1-2", "k1-3"}));
}

TEST(WorkerPool, TheQueueAndTenantBoundsRefuseInsteadOfGrowing) {
  WorkerPool pool(1, /*queue_limit=*/3, /*tenant_limit=*/2);
  EXPECT_EQ(pool.tenant_limit(), 2u);
  Gate gate;
  std::atomic<bool> running{false};
  block_the_worker(pool, gate, running);  // running: not queued
  Order order;
  EXPECT_EQ(pool.try_submit(Lane{"a", "k"}, order.job("a1")), Admit::accepted);
  EXPECT_EQ(pool.try_submit(Lane{"a", "k"}, order.job("a2")), Admit::accepted);
  EXPECT_EQ(pool.try_submit(Lane{"a", "k"}, order.job("a3")), Admit::tenant_full);
  EXPECT_EQ(pool.try_submit(Lane{"b", "k"}, order.job("b1")), Admit::accepted);
  EXPECT_EQ(pool.try_submit(Lane{"c", "k"}, order.job("c1")), Admit::queue_full);
  EXPECT_EQ(pool.queued(), 3u);
  gate.open();
  ASSERT_TRUE(eventually([&] { return order.get().size() == 3; }));
  EXPECT_EQ(order.get(), (std::vector<std::string>{"a1", "b1", "a2"})) << "refused jobs never run";
  // Room again once the queue drained.
  EXPECT_EQ(pool.try_submit(Lane{"c", "k"}, order.job("c1")), Admit::accepted);
  ASSERT_TRUE(eventually([&] { return order.get().size() == 4; }));
}

TEST(WorkerPool, ACancelReachesARunningJobAtOnce) {
  WorkerPool pool(2, 10);
  auto token = std::make_shared<CancelToken>();
  std::atomic<bool> started{false};
  std::atomic<bool> saw_cancel{false};
  std::atomic<bool> finished{false};
  ASSERT_EQ(pool.try_submit(Lane{"t", "k"},
                            [&, token](std::size_t) {
                              started = true;
                              saw_cancel = token->wait_for(30s);  // a run sleeping between steps
                              finished = true;
                            }),
            Admit::accepted);
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  const auto t0 = std::chrono::steady_clock::now();
  token->cancel();  // from this (the connection's) thread
  ASSERT_TRUE(eventually([&] { return finished.load(); }));
  EXPECT_TRUE(saw_cancel.load());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "woken by the cancel, not by its 30 s sleep";
  // Cancel hooks run once, on the cancelling thread, even when added late.
  int hooks = 0;
  token->on_cancel([&] { ++hooks; });
  token->cancel();
  EXPECT_EQ(hooks, 1);
}

TEST(WorkerPool, AJobThatThrowsDoesNotTakeItsWorkerDown) {
  WorkerPool pool(1, 10);
  ASSERT_EQ(pool.try_submit(Lane{"t", "k"}, [](std::size_t) { throw std::runtime_error("a bug in a job"); }),
            Admit::accepted);
  ASSERT_EQ(pool.try_submit(Lane{"t", "k"}, [](std::size_t) { throw Cancelled{}; }), Admit::accepted);
  std::atomic<bool> ran{false};
  ASSERT_EQ(pool.try_submit(Lane{"t", "k"}, [&](std::size_t) { ran = true; }), Admit::accepted);
  EXPECT_TRUE(eventually([&] { return ran.load(); }));
}

TEST(WorkerPool, StopLetsTheRunningJobFinishDropsTheQueuedOnesAndJoins) {
  auto pool = std::make_unique<WorkerPool>(1, 10);
  Gate gate;
  std::atomic<bool> running{false};
  block_the_worker(*pool, gate, running);
  // Each queued job holds a reference: once dropped, the job (and what it
  // captured) must be destroyed, not leaked.
  auto held = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(pool->try_submit(Lane{"t", "k"}, [held, &ran](std::size_t) { ++ran; }), Admit::accepted);
  }
  EXPECT_EQ(held.use_count(), 4);
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    pool->stop();
    stopped = true;
  });
  ASSERT_TRUE(eventually([&] { return pool->queued() == 0; })) << "stop() drops what waits";
  EXPECT_EQ(held.use_count(), 1) << "the dropped jobs were destroyed";
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(stopped.load()) << "stop() waits for the running job";
  gate.open();
  stopper.join();
  EXPECT_TRUE(stopped.load());
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(pool->size(), 0u) << "every thread joined";
  EXPECT_EQ(pool->try_submit(Lane{"t", "k"}, [&](std::size_t) { ++ran; }), Admit::queue_full);
  pool->stop();  // twice: nothing to do
  pool.reset();  // and the destructor after it
  EXPECT_EQ(ran.load(), 0);
}

TEST(WorkerPool, DestroyingAnIdlePoolJoinsItsThreads) {
  for (int i = 0; i < 20; ++i) {
    WorkerPool pool(4, 10);
    std::atomic<int> n{0};
    for (int j = 0; j < 8; ++j) ASSERT_EQ(pool.try_submit(Lane{"t", "k"}, [&](std::size_t) { ++n; }), Admit::accepted);
    ASSERT_TRUE(eventually([&] { return n.load() == 8; }));
  }
}
