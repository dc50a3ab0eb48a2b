// LocalBroker's answers to the admin API: reads under each shard's lock,
// copying only names, counts and shared message references (a Message copy
// is one atomic increment), so a publish waits at most for that copy.
#include "pubsub/local_broker.hpp"

#include <algorithm>

namespace synapse::pubsub {

std::optional<std::vector<TopicSummary>> LocalBroker::list_topics() {
  std::vector<TopicSummary> out;
  for (auto& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (const auto& [name, t] : shard.topics) {
      TopicSummary s;
      s.name = name;
      s.members = t->members;
      for (auto n : t->presence_per_thread) s.presences += n;
      s.last_offset = t->last_offset;
      s.history = t->history.size();
      out.push_back(std::move(s));
    }
  }
  std::sort(out.begin(), out.end(), [](const TopicSummary& a, const TopicSummary& b) { return a.name < b.name; });
  return out;
}

std::optional<TopicHistory> LocalBroker::inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) {
  TopicHistory h;
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end()) {
    h.summary.name = std::string(topic);
    return h;  // unknown: no members, nothing held
  }
  const Topic& t = *it->second;
  h.summary.name = t.name;
  h.summary.members = t.members;
  for (auto n : t.presence_per_thread) h.summary.presences += n;
  h.summary.last_offset = t.last_offset;
  h.summary.history = t.history.size();
  h.epoch = t.epoch;
  // The newest `limit` messages after `since`.
  auto first = std::find_if(t.history.begin(), t.history.end(), [&](const HistoryEntry& e) { return e.offset > since; });
  const auto available = static_cast<std::size_t>(std::distance(first, t.history.end()));
  if (limit > 0 && available > limit) first += static_cast<std::ptrdiff_t>(available - limit);
  for (auto e = first; e != t.history.end(); ++e) h.messages.emplace_back(e->offset, e->msg);
  return h;
}

}  // namespace synapse::pubsub
