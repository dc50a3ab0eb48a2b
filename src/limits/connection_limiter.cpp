#include "limits/connection_limiter.hpp"

namespace synapse::limits {

Permit::Permit(Permit&& o) noexcept
    : limiter_(std::exchange(o.limiter_, nullptr)),
      ip_(std::exchange(o.ip_, nullptr)),
      key_(std::exchange(o.key_, nullptr)) {}

Permit& Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    release();
    limiter_ = std::exchange(o.limiter_, nullptr);
    ip_ = std::exchange(o.ip_, nullptr);
    key_ = std::exchange(o.key_, nullptr);
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
  std::unique_lock lock(mu_);
  auto [it, fresh] = ips_.try_emplace(std::string(ip));
  IpState& st = it->second;
  const std::string* ip_name = &it->first;  // a pointer survives a rehash; `it` may not
  if (fresh) st.arrivals = TokenBucket(limits_.new_per_ip_min, limits_.new_per_ip_min, now);

  if (limits_.per_ip > 0 && st.open >= limits_.per_ip) return {Admission::too_many_connections, 1};
  std::int64_t* key_open = nullptr;
  const std::string* key_name = nullptr;
  if (count_key && limits_.per_key > 0) {
    auto k = keys_.try_emplace(std::string(key)).first;
    key_open = &k->second;
    key_name = &k->first;
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
  if (shared_) {
    const std::string ipf = ip_field(ip), keyf = key_open ? key_field(key) : std::string();
    if (!ipf.empty() || !keyf.empty()) {
      // A blocking round trip to the shared store; the lock is not held.
      lock.unlock();
      const auto v = shared_->acquire(ipf, limits_.per_ip, keyf, limits_.per_key);
      lock.lock();
      if (v == SharedCounts::Verdict::ip_full || v == SharedCounts::Verdict::key_full) {
        if (auto i = ips_.find(std::string(ip)); i != ips_.end() && i->second.open > 0) --i->second.open;
        if (!keyf.empty()) {
          if (auto k = keys_.find(std::string(key)); k != keys_.end() && --k->second <= 0) keys_.erase(k);
        }
        return {Admission::too_many_connections, 1};
      }
    }
  }
  out.release();
  out.limiter_ = this;
  out.ip_ = ip_name;  // node-based maps: the keys stay where they are
  out.key_ = key_name;
  return {Admission::ok, 0};
}

void ConnectionLimiter::give_back(const std::string* ip, const std::string* key) noexcept {
  // The fields first: `ip` and `key` are this limiter's map keys, gone once
  // their entries are erased below.
  std::string ipf, keyf;
  bool fields = false;
  if (shared_) {
    try {
      ipf = ip_field(*ip);
      keyf = key ? key_field(*key) : std::string();
      fields = true;
    } catch (...) {
      // Out of memory while building a field: the counts are written again
      // in full on the next re-registration.
    }
  }
  {
    std::lock_guard lock(mu_);
    if (auto it = ips_.find(*ip); it != ips_.end() && it->second.open > 0) --it->second.open;
    if (key) {
      if (auto it = keys_.find(*key); it != keys_.end()) {
        if (--it->second <= 0) keys_.erase(it);
      }
    }
  }
  if (fields && (!ipf.empty() || !keyf.empty())) {
    try {
      shared_->release(ipf, keyf);
    } catch (...) {
    }
  }
}

std::string ConnectionLimiter::ip_field(std::string_view ip) const {
  return limits_.per_ip > 0 ? "i:" + std::string(ip) : std::string();
}

std::vector<std::pair<std::string, std::int64_t>> ConnectionLimiter::shared_snapshot() {
  std::vector<std::pair<std::string, std::int64_t>> out;
  std::lock_guard lock(mu_);
  if (limits_.per_ip > 0) {
    for (const auto& [ip, st] : ips_) {
      if (st.open > 0) out.emplace_back("i:" + ip, st.open);
    }
  }
  for (const auto& [k, n] : keys_) {
    if (n > 0) out.emplace_back(key_field(k), n);
  }
  return out;
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
