// Cooperative cancellation for a run. The connection's thread cancels; the
// worker checks, or sleeps on it so a cancel wakes it at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <vector>

namespace synapse::cortex {

class CancelToken {
 public:
  // Sets the flag, wakes sleepers and runs the registered hooks (once each,
  // on the calling thread, outside the lock).
  void cancel() {
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard lock(mu_);
      if (flag_.load(std::memory_order_relaxed)) return;
      flag_.store(true, std::memory_order_release);
      hooks.swap(hooks_);
    }
    cv_.notify_all();
    for (auto& h : hooks) h();
  }
  // How cancellation reaches a provider that is not a sleeping worker (an MCP
  // call): `hook` runs once when the token is cancelled, at once if it
  // already is. It runs on the cancelling thread (an I/O thread): it must
  // only hand the news on (post to the provider's thread), never block.
  void on_cancel(std::function<void()> hook) {
    {
      std::lock_guard lock(mu_);
      if (!flag_.load(std::memory_order_relaxed)) {
        hooks_.push_back(std::move(hook));
        return;
      }
    }
    hook();
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
  std::vector<std::function<void()>> hooks_;
};

// Thrown by work that noticed its cancellation; the run's end was already
// decided on the connection's thread, so nothing more is reported.
struct Cancelled {};

}  // namespace synapse::cortex
