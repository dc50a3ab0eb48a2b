// A pub/sub topic (protocol section 5): joining subscribes, every other
// client event publishes.
#pragma once

#include <memory>

#include "channels/channel.hpp"

namespace synapse::channels {

class Session;

// Checks the join and subscribes; on refusal replies with the error and
// returns null. On success the join reply, any recovered messages and the
// presence state have been queued, in that order.
std::unique_ptr<Channel> join_pubsub(Session& session, const protocol::Envelope& env);

// The token's topics claim and the credential's capabilities (subscribe;
// presence for a join with meta or presence: true; history for recover).
// Replies forbidden and returns false when they refuse the join.
bool pubsub_join_permitted(Session& session, const protocol::Envelope& env);

// True when `v` holds a NUL character in any string or key.
bool contains_nul(const boost::json::value& v);

}  // namespace synapse::channels
