#include "limits/connection_limiter.hpp"

namespace synapse::limits {

Permit::Permit(Permit&& o) noexcept : ip_(std::exchange(o.ip_, nullptr)), key_(std::exchange(o.key_, nullptr)) {}

Permit& Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    release();
    ip_ = std::exchange(o.ip_, nullptr);
    key_ = std::exchange(o.key_, nullptr);
  }
  return *this;
}

Permit::~Permit() { release(); }

void Permit::release() noexcept {
  if (!ip_) return;
  // Cleared first: whatever give_back does, this permit holds nothing after.
  ConnectionLimiter::IpEntry& ip = *std::exchange(ip_, nullptr);
  ConnectionLimiter::KeyEntry* key = std::exchange(key_, nullptr);
  // The entry's limiter field is written once, under the lock, before any
  // permit can point at the entry, and never changes.
  ip.second.limiter->give_back(ip, key);
}

std::optional<AdmissionResult> ConnectionLimiter::admit_locally(std::string_view ip, std::string_view key,
                                                                bool count_key, const SharedCounts* shared,
                                                                std::string& ipf, std::string& keyf,
                                                                bool& key_counted) {
  const auto now = Clock::now();
  key_counted = false;
  std::lock_guard lock(mu_);
  auto [it, fresh] = ips_.try_emplace(std::string(ip));
  IpState& st = it->second;
  if (fresh) st.limiter = this;  // a new address's bucket starts full

  if (limits_.per_ip > 0 && st.open >= limits_.per_ip) return AdmissionResult{Admission::too_many_connections, 1};
  std::int64_t* key_open = nullptr;
  if (count_key && limits_.per_key > 0) {
    key_open = &keys_[std::string(key)].open;
    if (*key_open >= limits_.per_key) {
      if (*key_open == 0) keys_.erase(std::string(key));
      return AdmissionResult{Admission::too_many_connections, 1};
    }
  }
  // Only an admissible connection spends an arrival token.
  const auto take = st.arrivals.take(arrivals_, now);
  if (!take.ok) {
    if (key_open && *key_open == 0) keys_.erase(std::string(key));
    return AdmissionResult{Admission::connection_rate_exceeded, (take.retry_after_ms + 999) / 1000};
  }
  ++st.open;
  if (key_open) ++*key_open;
  key_counted = key_open != nullptr;
  if (shared) {
    ipf = ip_field(ip);
    keyf = key_counted ? key_field(key) : std::string();
  }
  return std::nullopt;
}

void ConnectionLimiter::undo_local(std::string_view ip, std::string_view key, bool key_counted) {
  std::lock_guard lock(mu_);
  if (auto i = ips_.find(std::string(ip)); i != ips_.end() && i->second.open > 0) --i->second.open;
  if (key_counted) {
    if (auto k = keys_.find(std::string(key)); k != keys_.end() && --k->second.open <= 0) keys_.erase(k);
  }
}

Permit ConnectionLimiter::make_permit(std::string_view ip, std::string_view key, bool key_counted) {
  Permit p;
  std::lock_guard lock(mu_);
  // Node-based maps: an entry stays where it is (rehashes included) while
  // it lives, and the counts taken for this permit keep it alive.
  p.ip_ = &*ips_.find(std::string(ip));
  p.key_ = key_counted ? &*keys_.find(std::string(key)) : nullptr;
  return p;
}

AdmissionResult ConnectionLimiter::admit(std::string_view ip, std::string_view key, bool count_key,
                                         Permit& out) {
  std::string ipf, keyf;
  bool key_counted = false;
  SharedCounts* const shared = shared_.load(std::memory_order_acquire);
  if (auto refused = admit_locally(ip, key, count_key, shared, ipf, keyf, key_counted)) return *refused;
  if (!ipf.empty() || !keyf.empty()) {  // only with `shared` set
    // A blocking round trip to the shared store; the lock is not held.
    const auto v = shared->acquire(ipf, limits_.per_ip, keyf, limits_.per_key);
    if (v == SharedCounts::Verdict::ip_full || v == SharedCounts::Verdict::key_full) {
      undo_local(ip, key, key_counted);
      return {Admission::too_many_connections, 1};
    }
  }
  out = make_permit(ip, key, key_counted);
  return {Admission::ok, 0};
}

void ConnectionLimiter::admit_async(std::string_view ip, std::string_view key, bool count_key, AdmitDone done) {
  std::string ipf, keyf;
  bool key_counted = false;
  SharedCounts* const shared = shared_.load(std::memory_order_acquire);
  if (auto refused = admit_locally(ip, key, count_key, shared, ipf, keyf, key_counted)) {
    done(*refused, Permit{});
    return;
  }
  if (ipf.empty() && keyf.empty()) {  // always so without `shared`
    done({Admission::ok, 0}, make_permit(ip, key, key_counted));
    return;
  }
  // The local counts are held for the answer; a `done` never called (a
  // stopped store) still gives them back.
  struct Held {
    ConnectionLimiter* limiter = nullptr;
    std::string ip, key;
    bool key_counted = false;
    bool armed = false;
    ~Held() {
      if (armed) limiter->undo_local(ip, key, key_counted);
    }
  };
  auto held = std::make_shared<Held>();
  held->limiter = this;
  held->ip = std::string(ip);
  held->key = std::string(key);
  held->key_counted = key_counted;
  held->armed = true;
  shared->acquire_async(ipf, limits_.per_ip, keyf, limits_.per_key,
                         [held, done = std::move(done)](SharedCounts::Verdict v) {
                           held->armed = false;
                           ConnectionLimiter& self = *held->limiter;
                           if (v == SharedCounts::Verdict::ip_full || v == SharedCounts::Verdict::key_full) {
                             // Only the local counts go back: the store counted nothing.
                             self.undo_local(held->ip, held->key, held->key_counted);
                             done({Admission::too_many_connections, 1}, Permit{});
                             return;
                           }
                           // Counted there, or the store is unavailable: admitted
                           // on the local counts (see shared_counts.hpp).
                           done({Admission::ok, 0}, self.make_permit(held->ip, held->key, held->key_counted));
                         });
}

void ConnectionLimiter::give_back(IpEntry& ip, KeyEntry* key) noexcept {
  // The fields first: `ip` and `key` are this limiter's map entries; the
  // key's is gone once erased below (and the address's once swept after).
  std::string ipf, keyf;
  bool fields = false;
  SharedCounts* const shared = shared_.load(std::memory_order_acquire);
  if (shared) {
    try {
      ipf = ip_field(ip.first);
      keyf = key ? key_field(key->first) : std::string();
      fields = true;
    } catch (...) {
      // Out of memory while building a field: the counts are written again
      // in full on the next re-registration.
    }
  }
  {
    std::lock_guard lock(mu_);
    // The address's entry is counted down in place (only sweep() erases
    // one, once it counts nothing); the key's is found again to be erased
    // with its last connection.
    if (ip.second.open > 0) --ip.second.open;
    if (key && --key->second.open <= 0) keys_.erase(keys_.find(key->first));
  }
  if (fields && (!ipf.empty() || !keyf.empty())) {
    try {
      shared->release(ipf, keyf);
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
  for (const auto& [k, st] : keys_) {
    if (st.open > 0) out.emplace_back(key_field(k), st.open);
  }
  return out;
}

LimiterCounts ConnectionLimiter::counts() {
  std::lock_guard lock(mu_);
  LimiterCounts c;
  for (const auto& [ip, st] : ips_) c.ip_connections += st.open;
  for (const auto& [k, st] : keys_) c.key_connections += st.open;
  c.tracked_ips = static_cast<std::int64_t>(ips_.size());
  c.tracked_keys = static_cast<std::int64_t>(keys_.size());
  return c;
}

void ConnectionLimiter::sweep() {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  for (auto it = ips_.begin(); it != ips_.end();) {
    const bool refilled = arrivals_.unlimited() ||
                          it->second.arrivals.available(arrivals_, now) >= static_cast<double>(limits_.new_per_ip_min);
    if (it->second.open == 0 && refilled) {
      it = ips_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace synapse::limits
