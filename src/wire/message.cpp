#include "wire/message.hpp"

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "wire/deflate.hpp"
#include "wire/ws_frame.hpp"

namespace synapse::wire {

Message::Rep* Message::plain_marker() noexcept {
  // An address no Rep has; never dereferenced.
  static char marker;
  return reinterpret_cast<Rep*>(&marker);
}

Message::Rep* Message::allocate(std::size_t total) {
  void* mem = ::operator new(offsetof(Rep, bytes) + total);
  Rep* rep = static_cast<Rep*>(mem);
  new (&rep->refs) std::atomic<std::uint32_t>(1);
  new (&rep->deflated) std::atomic<Rep*>(nullptr);
  rep->size = static_cast<std::uint32_t>(total);
  return rep;
}

void Message::unref(Rep* rep) noexcept {
  if (rep->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  Rep* alt = rep->deflated.load(std::memory_order_acquire);
  if (alt && alt != plain_marker()) unref(alt);  // a variant's own variant is always the marker
  rep->deflated.~atomic();
  rep->refs.~atomic();
  ::operator delete(rep);
}

Message Message::deflated(std::size_t threshold, int level) const {
  if (!rep_) return Message();
  Rep* alt = rep_->deflated.load(std::memory_order_acquire);
  if (!alt) {
    const auto op = static_cast<std::uint8_t>(rep_->bytes[0]) & 0x0F;
    const std::string_view body = payload();
    Rep* made = plain_marker();
    if ((op == 0x1 || op == 0x2) && !compressed() && body.size() >= threshold) {
      thread_local std::string buf;
      deflate_message(body, level, buf);
      if (buf.size() < body.size()) {
        std::uint8_t header[max_header_size];
        const std::size_t hlen = encode_header(header, static_cast<Opcode>(op), buf.size(), true, nullptr);
        header[0] |= 0x40;  // RSV1: "per-message compressed" (RFC 7692 section 6)
        made = allocate(hlen + buf.size());
        made->header = static_cast<std::uint32_t>(hlen);
        made->deflated.store(plain_marker(), std::memory_order_relaxed);
        std::memcpy(made->bytes, header, hlen);
        std::memcpy(made->bytes + hlen, buf.data(), buf.size());
      }
      if (buf.capacity() > (256u << 10)) std::string().swap(buf);
    }
    Rep* expected = nullptr;
    if (rep_->deflated.compare_exchange_strong(expected, made, std::memory_order_acq_rel,
                                               std::memory_order_acquire)) {
      alt = made;
    } else {
      if (made != plain_marker()) unref(made);  // another thread was first
      alt = expected;
    }
  }
  if (alt == plain_marker()) return *this;
  alt->refs.fetch_add(1, std::memory_order_relaxed);
  return Message(alt);
}

Message Message::frame(Opcode op, std::string_view payload) {
  if (payload.size() > 0xFFFFFFF0u) throw std::length_error("message too large");
  std::uint8_t header[max_header_size];
  const std::size_t hlen = encode_header(header, op, payload.size(), true, nullptr);
  const std::size_t total = hlen + payload.size();
  Rep* rep = allocate(total);
  rep->header = static_cast<std::uint32_t>(hlen);
  std::memcpy(rep->bytes, header, hlen);
  if (!payload.empty()) std::memcpy(rep->bytes + hlen, payload.data(), payload.size());
  return Message(rep);
}

Message Message::text(std::string_view payload) { return frame(Opcode::text, payload); }

Message Message::text_parts(std::initializer_list<std::string_view> parts) {
  std::size_t len = 0;
  for (auto p : parts) len += p.size();
  if (len > 0xFFFFFFF0u) throw std::length_error("message too large");
  std::uint8_t header[max_header_size];
  const std::size_t hlen = encode_header(header, Opcode::text, len, true, nullptr);
  Rep* rep = allocate(hlen + len);
  rep->header = static_cast<std::uint32_t>(hlen);
  std::memcpy(rep->bytes, header, hlen);
  char* at = rep->bytes + hlen;
  for (auto p : parts) {
    if (!p.empty()) std::memcpy(at, p.data(), p.size());
    at += p.size();
  }
  return Message(rep);
}

Message Message::pong(std::string_view payload) { return frame(Opcode::pong, payload.substr(0, 125)); }

Message Message::close(std::uint16_t code, std::string_view reason) {
  char body[125];
  body[0] = static_cast<char>(code >> 8);
  body[1] = static_cast<char>(code & 0xFF);
  // Cut the reason on a UTF-8 boundary so the peer never sees a broken sequence.
  std::size_t n = reason.size() > 123 ? 123 : reason.size();
  while (n > 0 && n < reason.size() &&
         (static_cast<unsigned char>(reason[n]) & 0xC0) == 0x80) {
    --n;
  }
  std::memcpy(body + 2, reason.data(), n);
  return frame(Opcode::close, std::string_view(body, n + 2));
}

void Message::release() noexcept {
  if (rep_) unref(rep_);
  rep_ = nullptr;
}

}  // namespace synapse::wire
