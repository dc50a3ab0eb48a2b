// Whether an upgrade request may become a WebSocket connection (protocol
// section 1): version, origin, credentials and connection limits, in that
// order. Free of socket types.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/poster.hpp"

#include "auth/principal.hpp"
#include "limits/connection_limiter.hpp"
#include "metrics/metrics.hpp"
#include "net/http_api.hpp"

namespace synapse::auth {
class KeyStore;
}

namespace synapse::net {

struct UpgradeRequest {
  std::string target;
  std::string authorization;
  std::optional<std::string> origin;
  std::string host;
  std::string peer_ip;
};

struct AdmissionOutcome {
  bool ok = false;
  HttpResponse refusal;  // when !ok
  metrics::Refusal refusal_reason = metrics::Refusal::bad_request;
  auth::Principal principal;
  limits::Permit permit;
};

// Contract: decides the upgrade and calls `done(outcome)` exactly once.
// Without an identity provider, a connect hook or shared connection counts
// it decides at once, before returning. Three steps may wait on the
// network, never on the calling thread: a token naming a kid the JWKS does
// not hold asks for one (rate-limited) refresh and is judged again after
// it; in a cluster the connection limits are checked against the counts
// in Redis (limiter.admit_async; no answer within its timeout admits on
// this node's counts); an admitted connection is put to the connect hook
// (hooks.connect_url). Their completions run `done` through `post`, on the
// caller's thread. The limiter permit is held while the hook decides, and
// released if it denies.
using AdmissionDone = std::function<void(AdmissionOutcome)>;
void admit_upgrade(const UpgradeRequest& req, HttpContext& ctx, Poster post, AdmissionDone done);

// The per-credential limit's key: "key:<id>" for an API key and for a token
// minted from one, "sub:<agent>" for a token without a key id.
std::string limit_key(const auth::Principal& p);

// Whether the key behind an admitted principal was revoked since (checked
// again when the connection is registered on its thread; see http_session).
bool revoked_since_admission(const auth::Principal& p, auth::KeyStore& keys);
inline bool revoked_since_admission(const std::shared_ptr<const auth::Principal>& p, auth::KeyStore& keys) {
  return revoked_since_admission(*p, keys);
}

// The allow-list rule: "*" allows any Origin; otherwise an exact
// (case-insensitive) match or a pattern (origin_pattern_matches); an empty
// list allows only the server's own host.
bool origin_allowed(std::string_view origin, std::string_view host, const std::vector<std::string>& allowed);
// One allow-list entry against an Origin. Patterns: `scheme://*.domain`
// (one or more labels before `domain`, never `domain` itself) and a port of
// `*` (any port, or none), e.g. `http://localhost:*`, `https://*.example.com`.
// Without `:*` the ports must be equal (both absent, or the same number).
// Scheme and host compare case-insensitively; an Origin with a path, user
// info or characters outside a host name never matches a pattern.
bool origin_pattern_matches(std::string_view pattern, std::string_view origin);
// The refusal's text for an Origin that is not allowed: names the Origin
// and the option that would allow it.
std::string origin_refusal(std::string_view origin, bool list_empty);

}  // namespace synapse::net
