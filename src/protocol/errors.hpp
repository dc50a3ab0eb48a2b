// Stable snake_case reason codes (protocol sections 1, 2, 4, 5 and 7).
#pragma once

#include <boost/json.hpp>
#include <string_view>
#include <utility>
#include <vector>

namespace synapse::protocol::reason {
inline constexpr std::string_view malformed_frame = "malformed_frame";
inline constexpr std::string_view unmatched_topic = "unmatched_topic";
inline constexpr std::string_view unknown_event = "unknown_event";
inline constexpr std::string_view invalid_payload = "invalid_payload";
inline constexpr std::string_view invalid_topic = "invalid_topic";
inline constexpr std::string_view forbidden = "forbidden";
inline constexpr std::string_view reserved_event = "reserved_event";
inline constexpr std::string_view rate_limited = "rate_limited";
inline constexpr std::string_view too_many_topics = "too_many_topics";
// A join past the topic's presence bound (pubsub.max_presence_bytes_per_topic).
inline constexpr std::string_view presence_full = "presence_full";
inline constexpr std::string_view too_many_running = "too_many_running";
inline constexpr std::string_view duplicate_ref = "duplicate_ref";
inline constexpr std::string_view not_found = "not_found";
inline constexpr std::string_view unknown_tool = "unknown_tool";
inline constexpr std::string_view invalid_args = "invalid_args";
inline constexpr std::string_view unauthorized = "unauthorized";
inline constexpr std::string_view token_expired = "token_expired";
inline constexpr std::string_view refresh_not_allowed = "refresh_not_allowed";
inline constexpr std::string_view internal = "internal";
// A cluster node could not get Redis to confirm a publish.
inline constexpr std::string_view unavailable = "unavailable";
// The server is draining (SIGTERM): it starts no new query or tool.
inline constexpr std::string_view draining = "draining";
}  // namespace synapse::protocol::reason

namespace synapse::protocol {

struct FieldError {
  std::string field;
  std::string message;
};

// {"reason": ..., "message": ..., "errors": [...]} for an error reply.
inline boost::json::object error_response(std::string_view reason, std::string_view message = {},
                                          const std::vector<FieldError>& errors = {}) {
  boost::json::object o;
  o["reason"] = reason;
  if (!message.empty()) o["message"] = message;
  if (!errors.empty()) {
    boost::json::array arr;
    arr.reserve(errors.size());
    for (const auto& e : errors) arr.push_back(boost::json::object{{"field", e.field}, {"message", e.message}});
    o["errors"] = std::move(arr);
  }
  return o;
}

}  // namespace synapse::protocol
