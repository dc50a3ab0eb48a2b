#include "limits/accept_gate.hpp"

#include <algorithm>
#include <utility>

namespace synapse::limits {

SocketPermit& SocketPermit::operator=(SocketPermit&& o) noexcept {
  if (this != &o) {
    release();
    entry_ = std::exchange(o.entry_, nullptr);
  }
  return *this;
}

void SocketPermit::release() noexcept {
  // Cleared first: this permit holds nothing once give_back runs. The
  // entry's gate is written once, under the lock, before a permit names it.
  if (entry_) {
    AcceptGate::Entry& e = *std::exchange(entry_, nullptr);
    e.second.gate->give_back(e);
  }
}

AcceptVerdict AcceptGate::admit(std::string_view ip, SocketPermit& out) {
  // What `out` held is given back once the lock is released (`previous` is
  // destroyed after `lock`): giving back takes the same mutex when it was a
  // permit of this gate.
  SocketPermit previous;
  std::lock_guard lock(mu_);
  auto it = per_ip_.find(std::string(ip));
  const std::int64_t held = it == per_ip_.end() ? 0 : it->second.open;
  if (limits_.per_ip > 0 && held >= limits_.per_ip) return AcceptVerdict::per_ip_full;
  if (limits_.capacity > 0) {
    if (open_ >= limits_.capacity) return AcceptVerdict::full;
    const std::int64_t reserve = std::min(limits_.reserve, limits_.capacity / 2);
    if (open_ >= limits_.capacity - reserve && held >= limits_.reserve_share) return AcceptVerdict::reserved;
  }
  if (it == per_ip_.end()) it = per_ip_.emplace(std::string(ip), IpCount{this, 0}).first;
  ++it->second.open;
  ++open_;
  previous = std::move(out);
  out.entry_ = &*it;
  return AcceptVerdict::ok;
}

void AcceptGate::give_back(Entry& entry) noexcept {
  std::lock_guard lock(mu_);
  if (open_ > 0) --open_;
  // Counted down in place; found again by its key only to be erased with
  // the address's last socket.
  if (--entry.second.open <= 0) per_ip_.erase(per_ip_.find(entry.first));
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
