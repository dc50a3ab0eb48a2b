// UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace synapse::wire {

// Incremental validator, for text split across WebSocket fragments.
class Utf8Validator {
 public:
  // Feeds bytes; false as soon as they cannot be valid UTF-8.
  bool feed(const unsigned char* p, std::size_t n) noexcept;
  // True when the bytes so far end on a character boundary.
  bool complete() const noexcept { return need_ == 0; }
  void reset() noexcept { need_ = 0; lower_ = 0x80; upper_ = 0xBF; }

 private:
  unsigned need_ = 0;           // continuation bytes still expected
  unsigned char lower_ = 0x80;  // allowed range of the next continuation byte
  unsigned char upper_ = 0xBF;
};

bool is_valid_utf8(std::string_view s) noexcept;

}  // namespace synapse::wire
