#include "presence/presence_tracker.hpp"

#include "protocol/envelope.hpp"

namespace synapse::presence {

std::string meta_json(boost::json::object meta, const std::string& ref, std::int64_t online_at_ms) {
  meta["phx_ref"] = ref;
  meta["online_at"] = online_at_ms;
  return boost::json::serialize(meta);
}

void PresenceTracker::track(const std::string& agent, const std::string& ref, std::string meta_json) {
  bytes_ += entry_bytes(agent, meta_json);
  Change& c = pending_joins_[ref];
  if (!c.meta.empty()) bytes_ -= entry_bytes(c.agent, c.meta);  // the same ref again replaces it
  else ++metas_;
  c = Change{agent, std::move(meta_json)};
}

void PresenceTracker::untrack(const std::string& agent, const std::string& ref) {
  if (auto it = pending_joins_.find(ref); it != pending_joins_.end()) {
    // Joined and left within one interval: the join was never published.
    // But a member that joined meanwhile got it in its presence_state, so
    // then the leave is published (others ignore a leave of what they
    // never had, as phoenix.js does); otherwise neither is.
    bytes_ -= entry_bytes(agent, it->second.meta);
    if (pending_shown_) pending_leaves_[ref] = std::move(it->second);
    pending_joins_.erase(it);
    --metas_;
    return;
  }
  auto a = published_.find(agent);
  if (a == published_.end()) return;
  auto m = a->second.find(ref);
  if (m == a->second.end()) return;
  if (pending_leaves_.contains(ref)) return;  // already leaving
  pending_leaves_[ref] = Change{agent, m->second};
  bytes_ -= entry_bytes(agent, m->second);
  --metas_;
}

void PresenceTracker::group(std::string& out, const std::map<std::string, Change>& changes) {
  // Changes are keyed by phx_ref; group them by agent for the diff.
  std::map<std::string, std::string> by_agent;
  for (const auto& [ref, change] : changes) {
    std::string& metas = by_agent[change.agent];
    if (!metas.empty()) metas.push_back(',');
    metas += change.meta;
  }
  out.push_back('{');
  bool first = true;
  for (const auto& [agent, metas] : by_agent) {
    if (!first) out.push_back(',');
    first = false;
    protocol::append_json_string(out, agent);
    out += ":{\"metas\":[";
    out += metas;
    out += "]}";
  }
  out.push_back('}');
}

std::optional<std::string> PresenceTracker::flush() {
  if (!has_pending()) return std::nullopt;
  std::string diff = "{\"joins\":";
  group(diff, pending_joins_);
  diff += ",\"leaves\":";
  group(diff, pending_leaves_);
  diff.push_back('}');
  for (auto& [ref, change] : pending_leaves_) {
    auto a = published_.find(change.agent);
    if (a == published_.end()) continue;
    a->second.erase(ref);
    if (a->second.empty()) published_.erase(a);
  }
  for (auto& [ref, change] : pending_joins_) published_[change.agent][ref] = std::move(change.meta);
  pending_joins_.clear();
  pending_leaves_.clear();
  pending_shown_ = false;
  cache_valid_ = false;
  return diff;
}

std::string PresenceTracker::serialize(const State& s, std::unordered_map<std::string, std::size_t>* ends) {
  std::string out = "{";
  bool first_agent = true;
  for (const auto& [agent, metas] : s) {
    if (!first_agent) out.push_back(',');
    first_agent = false;
    protocol::append_json_string(out, agent);
    out += ":{\"metas\":[";
    bool first = true;
    for (const auto& [ref, meta] : metas) {
      if (!first) out.push_back(',');
      first = false;
      out += meta;
    }
    if (ends) (*ends)[agent] = out.size();
    out += "]}";
  }
  out.push_back('}');
  return out;
}

const std::string& PresenceTracker::published_json() {
  if (!cache_valid_) {
    cache_ends_.clear();
    cache_ = serialize(published_, &cache_ends_);
    cache_valid_ = true;
    if (published_.empty()) {
      cache_.shrink_to_fit();
      cache_ends_ = {};
    }
  }
  return cache_;
}

std::string PresenceTracker::state_for_joiner() {
  const std::string& base = published_json();
  if (pending_joins_.empty()) return base;
  pending_shown_ = true;
  // Pending metas by agent: those of agents already in the cached text go
  // in at the end of their lists (in text order, so offsets stay valid);
  // new agents' entries go first.
  std::map<std::size_t, std::string> inserts;  // offset -> ",meta,meta"
  std::map<std::string, std::string> fresh;    // agent -> "meta,meta"
  for (const auto& [ref, change] : pending_joins_) {
    if (auto end = cache_ends_.find(change.agent); end != cache_ends_.end()) {
      std::string& at = inserts[end->second];
      at.push_back(',');
      at += change.meta;
    } else {
      std::string& metas = fresh[change.agent];
      if (!metas.empty()) metas.push_back(',');
      metas += change.meta;
    }
  }
  std::string out = "{";
  for (const auto& [agent, metas] : fresh) {
    protocol::append_json_string(out, agent);
    out += ":{\"metas\":[";
    out += metas;
    out += "]},";
  }
  if (base.size() <= 2) {
    out.back() = '}';  // the published state was empty: drop the trailing comma
    return out;
  }
  std::size_t from = 1;
  for (const auto& [offset, metas] : inserts) {
    out.append(base, from, offset - from);
    out += metas;
    from = offset;
  }
  out.append(base, from, std::string::npos);
  return out;
}

std::string PresenceTracker::current_json() const {
  State s = published_;
  for (const auto& [ref, change] : pending_leaves_) {
    auto a = s.find(change.agent);
    if (a == s.end()) continue;
    a->second.erase(ref);
    if (a->second.empty()) s.erase(a);
  }
  for (const auto& [ref, change] : pending_joins_) s[change.agent][ref] = change.meta;
  return serialize(s, nullptr);
}

}  // namespace synapse::presence
