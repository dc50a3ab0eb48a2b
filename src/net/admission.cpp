#include "net/admission.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include "auth/authenticator.hpp"
#include "auth/key_store.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "net/request_target.hpp"

namespace synapse::net {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

AdmissionOutcome refuse(int status, metrics::Refusal why, std::string_view code, std::string_view reason) {
  AdmissionOutcome o;
  o.refusal = json_error(status, code, reason);
  o.refusal_reason = why;
  return o;
}

}  // namespace

std::string limit_key(const auth::Principal& p) {
  // A token counts against the key that minted it (its `kid`), so a holder
  // cannot double its connections by minting tokens; only a token with no
  // key behind it (signed elsewhere with the shared secret) counts by sub.
  if (!p.key_id.empty()) return "key:" + p.key_id;
  return "sub:" + p.agent_id;
}

bool revoked_since_admission(const auth::Principal& p, auth::KeyStore& keys) {
  if (p.key_id.empty()) return false;
  try {
    const auto key = keys.find(p.key_id);
    return !key || key->revoked_at.has_value();
  } catch (const std::exception& e) {
    // The credential was just verified; a store that fails now cannot say
    // otherwise. The revocation poll closes it once the store answers.
    spdlog::error("admission: key store failed rechecking {}: {}", p.key_id, e.what());
    return false;
  }
}

bool origin_allowed(std::string_view origin, std::string_view host, const std::vector<std::string>& allowed) {
  if (allowed.empty()) {
    // Same host: strip the scheme and compare the authority with Host.
    const auto sep = origin.find("://");
    const auto authority = sep == std::string_view::npos ? origin : origin.substr(sep + 3);
    return !host.empty() && iequals(authority, host);
  }
  for (const auto& a : allowed) {
    if (a == "*" || iequals(a, origin)) return true;
  }
  return false;
}

AdmissionOutcome admit_upgrade(const UpgradeRequest& req, HttpContext& ctx) {
  using metrics::Refusal;
  const auto& cfg = ctx.config;
  RequestTarget target;
  if (!parse_target(req.target, target)) {
    return refuse(400, Refusal::bad_request, "bad_request", "malformed request target");
  }
  if (auto vsn = query_param(target, "vsn"); vsn && *vsn != "2.0.0") {
    return refuse(400, Refusal::unsupported_version, "unsupported_version", "only vsn=2.0.0 is supported");
  }
  if (ctx.draining.load()) {
    auto o = refuse(503, Refusal::draining, "draining", "the server is shutting down");
    o.refusal.headers.emplace_back("Retry-After", "5");
    return o;
  }
  if (req.origin && !origin_allowed(*req.origin, req.host, cfg.allowed_origins)) {
    return refuse(403, Refusal::forbidden_origin, "forbidden_origin", "this Origin is not allowed to connect");
  }

  std::string credential;
  if (auto t = query_param(target, "token")) {
    credential = std::string(*t);
  } else if (auto k = query_param(target, "api_key")) {
    credential = std::string(*k);
  } else {
    credential = std::string(auth::bearer(req.authorization));
  }
  if (credential.empty()) {
    return refuse(401, Refusal::unauthorized, "unauthorized",
                  "send a token or api_key query parameter or an Authorization: Bearer header");
  }
  auth::AuthResult auth;
  try {
    auth = auth::authenticate(credential, ctx.services.keys, ctx.services.jwt_secret, unix_s());
  } catch (const std::exception& e) {
    // The key store failed (a SQLite error): this upgrade cannot be judged.
    // Refused as unavailable, never thrown into the I/O thread.
    spdlog::error("admission: key store failed: {}", e.what());
    auto o = refuse(503, Refusal::store_unavailable, "unavailable", "the key store is unavailable; retry later");
    o.refusal.headers.emplace_back("Retry-After", "1");
    return o;
  }
  if (auth.failure == auth::AuthFailure::token_expired) {
    return refuse(401, Refusal::token_expired, "token_expired", auth.message);
  }
  if (!auth.ok()) return refuse(401, Refusal::unauthorized, "unauthorized", auth.message);

  AdmissionOutcome o;
  const auto admitted =
      ctx.limiter.admit(req.peer_ip, limit_key(auth.principal), !auth.principal.unlimited, o.permit);
  if (admitted.verdict != limits::Admission::ok) {
    const bool rate = admitted.verdict == limits::Admission::connection_rate_exceeded;
    auto r = refuse(429, rate ? Refusal::connection_rate_exceeded : Refusal::too_many_connections,
                    rate ? "connection_rate_exceeded" : "too_many_connections",
                    rate ? "too many new connections from this address; retry later"
                         : "too many concurrent connections");
    r.refusal.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(1, admitted.retry_after_s)));
    return r;
  }
  o.ok = true;
  o.principal = std::move(auth.principal);
  return o;
}

}  // namespace synapse::net
