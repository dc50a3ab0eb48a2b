// `cortex:<agent_id>` (protocol section 4): queries and tools run on the
// cortex's workers and stream back as thoughts and progress, each run ending
// with exactly one terminal event.
#pragma once

#include <memory>

#include "channels/channel.hpp"

namespace synapse::channels {

class Session;

// Checks the join (own agent, or an admin key); on refusal replies with the
// error and returns null.
std::unique_ptr<Channel> join_cortex(Session& session, const protocol::Envelope& env);

}  // namespace synapse::channels
