// The Phoenix Channels V2 envelope: [join_ref, ref, topic, event, payload].
#pragma once

#include <boost/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace synapse::protocol {

// Nesting allowed in a client frame; the frame's own array is depth 1.
inline constexpr int max_json_depth = 64;

// A decoded client frame. The views point into `root`, which owns the JSON.
struct Envelope {
  boost::json::value root;
  std::optional<std::string_view> join_ref;
  std::optional<std::string_view> ref;
  std::string_view topic;
  std::string_view event;
  const boost::json::object* payload = nullptr;
  // The payload exactly as the client wrote it (a view into the decoded
  // text). Relaying these bytes keeps every value as sent: no number is
  // re-rounded, no key reordered.
  std::string_view payload_raw;
};

// Decodes one text message. On failure returns false and sets `error` to a
// human-readable sentence for the malformed_frame push. On success the views
// in `out` point into `root` and, for payload_raw, into `text`.
bool decode(std::string_view text, Envelope& out, std::string& error);

// The text of the fifth element of a frame already known to be a valid
// envelope (decode() succeeded on it).
std::string_view raw_payload(std::string_view text) noexcept;

// False when `v` holds a number too large for a double: Boost.JSON reads
// 1e400 as infinity and would write it back as `Infinity`, which is not JSON.
// Such payloads are refused (as Phoenix does) rather than relayed broken.
bool numbers_finite(const boost::json::value& v);

// Appends `s` as a JSON string literal (quotes included).
void append_json_string(std::string& out, std::string_view s);

// [join_ref, ref, topic, event, payload] with `payload` already serialized.
std::string encode_raw(std::optional<std::string_view> join_ref, std::optional<std::string_view> ref,
                       std::string_view topic, std::string_view event,
                       std::string_view payload_json);

// A push: [join_ref, null, topic, event, payload].
std::string encode_push(std::optional<std::string_view> join_ref, std::string_view topic,
                        std::string_view event, const boost::json::object& payload);

// A reply: [join_ref, ref, topic, "phx_reply", {"status": ..., "response": ...}].
std::string encode_reply(std::optional<std::string_view> join_ref, std::optional<std::string_view> ref,
                         std::string_view topic, bool ok, const boost::json::object& response);

}  // namespace synapse::protocol
