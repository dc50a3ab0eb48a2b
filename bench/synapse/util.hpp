// Small tools shared by the scenarios: clock, random numbers, a latency
// histogram, per-subscriber sequence tracking, /proc readers, CPU accounting,
// a JSON builder and a text table.
#pragma once

#include <time.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

inline std::uint64_t now_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

constexpr std::uint64_t ms_ns(double ms) { return static_cast<std::uint64_t>(ms * 1e6); }
inline double ns_ms(std::uint64_t ns) { return static_cast<double>(ns) / 1e6; }
inline double ns_s(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

// xorshift64*: masks, keys and synthetic text. Not for anything secret.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0x9E3779B97F4A7C15ull) noexcept : s_(seed ? seed : 1) {}
  std::uint64_t next() noexcept {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 2685821657736338717ull;
  }
  std::uint32_t below(std::uint32_t n) noexcept { return static_cast<std::uint32_t>(next() % n); }

 private:
  std::uint64_t s_;
};

// Log-linear histogram of nanosecond values: exact below 128 ns, then 64
// sub-buckets per power of two (worst relative error under 1 %). Constant
// memory however many samples.
class Histogram {
 public:
  Histogram();
  void add(std::uint64_t v) noexcept;
  void merge(const Histogram& o) noexcept;
  std::uint64_t count() const noexcept { return n_; }
  std::uint64_t min() const noexcept { return n_ ? min_ : 0; }
  std::uint64_t max() const noexcept { return max_; }
  double mean() const noexcept { return n_ ? sum_ / static_cast<double>(n_) : 0.0; }
  // The value at quantile q (0..1): the midpoint of its bucket, within [min, max].
  std::uint64_t quantile(double q) const noexcept;

 private:
  static std::size_t index(std::uint64_t v) noexcept;
  static std::pair<std::uint64_t, std::uint64_t> bounds(std::size_t i) noexcept;
  std::vector<std::uint64_t> counts_;
  std::uint64_t n_ = 0, min_ = ~0ull, max_ = 0;
  double sum_ = 0;
};

// What one subscriber saw of a numbered stream 0..expected-1.
class SeqTracker {
 public:
  void reset(std::uint32_t expected);
  // Returns true when this delivery completed the stream.
  bool on(std::int64_t seq, std::int64_t offset) noexcept;
  std::uint32_t expected() const noexcept { return expected_; }
  std::uint64_t unique() const noexcept { return unique_; }
  std::uint64_t duplicates() const noexcept { return dup_; }
  std::uint64_t reordered() const noexcept { return reordered_; }
  std::uint64_t out_of_range() const noexcept { return out_of_range_; }
  bool complete() const noexcept { return unique_ == expected_; }

 private:
  std::vector<std::uint64_t> seen_;
  std::uint32_t expected_ = 0;
  std::uint64_t unique_ = 0, dup_ = 0, reordered_ = 0, out_of_range_ = 0;
  std::int64_t last_seq_ = -1, last_offset_ = -1;
};

// Another process, read from /proc.
struct ProcSample {
  bool ok = false;
  std::uint64_t rss_kb = 0;
  // RSS's parts: anonymous memory (heap, stacks), and pages of files (the
  // binary and its libraries), which grow as new code paths first run.
  std::uint64_t rss_anon_kb = 0, rss_file_kb = 0;
  double cpu_s = 0;  // user + system, all threads
  double user_s = 0, sys_s = 0;  // the two parts (system: the kernel's work for it, TCP included)
};
ProcSample sample_proc(int pid);

// This process's CPU time (getrusage).
struct CpuTime {
  double user_s = 0, sys_s = 0;
  double total() const { return user_s + sys_s; }
};
CpuTime self_cpu();

// Blocking GET of the Prometheus text at http(s)://host:port/metrics (`tls`:
// through tls_client_ctx(), net.hpp); returns
// the value of each requested un-labelled counter, or nothing when the server
// has no such endpoint (the ws baseline).
std::optional<std::vector<double>> scrape_metrics(const std::string& host, int port,
                                                  const std::vector<std::string>& names, bool tls = false);

// A JSON value built by hand: numbers, strings, nested objects, null.
class Json {
 public:
  Json& num(std::string_view key, double v, int decimals = 3);
  Json& integer(std::string_view key, std::int64_t v);
  Json& str(std::string_view key, std::string_view v);
  Json& boolean(std::string_view key, bool v);
  Json& null(std::string_view key);
  Json& obj(std::string_view key, const Json& v);
  Json& arr(std::string_view key, const std::vector<Json>& v);
  Json& raw(std::string_view key, std::string_view json);
  std::string dump() const;

 private:
  void sep(std::string_view key);
  std::string body_;
};

// Latency summary in milliseconds (p50, p99, p999, max, mean, count).
Json latency_json(const Histogram& h);

// A plain text table, columns sized to fit.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};
std::string fmt(double v, int decimals = 2);
std::string fmt_int(std::uint64_t v);

}  // namespace bench
