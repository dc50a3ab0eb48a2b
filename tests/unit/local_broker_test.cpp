// The in-process broker (LocalBackend behind the Hub, pubsub/local_broker.hpp),
// for what only it does; the
// behaviour every backend shares (join/leave/publish ordering, offsets,
// recovery) is broker_contract_test.cpp's. Here: per-thread membership (a
// publish wakes only the threads with members), a publish racing a join on
// the member's own thread (received exactly once), join gating by the
// presence bound, presence diffs coalesced per tick and never older than a
// member's state, the history's count, byte and age bounds, and an empty
// topic's grace.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fake_socket.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/local_broker.hpp"

namespace json = boost::json;
using namespace synapse;
using fakes::RecordingSink;
using fakes::TaskQueue;

namespace {

struct Member : pubsub::Subscriber {
  RecordingSink out;
  Member() { sink = &out; }
  std::vector<json::array> frames() const { return out.frames(); }
  // The offsets of the messages received (presence traffic left out).
  std::vector<std::uint64_t> offsets() const {
    std::vector<std::uint64_t> v;
    for (const auto& f : frames()) {
      const auto& p = f[4].as_object();
      if (const auto* meta = p.if_contains("_meta")) v.push_back(meta->as_object().at("offset").to_number<std::uint64_t>());
    }
    return v;
  }
  std::vector<std::string> events() const {
    std::vector<std::string> v;
    for (const auto& f : frames()) v.emplace_back(f[3].as_string());
    return v;
  }
};

std::uint64_t offset_of(const wire::Message& m) {
  return json::parse(m.payload()).as_array()[4].as_object().at("_meta").as_object().at("offset").to_number<std::uint64_t>();
}

class LocalBrokerTest : public ::testing::Test {
 protected:
  void make(std::size_t threads, pubsub::BrokerOptions o = {}) {
    std::vector<Poster> posters;
    for (std::size_t i = 0; i < threads; ++i) {
      queues.push_back(std::make_unique<TaskQueue>());
      posters.push_back(queues.back()->poster());
    }
    broker = std::make_unique<pubsub::LocalBroker>(o, std::move(posters), metrics);
  }
  pubsub::JoinResult join(Member& m, std::size_t thread, std::uint64_t connection, std::string_view agent = "alice",
                          bool presence = false, std::optional<pubsub::Recover> recover = std::nullopt,
                          bool tracked = true, std::string_view topic = "room:a") {
    pubsub::JoinRequest req;
    req.topic = topic;
    req.thread = thread;
    req.connection_id = connection;
    req.agent_id = agent;
    req.presence = presence;
    req.tracked = tracked;
    req.recover = std::move(recover);
    return broker->join(m, req);
  }
  pubsub::PublishResult publish(std::string_view payload = R"({"x":1})", std::uint64_t exclude = 0,
                                std::string_view topic = "room:a") {
    return broker->publish(topic, "m", payload, payload == "{}", "pub", exclude);
  }
  void drain() {
    for (auto& q : queues) q->run_pending();
  }

  metrics::Metrics metrics;
  std::vector<std::unique_ptr<TaskQueue>> queues;
  std::unique_ptr<pubsub::LocalBroker> broker;
};

}  // namespace

TEST_F(LocalBrokerTest, APublishWakesOnlyTheThreadsThatHaveMembers) {
  make(3);
  Member a, b;
  join(a, 1, 1);
  publish();
  EXPECT_EQ(queues[0]->posted(), 0u);
  EXPECT_EQ(queues[1]->posted(), 1u);
  EXPECT_EQ(queues[2]->posted(), 0u);
  join(b, 2, 2);
  drain();
  publish();
  EXPECT_EQ(queues[1]->posted(), 2u);
  EXPECT_EQ(queues[2]->posted(), 1u);
  drain();
  broker->leave(a, "room:a");
  publish();
  EXPECT_EQ(queues[1]->posted(), 2u) << "the thread whose only member left is not woken again";
  EXPECT_EQ(queues[2]->posted(), 2u);
  drain();
  EXPECT_EQ(a.offsets(), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(b.offsets(), (std::vector<std::uint64_t>{2, 3}));
}

TEST_F(LocalBrokerTest, APublishRacingAJoinOnTheSameThreadIsReceivedExactlyOnce) {
  make(1);
  Member early, recovering, plain;
  const auto first = join(early, 0, 1);
  publish();  // offset 1: in thread 0's inbox, not yet drained
  // Both join before the drain runs: offset 1 is at their start offset.
  const auto r = join(recovering, 0, 2, "bob", false, pubsub::Recover{0, first.epoch});
  const auto p = join(plain, 0, 3, "carol");
  EXPECT_EQ(r.offset, 1u);
  EXPECT_TRUE(r.recovered);
  ASSERT_EQ(r.backlog.size(), 1u);
  EXPECT_EQ(offset_of(r.backlog[0]), 1u);
  EXPECT_TRUE(p.backlog.empty());
  drain();
  EXPECT_EQ(early.offsets(), std::vector<std::uint64_t>{1});
  EXPECT_TRUE(recovering.offsets().empty()) << "offset 1 came in the backlog: not live as well";
  EXPECT_TRUE(plain.offsets().empty()) << "offset 1 predates the join";
  publish();
  drain();
  EXPECT_EQ(early.offsets(), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(recovering.offsets(), std::vector<std::uint64_t>{2});
  EXPECT_EQ(plain.offsets(), std::vector<std::uint64_t>{2});
}

// The history keeps the body (the backend's bytes) and the Hub frames it
// once per message: every member on every thread gets the very same bytes,
// and a recovered backlog, framed when read, has identical contents.
TEST_F(LocalBrokerTest, OneFrameIsSharedByEveryMemberAndTheBacklogIsByteIdentical) {
  make(2);
  Member a, b;
  const auto j = join(a, 0, 1);
  join(b, 1, 2, "bob");
  publish();
  drain();
  Member later;
  const auto r = join(later, 0, 3, "carol", false, pubsub::Recover{0, j.epoch});
  ASSERT_EQ(a.out.messages.size(), 1u);
  ASSERT_EQ(b.out.messages.size(), 1u);
  ASSERT_EQ(r.backlog.size(), 1u);
  EXPECT_EQ(a.out.messages[0].data(), b.out.messages[0].data());
  EXPECT_EQ(a.out.messages[0].payload(), r.backlog[0].payload()) << "recovery frames the same bytes as delivery";
}

TEST_F(LocalBrokerTest, APublishWithNoMemberIsNumberedAndKeptButQueuesNothing) {
  make(1);
  EXPECT_EQ(publish().offset, 1u);
  EXPECT_EQ(publish().offset, 2u);
  EXPECT_EQ(queues[0]->posted(), 0u);
  const auto s = broker->stats();
  EXPECT_EQ(s.topics, 1u);
  EXPECT_EQ(s.members, 0u);
  EXPECT_EQ(s.history_messages, 2u);
  EXPECT_EQ(metrics.publishes.load(), 2u);
}

TEST_F(LocalBrokerTest, TheHistoryKeepsTheNewestWithinItsCountBound) {
  pubsub::BrokerOptions o;
  o.history_size = 3;
  make(1, o);
  Member m;
  const auto epoch = join(m, 0, 1).epoch;
  broker->leave(m, "room:a");
  for (int i = 0; i < 5; ++i) publish();  // history: 3, 4, 5
  auto recover = [&](std::uint64_t from) {
    Member x;
    auto r = join(x, 0, 9, "x", false, pubsub::Recover{from, epoch});
    broker->leave(x, "room:a");
    return r;
  };
  auto r = recover(2);
  EXPECT_TRUE(r.recovered);
  ASSERT_EQ(r.backlog.size(), 3u);
  EXPECT_EQ(offset_of(r.backlog.front()), 3u);
  EXPECT_EQ(offset_of(r.backlog.back()), 5u);
  r = recover(1);  // offset 2 was dropped: a gap
  EXPECT_FALSE(r.recovered);
  EXPECT_TRUE(r.backlog.empty()) << "recovered: false replays nothing, even what is still there";
  r = recover(5);
  EXPECT_TRUE(r.recovered);
  EXPECT_TRUE(r.backlog.empty());
  r = recover(6);  // from the future
  EXPECT_FALSE(r.recovered);
  Member y;
  r = join(y, 0, 10, "y", false, pubsub::Recover{0, "another-epoch"});
  EXPECT_FALSE(r.recovered);
  EXPECT_TRUE(r.backlog.empty());
}

TEST_F(LocalBrokerTest, ThePerTopicByteBoundDropsTheOldestFirst) {
  make(1);
  publish();  // one frame of the size every publish below has
  const std::size_t one = broker->stats().history_bytes;
  ASSERT_GT(one, 0u);
  pubsub::BrokerOptions o;
  o.history_max_bytes_per_topic = 2 * one + one / 2;  // room for two frames of that size
  queues.clear();
  make(1, o);
  Member m;
  const auto epoch = join(m, 0, 1).epoch;
  broker->leave(m, "room:a");
  for (int i = 0; i < 4; ++i) publish();
  EXPECT_EQ(broker->stats().history_messages, 2u);
  EXPECT_LE(broker->stats().history_bytes, o.history_max_bytes_per_topic);
  Member x;
  const auto r = join(x, 0, 2, "x", false, pubsub::Recover{2, epoch});
  EXPECT_TRUE(r.recovered);
  ASSERT_EQ(r.backlog.size(), 2u);
  EXPECT_EQ(offset_of(r.backlog[0]), 3u);
  EXPECT_EQ(offset_of(r.backlog[1]), 4u);
}

TEST_F(LocalBrokerTest, TheTotalByteBoundEvictsTheOldestAcrossTopicsDownToSevenEighths) {
  make(1);
  publish(R"({"x":1})", 0, "room:a");
  const std::size_t one = broker->stats().history_bytes;
  pubsub::BrokerOptions o;
  o.history_max_bytes = 8 * one;
  queues.clear();
  make(1, o);
  // Oldest first: a1 b1 a2 b2 ... ; the frames of both topics are the same size.
  for (int i = 0; i < 4; ++i) {
    publish(R"({"x":1})", 0, "room:a");
    publish(R"({"x":1})", 0, "room:b");
  }
  EXPECT_EQ(broker->stats().history_messages, 8u) << "at the bound, nothing is evicted";
  publish(R"({"x":1})", 0, "room:a");  // a5: 9 frames > 8: down to 7 (7/8 of the bound)
  EXPECT_EQ(broker->stats().history_messages, 7u);
  EXPECT_LE(broker->stats().history_bytes, 7 * one);
  // The two oldest went: a1 and b1; a still has a2..a5 and b has b2..b4.
  const auto a = broker->inspect_topic("room:a", 0, 100);
  const auto b = broker->inspect_topic("room:b", 0, 100);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->messages.size(), 4u);
  EXPECT_EQ(a->messages.front().first, 2u);
  ASSERT_EQ(b->messages.size(), 3u);
  EXPECT_EQ(b->messages.front().first, 2u);
}

TEST_F(LocalBrokerTest, HistoryOlderThanItsTtlIsNotRecovered) {
  pubsub::BrokerOptions o;
  o.history_ttl_ms = 20;
  make(1, o);
  Member m;
  const auto epoch = join(m, 0, 1).epoch;
  publish();
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  broker->tick();
  EXPECT_EQ(broker->stats().history_messages, 0u);
  Member x;
  const auto r = join(x, 0, 2, "x", false, pubsub::Recover{0, epoch});
  EXPECT_FALSE(r.recovered);
}

TEST_F(LocalBrokerTest, AJoinPastThePresenceBoundIsRefusedAndRecordsNothing) {
  pubsub::BrokerOptions o;
  o.max_presence_bytes_per_topic = 300;  // a meta is about 60 bytes here
  make(1, o);
  std::vector<std::unique_ptr<Member>> in;
  pubsub::JoinResult refused;
  for (int i = 0; i < 20; ++i) {
    auto m = std::make_unique<Member>();
    auto r = join(*m, 0, static_cast<std::uint64_t>(i + 1), "agent" + std::to_string(i));
    if (r.presence_full) {
      refused = std::move(r);
      break;
    }
    in.push_back(std::move(m));
  }
  ASSERT_TRUE(refused.presence_full) << "the bound was never reached";
  ASSERT_GE(in.size(), 2u);
  EXPECT_EQ(refused.offset, 0u);
  EXPECT_TRUE(refused.epoch.empty());
  EXPECT_EQ(broker->stats().members, in.size());
  const std::string state = broker->presence_state("room:a");
  EXPECT_EQ(json::parse(state).as_object().size(), in.size());
  // The refused member is in no list: a publish does not reach it.
  Member outside;
  EXPECT_TRUE(join(outside, 0, 99, "agent99").presence_full);
  publish();
  drain();
  EXPECT_TRUE(outside.out.messages.empty());
  // A member that is not tracked (its credential may not appear in the
  // topic's presence) takes no room, so the bound does not refuse it.
  Member hidden;
  EXPECT_FALSE(join(hidden, 0, 100, "hidden", false, std::nullopt, /*tracked=*/false).presence_full);
  EXPECT_FALSE(json::parse(broker->presence_state("room:a")).as_object().contains("hidden"));
  // A leave makes room again.
  broker->leave(*in.front(), "room:a");
  EXPECT_FALSE(join(outside, 0, 99, "agent99").presence_full);
  publish();
  drain();
  EXPECT_EQ(outside.offsets(), std::vector<std::uint64_t>{2});
  EXPECT_EQ(hidden.offsets(), std::vector<std::uint64_t>{2});
}

TEST_F(LocalBrokerTest, PresenceChangesWithinOneTickLeaveAsOneDiff) {
  make(2);
  Member watcher, plain;
  const auto w = join(watcher, 0, 1, "watcher", /*presence=*/true);
  EXPECT_TRUE(json::parse(w.presence_state_json).as_object().contains("watcher")) << "its own meta included";
  join(plain, 1, 2, "plain", /*presence=*/false);
  Member b, c, d;
  join(b, 0, 3, "b");
  join(c, 1, 4, "c");
  join(d, 1, 5, "d");
  broker->leave(d, "room:a");  // joined and left within the interval
  drain();
  EXPECT_TRUE(watcher.out.messages.empty()) << "nothing before the tick";
  broker->tick();
  EXPECT_EQ(queues[1]->posted(), 0u) << "thread 1 has no presence member";
  drain();
  ASSERT_EQ(watcher.events(), std::vector<std::string>{"presence_diff"});
  const auto diff = watcher.frames()[0][4].as_object();
  const auto& joins = diff.at("joins").as_object();
  EXPECT_TRUE(joins.contains("b"));
  EXPECT_TRUE(joins.contains("c"));
  EXPECT_FALSE(joins.contains("d")) << "a join and a leave in one interval cancel out";
  EXPECT_TRUE(plain.out.messages.empty()) << "a member without presence gets no presence traffic";
  broker->tick();
  drain();
  EXPECT_EQ(watcher.out.messages.size(), 1u) << "no change: no diff";
  EXPECT_EQ(metrics.presence_diffs.load(), 1u);
}

TEST_F(LocalBrokerTest, AMemberNeverReceivesADiffOlderThanItsPresenceState) {
  make(1);
  Member watcher, x, late;
  join(watcher, 0, 1, "watcher", true);
  broker->tick();
  drain();
  watcher.out.messages.clear();
  join(x, 0, 2, "x");
  broker->tick();  // diff with x's join, queued but not yet drained
  const auto r = join(late, 0, 3, "late", true);
  EXPECT_TRUE(json::parse(r.presence_state_json).as_object().contains("x")) << "x is already in its state";
  drain();
  EXPECT_EQ(watcher.events(), std::vector<std::string>{"presence_diff"});
  EXPECT_TRUE(late.out.messages.empty()) << "the diff of x predates late's state";
  broker->tick();  // late's own join
  drain();
  EXPECT_EQ(watcher.events(), (std::vector<std::string>{"presence_diff", "presence_diff"}));
  EXPECT_EQ(late.events(), std::vector<std::string>{"presence_diff"});
}

TEST_F(LocalBrokerTest, AnEmptyTopicKeepsItsEpochForItsGraceThenStartsAgain) {
  pubsub::BrokerOptions kept;
  kept.history_size = 0;  // nothing holds the topic but the grace
  make(1, kept);
  Member m;
  const auto first = join(m, 0, 1);
  publish();
  broker->leave(m, "room:a");
  broker->tick();
  const auto again = join(m, 0, 1);
  EXPECT_EQ(again.epoch, first.epoch);
  EXPECT_EQ(again.offset, 1u);
  broker->leave(m, "room:a");

  pubsub::BrokerOptions gone = kept;
  gone.empty_topic_grace_ms = 0;
  queues.clear();
  make(1, gone);
  const auto one = join(m, 0, 1);
  publish();
  broker->leave(m, "room:a");
  EXPECT_EQ(broker->stats().topics, 1u);
  broker->tick();
  EXPECT_EQ(broker->stats().topics, 0u);
  const auto fresh = join(m, 0, 1);
  EXPECT_NE(fresh.epoch, one.epoch) << "a topic released and made again has a new epoch";
  EXPECT_EQ(fresh.offset, 0u);
}

TEST_F(LocalBrokerTest, ALeaveOfATopicNotJoinedChangesNothing) {
  make(1);
  Member a, never;
  join(a, 0, 1);
  broker->leave(never, "room:a");  // topic_id 0: not this topic's member
  broker->leave(never, "room:unknown");
  EXPECT_EQ(broker->stats().members, 1u);
  publish();
  drain();
  EXPECT_EQ(a.offsets(), std::vector<std::uint64_t>{1});
}
