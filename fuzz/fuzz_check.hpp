// FUZZ_CHECK: an invariant of the code under test. A failure prints what was
// expected and aborts, which libFuzzer records as a crash (with the input
// saved as an artifact).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace synapse::fuzz {

[[noreturn]] inline void check_failed(const char* expr, const char* file, int line, std::string_view detail) {
  std::fprintf(stderr, "\n*** FUZZ_CHECK failed: %s\n    at %s:%d\n", expr, file, line);
  if (!detail.empty()) std::fprintf(stderr, "    %.*s\n", static_cast<int>(detail.size()), detail.data());
  std::fflush(stderr);
  std::abort();
}

// A printable rendering of bytes for failure messages.
inline std::string escaped(std::string_view s, std::size_t max = 200) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace synapse::fuzz

#define FUZZ_CHECK(cond, detail)                                                   \
  do {                                                                             \
    if (!(cond)) ::synapse::fuzz::check_failed(#cond, __FILE__, __LINE__, (detail)); \
  } while (0)
