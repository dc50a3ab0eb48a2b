#include "metrics/histogram.hpp"

#include <fmt/format.h>

#include <iterator>

namespace synapse::metrics {

std::int64_t Histogram::quantile_us(double q) const noexcept {
  // Read the buckets once; their sum is the count this estimate is about
  // (count_ may have moved on meanwhile).
  std::array<std::uint64_t, buckets> c{};
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < buckets; ++i) total += (c[i] = bucket(i));
  if (total == 0) return 0;
  const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < buckets; ++i) {
    seen += c[i];
    if (seen >= rank) return latency_bounds_us[i < latency_bounds_us.size() ? i : latency_bounds_us.size() - 1];
  }
  return latency_bounds_us.back();
}

void Histogram::render(std::string& out, std::string_view name, std::string_view help) const {
  auto it = std::back_inserter(out);
  fmt::format_to(it, "# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < latency_bounds_us.size(); ++i) {
    cumulative += bucket(i);
    fmt::format_to(it, "{}_bucket{{le=\"{}\"}} {}\n", name, static_cast<double>(latency_bounds_us[i]) / 1e6,
                   cumulative);
  }
  cumulative += bucket(latency_bounds_us.size());
  fmt::format_to(it, "{}_bucket{{le=\"+Inf\"}} {}\n", name, cumulative);
  fmt::format_to(it, "{}_sum {}\n{}_count {}\n", name, static_cast<double>(sum_us()) / 1e6, name, cumulative);
}

}  // namespace synapse::metrics
