#include "wire/ws_frame.hpp"

#include <algorithm>
#include <cstring>

#include "wire/deflate.hpp"

namespace synapse::wire {
namespace {

bool is_control(Opcode op) noexcept { return (static_cast<std::uint8_t>(op) & 0x8) != 0; }

bool is_known(std::uint8_t op) noexcept {
  return op == 0x0 || op == 0x1 || op == 0x2 || op == 0x8 || op == 0x9 || op == 0xA;
}

// Close codes a peer may send: RFC 6455 section 7.4 and the IANA registry
// (1012-1014 were registered later); 1004-1006 and 1015 are never sent, and
// anything else below 3000 is unassigned. Others answer 1002.
bool is_sendable_close_code(std::uint16_t c) noexcept {
  return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

// Assembled messages above this are released after delivery rather than kept.
constexpr std::size_t keep_assembly_bytes = 16 * 1024;
// The rest of a frame is reserved in one step only up to this size.
constexpr std::uint64_t reserve_ahead_bytes = 64 * 1024;

}  // namespace

std::size_t encode_header(std::uint8_t* out, Opcode op, std::uint64_t len, bool fin,
                          const std::uint8_t* mask) noexcept {
  std::size_t i = 0;
  out[i++] = static_cast<std::uint8_t>((fin ? 0x80 : 0x00) | static_cast<std::uint8_t>(op));
  const std::uint8_t mask_bit = mask ? 0x80 : 0x00;
  if (len < 126) {
    out[i++] = static_cast<std::uint8_t>(mask_bit | len);
  } else if (len <= 0xFFFF) {
    out[i++] = mask_bit | 126;
    out[i++] = static_cast<std::uint8_t>(len >> 8);
    out[i++] = static_cast<std::uint8_t>(len);
  } else {
    out[i++] = mask_bit | 127;
    for (int s = 56; s >= 0; s -= 8) out[i++] = static_cast<std::uint8_t>(len >> s);
  }
  if (mask) {
    std::memcpy(out + i, mask, 4);
    i += 4;
  }
  return i;
}

void apply_mask(char* data, std::size_t n, const std::uint8_t mask[4], std::size_t offset) noexcept {
  std::size_t i = 0;
  // Align to the mask phase, then work eight bytes at a time.
  while (i < n && ((offset + i) & 3) != 0) {
    data[i] = static_cast<char>(data[i] ^ mask[(offset + i) & 3]);
    ++i;
  }
  std::uint64_t m8;
  std::uint8_t m[8] = {mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]};
  std::memcpy(&m8, m, 8);
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, data + i, 8);
    w ^= m8;
    std::memcpy(data + i, &w, 8);
  }
  for (; i < n; ++i) data[i] = static_cast<char>(data[i] ^ mask[(offset + i) & 3]);
}

std::string encode_client_frame(Opcode op, std::string_view payload, const std::uint8_t mask[4],
                                bool fin) {
  std::uint8_t header[max_header_size];
  const std::size_t hlen = encode_header(header, op, payload.size(), fin, mask);
  std::string out;
  out.resize(hlen + payload.size());
  std::memcpy(out.data(), header, hlen);
  if (!payload.empty()) std::memcpy(out.data() + hlen, payload.data(), payload.size());
  apply_mask(out.data() + hlen, payload.size(), mask, 0);
  return out;
}

std::size_t FrameReader::parse_header(const std::uint8_t* p, std::size_t n) noexcept {
  if (n < 2) return 0;
  std::size_t need = 2;
  const std::uint8_t len7 = p[1] & 0x7F;
  if (len7 == 126) need += 2;
  if (len7 == 127) need += 8;
  const bool masked = (p[1] & 0x80) != 0;
  if (masked) need += 4;
  if (n < need) return 0;

  fin_ = (p[0] & 0x80) != 0;
  rsv_ = static_cast<std::uint8_t>(p[0] & 0x70);
  op_ = static_cast<Opcode>(p[0] & 0x0F);
  masked_ = masked;
  std::size_t i = 2;
  if (len7 < 126) {
    length_ = len7;
  } else if (len7 == 126) {
    length_ = (std::uint64_t{p[2]} << 8) | p[3];
    i = 4;
  } else {
    length_ = 0;
    for (int k = 0; k < 8; ++k) length_ = (length_ << 8) | p[2 + k];
    i = 10;
  }
  if (masked) {
    std::memcpy(mask_, p + i, 4);
    i += 4;
  }
  received_ = 0;
  return i;
}

void FrameReader::fail(FrameSink& sink, std::uint16_t code, std::string_view why) {
  finished_ = true;
  assembly_.reset();
  sink.on_violation(code, why);
}

bool FrameReader::check_header(FrameSink& sink) {
  const auto opbits = static_cast<std::uint8_t>(op_);
  // RSV1 is permessage-deflate's "compressed" bit, allowed only once it was
  // negotiated and only on a message's first frame (RFC 7692 section 6.1);
  // RSV2 and RSV3 belong to no extension of ours.
  const bool rsv1 = (rsv_ & 0x40) != 0;
  if ((rsv_ & 0x30) != 0 || (rsv1 && !deflate_)) {
    fail(sink, close_code::protocol_error, "reserved bits set without a negotiated extension");
    return false;
  }
  if (rsv1 && (is_control(op_) || op_ == Opcode::continuation)) {
    fail(sink, close_code::protocol_error, "RSV1 is allowed on the first frame of a data message only");
    return false;
  }
  if (!is_known(opbits)) {
    fail(sink, close_code::protocol_error, "unknown opcode");
    return false;
  }
  if (role_ == Role::server && !masked_) {
    fail(sink, close_code::protocol_error, "client frames must be masked");
    return false;
  }
  if (role_ == Role::client && masked_) {
    fail(sink, close_code::protocol_error, "server frames must not be masked");
    return false;
  }
  if (is_control(op_)) {
    if (!fin_ || length_ > 125) {
      fail(sink, close_code::protocol_error, "control frames must be whole and at most 125 bytes");
      return false;
    }
    ctrl_len_ = 0;
    return true;
  }
  if (op_ == Opcode::continuation) {
    if (!fragmented_) {
      fail(sink, close_code::protocol_error, "continuation without a message to continue");
      return false;
    }
  } else if (fragmented_) {
    fail(sink, close_code::protocol_error, "new message before the previous one finished");
    return false;
  }
  // The size limit is checked on the header, before any of the payload is
  // stored, so an oversized message is refused without being buffered.
  const std::uint64_t so_far = fragmented_ ? assembled().size() : 0;
  if (max_message_ != 0 && (length_ > max_message_ || so_far + length_ > max_message_)) {
    fail(sink, close_code::too_big, "message exceeds max_message_bytes");
    return false;
  }
  if (op_ != Opcode::continuation) {
    message_op_ = op_;
    compressed_ = rsv1;
    utf8_.reset();
  }
  return true;
}

void FrameReader::finish_frame(std::string_view payload, FrameSink& sink) {
  state_ = State::header;
  switch (op_) {
    case Opcode::ping:
      sink.on_ping(payload);
      return;
    case Opcode::pong:
      sink.on_pong(payload);
      return;
    case Opcode::close: {
      if (payload.size() == 1) {
        fail(sink, close_code::protocol_error, "close frame with a one-byte body");
        return;
      }
      std::uint16_t code = close_code::no_status;
      std::string_view reason;
      if (payload.size() >= 2) {
        code = static_cast<std::uint16_t>((static_cast<std::uint8_t>(payload[0]) << 8) |
                                          static_cast<std::uint8_t>(payload[1]));
        reason = payload.substr(2);
        if (!is_sendable_close_code(code)) {
          fail(sink, close_code::protocol_error, "invalid close code");
          return;
        }
        if (!is_valid_utf8(reason)) {
          fail(sink, close_code::invalid_payload, "close reason is not UTF-8");
          return;
        }
      }
      finished_ = true;
      sink.on_close(code, reason);
      return;
    }
    default:
      break;
  }
  // A data frame (text, binary or continuation).
  if (!fin_) {
    fragmented_ = true;
    return;
  }
  fragmented_ = false;
  if (compressed_) {
    deliver_inflated(payload, sink);
  } else if (message_op_ == Opcode::text && !utf8_.complete()) {
    // The message ends inside a character (RFC 6455 section 8.1).
    fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
    return;
  } else {
    sink.on_message(message_op_, payload);
  }
  if (finished_ || !assembly_) return;
  assembly_->clear();
  if (assembly_->capacity() > keep_assembly_bytes) assembly_.reset();
}

// A compressed message's whole payload: inflated into this thread's buffer
// (no connection keeps one), bounded by max_message_bytes, validated as a
// text message's UTF-8 only once inflated, then delivered.
void FrameReader::deliver_inflated(std::string_view payload, FrameSink& sink) {
  thread_local std::string buffer;
  thread_local bool in_use = false;
  std::string local;  // a sink that feeds another reader from on_message gets its own
  std::string& out = in_use ? local : buffer;
  const bool owner = !in_use;
  in_use = true;
  const InflateResult r = inflate_message(payload, max_message_, out);
  if (r == InflateResult::too_big) {
    fail(sink, close_code::too_big, "message exceeds max_message_bytes once inflated");
  } else if (r == InflateResult::corrupt) {
    fail(sink, close_code::protocol_error, "compressed message does not inflate");
  } else if (message_op_ == Opcode::text && !is_valid_utf8(out)) {
    fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
  } else {
    sink.on_message(message_op_, out);
  }
  if (owner) {
    in_use = false;
    out.clear();
    if (out.capacity() > keep_assembly_bytes) std::string().swap(out);
  }
}

void FrameReader::feed(char* data, std::size_t n, FrameSink& sink) {
  auto* bytes = reinterpret_cast<std::uint8_t*>(data);
  std::size_t pos = 0;
  while (pos < n && !finished_) {
    if (state_ == State::header) {
      std::size_t used = 0;
      if (hdr_len_ == 0) {
        used = parse_header(bytes + pos, n - pos);
        if (used == 0) {
          // Keep the partial header; it is at most 13 bytes.
          hdr_len_ = static_cast<std::uint8_t>(n - pos);
          std::memcpy(hdr_, bytes + pos, hdr_len_);
          return;
        }
        pos += used;
      } else {
        const std::size_t take = std::min<std::size_t>(max_header_size - hdr_len_, n - pos);
        std::memcpy(hdr_ + hdr_len_, bytes + pos, take);
        const std::size_t have = hdr_len_ + take;
        used = parse_header(hdr_, have);
        if (used == 0) {
          hdr_len_ = static_cast<std::uint8_t>(have);
          return;
        }
        pos += used - hdr_len_;
        hdr_len_ = 0;
      }
      if (!check_header(sink)) return;
      state_ = State::payload;
      if (length_ == 0) {
        if (op_ == Opcode::continuation || !is_control(op_)) {
          finish_frame(assembled(), sink);
        } else {
          finish_frame(std::string_view(), sink);
        }
        continue;
      }
    }

    // Payload bytes.
    const std::size_t avail = n - pos;
    const std::uint64_t remaining = length_ - received_;
    const std::size_t take = remaining < avail ? static_cast<std::size_t>(remaining) : avail;
    char* chunk = data + pos;
    if (masked_) apply_mask(chunk, take, mask_, static_cast<std::size_t>(received_));

    if (is_control(op_)) {
      if (received_ == 0 && take == length_) {
        // Whole in this read, as almost always: delivered in place.
        received_ += take;
        pos += take;
        finish_frame(std::string_view(chunk, take), sink);
        continue;
      }
      if (!ctrl_) ctrl_ = std::make_unique<char[]>(max_control_payload);
      std::memcpy(ctrl_.get() + ctrl_len_, chunk, take);
      ctrl_len_ = static_cast<std::uint8_t>(ctrl_len_ + take);
      received_ += take;
      pos += take;
      if (received_ == length_) finish_frame(std::string_view(ctrl_.get(), ctrl_len_), sink);
      continue;
    }

    // Invalid text fails the connection at the offending fragment, as soon
    // as the bytes that make it invalid arrive (RFC 6455 section 8.1: 1007).
    if (message_op_ == Opcode::text && !compressed_ && !utf8_.feed(reinterpret_cast<const unsigned char*>(chunk), take)) {
      fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
      return;
    }

    const bool whole_in_place = received_ == 0 && take == length_ && fin_ && !fragmented_;
    received_ += take;
    pos += take;
    if (whole_in_place) {
      // The common case: one unfragmented frame entirely in this read. Deliver
      // it from the caller's buffer without copying.
      finish_frame(std::string_view(chunk, take), sink);
      continue;
    }
    // Reserve for the rest of a small frame at once; a large one grows with
    // the bytes that actually arrive, so a header that declares much and
    // sends little (or a 2^40-byte frame when unlimited) costs nothing.
    std::string& a = assembly();
    if (remaining <= reserve_ahead_bytes && a.capacity() < a.size() + remaining) {
      a.reserve(a.size() + static_cast<std::size_t>(remaining));
    }
    a.append(chunk, take);
    if (received_ == length_) finish_frame(a, sink);
  }
}

void FrameReader::shrink_if_idle() noexcept {
  if (state_ != State::header || hdr_len_ != 0) return;
  ctrl_.reset();  // a control frame is never open between frames
  if (!fragmented_) assembly_.reset();
}

}  // namespace synapse::wire
