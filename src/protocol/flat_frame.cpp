#include "protocol/flat_frame.hpp"

namespace synapse::protocol {

namespace {

class Scanner {
 public:
  explicit Scanner(std::string_view t) noexcept : p_(t.data()), end_(t.data() + t.size()), begin_(t.data()) {}

  void ws() noexcept {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool eat(char c) noexcept {
    ws();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool at_end() noexcept {
    ws();
    return p_ == end_;
  }
  std::size_t pos() const noexcept { return static_cast<std::size_t>(p_ - begin_); }

  // A string literal; its characters (between the quotes) go to `out`.
  // `escapes`: the simple two-character escapes are allowed (and reported
  // in `escaped`); \u escapes never are.
  bool string(std::string_view& out, bool escapes, bool* escaped = nullptr) noexcept {
    ws();
    if (p_ == end_ || *p_ != '"') return false;
    const char* s = ++p_;
    bool esc = false;
    while (p_ != end_) {
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        out = std::string_view(s, static_cast<std::size_t>(p_ - s));
        ++p_;
        if (escaped) *escaped = esc;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        if (!escapes || ++p_ == end_) return false;
        switch (*p_) {
          case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': break;
          default: return false;
        }
        esc = true;
      }
      ++p_;
    }
    return false;
  }
  // null, or a string without escapes.
  bool nullable(std::optional<std::string_view>& out) noexcept {
    ws();
    if (end_ - p_ >= 4 && p_[0] == 'n' && p_[1] == 'u' && p_[2] == 'l' && p_[3] == 'l') {
      p_ += 4;
      out.reset();
      return true;
    }
    std::string_view s;
    if (!string(s, false)) return false;
    out = s;
    return true;
  }

 private:
  const char* p_;
  const char* end_;
  const char* begin_;
};

}  // namespace

bool decode_flat(std::string_view text, FlatFrame& out) noexcept {
  Scanner sc(text);
  out.n_fields = 0;
  if (!sc.eat('[') || !sc.nullable(out.join_ref) || !sc.eat(',') || !sc.nullable(out.ref) || !sc.eat(',') ||
      !sc.string(out.topic, false) || !sc.eat(',') || !sc.string(out.event, false) || !sc.eat(',') || !sc.eat('{')) {
    return false;
  }
  const std::size_t payload_begin = sc.pos() - 1;
  if (!sc.eat('}')) {
    for (;;) {
      if (out.n_fields == max_flat_fields) return false;
      FlatField& f = out.fields[out.n_fields];
      if (!sc.string(f.key, false) || !sc.eat(':') || !sc.string(f.raw, true, &f.escaped)) return false;
      for (std::size_t i = 0; i < out.n_fields; ++i) {
        if (out.fields[i].key == f.key) return false;  // decode() would keep one of them: leave it to decode()
      }
      ++out.n_fields;
      if (sc.eat(',')) continue;
      if (sc.eat('}')) break;
      return false;
    }
  }
  const std::size_t payload_end = sc.pos();
  if (!sc.eat(']') || !sc.at_end()) return false;
  out.payload_raw = text.substr(payload_begin, payload_end - payload_begin);
  return true;
}

std::string_view flat_value(const FlatField& f, std::string& scratch) {
  if (!f.escaped) return f.raw;
  scratch.clear();
  scratch.reserve(f.raw.size());
  for (std::size_t i = 0; i < f.raw.size(); ++i) {
    char c = f.raw[i];
    if (c == '\\') {
      switch (f.raw[++i]) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        default: c = f.raw[i]; break;  // " \ /
      }
    }
    scratch.push_back(c);
  }
  return scratch;
}

}  // namespace synapse::protocol
