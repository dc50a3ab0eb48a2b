// Where a connection's outgoing messages go: the one call the fan-out path
// makes per subscriber. The network layer's connection implements it.
#pragma once

#include "wire/message.hpp"

namespace synapse {

class MessageSink {
 public:
  // Queues a framed message; called on the sink's own I/O thread.
  virtual void send(wire::Message msg) = 0;

 protected:
  ~MessageSink() = default;
};

}  // namespace synapse
