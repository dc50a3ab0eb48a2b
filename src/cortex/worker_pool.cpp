#include "cortex/worker_pool.hpp"

#include <spdlog/spdlog.h>

namespace synapse::cortex {

WorkerPool::WorkerPool(std::size_t threads, std::size_t queue_limit, std::size_t tenant_limit)
    : tenant_limit_(tenant_limit), jobs_(queue_limit, tenant_limit) {
  threads_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this, i] { loop(i); });
}

WorkerPool::~WorkerPool() { stop(); }

Admit WorkerPool::try_submit(const Lane& lane, Job job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Admit::queue_full;
    const Admit a = jobs_.push(lane, std::move(job));
    if (a != Admit::accepted) return a;
  }
  cv_.notify_one();
  return Admit::accepted;
}

std::size_t WorkerPool::queued() {
  std::lock_guard lock(mu_);
  return jobs_.size();
}

void WorkerPool::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    jobs_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void WorkerPool::loop(std::size_t index) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      // The order is decided when a worker is free, not at submission: the
      // tenant at the front of the rotation gets this worker.
      job = std::move(*jobs_.pop());
    }
    try {
      job(index);
    } catch (const std::exception& e) {
      // Jobs report their own failures; reaching here is a bug, not a crash.
      spdlog::error("worker {}: job escaped with an exception: {}", index, e.what());
    } catch (...) {
      spdlog::error("worker {}: job escaped with an unknown exception", index);
    }
  }
}

}  // namespace synapse::cortex
