// A value handed from one thread to another that blocks for it, with a
// deadline: a completion (a Redis link's reply, a backend's answer) sets it
// once; the caller that may block waits for it. set() after the first, or
// after the waiter gave up, is ignored, so a late completion is harmless as
// long as both sides share the Handoff (hold it by shared_ptr).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

namespace synapse::core {

template <class T>
class Handoff {
 public:
  void set(T v) {
    {
      std::lock_guard lock(mu_);
      if (value_) return;
      value_ = std::move(v);
    }
    cv_.notify_one();
  }
  // The value, or nullopt when none came within `timeout`. One waiter.
  std::optional<T> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [this] { return value_.has_value(); });
    return std::move(value_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<T> value_;
};

}  // namespace synapse::core
