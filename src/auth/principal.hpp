// Who a connection or HTTP request acts as, once its credential is checked.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "auth/capabilities.hpp"

namespace synapse::auth {

// Per-key rate overrides; a negative value means "use the server default".
struct RateOverrides {
  std::int64_t msgs_per_min = -1;
  std::int64_t queries_per_min = -1;
  std::int64_t burst = -1;
  bool operator==(const RateOverrides&) const = default;
};

struct Principal {
  std::string agent_id;
  std::string tenant;
  std::string key_id;  // the API key, or the key that minted the token
  bool admin = false;
  bool publish = false;
  bool unlimited = false;  // skips rate and per-key connection limits
  // A worker credential (keys create --worker, or a token with role "worker"):
  // it serves agents on `agent:` topics and may not query them
  // (docs/protocol.md section 10).
  bool worker = false;
  bool via_token = false;
  std::int64_t token_exp = 0;  // unix seconds; 0 without a token
  bool has_topics = false;     // token `topics` claim present
  std::vector<std::string> topics;
  RateOverrides rates;
  // Channel capabilities (auth/capabilities.hpp): the API key's, and the
  // token's `caps` claim. Absent = unrestricted; check with permitted().
  std::optional<Capabilities> key_caps;
  std::optional<Capabilities> token_caps;
  // A token verified against the JWKS (an identity provider's), not minted here.
  bool via_idp = false;
  // The connect hook's `data`, as JSON object text (empty without one);
  // sent along to the join and publish hooks.
  std::string hook_data;

  bool operator==(const Principal&) const = default;
};

}  // namespace synapse::auth
