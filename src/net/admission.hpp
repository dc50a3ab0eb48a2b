// Whether an upgrade request may become a WebSocket connection (protocol
// section 1): version, origin, credentials and connection limits, in that
// order. Free of socket types.
#pragma once

#include <optional>
#include <string>

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

AdmissionOutcome admit_upgrade(const UpgradeRequest& req, HttpContext& ctx);

// The per-credential limit's key: "key:<id>" for an API key and for a token
// minted from one, "sub:<agent>" for a token without a key id.
std::string limit_key(const auth::Principal& p);

// Whether the key behind an admitted principal was revoked since (checked
// again when the connection is registered on its thread; see http_session).
bool revoked_since_admission(const auth::Principal& p, auth::KeyStore& keys);

// The allow-list rule: "*" allows any Origin; otherwise an exact
// (case-insensitive) match; an empty list allows only the server's own host.
bool origin_allowed(std::string_view origin, std::string_view host, const std::vector<std::string>& allowed);

}  // namespace synapse::net
