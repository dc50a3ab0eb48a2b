#include "presence/presence_tracker.hpp"

namespace synapse::presence {
namespace json = boost::json;

void PresenceTracker::track(const std::string& agent, const std::string& ref, json::object meta) {
  pending_joins_[ref] = Change{agent, std::move(meta)};
  ++metas_;
}

void PresenceTracker::untrack(const std::string& agent, const std::string& ref) {
  if (auto it = pending_joins_.find(ref); it != pending_joins_.end()) {
    // Joined and left within one interval: nobody saw the join, so neither
    // needs to be published.
    pending_joins_.erase(it);
    --metas_;
    return;
  }
  auto a = published_.find(agent);
  if (a == published_.end()) return;
  auto m = a->second.find(ref);
  if (m == a->second.end()) return;
  pending_leaves_[ref] = Change{agent, m->second};
  --metas_;
}

void PresenceTracker::group(json::object& out, const std::map<std::string, Change>& changes) {
  for (const auto& [ref, change] : changes) {
    json::value& entry = out[change.agent];
    if (!entry.is_object()) entry = json::object{{"metas", json::array()}};
    entry.as_object()["metas"].as_array().push_back(change.meta);
  }
}

std::optional<json::object> PresenceTracker::flush() {
  if (!has_pending()) return std::nullopt;
  json::object joins;
  json::object leaves;
  group(joins, pending_joins_);
  group(leaves, pending_leaves_);
  for (auto& [ref, change] : pending_leaves_) {
    auto a = published_.find(change.agent);
    if (a == published_.end()) continue;
    a->second.erase(ref);
    if (a->second.empty()) published_.erase(a);
  }
  for (auto& [ref, change] : pending_joins_) published_[change.agent][ref] = std::move(change.meta);
  pending_joins_.clear();
  pending_leaves_.clear();
  cache_valid_ = false;
  return json::object{{"joins", std::move(joins)}, {"leaves", std::move(leaves)}};
}

json::object PresenceTracker::to_json(const State& s) {
  json::object out;
  out.reserve(s.size());
  for (const auto& [agent, metas] : s) {
    json::array arr;
    arr.reserve(metas.size());
    for (const auto& [ref, meta] : metas) arr.push_back(meta);
    out[agent] = json::object{{"metas", std::move(arr)}};
  }
  return out;
}

const std::string& PresenceTracker::published_json() {
  if (!cache_valid_) {
    cache_ = json::serialize(to_json(published_));
    cache_valid_ = true;
    // A large cache of an emptied topic should not linger.
    if (published_.empty()) cache_.shrink_to_fit();
  }
  return cache_;
}

std::string PresenceTracker::state_for_joiner(const std::string& agent, const std::string& ref) {
  auto pending = pending_joins_.find(ref);
  if (pending == pending_joins_.end()) return published_json();
  if (published_.find(agent) == published_.end()) {
    // The common case: splice the joiner's entry into the cached state
    // instead of serializing the whole state again.
    const std::string& base = published_json();
    std::string out = "{";
    out += json::serialize(json::string(agent));
    out += ":{\"metas\":[";
    out += json::serialize(pending->second.meta);
    out += "]}";
    if (base.size() > 2) out.push_back(',');
    out.append(base, 1, std::string::npos);
    return out;
  }
  State s = published_;
  s[agent][ref] = pending->second.meta;
  return json::serialize(to_json(s));
}

json::object PresenceTracker::current() const {
  State s = published_;
  for (const auto& [ref, change] : pending_leaves_) {
    auto a = s.find(change.agent);
    if (a == s.end()) continue;
    a->second.erase(ref);
    if (a->second.empty()) s.erase(a);
  }
  for (const auto& [ref, change] : pending_joins_) s[change.agent][ref] = change.meta;
  return to_json(s);
}

}  // namespace synapse::presence
