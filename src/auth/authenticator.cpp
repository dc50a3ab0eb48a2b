#include "auth/authenticator.hpp"

#include <algorithm>

#include "auth/jwks.hpp"
#include "auth/jwt.hpp"
#include "auth/key_store.hpp"

namespace synapse::auth {

bool looks_like_jwt(std::string_view c) noexcept { return std::count(c.begin(), c.end(), '.') == 2; }

std::string_view bearer(std::string_view h) noexcept {
  constexpr std::string_view scheme = "bearer ";
  if (h.size() <= scheme.size()) return {};
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    const char c = h[i];
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != scheme[i]) return {};
  }
  auto rest = h.substr(scheme.size());
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
  return rest;
}

AuthResult authenticate_key(std::string_view credential, KeyStore& keys) {
  AuthResult r;
  if (credential.empty()) {
    r.message = "no credentials";
    return r;
  }
  ApiKey key;
  switch (keys.authenticate(credential, key)) {
    case KeyCheck::ok:
      r.failure = AuthFailure::none;
      r.principal = KeyStore::principal_of(key);
      return r;
    case KeyCheck::revoked:
      r.failure = AuthFailure::unauthorized;
      r.message = "API key revoked";
      return r;
    case KeyCheck::unknown:
      break;
  }
  r.failure = AuthFailure::unauthorized;
  r.message = "unknown API key";
  return r;
}

AuthResult authenticate(std::string_view credential, KeyStore& keys, std::string_view jwt_secret,
                        std::int64_t now_s) {
  return authenticate(credential, keys, jwt_secret, nullptr, now_s);
}

AuthResult authenticate(std::string_view credential, KeyStore& keys, std::string_view jwt_secret,
                        const IdentityProvider* idp, std::int64_t now_s) {
  if (!looks_like_jwt(credential)) return authenticate_key(credential, keys);
  AuthResult r;
  std::shared_ptr<const KeySet> set = idp ? idp->keys.current() : nullptr;
  // With an identity provider configured but no keys loaded yet, an empty
  // set still routes RS/ES/EdDSA tokens to unknown_kid (and a refresh).
  const KeySet empty_set;
  const KeySet* jwks = idp ? (set ? set.get() : &empty_set) : nullptr;
  auto v = verify_token(credential, jwt_secret, jwks, idp ? idp->options : IdpOptions{}, now_s);
  if (v.status == JwtStatus::unknown_key) r.unknown_kid = true;
  if (v.status == JwtStatus::expired) {
    r.failure = AuthFailure::token_expired;
    r.message = "token has expired";
    return r;
  }
  if (v.status != JwtStatus::ok) {
    r.failure = AuthFailure::unauthorized;
    r.message = std::string(describe(v.status));
    return r;
  }
  Principal p;
  if (!v.claims.from_idp && !v.claims.key_id.empty()) {
    // A token dies with the key that minted it.
    auto key = keys.find(v.claims.key_id);
    if (!key || key->revoked_at) {
      r.failure = AuthFailure::unauthorized;
      r.message = "the key that minted this token is revoked";
      return r;
    }
    p.rates = key->rates;
    p.unlimited = key->unlimited;
    // A token has the role of the key that minted it: a worker key's
    // tokens serve agents, and a client key cannot mint a worker token.
    if (key->worker != (v.claims.role == "worker")) {
      r.failure = AuthFailure::unauthorized;
      r.message = key->worker ? "a worker key's token must carry role \"worker\""
                              : "only a worker key may mint a token with role \"worker\"";
      return r;
    }
    // A token never exceeds the key that minted it.
    p.key_caps = key->caps;
  }
  p.token_caps = v.claims.caps;
  p.via_idp = v.claims.from_idp;
  p.agent_id = v.claims.sub;
  p.tenant = v.claims.tenant.empty() ? "default" : v.claims.tenant;
  p.key_id = v.claims.key_id;
  p.worker = v.claims.role == "worker";
  p.via_token = true;
  p.token_exp = v.claims.exp;
  p.has_topics = v.claims.has_topics;
  p.topics = std::move(v.claims.topics);
  r.failure = AuthFailure::none;
  r.principal = std::move(p);
  return r;
}

}  // namespace synapse::auth
