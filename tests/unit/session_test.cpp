// One connection's protocol state (channels/session.*) over a FakeSocket:
// joins routed through the channel registry (first match wins), the
// documented answers to unknown topics, stale join_refs (protocol.md
// section 9), heartbeats, malformed and oversized frames (sections 2 and 9),
// leaves, crashing channels, and the token's expiry. The channels here are
// the test's own, so nothing depends on how a real channel joins.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "auth/jwks.hpp"
#include "auth/jwt.hpp"
#include "auth/key_store.hpp"
#include "channels/channel.hpp"
#include "channels/channel_registry.hpp"
#include "channels/services.hpp"
#include "channels/session.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/cortex.hpp"
#include "fake_socket.hpp"
#include "metrics/metrics.hpp"
#include "protocol/close_codes.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/local_broker.hpp"
#include "wire/ws_frame.hpp"

namespace json = boost::json;
using namespace synapse;
using fakes::event_of;
using fakes::payload_of;
using fakes::reply_reason;
using fakes::reply_response;
using fakes::reply_status;
using fakes::topic_of;

namespace {

// What every test channel saw, by kind and topic.
struct Log {
  std::vector<std::string> joins;   // "<kind> <topic>"
  std::vector<std::string> events;  // "<topic> <event> <join_ref or ->"
  std::vector<std::string> leaves;  // topics, in order
  std::vector<std::string> shutdowns;
};

class RecordingChannel final : public channels::Channel {
 public:
  RecordingChannel(Log& log, const protocol::Envelope& join) : Channel(join), log_(log), topic_(join.topic) {}
  void handle_in(const protocol::Envelope& env) override {
    if (env.event == "throw") throw std::runtime_error("the channel failed");
    log_.events.push_back(topic_ + " " + std::string(env.event) + " " +
                          (env.join_ref ? std::string(*env.join_ref) : std::string("-")));
  }
  void leave() override { log_.leaves.push_back(topic_); }
  void shutdown() override { log_.shutdowns.push_back(topic_); }

 private:
  Log& log_;
  std::string topic_;
};

channels::JoinChannel recording_join(Log& log, std::string kind) {
  return [&log, kind](channels::Session& s, const protocol::Envelope& env) -> std::unique_ptr<channels::Channel> {
    log.joins.push_back(kind + " " + std::string(env.topic));
    s.reply_ok(env, json::object{{"kind", kind}});
    return std::make_unique<RecordingChannel>(log, env);
  };
}

std::string frame(std::string_view join_ref, std::string_view ref, std::string_view topic, std::string_view event,
                  std::string_view payload = "{}") {
  auto lit = [](std::string_view s) { return s == "null" ? std::string("null") : "\"" + std::string(s) + "\""; };
  return "[" + lit(join_ref) + "," + lit(ref) + "," + lit(topic) + "," + lit(event) + "," + std::string(payload) + "]";
}

cortex::CortexOptions one_worker() {
  cortex::CortexOptions o;
  o.workers = 1;
  return o;
}

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    registry.add({"test:special", "special", recording_join(log, "special"), {}});
    registry.add({"test:*", "test", recording_join(log, "test"), {}});
    registry.add({"deny:*", "deny",
                  [](channels::Session& s, const protocol::Envelope& env) -> std::unique_ptr<channels::Channel> {
                    s.reply_error(env, protocol::reason::forbidden, "not you");
                    return nullptr;
                  },
                  {}});
    registry.add({"boom:*", "boom",
                  [](channels::Session&, const protocol::Envelope&) -> std::unique_ptr<channels::Channel> {
                    throw std::runtime_error("join failed");
                  },
                  {}});
    services.channels = &registry;
  }

  static auth::Principal api_key_principal() {
    auth::Principal p;
    p.agent_id = "alice";
    p.tenant = "default";
    p.unlimited = true;  // rate limits have their own test
    return p;
  }
  void start(auth::Principal p = api_key_principal()) {
    session =
        std::make_unique<channels::Session>(socket, services, std::make_shared<const auth::Principal>(std::move(p)));
  }
  void send(const std::string& text) { session->on_text(text); }
  // The single frame the last call sent.
  json::array only() {
    auto f = socket.take();
    EXPECT_EQ(f.size(), 1u);
    return f.empty() ? json::array{} : f.front();
  }

  fakes::TempDir dir{"session-unit"};
  config::Config cfg;
  metrics::Metrics metrics;
  auth::KeyStore keys{dir.file("keys.db")};
  std::string secret = "session-unit-test-secret-session-unit-test";
  fakes::TaskQueue io;
  pubsub::LocalBroker broker{pubsub::BrokerOptions{}, {io.poster()}, metrics};
  cortex::Cortex cortex{one_worker(), dir.file("memory.db")};
  channels::ChannelRegistry registry;
  channels::Services services{cfg, metrics, keys, secret, broker, cortex};
  Log log;
  fakes::FakeSocket socket;
  std::unique_ptr<channels::Session> session;
};

}  // namespace

TEST_F(SessionTest, AJoinGoesToTheFirstKindWhosePatternMatches) {
  start();
  send(frame("1", "1", "test:special", "phx_join"));
  send(frame("2", "2", "test:other", "phx_join"));
  EXPECT_EQ(log.joins, (std::vector<std::string>{"special test:special", "test test:other"}));
  const auto f = socket.take();
  ASSERT_EQ(f.size(), 2u);
  // The reply echoes join_ref and ref: [join_ref, ref, topic, "phx_reply", ...].
  EXPECT_EQ(f[0][0].as_string(), "1");
  EXPECT_EQ(f[0][1].as_string(), "1");
  EXPECT_EQ(topic_of(f[0]), "test:special");
  EXPECT_EQ(event_of(f[0]), "phx_reply");
  EXPECT_EQ(reply_status(f[0]), "ok");
  EXPECT_EQ(reply_response(f[0]).at("kind").as_string(), "special");
  EXPECT_EQ(reply_response(f[1]).at("kind").as_string(), "test");
  EXPECT_EQ(session->topics(), (std::vector<std::string>{"test:special", "test:other"}));
}

TEST_F(SessionTest, ATopicNoKindServesOrAnInvalidNameIsInvalidTopic) {
  start();
  send(frame("1", "1", "nobody:here", "phx_join"));
  auto f = only();
  EXPECT_EQ(reply_status(f), "error");
  EXPECT_EQ(reply_reason(f), "invalid_topic");
  send(frame("2", "2", "no spaces allowed", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "invalid_topic");
  send(frame("3", "3", "nonamespace", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "invalid_topic");
  EXPECT_TRUE(log.joins.empty());
  EXPECT_TRUE(session->topics().empty());
}

TEST_F(SessionTest, EventsReachTheJoinedChannelAndOthersAreUnmatchedTopic) {
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  socket.take();
  send(frame("1", "2", "test:a", "hello"));
  EXPECT_EQ(log.events, std::vector<std::string>{"test:a hello 1"});
  EXPECT_TRUE(socket.take().empty()) << "the channel answers for itself";
  send(frame("null", "3", "test:b", "hello"));
  auto f = only();
  EXPECT_EQ(reply_reason(f), "unmatched_topic");
  EXPECT_EQ(f[1].as_string(), "3");
  EXPECT_EQ(log.events.size(), 1u);
}

TEST_F(SessionTest, AStaleJoinRefIsAnsweredUnmatchedTopicAndNeverReachesTheChannel) {
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  socket.take();
  // Rejoining closes the first join: leave(), then phx_close with its join_ref.
  send(frame("2", "2", "test:a", "phx_join"));
  auto f = socket.take();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(event_of(f[0]), "phx_close");
  EXPECT_EQ(f[0][0].as_string(), "1");
  EXPECT_EQ(f[0][1].as_string(), "1");
  EXPECT_EQ(event_of(f[1]), "phx_reply");
  EXPECT_EQ(reply_status(f[1]), "ok");
  EXPECT_EQ(log.leaves, std::vector<std::string>{"test:a"});

  send(frame("1", "3", "test:a", "hello"));
  f = socket.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_reason(f[0]), "unmatched_topic");
  // A stale phx_leave does not end the current join.
  send(frame("1", "4", "test:a", "phx_leave"));
  EXPECT_EQ(reply_reason(only()), "unmatched_topic");
  EXPECT_EQ(session->topics(), std::vector<std::string>{"test:a"});
  EXPECT_EQ(log.leaves.size(), 1u);
  EXPECT_TRUE(log.events.empty());
  // The current join_ref, or none, is the current join's.
  send(frame("2", "5", "test:a", "hello"));
  send(frame("null", "6", "test:a", "hello"));
  EXPECT_EQ(log.events, (std::vector<std::string>{"test:a hello 2", "test:a hello -"}));
}

TEST_F(SessionTest, HeartbeatIsAnsweredOkEmptyAndIsNotRateLimited) {
  cfg.messages_per_min = 1;
  cfg.message_burst = 1;
  auto p = api_key_principal();
  p.unlimited = false;
  start(p);
  for (int i = 0; i < 5; ++i) {
    send(frame("null", "hb" + std::to_string(i), "phoenix", "heartbeat"));
    auto f = only();
    EXPECT_EQ(topic_of(f), "phoenix");
    EXPECT_EQ(f[1].as_string(), "hb" + std::to_string(i));
    EXPECT_EQ(reply_status(f), "ok");
    EXPECT_TRUE(reply_response(f).empty());
  }
  // The bucket's one token is still there for the first other message.
  send(frame("1", "1", "test:a", "phx_join"));
  EXPECT_EQ(reply_status(only()), "ok");
  send(frame("1", "2", "test:a", "hello"));
  auto f = only();
  EXPECT_EQ(reply_reason(f), "rate_limited");
  EXPECT_GT(reply_response(f).at("retry_after_ms").to_number<std::int64_t>(), 0);
  EXPECT_TRUE(log.events.empty()) << "a rate-limited message is not processed";
  EXPECT_EQ(metrics.rate_limited[0].load(), 1u);
}

// A heartbeat is answered from the flat decode when it has that shape
// (string-only payload, no escapes) and through the full decode otherwise:
// the same reply either way, with the client's join_ref and ref; an
// oversized ref is refused as before; a frame that only mentions
// "heartbeat" is routed as what it is.
TEST_F(SessionTest, HeartbeatGetsTheSameReplyWhicheverDecodeReadsIt) {
  start();
  const std::vector<std::pair<std::string, std::string>> frames = {
      {frame("null", "1", "phoenix", "heartbeat"), "1"},                          // flat: what clients send
      {frame("7", "2", "phoenix", "heartbeat", R"({"a":"b"})"), "2"},             // flat, a string field
      {frame("null", "3", "phoenix", "heartbeat", R"({"n":1,"o":{}})"), "3"},     // full: numbers, nesting
      {R"([null,"4\"x","phoenix","heartbeat",{}])", "4\"x"},                      // full: an escape in the ref
      {R"([ null , "5" , "phoenix" , "heartbeat" , { } ])", "5"},                 // whitespace
  };
  for (const auto& [text, ref] : frames) {
    send(text);
    auto f = only();
    EXPECT_EQ(topic_of(f), "phoenix") << text;
    EXPECT_EQ(f[1].as_string(), ref) << text;
    EXPECT_EQ(reply_status(f), "ok") << text;
    EXPECT_TRUE(reply_response(f).empty()) << text;
  }
  send(frame("7", "2", "phoenix", "heartbeat", R"({"a":"b"})"));
  EXPECT_EQ(only()[0].as_string(), "7") << "the join_ref comes back";
  send(frame("null", std::string(65, 'r'), "phoenix", "heartbeat"));
  EXPECT_EQ(reply_status(only()), "error") << "a ref over 64 bytes is refused, flat decode or not";
  send(R"([null,"6","phoenix","heartbeat",{}]x)");
  EXPECT_EQ(event_of(only()), "phx_error") << "trailing garbage is a malformed frame, not a heartbeat";
  send(frame("1", "1", "test:a", "phx_join"));
  socket.take();
  send(frame("1", "8", "test:a", "heartbeat"));
  EXPECT_EQ(log.events, (std::vector<std::string>{"test:a heartbeat 1"})) << "on a topic, heartbeat is an event";
  send(frame("null", "9", "phoenix", "nope", R"({"x":"\"heartbeat\""})"));
  EXPECT_EQ(reply_status(only()), "error");
}

// The buckets keep only their state; their rates come from the shared
// configuration, or the credential's overrides, on every take.
TEST_F(SessionTest, EachSessionSpendsItsOwnBucketsAtTheConfiguredOrTheKeysRate) {
  cfg.messages_per_min = 60;  // one a second: nothing refills during the test
  cfg.message_burst = 2;
  cfg.queries_per_min = 60;
  cfg.query_burst = 1;
  auto p = api_key_principal();
  p.unlimited = false;
  start(p);
  send(frame("1", "1", "test:a", "phx_join"));
  EXPECT_EQ(reply_status(only()), "ok");
  send(frame("1", "2", "test:a", "hello"));
  EXPECT_TRUE(socket.take().empty());
  send(frame("1", "3", "test:a", "hello"));
  EXPECT_EQ(reply_reason(only()), "rate_limited");

  // A second session of the same credential: the same rate, a full bucket.
  fakes::FakeSocket socket2(2);
  channels::Session other(socket2, services, std::make_shared<const auth::Principal>(p));
  other.on_text(frame("1", "1", "test:b", "phx_join"));
  other.on_text(frame("1", "2", "test:b", "hello"));
  auto f = socket2.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_status(f[0]), "ok");
  other.on_text(frame("1", "3", "test:b", "hello"));
  f = socket2.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_reason(f[0]), "rate_limited");

  // The query bucket: one token at the configured burst, made on first use.
  protocol::Envelope env;
  std::string error;
  const std::string q = frame("1", "q1", "test:a", "query", R"({"ref":"r1"})");
  ASSERT_TRUE(protocol::decode(q, env, error)) << error;
  EXPECT_TRUE(session->take_query_token(env));
  EXPECT_TRUE(socket.take().empty());
  EXPECT_FALSE(session->take_query_token(env));
  f = socket.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_reason(f[0]), "rate_limited");
  EXPECT_EQ(reply_response(f[0]).at("ref").as_string(), "r1");
  EXPECT_TRUE(other.take_query_token(env)) << "the other session's query bucket is its own";
  EXPECT_EQ(metrics.rate_limited[0].load(), 2u);
  EXPECT_EQ(metrics.rate_limited[1].load(), 1u);

  // A key's own rates replace the configuration's; a worker has no query bucket.
  auto own = p;
  own.rates.msgs_per_min = 600;
  own.rates.burst = 3;
  own.rates.queries_per_min = 2;  // its burst is its rate
  own.worker = false;
  fakes::FakeSocket socket3(3);
  channels::Session keyed(socket3, services, std::make_shared<const auth::Principal>(own));
  keyed.on_text(frame("1", "1", "test:c", "phx_join"));
  keyed.on_text(frame("1", "2", "test:c", "hello"));
  keyed.on_text(frame("1", "3", "test:c", "hello"));
  EXPECT_EQ(socket3.take().size(), 1u) << "three messages within the key's burst";
  keyed.on_text(frame("1", "4", "test:c", "hello"));
  f = socket3.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_reason(f[0]), "rate_limited");
  EXPECT_TRUE(keyed.take_query_token(env));
  EXPECT_TRUE(keyed.take_query_token(env));
  EXPECT_FALSE(keyed.take_query_token(env));
  auto worker = p;
  worker.worker = true;
  fakes::FakeSocket socket4(4);
  channels::Session w(socket4, services, std::make_shared<const auth::Principal>(worker));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(w.take_query_token(env)) << i;
  socket3.take();
}

TEST_F(SessionTest, ThePhoenixTopicNeedsNoJoinAndTakesOnlyItsEvents) {
  start();
  send(frame("1", "1", "phoenix", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "invalid_topic");
  send(frame("null", "2", "phoenix", "dance"));
  EXPECT_EQ(reply_reason(only()), "unknown_event");
  // An API-key connection has no token to refresh.
  send(frame("null", "3", "phoenix", "refresh"));
  EXPECT_EQ(reply_reason(only()), "invalid_payload");
}

TEST_F(SessionTest, MalformedFramesArePushedPhxErrorUntilTheBudgetClosesWith1008) {
  cfg.malformed_limit = 10;
  start();
  const std::vector<std::string> bad = {
      "not json",
      "{}",
      "[]",
      R"([null,"1","test:a","e"])",           // four elements
      R"([null,"1","test:a","e",{},1])",      // six
      R"([1,"1","test:a","e",{}])",           // join_ref a number
      R"([null,"1",7,"e",{}])",               // topic a number
      R"([null,"1","test:a","e",[]])",        // payload not an object
      R"([null,"1","test:a","e",{"v":1e400}])",  // a number past a double
      std::string(200, '['),                  // nested past 64
  };
  for (const auto& text : bad) {
    send(text);
    auto f = only();
    EXPECT_TRUE(f[0].is_null() && f[1].is_null()) << text;
    EXPECT_EQ(topic_of(f), "phoenix") << text;
    EXPECT_EQ(event_of(f), "phx_error") << text;
    EXPECT_EQ(payload_of(f).at("reason").as_string(), "malformed_frame") << text;
    EXPECT_TRUE(payload_of(f).at("message").is_string()) << text;
  }
  EXPECT_TRUE(socket.closes.empty()) << "ten malformed frames are within the budget";
  session->on_malformed("binary frame");  // the eleventh in the window
  EXPECT_TRUE(socket.take().empty());
  ASSERT_EQ(socket.closes.size(), 1u);
  EXPECT_EQ(socket.closes[0].code, 1008);
  EXPECT_EQ(metrics.malformed_frames.load(), 11u);
}

TEST_F(SessionTest, OversizedEnvelopeFieldsAreRefusedWithoutBeingEchoed) {
  start();
  const std::string long_ref(65, 'r');
  send(frame("null", long_ref, "test:a", "hello"));
  auto f = only();
  EXPECT_TRUE(f[1].is_null()) << "an oversized ref is null in the reply";
  EXPECT_EQ(reply_reason(f), "invalid_payload");
  const auto& errors = reply_response(f).at("errors").as_array();
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].as_object().at("field").as_string(), "ref");
  EXPECT_EQ(errors[0].as_object().at("message").as_string(), "must be at most 64 bytes");

  const std::string long_topic = "test:" + std::string(251, 't');  // 256 bytes
  send(frame("1", "2", long_topic, "phx_join"));
  f = only();
  EXPECT_EQ(topic_of(f), "phoenix") << "an oversized topic is replaced in the reply";
  EXPECT_EQ(reply_reason(f), "invalid_topic");
  EXPECT_TRUE(log.joins.empty());
  EXPECT_EQ(metrics.malformed_frames.load(), 0u) << "not a malformed frame";
  // 64 bytes is within the bound.
  send(frame("null", std::string(64, 'r'), "test:a", "hello"));
  EXPECT_EQ(reply_reason(only()), "unmatched_topic");
}

TEST_F(SessionTest, PhxLeaveRepliesOkAndTheChannelHearsNothingMore) {
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  socket.take();
  send(frame("1", "2", "test:a", "phx_leave"));
  auto f = only();
  EXPECT_EQ(reply_status(f), "ok");
  EXPECT_EQ(f[1].as_string(), "2");
  EXPECT_EQ(log.leaves, std::vector<std::string>{"test:a"});
  EXPECT_TRUE(session->topics().empty());
  send(frame("1", "3", "test:a", "hello"));
  EXPECT_EQ(reply_reason(only()), "unmatched_topic");
  EXPECT_TRUE(log.events.empty());
  session.reset();
  EXPECT_EQ(log.leaves.size(), 1u) << "a left channel is not left again at close";
}

TEST_F(SessionTest, ARefusedJoinRecordsNothingAndAThrowingJoinIsInternal) {
  start();
  send(frame("1", "1", "deny:x", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "forbidden");
  send(frame("2", "2", "boom:x", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "internal");
  EXPECT_TRUE(session->topics().empty());
  EXPECT_EQ(metrics.channel_crashes.load(), 1u);
}

TEST_F(SessionTest, AChannelThatThrowsIsClosedWithInternalThenPhxError) {
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  send(frame("1", "1", "test:b", "phx_join"));
  socket.take();
  send(frame("1", "7", "test:a", "throw"));
  const auto f = socket.take();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(event_of(f[0]), "phx_reply");
  EXPECT_EQ(f[0][1].as_string(), "7");
  EXPECT_EQ(reply_reason(f[0]), "internal");
  // Phoenix's channel-died push: ref = join_ref, so the client rejoins.
  EXPECT_EQ(event_of(f[1]), "phx_error");
  EXPECT_EQ(topic_of(f[1]), "test:a");
  EXPECT_EQ(f[1][0].as_string(), "1");
  EXPECT_EQ(f[1][1].as_string(), "1");
  EXPECT_EQ(log.leaves, std::vector<std::string>{"test:a"});
  EXPECT_EQ(session->topics(), std::vector<std::string>{"test:b"}) << "the other topic goes on";
  EXPECT_EQ(metrics.channel_crashes.load(), 1u);
  EXPECT_TRUE(socket.closes.empty());
}

TEST_F(SessionTest, TheTopicLimitRefusesTheJoinPastIt) {
  cfg.max_topics = 2;
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  send(frame("2", "2", "test:b", "phx_join"));
  socket.take();
  send(frame("3", "3", "test:c", "phx_join"));
  EXPECT_EQ(reply_reason(only()), "too_many_topics");
  // Rejoining a joined topic is not a new one.
  send(frame("4", "4", "test:a", "phx_join"));
  const auto f = socket.take();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(event_of(f[0]), "phx_close");
  EXPECT_EQ(reply_status(f[1]), "ok");
}

TEST_F(SessionTest, CloseLeavesEveryChannelOnceAndLaterFramesAreIgnored) {
  start();
  send(frame("1", "1", "test:a", "phx_join"));
  send(frame("2", "2", "test:b", "phx_join"));
  socket.take();
  session->shutdown();
  EXPECT_EQ(log.shutdowns, (std::vector<std::string>{"test:a", "test:b"}));
  session->close_channels();
  session->close_channels();
  EXPECT_EQ(log.leaves, (std::vector<std::string>{"test:a", "test:b"}));
  send(frame("1", "3", "test:a", "hello"));
  send(frame("null", "4", "phoenix", "heartbeat"));
  EXPECT_TRUE(socket.take().empty());
  session.reset();
  EXPECT_EQ(log.leaves.size(), 2u);
}

TEST_F(SessionTest, AnAdminUnsubscribeLeavesAndSendsPhxClose) {
  start();
  send(frame("9", "1", "test:a", "phx_join"));
  socket.take();
  EXPECT_FALSE(session->unsubscribe("test:zzz"));
  EXPECT_TRUE(session->unsubscribe("test:a"));
  const auto f = only();
  EXPECT_EQ(event_of(f), "phx_close");
  EXPECT_EQ(f[0].as_string(), "9");
  EXPECT_EQ(f[1].as_string(), "9");
  EXPECT_EQ(log.leaves, std::vector<std::string>{"test:a"});
  EXPECT_TRUE(session->topics().empty());
}

TEST_F(SessionTest, ATokenNearItsExpiryIsWarnedAtOnceAndClosedWith4001AtExp) {
  auth::Principal p = api_key_principal();
  p.via_token = true;
  p.token_exp = unix_s() + 30;  // under the 60 s warning
  start(p);
  auto f = only();
  EXPECT_EQ(topic_of(f), "phoenix");
  EXPECT_EQ(event_of(f), "token_expiring");
  EXPECT_GT(payload_of(f).at("expires_in_ms").to_number<std::int64_t>(), 0);
  session->on_tick(unix_ms());
  EXPECT_TRUE(socket.take().empty()) << "warned once";
  EXPECT_TRUE(socket.closes.empty());
  session->on_tick((p.token_exp + 1) * 1000);
  ASSERT_EQ(socket.closes.size(), 1u);
  EXPECT_EQ(socket.closes[0].code, protocol::close_code::token_expired);
}

TEST_F(SessionTest, SelfRefreshOfATokenGivesAFreshTokenForTheSameSub) {
  auth::Principal p = api_key_principal();
  p.via_token = true;
  p.token_exp = unix_s() + 3600;
  start(p);
  send(frame("null", "1", "phoenix", "refresh"));
  auto f = only();
  ASSERT_EQ(reply_status(f), "ok");
  const auto& r = reply_response(f);
  const std::string token(r.at("token").as_string());
  auto v = auth::verify_token(token, secret, nullptr, auth::IdpOptions{}, unix_s());
  EXPECT_EQ(v.status, auth::JwtStatus::ok);
  EXPECT_EQ(v.claims.sub, "alice");
  EXPECT_EQ(r.at("expires_at").to_number<std::int64_t>(), v.claims.exp);
  cfg.self_refresh = false;
  send(frame("null", "2", "phoenix", "refresh"));
  EXPECT_EQ(reply_reason(only()), "refresh_not_allowed");
  // A token for another sub is refused.
  auth::TokenClaims c;
  c.sub = "mallory";
  c.exp = unix_s() + 100;
  send(frame("null", "3", "phoenix", "refresh", R"({"token":")" + auth::sign_jwt(c, secret) + "\"}"));
  EXPECT_EQ(reply_reason(only()), "forbidden");
}
