// The HTTP request target (origin-form): path and decoded query parameters.
// Pure; fuzzed.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace synapse::net {

struct RequestTarget {
  std::string path;  // percent-decoded
  std::vector<std::pair<std::string, std::string>> query;
};

// False for anything but "/path?query" with valid percent escapes and no
// decoded NUL or control characters.
bool parse_target(std::string_view target, RequestTarget& out);

// parse_target(target, t) && t.path == path, without keeping anything (no
// allocation once the thread's scratch buffer has grown): which endpoint a
// request is for.
bool target_path_is(std::string_view target, std::string_view path);

// The first value of `name`, if present.
std::optional<std::string_view> query_param(const RequestTarget& t, std::string_view name);

}  // namespace synapse::net
