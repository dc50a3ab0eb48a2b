// A fixed set of threads running jobs from a bounded queue. Runs never
// happen on the I/O threads; a full queue refuses new work instead of
// growing without bound. Waiting jobs are served fairly across tenants and,
// within a tenant, across API keys (cortex/fair_queue.hpp states the rule).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cortex/fair_queue.hpp"

namespace synapse::cortex {

class WorkerPool {
 public:
  using Job = std::function<void(std::size_t worker)>;

  // `queue_limit` jobs may wait in all, `tenant_limit` per tenant (0: only
  // the total bounds a tenant).
  WorkerPool(std::size_t threads, std::size_t queue_limit, std::size_t tenant_limit = 0);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `job` for `lane`. Never blocks on a running job (only on the
  // queue's mutex, held for a few pointer moves), so I/O threads may call it.
  // A stopped pool answers queue_full.
  Admit try_submit(const Lane& lane, Job job);
  // Finishes queued jobs' cancellation points and joins the threads. Jobs
  // still queued are dropped (their runs were cancelled by their channels).
  void stop();
  std::size_t size() const noexcept { return threads_.size(); }
  std::size_t queued();
  std::size_t tenant_limit() const noexcept { return tenant_limit_; }

 private:
  void loop(std::size_t index);

  std::size_t tenant_limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  FairQueue<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace synapse::cortex
