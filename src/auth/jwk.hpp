// JSON Web Keys (RFC 7517) for verifying identity-provider tokens: RSA
// (RS256), EC P-256 (ES256) and OKP Ed25519 (EdDSA) public keys, turned into
// OpenSSL 3 EVP_PKEYs once, when the set is parsed.
//
// Trust rules, each one closing a known JWT trap:
// - a key is looked up by `kid` only, as a map key: a kid is never a path,
//   a URL or anything else that is opened or fetched;
// - each key is bound to one algorithm by its type (RSA -> RS256, EC P-256 ->
//   ES256, Ed25519 -> EdDSA); a JWK `alg` that disagrees drops the key, and a
//   token's `alg` must equal its key's, so an RSA key can never verify an
//   HMAC, nor an HMAC secret a public-key token;
// - symmetric (`oct`) keys, private keys (`d` present), `use` other than
//   `sig`, RSA moduli under 2048 bits and unknown curves are skipped;
// - keys without a `kid` are skipped (a token must name its key).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/json/fwd.hpp>

struct evp_pkey_st;

namespace synapse::auth {

enum class JwsAlg { rs256, es256, eddsa };

std::optional<JwsAlg> jws_alg_from_name(std::string_view name) noexcept;
std::string_view jws_alg_name(JwsAlg a) noexcept;

struct Jwk {
  std::string kid;
  JwsAlg alg = JwsAlg::rs256;
  std::shared_ptr<evp_pkey_st> key;  // a public key, freed with EVP_PKEY_free
};

// An immutable set, shared by every thread that verifies.
struct KeySet {
  std::unordered_map<std::string, Jwk> keys;
  const Jwk* find(std::string_view kid) const;
};

struct JwksParse {
  std::shared_ptr<const KeySet> set;  // null when the document itself is unusable
  std::vector<std::string> skipped;   // "kid: why" for every key left out
  std::string error;                  // why the document is unusable
};

// One JWK object; nullopt with `why` when it is skipped.
std::optional<Jwk> parse_jwk(const boost::json::object& jwk, std::string* why);
// {"keys": [...]}. A document that is not such an object is an error; a key
// that cannot be used is skipped and listed.
JwksParse parse_jwks(std::string_view json_text);

// Verifies a JWS signature (the third part, decoded) over `signing_input`
// (the first two parts and the dot) with `jwk`. ES256 signatures are the
// 64-byte r||s of RFC 7518 section 3.4, converted to DER for OpenSSL.
bool verify_jws(const Jwk& jwk, std::string_view signing_input, std::string_view signature);

}  // namespace synapse::auth
