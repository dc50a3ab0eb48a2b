// Small parsers shared by the layers that read numbers out of text they
// were sent (query strings, Redis payloads).
#pragma once

#include <charconv>
#include <cstdint>
#include <string_view>

namespace synapse::core {

// The whole of `s` as a decimal number: digits only, no sign, no spaces, no
// overflow. `out` is set only when it returns true.
inline bool parse_u64(std::string_view s, std::uint64_t& out) noexcept {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return false;
  out = v;
  return true;
}

}  // namespace synapse::core
