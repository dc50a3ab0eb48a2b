// `agent:<agent_id>` and `agent:*` (docs/protocol.md section 10): where an
// agent worker serves runs. The join registers the worker with the node's
// AgentHub; the hub pushes `run` and `cancel` here, and the worker's events
// go to the hub, which applies them to the runs it gave this worker.
#pragma once

#include <memory>

#include "channels/channel.hpp"

namespace synapse::channels {

class Session;

// Checks the join (a worker credential, for its own agent or `*`) and the
// payload {capacity?, tools?}; on refusal replies with the error and returns
// null.
std::unique_ptr<Channel> join_agent(Session& session, const protocol::Envelope& env);

}  // namespace synapse::channels
