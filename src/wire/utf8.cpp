#include "wire/utf8.hpp"

#include <cstring>

namespace synapse::wire {

bool Utf8Validator::feed(const unsigned char* p, std::size_t n) noexcept {
  std::size_t i = 0;
  while (i < n) {
    // Fast path: eight ASCII bytes at a time while no sequence is open.
    if (need_ == 0) {
      while (i + 8 <= n) {
        std::uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull) break;
        i += 8;
      }
      if (i >= n) break;
    }
    const unsigned char c = p[i++];
    if (need_ == 0) {
      if (c < 0x80) continue;
      if (c >= 0xC2 && c <= 0xDF) {
        need_ = 1;
      } else if (c == 0xE0) {
        need_ = 2; lower_ = 0xA0;  // no overlong 3-byte forms
      } else if (c == 0xED) {
        need_ = 2; upper_ = 0x9F;  // no UTF-16 surrogates
      } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        need_ = 2;
      } else if (c == 0xF0) {
        need_ = 3; lower_ = 0x90;  // no overlong 4-byte forms
      } else if (c >= 0xF1 && c <= 0xF3) {
        need_ = 3;
      } else if (c == 0xF4) {
        need_ = 3; upper_ = 0x8F;  // nothing past U+10FFFF
      } else {
        return false;
      }
    } else {
      if (c < lower_ || c > upper_) return false;
      lower_ = 0x80;
      upper_ = 0xBF;
      --need_;
    }
  }
  return true;
}

bool is_valid_utf8(std::string_view s) noexcept {
  Utf8Validator v;
  return v.feed(reinterpret_cast<const unsigned char*>(s.data()), s.size()) && v.complete();
}

}  // namespace synapse::wire
