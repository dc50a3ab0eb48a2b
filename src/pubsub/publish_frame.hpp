// The frame of a published message, built around the client's own payload
// bytes: `[null,null,"topic","event",{...payload,"_meta":{...}}]`. The
// brokers add the parts only they know (epoch and offset, or that the
// message stayed local).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

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

}  // namespace synapse::pubsub
