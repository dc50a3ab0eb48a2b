// A server-to-client WebSocket message, framed once and shared.
//
// Server frames carry no mask, so the bytes of a message are the same for every
// recipient: the header is written when the message is built and every
// subscriber's outbound queue holds a reference to the same block. Copying a
// Message is one atomic increment; nothing is allocated per recipient.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <utility>

namespace synapse::wire {

enum class Opcode : std::uint8_t {
  continuation = 0x0,
  text = 0x1,
  binary = 0x2,
  close = 0x8,
  ping = 0x9,
  pong = 0xA,
};

class Message {
 public:
  Message() noexcept = default;
  Message(const Message& other) noexcept : rep_(other.rep_) { retain(); }
  Message(Message&& other) noexcept : rep_(std::exchange(other.rep_, nullptr)) {}
  Message& operator=(const Message& other) noexcept {
    Message copy(other);
    swap(copy);
    return *this;
  }
  Message& operator=(Message&& other) noexcept {
    Message moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~Message() { release(); }

  // A text frame holding `payload` (which must be UTF-8).
  static Message text(std::string_view payload);
  // A close frame; `reason` is cut to fit the 125-byte control frame limit.
  static Message close(std::uint16_t code, std::string_view reason);
  static Message pong(std::string_view payload);
  static Message frame(Opcode op, std::string_view payload);
  // A text frame whose payload is the concatenation of `parts`: lets a caller
  // splice a few bytes into a pre-serialized message with one allocation.
  static Message text_parts(std::initializer_list<std::string_view> parts);

  const char* data() const noexcept { return rep_ ? rep_->bytes : nullptr; }
  std::size_t size() const noexcept { return rep_ ? rep_->size : 0; }
  // The frame's payload, without the WebSocket header.
  std::string_view payload() const noexcept {
    return rep_ ? std::string_view(rep_->bytes + rep_->header, rep_->size - rep_->header)
                : std::string_view();
  }
  explicit operator bool() const noexcept { return rep_ != nullptr; }
  // Whether this frame carries RSV1 (a permessage-deflate compressed message).
  bool compressed() const noexcept {
    return rep_ && (static_cast<unsigned char>(rep_->bytes[0]) & 0x40) != 0;
  }

  // The frame to send to a client that negotiated permessage-deflate
  // (wire/deflate.hpp): the same message compressed (RSV1 set), or this very
  // message when it is a control frame, its payload is shorter than
  // `threshold` bytes, or compression would not make it smaller.
  //
  // Contract: the variant is computed once per message, by the first caller
  // on any thread, and kept with the message (one pointer in the shared
  // block); every later call, on any thread, returns a reference to the
  // same bytes: one atomic load and one increment, nothing allocated, so
  // fan-out to many subscribers compresses once. Two threads asking at the
  // same moment may both compress; one result wins and the other is freed.
  // `threshold` and `level` must be the same for every call on a message
  // (they are the server's configuration).
  Message deflated(std::size_t threshold, int level) const;
  void swap(Message& other) noexcept { std::swap(rep_, other.rep_); }

 private:
  struct Rep {
    std::atomic<std::uint32_t> refs;
    std::uint32_t size;    // header + payload
    std::uint32_t header;  // header length
    // The compressed variant (see deflated()): null until asked for, then a
    // Rep holding one reference, or `plain_marker()` when this frame goes
    // uncompressed.
    std::atomic<Rep*> deflated;
    char bytes[1];         // really `size` bytes
  };
  static Rep* plain_marker() noexcept;
  static Rep* allocate(std::size_t total);
  static void unref(Rep* rep) noexcept;
  explicit Message(Rep* rep) noexcept : rep_(rep) {}
  void retain() noexcept {
    if (rep_) rep_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  void release() noexcept;

  Rep* rep_ = nullptr;
};

}  // namespace synapse::wire
