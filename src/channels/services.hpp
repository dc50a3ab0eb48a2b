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
}
namespace synapse::pubsub {
class Broker;
}
namespace synapse::cortex {
class Cortex;
}

namespace synapse::channels {

struct Services {
  const config::Config& config;
  metrics::Metrics& metrics;
  auth::KeyStore& keys;
  const std::string& jwt_secret;
  pubsub::Broker& broker;
  cortex::Cortex& cortex;
};

}  // namespace synapse::channels
