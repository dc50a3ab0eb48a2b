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
