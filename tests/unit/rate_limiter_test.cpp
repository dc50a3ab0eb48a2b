// Token buckets: burst, refill, honest retry_after, unlimited.
#include <gtest/gtest.h>

#include "limits/rate_limiter.hpp"

using namespace synapse::limits;
using namespace std::chrono_literals;

TEST(TokenBucket, BurstThenRefillAtRate) {
  const auto t0 = Clock::time_point{} + 1000s;
  TokenBucket b(60, 20, t0);  // 1 per second, burst 20
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(b.take(t0).ok) << i;
  auto r = b.take(t0);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.retry_after_ms, 1000);
  // Half a second later: still 500 ms to wait.
  r = b.take(t0 + 500ms);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.retry_after_ms, 500);
  EXPECT_TRUE(b.take(t0 + 1000ms).ok);
  EXPECT_FALSE(b.take(t0 + 1000ms).ok);
}

TEST(TokenBucket, RetryAfterIsHonest) {
  const auto t0 = Clock::time_point{} + 1000s;
  TokenBucket b(10, 10, t0);  // one every 6 s
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(b.take(t0).ok);
  const auto r = b.take(t0);
  ASSERT_FALSE(r.ok);
  const auto at = t0 + std::chrono::milliseconds(r.retry_after_ms);
  EXPECT_FALSE(b.take(at - 1ms).ok);
  EXPECT_TRUE(b.take(at).ok);
}

TEST(TokenBucket, FullAfterLongIdleButNoMore) {
  const auto t0 = Clock::time_point{} + 1000s;
  TokenBucket b(60, 5, t0);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b.take(t0).ok);
  const auto later = t0 + 1h;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(b.take(later).ok);
  EXPECT_FALSE(b.take(later).ok);
}

TEST(TokenBucket, ZeroMeansUnlimited) {
  const auto t0 = Clock::time_point{} + 1000s;
  TokenBucket b(0, 0, t0);
  EXPECT_TRUE(b.unlimited());
  for (int i = 0; i < 100000; ++i) ASSERT_TRUE(b.take(t0).ok);
  TokenBucket d;
  EXPECT_TRUE(d.take(t0).ok);
}

TEST(TokenBucket, PeekDoesNotConsume) {
  const auto t0 = Clock::time_point{} + 1000s;
  TokenBucket b(60, 1, t0);
  EXPECT_TRUE(b.peek(t0).ok);
  EXPECT_TRUE(b.peek(t0).ok);
  EXPECT_TRUE(b.take(t0).ok);
  EXPECT_FALSE(b.peek(t0).ok);
}

// The state-only bucket: many states spend tokens at one shared Rate, each
// on its own, exactly as a TokenBucket with that rate of its own does.
TEST(BucketState, StatesShareOneRateAndKeepTheirOwnTokens) {
  const auto t0 = Clock::time_point{} + 1000s;
  const Rate rate = Rate::per_minute(60, 3);  // 1 per second, burst 3
  EXPECT_EQ(rate.ns_per_token, 1'000'000'000);
  EXPECT_EQ(rate.capacity_ns, 3'000'000'000);
  EXPECT_EQ(sizeof(BucketState), 8u);
  BucketState a, b;
  TokenBucket reference(60, 3, t0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(a.take(rate, t0).ok) << i;
    EXPECT_TRUE(reference.take(t0).ok) << i;
  }
  EXPECT_FALSE(a.take(rate, t0).ok);
  EXPECT_FALSE(reference.take(t0).ok);
  EXPECT_DOUBLE_EQ(b.available(rate, t0), 3.0) << "a new state is full";
  EXPECT_TRUE(b.take(rate, t0).ok) << "the other state is untouched";
  // The same answers as the self-contained bucket along a sequence of takes.
  for (auto t = t0; t < t0 + 10s; t += 250ms) {
    const Take x = a.take(rate, t);
    const Take y = reference.take(t);
    EXPECT_EQ(x.ok, y.ok);
    EXPECT_EQ(x.retry_after_ms, y.retry_after_ms);
    EXPECT_DOUBLE_EQ(a.available(rate, t), reference.available(t));
  }
  EXPECT_EQ(a.peek(rate, t0 + 10s).ok, reference.peek(t0 + 10s).ok);
  // An unlimited rate never refuses and leaves the state alone.
  const Rate none = Rate::per_minute(0, 5);
  EXPECT_TRUE(none.unlimited());
  BucketState c;
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(c.take(none, t0).ok);
  EXPECT_DOUBLE_EQ(c.available(rate, t0), 3.0);
  // A zero burst is the rate itself.
  EXPECT_EQ(Rate::per_minute(30, 0).capacity_ns, Rate::per_minute(30, 30).capacity_ns);
}
