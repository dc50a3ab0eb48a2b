// A joined topic's handler. One per (connection, topic); lives on the
// connection's thread.
#pragma once

#include "protocol/envelope.hpp"

namespace synapse::channels {

class Channel {
 public:
  virtual ~Channel() = default;
  // A client event other than phx_join / phx_leave on this topic.
  virtual void handle_in(const protocol::Envelope& env) = 0;
  // The member leaves (phx_leave, duplicate join, crash, disconnect); after
  // this the channel sends nothing more.
  virtual void leave() = 0;
  // The server is shutting down while the socket is still open: finish work
  // with its final event now. leave() follows.
  virtual void shutdown() {}
};

}  // namespace synapse::channels
