// Token buckets on the monotonic clock. Taking a token never allocates, so
// it sits on the per-message path.
//
// A bucket is split in two: its Rate (how fast it refills, how much it
// holds), which comes from the configuration and is the same for every
// bucket of its kind, and its BucketState (when it is full again), the only
// part each connection or address has to keep. Buckets held by the
// thousand (a session's, the connection limiter's per address) keep only
// the state and are handed the rate with each call; TokenBucket holds both,
// for callers that have nowhere shared to take the rate from.
#pragma once

#include <chrono>
#include <cstdint>

namespace synapse::limits {

using Clock = std::chrono::steady_clock;

struct Take {
  bool ok;
  std::int64_t retry_after_ms;  // when !ok: until one token is back
};

// `per_minute` tokens refill each minute, holding at most `burst`. A zero
// `per_minute` means unlimited; a zero `burst` means `per_minute`. Tokens
// are counted in nanoseconds of refill time (integer arithmetic, no drift).
struct Rate {
  std::int64_t ns_per_token = 0;  // 0: unlimited
  std::int64_t capacity_ns = 0;

  static Rate per_minute(std::int64_t per_minute, std::int64_t burst) noexcept;
  bool unlimited() const noexcept { return ns_per_token == 0; }
};

// One bucket's own state, 8 bytes: the instant it is full again. A new one
// is full. Every call takes the bucket's Rate, which must be the same on
// every call (what the state means depends on it).
class BucketState {
 public:
  Take take(const Rate& rate, Clock::time_point now) noexcept;
  // As take(), but without consuming: would a token be available?
  Take peek(const Rate& rate, Clock::time_point now) const noexcept;
  // Tokens available now, for tests and diagnostics.
  double available(const Rate& rate, Clock::time_point now) const noexcept;

 private:
  // Clock ns when the bucket is full. Zero, long past, is full: a bucket
  // full since any instant before now holds the same tokens.
  std::int64_t full_at_ = 0;
};

// A bucket that carries its own rate (24 bytes).
class TokenBucket {
 public:
  // An unlimited bucket (every take succeeds).
  TokenBucket() noexcept = default;
  // Full at `now`; the rate as Rate::per_minute.
  TokenBucket(std::int64_t per_minute, std::int64_t burst, Clock::time_point now) noexcept;
  // Full, at `rate`.
  explicit TokenBucket(Rate rate) noexcept : rate_(rate) {}

  Take take(Clock::time_point now) noexcept { return state_.take(rate_, now); }
  Take peek(Clock::time_point now) const noexcept { return state_.peek(rate_, now); }
  bool unlimited() const noexcept { return rate_.unlimited(); }
  double available(Clock::time_point now) const noexcept { return state_.available(rate_, now); }

 private:
  Rate rate_;
  BucketState state_;
};

}  // namespace synapse::limits
