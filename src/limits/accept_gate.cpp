#include "limits/accept_gate.hpp"

#include <algorithm>
#include <utility>

namespace synapse::limits {

SocketPermit::SocketPermit(SocketPermit&& o) noexcept
    : gate_(std::exchange(o.gate_, nullptr)), ip_(std::exchange(o.ip_, nullptr)) {}

SocketPermit& SocketPermit::operator=(SocketPermit&& o) noexcept {
  if (this != &o) {
    release();
    gate_ = std::exchange(o.gate_, nullptr);
    ip_ = std::exchange(o.ip_, nullptr);
  }
  return *this;
}

void SocketPermit::release() noexcept {
  if (gate_) std::exchange(gate_, nullptr)->give_back(*ip_);
}

AcceptVerdict AcceptGate::admit(std::string_view ip, SocketPermit& out) {
  std::lock_guard lock(mu_);
  auto it = per_ip_.find(std::string(ip));
  const std::int64_t held = it == per_ip_.end() ? 0 : it->second;
  if (limits_.per_ip > 0 && held >= limits_.per_ip) return AcceptVerdict::per_ip_full;
  if (limits_.capacity > 0) {
    if (open_ >= limits_.capacity) return AcceptVerdict::full;
    const std::int64_t reserve = std::min(limits_.reserve, limits_.capacity / 2);
    if (open_ >= limits_.capacity - reserve && held >= limits_.reserve_share) return AcceptVerdict::reserved;
  }
  if (it == per_ip_.end()) it = per_ip_.emplace(std::string(ip), 0).first;
  ++it->second;
  ++open_;
  out.release();
  out.gate_ = this;
  out.ip_ = &it->first;
  return AcceptVerdict::ok;
}

void AcceptGate::give_back(const std::string& ip) noexcept {
  std::lock_guard lock(mu_);
  if (open_ > 0) --open_;
  if (auto it = per_ip_.find(ip); it != per_ip_.end() && --it->second <= 0) per_ip_.erase(it);
}

bool AcceptGate::under_pressure() const noexcept {
  std::lock_guard lock(mu_);
  return limits_.capacity > 0 && open_ * 2 >= limits_.capacity;
}

std::int64_t AcceptGate::open() const noexcept {
  std::lock_guard lock(mu_);
  return open_;
}

std::int64_t socket_capacity(std::int64_t nofile, std::int64_t own) noexcept {
  return std::max<std::int64_t>(1, nofile - own);
}

}  // namespace synapse::limits
