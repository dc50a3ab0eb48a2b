// The Phoenix Channels V2 envelope: [join_ref, ref, topic, event, payload].
#pragma once

#include <boost/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/errors.hpp"

namespace synapse::protocol {

// Nesting allowed in a client frame; the frame's own array is depth 1.
inline constexpr int max_json_depth = 64;

// Bounds of the envelope fields a reply or a stored join echoes (protocol.md
// section 9, "Envelope field sizes"). Without them a client could make the
// server hold a 1 MiB join_ref per joined topic and echo it in every push.
// The topic bound is the topic name rule's (topic.hpp, max_topic_bytes) and
// the event bound the event name rule's (max_event_bytes).
inline constexpr std::size_t max_ref_bytes = 64;  // join_ref and ref
inline constexpr std::size_t max_envelope_topic_bytes = 255;
inline constexpr std::size_t max_envelope_event_bytes = 64;

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

// The envelope fields of a decoded frame that exceed their bound, in frame
// order (join_ref, ref, topic, event); empty when every field fits. decode()
// does not refuse such frames: the session answers them with an error reply
// (see drop_oversized), which a malformed frame cannot get.
std::vector<FieldError> oversized_fields(const Envelope& env);

// Replaces the oversized fields of `env` so that a reply to it echoes nothing
// large: an oversized join_ref or ref becomes null, an oversized topic
// becomes "phoenix" (the connection's own topic). The event is never echoed.
void drop_oversized(Envelope& env);

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
