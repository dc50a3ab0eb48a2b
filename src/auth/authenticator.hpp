// Turns a presented credential (API key or JWT) into a Principal.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "auth/principal.hpp"

namespace synapse::auth {

class KeyStore;
struct IdentityProvider;

enum class AuthFailure { none, missing, unauthorized, token_expired };

struct AuthResult {
  AuthFailure failure = AuthFailure::missing;
  std::string message;
  Principal principal;
  // A token named a kid the identity provider's key set does not hold: the
  // caller may refresh the set (JwksCache::refresh_for_unknown) and try once more.
  bool unknown_kid = false;
  bool ok() const noexcept { return failure == AuthFailure::none; }
};

// Keys look like `syn_<id>_<secret>`; anything with two dots is taken as a JWT.
bool looks_like_jwt(std::string_view credential) noexcept;

AuthResult authenticate(std::string_view credential, KeyStore& keys, std::string_view jwt_secret,
                        std::int64_t now_s);
// The same, also accepting identity-provider tokens when `idp` is given.
AuthResult authenticate(std::string_view credential, KeyStore& keys, std::string_view jwt_secret,
                        const IdentityProvider* idp, std::int64_t now_s);
// API keys only (the HTTP API takes no tokens).
AuthResult authenticate_key(std::string_view credential, KeyStore& keys);

// The credential of "Bearer <x>", or empty.
std::string_view bearer(std::string_view authorization) noexcept;

}  // namespace synapse::auth
