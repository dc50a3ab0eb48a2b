#include "net/admission.hpp"

#include <algorithm>
#include <atomic>
#include <thread>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>

#include "auth/authenticator.hpp"
#include "auth/jwks.hpp"
#include "auth/key_store.hpp"
#include "hooks/hooks.hpp"
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
    if (a == "*" || iequals(a, origin) || origin_pattern_matches(a, origin)) return true;
  }
  return false;
}

namespace {

struct OriginParts {
  std::string_view scheme, host, port;
  bool has_port = false;
};

bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

// scheme://host[:port], nothing else. `pattern` lets the host start with
// "*." and the port be "*".
std::optional<OriginParts> split_origin(std::string_view s, bool pattern) {
  const auto sep = s.find("://");
  if (sep == std::string_view::npos || sep == 0) return std::nullopt;
  OriginParts p;
  p.scheme = s.substr(0, sep);
  std::string_view authority = s.substr(sep + 3);
  if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    p.port = authority.substr(colon + 1);
    p.has_port = true;
    authority = authority.substr(0, colon);
    const bool star = pattern && p.port == "*";
    if (!star && (p.port.empty() || p.port.size() > 5 || p.port.find_first_not_of("0123456789") != std::string_view::npos)) {
      return std::nullopt;
    }
  }
  p.host = authority;
  std::string_view check = p.host;
  if (pattern && check.starts_with("*.")) check.remove_prefix(2);
  if (check.empty() || check.front() == '.' || check.back() == '.') return std::nullopt;
  for (char c : check) {
    if (!host_char(c)) return std::nullopt;
  }
  return p;
}

}  // namespace

bool origin_pattern_matches(std::string_view pattern, std::string_view origin) {
  if (pattern.find('*') == std::string_view::npos) return iequals(pattern, origin);
  const auto pat = split_origin(pattern, true);
  const auto org = split_origin(origin, false);
  if (!pat || !org || !iequals(pat->scheme, org->scheme)) return false;
  if (pat->host.starts_with("*.")) {
    const std::string_view domain = pat->host.substr(1);  // ".example.com"
    if (org->host.size() <= domain.size() || !iequals(org->host.substr(org->host.size() - domain.size()), domain)) {
      return false;
    }
  } else if (!iequals(pat->host, org->host)) {
    return false;
  }
  if (pat->has_port && pat->port == "*") return true;
  return pat->has_port == org->has_port && pat->port == org->port;
}

std::string origin_refusal(std::string_view origin, bool list_empty) {
  std::string text = "Origin '" + std::string(origin) + "' is not allowed to connect";
  text += list_empty ? " (with no allow list, only this server's own host is)" : "";
  text += "; add it, or a pattern such as 'https://*.example.com' or 'http://localhost:*', to "
          "websocket.allowed_origins (--allowed-origins)";
  return text;
}

namespace {

// The checks that need nothing but the request: target, version, draining,
// Origin. Returns the refusal, or nullopt to go on.
std::optional<AdmissionOutcome> check_request(const UpgradeRequest& req, HttpContext& ctx, RequestTarget& target) {
  using metrics::Refusal;
  const auto& cfg = ctx.config;
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
    const std::string why = origin_refusal(*req.origin, cfg.allowed_origins.empty());
    spdlog::warn("refused peer={}: {}", req.peer_ip, why);
    return refuse(403, Refusal::forbidden_origin, "forbidden_origin", why);
  }
  return std::nullopt;
}

// The credential. Sets `unknown_kid` when a refresh of the JWKS might
// change the answer. An ok outcome has its principal and no permit yet.
AdmissionOutcome check_credential(HttpContext& ctx, const std::string& credential,
                                  bool& unknown_kid) {
  using metrics::Refusal;
  unknown_kid = false;
  if (credential.empty()) {
    return refuse(401, Refusal::unauthorized, "unauthorized",
                  "send a token or api_key query parameter or an Authorization: Bearer header");
  }
  auth::AuthResult auth;
  try {
    auth = auth::authenticate(credential, ctx.services.keys, ctx.services.jwt_secret, ctx.services.idp, unix_s());
  } catch (const std::exception& e) {
    // The key store failed (a SQLite error): this upgrade cannot be judged.
    // Refused as unavailable, never thrown into the I/O thread.
    spdlog::error("admission: key store failed: {}", e.what());
    auto o = refuse(503, Refusal::store_unavailable, "unavailable", "the key store is unavailable; retry later");
    o.refusal.headers.emplace_back("Retry-After", "1");
    return o;
  }
  unknown_kid = auth.unknown_kid;
  if (auth.failure == auth::AuthFailure::token_expired) {
    return refuse(401, Refusal::token_expired, "token_expired", auth.message);
  }
  if (!auth.ok()) return refuse(401, Refusal::unauthorized, "unauthorized", auth.message);
  AdmissionOutcome o;
  o.ok = true;
  o.principal = std::move(auth.principal);
  return o;
}

AdmissionOutcome limit_refusal(const limits::AdmissionResult& admitted) {
  using metrics::Refusal;
  const bool rate = admitted.verdict == limits::Admission::connection_rate_exceeded;
  auto r = refuse(429, rate ? Refusal::connection_rate_exceeded : Refusal::too_many_connections,
                  rate ? "connection_rate_exceeded" : "too_many_connections",
                  rate ? "too many new connections from this address; retry later" : "too many concurrent connections");
  r.refusal.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(1, admitted.retry_after_s)));
  return r;
}

std::string connect_hook_body(const UpgradeRequest& req, const auth::Principal& p) {
  boost::json::object o{{"hook", "connect"},  {"agent_id", p.agent_id}, {"tenant", p.tenant},
                        {"key_id", p.key_id}, {"via_token", p.via_token}, {"via_idp", p.via_idp},
                        {"peer_ip", req.peer_ip}};
  if (req.origin) o["origin"] = *req.origin;
  return boost::json::serialize(o);
}

// The last step: the connect hook, when configured.
void finish_admission(const UpgradeRequest& req, HttpContext& ctx, AdmissionOutcome o, Poster post,
                      AdmissionDone done) {
  hooks::Hooks* hooks = ctx.services.hooks;
  if (!o.ok || !hooks || !hooks->enabled(hooks::Hook::connect)) {
    done(std::move(o));
    return;
  }
  auto pending = std::make_shared<AdmissionOutcome>(std::move(o));
  hooks->call(hooks::Hook::connect, connect_hook_body(req, pending->principal),
              [pending, post = std::move(post), done = std::move(done)](hooks::Verdict v) mutable {
                post([pending, v = std::move(v), done = std::move(done)]() mutable {
                  if (!v.allow) {
                    // The permit goes with the outcome that is dropped here.
                    const std::string why = v.failed ? "the application's connect hook did not answer (" + v.reason +
                                                           "); hooks.connect_failure is deny"
                                                     : (v.reason.empty() ? "refused by the application" : v.reason);
                    done(refuse(403, metrics::Refusal::unauthorized, "forbidden", why));
                    return;
                  }
                  pending->principal.hook_data = std::move(v.data_json);
                  done(std::move(*pending));
                });
              });
}

// The connection limits, then finish_admission. On a single node the
// limiter answers at once; in a cluster it also asks the shared counts in
// Redis, and the answer comes back through `post` (this thread never waits).
void limit_and_finish(const UpgradeRequest& req, HttpContext& ctx, AdmissionOutcome o, Poster post,
                      AdmissionDone done) {
  if (!o.ok) {
    done(std::move(o));
    return;
  }
  // A fleet of agent workers shares one worker key: the per-key connection
  // bound is a client limit and does not apply to it (the per-IP ones do).
  const bool count_key = !o.principal.unlimited && !o.principal.worker;
  if (!ctx.limiter.shares()) {
    const auto admitted = ctx.limiter.admit(req.peer_ip, limit_key(o.principal), count_key, o.permit);
    if (admitted.verdict != limits::Admission::ok) {
      done(limit_refusal(admitted));
      return;
    }
    finish_admission(req, ctx, std::move(o), std::move(post), std::move(done));
    return;
  }
  auto pending = std::make_shared<AdmissionOutcome>(std::move(o));
  const std::string key = limit_key(pending->principal);
  // Answered inside the call (nothing to ask the cluster, or refused
  // locally): go on here, without a hop.
  struct Caller {
    std::thread::id thread = std::this_thread::get_id();
    std::atomic<bool> inside{true};
  };
  auto caller = std::make_shared<Caller>();
  ctx.limiter.admit_async(
      req.peer_ip, key, count_key,
      [req, &ctx, pending, post, caller, done = std::move(done)](limits::AdmissionResult admitted,
                                                                  limits::Permit permit) mutable {
        // On the shared store's thread (or this one, at once): the permit
        // rides with the outcome, which only the next step touches.
        pending->permit = std::move(permit);
        auto next = [req = std::move(req), &ctx, pending, post, admitted, done = std::move(done)]() mutable {
          if (admitted.verdict != limits::Admission::ok) {
            done(limit_refusal(admitted));
            return;
          }
          finish_admission(req, ctx, std::move(*pending), std::move(post), std::move(done));
        };
        if (caller->inside.load() && std::this_thread::get_id() == caller->thread) {
          next();
        } else {
          post(std::move(next));
        }
      });
  caller->inside.store(false);
}

}  // namespace

void admit_upgrade(const UpgradeRequest& req, HttpContext& ctx, Poster post, AdmissionDone done) {
  RequestTarget target;
  if (auto refused = check_request(req, ctx, target)) {
    done(std::move(*refused));
    return;
  }
  std::string credential;
  if (auto t = query_param(target, "token")) {
    credential = std::string(*t);
  } else if (auto k = query_param(target, "api_key")) {
    credential = std::string(*k);
  } else {
    credential = std::string(auth::bearer(req.authorization));
  }
  bool unknown_kid = false;
  AdmissionOutcome o = check_credential(ctx, credential, unknown_kid);
  if (!unknown_kid || !ctx.services.idp) {
    limit_and_finish(req, ctx, std::move(o), std::move(post), std::move(done));
    return;
  }
  // The identity provider may have rotated its keys: one refresh (shared
  // with every other token waiting for it, and rate-limited), then judged
  // again on this thread. A second unknown kid is final.
  ctx.services.idp->keys.refresh_for_unknown(
      [req, &ctx, credential = std::move(credential), post, done = std::move(done)]() mutable {
        auto again = [req = std::move(req), &ctx, credential = std::move(credential), post,
                      done = std::move(done)]() mutable {
          bool still_unknown = false;
          AdmissionOutcome o2 = check_credential(ctx, credential, still_unknown);
          limit_and_finish(req, ctx, std::move(o2), post, std::move(done));
        };
        post(std::move(again));
      });
}

}  // namespace synapse::net
