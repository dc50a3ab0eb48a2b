// One topic's presence, in Phoenix Presence's shape:
//   {"<agent>": {"metas": [{"phx_ref": ..., "online_at": ..., ...meta}, ...]}}
//
// Changes collect as pending joins and leaves and are published together by
// flush(), once per presence interval, as one presence_diff. A new presence
// member is sent the published state plus every pending join (its own
// included), as Phoenix lists everything tracked; the next diff repeats those
// joins and carries any pending leaves, and clients apply joins by phx_ref,
// so the member's view ends exact.
//
// Metas are kept as serialized JSON, and the published state's serialization
// is cached with the offset where each agent's metas end: a storm of joins
// within one interval builds every joiner's state by splicing one meta into
// the cached text, never by re-serializing the whole state.
//
// Not thread-safe: the owner (the broker's topic) guards it.
#pragma once

#include <boost/json.hpp>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/small_text.hpp"

namespace synapse::presence {

// A member's meta as tracked: the client's meta plus phx_ref and online_at.
std::string meta_json(boost::json::object meta, const std::string& ref, std::int64_t online_at_ms);

// The bytes one meta adds to a serialized state, at most: the agent key,
// the meta, and the JSON around them. What the per-topic cap counts.
inline std::size_t entry_bytes(std::string_view agent, std::string_view meta_json) noexcept {
  return agent.size() + meta_json.size() + 16;
}

class PresenceTracker {
 public:
  // `meta_json` is a serialized JSON object (phx_ref and online_at included).
  void track(const std::string& agent, const std::string& ref, std::string meta_json);
  void untrack(const std::string& agent, const std::string& ref);

  bool has_pending() const noexcept { return !pending_joins_.empty() || !pending_leaves_.empty(); }
  // Publishes pending changes; returns the diff payload
  // {"joins": ..., "leaves": ...} as JSON text, or nothing when there was none.
  std::optional<std::string> flush();

  // The published state, serialized (cached).
  const std::string& published_json();
  // The published state plus every pending join: what a joining member is
  // sent as presence_state.
  std::string state_for_joiner();
  // The state including unpublished changes, as JSON text (GET /api/presence).
  std::string current_json() const;

  std::size_t size() const noexcept { return metas_; }
  // entry_bytes() of every meta tracked now (pending joins included,
  // pending leaves not): a bound on the size of state_for_joiner().
  std::size_t bytes() const noexcept { return bytes_; }
  bool empty() const noexcept { return metas_ == 0 && !has_pending(); }

 private:
  // A meta as kept. Its text ends, almost always, with the phx_ref and
  // online_at that meta_json() added, and the phx_ref is the key it is
  // filed under: then only the part before them and online_at are kept,
  // and the text is rebuilt byte for byte on output. A member that joined
  // without meta so keeps no text of its own ("{" fits in the string).
  // 24 bytes: every tracked member has one (a std::string head made the
  // member's map node 16 bytes bigger; most heads are `{`).
  struct Meta {
    SmallText head;
    std::int64_t online_at = -1;  // -1: `head` is the whole text
  };
  // phx_ref -> meta. The key is a SmallText (a ref, "<6 hex>-<counter>",
  // fits inside it): the member's map node is 72 bytes, not 88. Looked up
  // by any text (transparent), in std::string's order.
  struct RefLess {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const noexcept { return a < b; }
  };
  using Metas = std::map<SmallText, Meta, RefLess>;
  using State = std::map<std::string, Metas>;  // agent -> metas
  struct Change {
    std::string agent;
    Meta meta;
  };

  static Meta pack(const std::string& ref, std::string json);
  static void append(std::string& out, std::string_view ref, const Meta& m);
  // entry_bytes() of a kept meta.
  static std::size_t kept_bytes(const std::string& agent, std::string_view ref, const Meta& m);

  // {"agent":{"metas":[...]},...}; `ends`, when given, receives for each
  // agent the offset of the `]` that closes its metas.
  static std::string serialize(const State& s, std::unordered_map<std::string, std::size_t>* ends);
  static void group(std::string& out, const std::map<std::string, Change>& changes);

  State published_;
  std::map<std::string, Change> pending_joins_;   // phx_ref -> change
  std::map<std::string, Change> pending_leaves_;  // phx_ref -> change
  std::size_t metas_ = 0;                         // tracked now, pending included
  std::size_t bytes_ = 0;                         // entry_bytes of those metas
  bool pending_shown_ = false;  // a joiner's state included pending joins since the last flush
  std::string cache_;
  std::unordered_map<std::string, std::size_t> cache_ends_;
  bool cache_valid_ = false;
};

}  // namespace synapse::presence
