// metrics::Histogram: which bucket an observation lands in (bounds are
// inclusive upper limits, past the last one is +Inf), the quantile estimate
// the dashboard shows, and the Prometheus rendering.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "metrics/histogram.hpp"

using synapse::metrics::Histogram;
using synapse::metrics::latency_bounds_us;

namespace {
constexpr std::size_t kInf = latency_bounds_us.size();  // index of the +Inf bucket

std::uint64_t total(const Histogram& h) {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < Histogram::buckets; ++i) n += h.bucket(i);
  return n;
}

// "name_bucket{le=\"X\"} N" -> {X: N}, plus "_sum"/"_count" under those names.
std::map<std::string, std::string> samples(const std::string& text, const std::string& name) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto sp = line.rfind(' ');
    const std::string series = line.substr(0, sp);
    const std::string value = line.substr(sp + 1);
    const std::string bucket = name + "_bucket{le=\"";
    if (series.rfind(bucket, 0) == 0) {
      out[series.substr(bucket.size(), series.size() - bucket.size() - 2)] = value;
    } else {
      out[series] = value;
    }
  }
  return out;
}
}  // namespace

TEST(Histogram, BoundsAreInclusiveUpperLimits) {
  Histogram h;
  h.observe_us(0);
  h.observe_us(50);  // == first bound: still the first bucket
  h.observe_us(51);  // just past it: the second
  h.observe_us(100);
  h.observe_us(101);
  EXPECT_EQ(h.bucket(0), 2u);
  EXPECT_EQ(h.bucket(1), 2u);
  EXPECT_EQ(h.bucket(2), 1u);
  EXPECT_EQ(h.count(), 5u);
  EXPECT_EQ(h.sum_us(), 0u + 50 + 51 + 100 + 101);
}

TEST(Histogram, EveryBoundAndOnePastItLandWhereExpected) {
  Histogram h;
  for (std::size_t i = 0; i < latency_bounds_us.size(); ++i) {
    h.observe_us(latency_bounds_us[i]);
    h.observe_us(latency_bounds_us[i] + 1);
  }
  // bucket 0 holds 50; bucket i holds bound[i-1]+1 and bound[i]; +Inf holds the last bound + 1
  EXPECT_EQ(h.bucket(0), 1u);
  for (std::size_t i = 1; i < latency_bounds_us.size(); ++i) EXPECT_EQ(h.bucket(i), 2u) << "bucket " << i;
  EXPECT_EQ(h.bucket(kInf), 1u);
  EXPECT_EQ(h.count(), 2 * latency_bounds_us.size());
  EXPECT_EQ(total(h), h.count());
}

TEST(Histogram, NegativeDurationsCountAsZeroAndHugeOnesAsInf) {
  Histogram h;
  h.observe_us(-5);  // a clock step backwards must not wrap the sum
  h.observe_us(INT64_C(1) << 50);
  EXPECT_EQ(h.bucket(0), 1u);
  EXPECT_EQ(h.bucket(kInf), 1u);
  EXPECT_EQ(h.sum_us(), std::uint64_t{1} << 50);
}

TEST(Histogram, QuantileOfAnEmptyHistogramIsZero) {
  Histogram h;
  EXPECT_EQ(h.quantile_us(0.5), 0);
  EXPECT_EQ(h.quantile_us(0.99), 0);
}

TEST(Histogram, QuantileIsTheUpperBoundOfTheBucketHoldingTheRank) {
  Histogram h;
  for (int i = 0; i < 90; ++i) h.observe_us(40);    // bucket le=50
  for (int i = 0; i < 10; ++i) h.observe_us(3000);  // bucket le=5000
  EXPECT_EQ(h.quantile_us(0.0), 50);
  EXPECT_EQ(h.quantile_us(0.5), 50);
  EXPECT_EQ(h.quantile_us(0.9), 50);    // rank 90 of 100: still the fast bucket
  EXPECT_EQ(h.quantile_us(0.91), 5000);  // rank 91: the slow one
  EXPECT_EQ(h.quantile_us(0.99), 5000);
  EXPECT_EQ(h.quantile_us(1.0), 5000);
}

TEST(Histogram, QuantileNeverUnderestimatesTheTrueValue) {
  Histogram h;
  std::vector<std::int64_t> values;
  for (std::int64_t v = 1; v <= 1000; ++v) values.push_back(v * 37);  // 37 us .. 37 ms
  for (auto v : values) h.observe_us(v);
  for (double q : {0.1, 0.5, 0.9, 0.99}) {
    const std::int64_t exact = values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1))];
    const std::int64_t est = h.quantile_us(q);
    EXPECT_GE(est, exact) << "q=" << q;
    // ... and is the first bound at or above it
    std::size_t i = 0;
    while (latency_bounds_us[i] < exact) ++i;
    EXPECT_EQ(est, latency_bounds_us[i]) << "q=" << q;
  }
}

TEST(Histogram, QuantileInTheInfBucketReportsTheLastBound) {
  Histogram h;
  h.observe_us(latency_bounds_us.back() * 10);
  EXPECT_EQ(h.quantile_us(0.5), latency_bounds_us.back());
  EXPECT_EQ(h.quantile_us(1.0), latency_bounds_us.back());
}

TEST(Histogram, RenderIsCumulativeInSecondsWithInfSumAndCount) {
  Histogram h;
  h.observe_us(40);
  h.observe_us(700);      // le=0.001
  h.observe_us(700);
  h.observe_us(2'000'000);  // le=2.5
  h.observe_us(90'000'000);  // +Inf
  std::string text;
  h.render(text, "synapse_test_seconds", "A test histogram");
  EXPECT_EQ(text.rfind("# HELP synapse_test_seconds A test histogram\n# TYPE synapse_test_seconds histogram\n", 0), 0u)
      << text;
  const auto s = samples(text, "synapse_test_seconds");
  EXPECT_EQ(s.at("5e-05"), "1");
  EXPECT_EQ(s.at("0.0005"), "1");
  EXPECT_EQ(s.at("0.001"), "3");
  EXPECT_EQ(s.at("1"), "3");
  EXPECT_EQ(s.at("2.5"), "4");
  EXPECT_EQ(s.at("60"), "4");
  EXPECT_EQ(s.at("+Inf"), "5");
  EXPECT_EQ(s.at("synapse_test_seconds_count"), "5");
  EXPECT_DOUBLE_EQ(std::stod(s.at("synapse_test_seconds_sum")), (40 + 700 + 700 + 2'000'000 + 90'000'000) / 1e6);
  // one series per bound, +Inf, sum and count; in order, cumulative counts never fall
  EXPECT_EQ(s.size(), latency_bounds_us.size() + 3);
  std::istringstream in(text);
  std::string line;
  long prev = -1;
  std::size_t bucket_lines = 0;
  while (std::getline(in, line)) {
    if (line.rfind("synapse_test_seconds_bucket", 0) != 0) continue;
    const long n = std::stol(line.substr(line.rfind(' ') + 1));
    EXPECT_GE(n, prev) << line;
    prev = n;
    ++bucket_lines;
  }
  EXPECT_EQ(bucket_lines, Histogram::buckets);
}

TEST(Histogram, ConcurrentObservationsAreAllCounted) {
  Histogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 20000; ++i) h.observe_us((i % 7) * 1000 + t);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(h.count(), 80000u);
  EXPECT_EQ(total(h), 80000u);
}
