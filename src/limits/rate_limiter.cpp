#include "limits/rate_limiter.hpp"

#include <algorithm>

namespace synapse::limits {
namespace {
std::int64_t ns(Clock::time_point t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
constexpr std::int64_t minute_ns = 60'000'000'000;
}  // namespace

Rate Rate::per_minute(std::int64_t per_minute, std::int64_t burst) noexcept {
  Rate r;
  if (per_minute <= 0) return r;  // unlimited
  if (burst <= 0) burst = per_minute;
  r.ns_per_token = std::max<std::int64_t>(1, minute_ns / per_minute);
  r.capacity_ns = r.ns_per_token * burst;
  return r;
}

// The bucket holds (capacity - (full_at - now)) / ns_per_token tokens. Taking
// one moves full_at forward by one token's refill time.
Take BucketState::peek(const Rate& rate, Clock::time_point now) const noexcept {
  if (rate.unlimited()) return {true, 0};
  const std::int64_t t = ns(now);
  const std::int64_t full_at = std::max(full_at_, t);
  const std::int64_t after = full_at + rate.ns_per_token;
  const std::int64_t over = after - t - rate.capacity_ns;
  if (over <= 0) return {true, 0};
  return {false, (over + 999'999) / 1'000'000};
}

Take BucketState::take(const Rate& rate, Clock::time_point now) noexcept {
  const Take r = peek(rate, now);
  if (r.ok && !rate.unlimited()) full_at_ = std::max(full_at_, ns(now)) + rate.ns_per_token;
  return r;
}

double BucketState::available(const Rate& rate, Clock::time_point now) const noexcept {
  if (rate.unlimited()) return 1e18;
  const std::int64_t owed = std::max<std::int64_t>(0, full_at_ - ns(now));
  return static_cast<double>(rate.capacity_ns - owed) / static_cast<double>(rate.ns_per_token);
}

TokenBucket::TokenBucket(std::int64_t per_minute, std::int64_t burst, Clock::time_point now) noexcept
    : rate_(Rate::per_minute(per_minute, burst)) {
  // Full from `now` on, as from any earlier instant: the state starts full.
  (void)now;
}

}  // namespace synapse::limits
