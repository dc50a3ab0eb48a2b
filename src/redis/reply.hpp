// A Redis reply as a plain value, copied out of hiredis's reader so it can
// cross threads. Errors of our own (not connected, timed out, connection
// lost) are replies too, so every caller handles one shape.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace synapse::redis {

struct Reply {
  enum class Type : std::uint8_t {
    string,
    array,
    integer,
    nil,
    status,
    error,          // Redis answered with an error
    not_connected,  // never sent: the link was down
    lost,           // sent, but no answer came (timeout or the connection dropped)
  };
  Type type = Type::nil;
  std::string str;  // string, status, error text
  std::int64_t integer = 0;
  std::vector<Reply> elements;

  bool ok() const noexcept { return type != Type::error && type != Type::not_connected && type != Type::lost; }
  // Whether the command certainly did not run.
  bool unsent() const noexcept { return type == Type::not_connected; }
  // An integer reply, or a string holding one; `fallback` otherwise.
  std::int64_t as_int(std::int64_t fallback = 0) const noexcept;

  static Reply failure(Type t, std::string why) {
    Reply r;
    r.type = t;
    r.str = std::move(why);
    return r;
  }
};

}  // namespace synapse::redis
