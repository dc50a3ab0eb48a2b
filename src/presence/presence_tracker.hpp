// One topic's presence, in Phoenix Presence's shape:
//   {"<agent>": {"metas": [{"phx_ref": ..., "online_at": ..., ...meta}, ...]}}
//
// Changes collect as pending joins and leaves and are published together by
// flush(), once per presence interval, as one presence_diff. The state sent
// to a new presence member is the *published* state, so that it and the next
// diff fit together exactly (no change is seen twice or missed), and its
// serialization is cached until the next flush changes it: a storm of joins
// within one interval serializes the state once, not once per joiner.
//
// Not thread-safe: the owner (the broker's topic) guards it.
#pragma once

#include <boost/json.hpp>
#include <cstddef>
#include <map>
#include <optional>
#include <string>

namespace synapse::presence {

class PresenceTracker {
 public:
  void track(const std::string& agent, const std::string& ref, boost::json::object meta);
  void untrack(const std::string& agent, const std::string& ref);

  bool has_pending() const noexcept { return !pending_joins_.empty() || !pending_leaves_.empty(); }
  // Publishes pending changes; returns the diff {"joins": ..., "leaves": ...},
  // or nothing when there was none.
  std::optional<boost::json::object> flush();

  // The published state, serialized (cached).
  const std::string& published_json();
  // The published state plus a new member's own meta, which is still
  // pending: what that member is sent as presence_state (Phoenix includes the
  // joiner). The next diff repeats the join; clients apply it idempotently.
  std::string state_for_joiner(const std::string& agent, const std::string& ref);
  // The state including unpublished changes (for GET /api/presence).
  boost::json::object current() const;

  std::size_t size() const noexcept { return metas_; }
  bool empty() const noexcept { return metas_ == 0 && !has_pending(); }

 private:
  using Metas = std::map<std::string, boost::json::object>;  // phx_ref -> meta
  using State = std::map<std::string, Metas>;                 // agent -> metas
  struct Change {
    std::string agent;
    boost::json::object meta;
  };

  static boost::json::object to_json(const State& s);
  static void group(boost::json::object& out, const std::map<std::string, Change>& changes);

  State published_;
  std::map<std::string, Change> pending_joins_;   // phx_ref -> change
  std::map<std::string, Change> pending_leaves_;  // phx_ref -> change
  std::size_t metas_ = 0;                         // tracked now, pending included
  std::string cache_;
  bool cache_valid_ = false;
};

}  // namespace synapse::presence
