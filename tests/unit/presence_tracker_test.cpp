// Presence: coalesced diffs that fit the published state exactly.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>

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

TEST(Presence, ManyChangesPerIntervalGiveTheStateAPlainMapWouldHold) {
  // A model, a map of maps written out in the tracker's format, against the
  // tracker through 3,000 random tracks, untracks and flushes over 6 agents
  // and 240 refs (short ones inline in a SmallText, long ones on the heap):
  // the state with pending changes (current_json) must equal the model's
  // after every step, and the published state after every flush, most of
  // which apply many leaves and joins at once.
  PresenceTracker p;
  std::map<std::string, std::map<std::string, std::string>> model;  // agent -> ref -> meta text
  std::map<std::string, std::string> agent_of;                      // tracked ref -> agent
  auto written = [&] {
    std::string out = "{";
    bool first_agent = true;
    for (const auto& [agent, metas] : model) {
      if (metas.empty()) continue;
      if (!first_agent) out += ",";
      first_agent = false;
      out += json::serialize(json::value(agent)) + ":{\"metas\":[";
      bool first = true;
      for (const auto& [ref, text] : metas) {
        if (!first) out += ",";
        first = false;
        out += text;
      }
      out += "]}";
    }
    return out + "}";
  };
  std::uint32_t seed = 12345;
  auto next = [&](std::uint32_t n) {
    seed = seed * 1103515245u + 12345u;
    return (seed >> 8) % n;
  };
  std::size_t flushes_with_many = 0;
  std::size_t since_flush = 0;
  for (int step = 0; step < 3000; ++step) {
    const auto what = next(10);
    if (what < 5) {
      const std::string ref =
          next(3) == 0 ? "node-with-a-long-id-" + std::to_string(next(80)) : "r" + std::to_string(next(160));
      if (agent_of.contains(ref)) continue;  // tracked now: a member's ref is its own
      const std::string agent = "agent-" + std::to_string(next(6));
      json::object client;
      if (next(2) == 0) client["device"] = "phone-" + std::to_string(step);
      const std::string text = synapse::presence::meta_json(client, ref, 1700000000000 + step);
      p.track(agent, ref, text);
      model[agent][ref] = text;
      agent_of[ref] = agent;
      ++since_flush;
    } else if (what < 9) {
      if (agent_of.empty()) continue;
      auto it = agent_of.begin();
      std::advance(it, next(static_cast<std::uint32_t>(agent_of.size())));
      p.untrack(it->second, it->first);
      model[it->second].erase(it->first);
      agent_of.erase(it);
      ++since_flush;
    } else {
      if (since_flush >= 10) ++flushes_with_many;
      since_flush = 0;
      p.flush();
      ASSERT_EQ(p.published_json(), written()) << "after the flush at step " << step;
    }
    ASSERT_EQ(p.current_json(), written()) << "at step " << step;
    ASSERT_EQ(p.size(), agent_of.size());
  }
  EXPECT_GT(flushes_with_many, 50u);  // the merges did see whole intervals
}
