// Connections admitted with the same credential act as the same Principal:
// the pool hands out one shared, immutable copy of it instead of one per
// connection (a Principal is about 400 bytes before its strings, more than
// everything else an idle connection needs). Equal is equal in every field,
// so a key whose record changed (capabilities, rates) or a token with other
// claims gets its own copy; the newest copy of each (key, agent) is the one
// shared from then on.
//
// Not thread-safe: one pool per I/O thread (net::IoThread::principals).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include "auth/principal.hpp"

namespace synapse::auth {

class PrincipalPool {
 public:
  std::shared_ptr<const Principal> share(Principal p) {
    std::string key;
    key.reserve(p.key_id.size() + p.agent_id.size() + 1);
    key += p.key_id;
    key += '\n';
    key += p.agent_id;
    auto& slot = shared_[key];
    if (auto held = slot.lock(); held && *held == p) return held;
    auto fresh = std::make_shared<const Principal>(std::move(p));
    slot = fresh;
    // Entries whose connections are all gone are dropped now and then, so
    // the table stays the size of the credentials in use.
    if (++since_sweep_ >= sweep_every && shared_.size() > 64) {
      since_sweep_ = 0;
      std::erase_if(shared_, [](const auto& e) { return e.second.expired(); });
    }
    return fresh;
  }

  std::size_t size() const noexcept { return shared_.size(); }

 private:
  static constexpr std::size_t sweep_every = 1024;  // new copies between sweeps
  std::unordered_map<std::string, std::weak_ptr<const Principal>> shared_;
  std::size_t since_sweep_ = 0;
};

}  // namespace synapse::auth
