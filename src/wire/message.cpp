#include "wire/message.hpp"

#include <cstring>
#include <new>
#include <stdexcept>

#include "wire/ws_frame.hpp"

namespace synapse::wire {

Message Message::frame(Opcode op, std::string_view payload) {
  if (payload.size() > 0xFFFFFFF0u) throw std::length_error("message too large");
  std::uint8_t header[max_header_size];
  const std::size_t hlen = encode_header(header, op, payload.size(), true, nullptr);
  const std::size_t total = hlen + payload.size();
  void* mem = ::operator new(offsetof(Rep, bytes) + total);
  Rep* rep = static_cast<Rep*>(mem);
  new (&rep->refs) std::atomic<std::uint32_t>(1);
  rep->size = static_cast<std::uint32_t>(total);
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
  void* mem = ::operator new(offsetof(Rep, bytes) + hlen + len);
  Rep* rep = static_cast<Rep*>(mem);
  new (&rep->refs) std::atomic<std::uint32_t>(1);
  rep->size = static_cast<std::uint32_t>(hlen + len);
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
  if (rep_ && rep_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    rep_->refs.~atomic();
    ::operator delete(rep_);
  }
  rep_ = nullptr;
}

}  // namespace synapse::wire
