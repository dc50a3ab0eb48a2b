// Concurrent and new-connection limits per client IP and per credential
// (protocol section 7). Checked before the WebSocket upgrade; every admitted
// connection holds a Permit whose destruction gives its counts back, so no
// close path can leak them.
//
// Thread safety: one mutex; taken once at admission and once at release.
// The shared counts (a cluster's) are asked outside it: by admit_async()
// without waiting (what an I/O thread uses), by admit() blocking.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "limits/rate_limiter.hpp"
#include "limits/shared_counts.hpp"

namespace synapse::limits {

struct ConnectionLimits {
  std::int64_t per_ip = 100;         // 0 = unlimited
  std::int64_t new_per_ip_min = 10;  // 0 = unlimited
  std::int64_t per_key = 10;         // 0 = unlimited
};

enum class Admission { ok, too_many_connections, connection_rate_exceeded };

class Permit;

struct AdmissionResult {
  Admission verdict = Admission::ok;
  std::int64_t retry_after_s = 0;
};

struct LimiterCounts {
  std::int64_t ip_connections = 0;   // sum over IPs
  std::int64_t key_connections = 0;  // sum over keys
  std::int64_t tracked_ips = 0;
  std::int64_t tracked_keys = 0;
};

class ConnectionLimiter {
 public:
  explicit ConnectionLimiter(ConnectionLimits limits)
      : limits_(limits), arrivals_(Rate::per_minute(limits.new_per_ip_min, limits.new_per_ip_min)) {}

  // Counts across the nodes of a cluster too (not owned; set before use).
  // share(nullptr) before the counts go away: a permit given back later
  // (one held by a task still queued on a stopped thread, released when
  // that thread is destroyed, maybe on another thread) then counts down
  // here only.
  void share(SharedCounts* shared) noexcept { shared_.store(shared, std::memory_order_release); }
  // Whether admissions ask the shared counts (then use admit_async on an I/O thread).
  bool shares() const noexcept { return shared_.load(std::memory_order_acquire) != nullptr; }
  // This node's counts as the shared store keeps them: ("i:<ip>", n) and
  // ("k:<key>", n) for the limits that are on.
  std::vector<std::pair<std::string, std::int64_t>> shared_snapshot();

  // `key` identifies the credential (API key id or token sub); `count_key`
  // is false for --unlimited keys, which skip the per-key limit.
  AdmissionResult admit(std::string_view ip, std::string_view key, bool count_key, Permit& out);
  // The same without waiting on the shared counts: `done(result, permit)`
  // runs once, inside the call when nothing is shared (or the local limits
  // refuse), else on the shared store's thread once it answered. The local
  // counts are taken at once and given back if the shared ones refuse.
  using AdmitDone = std::function<void(AdmissionResult, Permit)>;
  void admit_async(std::string_view ip, std::string_view key, bool count_key, AdmitDone done);
  LimiterCounts counts();
  // Drops per-IP rate state that has fully refilled and holds no connection.
  void sweep();

 private:
  friend class Permit;
  struct IpState;
  struct KeyState;
  using IpEntry = std::pair<const std::string, IpState>;
  using KeyEntry = std::pair<const std::string, KeyState>;
  void give_back(IpEntry& ip, KeyEntry* key) noexcept;
  // The local half of an admission, under the lock: refuses, or counts and,
  // when `shared` (the caller's one load of shared_) is set, sets the shared
  // fields to ask it about (empty: nothing to ask).
  std::optional<AdmissionResult> admit_locally(std::string_view ip, std::string_view key, bool count_key,
                                               const SharedCounts* shared, std::string& ipf, std::string& keyf,
                                               bool& key_counted);
  // The shared store refused: the local counts go back (under the lock).
  void undo_local(std::string_view ip, std::string_view key, bool key_counted);
  // A permit for counts admit_locally() took (and holds, so the entries
  // its pointers name stay): looks the map keys up under the lock.
  Permit make_permit(std::string_view ip, std::string_view key, bool key_counted);
  std::string ip_field(std::string_view ip) const;
  static std::string key_field(std::string_view key) { return key.empty() ? std::string() : "k:" + std::string(key); }

  // An address's entry names its limiter, for the permits that point at it.
  struct IpState {
    ConnectionLimiter* limiter = nullptr;
    std::int64_t open = 0;
    BucketState arrivals;  // at arrivals_ (new_per_ip_min)
  };
  struct KeyState {
    std::int64_t open = 0;
  };

  ConnectionLimits limits_;
  Rate arrivals_;
  // Loaded into a local before it is used: share() may clear it meanwhile.
  std::atomic<SharedCounts*> shared_{nullptr};
  std::mutex mu_;
  std::unordered_map<std::string, IpState> ips_;
  std::unordered_map<std::string, KeyState> keys_;
};

// One admitted connection's place in the counts: released exactly once, by
// release() or the destructor, whichever comes first; a moved-from permit
// holds nothing. 16 bytes (every connection holds one): it points at the
// limiter's map entries themselves, whose nodes hold the address and the
// key, and the address's entry names its limiter, so the permit keeps no
// limiter pointer and no copy of either text. An entry stays, at the same
// address (node-based maps keep nodes in place through rehashes), while a
// permit counts in it.
class Permit {
 public:
  Permit() = default;
  Permit(Permit&& other) noexcept;
  Permit& operator=(Permit&& other) noexcept;
  Permit(const Permit&) = delete;
  Permit& operator=(const Permit&) = delete;
  ~Permit();
  void release() noexcept;
  explicit operator bool() const noexcept { return ip_ != nullptr; }

 private:
  friend class ConnectionLimiter;
  ConnectionLimiter::IpEntry* ip_ = nullptr;    // null: holds nothing
  ConnectionLimiter::KeyEntry* key_ = nullptr;  // null when the key is not counted (unlimited)
};

}  // namespace synapse::limits
