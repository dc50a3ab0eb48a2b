// The rates a credential's clients spend at (protocol section 7), derived
// from the configuration and the principal. One place for the rule, shared
// by the WebSocket session and the MCP endpoint's sessions.
#pragma once

#include "auth/principal.hpp"
#include "config/config.hpp"
#include "limits/rate_limiter.hpp"

namespace synapse::channels {

// Queries and tool calls: the key's own queries_per_min (its burst the same
// number), else the configuration's rate and burst; unlimited for an
// unlimited credential.
inline limits::Rate query_rate(const config::Config& cfg, const auth::Principal& p) noexcept {
  if (p.unlimited) return {};
  if (p.rates.queries_per_min >= 0) return limits::Rate::per_minute(p.rates.queries_per_min, p.rates.queries_per_min);
  return limits::Rate::per_minute(cfg.queries_per_min, cfg.query_burst);
}

}  // namespace synapse::channels
