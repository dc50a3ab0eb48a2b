// Compiled in the cortex layer: what cortex may include.
#include "core/crypto.hpp"
#include "cortex/runs.hpp"
#include "hooks/http_client.hpp"
#include "protocol/close_codes.hpp"

int synapse_layers_allowed_cortex() { return synapse::protocol::close_code::idle_timeout; }
