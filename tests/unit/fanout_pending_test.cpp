// Fanout's pending members (the Redis broker's asynchronous join): what is
// drained for a member before its join's offset is known is held, and
// activate() replays it through the same filters a completed join would
// have applied, in order; remove() drops it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "metrics/metrics.hpp"
#include "pubsub/fanout.hpp"

namespace synapse::pubsub {
namespace {

struct Sink final : MessageSink {
  std::vector<std::string> got;
  void send(wire::Message m) override { got.emplace_back(m.payload()); }
  void send_batch(const wire::Message* const* msgs, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) got.emplace_back(msgs[i]->payload());
  }
};

struct Member final : Subscriber {};

struct Rig {
  metrics::Metrics metrics;
  std::vector<Task> tasks;
  Fanout fanout{{[this](Task t) { tasks.push_back(std::move(t)); }}, metrics};

  void run() {
    auto now = std::move(tasks);
    tasks.clear();
    for (auto& t : now) t();
  }
  void message(std::uint64_t topic, std::uint64_t offset, const char* text, std::uint64_t exclude = 0) {
    fanout.queue({1}, Delivery{topic, offset, exclude, wire::Message::text(text), DeliveryKind::message});
  }
  void presence(std::uint64_t topic, std::uint64_t seq, const char* text) {
    fanout.queue({1}, Delivery{topic, seq, 0, wire::Message::text(text), DeliveryKind::presence});
  }
  void reset(std::uint64_t topic) { fanout.queue({1}, Delivery{topic, 0, 0, {}, DeliveryKind::reset}); }
};

JoinRequest request(std::uint64_t connection, bool presence) {
  JoinRequest req;
  req.topic = "room:a";
  req.thread = 0;
  req.connection_id = connection;
  req.agent_id = "agent";
  req.presence = presence;
  return req;
}

TEST(FanoutPending, HeldDeliveriesAreReplayedThroughTheJoinsFiltersInOrder) {
  Rig rig;
  Sink sink;
  Member m;
  m.sink = &sink;
  rig.fanout.add_pending(m, request(7, true), 1);
  rig.message(1, 4, "m4");
  rig.message(1, 5, "m5");
  rig.presence(1, 1, "p1");
  rig.message(1, 6, "m6");
  rig.message(1, 7, "own7", 7);  // the member's own publish
  rig.presence(1, 2, "p2");
  rig.run();
  EXPECT_TRUE(sink.got.empty()) << "a pending member received something";

  // The join read offset 5, and presence state at diff 1.
  rig.fanout.activate(m, 5, 1);
  EXPECT_EQ(sink.got, (std::vector<std::string>{"m6", "p2"}));

  // Afterwards, direct delivery with the same filters.
  sink.got.clear();
  rig.message(1, 5, "m5-again");
  rig.message(1, 8, "m8");
  rig.run();
  EXPECT_EQ(sink.got, (std::vector<std::string>{"m8"}));
}

TEST(FanoutPending, AResetWhilePendingStartsTheNewEpochFromItsFirstOffset) {
  Rig rig;
  Sink sink;
  Member m;
  m.sink = &sink;
  rig.fanout.add_pending(m, request(7, false), 1);
  rig.message(1, 9, "old9");
  rig.reset(1);
  rig.message(1, 1, "new1");
  rig.run();
  rig.fanout.activate(m, 8, 0);
  EXPECT_EQ(sink.got, (std::vector<std::string>{"old9", "new1"}));
  sink.got.clear();
  rig.message(1, 2, "new2");
  rig.run();
  EXPECT_EQ(sink.got, (std::vector<std::string>{"new2"}));
}

TEST(FanoutPending, RemovedWhilePendingGetsNothingAndOthersAreUnaffected) {
  Rig rig;
  Sink a_sink, b_sink;
  Member a, b;
  a.sink = &a_sink;
  b.sink = &b_sink;
  rig.fanout.add(b, request(2, false), 1, 0, 0);
  rig.fanout.add_pending(a, request(1, false), 1);
  rig.message(1, 1, "m1");
  rig.run();
  rig.fanout.remove(a);
  rig.message(1, 2, "m2");
  rig.run();
  EXPECT_TRUE(a_sink.got.empty());
  EXPECT_EQ(b_sink.got, (std::vector<std::string>{"m1", "m2"}));
}

}  // namespace
}  // namespace synapse::pubsub
