// Compiled in the leaf layer: protocol/ must not include a service.
#include "pubsub/broker.hpp"
