// A connection's peer (address and port) as every connection keeps it: the
// address's bytes, not its text. 23 bytes, byte-aligned, so it packs with
// the fields around it; a std::string of "ip:port" took 32 (and a heap
// block for a long IPv6 one). Formatted only when it is shown (log lines, the
// admin API), exactly as the endpoint formats: `address:port`, the address
// as Asio writes it (IPv6 without brackets, a scope as `%<scope>`).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>

namespace synapse::net {

class PeerAddress {
 public:
  // No peer (a connection made without one): formats as "".
  PeerAddress() = default;
  explicit PeerAddress(const boost::asio::ip::tcp::endpoint& ep) noexcept {
    const auto a = ep.address();
    if (a.is_v4()) {
      family_ = 4;
      const auto b = a.to_v4().to_bytes();
      std::memcpy(addr_, b.data(), b.size());
    } else {
      family_ = 6;
      const auto v6 = a.to_v6();
      const auto b = v6.to_bytes();
      std::memcpy(addr_, b.data(), b.size());
      const std::uint32_t scope = v6.scope_id();
      std::memcpy(scope_, &scope, sizeof scope);
    }
    const std::uint16_t port = ep.port();
    std::memcpy(port_, &port, sizeof port);
  }

  bool empty() const noexcept { return family_ == 0; }
  std::uint16_t port() const noexcept {
    std::uint16_t p;
    std::memcpy(&p, port_, sizeof p);
    return p;
  }
  // The address as text ("" when empty).
  std::string ip() const {
    if (family_ == 4) {
      // By hand: Asio's to_string goes through inet_ntop and sprintf, and
      // every connection formats its address (the accept gate's and the
      // limiter's per-address key, the log lines). Same text: four decimal
      // octets without leading zeros.
      char buf[15];
      char* p = buf;
      for (int i = 0; i < 4; ++i) {
        if (i) *p++ = '.';
        const unsigned v = addr_[i];
        if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
        if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
        *p++ = static_cast<char>('0' + v % 10);
      }
      return std::string(buf, static_cast<std::size_t>(p - buf));
    }
    if (family_ == 6) {
      boost::asio::ip::address_v6::bytes_type b;
      std::memcpy(b.data(), addr_, b.size());
      std::uint32_t scope;
      std::memcpy(&scope, scope_, sizeof scope);
      return boost::asio::ip::address_v6(b, scope).to_string();
    }
    return {};
  }
  // "ip:port" ("" when empty).
  std::string to_string() const { return empty() ? std::string() : ip() + ":" + std::to_string(port()); }

 private:
  unsigned char addr_[16] = {};  // IPv4: the first 4 bytes
  unsigned char scope_[4] = {};  // IPv6 scope id
  unsigned char port_[2] = {};
  std::uint8_t family_ = 0;  // 0: none, 4 or 6
};

static_assert(sizeof(PeerAddress) == 23 && alignof(PeerAddress) == 1);

}  // namespace synapse::net
