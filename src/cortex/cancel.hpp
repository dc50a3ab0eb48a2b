// Cooperative cancellation for a run. The connection's thread cancels; the
// worker checks, or sleeps on it so a cancel wakes it at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

namespace synapse::cortex {

class CancelToken {
 public:
  void cancel() {
    {
      std::lock_guard lock(mu_);
      flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  bool cancelled() const noexcept { return flag_.load(std::memory_order_acquire); }
  // Sleeps up to `d`; returns true if cancelled (at once, if already).
  bool wait_for(std::chrono::milliseconds d) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, d, [this] { return flag_.load(std::memory_order_acquire); });
  }

 private:
  std::atomic<bool> flag_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
};

// Thrown by work that noticed its cancellation; the run's end was already
// decided on the connection's thread, so nothing more is reported.
struct Cancelled {};

}  // namespace synapse::cortex
