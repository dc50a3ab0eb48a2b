// Presence: coalesced diffs that fit the published state exactly.
#include <gtest/gtest.h>

#include "presence/presence_tracker.hpp"

using synapse::presence::PresenceTracker;
namespace json = boost::json;

namespace {
std::string meta(const char* ref) { return json::serialize(json::object{{"phx_ref", ref}}); }
std::size_t metas_of(const json::object& state, const char* agent) {
  const json::value* a = state.if_contains(agent);
  return a ? a->at("metas").as_array().size() : 0;
}
json::object parse(const std::string& s) { return json::parse(s).as_object(); }
}  // namespace

TEST(Presence, JoinsCoalesceIntoOneDiff) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.track("alice", "r2", meta("r2"));
  p.track("bob", "r3", meta("r3"));
  EXPECT_EQ(p.published_json(), "{}");  // nothing published yet
  auto diff = p.flush();
  ASSERT_TRUE(diff);
  const auto d = parse(*diff);
  EXPECT_EQ(d.at("joins").at("alice").at("metas").as_array().size(), 2u);
  EXPECT_EQ(d.at("joins").at("bob").at("metas").as_array().size(), 1u);
  EXPECT_TRUE(d.at("leaves").as_object().empty());
  EXPECT_FALSE(p.flush());  // nothing new
  EXPECT_EQ(metas_of(parse(p.published_json()), "alice"), 2u);
  EXPECT_EQ(p.size(), 3u);
}

TEST(Presence, JoinThenLeaveWithinOneIntervalPublishesNothing) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.untrack("alice", "r1");
  EXPECT_FALSE(p.flush());
  EXPECT_TRUE(p.empty());
}

TEST(Presence, LeaveOfPublishedMetaIsDiffed) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.track("alice", "r2", meta("r2"));
  p.flush();
  p.untrack("alice", "r1");
  EXPECT_EQ(metas_of(parse(p.current_json()), "alice"), 1u);
  auto diff = p.flush();
  ASSERT_TRUE(diff);
  EXPECT_EQ(parse(*diff).at("leaves").at("alice").at("metas").as_array()[0].at("phx_ref").as_string(), "r1");
  EXPECT_EQ(metas_of(parse(p.published_json()), "alice"), 1u);
  p.untrack("alice", "r2");
  p.flush();
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(p.published_json(), "{}");
}

TEST(Presence, StateCacheIsReusedUntilAFlushChangesIt) {
  PresenceTracker p;
  p.track("a", "r1", meta("r1"));
  p.flush();
  const std::string copy = p.published_json();
  p.track("b", "r2", meta("r2"));  // pending: published state unchanged
  EXPECT_EQ(p.published_json(), copy);
  p.flush();
  EXPECT_NE(p.published_json(), copy);
}

TEST(Presence, UntrackUnknownIsHarmless) {
  PresenceTracker p;
  p.untrack("ghost", "r0");
  EXPECT_FALSE(p.flush());
}

TEST(Presence, JoinerSeesEverythingTrackedNow) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.flush();
  p.track("carl", "r4", meta("r4"));   // pending, another agent
  p.track("alice", "r5", meta("r5"));  // pending, an agent already published
  p.track("bob", "r2", meta("r2"));    // the joiner
  auto state = parse(p.state_for_joiner());
  EXPECT_EQ(metas_of(state, "alice"), 2u);
  EXPECT_EQ(metas_of(state, "bob"), 1u);
  EXPECT_EQ(metas_of(state, "carl"), 1u);
  PresenceTracker empty;
  empty.track("solo", "r9", meta("r9"));
  state = parse(empty.state_for_joiner());
  EXPECT_EQ(metas_of(state, "solo"), 1u);
  EXPECT_EQ(state.size(), 1u);
}

TEST(Presence, PendingLeaveStaysInStateUntilTheDiffRemovesIt) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.track("bob", "r2", meta("r2"));
  p.flush();
  p.untrack("alice", "r1");
  // A joiner still sees alice; the next diff tells it she left.
  EXPECT_EQ(metas_of(parse(p.state_for_joiner()), "alice"), 1u);
  const auto diff = parse(*p.flush());
  EXPECT_EQ(diff.at("leaves").at("alice").at("metas").as_array().size(), 1u);
}

TEST(Presence, AgentNamesAreEscaped) {
  PresenceTracker p;
  p.track("we\"ird\\name", "r1", meta("r1"));
  auto state = parse(p.state_for_joiner());
  EXPECT_EQ(metas_of(state, "we\"ird\\name"), 1u);
  auto diff = parse(*p.flush());
  EXPECT_EQ(diff.at("joins").at("we\"ird\\name").at("metas").as_array().size(), 1u);
  EXPECT_EQ(metas_of(parse(p.published_json()), "we\"ird\\name"), 1u);
}

TEST(Presence, RefsLongerThanASmallTextsInlineTextAreKeptAndOrderedAsStrings) {
  // A published meta is filed under its phx_ref as a SmallText: a ref of a
  // Redis node with a long node id is on the heap, a short one inline;
  // both are found, removed, and listed in std::string's order.
  PresenceTracker p;
  const std::string long_a = "node-with-a-long-id-a-1", long_b = "node-with-a-long-id-a-2";
  p.track("alice", long_b, meta(long_b.c_str()));
  p.track("alice", "short-1", meta("short-1"));
  p.track("alice", long_a, meta(long_a.c_str()));
  ASSERT_TRUE(p.flush());
  const auto metas = parse(p.published_json()).at("alice").at("metas").as_array();
  ASSERT_EQ(metas.size(), 3u);
  EXPECT_EQ(metas[0].at("phx_ref"), long_a.c_str());
  EXPECT_EQ(metas[1].at("phx_ref"), long_b.c_str());
  EXPECT_EQ(metas[2].at("phx_ref"), "short-1");
  p.untrack("alice", long_a);
  p.untrack("alice", "short-1");
  auto diff = p.flush();
  ASSERT_TRUE(diff);
  EXPECT_EQ(parse(*diff).at("leaves").at("alice").at("metas").as_array().size(), 2u);
  const auto left = parse(p.published_json()).at("alice").at("metas").as_array();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].at("phx_ref"), long_b.c_str());
  EXPECT_EQ(p.size(), 1u);
  EXPECT_EQ(p.current_json(), p.published_json());
}
