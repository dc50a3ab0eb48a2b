// RFC 6455 framing: header encoding and a streaming frame reader.
//
// Pure functions and a state machine over caller-supplied bytes; no I/O. The
// server's connections and the load generator both use it, and it is fuzzed.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "wire/message.hpp"
#include "wire/utf8.hpp"

namespace synapse::wire {

inline constexpr std::size_t max_header_size = 14;

// RFC 6455 close codes. Synapse's own (4000-4008) are in
// protocol/close_codes.hpp.
namespace close_code {
inline constexpr std::uint16_t normal = 1000;
inline constexpr std::uint16_t going_away = 1001;
inline constexpr std::uint16_t protocol_error = 1002;
inline constexpr std::uint16_t no_status = 1005;
inline constexpr std::uint16_t abnormal = 1006;
inline constexpr std::uint16_t invalid_payload = 1007;
inline constexpr std::uint16_t policy_violation = 1008;
inline constexpr std::uint16_t too_big = 1009;
inline constexpr std::uint16_t internal_error = 1011;
}  // namespace close_code

// Writes a frame header into `out` (at least max_header_size bytes) and
// returns its length. `mask` is 4 bytes for client frames, null for server ones.
std::size_t encode_header(std::uint8_t* out, Opcode op, std::uint64_t payload_len, bool fin,
                          const std::uint8_t* mask) noexcept;

// XORs `data` with `mask`, as if `data` started `offset` bytes into the payload.
void apply_mask(char* data, std::size_t n, const std::uint8_t mask[4], std::size_t offset) noexcept;

// A client frame: header with a mask, then the masked payload.
std::string encode_client_frame(Opcode op, std::string_view payload, const std::uint8_t mask[4],
                                bool fin = true);

// What a FrameReader reports. Views are valid only during the call.
class FrameSink {
 public:
  // A complete text or binary message. A text message is valid UTF-8: one
  // that is not ends the stream with on_violation(1007) instead.
  virtual void on_message(Opcode op, std::string_view payload) = 0;
  virtual void on_ping(std::string_view payload) = 0;
  virtual void on_pong(std::string_view payload) = 0;
  // A well-formed close frame; `code` is 1005 when the frame carried none.
  virtual void on_close(std::uint16_t code, std::string_view reason) = 0;
  // The peer broke the protocol or a limit; the reader accepts nothing more.
  virtual void on_violation(std::uint16_t code, std::string_view why) = 0;

 protected:
  ~FrameSink() = default;
};

enum class Role : std::uint8_t { server, client };

class FrameReader {
 public:
  // `max_message_bytes`: 0 is unlimited; kept in 32 bits (every reader is
  // in a connection, and the configuration bounds it at 1 GiB), so a larger
  // bound saturates at 4 GiB - 1.
  FrameReader(std::size_t max_message_bytes, Role role) noexcept
      : max_message_(static_cast<std::uint32_t>(std::min<std::size_t>(max_message_bytes, UINT32_MAX))),
        role_(role) {}

  // Consumes `n` bytes, which may be modified in place (unmasking). Complete
  // messages are delivered without a copy when they arrive in one piece.
  // Stops early once a close or violation was reported.
  void feed(char* data, std::size_t n, FrameSink& sink);

  // permessage-deflate was negotiated (wire/deflate.hpp): messages whose
  // first frame carries RSV1 are inflated, bounded by max_message_bytes
  // (beyond it: 1009), before they are validated and delivered. Without
  // it, RSV1 is a protocol error (1002).
  void enable_deflate() noexcept { deflate_ = true; }

  // True once a close frame or a violation ended the stream.
  bool finished() const noexcept { return finished_; }
  // Bytes held for incomplete frames or fragmented messages: none at a
  // frame boundary.
  std::size_t buffered() const noexcept {
    if (!open_) return 0;
    std::size_t heap = sizeof(Open);
    if (open_->assembly.capacity() > std::string().capacity()) heap += open_->assembly.capacity();
    return heap;
  }

 private:
  enum class State : std::uint8_t { header, payload };

  // Everything about the frame and the message being read. It means
  // something only between a frame's first byte and a message's end, and
  // every connection has a reader, so it is not kept in the reader: feed()
  // parses into a local one, and only when its input ends inside a frame
  // (a split header or payload) or inside a fragmented message does it move
  // the local into `open_`, a heap record the next feed() continues from
  // and drops again at the next frame boundary. An idle reader is 16 bytes
  // (it was 80); a frame that arrives whole still costs no allocation.
  struct Open {
    std::uint64_t length = 0;    // the current frame's payload length
    std::uint64_t received = 0;  // ... and how much of it was read
    // A data message assembled from fragments or from a split frame.
    std::string assembly;
    Utf8Validator utf8;
    State state = State::header;
    bool fin = false;
    std::uint8_t rsv = 0;
    Opcode op = Opcode::continuation;
    bool masked = false;
    bool fragmented = false;   // a message with FIN unset is open
    bool compressed = false;   // the current message is compressed (RSV1 on its first frame)
    Opcode message_op = Opcode::text;
    std::uint8_t mask[4] = {0, 0, 0, 0};
    std::uint8_t hdr_len = 0;  // bytes in hdr: a header split across reads
    std::uint8_t ctrl_len = 0;  // bytes in ctrl: a control payload split across reads
    std::uint8_t hdr[max_header_size];
    char ctrl[125];             // at most 125 bytes (RFC 6455 section 5.5)

    // Nothing is open: the next byte starts a frame of a new message.
    bool at_boundary() const noexcept { return state == State::header && hdr_len == 0 && !fragmented; }
  };

  // feed() over `f`, the local or the continued open state.
  void feed_frames(Open& f, char* data, std::size_t n, FrameSink& sink);
  // Parses a header from `p`; returns bytes used, 0 when more bytes are needed.
  static std::size_t parse_header(Open& f, const std::uint8_t* p, std::size_t n) noexcept;
  bool check_header(Open& f, FrameSink& sink);
  void finish_frame(Open& f, std::string_view payload, FrameSink& sink);
  void deliver_inflated(Open& f, std::string_view payload, FrameSink& sink);
  void fail(FrameSink& sink, std::uint16_t code, std::string_view why);

  std::unique_ptr<Open> open_;  // null at a frame boundary
  std::uint32_t max_message_;
  Role role_;
  bool finished_ = false;
  bool deflate_ = false;  // permessage-deflate negotiated
};

}  // namespace synapse::wire
