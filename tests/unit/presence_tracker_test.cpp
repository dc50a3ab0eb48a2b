// Presence: coalesced diffs that fit the published state exactly.
#include <gtest/gtest.h>

#include "presence/presence_tracker.hpp"

using synapse::presence::PresenceTracker;
namespace json = boost::json;

namespace {
json::object meta(const char* ref) { return json::object{{"phx_ref", ref}}; }
std::size_t metas_of(const json::object& state, const char* agent) {
  const json::value* a = state.if_contains(agent);
  return a ? a->at("metas").as_array().size() : 0;
}
}  // namespace

TEST(Presence, JoinsCoalesceIntoOneDiff) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.track("alice", "r2", meta("r2"));
  p.track("bob", "r3", meta("r3"));
  EXPECT_EQ(p.published_json(), "{}");  // nothing published yet
  auto diff = p.flush();
  ASSERT_TRUE(diff);
  EXPECT_EQ(diff->at("joins").at("alice").at("metas").as_array().size(), 2u);
  EXPECT_EQ(diff->at("joins").at("bob").at("metas").as_array().size(), 1u);
  EXPECT_TRUE(diff->at("leaves").as_object().empty());
  EXPECT_FALSE(p.flush());  // nothing new
  const auto state = json::parse(p.published_json()).as_object();
  EXPECT_EQ(metas_of(state, "alice"), 2u);
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
  EXPECT_EQ(metas_of(p.current(), "alice"), 1u);
  auto diff = p.flush();
  ASSERT_TRUE(diff);
  EXPECT_EQ(diff->at("leaves").at("alice").at("metas").as_array()[0].at("phx_ref").as_string(), "r1");
  const auto state = json::parse(p.published_json()).as_object();
  EXPECT_EQ(metas_of(state, "alice"), 1u);
  p.untrack("alice", "r2");
  p.flush();
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(p.published_json(), "{}");
}

TEST(Presence, StateCacheIsReusedUntilAFlushChangesIt) {
  PresenceTracker p;
  p.track("a", "r1", meta("r1"));
  p.flush();
  const std::string* first = &p.published_json();
  const std::string copy = *first;
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

TEST(Presence, JoinerSeesItselfInItsState) {
  PresenceTracker p;
  p.track("alice", "r1", meta("r1"));
  p.flush();
  p.track("bob", "r2", meta("r2"));
  auto state = json::parse(p.state_for_joiner("bob", "r2")).as_object();
  EXPECT_EQ(metas_of(state, "alice"), 1u);
  EXPECT_EQ(metas_of(state, "bob"), 1u);
  p.track("alice", "r3", meta("r3"));  // an agent already published
  state = json::parse(p.state_for_joiner("alice", "r3")).as_object();
  EXPECT_EQ(metas_of(state, "alice"), 2u);
  PresenceTracker empty;
  empty.track("solo", "r9", meta("r9"));
  state = json::parse(empty.state_for_joiner("solo", "r9")).as_object();
  EXPECT_EQ(metas_of(state, "solo"), 1u);
}
