#include "auth/jwt.hpp"

#include <boost/json.hpp>

#include "core/crypto.hpp"
#include "auth/jwk.hpp"

namespace synapse::auth {
namespace json = boost::json;

namespace {

std::optional<json::object> decode_part(std::string_view part) {
  auto raw = core::base64url_decode(part);
  if (!raw) return std::nullopt;
  json::parse_options opts;
  opts.max_depth = 16;
  boost::system::error_code ec;
  json::value v = json::parse(*raw, ec, {}, opts);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.as_object());
}

// Integral seconds; a JSON double is accepted only if it holds an integer.
bool read_seconds(const json::value& v, std::int64_t& out) {
  if (v.is_int64()) {
    out = v.as_int64();
    return true;
  }
  if (v.is_uint64()) {
    if (v.as_uint64() > static_cast<std::uint64_t>(INT64_MAX)) return false;
    out = static_cast<std::int64_t>(v.as_uint64());
    return true;
  }
  if (v.is_double()) {
    const double d = v.as_double();
    if (!(d >= -9.2e18 && d <= 9.2e18) || d != static_cast<double>(static_cast<std::int64_t>(d))) {
      return false;
    }
    out = static_cast<std::int64_t>(d);
    return true;
  }
  return false;
}

// The claims every token shares; `r.status` is left at bad_claims on any
// missing or mistyped one. `nbf` is 0 when absent.
bool read_claims(const json::object& payload, TokenClaims& c, std::int64_t& nbf) {
  const json::value* sub = payload.if_contains("sub");
  if (!sub || !sub->is_string() || sub->as_string().empty()) return false;
  c.sub = std::string(sub->as_string());
  const json::value* exp = payload.if_contains("exp");
  if (!exp || !read_seconds(*exp, c.exp)) return false;
  if (const json::value* iat = payload.if_contains("iat")) {
    if (!read_seconds(*iat, c.iat)) return false;
  }
  nbf = 0;
  if (const json::value* v = payload.if_contains("nbf")) {
    if (!read_seconds(*v, nbf)) return false;
  }
  if (const json::value* topics = payload.if_contains("topics")) {
    const json::array* arr = topics->if_array();
    if (!arr) return false;
    c.has_topics = true;
    for (const auto& t : *arr) {
      if (!t.is_string()) return false;
      c.topics.emplace_back(t.as_string());
    }
  }
  if (const json::value* t = payload.if_contains("tnt")) {
    if (!t->is_string()) return false;
    c.tenant = std::string(t->as_string());
  }
  if (const json::value* k = payload.if_contains("kid")) {
    if (!k->is_string()) return false;
    c.key_id = std::string(k->as_string());
  }
  if (const json::value* caps = payload.if_contains("caps")) {
    c.caps = parse_capabilities(*caps);
    if (!c.caps) return false;
  }
  if (const json::value* role = payload.if_contains("role")) {
    if (!role->is_string() || role->as_string().size() > 32) return false;
    c.role = std::string(role->as_string());
  }
  return true;
}

bool audience_matches(const json::value* aud, std::string_view want) {
  if (!aud) return false;
  if (aud->is_string()) return aud->as_string() == want;
  if (const json::array* arr = aud->if_array()) {
    for (const auto& a : *arr) {
      if (a.is_string() && a.as_string() == want) return true;
    }
  }
  return false;
}

}  // namespace

JwtResult verify_token(std::string_view token, std::string_view secret, const KeySet* jwks, const IdpOptions& idp,
                       std::int64_t now_s) {
  JwtResult r;
  const auto dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return r;
  const auto dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) return r;

  auto header = decode_part(token.substr(0, dot1));
  if (!header) return r;
  // The header names an algorithm; it never supplies a key. `none`, HS384/512
  // and anything unknown are refused before the signature is looked at.
  const json::value* alg = header->if_contains("alg");
  if (!alg || !alg->is_string() || header->contains("crit")) {
    r.status = JwtStatus::bad_algorithm;
    return r;
  }
  const std::string_view alg_name(alg->as_string().data(), alg->as_string().size());
  const std::string_view signing_input = token.substr(0, dot2);
  auto sig = core::base64url_decode(token.substr(dot2 + 1));
  const bool hs256 = alg_name == "HS256";
  const std::optional<JwsAlg> asym = hs256 ? std::nullopt : jws_alg_from_name(alg_name);
  if (hs256) {
    if (secret.empty()) {
      r.status = JwtStatus::bad_signature;
      return r;
    }
    const core::Digest expected = core::hmac_sha256(secret, signing_input);
    if (!sig || !core::constant_time_equal(*sig, core::as_view(expected))) {
      r.status = JwtStatus::bad_signature;
      return r;
    }
  } else if (asym && jwks) {
    const json::value* kid = header->if_contains("kid");
    if (!kid || !kid->is_string() || kid->as_string().empty() || kid->as_string().size() > 256) {
      r.status = JwtStatus::unknown_key;
      return r;
    }
    r.claims.header_kid = std::string(kid->as_string());
    const Jwk* key = jwks->find(r.claims.header_kid);
    if (!key) {
      r.status = JwtStatus::unknown_key;
      return r;
    }
    if (key->alg != *asym) {
      r.status = JwtStatus::bad_algorithm;
      return r;
    }
    if (!sig || !verify_jws(*key, signing_input, *sig)) {
      r.status = JwtStatus::bad_signature;
      return r;
    }
  } else {
    r.status = JwtStatus::bad_algorithm;
    return r;
  }

  auto payload = decode_part(token.substr(dot1 + 1, dot2 - dot1 - 1));
  if (!payload) return r;
  r.status = JwtStatus::bad_claims;
  std::int64_t nbf = 0;
  if (!read_claims(*payload, r.claims, nbf)) return r;
  std::int64_t leeway = 0;
  if (!hs256) {
    r.claims.from_idp = true;
    r.claims.key_id.clear();
    if (!idp.issuer.empty()) {
      const json::value* iss = payload->if_contains("iss");
      if (!iss || !iss->is_string() || iss->as_string() != idp.issuer) {
        r.status = JwtStatus::bad_issuer;
        return r;
      }
    }
    if (!idp.audience.empty() && !audience_matches(payload->if_contains("aud"), idp.audience)) {
      r.status = JwtStatus::bad_audience;
      return r;
    }
    leeway = std::max<std::int64_t>(0, idp.leeway_s);
  }
  if (r.claims.exp + leeway <= now_s) {
    r.status = JwtStatus::expired;
    return r;
  }
  if (nbf - leeway > now_s) {
    r.status = JwtStatus::not_yet_valid;
    return r;
  }
  r.status = JwtStatus::ok;
  return r;
}

JwtResult verify_jwt(std::string_view token, std::string_view secret, std::int64_t now_s) {
  return verify_token(token, secret, nullptr, IdpOptions{}, now_s);
}

std::string sign_jwt(const TokenClaims& c, std::string_view secret) {
  json::object payload;
  payload["sub"] = c.sub;
  payload["exp"] = c.exp;
  payload["iat"] = c.iat;
  if (c.has_topics) {
    json::array arr;
    for (const auto& t : c.topics) arr.emplace_back(t);
    payload["topics"] = std::move(arr);
  }
  if (!c.tenant.empty()) payload["tnt"] = c.tenant;
  if (!c.key_id.empty()) payload["kid"] = c.key_id;
  if (c.caps) payload["caps"] = json::parse(capabilities_json(*c.caps));
  if (!c.role.empty()) payload["role"] = c.role;
  std::string signing_input = core::base64url_encode(R"({"alg":"HS256","typ":"JWT"})");
  signing_input.push_back('.');
  signing_input += core::base64url_encode(json::serialize(payload));
  const core::Digest sig = core::hmac_sha256(secret, signing_input);
  signing_input.push_back('.');
  signing_input += core::base64url_encode(core::as_view(sig));
  return signing_input;
}

std::string_view describe(JwtStatus s) noexcept {
  switch (s) {
    case JwtStatus::ok: return "ok";
    case JwtStatus::malformed: return "token is not a well-formed JWT";
    case JwtStatus::bad_algorithm:
      return "token algorithm is not accepted (HS256, or RS256/ES256/EdDSA from the configured JWKS)";
    case JwtStatus::bad_signature: return "token signature does not verify";
    case JwtStatus::bad_claims: return "token claims are missing or of the wrong type";
    case JwtStatus::expired: return "token has expired";
    case JwtStatus::not_yet_valid: return "token is not valid yet";
    case JwtStatus::unknown_key: return "token kid names no key of the configured JWKS";
    case JwtStatus::bad_issuer: return "token iss is not the configured issuer (auth.issuer)";
    case JwtStatus::bad_audience: return "token aud does not name the configured audience (auth.audience)";
  }
  return "unknown";
}

}  // namespace synapse::auth
