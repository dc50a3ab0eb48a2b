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

std::size_t FrameReader::parse_header(Open& f, const std::uint8_t* p, std::size_t n) noexcept {
  if (n < 2) return 0;
  std::size_t need = 2;
  const std::uint8_t len7 = p[1] & 0x7F;
  if (len7 == 126) need += 2;
  if (len7 == 127) need += 8;
  const bool masked = (p[1] & 0x80) != 0;
  if (masked) need += 4;
  if (n < need) return 0;

  f.fin = (p[0] & 0x80) != 0;
  f.rsv = static_cast<std::uint8_t>(p[0] & 0x70);
  f.op = static_cast<Opcode>(p[0] & 0x0F);
  f.masked = masked;
  std::size_t i = 2;
  if (len7 < 126) {
    f.length = len7;
  } else if (len7 == 126) {
    f.length = (std::uint64_t{p[2]} << 8) | p[3];
    i = 4;
  } else {
    f.length = 0;
    for (int k = 0; k < 8; ++k) f.length = (f.length << 8) | p[2 + k];
    i = 10;
  }
  if (masked) {
    std::memcpy(f.mask, p + i, 4);
    i += 4;
  }
  f.received = 0;
  return i;
}

void FrameReader::fail(FrameSink& sink, std::uint16_t code, std::string_view why) {
  // feed() drops the open state once finished_ is set.
  finished_ = true;
  sink.on_violation(code, why);
}

bool FrameReader::check_header(Open& f, FrameSink& sink) {
  const auto opbits = static_cast<std::uint8_t>(f.op);
  // RSV1 is permessage-deflate's "compressed" bit, allowed only once it was
  // negotiated and only on a message's first frame (RFC 7692 section 6.1);
  // RSV2 and RSV3 belong to no extension of ours.
  const bool rsv1 = (f.rsv & 0x40) != 0;
  if ((f.rsv & 0x30) != 0 || (rsv1 && !deflate_)) {
    fail(sink, close_code::protocol_error, "reserved bits set without a negotiated extension");
    return false;
  }
  if (rsv1 && (is_control(f.op) || f.op == Opcode::continuation)) {
    fail(sink, close_code::protocol_error, "RSV1 is allowed on the first frame of a data message only");
    return false;
  }
  if (!is_known(opbits)) {
    fail(sink, close_code::protocol_error, "unknown opcode");
    return false;
  }
  if (role_ == Role::server && !f.masked) {
    fail(sink, close_code::protocol_error, "client frames must be masked");
    return false;
  }
  if (role_ == Role::client && f.masked) {
    fail(sink, close_code::protocol_error, "server frames must not be masked");
    return false;
  }
  if (is_control(f.op)) {
    if (!f.fin || f.length > 125) {
      fail(sink, close_code::protocol_error, "control frames must be whole and at most 125 bytes");
      return false;
    }
    f.ctrl_len = 0;
    return true;
  }
  if (f.op == Opcode::continuation) {
    if (!f.fragmented) {
      fail(sink, close_code::protocol_error, "continuation without a message to continue");
      return false;
    }
  } else if (f.fragmented) {
    fail(sink, close_code::protocol_error, "new message before the previous one finished");
    return false;
  }
  // The size limit is checked on the header, before any of the payload is
  // stored, so an oversized message is refused without being buffered.
  const std::uint64_t so_far = f.fragmented ? f.assembly.size() : 0;
  if (max_message_ != 0 && (f.length > max_message_ || so_far + f.length > max_message_)) {
    fail(sink, close_code::too_big, "message exceeds max_message_bytes");
    return false;
  }
  if (f.op != Opcode::continuation) {
    f.message_op = f.op;
    f.compressed = rsv1;
    f.utf8.reset();
  }
  return true;
}

void FrameReader::finish_frame(Open& f, std::string_view payload, FrameSink& sink) {
  f.state = State::header;
  switch (f.op) {
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
  if (!f.fin) {
    f.fragmented = true;
    return;
  }
  f.fragmented = false;
  if (f.compressed) {
    deliver_inflated(f, payload, sink);
  } else if (f.message_op == Opcode::text && !f.utf8.complete()) {
    // The message ends inside a character (RFC 6455 section 8.1).
    fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
    return;
  } else {
    sink.on_message(f.message_op, payload);
  }
  if (finished_) return;
  f.assembly.clear();
  if (f.assembly.capacity() > keep_assembly_bytes) std::string().swap(f.assembly);
}

// A compressed message's whole payload: inflated into this thread's buffer
// (no connection keeps one), bounded by max_message_bytes, validated as a
// text message's UTF-8 only once inflated, then delivered.
void FrameReader::deliver_inflated(Open& f, std::string_view payload, FrameSink& sink) {
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
  } else if (f.message_op == Opcode::text && !is_valid_utf8(out)) {
    fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
  } else {
    sink.on_message(f.message_op, out);
  }
  if (owner) {
    in_use = false;
    out.clear();
    if (out.capacity() > keep_assembly_bytes) std::string().swap(out);
  }
}

void FrameReader::feed(char* data, std::size_t n, FrameSink& sink) {
  if (open_) {
    // Continues the frame or message the last input ended in.
    feed_frames(*open_, data, n, sink);
    if (finished_ || open_->at_boundary()) open_.reset();
    return;
  }
  Open local;
  feed_frames(local, data, n, sink);
  if (!finished_ && !local.at_boundary()) open_ = std::make_unique<Open>(std::move(local));
}

// Contract: parses and delivers frames from `data` over the state `f` until
// the input ends or the stream finished (a close frame or a violation). On
// return, `f` holds whatever a frame or message split across inputs needs
// (a partial header in hdr, a partial control payload in ctrl, an
// assembled data message, the UTF-8 validator's position); the caller
// keeps it in open_ unless it is at a boundary. Views passed to the sink
// point into `data` or into `f`, and are valid only during the call.
void FrameReader::feed_frames(Open& f, char* data, std::size_t n, FrameSink& sink) {
  auto* bytes = reinterpret_cast<std::uint8_t*>(data);
  std::size_t pos = 0;
  while (pos < n && !finished_) {
    if (f.state == State::header) {
      std::size_t used = 0;
      if (f.hdr_len == 0) {
        used = parse_header(f, bytes + pos, n - pos);
        if (used == 0) {
          // Keep the partial header; it is at most 13 bytes.
          f.hdr_len = static_cast<std::uint8_t>(n - pos);
          std::memcpy(f.hdr, bytes + pos, f.hdr_len);
          return;
        }
        pos += used;
      } else {
        const std::size_t take = std::min<std::size_t>(max_header_size - f.hdr_len, n - pos);
        std::memcpy(f.hdr + f.hdr_len, bytes + pos, take);
        const std::size_t have = f.hdr_len + take;
        used = parse_header(f, f.hdr, have);
        if (used == 0) {
          f.hdr_len = static_cast<std::uint8_t>(have);
          return;
        }
        pos += used - f.hdr_len;
        f.hdr_len = 0;
      }
      if (!check_header(f, sink)) return;
      f.state = State::payload;
      if (f.length == 0) {
        if (f.op == Opcode::continuation || !is_control(f.op)) {
          finish_frame(f, f.assembly, sink);
        } else {
          finish_frame(f, std::string_view(), sink);
        }
        continue;
      }
    }

    // Payload bytes.
    const std::size_t avail = n - pos;
    const std::uint64_t remaining = f.length - f.received;
    const std::size_t take = remaining < avail ? static_cast<std::size_t>(remaining) : avail;
    char* chunk = data + pos;
    if (f.masked) apply_mask(chunk, take, f.mask, static_cast<std::size_t>(f.received));

    if (is_control(f.op)) {
      if (f.received == 0 && take == f.length) {
        // Whole in this read, as almost always: delivered in place.
        f.received += take;
        pos += take;
        finish_frame(f, std::string_view(chunk, take), sink);
        continue;
      }
      std::memcpy(f.ctrl + f.ctrl_len, chunk, take);
      f.ctrl_len = static_cast<std::uint8_t>(f.ctrl_len + take);
      f.received += take;
      pos += take;
      if (f.received == f.length) finish_frame(f, std::string_view(f.ctrl, f.ctrl_len), sink);
      continue;
    }

    // Invalid text fails the connection at the offending fragment, as soon
    // as the bytes that make it invalid arrive (RFC 6455 section 8.1: 1007).
    if (f.message_op == Opcode::text && !f.compressed && !f.utf8.feed(reinterpret_cast<const unsigned char*>(chunk), take)) {
      fail(sink, close_code::invalid_payload, "text message is not valid UTF-8");
      return;
    }

    const bool whole_in_place = f.received == 0 && take == f.length && f.fin && !f.fragmented;
    f.received += take;
    pos += take;
    if (whole_in_place) {
      // The common case: one unfragmented frame entirely in this read. Deliver
      // it from the caller's buffer without copying.
      finish_frame(f, std::string_view(chunk, take), sink);
      continue;
    }
    // Reserve for the rest of a small frame at once; a large one grows with
    // the bytes that actually arrive, so a header that declares much and
    // sends little (or a 2^40-byte frame when unlimited) costs nothing.
    std::string& a = f.assembly;
    if (remaining <= reserve_ahead_bytes && a.capacity() < a.size() + remaining) {
      a.reserve(a.size() + static_cast<std::size_t>(remaining));
    }
    a.append(chunk, take);
    if (f.received == f.length) finish_frame(f, a, sink);
  }
}

}  // namespace synapse::wire
