// Fuzzes net::parse_target, the HTTP request target ("/path?query").
//
// The input is the target. Checked:
//   - never crashes; decoded path, keys and values hold no control
//     character (0x00-0x1F, 0x7F);
//   - the result equals a reference parser written from the header comment;
//   - a parsed target, percent-encoded again, parses to the same result;
//   - query_param returns the first value of a name.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "net/request_target.hpp"

using namespace synapse::net;
using synapse::fuzz::escaped;

namespace {

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7F; }

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> ref_decode(std::string_view in, bool plus) {
  std::string out;
  std::size_t i = 0;
  while (i < in.size()) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == '%') {
      if (in.size() - i < 3 || hexval(in[i + 1]) < 0 || hexval(in[i + 2]) < 0) return std::nullopt;
      c = static_cast<unsigned char>(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
      i += 3;
    } else {
      if (plus && c == '+') c = ' ';
      ++i;
    }
    if (is_control(c)) return std::nullopt;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

std::optional<RequestTarget> reference(std::string_view t) {
  if (t.empty() || t[0] != '/') return std::nullopt;
  const std::size_t q = t.find('?');
  const std::string_view raw_path = q == std::string_view::npos ? t : t.substr(0, q);
  if (raw_path.find('#') != std::string_view::npos) return std::nullopt;
  RequestTarget out;
  auto path = ref_decode(raw_path, false);
  if (!path) return std::nullopt;
  out.path = *path;
  if (q == std::string_view::npos) return out;
  std::string_view query = t.substr(q + 1);
  query = query.substr(0, query.find('#'));
  std::size_t start = 0;
  while (start <= query.size()) {
    std::size_t end = query.find('&', start);
    if (end == std::string_view::npos) end = query.size();
    const std::string_view pair = query.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) continue;
    const std::size_t eq = pair.find('=');
    auto key = ref_decode(pair.substr(0, eq), true);
    if (!key) return std::nullopt;
    std::string value;
    if (eq != std::string_view::npos) {
      auto v = ref_decode(pair.substr(eq + 1), true);
      if (!v) return std::nullopt;
      value = *v;
    }
    out.query.emplace_back(*key, value);
  }
  return out;
}

std::string encode(std::string_view s, bool keep_slash) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    const bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                            c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/');
    if (unreserved) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    }
  }
  return out;
}

void check_clean(std::string_view s, const char* what) {
  for (char c : s) FUZZ_CHECK(!is_control(static_cast<unsigned char>(c)), std::string("control character in ") + what);
}

bool same(const RequestTarget& a, const RequestTarget& b) { return a.path == b.path && a.query == b.query; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view target(reinterpret_cast<const char*>(data), size);
  RequestTarget t;
  const bool ok = parse_target(target, t);
  const std::optional<RequestTarget> expected = reference(target);
  FUZZ_CHECK(ok == expected.has_value(), std::string("parse_target ") + (ok ? "accepted" : "refused") +
                                             " what the reference did not: " + escaped(target));
  if (!ok) return 0;
  FUZZ_CHECK(same(t, *expected), "parse_target differs from the reference: " + escaped(target));

  FUZZ_CHECK(!t.path.empty() && t.path[0] == '/', "decoded path does not start with '/'");
  check_clean(t.path, "path");
  for (const auto& [k, v] : t.query) {
    check_clean(k, "a query key");
    check_clean(v, "a query value");
    const auto first = query_param(t, k);
    FUZZ_CHECK(first.has_value(), "query_param misses a key");
    for (const auto& [k2, v2] : t.query) {
      if (k2 == k) {
        FUZZ_CHECK(*first == v2, "query_param does not return the first value");
        break;
      }
    }
  }

  std::string again = encode(t.path, true);
  if (!t.query.empty()) {
    again.push_back('?');
    for (std::size_t i = 0; i < t.query.size(); ++i) {
      if (i) again.push_back('&');
      again += encode(t.query[i].first, false) + "=" + encode(t.query[i].second, false);
    }
  }
  RequestTarget t2;
  FUZZ_CHECK(parse_target(again, t2), "re-encoded target refused: " + escaped(again));
  FUZZ_CHECK(same(t, t2), "re-encoded target parses differently: " + escaped(again));
  return 0;
}
