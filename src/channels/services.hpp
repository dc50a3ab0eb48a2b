// The services a channel may use, created by main and handed down by
// reference. Nothing here is global.
#pragma once

#include <string>

namespace synapse::config {
struct Config;
}
namespace synapse::metrics {
struct Metrics;
}
namespace synapse::auth {
class KeyStore;
struct IdentityProvider;
}
namespace synapse::hooks {
class Hooks;
}
namespace synapse::pubsub {
class Broker;
}
namespace synapse::cortex {
class Cortex;
class RunRegistry;
class AgentHub;
class AgentRoutes;
}

namespace synapse::channels {

class ChannelRegistry;

struct Services {
  const config::Config& config;
  metrics::Metrics& metrics;
  auth::KeyStore& keys;
  const std::string& jwt_secret;
  pubsub::Broker& broker;
  cortex::Cortex& cortex;
  // Identity-provider tokens (auth.jwks_url / auth.jwks_file); null: HS256 only.
  const auth::IdentityProvider* idp = nullptr;
  // Backend hooks (hooks.*); null: none configured.
  hooks::Hooks* hooks = nullptr;
  // The node's cortex runs (cortex/runs.hpp): they outlive connections.
  cortex::RunRegistry* runs = nullptr;
  // Which channel serves a topic (channels/channel_registry.hpp), built in main.
  const ChannelRegistry* channels = nullptr;
  // The agent workers connected to this node (cortex/agent_hub.hpp), and
  // who answers each agent's queries (cortex/agent_routes.hpp). Null routes:
  // the built-in engine answers every agent.
  cortex::AgentHub* hub = nullptr;
  const cortex::AgentRoutes* routes = nullptr;
};

}  // namespace synapse::channels
