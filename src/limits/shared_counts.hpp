// Connection counts shared by the nodes of a cluster, so that a limit holds
// across nodes. The connection limiter checks its own node first, then asks
// here; an unavailable store admits on the local count alone (the counts are
// written again in full when it comes back).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace synapse::limits {

class SharedCounts {
 public:
  enum class Verdict { ok, ip_full, key_full, unavailable };

  // Counts one connection on `ip_field` and `key_field` (empty: not
  // counted) unless either total across nodes has reached its limit.
  virtual Verdict acquire(const std::string& ip_field, std::int64_t ip_limit, const std::string& key_field,
                          std::int64_t key_limit) = 0;
  // The same without waiting: `done` runs once, on any thread (the store's
  // own, for a remote one). The default answers at once through acquire().
  using AcquireDone = std::function<void(Verdict)>;
  virtual void acquire_async(const std::string& ip_field, std::int64_t ip_limit, const std::string& key_field,
                             std::int64_t key_limit, AcquireDone done) {
    done(acquire(ip_field, ip_limit, key_field, key_limit));
  }
  virtual void release(const std::string& ip_field, const std::string& key_field) = 0;
  // Replaces this node's counts with `counts` (field, count).
  virtual void replace(std::vector<std::pair<std::string, std::int64_t>> counts) = 0;

 protected:
  ~SharedCounts() = default;
};

}  // namespace synapse::limits
