// Token buckets on the monotonic clock. A bucket is three numbers; taking a
// token never allocates, so it sits on the per-message path.
#pragma once

#include <chrono>
#include <cstdint>

namespace synapse::limits {

using Clock = std::chrono::steady_clock;

class TokenBucket {
 public:
  // An unlimited bucket (every take succeeds).
  TokenBucket() noexcept = default;
  // `per_minute` tokens refill each minute, holding at most `burst`. A zero
  // `per_minute` means unlimited; a zero `burst` means `per_minute`.
  TokenBucket(std::int64_t per_minute, std::int64_t burst, Clock::time_point now) noexcept;

  struct Take {
    bool ok;
    std::int64_t retry_after_ms;  // when !ok: until one token is back
  };
  Take take(Clock::time_point now) noexcept;
  // As take(), but without consuming: would a token be available?
  Take peek(Clock::time_point now) const noexcept;
  bool unlimited() const noexcept { return ns_per_token_ == 0; }
  // Tokens available now, for tests and diagnostics.
  double available(Clock::time_point now) const noexcept;

 private:
  // Tokens are counted in nanoseconds of refill time: `debt_` is the instant
  // at which the bucket is full again. Integer arithmetic, no drift.
  std::int64_t ns_per_token_ = 0;
  std::int64_t capacity_ns_ = 0;
  std::int64_t full_at_ = 0;  // Clock ns when the bucket is full
};

// The two buckets of one connection (protocol section 7).
struct ConnectionRates {
  TokenBucket messages;
  TokenBucket queries;
};

}  // namespace synapse::limits
