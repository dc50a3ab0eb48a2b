// A fixed-bucket histogram for hot paths: observe() is one relaxed
// fetch_add per bucket hit plus two for count and sum, no lock, no
// allocation. Buckets are upper bounds in microseconds; rendering turns them
// into Prometheus cumulative `le` buckets in seconds.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace synapse::metrics {

// 50 us .. 60 s: spans an in-process fan-out (tens of microseconds) and a
// long cortex run (seconds) with one table, so every histogram is alike.
inline constexpr std::array<std::int64_t, 18> latency_bounds_us = {
    50,      100,     250,     500,       1'000,     2'500,     5'000,     10'000,    25'000,
    50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000, 5'000'000, 10'000'000, 60'000'000};

class Histogram {
 public:
  static constexpr std::size_t buckets = latency_bounds_us.size() + 1;  // last: +Inf

  void observe_us(std::int64_t us) noexcept {
    if (us < 0) us = 0;
    std::size_t i = 0;
    while (i < latency_bounds_us.size() && us > latency_bounds_us[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<std::uint64_t>(us), std::memory_order_relaxed);
  }

  std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }
  std::uint64_t sum_us() const noexcept { return sum_us_.load(std::memory_order_relaxed); }
  std::uint64_t bucket(std::size_t i) const noexcept { return counts_[i].load(std::memory_order_relaxed); }

  // The q-quantile (0..1) in microseconds, estimated as the upper bound of
  // the bucket that holds it (the +Inf bucket reports the last bound): what
  // the dashboard shows as p50/p99. 0 when empty.
  std::int64_t quantile_us(double q) const noexcept;

  // Appends HELP, TYPE and the _bucket/_sum/_count series of `name`.
  void render(std::string& out, std::string_view name, std::string_view help) const;

 private:
  std::array<std::atomic<std::uint64_t>, buckets> counts_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_us_{0};
};

}  // namespace synapse::metrics
