// Issue 19 items 6-8: the bounds that keep a hostile client from making the
// server hold memory it never asked for. Envelope field sizes (decoder),
// the history byte bounds (LocalBroker), the presence byte bound, and the
// outbound queue's accounting of a join's initial output.
#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "metrics/metrics.hpp"
#include "net/outbound_queue.hpp"
#include "presence/presence_tracker.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/local_broker.hpp"

using namespace synapse;

namespace {

std::string frame(const std::string& join_ref, const std::string& ref, const std::string& topic,
                  const std::string& event) {
  return protocol::encode_raw(join_ref, ref, topic, event, "{}");
}

std::vector<std::string> fields(const std::vector<protocol::FieldError>& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.field);
  return out;
}

}  // namespace

TEST(EnvelopeBounds, FieldsAtTheBoundPass) {
  protocol::Envelope env;
  std::string err;
  ASSERT_TRUE(protocol::decode(frame(std::string(64, 'j'), std::string(64, 'r'), "room:" + std::string(250, 't'),
                                     std::string(64, 'e')),
                               env, err))
      << err;
  EXPECT_TRUE(protocol::oversized_fields(env).empty());
}

TEST(EnvelopeBounds, EachOversizedFieldIsNamedAndDecodeStillSucceeds) {
  protocol::Envelope env;
  std::string err;
  // decode() accepts the frame (so it can be answered); the bounds are a
  // separate verdict.
  ASSERT_TRUE(protocol::decode(frame(std::string(65, 'j'), "1", "room:a", "e"), env, err));
  EXPECT_EQ(fields(protocol::oversized_fields(env)), std::vector<std::string>{"join_ref"});
  ASSERT_TRUE(protocol::decode(frame("1", std::string(1 << 20, 'r'), "room:a", "e"), env, err));
  EXPECT_EQ(fields(protocol::oversized_fields(env)), std::vector<std::string>{"ref"});
  ASSERT_TRUE(protocol::decode(frame("1", "1", "room:" + std::string(251, 't'), "e"), env, err));
  EXPECT_EQ(fields(protocol::oversized_fields(env)), std::vector<std::string>{"topic"});
  ASSERT_TRUE(protocol::decode(frame("1", "1", "room:a", std::string(65, 'e')), env, err));
  EXPECT_EQ(fields(protocol::oversized_fields(env)), std::vector<std::string>{"event"});
  ASSERT_TRUE(protocol::decode(frame(std::string(100, 'j'), std::string(100, 'r'), std::string(300, 't'),
                                     std::string(100, 'e')),
                               env, err));
  EXPECT_EQ(fields(protocol::oversized_fields(env)),
            (std::vector<std::string>{"join_ref", "ref", "topic", "event"}));
}

TEST(EnvelopeBounds, NullRefsAreWithinBounds) {
  protocol::Envelope env;
  std::string err;
  ASSERT_TRUE(protocol::decode(R"([null,null,"room:a","e",{}])", env, err));
  EXPECT_TRUE(protocol::oversized_fields(env).empty());
}

TEST(EnvelopeBounds, DropOversizedLeavesNothingLargeToEcho) {
  protocol::Envelope env;
  std::string err;
  const std::string big(1 << 20, 'x');
  ASSERT_TRUE(protocol::decode(frame(big, big, big, "e"), env, err));
  protocol::drop_oversized(env);
  EXPECT_FALSE(env.join_ref);
  EXPECT_FALSE(env.ref);
  EXPECT_EQ(env.topic, "phoenix");
  const std::string reply = protocol::encode_reply(env.join_ref, env.ref, env.topic, false,
                                                   protocol::error_response("invalid_payload"));
  EXPECT_LT(reply.size(), 200u);
  // Fields within their bounds are kept.
  ASSERT_TRUE(protocol::decode(frame("7", big, "room:a", "e"), env, err));
  protocol::drop_oversized(env);
  EXPECT_EQ(*env.join_ref, "7");
  EXPECT_FALSE(env.ref);
  EXPECT_EQ(env.topic, "room:a");
}

// --- outbound queue: a join's initial output is counted apart -------------

TEST(OutboundQueueExempt, ExemptBytesLeaveTheCountAsTheyAreWritten) {
  net::OutboundQueue q;
  const wire::Message small = wire::Message::text("hello");
  const wire::Message big = wire::Message::text(std::string(10'000, 's'));
  q.push(small);
  q.push(big, true);
  q.push(small);
  EXPECT_EQ(q.bytes(), 2 * small.size() + big.size());
  EXPECT_EQ(q.exempt_bytes(), big.size());
  EXPECT_EQ(q.counted_bytes(), 2 * small.size());
  // Write the first message and half the exempt one.
  q.consume(small.size() + big.size() / 2);
  EXPECT_EQ(q.exempt_bytes(), big.size() - big.size() / 2);
  EXPECT_EQ(q.counted_bytes(), small.size());
  q.consume(big.size() - big.size() / 2);
  EXPECT_EQ(q.exempt_bytes(), 0u);
  EXPECT_EQ(q.counted_bytes(), small.size());
  q.consume(small.size());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.counted_bytes(), 0u);
}

TEST(OutboundQueueExempt, DropUnsentAndClearForgetExemptMessages) {
  net::OutboundQueue q;
  const wire::Message big = wire::Message::text(std::string(10'000, 's'));
  q.push(big, true);
  q.push(big, true);
  q.consume(100);  // the head is partly written
  q.drop_unsent();
  EXPECT_EQ(q.bytes(), big.size() - 100);
  EXPECT_EQ(q.exempt_bytes(), big.size() - 100);
  EXPECT_EQ(q.counted_bytes(), 0u);
  q.push(big);  // counted
  EXPECT_EQ(q.counted_bytes(), big.size());
  q.clear();
  EXPECT_EQ(q.exempt_bytes(), 0u);
  q.push(big);
  EXPECT_EQ(q.counted_bytes(), big.size());
}

TEST(OutboundQueueExempt, ExemptRangesStartWhereTheStreamIsNotAtZero) {
  // The exempt record counts positions from its own start (the queue keeps
  // no stream positions): a record made behind unsent, partly written and
  // already written bytes, freed and made again, still counts exactly.
  net::OutboundQueue q;
  const wire::Message small = wire::Message::text("hello");
  const wire::Message big = wire::Message::text(std::string(10'000, 's'));
  q.push(small);
  q.consume(small.size());  // written before any exempt message
  q.push(small);
  q.consume(2);  // the head is partly written
  q.push(big, true);
  EXPECT_EQ(q.exempt_bytes(), big.size());
  EXPECT_EQ(q.counted_bytes(), small.size() - 2);
  q.consume(small.size() - 2 + 10);
  EXPECT_EQ(q.exempt_bytes(), big.size() - 10);
  EXPECT_EQ(q.counted_bytes(), 0u);
  q.push(small);
  q.push(big, true);  // a second range in the same record
  EXPECT_EQ(q.exempt_bytes(), 2 * big.size() - 10);
  EXPECT_EQ(q.counted_bytes(), small.size());
  q.consume(big.size() - 10 + small.size() + 1);  // the first range is done
  EXPECT_EQ(q.exempt_bytes(), big.size() - 1);
  EXPECT_EQ(q.counted_bytes(), 0u);
  q.consume(big.size() - 1);  // the record goes
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.exempt_bytes(), 0u);
  q.push(small);
  q.push(big, true);  // a new record, behind a counted message
  q.consume(3);
  EXPECT_EQ(q.exempt_bytes(), big.size());
  EXPECT_EQ(q.counted_bytes(), small.size() - 3);
  q.push(big, true);
  q.consume(small.size() - 3 + 5);
  q.drop_unsent();  // keeps the partly written head, the first exempt one
  EXPECT_EQ(q.bytes(), big.size() - 5);
  EXPECT_EQ(q.exempt_bytes(), big.size() - 5);
  EXPECT_EQ(q.counted_bytes(), 0u);
  q.push(small);
  EXPECT_EQ(q.counted_bytes(), small.size());
  q.consume(big.size() - 5);
  EXPECT_EQ(q.exempt_bytes(), 0u);
  EXPECT_EQ(q.counted_bytes(), small.size());
}

// --- presence byte accounting ------------------------------------------------

TEST(PresenceBytes, CountsTrackedMetasAndBoundsTheJoinerState) {
  presence::PresenceTracker t;
  const std::string meta = R"({"m":")" + std::string(1000, 'x') + R"(","phx_ref":"r1","online_at":1})";
  for (int i = 0; i < 50; ++i) {
    t.track("agent" + std::to_string(i % 7), "r" + std::to_string(i), meta);
    if (i == 20) t.flush();
  }
  std::size_t expected = 0;
  for (int i = 0; i < 50; ++i) expected += presence::entry_bytes("agent" + std::to_string(i % 7), meta);
  EXPECT_EQ(t.bytes(), expected);
  EXPECT_LE(t.state_for_joiner().size(), t.bytes());
  // A leave of a published meta and of a pending one both give bytes back.
  t.untrack("agent0", "r0");   // published
  t.untrack("agent0", "r49");  // pending (49 % 7 == 0)
  t.untrack("agent0", "r0");   // twice: no change
  expected -= 2 * presence::entry_bytes("agent0", meta);
  EXPECT_EQ(t.bytes(), expected);
  for (int i = 1; i < 49; ++i) t.untrack("agent" + std::to_string(i % 7), "r" + std::to_string(i));
  EXPECT_EQ(t.bytes(), 0u);
}

TEST(PresenceBytes, ALeaveOfAJoinShownToAJoinerIsPublished) {
  // Found by the 5,000-member test: a member that joins and leaves within
  // one interval used to cancel out, though a presence joiner had already
  // got it in its state; that joiner then kept it forever.
  presence::PresenceTracker t;
  t.track("a", "r1", R"({"phx_ref":"r1"})");
  t.flush();
  t.track("b", "r2", R"({"phx_ref":"r2"})");
  EXPECT_NE(t.state_for_joiner().find("r2"), std::string::npos);
  t.untrack("b", "r2");
  auto diff = t.flush();
  ASSERT_TRUE(diff);
  auto d = boost::json::parse(*diff).as_object();
  EXPECT_TRUE(d["joins"].as_object().empty());
  EXPECT_TRUE(d["leaves"].as_object().contains("b"));
  EXPECT_EQ(t.bytes(), presence::entry_bytes("a", R"({"phx_ref":"r1"})"));
  // Nobody saw it: still cancelled out.
  t.track("c", "r3", R"({"phx_ref":"r3"})");
  t.untrack("c", "r3");
  EXPECT_FALSE(t.flush());
}

// --- LocalBroker: history byte bounds and the presence bound --------------

namespace {

// Runs posted tasks when asked: the test is every I/O thread.
struct Posted {
  std::deque<Task> tasks;
  void run() {
    while (!tasks.empty()) {
      Task t = std::move(tasks.front());
      tasks.pop_front();
      t();
    }
  }
};

struct Member final : pubsub::Subscriber, MessageSink {
  std::vector<wire::Message> got;
  Member() { sink = this; }
  void send(wire::Message m) override { got.push_back(std::move(m)); }
  void send_batch(const wire::Message* const* msgs, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) got.push_back(*msgs[i]);
  }
};

struct BrokerFixture {
  Posted posted;
  metrics::Metrics m;
  pubsub::LocalBroker broker;
  explicit BrokerFixture(pubsub::BrokerOptions o)
      : broker(o, {[this](Task t) { posted.tasks.push_back(std::move(t)); }}, m) {}

  std::uint64_t publish(const std::string& topic, std::size_t payload_bytes) {
    const std::string payload = R"({"p":")" + std::string(payload_bytes, 'x') + "\"}";
    return broker.publish(topic, "e", payload, false, "agent", 0).offset;
  }
  pubsub::JoinResult join(Member& sub, const std::string& topic, std::optional<pubsub::Recover> rec,
                          boost::json::object meta = {}) {
    pubsub::JoinRequest req;
    req.topic = topic;
    req.agent_id = "agent";
    req.connection_id = 99;
    req.recover = std::move(rec);
    req.meta = std::move(meta);
    return broker.join(sub, req);
  }
};

}  // namespace

TEST(HistoryBytes, PerTopicBoundDropsOldestAndRecoveryPastItIsFalse) {
  pubsub::BrokerOptions o;
  o.history_size = 1000;
  o.history_max_bytes_per_topic = 100'000;
  o.history_max_bytes = 0;
  BrokerFixture f(o);
  std::uint64_t last = 0;
  for (int i = 0; i < 30; ++i) last = f.publish("room:a", 10'000);  // ~300 KB published
  const auto s = f.broker.stats();
  EXPECT_LE(s.history_bytes, 100'000u);
  EXPECT_GE(s.history_bytes, 80'000u);  // the newest ones are kept
  EXPECT_LT(s.history_messages, 30u);

  Member recent, old;
  const std::string epoch = f.join(recent, "room:a", std::nullopt).epoch;
  f.broker.leave(recent, "room:a");
  // From a few messages back: still there.
  auto r = f.join(recent, "room:a", pubsub::Recover{last - 3, epoch});
  EXPECT_TRUE(r.recovered);
  EXPECT_EQ(r.backlog.size(), 3u);
  // From the start: the oldest are gone, so nothing is replayed.
  r = f.join(old, "room:a", pubsub::Recover{0, epoch});
  EXPECT_FALSE(r.recovered);
  EXPECT_TRUE(r.backlog.empty());
  f.broker.leave(recent, "room:a");
  f.broker.leave(old, "room:a");
}

TEST(HistoryBytes, TotalBoundDropsTheOldestAcrossTopics) {
  pubsub::BrokerOptions o;
  o.history_size = 1000;
  o.history_max_bytes_per_topic = 0;
  o.history_max_bytes = 400'000;
  BrokerFixture f(o);
  // The old topic first, then enough newer traffic elsewhere to pass the total.
  for (int i = 0; i < 10; ++i) f.publish("room:old", 10'000);
  for (int t = 0; t < 8; ++t) {
    for (int i = 0; i < 5; ++i) f.publish("room:new" + std::to_string(t), 10'000);
  }
  const auto s = f.broker.stats();
  EXPECT_LE(s.history_bytes, 400'000u);
  Member a, b;
  const std::string old_epoch = f.join(a, "room:old", std::nullopt).epoch;
  const std::string new_epoch = f.join(b, "room:new7", std::nullopt).epoch;
  f.broker.leave(a, "room:old");
  f.broker.leave(b, "room:new7");
  // The oldest topic lost its history first; the newest kept all of it.
  EXPECT_FALSE(f.join(a, "room:old", pubsub::Recover{0, old_epoch}).recovered);
  auto r = f.join(b, "room:new7", pubsub::Recover{0, new_epoch});
  EXPECT_TRUE(r.recovered);
  EXPECT_EQ(r.backlog.size(), 5u);
  f.broker.leave(a, "room:old");
  f.broker.leave(b, "room:new7");
  // Eviction went down to 7/8 of the bound, not further.
  EXPECT_GE(f.broker.stats().history_bytes, 300'000u);
}

TEST(PresenceBound, JoinPastTheTopicsBoundIsRefusedAndRecordsNothing) {
  pubsub::BrokerOptions o;
  o.max_presence_bytes_per_topic = 20'000;
  BrokerFixture f(o);
  boost::json::object meta{{"m", std::string(1000, 'x')}};
  std::vector<std::unique_ptr<Member>> members;
  int accepted = 0;
  for (int i = 0; i < 40; ++i) {
    members.push_back(std::make_unique<Member>());
    auto r = f.join(*members.back(), "room:p", std::nullopt, meta);
    if (r.presence_full) break;
    ++accepted;
  }
  EXPECT_GE(accepted, 15);
  EXPECT_LE(accepted, 20);
  EXPECT_EQ(f.broker.stats().members, static_cast<std::size_t>(accepted));
  // One leaves: there is room again.
  f.broker.leave(*members.front(), "room:p");
  Member again;
  EXPECT_FALSE(f.join(again, "room:p", std::nullopt, meta).presence_full);
  f.broker.leave(again, "room:p");
  for (std::size_t i = 1; i < static_cast<std::size_t>(accepted); ++i) f.broker.leave(*members[i], "room:p");
  f.posted.run();
}
