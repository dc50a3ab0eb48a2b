// An immutable piece of text in 16 bytes: up to 15 characters inside the
// object, longer ones in one heap block of their exact size. For text kept
// per member in large numbers (a presence meta), where a std::string's 32
// bytes are mostly padding around a short value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace synapse {

class SmallText {
 public:
  SmallText() noexcept { clear_inline(); }
  explicit SmallText(std::string_view s) { init(s); }
  SmallText(const SmallText& o) { init(o.view()); }
  SmallText(SmallText&& o) noexcept {
    std::memcpy(b_, o.b_, sizeof b_);
    o.clear_inline();
  }
  SmallText& operator=(const SmallText& o) {
    if (this != &o) {
      SmallText copy(o);
      *this = std::move(copy);
    }
    return *this;
  }
  SmallText& operator=(SmallText&& o) noexcept {
    if (this != &o) {
      release();
      std::memcpy(b_, o.b_, sizeof b_);
      o.clear_inline();
    }
    return *this;
  }
  SmallText& operator=(std::string_view s) {
    SmallText t(s);
    *this = std::move(t);
    return *this;
  }
  ~SmallText() { release(); }
  void clear() noexcept { release(); }

  std::string_view view() const noexcept {
    if (!on_heap()) return std::string_view(b_, static_cast<unsigned char>(b_[tag_at]));
    return std::string_view(heap_ptr(), heap_size());
  }
  operator std::string_view() const noexcept { return view(); }  // NOLINT: used as text
  bool empty() const noexcept { return view().empty(); }
  std::size_t size() const noexcept { return view().size(); }

  static constexpr std::size_t inline_capacity = 15;

 private:
  // b_[15]: the inline length (0..15), or heap_tag. On the heap, b_[0..8)
  // holds the pointer and b_[8..12) the length.
  static constexpr std::size_t tag_at = 15;
  static constexpr unsigned char heap_tag = 0xFF;

  bool on_heap() const noexcept { return static_cast<unsigned char>(b_[tag_at]) == heap_tag; }
  char* heap_ptr() const noexcept {
    char* p;
    std::memcpy(&p, b_, sizeof p);
    return p;
  }
  std::uint32_t heap_size() const noexcept {
    std::uint32_t n;
    std::memcpy(&n, b_ + 8, sizeof n);
    return n;
  }
  void clear_inline() noexcept {
    std::memset(b_, 0, sizeof b_);
  }
  void init(std::string_view s) {
    clear_inline();
    if (s.size() <= inline_capacity) {
      if (!s.empty()) std::memcpy(b_, s.data(), s.size());
      b_[tag_at] = static_cast<char>(s.size());
      return;
    }
    // The length is kept in 32 bits (a presence meta is bounded far below).
    if (s.size() > UINT32_MAX) throw std::length_error("SmallText: text too long");
    char* p = new char[s.size()];
    std::memcpy(p, s.data(), s.size());
    const auto n = static_cast<std::uint32_t>(s.size());
    std::memcpy(b_, &p, sizeof p);
    std::memcpy(b_ + 8, &n, sizeof n);
    b_[tag_at] = static_cast<char>(heap_tag);
  }
  void release() noexcept {
    if (on_heap()) delete[] heap_ptr();
    clear_inline();
  }

  alignas(8) char b_[16];
};

static_assert(sizeof(SmallText) == 16);

}  // namespace synapse
