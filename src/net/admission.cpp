#include "net/admission.hpp"

#include <algorithm>

#include "auth/authenticator.hpp"
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
  auto auth = auth::authenticate(credential, ctx.services.keys, ctx.services.jwt_secret, unix_s());
  if (auth.failure == auth::AuthFailure::token_expired) {
    return refuse(401, Refusal::token_expired, "token_expired", auth.message);
  }
  if (!auth.ok()) return refuse(401, Refusal::unauthorized, "unauthorized", auth.message);

  AdmissionOutcome o;
  // Tokens count against their sub, keys against their id.
  const std::string& key = auth.principal.via_token ? auth.principal.agent_id : auth.principal.key_id;
  const auto admitted = ctx.limiter.admit(req.peer_ip, (auth.principal.via_token ? "sub:" : "key:") + key,
                                          !auth.principal.unlimited, o.permit);
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
