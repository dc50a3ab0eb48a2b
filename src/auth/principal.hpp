// Who a connection or HTTP request acts as, once its credential is checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace synapse::auth {

// Per-key rate overrides; a negative value means "use the server default".
struct RateOverrides {
  std::int64_t msgs_per_min = -1;
  std::int64_t queries_per_min = -1;
  std::int64_t burst = -1;
};

struct Principal {
  std::string agent_id;
  std::string tenant;
  std::string key_id;  // the API key, or the key that minted the token
  bool admin = false;
  bool publish = false;
  bool unlimited = false;  // skips rate and per-key connection limits
  bool via_token = false;
  std::int64_t token_exp = 0;  // unix seconds; 0 without a token
  bool has_topics = false;     // token `topics` claim present
  std::vector<std::string> topics;
  RateOverrides rates;
};

}  // namespace synapse::auth
