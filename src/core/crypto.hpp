// The few cryptographic primitives Synapse needs, on OpenSSL 3.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace synapse::core {

using Digest = std::array<std::uint8_t, 32>;

Digest sha256(std::string_view data);
Digest hmac_sha256(std::string_view key, std::string_view data);
// 20-byte SHA-1, for the WebSocket handshake only (RFC 6455 section 4.2.2).
std::array<std::uint8_t, 20> sha1(std::string_view data);
// Cryptographically secure random bytes; throws if the generator fails.
std::string random_bytes(std::size_t n);
// Timing does not depend on where the inputs differ.
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

std::string base64url_encode(std::string_view data);
// Accepts unpadded base64url only; nullopt on any other character.
std::optional<std::string> base64url_decode(std::string_view text);
std::string base64_encode(std::string_view data);
std::string hex_encode(std::string_view data);

inline std::string_view as_view(const Digest& d) noexcept {
  return {reinterpret_cast<const char*>(d.data()), d.size()};
}

}  // namespace synapse::core
