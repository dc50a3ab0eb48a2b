// Synapse's application close codes (protocol section 8): the 4000-4999
// range RFC 6455 leaves to applications. They live here, beside the other
// protocol vocabulary, rather than in wire/, because they mean something to
// Synapse and not to WebSocket framing; wire::close_code keeps the RFC 6455
// codes only.
#pragma once

#include <cstdint>

namespace synapse::protocol::close_code {
// No frame from the client for server.idle_timeout.
inline constexpr std::uint16_t idle_timeout = 4000;
// The token's `exp` passed without a refresh.
inline constexpr std::uint16_t token_expired = 4001;
// The API key or token the connection was admitted with was revoked.
inline constexpr std::uint16_t revoked = 4003;
// The outbound queue went over its bound (the client does not read).
inline constexpr std::uint16_t slow_consumer = 4008;
}  // namespace synapse::protocol::close_code
