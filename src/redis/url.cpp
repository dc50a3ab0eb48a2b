#include "redis/url.hpp"

#include <charconv>

namespace synapse::redis {

namespace {

bool fail(std::string* error, const char* why) {
  if (error) *error = why;
  return false;
}

template <class Int>
bool parse_int(std::string_view s, Int& out) {
  if (s.empty()) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::string Url::text() const { return "redis://" + host + ":" + std::to_string(port) + "/" + std::to_string(db); }

std::optional<Url> parse_url(std::string_view text, std::string* error) {
  constexpr std::string_view scheme = "redis://";
  if (text.substr(0, scheme.size()) != scheme) {
    fail(error, "must start with redis://");
    return std::nullopt;
  }
  std::string_view rest = text.substr(scheme.size());
  Url url;
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    const std::string_view db = rest.substr(slash + 1);
    if (!db.empty() && (!parse_int(db, url.db) || url.db < 0 || url.db > 15)) {
      fail(error, "the database number must be 0..15");
      return std::nullopt;
    }
    rest = rest.substr(0, slash);
  }
  if (rest.find('@') != std::string_view::npos) {
    fail(error, "credentials in the URL are not supported");
    return std::nullopt;
  }
  std::string_view host = rest;
  if (!rest.empty() && rest.front() == '[') {  // [IPv6]:port
    const auto close = rest.find(']');
    if (close == std::string_view::npos) {
      fail(error, "unterminated [IPv6] host");
      return std::nullopt;
    }
    host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') {
      fail(error, "expected :PORT after the host");
      return std::nullopt;
    }
  } else if (const auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    rest = rest.substr(colon);
  } else {
    rest = {};
  }
  if (!rest.empty()) {
    unsigned port = 0;
    if (!parse_int(rest.substr(1), port) || port == 0 || port > 65535) {
      fail(error, "the port must be 1..65535");
      return std::nullopt;
    }
    url.port = static_cast<std::uint16_t>(port);
  }
  if (host.empty()) {
    fail(error, "the host is empty");
    return std::nullopt;
  }
  url.host = std::string(host);
  return url;
}

}  // namespace synapse::redis
