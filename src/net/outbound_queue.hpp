// A connection's outbound queue: shared, immutable, already-framed messages,
// measured in bytes. Everything waiting leaves in one gather write.
//
// A ring of Message handles (one pointer each, power-of-two capacity); a
// queue that drains keeps a small ring (64 slots, 512 bytes) so bursts do not
// regrow it, and returns anything larger. A queue that stays empty from one
// release_if_idle() to the next (the thread's sweep, 4 times a second)
// returns its ring too, so an idle connection holds none.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "wire/message.hpp"

namespace synapse::net {

class OutboundQueue {
 public:
  OutboundQueue() = default;
  ~OutboundQueue() { free_ring(); }
  OutboundQueue(const OutboundQueue&) = delete;  // ring_ may point into the object
  OutboundQueue& operator=(const OutboundQueue&) = delete;

  // `exempt`: the message's bytes are left out of counted_bytes() while
  // they wait (a join's initial output, see channels::Socket::send_initial).
  void push(wire::Message msg, bool exempt = false);
  bool empty() const noexcept { return count_ == 0; }
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t size() const noexcept { return count_; }
  // Unsent bytes of exempt messages, and the rest: what the slow-consumer
  // bound is checked against.
  std::size_t exempt_bytes() const noexcept;
  std::size_t counted_bytes() const noexcept { return bytes_ - exempt_bytes(); }

  // Fills up to `max` iovecs with the waiting bytes, oldest first.
  std::size_t gather(iovec* iov, std::size_t max) const noexcept;
  // Drops `n` written bytes; returns how many messages were completed.
  std::size_t consume(std::size_t n) noexcept;
  // Drops everything and frees the ring.
  void clear() noexcept;
  // Frees the ring if the queue is empty and nothing was pushed since the
  // previous call.
  void release_if_idle() noexcept;
  // Drops every message not yet started; a partly written head stays so the
  // byte stream never breaks inside a frame.
  void drop_unsent() noexcept;

 private:
  // Exempt messages as [begin, end) positions in the byte stream, counted
  // from where `consumed` was 0 (when the record was made; the stream's
  // end is then always consumed + bytes_). Usually there is none, so the
  // write path only tests for the pointer, and a queue keeps no stream
  // positions of its own (16 bytes of every connection).
  struct Exempt {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    std::uint64_t consumed = 0;  // bytes written since the record was made
  };

  void grow();
  void free_ring() noexcept;
  std::size_t slot(std::size_t i) const noexcept { return (head_ + i) & (capacity_ - 1); }

  // Every connection has one of these: the fields are sized to keep it
  // small (a ring of at most 2^32 slots; exempt ranges, rare, behind a
  // pointer). The first slot is `one_`, inside the object: a queue that
  // never holds more than one message at a time (a join reply, a heartbeat
  // reply) allocates no ring at all; the second message moves it to the heap.
  wire::Message* ring_ = nullptr;  // &one_ when capacity_ == 1, else owned
  wire::Message one_;
  std::uint32_t capacity_ = 0;
  std::uint32_t head_ = 0;
  std::uint32_t count_ = 0;
  bool pushed_recently_ = false;  // since the last release_if_idle()
  std::size_t bytes_ = 0;
  std::size_t head_sent_ = 0;  // bytes of the head message already written
  std::unique_ptr<Exempt> exempt_;  // null: no exempt message waits
};

}  // namespace synapse::net
