// JSON Web Tokens, verified with every claim checked explicitly: HS256 with
// Synapse's own secret (minted by /api/token), and RS256, ES256 and EdDSA
// from an identity provider, against its JWKS (auth/jwk.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/capabilities.hpp"

namespace synapse::auth {

struct TokenClaims {
  std::string sub;                  // agent id (required)
  std::int64_t exp = 0;             // unix seconds (required)
  std::int64_t iat = 0;             // unix seconds (optional)
  bool has_topics = false;          // a `topics` claim restricts what may be joined
  std::vector<std::string> topics;  // patterns, see protocol::topic_matches
  std::string tenant;               // `tnt`: whose memories the bearer sees
  std::string key_id;               // `kid`: the API key that minted it (revocation)
  std::optional<Capabilities> caps;  // `caps`: channel capabilities
  std::string role;                  // `role`: "worker" for an agent worker, else empty
  bool from_idp = false;            // verified against the JWKS (then key_id is always empty)
  std::string header_kid;           // the JWS header's kid (which JWKS key), for logs and refreshes
};

enum class JwtStatus {
  ok,
  malformed,      // not three base64url parts of JSON objects
  bad_algorithm,  // anything but {"alg":"HS256"}
  bad_signature,
  bad_claims,     // a required claim missing or of the wrong type
  expired,        // exp <= now
  not_yet_valid,  // nbf > now
  unknown_key,    // a JWKS token whose kid is not in the key set (a refresh may find it)
  bad_issuer,     // iss is not auth.issuer
  bad_audience,   // aud does not name auth.audience
};

// How identity-provider tokens are checked. Empty issuer or audience: that
// claim is not checked. The leeway widens exp and nbf for clock skew.
struct IdpOptions {
  std::string issuer;
  std::string audience;
  std::int64_t leeway_s = 0;
};

struct KeySet;

struct JwtResult {
  JwtStatus status = JwtStatus::malformed;
  TokenClaims claims;
};

// Verifies `token` against `secret` at time `now_s`. An empty secret verifies
// nothing. The signature is checked before any claim is believed.
JwtResult verify_jwt(std::string_view token, std::string_view secret, std::int64_t now_s);

// Contract: the header's `alg` picks the family and nothing else.
// - HS256: verified with `secret` exactly as verify_jwt does (no leeway, no
//   iss/aud; a `kid` claim names the minting API key).
// - RS256, ES256, EdDSA: only when `jwks` is given; the header's `kid` is
//   looked up in it (unknown_key when absent) and the key's algorithm must
//   equal the header's. Then iss and aud are checked against `idp`, exp and
//   nbf with its leeway; a payload `kid` claim is ignored (such a token was
//   not minted from one of our keys and must not borrow one's limits).
// - anything else, `none` included, and any `crit` header: bad_algorithm.
// Header `jku`, `x5u`, `jwk` and `x5c` are never read: keys come from the
// configured JWKS only.
JwtResult verify_token(std::string_view token, std::string_view secret, const KeySet* jwks, const IdpOptions& idp,
                       std::int64_t now_s);

std::string sign_jwt(const TokenClaims& claims, std::string_view secret);

std::string_view describe(JwtStatus s) noexcept;

}  // namespace synapse::auth
