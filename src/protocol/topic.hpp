// Topic and event name rules (protocol sections 4, 5 and 7).
#pragma once

#include <string_view>

namespace synapse::protocol {

inline constexpr std::size_t max_topic_bytes = 255;
inline constexpr std::size_t max_event_bytes = 64;

// `agent:<agent_id>` and `agent:*` are where agent workers serve (section 10
// of docs/protocol.md); `agent:*` is the one topic name with a `*`.
enum class TopicKind { phoenix, cortex, agent, pubsub, invalid };

// `namespace:name`, at most 255 bytes of [A-Za-z0-9_\-.:@], both parts non-empty.
bool valid_topic_name(std::string_view topic) noexcept;

// Which channel type serves `topic`.
TopicKind classify_topic(std::string_view topic) noexcept;

// The agent id of a `cortex:<agent_id>` topic.
std::string_view cortex_agent(std::string_view topic) noexcept;

// Events that are not publishes: phx_*, presence_*, and names starting with "_".
bool is_reserved_event(std::string_view event) noexcept;

// Non-empty, at most 64 bytes, no control characters.
bool valid_event_name(std::string_view event) noexcept;

// Matches a token's `topics` pattern: exact, or `prefix*` for any continuation.
bool topic_matches(std::string_view pattern, std::string_view topic) noexcept;

}  // namespace synapse::protocol
