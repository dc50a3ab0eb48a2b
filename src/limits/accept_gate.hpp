// Open TCP connections per address and in all, counted from accept(): before
// a byte is read, so a client holding idle sockets that never send a request
// is bounded as tightly as one holding WebSockets (the upgrade-time limits of
// ConnectionLimiter come on top).
//
// Descriptors are the resource. `capacity` is what the process may spend on
// client sockets (its RLIMIT_NOFILE less what it needs for itself). The last
// `reserve` of them go only to addresses holding fewer than `reserve_share`
// sockets, so when one address (or a few) fill the process, /health and
// clients from other addresses are still served. Past half the capacity the
// gate reports pressure and the server shortens the handshake timeout, so
// sockets that send nothing are reclaimed sooner.
//
// Thread safety: one mutex, taken once per accept and once per close.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace synapse::limits {

struct AcceptLimits {
  std::int64_t per_ip = 200;       // open sockets per address; 0 = unlimited
  std::int64_t capacity = 0;       // sockets in all; 0 = unlimited
  std::int64_t reserve = 256;      // the tail of `capacity` kept for small holders
  std::int64_t reserve_share = 4;  // an address below this many sockets may use the reserve
};

enum class AcceptVerdict { ok, per_ip_full, reserved, full };

class SocketPermit;

class AcceptGate {
 public:
  explicit AcceptGate(AcceptLimits limits) : limits_(limits) {}

  AcceptVerdict admit(std::string_view ip, SocketPermit& out);
  // Open sockets at or past half the capacity.
  bool under_pressure() const noexcept;
  std::int64_t open() const noexcept;
  const AcceptLimits& limits() const noexcept { return limits_; }

 private:
  friend class SocketPermit;
  // An address's entry names its gate, for the permits that point at it.
  struct IpCount {
    AcceptGate* gate = nullptr;
    std::int64_t open = 0;
  };
  using Entry = std::pair<const std::string, IpCount>;
  void give_back(Entry& entry) noexcept;

  AcceptLimits limits_;
  mutable std::mutex mu_;
  std::int64_t open_ = 0;
  std::unordered_map<std::string, IpCount> per_ip_;
};

// One accepted socket's place in the counts: given back exactly once, by
// release() or the destructor; a moved-from permit holds nothing. One
// pointer (every connection holds one): the gate's map entry for the
// address, whose node holds the address and names the gate. The entry
// stays, in place (a node-based map), while a permit counts in it.
class SocketPermit {
 public:
  SocketPermit() = default;
  SocketPermit(SocketPermit&& o) noexcept : entry_(std::exchange(o.entry_, nullptr)) {}
  SocketPermit& operator=(SocketPermit&& o) noexcept;
  SocketPermit(const SocketPermit&) = delete;
  SocketPermit& operator=(const SocketPermit&) = delete;
  ~SocketPermit() { release(); }
  void release() noexcept;
  explicit operator bool() const noexcept { return entry_ != nullptr; }

 private:
  friend class AcceptGate;
  AcceptGate::Entry* entry_ = nullptr;
};

// The capacity for a process whose descriptor limit is `nofile`: what is
// left after `own` descriptors for its files, threads' eventfds, SQLite and
// Redis. Never below 1.
std::int64_t socket_capacity(std::int64_t nofile, std::int64_t own) noexcept;

}  // namespace synapse::limits
