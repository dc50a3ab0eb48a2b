// The Hub (pubsub/hub.hpp) in front of a scripted shared backend: what the
// Hub does once for every backend, driven event by event, without Redis.
// Ordering (a duplicate is dropped, a jump is a phx_gap before what
// follows, a new epoch ends the old one with an open-ended gap and resets
// the members' filters), holding live messages while the topic reads back
// what it missed after a lost transport and merging both in offset order,
// the other nodes' presence (changes that come while the snapshot loads
// wait for it and apply in version order), a join while the backend is down
// and a publish that only this node could deliver. The same behaviour
// through a real Redis is broker_contract_test.cpp's; this file pins down
// the Hub's half of the seam, so a second shared backend need only speak
// BackendEvents.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fake_socket.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/hub.hpp"
#include "pubsub/publish_frame.hpp"

namespace json = boost::json;
using namespace synapse;
using fakes::RecordingSink;
using fakes::TaskQueue;

namespace {

// A shared backend whose answers the test gives: subscriptions are
// confirmed at once, positions come from `next_position`, snapshots and
// read-backs wait until the test answers them.
class ScriptedBackend final : public pubsub::Backend {
 public:
  void attach(pubsub::BackendEvents& e) override { events = &e; }
  bool shared() const override { return true; }
  void publish(std::string_view topic, std::string body, std::uint64_t exclude, PublishDone done) override {
    if (down) {
      events->on_local_message(topic, exclude, body);
      pubsub::PublishResult r;
      r.reach = pubsub::PublishResult::Reach::local;
      done(r);
      return;
    }
    published.push_back(std::move(body));
    done(pubsub::PublishResult{});
  }
  void subscribe(std::string_view, pubsub::Deadline, std::function<void(bool)> done) override {
    ++subscribes;
    done(!down);
  }
  void unsubscribe(std::string_view) override { ++unsubscribes; }
  void position(std::string_view, const std::optional<pubsub::Recover>&, pubsub::Deadline,
                std::function<void(pubsub::Position)> done) override {
    done(next_position);
  }
  void presence_add(std::string_view, const std::string& ref, const std::string&, const std::string&) override {
    added.push_back(ref);
  }
  void presence_remove(std::string_view, const std::string& ref, const std::string&) override {
    removed.push_back(ref);
  }
  void presence_snapshot(std::string_view, pubsub::Deadline,
                         std::function<void(std::optional<pubsub::PresenceSnapshot>)> done) override {
    snapshots.push_back(std::move(done));
  }
  void read_missed(std::string_view, const std::string& epoch, std::uint64_t offset,
                   std::function<void(pubsub::Missed)> done) override {
    reads.push_back(Read{epoch, offset, std::move(done)});
  }

  struct Read {
    std::string epoch;
    std::uint64_t after = 0;
    std::function<void(pubsub::Missed)> done;
  };
  pubsub::BackendEvents* events = nullptr;
  pubsub::Position next_position;
  bool down = false;
  int subscribes = 0, unsubscribes = 0;
  std::vector<std::string> published, added, removed;
  std::vector<std::function<void(std::optional<pubsub::PresenceSnapshot>)>> snapshots;
  std::vector<Read> reads;
};

struct Member : pubsub::Subscriber {
  RecordingSink out;
  Member() { sink = &out; }
  std::vector<json::array> frames() const { return out.frames(); }
  // Each frame as "<offset>" (a message), "gap <from>-<to>" or "<event>".
  std::vector<std::string> seen() const {
    std::vector<std::string> v;
    for (const auto& f : frames()) {
      const std::string event(f[3].as_string());
      const auto& p = f[4].as_object();
      if (event == "phx_gap") {
        std::string to = p.at("to").is_null() ? "end" : std::to_string(p.at("to").to_number<std::uint64_t>());
        v.push_back("gap " + std::to_string(p.at("from").to_number<std::uint64_t>()) + "-" + to);
      } else if (const auto* meta = p.if_contains("_meta"); meta && meta->as_object().contains("offset")) {
        v.push_back(std::to_string(meta->as_object().at("offset").to_number<std::uint64_t>()));
      } else if (meta && meta->as_object().contains("local")) {
        v.push_back("local");
      } else {
        v.push_back(event);
      }
    }
    return v;
  }
};

std::string body(int k) { return pubsub::encode_body("m", "{\"k\":" + std::to_string(k) + "}", false, "pub", 1); }

class HubTest : public ::testing::Test {
 protected:
  HubTest() {
    backend.next_position.offset = 0;
    backend.next_position.epoch = "E1";
    hub = std::make_unique<pubsub::Hub>(pubsub::HubOptions{}, backend, std::vector<Poster>{queue.poster()}, metrics);
  }
  // Starts a join on thread 0; `result` is set once it completes.
  void start_join(Member& m, std::uint64_t connection, bool presence = false, std::string_view agent = "alice") {
    pubsub::JoinRequest req;
    req.topic = "room:a";
    req.thread = 0;
    req.connection_id = connection;
    req.agent_id = agent;
    req.presence = presence;
    m.agent_id = agent;
    hub->join_async(m, req, [this](pubsub::JoinResult r) { result = std::move(r); });
  }
  // A join whose snapshot is answered at once with nobody else present.
  pubsub::JoinResult join(Member& m, std::uint64_t connection, bool presence = false) {
    result.reset();
    start_join(m, connection, presence);
    if (!backend.snapshots.empty()) {
      auto done = std::move(backend.snapshots.front());
      backend.snapshots.erase(backend.snapshots.begin());
      done(pubsub::PresenceSnapshot{});
    }
    queue.run_pending();
    EXPECT_TRUE(result.has_value());
    return result ? *result : pubsub::JoinResult{};
  }
  void message(std::string_view epoch, std::uint64_t offset, int k = 0) {
    const std::string b = body(k);
    backend.events->on_message("room:a", epoch, offset, 0, b);
  }

  metrics::Metrics metrics;
  TaskQueue queue;
  ScriptedBackend backend;
  std::unique_ptr<pubsub::Hub> hub;
  std::optional<pubsub::JoinResult> result;
};

}  // namespace

TEST_F(HubTest, AJumpWithinAnEpochIsAGapReportedBeforeWhatFollowsAndADuplicateIsDropped) {
  Member m;
  join(m, 1);
  message("E1", 1);
  message("E1", 2);
  message("E1", 2);  // the same offset again (a read-back overlapping the live stream)
  message("E1", 5);
  message("E1", 4);  // older than the last handed on
  message("E1", 6);
  queue.run_pending();
  EXPECT_EQ(m.seen(), (std::vector<std::string>{"1", "2", "gap 3-4", "5", "6"}));
  hub->leave(m, "room:a");
}

TEST_F(HubTest, ANewEpochEndsTheOldOneWithAnOpenGapAndItsOffsetOneIsDelivered) {
  Member m;
  join(m, 1);
  message("E1", 1);
  message("E1", 2);
  message("E2", 1);  // the backend lost its data and numbers again
  message("E2", 2);
  queue.run_pending();
  EXPECT_EQ(m.seen(), (std::vector<std::string>{"1", "2", "gap 3-end", "1", "2"}));
  const auto gap = m.frames()[2][4].as_object();
  EXPECT_EQ(gap.at("epoch").as_string(), "E1");
  EXPECT_EQ(gap.at("next_epoch").as_string(), "E2");
  hub->leave(m, "room:a");
}

TEST_F(HubTest, TheFirstMessageOfANewMembershipIsNotAGapEvenFarFromZero) {
  backend.next_position.offset = 40;
  Member m;
  EXPECT_EQ(join(m, 1).offset, 40u);
  message("E1", 41);
  queue.run_pending();
  EXPECT_EQ(m.seen(), std::vector<std::string>{"41"});
  hub->leave(m, "room:a");
}

TEST_F(HubTest, AfterALostTransportLiveMessagesWaitForTheReadBackAndBothArriveInOrderOnce) {
  Member m;
  join(m, 1);
  message("E1", 1);
  queue.run_pending();
  backend.events->on_backend_lost();
  // Back: 2 and 3 were published while this node was away; 4 and 5 arrive
  // live before the read-back answers, 4 also in the stream.
  backend.events->on_backend_back(true);
  ASSERT_EQ(backend.reads.size(), 1u);
  EXPECT_EQ(backend.reads[0].epoch, "E1");
  EXPECT_EQ(backend.reads[0].after, 1u) << "the read starts after the last offset handed on";
  message("E1", 4);
  message("E1", 5);
  queue.run_pending();
  EXPECT_EQ(m.seen(), std::vector<std::string>{"1"}) << "held until what was missed is in";
  pubsub::Missed missed;
  missed.epoch = "E1";
  for (std::uint64_t o : {2, 3, 4}) missed.messages.push_back(pubsub::StoredMessage{o, 0, body(int(o))});
  backend.reads[0].done(std::move(missed));
  message("E1", 6);
  queue.run_pending();
  EXPECT_EQ(m.seen(), (std::vector<std::string>{"1", "2", "3", "4", "5", "6"}));
  hub->leave(m, "room:a");
}

TEST_F(HubTest, AReadBackLostWithItsTransportKeepsHoldingAndTheNextOneCounts) {
  Member m;
  join(m, 1);
  message("E1", 1);
  backend.events->on_backend_lost();
  backend.events->on_backend_back(true);
  message("E1", 3);
  pubsub::Missed lost;
  lost.ok = false;
  lost.lost = true;
  backend.reads[0].done(std::move(lost));
  queue.run_pending();
  EXPECT_EQ(m.seen(), std::vector<std::string>{"1"}) << "3 is still held: 2 may yet be read";
  backend.events->on_backend_lost();
  backend.events->on_backend_back(true);
  ASSERT_EQ(backend.reads.size(), 2u);
  pubsub::Missed missed;
  missed.epoch = "E1";
  missed.messages.push_back(pubsub::StoredMessage{2, 0, body(2)});
  backend.reads[1].done(std::move(missed));
  queue.run_pending();
  EXPECT_EQ(m.seen(), (std::vector<std::string>{"1", "2", "3"}));
  hub->leave(m, "room:a");
}

TEST_F(HubTest, WhatTheStreamNoLongerHoldsIsAGapBeforeTheHeldMessages) {
  Member m;
  join(m, 1);
  message("E1", 1);
  backend.events->on_backend_lost();
  backend.events->on_backend_back(true);
  message("E1", 9);
  pubsub::Missed missed;  // the stream kept only 7 and 8 of 2..8
  missed.epoch = "E1";
  for (std::uint64_t o : {7, 8}) missed.messages.push_back(pubsub::StoredMessage{o, 0, body(int(o))});
  backend.reads[0].done(std::move(missed));
  queue.run_pending();
  EXPECT_EQ(m.seen(), (std::vector<std::string>{"1", "gap 2-6", "7", "8", "9"}));
  hub->leave(m, "room:a");
}

TEST_F(HubTest, PresenceChangesThatComeWhileTheSnapshotLoadsApplyAfterItInVersionOrder) {
  Member m;
  start_join(m, 1, true);
  ASSERT_EQ(backend.snapshots.size(), 1u) << "the first member reads the topic's presence before the gate opens";
  EXPECT_FALSE(result.has_value());
  // Changes of other nodes arrive first: version 5 (carol joins) and 3
  // (bob leaves, already in the snapshot below, which is at version 4).
  pubsub::PresenceChange carol{5, true, false, "n2-9", "carol", R"({"phx_ref":"n2-9"})"};
  pubsub::PresenceChange bob_leaves_old{3, false, false, "n2-1", "bob", ""};
  backend.events->on_presence("room:a", carol);
  backend.events->on_presence("room:a", bob_leaves_old);
  pubsub::PresenceSnapshot snap;
  snap.version = 4;
  snap.entries.push_back({"n2-1", "bob", R"({"phx_ref":"n2-1"})", false});
  snap.entries.push_back({"x-1", "alice", R"({"phx_ref":"x-1"})", true});  // this node's: tracked by the Hub itself
  auto done = std::move(backend.snapshots.front());
  done(snap);
  queue.run_pending();
  ASSERT_TRUE(result.has_value());
  const auto state = json::parse(result->presence_state_json).as_object();
  EXPECT_TRUE(state.contains("bob")) << "version 3 predates the snapshot: skipped";
  EXPECT_TRUE(state.contains("carol"));
  ASSERT_TRUE(state.contains("alice"));
  EXPECT_EQ(state.at("alice").at("metas").as_array().size(), 1u) << "only the member's own entry, not x-1";
  ASSERT_EQ(backend.added.size(), 1u) << "the member's entry is added to the backend";
  EXPECT_EQ(backend.added[0], m.presence_ref.view());
  // A change older than what is applied is ignored; a newer leave applies.
  backend.events->on_presence("room:a", pubsub::PresenceChange{4, false, false, "n2-9", "carol", ""});
  EXPECT_TRUE(json::parse(hub->presence_state("room:a")).as_object().contains("carol"));
  backend.events->on_presence("room:a", pubsub::PresenceChange{6, false, false, "n2-9", "carol", ""});
  EXPECT_FALSE(json::parse(hub->presence_state("room:a")).as_object().contains("carol"));
  hub->leave(m, "room:a");
  EXPECT_EQ(backend.removed, backend.added);
  EXPECT_EQ(backend.unsubscribes, 1);
}

TEST_F(HubTest, AJoinWhileTheBackendIsDownGetsThisNodesMessagesWithTheLastEpochSeen) {
  Member first;
  join(first, 1);
  message("E1", 1);
  queue.run_pending();
  hub->leave(first, "room:a");
  backend.down = true;
  backend.next_position = pubsub::Position{};
  backend.next_position.offline = true;
  Member m;
  const auto r = join(m, 2);
  EXPECT_FALSE(r.unavailable);
  EXPECT_EQ(r.offset, 0u);
  EXPECT_EQ(r.epoch, "E1") << "the previous membership's epoch";
  EXPECT_EQ(hub->publish("room:a", "m", "{}", true, "pub", 0).reach, pubsub::PublishResult::Reach::local);
  queue.run_pending();
  EXPECT_EQ(m.seen(), std::vector<std::string>{"local"});
  hub->leave(m, "room:a");
}

TEST_F(HubTest, APositionTheBackendCouldNotReadRefusesTheJoinAndUndoesIt) {
  backend.next_position.ok = false;
  Member m;
  const auto r = join(m, 1);
  EXPECT_TRUE(r.unavailable);
  EXPECT_EQ(backend.unsubscribes, 1) << "the only member: the node stops listening";
  message("E1", 1);
  queue.run_pending();
  EXPECT_TRUE(m.seen().empty());
  hub->leave(m, "room:a");  // a no-op after a refused join
  EXPECT_EQ(backend.unsubscribes, 1);
}
