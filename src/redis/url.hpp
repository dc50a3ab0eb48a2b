// A Redis address as given on the command line: redis://HOST[:PORT][/DB].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace synapse::redis {

struct Url {
  std::string host;
  std::uint16_t port = 6379;
  int db = 0;

  std::string text() const;
};

// Nothing when `text` is not a redis:// URL of that shape; `error` says why.
std::optional<Url> parse_url(std::string_view text, std::string* error = nullptr);

}  // namespace synapse::redis
