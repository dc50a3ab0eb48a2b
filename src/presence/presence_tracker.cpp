#include "presence/presence_tracker.hpp"

#include <algorithm>

#include "protocol/envelope.hpp"

namespace synapse::presence {

std::string meta_json(boost::json::object meta, const std::string& ref, std::int64_t online_at_ms) {
  // Most members join without meta, and refs are ours (hex, '-', digits):
  // the text serialize() would give, without building the object.
  if (meta.empty() && std::all_of(ref.begin(), ref.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
      })) {
    std::string out = "{\"phx_ref\":\"";
    out += ref;
    out += "\",\"online_at\":";
    out += std::to_string(online_at_ms);
    out.push_back('}');
    return out;
  }
  meta["phx_ref"] = ref;
  meta["online_at"] = online_at_ms;
  return boost::json::serialize(meta);
}

namespace {

// `"phx_ref":<ref>,"online_at":`, as meta_json() writes it.
void append_ref_tail(std::string& out, std::string_view ref) {
  out += "\"phx_ref\":";
  protocol::append_json_string(out, ref);
  out += ",\"online_at\":";
}

}  // namespace

PresenceTracker::Meta PresenceTracker::pack(const std::string& ref, std::string json) {
  Meta m;
  // ...{<client fields>,}"phx_ref":"<ref>","online_at":<digits>}
  if (json.size() >= 2 && json.back() == '}') {
    std::size_t digits = json.size() - 1;
    while (digits > 0 && json[digits - 1] >= '0' && json[digits - 1] <= '9') --digits;
    const std::size_t n_digits = json.size() - 1 - digits;
    std::string tail;
    append_ref_tail(tail, ref);
    if (n_digits > 0 && n_digits < 19 && digits >= tail.size() + 1 &&
        json.compare(digits - tail.size(), tail.size(), tail) == 0) {
      const std::size_t head_end = digits - tail.size();
      const char before = json[head_end - 1];
      const std::int64_t at = std::stoll(json.substr(digits, n_digits));
      if ((before == '{' || before == ',') && std::to_string(at) == json.substr(digits, n_digits)) {
        m.head = std::string_view(json).substr(0, head_end);
        m.online_at = at;
        return m;
      }
    }
  }
  m.head = std::string_view(json);
  return m;
}

void PresenceTracker::append(std::string& out, std::string_view ref, const Meta& m) {
  out += m.head.view();
  if (m.online_at < 0) return;
  append_ref_tail(out, ref);
  out += std::to_string(m.online_at);
  out.push_back('}');
}

std::size_t PresenceTracker::kept_bytes(const std::string& agent, std::string_view ref, const Meta& m) {
  if (m.online_at < 0) return entry_bytes(agent, m.head);
  thread_local std::string text;
  text.clear();
  append(text, ref, m);
  return entry_bytes(agent, text);
}

void PresenceTracker::track(const std::string& agent, const std::string& ref, std::string meta_json) {
  bytes_ += entry_bytes(agent, meta_json);
  Change& c = pending_joins_[ref];
  if (!c.meta.head.empty()) bytes_ -= kept_bytes(c.agent, ref, c.meta);  // the same ref again replaces it
  else ++metas_;
  c = Change{agent, pack(ref, std::move(meta_json))};
}

void PresenceTracker::untrack(const std::string& agent, const std::string& ref) {
  if (auto it = pending_joins_.find(ref); it != pending_joins_.end()) {
    // Joined and left within one interval: the join was never published.
    // But a member that joined meanwhile got it in its presence_state, so
    // then the leave is published (others ignore a leave of what they
    // never had, as phoenix.js does); otherwise neither is.
    bytes_ -= kept_bytes(agent, ref, it->second.meta);
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
  bytes_ -= kept_bytes(agent, ref, m->second);
  --metas_;
}

void PresenceTracker::group(std::string& out, const std::map<std::string, Change>& changes) {
  // Changes are keyed by phx_ref; group them by agent for the diff.
  std::map<std::string, std::string> by_agent;
  for (const auto& [ref, change] : changes) {
    std::string& metas = by_agent[change.agent];
    if (!metas.empty()) metas.push_back(',');
    append(metas, ref, change.meta);
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
    if (auto m = a->second.find(ref); m != a->second.end()) a->second.erase(m);
    if (a->second.empty()) published_.erase(a);
  }
  for (auto& [ref, change] : pending_joins_) published_[change.agent].insert_or_assign(SmallText(ref), std::move(change.meta));
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
      append(out, ref, meta);
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
      append(at, ref, change.meta);
    } else {
      std::string& metas = fresh[change.agent];
      if (!metas.empty()) metas.push_back(',');
      append(metas, ref, change.meta);
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
    if (auto m = a->second.find(ref); m != a->second.end()) a->second.erase(m);
    if (a->second.empty()) s.erase(a);
  }
  for (const auto& [ref, change] : pending_joins_) s[change.agent].insert_or_assign(SmallText(ref), change.meta);
  return serialize(s, nullptr);
}

}  // namespace synapse::presence
