// What a channel sees of its connection. Implemented by the network layer;
// every method is called on the connection's own I/O thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "core/message_sink.hpp"
#include "core/poster.hpp"
#include "wire/message.hpp"

namespace synapse::channels {

class Socket : public MessageSink {
 public:
  // send(msg) (from MessageSink) queues a framed message. It never calls back
  // into channels: a full queue closes the connection later, from a fresh stack.
  // Starts the close handshake with `code`; channels are torn down later,
  // from a fresh stack, so a handler may call this and return normally.
  virtual void close(std::uint16_t code, std::string_view reason) = 0;
  // Queues a join's initial output (recovered messages, presence_state).
  // While it waits it does not count toward the slow-consumer bound, up to
  // an allowance per connection (protocol.md section 7): a client that reads
  // normally must get a state larger than the bound. Past the allowance it
  // counts like send().
  virtual void send_initial(wire::Message msg) { send(std::move(msg)); }
  virtual std::uint64_t id() const = 0;
  virtual std::size_t thread_index() const = 0;
  // Runs tasks on this connection's thread for as long as it is open; tasks
  // posted after it closed are dropped. Safe to call from any thread.
  virtual Poster poster() = 0;
  // Runs `task` on this thread after `delay_ms`, unless the connection has
  // closed by then.
  virtual void after(std::int64_t delay_ms, Task task) = 0;

 protected:
  ~Socket() = default;
};

}  // namespace synapse::channels
