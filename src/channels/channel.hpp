// A joined topic's handler. One per (connection, topic); lives on the
// connection's thread.
#pragma once

#include <string_view>

#include "protocol/envelope.hpp"
#include "protocol/flat_frame.hpp"

namespace synapse::channels {

class Channel {
 public:
  virtual ~Channel() = default;
  // A client event other than phx_join / phx_leave on this topic.
  virtual void handle_in(const protocol::Envelope& env) = 0;
  // The hot-path variant (protocol/flat_frame.hpp): a channel that answers
  // true for `event` gets the frames of that event that decode_flat() reads
  // through handle_flat() instead of handle_in(), after the same checks and
  // rate limit. `env` then has no JSON tree (payload is null, payload_raw
  // is set); `frame` holds the payload's string fields.
  virtual bool takes_flat(std::string_view event) const {
    (void)event;
    return false;
  }
  // Whether takes_flat() can answer true for some event: a session none of
  // whose channels does never tries the flat decode, so other frames are
  // not parsed twice.
  virtual bool takes_any_flat() const { return false; }
  virtual void handle_flat(const protocol::Envelope& env, const protocol::FlatFrame& frame) {
    (void)env;
    (void)frame;
  }
  // The member leaves (phx_leave, duplicate join, crash, disconnect); after
  // this the channel sends nothing more.
  virtual void leave() = 0;
  // The server is shutting down while the socket is still open: finish work
  // with its final event now. leave() follows.
  virtual void shutdown() {}
  // Whether the join is still waiting for its answer (a cluster's pub/sub
  // join): the channel then replies to it later, on this thread, and tells
  // the session with Session::join_done. Meanwhile the session holds the
  // client's events for the topic.
  virtual bool join_pending() const { return false; }
};

}  // namespace synapse::channels
