// Connection counts of a cluster in Redis: each node keeps its own counts in
// the hash P cc:<node>; a limit is checked against the sum over the nodes
// whose heartbeat is current, so a dead node's connections stop counting as
// soon as its heartbeat expires (and the reaper deletes its hash).
#pragma once

#include <chrono>

#include "limits/shared_counts.hpp"
#include "redis/script.hpp"

namespace synapse::redis {
class Link;
}

namespace synapse::cluster {

class RedisConnectionCounts final : public limits::SharedCounts {
 public:
  RedisConnectionCounts(redis::Link& link, std::string prefix, std::string node_id,
                        std::chrono::milliseconds timeout);

  // Blocks up to the timeout (tests and tools; the limiter's admit()).
  Verdict acquire(const std::string& ip_field, std::int64_t ip_limit, const std::string& key_field,
                  std::int64_t key_limit) override;
  // What admission uses: `done` runs on the link's thread, within the timeout.
  void acquire_async(const std::string& ip_field, std::int64_t ip_limit, const std::string& key_field,
                     std::int64_t key_limit, AcquireDone done) override;
  void release(const std::string& ip_field, const std::string& key_field) override;
  void replace(std::vector<std::pair<std::string, std::int64_t>> counts) override;

 private:
  redis::Link& link_;
  std::string prefix_;
  std::string node_id_;
  std::string hash_;  // P cc:<node>
  std::chrono::milliseconds timeout_;
  redis::Script acquire_, release_, replace_;
};

}  // namespace synapse::cluster
