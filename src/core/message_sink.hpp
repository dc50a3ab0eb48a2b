// Where a connection's outgoing messages go: the one call the fan-out path
// makes per subscriber. The network layer's connection implements it.
#pragma once

#include <cstddef>

#include "wire/message.hpp"

namespace synapse {

class MessageSink {
 public:
  // Queues a framed message; called on the sink's own I/O thread.
  virtual void send(wire::Message msg) = 0;
  // Queues `n` messages and writes what it can at once, in one syscall: the
  // fan-out path hands each subscriber its whole batch while the
  // connection is hot in cache. Never tears the connection down from inside
  // the call (an error closes it later), so callers may be iterating lists
  // that a teardown would change.
  virtual void send_batch(const wire::Message* const* msgs, std::size_t n) = 0;

 protected:
  ~MessageSink() = default;
};

}  // namespace synapse
