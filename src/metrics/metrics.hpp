// Process-wide counters, rendered in the Prometheus text format.
//
// Every field is a relaxed atomic: writers on any thread, readers only for
// /metrics. One instance lives in main and is handed down by reference.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "metrics/histogram.hpp"
#include "metrics/run_log.hpp"

namespace synapse::metrics {

using Counter = std::atomic<std::uint64_t>;
using Gauge = std::atomic<std::int64_t>;

// Why a connection was refused before the upgrade.
enum class Refusal : std::size_t {
  unauthorized,
  token_expired,
  forbidden_origin,
  unsupported_version,
  too_many_connections,
  connection_rate_exceeded,
  bad_request,
  handshake_timeout,
  draining,
  store_unavailable,
  overloaded,  // out of descriptors (the accept gate's reserve)
  count_
};
std::string_view refusal_name(Refusal r) noexcept;

// Why a client message was refused by a rate limit.
enum class RateBucket : std::size_t { messages, queries, count_ };

// How a cortex run ended.
enum class RunEnd : std::size_t { result, error, interrupted, timeout, cancelled, count_ };
std::string_view run_end_name(RunEnd e) noexcept;

// Close codes counted individually; anything else lands in "other".
inline constexpr std::array<std::uint16_t, 13> tracked_close_codes = {
    1000, 1001, 1002, 1005, 1006, 1007, 1008, 1009, 1011, 4000, 4001, 4003, 4008};

struct Metrics {
  Gauge connections_open{0};
  Counter connections_total{0};
  std::array<Counter, static_cast<std::size_t>(Refusal::count_)> refusals{};
  std::array<Counter, tracked_close_codes.size() + 1> closes{};

  Counter frames_in{0};
  Counter bytes_in{0};
  Counter frames_out{0};
  Counter bytes_out{0};
  Counter write_syscalls{0};
  Counter malformed_frames{0};
  std::array<Counter, static_cast<std::size_t>(RateBucket::count_)> rate_limited{};

  Counter http_requests{0};

  // pub/sub
  Counter publishes{0};
  Counter deliveries{0};
  Gauge topics{0};
  Counter presence_diffs{0};

  // cortex
  Gauge runs_active{0};
  std::array<Counter, static_cast<std::size_t>(RunEnd::count_)> runs_ended{};
  Counter channel_crashes{0};
  RunLog runs;  // running and recent runs, for the admin API

  // Latency histograms (microseconds in, seconds out):
  Histogram fanout_latency;  // publish accepted -> handed to a subscriber's connection
  Histogram run_duration;    // cortex run started -> its terminal event
  Histogram join_latency;    // phx_join received -> its reply queued

  void count_close(std::uint16_t code) noexcept;
  void count_refusal(Refusal r) noexcept {
    refusals[static_cast<std::size_t>(r)].fetch_add(1, std::memory_order_relaxed);
  }
};

// Extra gauges sampled at render time (limiter counts, queue sizes...).
struct Sample {
  std::string name;
  std::string help;
  double value;
};

std::string render_prometheus(const Metrics& m, const std::vector<Sample>& extra);

// The process as the kernel sees it (/proc/self), for /metrics and the
// dashboard. Fields stay 0 where /proc cannot be read.
struct ProcessStats {
  double cpu_seconds = 0;  // user + system
  std::int64_t rss_bytes = 0;
  std::int64_t virtual_bytes = 0;
  std::int64_t open_fds = 0;
  std::int64_t max_fds = 0;
  double start_time_seconds = 0;  // unix time
  std::int64_t threads = 0;
};
ProcessStats read_process_stats();

inline void bump(Counter& c, std::uint64_t n = 1) noexcept { c.fetch_add(n, std::memory_order_relaxed); }

}  // namespace synapse::metrics
