// Compiled in the cortex layer: a service must not include a channel.
#include "channels/session.hpp"
