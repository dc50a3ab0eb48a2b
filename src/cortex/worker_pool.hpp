// A fixed set of threads running jobs from a bounded queue. Runs never
// happen on the I/O threads; a full queue refuses new work instead of
// growing without bound.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace synapse::cortex {

class WorkerPool {
 public:
  using Job = std::function<void(std::size_t worker)>;

  WorkerPool(std::size_t threads, std::size_t queue_limit);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // False when the queue is full or the pool stopped.
  bool try_submit(Job job);
  // Finishes queued jobs' cancellation points and joins the threads. Jobs
  // still queued are dropped (their runs were cancelled by their channels).
  void stop();
  std::size_t size() const noexcept { return threads_.size(); }
  std::size_t queued();

 private:
  void loop(std::size_t index);

  std::size_t limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace synapse::cortex
