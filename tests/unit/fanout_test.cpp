// The fan-out path below both brokers (pubsub/fanout.*): per-thread member
// tables, one drain task per burst, one send_batch per member, one framed
// message shared by every member, and the per-member filters (start offset,
// presence start, the publisher's own connection).
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "fake_socket.hpp"
#include "metrics/metrics.hpp"
#include "presence/presence_tracker.hpp"
#include "pubsub/fanout.hpp"

namespace json = boost::json;
using namespace synapse;
using fakes::RecordingSink;
using fakes::TaskQueue;
using pubsub::Delivery;
using pubsub::DeliveryKind;

namespace {

struct Member : pubsub::Subscriber {
  RecordingSink out;
  Member() { sink = &out; }
  // The `n` of every message received, in order.
  std::vector<std::int64_t> ns() const {
    std::vector<std::int64_t> v;
    for (const auto& p : out.payloads()) v.push_back(json::parse(p).as_array()[4].as_object().at("n").as_int64());
    return v;
  }
};

wire::Message frame(std::int64_t n) {
  return wire::Message::text(R"([null,null,"room:a","m",{"n":)" + std::to_string(n) + "}]");
}

Delivery message(std::uint64_t topic, std::uint64_t offset, std::int64_t n, std::uint64_t exclude = 0) {
  return Delivery{topic, offset, exclude, frame(n), DeliveryKind::message};
}

class FanoutTest : public ::testing::Test {
 protected:
  void make(std::size_t threads, std::size_t slice_sends = pubsub::Fanout::default_slice_sends) {
    std::vector<Poster> posters;
    for (std::size_t i = 0; i < threads; ++i) {
      queues.push_back(std::make_unique<TaskQueue>());
      posters.push_back(queues.back()->poster());
    }
    fanout = std::make_unique<pubsub::Fanout>(std::move(posters), metrics, slice_sends);
  }
  void join(Member& m, std::size_t thread, std::uint64_t connection, std::uint64_t topic, std::uint64_t start = 0,
            bool presence = false, std::uint64_t presence_start = 0) {
    pubsub::JoinRequest req;
    req.topic = "room:a";
    req.thread = thread;
    req.connection_id = connection;
    req.agent_id = "agent";
    req.presence = presence;
    fanout->add(m, req, topic, start, presence_start);
  }
  void drain() {
    for (auto& q : queues) q->run_pending();
  }

  metrics::Metrics metrics;
  std::vector<std::unique_ptr<TaskQueue>> queues;
  std::unique_ptr<pubsub::Fanout> fanout;
};

}  // namespace

TEST_F(FanoutTest, DeliversToEveryMemberOnEveryThreadThatHasMembers) {
  make(3);
  Member a, b, c;
  join(a, 0, 1, 7);
  join(b, 0, 2, 7);
  join(c, 2, 3, 7);
  fanout->queue({2, 0, 1}, message(7, 1, 1));
  EXPECT_EQ(queues[0]->posted(), 1u);
  EXPECT_EQ(queues[1]->posted(), 0u) << "a thread without members is not woken";
  EXPECT_EQ(queues[2]->posted(), 1u);
  EXPECT_TRUE(a.out.messages.empty()) << "nothing is delivered before the member's own thread runs";
  drain();
  EXPECT_EQ(a.ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(b.ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(c.ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(metrics.deliveries.load(), 3u);
}

TEST_F(FanoutTest, EveryMemberOnEveryThreadGetsTheSameSerializedBytes) {
  make(2);
  Member a, b, c;
  join(a, 0, 1, 7);
  join(b, 0, 2, 7);
  join(c, 1, 3, 7);
  Delivery d = message(7, 1, 42);
  const char* bytes = d.msg.data();
  fanout->queue({2, 1}, d);
  drain();
  ASSERT_EQ(a.out.messages.size(), 1u);
  ASSERT_EQ(b.out.messages.size(), 1u);
  ASSERT_EQ(c.out.messages.size(), 1u);
  // Framed once: every member's queue holds a reference to the one block.
  EXPECT_EQ(a.out.messages[0].data(), bytes);
  EXPECT_EQ(b.out.messages[0].data(), bytes);
  EXPECT_EQ(c.out.messages[0].data(), bytes);
}

TEST_F(FanoutTest, MessagesAtOrBelowAMembersStartOffsetAreSkipped) {
  make(1);
  Member fresh, late;
  join(fresh, 0, 1, 7, 0);
  join(late, 0, 2, 7, 5);
  fanout->queue({2}, message(7, 4, 4));
  fanout->queue({2}, message(7, 5, 5));
  fanout->queue({2}, message(7, 6, 6));
  fanout->queue({2}, message(7, pubsub::unnumbered, 99));
  drain();
  EXPECT_EQ(fresh.ns(), (std::vector<std::int64_t>{4, 5, 6, 99}));
  // 4 and 5 predate the join (they came in its recovered history); a
  // message without an offset (a cluster-local publish) passes every filter.
  EXPECT_EQ(late.ns(), (std::vector<std::int64_t>{6, 99}));
}

TEST_F(FanoutTest, ThePublishersOwnConnectionIsSkippedAndOnlyIt) {
  make(1);
  Member publisher, other;
  join(publisher, 0, 7, 1);
  join(other, 0, 8, 1);
  fanout->queue({2}, message(1, 1, 1, /*exclude=*/7));
  fanout->queue({2}, message(1, 2, 2, /*exclude=*/0));
  drain();
  EXPECT_EQ(publisher.ns(), std::vector<std::int64_t>{2});
  EXPECT_EQ(other.ns(), (std::vector<std::int64_t>{1, 2}));
}

TEST_F(FanoutTest, ABurstCostsOneDrainTaskAndOneBatchPerMember) {
  make(1);
  Member a, b;
  join(a, 0, 1, 1);
  join(b, 0, 2, 1);
  for (int i = 1; i <= 3; ++i) fanout->queue({2}, message(1, static_cast<std::uint64_t>(i), i));
  EXPECT_EQ(queues[0]->posted(), 1u) << "deliveries queued before the drain share one task";
  drain();
  EXPECT_EQ(a.out.calls, std::vector<std::size_t>{3}) << "the member's share of the run in one send_batch";
  EXPECT_EQ(b.out.calls, std::vector<std::size_t>{3});
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  fanout->queue({2}, message(1, 4, 4));
  EXPECT_EQ(queues[0]->posted(), 2u) << "after a drain the next delivery schedules a new one";
  drain();
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2, 3, 4}));
}

TEST_F(FanoutTest, InterleavedTopicsKeepEachMembersOrder) {
  make(1);
  Member on1, on2;
  join(on1, 0, 1, 1);
  join(on2, 0, 2, 2);
  fanout->queue({1}, message(1, 1, 11));
  fanout->queue({1}, message(2, 1, 21));
  fanout->queue({1}, message(1, 2, 12));
  fanout->queue({1}, message(2, 2, 22));
  drain();
  EXPECT_EQ(on1.ns(), (std::vector<std::int64_t>{11, 12}));
  EXPECT_EQ(on2.ns(), (std::vector<std::int64_t>{21, 22}));
}

TEST_F(FanoutTest, AMemberRemovedBeforeTheDrainGetsNothingQueuedForIt) {
  make(1);
  Member gone, stays;
  join(gone, 0, 1, 1);
  join(stays, 0, 2, 1);
  fanout->queue({2}, message(1, 1, 1));
  fanout->remove(gone);  // it left on its thread after the publish was queued
  drain();
  EXPECT_TRUE(gone.out.messages.empty());
  EXPECT_EQ(stays.ns(), std::vector<std::int64_t>{1});
}

TEST_F(FanoutTest, ADeliveryQueuedWhileTheThreadDrainsWaitsForTheNextDrain) {
  make(1);
  Member a, b;
  join(a, 0, 1, 1);
  join(b, 0, 2, 1);
  // While thread 0 is inside its drain (handing a its batch), a publisher
  // queues again: the inbox was swapped out, so the new delivery is not
  // appended to the run being delivered; it schedules a drain of its own.
  bool queued = false;
  a.out.on_batch = [&] {
    if (queued) return;
    queued = true;
    fanout->queue({2}, message(1, 2, 2));
  };
  fanout->queue({2}, message(1, 1, 1));
  EXPECT_EQ(queues[0]->run_pending(), 2u) << "the first drain, then the one the mid-drain delivery posted";
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(a.out.calls, (std::vector<std::size_t>{1, 1}));
}

TEST_F(FanoutTest, RemovalInAnyOrderKeepsTheOtherMembersSlotsRight) {
  make(1);
  Member a, b, c, d;
  join(a, 0, 1, 1);
  join(b, 0, 2, 1);
  join(c, 0, 3, 1);
  join(d, 0, 4, 1);
  fanout->remove(a);  // d moves into a's slot
  fanout->remove(d);  // removed from its new slot
  fanout->remove(d);  // twice: nothing happens
  fanout->queue({2}, message(1, 1, 1));
  drain();
  EXPECT_TRUE(a.out.messages.empty());
  EXPECT_TRUE(d.out.messages.empty());
  EXPECT_EQ(b.ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(c.ns(), std::vector<std::int64_t>{1});
  fanout->remove(c);
  fanout->queue({1}, message(1, 2, 2));
  drain();
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(c.ns(), std::vector<std::int64_t>{1});
}

TEST_F(FanoutTest, ADeliveryForATopicWithNoMemberLeftOnTheThreadIsDropped) {
  make(1);
  Member only;
  join(only, 0, 1, 1);
  fanout->remove(only);
  // The broker's per-thread count may still say 1 when the publish raced
  // the leave; the drain finds no table for the topic and sends nothing.
  fanout->queue({1}, message(1, 1, 1));
  drain();
  EXPECT_TRUE(only.out.messages.empty());
  EXPECT_EQ(metrics.deliveries.load(), 0u);
  // The member joins again: deliveries reach it as before.
  join(only, 0, 1, 1);
  fanout->queue({1}, message(1, 2, 2));
  drain();
  EXPECT_EQ(only.ns(), std::vector<std::int64_t>{2});
}

TEST_F(FanoutTest, ResetForgetsTheStartOffsetsOfANewEpoch) {
  make(1);
  Member m;
  join(m, 0, 1, 1, /*start=*/10);
  fanout->queue({1}, message(1, 3, 3));
  fanout->queue({1}, Delivery{1, 0, 0, wire::Message(), DeliveryKind::reset});
  fanout->queue({1}, message(1, 1, 1));
  drain();
  // Offset 3 of the old epoch predates the join; offset 1 of the new one does not.
  EXPECT_EQ(m.ns(), std::vector<std::int64_t>{1});
}

TEST_F(FanoutTest, PresenceTrafficGoesToPresenceMembersNewerThanTheirState) {
  make(1);
  Member watcher, plain, late;
  join(watcher, 0, 1, 1, 0, /*presence=*/true, /*presence_start=*/0);
  join(plain, 0, 2, 1, 0, /*presence=*/false);
  join(late, 0, 3, 1, 0, /*presence=*/true, /*presence_start=*/1);
  fanout->queue({3}, Delivery{1, 1, 0, frame(1), DeliveryKind::presence});
  // A presence diff is never "the publisher's own": exclusion is for messages.
  fanout->queue({3}, Delivery{1, 2, 1, frame(2), DeliveryKind::presence});
  drain();
  EXPECT_EQ(watcher.ns(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(plain.out.messages.empty());
  EXPECT_EQ(late.ns(), std::vector<std::int64_t>{2}) << "diff 1 is already in its presence_state";
  EXPECT_EQ(metrics.deliveries.load(), 0u) << "deliveries counts messages, not presence";
  // Leaving removes it from both lists.
  fanout->remove(watcher);
  fanout->queue({2}, Delivery{1, 3, 0, frame(3), DeliveryKind::presence});
  drain();
  EXPECT_EQ(watcher.ns(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(late.ns(), (std::vector<std::int64_t>{2, 3}));
}

TEST_F(FanoutTest, FlushPresenceSendsOneNumberedDiffForEveryPendingChange) {
  make(2);
  Member w0, w1;
  join(w0, 0, 1, 1, 0, true);
  join(w1, 1, 2, 1, 0, true);
  presence::PresenceTracker tracker;
  tracker.track("alice", "r1", presence::meta_json({}, "r1", 1));
  tracker.track("bob", "r2", presence::meta_json({}, "r2", 2));
  std::uint64_t seq = 0;
  fanout->flush_presence(1, "room:a", tracker, seq, {1, 1});
  EXPECT_EQ(seq, 1u);
  fanout->flush_presence(1, "room:a", tracker, seq, {1, 1});
  EXPECT_EQ(seq, 1u) << "nothing pending: no diff and no number spent";
  drain();
  ASSERT_EQ(w0.out.messages.size(), 1u);
  ASSERT_EQ(w1.out.messages.size(), 1u);
  EXPECT_EQ(w0.out.messages[0].data(), w1.out.messages[0].data());
  const json::array f = json::parse(w0.out.messages[0].payload()).as_array();
  EXPECT_TRUE(f[0].is_null());
  EXPECT_EQ(f[2].as_string(), "room:a");
  EXPECT_EQ(f[3].as_string(), "presence_diff");
  const auto& joins = f[4].as_object().at("joins").as_object();
  EXPECT_EQ(joins.size(), 2u);
  EXPECT_TRUE(joins.contains("alice"));
  EXPECT_TRUE(joins.contains("bob"));
  EXPECT_EQ(metrics.presence_diffs.load(), 1u);
  // No presence member anywhere: the diff is numbered (the state moved on)
  // but nothing is framed or queued.
  tracker.untrack("bob", "r2");
  fanout->flush_presence(1, "room:a", tracker, seq, {0, 0});
  EXPECT_EQ(seq, 2u);
  EXPECT_EQ(queues[0]->posted() + queues[1]->posted(), 2u);
  EXPECT_EQ(metrics.presence_diffs.load(), 1u);
}

// Publishers on several threads queue while every I/O thread drains its own
// inbox: every member gets every message once, each publisher's in its order.
TEST_F(FanoutTest, ConcurrentPublishersAndDrainingThreadsLoseAndDuplicateNothing) {
  constexpr std::size_t io_threads = 3;
  constexpr int publishers = 3;
  constexpr int per_publisher = 2000;
  make(io_threads);
  std::vector<std::unique_ptr<Member>> members;
  for (std::size_t t = 0; t < io_threads; ++t) {
    for (int k = 0; k < 2; ++k) {
      members.push_back(std::make_unique<Member>());
      join(*members.back(), t, 100 + members.size(), 1);
    }
  }
  const std::vector<std::uint32_t> counts(io_threads, 2);
  const std::size_t expected = static_cast<std::size_t>(publishers) * per_publisher;
  std::atomic<bool> publishing_done{false};
  std::vector<std::thread> io;
  for (std::size_t t = 0; t < io_threads; ++t) {
    io.emplace_back([&, t] {
      queues[t]->run_until(
          [&] {
            if (!publishing_done.load()) return false;
            for (const auto& m : members) {
              if (m->thread == t && m->out.messages.size() < expected) return false;
            }
            return true;
          },
          std::chrono::seconds(30));
    });
  }
  std::vector<std::thread> pubs;
  for (int p = 0; p < publishers; ++p) {
    pubs.emplace_back([&, p] {
      for (int i = 0; i < per_publisher; ++i) fanout->queue(counts, message(1, pubsub::unnumbered, p * 1'000'000 + i));
    });
  }
  for (auto& t : pubs) t.join();
  publishing_done = true;
  for (auto& t : io) t.join();
  for (const auto& m : members) {
    const auto ns = m->ns();
    ASSERT_EQ(ns.size(), expected);
    std::vector<std::int64_t> last(publishers, -1);
    for (auto n : ns) {
      const auto p = static_cast<std::size_t>(n / 1'000'000);
      ASSERT_EQ(n % 1'000'000, last[p] + 1) << "publisher " << p << "'s messages out of order or repeated";
      last[p] = n % 1'000'000;
    }
  }
  EXPECT_EQ(metrics.deliveries.load(), expected * members.size());
}

// --- a drain in slices (fanout.hpp: "A drain yields") ---------------------------

TEST_F(FanoutTest, ADrainYieldsAfterItsSliceAndResumesWhereItStopped) {
  make(1, 2);
  Member a, b, c, d, e;
  for (Member* m : {&a, &b, &c, &d, &e}) join(*m, 0, 100 + static_cast<std::uint64_t>(m - &a), 1);
  fanout->queue({5}, message(1, 1, 1));
  ASSERT_TRUE(queues[0]->run_one());
  std::size_t served = 0;
  for (Member* m : {&a, &b, &c, &d, &e}) served += m->out.messages.size();
  EXPECT_EQ(served, 2u) << "two sends, then the thread's other work";
  EXPECT_EQ(queues[0]->pending(), 1u) << "its continuation is queued";
  drain();
  for (Member* m : {&a, &b, &c, &d, &e}) EXPECT_EQ(m->ns(), std::vector<std::int64_t>{1});
}

TEST_F(FanoutTest, MessagesQueuedBetweenSlicesReachTheMembersNotServedYetInThisPassAndTheOthersOnce) {
  make(1, 1);
  Member a, b, c;
  join(a, 0, 1, 1);
  join(b, 0, 2, 1);
  join(c, 0, 3, 1);
  fanout->queue({3}, message(1, 1, 1));
  ASSERT_TRUE(queues[0]->run_one());  // a gets 1, then the drain yields
  EXPECT_EQ(a.ns(), std::vector<std::int64_t>{1});
  fanout->queue({3}, message(1, 2, 2));  // a publisher's next message, read between slices
  fanout->queue({3}, message(1, 3, 3));
  drain();
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(c.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(b.out.calls, std::vector<std::size_t>{3}) << "b had all three in the first pass, in one batch";
  EXPECT_EQ(c.out.calls, std::vector<std::size_t>{3});
  EXPECT_EQ(a.out.calls, (std::vector<std::size_t>{1, 2})) << "a, served before they came, gets them next";
  fanout->queue({3}, message(1, 4, 4));
  drain();
  for (Member* m : {&a, &b, &c}) EXPECT_EQ(m->ns(), (std::vector<std::int64_t>{1, 2, 3, 4}));
}

TEST_F(FanoutTest, OnlyTheSameTopicsNumberedMessagesAtTheInboxHeadJoinTheRun) {
  make(1, 1);
  Member a, b, other;
  join(a, 0, 1, 1);
  join(b, 0, 2, 1);
  join(other, 0, 3, 2);
  fanout->queue({3}, message(1, 1, 1));
  ASSERT_TRUE(queues[0]->run_one());  // a served
  fanout->queue({3}, message(1, 2, 2));
  fanout->queue({3}, message(2, 1, 21));  // another topic: what follows it waits
  fanout->queue({3}, message(1, 3, 3));
  ASSERT_TRUE(queues[0]->run_one());  // b: 1 and 2, not 3
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2}));
  drain();
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(other.ns(), std::vector<std::int64_t>{21});

  // An unnumbered message cannot be told apart from its copy: it waits too.
  fanout->queue({3}, message(1, 4, 4));
  ASSERT_TRUE(queues[0]->run_one());  // a served first again
  fanout->queue({3}, message(1, pubsub::unnumbered, 5));
  drain();
  EXPECT_EQ(a.ns(), (std::vector<std::int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(b.ns(), (std::vector<std::int64_t>{1, 2, 3, 4, 5}));
}

TEST_F(FanoutTest, MembersLeavingOrJoiningBetweenSlicesGetTheRunOnceOrNotAtAll) {
  make(1, 1);
  Member m[6];
  for (std::uint64_t i = 0; i < 5; ++i) join(m[i], 0, i + 1, 1);
  fanout->queue({5}, message(1, 1, 1));
  ASSERT_TRUE(queues[0]->run_one());  // m0 served
  ASSERT_TRUE(queues[0]->run_one());  // m1 served
  fanout->remove(m[0]);  // served: the last served member takes its slot, the last member the freed one
  fanout->remove(m[3]);  // not served yet
  join(m[5], 0, 6, 1, 0);  // joins mid-pass, after the message (its start is 0 here)
  drain();
  EXPECT_EQ(m[0].ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(m[1].ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(m[2].ns(), std::vector<std::int64_t>{1});
  EXPECT_TRUE(m[3].out.messages.empty());
  EXPECT_EQ(m[4].ns(), std::vector<std::int64_t>{1});
  EXPECT_EQ(m[5].ns(), std::vector<std::int64_t>{1});
  fanout->queue({5}, message(1, 2, 2));
  drain();
  for (int i : {1, 2, 4, 5}) EXPECT_EQ(m[i].ns(), (std::vector<std::int64_t>{1, 2})) << i;
  EXPECT_EQ(m[0].ns(), std::vector<std::int64_t>{1});
}

TEST_F(FanoutTest, EveryLeaveOrderBetweenSlicesServesEachRemainingMemberExactlyOnce) {
  // Every (served count, leaver) pair over 6 members: the slot shuffling of
  // a leave behind or ahead of the cursor never skips or repeats anyone.
  for (std::size_t served = 1; served < 6; ++served) {
    for (std::size_t leaver = 0; leaver < 6; ++leaver) {
      queues.clear();
      make(1, 1);
      Member m[6];
      for (std::uint64_t i = 0; i < 6; ++i) join(m[i], 0, i + 1, 1);
      fanout->queue({6}, message(1, 1, 1));
      for (std::size_t k = 0; k < served; ++k) ASSERT_TRUE(queues[0]->run_one());
      fanout->remove(m[leaver]);
      drain();
      for (std::size_t i = 0; i < 6; ++i) {
        const bool got_before = i < served;
        if (i == leaver && !got_before) {
          EXPECT_TRUE(m[i].out.messages.empty()) << served << " " << leaver;
        } else {
          EXPECT_EQ(m[i].ns(), std::vector<std::int64_t>{1}) << "member " << i << ", served " << served << ", leaver "
                                                              << leaver;
        }
      }
    }
  }
}

TEST_F(FanoutTest, PresenceRunsAreSlicedToo) {
  make(1, 1);
  Member a, b, c;
  join(a, 0, 1, 1, 0, true);
  join(b, 0, 2, 1, 0, true);
  join(c, 0, 3, 1, 0, true);
  fanout->queue({3}, Delivery{1, 1, 0, frame(7), DeliveryKind::presence});
  ASSERT_TRUE(queues[0]->run_one());
  fanout->remove(a);
  drain();
  EXPECT_EQ(a.ns(), std::vector<std::int64_t>{7});
  EXPECT_EQ(b.ns(), std::vector<std::int64_t>{7});
  EXPECT_EQ(c.ns(), std::vector<std::int64_t>{7});
}
