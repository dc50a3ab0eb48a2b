#include "net/request_target.hpp"

#include <optional>
#include <string>

namespace synapse::net {
namespace {

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in`; in the query `+` is a space. False on a bad escape or
// a control character (NUL included) after decoding.
bool decode(std::string_view in, bool plus_is_space, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;  // needs two hex digits
      const int hi = hex_value(in[i + 1]);
      const int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) return false;
    out.push_back(c);
  }
  return true;
}

// The walk both parse_target and target_path_is make, so the two accept
// exactly the same targets: the path percent-decoded into `path` and handed
// to on_path, then each non-empty query pair to on_pair(key, value or null),
// raw (the fragment, if any, dropped). False at the first malformed part or
// the first callback that says so.
template <class OnPath, class OnPair>
bool walk_target(std::string_view target, std::string& path, OnPath on_path, OnPair on_pair) {
  if (target.empty() || target.front() != '/') return false;
  const auto q = target.find('?');
  const auto raw_path = target.substr(0, q);
  if (raw_path.find('#') != std::string_view::npos) return false;
  if (!decode(raw_path, false, path) || !on_path(path)) return false;
  if (q == std::string_view::npos) return true;
  auto rest = target.substr(q + 1);
  if (const auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    const std::optional<std::string_view> value =
        eq == std::string_view::npos ? std::nullopt : std::optional<std::string_view>(pair.substr(eq + 1));
    if (!on_pair(pair.substr(0, eq), value)) return false;
  }
  return true;
}

}  // namespace

bool parse_target(std::string_view target, RequestTarget& out) {
  out.path.clear();
  out.query.clear();
  return walk_target(
      target, out.path, [](const std::string&) { return true; },
      [&out](std::string_view raw_key, std::optional<std::string_view> raw_value) {
        std::string key, value;
        if (!decode(raw_key, true, key)) return false;
        if (raw_value && !decode(*raw_value, true, value)) return false;
        out.query.emplace_back(std::move(key), std::move(value));
        return true;
      });
}

bool target_path_is(std::string_view target, std::string_view path) {
  // Decoding into one reused buffer: no allocation once it has grown.
  thread_local std::string scratch;
  return walk_target(
      target, scratch, [path](const std::string& decoded) { return decoded == path; },
      [](std::string_view raw_key, std::optional<std::string_view> raw_value) {
        return decode(raw_key, true, scratch) && (!raw_value || decode(*raw_value, true, scratch));
      });
}

std::optional<std::string_view> query_param(const RequestTarget& t, std::string_view name) {
  for (const auto& [k, v] : t.query) {
    if (k == name) return std::string_view(v);
  }
  return std::nullopt;
}

}  // namespace synapse::net
