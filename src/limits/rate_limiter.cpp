#include "limits/rate_limiter.hpp"

#include <algorithm>

namespace synapse::limits {
namespace {
std::int64_t ns(Clock::time_point t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
constexpr std::int64_t minute_ns = 60'000'000'000;
}  // namespace

TokenBucket::TokenBucket(std::int64_t per_minute, std::int64_t burst, Clock::time_point now) noexcept {
  if (per_minute <= 0) return;  // unlimited
  if (burst <= 0) burst = per_minute;
  ns_per_token_ = std::max<std::int64_t>(1, minute_ns / per_minute);
  capacity_ns_ = ns_per_token_ * burst;
  full_at_ = ns(now);  // starts full
}

// The bucket holds (capacity - (full_at - now)) / ns_per_token tokens. Taking
// one moves full_at forward by one token's refill time.
TokenBucket::Take TokenBucket::peek(Clock::time_point now) const noexcept {
  if (unlimited()) return {true, 0};
  const std::int64_t t = ns(now);
  const std::int64_t full_at = std::max(full_at_, t);
  const std::int64_t after = full_at + ns_per_token_;
  const std::int64_t over = after - t - capacity_ns_;
  if (over <= 0) return {true, 0};
  return {false, (over + 999'999) / 1'000'000};
}

TokenBucket::Take TokenBucket::take(Clock::time_point now) noexcept {
  const Take r = peek(now);
  if (r.ok && !unlimited()) full_at_ = std::max(full_at_, ns(now)) + ns_per_token_;
  return r;
}

double TokenBucket::available(Clock::time_point now) const noexcept {
  if (unlimited()) return 1e18;
  const std::int64_t t = ns(now);
  const std::int64_t owed = std::max<std::int64_t>(0, full_at_ - t);
  return static_cast<double>(capacity_ns_ - owed) / static_cast<double>(ns_per_token_);
}

}  // namespace synapse::limits
