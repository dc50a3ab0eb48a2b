#include "auth/jwt.hpp"

#include <boost/json.hpp>

#include "auth/crypto.hpp"

namespace synapse::auth {
namespace json = boost::json;

namespace {

std::optional<json::object> decode_part(std::string_view part) {
  auto raw = base64url_decode(part);
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

}  // namespace

JwtResult verify_jwt(std::string_view token, std::string_view secret, std::int64_t now_s) {
  JwtResult r;
  const auto dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return r;
  const auto dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) return r;

  auto header = decode_part(token.substr(0, dot1));
  if (!header) return r;
  // Only HS256. `none`, RS*, HS384/512 and anything unknown are refused before
  // the signature is looked at, so the header never picks the verification.
  const json::value* alg = header->if_contains("alg");
  if (!alg || !alg->is_string() || alg->as_string() != "HS256") {
    r.status = JwtStatus::bad_algorithm;
    return r;
  }
  if (header->contains("crit")) {
    r.status = JwtStatus::bad_algorithm;
    return r;
  }
  if (secret.empty()) {
    r.status = JwtStatus::bad_signature;
    return r;
  }
  auto sig = base64url_decode(token.substr(dot2 + 1));
  const Digest expected = hmac_sha256(secret, token.substr(0, dot2));
  if (!sig || !constant_time_equal(*sig, as_view(expected))) {
    r.status = JwtStatus::bad_signature;
    return r;
  }

  auto payload = decode_part(token.substr(dot1 + 1, dot2 - dot1 - 1));
  if (!payload) return r;
  r.status = JwtStatus::bad_claims;
  const json::value* sub = payload->if_contains("sub");
  if (!sub || !sub->is_string() || sub->as_string().empty()) return r;
  r.claims.sub = std::string(sub->as_string());
  const json::value* exp = payload->if_contains("exp");
  if (!exp || !read_seconds(*exp, r.claims.exp)) return r;
  if (const json::value* iat = payload->if_contains("iat")) {
    if (!read_seconds(*iat, r.claims.iat)) return r;
  }
  std::int64_t nbf = 0;
  if (const json::value* v = payload->if_contains("nbf")) {
    if (!read_seconds(*v, nbf)) return r;
  }
  if (const json::value* topics = payload->if_contains("topics")) {
    const json::array* arr = topics->if_array();
    if (!arr) return r;
    r.claims.has_topics = true;
    for (const auto& t : *arr) {
      if (!t.is_string()) return r;
      r.claims.topics.emplace_back(t.as_string());
    }
  }
  if (const json::value* t = payload->if_contains("tnt")) {
    if (!t->is_string()) return r;
    r.claims.tenant = std::string(t->as_string());
  }
  if (const json::value* k = payload->if_contains("kid")) {
    if (!k->is_string()) return r;
    r.claims.key_id = std::string(k->as_string());
  }
  if (r.claims.exp <= now_s) {
    r.status = JwtStatus::expired;
    return r;
  }
  if (nbf > now_s) {
    r.status = JwtStatus::not_yet_valid;
    return r;
  }
  r.status = JwtStatus::ok;
  return r;
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
  std::string signing_input = base64url_encode(R"({"alg":"HS256","typ":"JWT"})");
  signing_input.push_back('.');
  signing_input += base64url_encode(json::serialize(payload));
  const Digest sig = hmac_sha256(secret, signing_input);
  signing_input.push_back('.');
  signing_input += base64url_encode(as_view(sig));
  return signing_input;
}

std::string_view describe(JwtStatus s) noexcept {
  switch (s) {
    case JwtStatus::ok: return "ok";
    case JwtStatus::malformed: return "token is not a well-formed JWT";
    case JwtStatus::bad_algorithm: return "token algorithm must be HS256";
    case JwtStatus::bad_signature: return "token signature does not verify";
    case JwtStatus::bad_claims: return "token claims are missing or of the wrong type";
    case JwtStatus::expired: return "token has expired";
    case JwtStatus::not_yet_valid: return "token is not valid yet";
  }
  return "unknown";
}

}  // namespace synapse::auth
