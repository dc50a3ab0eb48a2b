// A published message in its two forms.
//
// The body: what a backend carries and stores (the Redis channel and stream,
// the history) — the message's parts, opaque to the backend:
//   "<ts_ms>\n<1 if the payload is {}, else 0>\n<event as JSON>\n<from as JSON>\n<payload JSON>"
// The strings are JSON-escaped, so only the payload (last) may hold a newline.
//
// The frame: what a client receives, built by the node that delivers the
// message, once per message per node, around the client's own payload bytes:
//   [null,null,"topic","event",{...payload,"_meta":{"from":..,"ts":..,<tail>}}]
// where the tail is `"epoch":"E","offset":N` for a numbered message, or
// `"local":true` for one that reached this node's members only. Framing at
// the edge keeps the Phoenix format out of the backends (and their Lua).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "wire/message.hpp"

namespace synapse::pubsub {

// Everything up to and including `"ts":<ts_ms>` inside _meta. `payload_json`
// is the text of a JSON object without "_meta"; `payload_empty` says whether
// it has no members.
std::string publish_head(std::string_view topic, std::string_view event, std::string_view payload_json,
                         bool payload_empty, std::string_view from, std::int64_t ts_ms);

// Closes a head for a numbered message: `,"epoch":"E","offset":N}}]`.
std::string numbered_tail(std::string_view epoch, std::uint64_t offset);

// Closes a head for a message that reached this node's members only.
inline constexpr std::string_view local_tail = ",\"local\":true}}]";

// A body's parts, as views into the body's bytes.
struct MessageBody {
  std::int64_t ts_ms = 0;
  bool payload_empty = false;
  std::string_view event_json;  // a JSON string, quotes included
  std::string_view from_json;
  std::string_view payload_json;
};

std::string encode_body(std::string_view event, std::string_view payload_json, bool payload_empty,
                        std::string_view from, std::int64_t ts_ms);
// nullopt when `body` is not one encode_body() made.
std::optional<MessageBody> decode_body(std::string_view body);

// The frame of a numbered message: the same bytes as publish_head() +
// numbered_tail(), in one allocation.
wire::Message frame_numbered(std::string_view topic, const MessageBody& body, std::string_view epoch,
                             std::uint64_t offset);
// The frame of a message delivered on this node only (publish_head() + local_tail).
wire::Message frame_local(std::string_view topic, const MessageBody& body);

}  // namespace synapse::pubsub
