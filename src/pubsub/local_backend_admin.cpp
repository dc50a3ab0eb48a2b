// LocalBackend's answers to the admin API: reads under each shard's lock,
// copying names, counts and the bodies asked for.
#include "pubsub/local_backend.hpp"

#include <algorithm>

namespace synapse::pubsub {

std::optional<std::vector<BackendTopic>> LocalBackend::list_topics() {
  std::vector<BackendTopic> out;
  for (auto& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (const auto& [name, t] : shard.topics) {
      BackendTopic s;
      s.name = name;
      s.epoch = t->epoch;
      s.last_offset = t->last_offset;
      s.history = t->history.size();
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::optional<BackendTopic> LocalBackend::inspect_topic(std::string_view topic, std::uint64_t since,
                                                        std::size_t limit) {
  BackendTopic h;
  h.name = std::string(topic);
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(h.name);
  if (it == shard.topics.end()) return h;  // unknown: nothing held
  const Topic& t = *it->second;
  h.epoch = t.epoch;
  h.last_offset = t.last_offset;
  h.history = t.history.size();
  // The newest `limit` messages after `since`.
  auto first = std::find_if(t.history.begin(), t.history.end(), [&](const HistoryEntry& e) { return e.offset > since; });
  const auto available = static_cast<std::size_t>(std::distance(first, t.history.end()));
  if (limit > 0 && available > limit) first += static_cast<std::ptrdiff_t>(available - limit);
  for (auto e = first; e != t.history.end(); ++e) h.bodies.emplace_back(e->offset, e->body);
  return h;
}

}  // namespace synapse::pubsub
