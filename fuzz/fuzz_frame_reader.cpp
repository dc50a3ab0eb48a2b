// Fuzzes wire::FrameReader, the RFC 6455 reader every client byte goes through.
//
// Input layout (see fuzz/corpus/fuzz_frame_reader/ and fuzz/make_corpus.py):
//   byte 0      configuration: bits 0-2 pick the message size limit from
//               `limits` below (0 = unlimited, a valid setting of
//               websocket.max_message_bytes); bit 7 reads as a client
//               (unmasked frames) instead of a server.
//   byte 1      n = number of split bytes (taken modulo 9)
//   n bytes     chunk sizes, used cyclically to cut the stream into feed()
//               calls (0 = an empty feed)
//   the rest    the byte stream
//
// Checked:
//   - nothing crashes or trips ASan/UBSan;
//   - the events are the same however the stream is split (one feed, or the
//     fuzzer's chunks) and the same as a simple whole-buffer reference reader
//     written from RFC 6455 below;
//   - no reported message exceeds the limit, a text message is valid UTF-8 (an invalid one fails with 1007); utf8 is
//     exactly "is valid UTF-8", control payloads are <= 125 bytes, a close
//     code is 1005 or one a peer may send, nothing follows a close or a
//     violation, and the reader holds no more than about twice the limit;
//   - every message re-encoded with encode_client_frame (encode_header +
//     apply_mask) reads back identically; apply_mask at any offset equals a
//     byte-by-byte XOR.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "wire/utf8.hpp"
#include "wire/ws_frame.hpp"

using namespace synapse::wire;
using synapse::fuzz::escaped;

namespace {

constexpr std::size_t limits[8] = {1 << 20, 0, 1, 125, 126, 1024, 65535, 65536};

struct Event {
  enum Kind { message, ping, pong, close, violation } kind;
  Opcode op = Opcode::text;
  std::string payload;
  std::uint16_t code = 0;

  bool operator==(const Event& o) const {
    return kind == o.kind && op == o.op && payload == o.payload && code == o.code;
  }
};

std::string describe(const std::vector<Event>& ev) {
  static const char* names[] = {"message", "ping", "pong", "close", "violation"};
  std::string out;
  for (const auto& e : ev) {
    out += names[e.kind];
    out += "(op=" + std::to_string(static_cast<int>(e.op)) + ",len=" + std::to_string(e.payload.size()) +
           ",code=" + std::to_string(e.code) + ") ";
  }
  return out;
}

// Records events and checks the per-event invariants.
struct Recorder final : FrameSink {
  std::size_t limit;
  std::vector<Event> events;
  bool ended = false;

  explicit Recorder(std::size_t lim) : limit(lim) {}

  void note(Event e) {
    FUZZ_CHECK(!ended, "an event was reported after a close or a violation");
    events.push_back(std::move(e));
  }
  void on_message(Opcode op, std::string_view p) override {
    FUZZ_CHECK(op == Opcode::text || op == Opcode::binary, "message with a non-data opcode");
    FUZZ_CHECK(limit == 0 || p.size() <= limit,
               "message of " + std::to_string(p.size()) + " bytes over the limit " + std::to_string(limit));
    if (op == Opcode::text) FUZZ_CHECK(is_valid_utf8(p), "a text message that is not UTF-8: " + escaped(p));
    note({Event::message, op, std::string(p), 0});
  }
  void on_ping(std::string_view p) override {
    FUZZ_CHECK(p.size() <= 125, "ping payload over 125 bytes");
    note({Event::ping, Opcode::ping, std::string(p), 0});
  }
  void on_pong(std::string_view p) override {
    FUZZ_CHECK(p.size() <= 125, "pong payload over 125 bytes");
    note({Event::pong, Opcode::pong, std::string(p), 0});
  }
  void on_close(std::uint16_t code, std::string_view reason) override {
    const bool sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                          (code >= 3000 && code <= 4999);
    FUZZ_CHECK(code == close_code::no_status ? reason.empty() : sendable, "bad close code reported");
    FUZZ_CHECK(reason.size() <= 123, "close reason over 123 bytes");
    FUZZ_CHECK(is_valid_utf8(reason), "close reason is not UTF-8");
    note({Event::close, Opcode::close, std::string(reason), code});
    ended = true;
  }
  void on_violation(std::uint16_t code, std::string_view why) override {
    FUZZ_CHECK(code == close_code::protocol_error || code == close_code::invalid_payload ||
                   code == close_code::too_big,
               "violation with an unexpected close code " + std::to_string(code));
    FUZZ_CHECK(!why.empty(), "violation without a reason");
    note({Event::violation, Opcode::continuation, std::string(), code});
    ended = true;
  }
};

// RFC 6455 read straight from a whole buffer, with the checks in the order
// the streaming reader makes them (a violation is reported as soon as the
// header that causes it is complete; an incomplete frame reports nothing,
// except invalid UTF-8, which fails as soon as the bytes that make a text
// message's prefix invalid are there, complete frame or not).
std::vector<Event> reference(std::string bytes, std::size_t limit, Role role) {
  std::vector<Event> out;
  const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data());
  const std::size_t n = bytes.size();
  std::size_t pos = 0;
  bool fragmented = false;
  Opcode message_op = Opcode::text;
  std::string assembly;
  auto violation = [&](std::uint16_t code) { out.push_back({Event::violation, Opcode::continuation, {}, code}); };
  // Whether `text` can begin a valid UTF-8 string (a truncated character at
  // its end is fine): its longest prefix ending on a character boundary is
  // valid, and the rest is the start of some valid character.
  auto valid_prefix = [](std::string_view text) {
    for (std::size_t cut = 0; cut <= 3 && cut <= text.size(); ++cut) {
      if (!is_valid_utf8(text.substr(0, text.size() - cut))) continue;
      const std::string_view tail = text.substr(text.size() - cut);
      if (tail.empty()) return true;
      // Some completion of the tail must be valid: try every continuation.
      for (int a = 0x80; a <= 0xBF; ++a) {
        std::string t(tail);
        t.push_back(static_cast<char>(a));
        if (is_valid_utf8(t)) return true;
        for (int b = 0x80; b <= 0xBF && t.size() < 4; ++b) {
          std::string u = t;
          u.push_back(static_cast<char>(b));
          if (is_valid_utf8(u)) return true;
          std::string v = u + static_cast<char>(0x80);
          if (v.size() <= 4 && is_valid_utf8(v)) return true;
        }
      }
    }
    return false;
  };
  while (true) {
    if (n - pos < 2) break;
    const bool fin = (p[pos] & 0x80) != 0;
    const std::uint8_t rsv = p[pos] & 0x70;
    const std::uint8_t opbits = p[pos] & 0x0F;
    const bool masked = (p[pos + 1] & 0x80) != 0;
    const std::uint8_t len7 = p[pos + 1] & 0x7F;
    std::size_t hdr = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);
    if (n - pos < hdr) break;
    std::uint64_t len = len7;
    if (len7 == 126) len = (std::uint64_t{p[pos + 2]} << 8) | p[pos + 3];
    if (len7 == 127) {
      len = 0;
      for (int k = 0; k < 8; ++k) len = (len << 8) | p[pos + 2 + k];
    }
    std::uint8_t mask[4] = {0, 0, 0, 0};
    if (masked) std::memcpy(mask, p + pos + hdr - 4, 4);
    const bool control = (opbits & 0x8) != 0;
    const bool known = opbits <= 2 || (opbits >= 8 && opbits <= 10);
    if (rsv != 0 || !known) return violation(close_code::protocol_error), out;
    if ((role == Role::server) != masked) return violation(close_code::protocol_error), out;
    if (control) {
      if (!fin || len > 125) return violation(close_code::protocol_error), out;
    } else {
      const bool continuation = opbits == 0;
      if (continuation != fragmented) return violation(close_code::protocol_error), out;
      const std::uint64_t so_far = fragmented ? assembly.size() : 0;
      if (limit != 0 && (len > limit || so_far + len > limit)) return violation(close_code::too_big), out;
      if (!continuation) message_op = static_cast<Opcode>(opbits);
    }
    pos += hdr;
    if (!control && message_op == Opcode::text) {
      // What of this frame is there already, unmasked, after the message so far.
      std::string seen = assembly + bytes.substr(pos, static_cast<std::size_t>(std::min<std::uint64_t>(len, n - pos)));
      for (std::size_t i = assembly.size(); i < seen.size(); ++i) {
        seen[i] = static_cast<char>(seen[i] ^ mask[(i - assembly.size()) & 3]);
      }
      if (!valid_prefix(seen)) return violation(close_code::invalid_payload), out;
    }
    if (n - pos < len) break;
    std::string payload = bytes.substr(pos, static_cast<std::size_t>(len));
    pos += static_cast<std::size_t>(len);
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(payload[i] ^ mask[i & 3]);
    if (opbits == 0x9) {
      out.push_back({Event::ping, Opcode::ping, payload, 0});
    } else if (opbits == 0xA) {
      out.push_back({Event::pong, Opcode::pong, payload, 0});
    } else if (opbits == 0x8) {
      if (payload.size() == 1) return violation(close_code::protocol_error), out;
      std::uint16_t code = close_code::no_status;
      std::string reason;
      if (payload.size() >= 2) {
        code = static_cast<std::uint16_t>((static_cast<std::uint8_t>(payload[0]) << 8) |
                                          static_cast<std::uint8_t>(payload[1]));
        reason = payload.substr(2);
        const bool sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                              (code >= 3000 && code <= 4999);
        if (!sendable) return violation(close_code::protocol_error), out;
        if (!is_valid_utf8(reason)) return violation(close_code::invalid_payload), out;
      }
      out.push_back({Event::close, Opcode::close, reason, code});
      return out;
    } else {
      assembly += payload;
      if (!fin) {
        fragmented = true;
      } else {
        fragmented = false;
        if (message_op == Opcode::text && !is_valid_utf8(assembly)) return violation(close_code::invalid_payload), out;
        out.push_back({Event::message, message_op, assembly, 0});
        assembly.clear();
      }
    }
  }
  return out;
}

// Feeds `stream` in the given chunk sizes (cyclically); empty `chunks` = one feed.
std::vector<Event> run(std::string stream, std::size_t limit, Role role, const std::vector<std::uint8_t>& chunks) {
  FrameReader reader(limit, role);
  Recorder rec(limit);
  // Generous: a reservation may round up to twice what was asked for, and
  // the assembly buffer keeps up to 16 KiB between messages.
  const std::size_t bound = limit == 0 ? SIZE_MAX : 2 * limit + 64 * 1024 + max_header_size;
  std::size_t pos = 0;
  std::size_t k = 0;
  const bool progress = std::any_of(chunks.begin(), chunks.end(), [](std::uint8_t c) { return c != 0; });
  while (pos < stream.size()) {
    std::size_t len = stream.size() - pos;
    if (progress) len = std::min<std::size_t>(len, chunks[k++ % chunks.size()]);
    reader.feed(stream.data() + pos, len, rec);
    pos += len;
    FUZZ_CHECK(reader.finished() == rec.ended, "finished() disagrees with the events reported");
    FUZZ_CHECK(reader.buffered() <= bound, "reader holds " + std::to_string(reader.buffered()) +
                                               " bytes with a limit of " + std::to_string(limit));
  }
  return rec.events;
}

void check_apply_mask(const std::uint8_t* data, std::size_t size) {
  if (size < 5) return;
  const std::uint8_t mask[4] = {data[0], data[1], data[2], data[3]};
  const std::size_t offset = data[4];
  std::string fast(reinterpret_cast<const char*>(data + 5), std::min<std::size_t>(size - 5, 512));
  std::string slow = fast;
  apply_mask(fast.data(), fast.size(), mask, offset);
  for (std::size_t i = 0; i < slow.size(); ++i) slow[i] = static_cast<char>(slow[i] ^ mask[(offset + i) & 3]);
  FUZZ_CHECK(fast == slow, "apply_mask differs from a byte-by-byte XOR at offset " + std::to_string(offset));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t limit = limits[data[0] & 7];
  const Role role = (data[0] & 0x80) ? Role::client : Role::server;
  const std::size_t nsplit = data[1] % 9;
  if (size < 2 + nsplit) return 0;
  const std::vector<std::uint8_t> chunks(data + 2, data + 2 + nsplit);
  const std::string stream(reinterpret_cast<const char*>(data + 2 + nsplit), size - 2 - nsplit);

  const std::vector<Event> whole = run(stream, limit, role, {});
  const std::vector<Event> split = run(stream, limit, role, chunks);
  FUZZ_CHECK(whole == split, "split changes the events:\n    whole: " + describe(whole) + "\n    split: " + describe(split));
  const std::vector<Event> expected = reference(stream, limit, role);
  FUZZ_CHECK(whole == expected,
             "reader differs from the reference:\n    reader:    " + describe(whole) + "\n    reference: " + describe(expected));

  // Every message, framed again by the encoder, reads back the same.
  const std::uint8_t mask[4] = {data[0], data[1], 0x5a, 0xa5};
  for (const Event& e : whole) {
    if (e.kind != Event::message || role != Role::server) continue;
    std::string again = encode_client_frame(e.op, e.payload, mask);
    FUZZ_CHECK(again.size() <= e.payload.size() + max_header_size, "encoded header too long");
    const std::vector<Event> back = run(again, limit, Role::server, {});
    FUZZ_CHECK(back.size() == 1 && back[0] == e, "re-encoded message reads back differently: " + describe(back));
  }

  check_apply_mask(data, size);
  return 0;
}
