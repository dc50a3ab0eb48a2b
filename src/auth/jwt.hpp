// JSON Web Tokens, HS256 only, verified with every claim checked explicitly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace synapse::auth {

struct TokenClaims {
  std::string sub;                  // agent id (required)
  std::int64_t exp = 0;             // unix seconds (required)
  std::int64_t iat = 0;             // unix seconds (optional)
  bool has_topics = false;          // a `topics` claim restricts what may be joined
  std::vector<std::string> topics;  // patterns, see protocol::topic_matches
  std::string tenant;               // `tnt`: whose memories the bearer sees
  std::string key_id;               // `kid`: the API key that minted it (revocation)
};

enum class JwtStatus {
  ok,
  malformed,      // not three base64url parts of JSON objects
  bad_algorithm,  // anything but {"alg":"HS256"}
  bad_signature,
  bad_claims,     // a required claim missing or of the wrong type
  expired,        // exp <= now
  not_yet_valid,  // nbf > now
};

struct JwtResult {
  JwtStatus status = JwtStatus::malformed;
  TokenClaims claims;
};

// Verifies `token` against `secret` at time `now_s`. An empty secret verifies
// nothing. The signature is checked before any claim is believed.
JwtResult verify_jwt(std::string_view token, std::string_view secret, std::int64_t now_s);

std::string sign_jwt(const TokenClaims& claims, std::string_view secret);

std::string_view describe(JwtStatus s) noexcept;

}  // namespace synapse::auth
