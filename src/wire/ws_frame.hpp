// RFC 6455 framing: header encoding and a streaming frame reader.
//
// Pure functions and a state machine over caller-supplied bytes; no I/O. The
// server's connections and the load generator both use it, and it is fuzzed.
#pragma once

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
  FrameReader(std::size_t max_message_bytes, Role role) noexcept
      : max_message_(max_message_bytes), role_(role) {}

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
  // Bytes held for incomplete frames or fragmented messages.
  std::size_t buffered() const noexcept {
    // The assembly string's own block, and its buffer when that is not the
    // string's inline one.
    std::size_t heap = 0;
    if (assembly_) {
      heap = sizeof(std::string);
      if (assembly_->capacity() > std::string().capacity()) heap += assembly_->capacity();
    }
    return heap + hdr_len_ + (ctrl_ ? max_control_payload : 0);
  }
  // Returns memory kept after a large message, so an idle connection holds none.
  void shrink_if_idle() noexcept;

 private:
  enum class State : std::uint8_t { header, payload };

  // Parses a header from `p`; returns bytes used, 0 when more bytes are needed.
  std::size_t parse_header(const std::uint8_t* p, std::size_t n) noexcept;
  bool check_header(FrameSink& sink);
  void finish_frame(std::string_view payload, FrameSink& sink);
  void deliver_inflated(std::string_view payload, FrameSink& sink);
  void fail(FrameSink& sink, std::uint16_t code, std::string_view why);

  // Every connection has a reader, so the fields are ordered to leave no
  // padding (the 8-byte ones first, the bytes after them: 112 -> 80 bytes),
  // and the assembly buffer is made only for a message that needs one.
  std::size_t max_message_;

  // Current frame.
  std::uint64_t length_ = 0;
  std::uint64_t received_ = 0;

  // A control frame's payload split across reads (at most 125 bytes),
  // allocated only then: a whole one is delivered in place.
  static constexpr std::size_t max_control_payload = 125;
  std::unique_ptr<char[]> ctrl_;

  // A data message being assembled from fragments or from a split frame.
  // Behind a pointer (8 bytes instead of a std::string's 32): almost every
  // message arrives whole and is delivered in place, so most connections
  // never make it. Null means empty.
  std::unique_ptr<std::string> assembly_;
  std::string& assembly() {
    if (!assembly_) assembly_ = std::make_unique<std::string>();
    return *assembly_;
  }
  std::string_view assembled() const noexcept { return assembly_ ? std::string_view(*assembly_) : std::string_view(); }
  Utf8Validator utf8_;

  Role role_;
  State state_ = State::header;
  bool finished_ = false;

  // Current frame.
  bool fin_ = false;
  std::uint8_t rsv_ = 0;
  Opcode op_ = Opcode::continuation;
  bool masked_ = false;
  std::uint8_t mask_[4] = {0, 0, 0, 0};

  // A header split across reads.
  std::uint8_t hdr_[max_header_size];
  std::uint8_t hdr_len_ = 0;

  std::uint8_t ctrl_len_ = 0;  // bytes in ctrl_

  bool fragmented_ = false;  // a message with FIN unset is open
  bool deflate_ = false;     // permessage-deflate negotiated
  bool compressed_ = false;  // the current message is compressed (RSV1 on its first frame)
  Opcode message_op_ = Opcode::text;
};

}  // namespace synapse::wire
