// Wall-clock and monotonic times as plain integers.
#pragma once

#include <chrono>
#include <cstdint>

namespace synapse {

inline std::int64_t unix_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::int64_t unix_s() noexcept { return unix_ms() / 1000; }

inline std::int64_t mono_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace synapse
