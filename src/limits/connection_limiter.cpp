#include "limits/connection_limiter.hpp"

namespace synapse::limits {

Permit::Permit(Permit&& o) noexcept
    : limiter_(std::exchange(o.limiter_, nullptr)), ip_(std::move(o.ip_)), key_(std::move(o.key_)) {}

Permit& Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    release();
    limiter_ = std::exchange(o.limiter_, nullptr);
    ip_ = std::move(o.ip_);
    key_ = std::move(o.key_);
  }
  return *this;
}

Permit::~Permit() { release(); }

void Permit::release() noexcept {
  if (limiter_) std::exchange(limiter_, nullptr)->give_back(ip_, key_);
}

AdmissionResult ConnectionLimiter::admit(std::string_view ip, std::string_view key, bool count_key,
                                         Permit& out) {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  auto [it, fresh] = ips_.try_emplace(std::string(ip));
  IpState& st = it->second;
  if (fresh) st.arrivals = TokenBucket(limits_.new_per_ip_min, limits_.new_per_ip_min, now);

  if (limits_.per_ip > 0 && st.open >= limits_.per_ip) return {Admission::too_many_connections, 1};
  std::int64_t* key_open = nullptr;
  if (count_key && limits_.per_key > 0) {
    key_open = &keys_[std::string(key)];
    if (*key_open >= limits_.per_key) {
      if (*key_open == 0) keys_.erase(std::string(key));
      return {Admission::too_many_connections, 1};
    }
  }
  // Only an admissible connection spends an arrival token.
  const auto take = st.arrivals.take(now);
  if (!take.ok) {
    if (key_open && *key_open == 0) keys_.erase(std::string(key));
    return {Admission::connection_rate_exceeded, (take.retry_after_ms + 999) / 1000};
  }
  ++st.open;
  if (key_open) ++*key_open;
  out.release();
  out.limiter_ = this;
  out.ip_ = std::string(ip);
  out.key_ = key_open ? std::string(key) : std::string();
  return {Admission::ok, 0};
}

void ConnectionLimiter::give_back(const std::string& ip, const std::string& key) noexcept {
  std::lock_guard lock(mu_);
  if (auto it = ips_.find(ip); it != ips_.end() && it->second.open > 0) --it->second.open;
  if (!key.empty()) {
    if (auto it = keys_.find(key); it != keys_.end()) {
      if (--it->second <= 0) keys_.erase(it);
    }
  }
}

LimiterCounts ConnectionLimiter::counts() {
  std::lock_guard lock(mu_);
  LimiterCounts c;
  for (const auto& [ip, st] : ips_) c.ip_connections += st.open;
  for (const auto& [k, n] : keys_) c.key_connections += n;
  c.tracked_ips = static_cast<std::int64_t>(ips_.size());
  c.tracked_keys = static_cast<std::int64_t>(keys_.size());
  return c;
}

void ConnectionLimiter::sweep() {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  for (auto it = ips_.begin(); it != ips_.end();) {
    const bool refilled = it->second.arrivals.unlimited() ||
                          it->second.arrivals.available(now) >= static_cast<double>(limits_.new_per_ip_min);
    if (it->second.open == 0 && refilled) {
      it = ips_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace synapse::limits
