// The `cortex:<agent>` channel (channels/cortex_channel.*) through a real
// Session over a FakeSocket, with the real cortex (memory in SQLite in a
// temporary directory, one worker thread) and the real run registry. Events
// that workers emit reach the channel through the socket's poster, which
// runs on this thread when the test says so. What it proves: a query streams
// its thoughts and then exactly one terminal event, numbered in one
// increasing sequence; an interrupt ends a run with `interrupted` and nothing
// of the run follows; the documented error replies (protocol.md section 4:
// invalid_payload, unknown_tool, invalid_args, duplicate_ref,
// too_many_running, rate_limited; section 9: overloaded, draining) come
// before any run exists.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "auth/key_store.hpp"
#include "channels/channel_registry.hpp"
#include "channels/cortex_channel.hpp"
#include "channels/services.hpp"
#include "channels/session.hpp"
#include "config/config.hpp"
#include "cortex/cortex.hpp"
#include "cortex/runs.hpp"
#include "fake_socket.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/local_broker.hpp"

namespace json = boost::json;
using namespace synapse;
using namespace std::chrono_literals;
using fakes::event_of;
using fakes::payload_of;
using fakes::reply_reason;
using fakes::reply_response;
using fakes::reply_status;

namespace {

// A built-in tool that holds its worker until the test releases it or the
// run is cancelled: how a test makes a run last, or the queue fill up.
class HoldTool final : public cortex::BlockingTool {
 public:
  const cortex::ToolSpec& spec() const override { return spec_; }
  json::value run(const json::object&, cortex::ToolContext& ctx) const override {
    ++started;
    while (!released.load()) {
      if (ctx.cancel.wait_for(2ms)) {
        ++cancelled;
        throw cortex::Cancelled{};
      }
    }
    return json::object{{"held", true}};
  }
  mutable std::atomic<int> started{0};
  mutable std::atomic<int> cancelled{0};
  std::atomic<bool> released{false};

 private:
  cortex::ToolSpec spec_{"test.hold", "holds its worker", json::parse(R"({"type":"object","properties":{}})").as_object()};
};

cortex::CortexOptions one_worker(std::size_t queue_limit) {
  cortex::CortexOptions o;
  o.workers = 1;
  o.queue_limit = queue_limit;
  o.tenant_queue_limit = 0;
  return o;
}

std::string frame(std::string_view ref, std::string_view event, std::string_view payload = "{}",
                  std::string_view topic = "cortex:alice") {
  return R"(["1",")" + std::string(ref) + R"(",")" + std::string(topic) + R"(",")" + std::string(event) + R"(",)" +
         std::string(payload) + "]";
}

bool terminal(std::string_view event) { return event == "result" || event == "error" || event == "interrupted"; }

class CortexChannelTest : public ::testing::Test {
 protected:
  CortexChannelTest() {
    auto t = std::make_unique<HoldTool>();
    hold = t.get();
    cortex->add_tool(std::move(t));
    cortex::register_builtin_tools(*cortex);
    registry.add({"cortex:*", "cortex", channels::join_cortex, {}});
    services.channels = &registry;
    services.runs = &runs;
    services.draining = &draining;
    cfg.queries_per_min = 1000;
    cfg.query_burst = 1000;
  }
  ~CortexChannelTest() override {
    hold->released = true;
    session.reset();
    cortex->stop();  // before the run registry its jobs finish into
  }

  static auth::Principal alice() {
    auth::Principal p;
    p.agent_id = "alice";
    p.tenant = "t1";
    p.key_id = "k1";
    return p;
  }
  // Starts the session and joins cortex:alice.
  void join(auth::Principal p = alice()) {
    session =
        std::make_unique<channels::Session>(socket, services, std::make_shared<const auth::Principal>(std::move(p)));
    session->on_text(frame("j", "phx_join"));
    auto f = socket.take();
    ASSERT_EQ(f.size(), 1u);
    ASSERT_EQ(reply_status(f[0]), "ok") << json::serialize(f[0]);
  }
  // Sends a client event and returns its reply (the first frame it caused).
  json::array request(std::string_view ref, std::string_view event, std::string_view payload = "{}") {
    session->on_text(frame(ref, event, payload));
    auto f = socket.take();
    EXPECT_FALSE(f.empty()) << event << " got no reply";
    if (f.empty()) return {};
    EXPECT_EQ(event_of(f[0]), "phx_reply");
    EXPECT_EQ(f[0][1].as_string(), ref);
    for (std::size_t i = 1; i < f.size(); ++i) pushes.push_back(f[i]);
    return f[0];
  }
  // Runs posted work until `ref`'s run sent its terminal event; every push
  // for it, in order.
  std::vector<json::array> until_terminal(std::string_view ref, std::chrono::milliseconds timeout = 10s) {
    auto done = [&] {
      for (auto& f : socket.take()) pushes.push_back(std::move(f));
      for (const auto& f : pushes) {
        if (f[1].is_null() && payload_of(f).if_contains("ref") && payload_of(f).at("ref").as_string() == ref &&
            terminal(event_of(f))) {
          return true;
        }
      }
      return false;
    };
    socket.queue.run_until(done, timeout);
    return of(ref);
  }
  // The pushes of `ref`'s run received so far.
  std::vector<json::array> of(std::string_view ref) {
    for (auto& f : socket.take()) pushes.push_back(std::move(f));
    std::vector<json::array> out;
    for (const auto& f : pushes) {
      if (f[1].is_null() && payload_of(f).if_contains("ref") && payload_of(f).at("ref").as_string() == ref) {
        out.push_back(f);
      }
    }
    return out;
  }
  // Lets posted work and workers run for a moment.
  void settle(std::chrono::milliseconds d = 50ms) {
    socket.queue.run_until([] { return false; }, d);
  }
  // The run in the registry for `id`, if any.
  bool run_exists(const json::array& reply) {
    const auto* id = reply_response(reply).if_contains("run_id");
    return id && runs.find(id->as_string());
  }

  fakes::TempDir dir{"cortex-channel-unit"};
  config::Config cfg;
  metrics::Metrics metrics;
  auth::KeyStore keys{dir.file("keys.db")};
  std::string secret = "cortex-channel-unit-secret-cortex-channel";
  fakes::TaskQueue io;
  pubsub::LocalBroker broker{pubsub::BrokerOptions{}, {io.poster()}, metrics};
  cortex::RunRegistry runs{cortex::RunOptions{}};
  std::unique_ptr<cortex::Cortex> cortex = std::make_unique<cortex::Cortex>(one_worker(8), dir.file("memory.db"));
  HoldTool* hold = nullptr;
  std::atomic<bool> draining{false};
  channels::ChannelRegistry registry;
  channels::Services services{cfg, metrics, keys, secret, broker, *cortex};
  fakes::FakeSocket socket;
  std::unique_ptr<channels::Session> session;
  std::vector<json::array> pushes;
};

}  // namespace

TEST_F(CortexChannelTest, TheJoinIsTheOwnAgentsOrAnAdminsAndNeverAWorkers) {
  session = std::make_unique<channels::Session>(socket, services, std::make_shared<const auth::Principal>(alice()));
  session->on_text(frame("j1", "phx_join", "{}", "cortex:bob"));
  auto f = socket.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_reason(f[0]), "forbidden");
  session->on_text(frame("j2", "phx_join"));
  f = socket.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(reply_response(f[0]).at("agent_id").as_string(), "alice");
  EXPECT_TRUE(reply_response(f[0]).at("session").is_string());

  fakes::FakeSocket admin_socket(2);
  auto admin = alice();
  admin.admin = true;
  channels::Session as_admin(admin_socket, services, std::make_shared<const auth::Principal>(admin));
  as_admin.on_text(frame("j", "phx_join", "{}", "cortex:bob"));
  EXPECT_EQ(reply_status(admin_socket.take().at(0)), "ok");

  fakes::FakeSocket worker_socket(3);
  auto worker = alice();
  worker.worker = true;
  channels::Session as_worker(worker_socket, services, std::make_shared<const auth::Principal>(worker));
  as_worker.on_text(frame("j", "phx_join"));
  EXPECT_EQ(reply_reason(worker_socket.take().at(0)), "forbidden");
}

TEST_F(CortexChannelTest, AQueryStreamsThoughtsThenExactlyOneResultInOneIncreasingSequence) {
  join();
  const auto reply = request("q1", "query", R"({"q":"what do I know about alpha","ref":"mine"})");
  ASSERT_EQ(reply_status(reply), "ok");
  EXPECT_EQ(reply_response(reply).at("ref").as_string(), "mine");
  EXPECT_EQ(reply_response(reply).at("status").as_string(), "processing");
  const std::string run_id(reply_response(reply).at("run_id").as_string());
  auto events = until_terminal("mine");
  ASSERT_GE(events.size(), 2u);
  settle();  // anything after the terminal event would arrive now
  events = of("mine");
  std::uint64_t seq = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const auto& p = payload_of(events[i]);
    EXPECT_EQ(events[i][0].as_string(), "1") << "cortex pushes carry the member's join_ref";
    EXPECT_EQ(p.at("run_id").as_string(), run_id);
    const auto s = p.at("seq").to_number<std::uint64_t>();
    EXPECT_EQ(s, seq + 1) << "seq is 1, 2, 3, ... without gap";
    seq = s;
    if (i + 1 < events.size()) {
      EXPECT_EQ(event_of(events[i]), "thought");
      EXPECT_TRUE(p.at("thought").as_object().at("type").is_string());
      EXPECT_TRUE(p.at("ts").is_int64());
    }
  }
  const auto& last = events.back();
  ASSERT_EQ(event_of(last), "result") << "exactly one terminal event, last";
  EXPECT_EQ(payload_of(last).at("status").as_string(), "success");
  EXPECT_FALSE(payload_of(last).at("data").as_object().at("partial").as_bool());
  EXPECT_EQ(events.size(), 5u) << "processing, routing, memory_recall, ranking, result";
  EXPECT_EQ(runs.find(run_id)->info().status, "result");
}

TEST_F(CortexChannelTest, AToolRunsToItsResultAndAServerRefIsGeneratedWhenNoneIsGiven) {
  join();
  const auto reply = request("t1", "tool", R"({"tool":"memory.store","args":{"content":"alpha beta"}})");
  ASSERT_EQ(reply_status(reply), "ok");
  EXPECT_EQ(reply_response(reply).at("status").as_string(), "running");
  const std::string ref(reply_response(reply).at("ref").as_string());
  EXPECT_FALSE(ref.empty());
  const auto events = until_terminal(ref);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(event_of(events[0]), "result");
  EXPECT_TRUE(payload_of(events[0]).at("data").as_object().at("id").is_int64());
}

TEST_F(CortexChannelTest, AnInterruptedQueryEndsInterruptedAndNothingOfItFollows) {
  join();
  // The only worker is busy: the query waits in the queue.
  ASSERT_EQ(reply_status(request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})")), "ok");
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->started.load() == 1; }));
  const auto q = request("q", "query", R"({"q":"alpha","ref":"q"})");
  ASSERT_EQ(reply_status(q), "ok");
  const auto r = request("i", "interrupt", R"({"ref":"q","reason":"changed my mind"})");
  ASSERT_EQ(reply_status(r), "ok");
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "q");
  EXPECT_EQ(reply_response(r).at("run_id"), reply_response(q).at("run_id"));
  auto events = of("q");
  ASSERT_EQ(events.size(), 1u) << "the terminal event follows the interrupt's reply at once";
  EXPECT_EQ(event_of(events[0]), "interrupted");
  EXPECT_EQ(payload_of(events[0]).at("reason").as_string(), "changed my mind");
  // The worker comes free and reaches the query's job: it sees the cancel.
  hold->released = true;
  until_terminal("hold");
  settle(100ms);
  events = of("q");
  ASSERT_EQ(events.size(), 1u) << "no thought and no result after interrupted";
  // Interrupting it again: nothing runs under that ref any more.
  const auto again = request("i2", "interrupt", R"({"ref":"q"})");
  EXPECT_EQ(reply_reason(again), "not_found");
  EXPECT_EQ(reply_response(again).at("ref").as_string(), "q");
}

TEST_F(CortexChannelTest, AnInterruptReachesARunningToolWhoseResultNeverComes) {
  join();
  ASSERT_EQ(reply_status(request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})")), "ok");
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->started.load() == 1; }));
  ASSERT_EQ(reply_status(request("i", "interrupt", R"({"ref":"hold"})")), "ok");
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->cancelled.load() == 1; }))
      << "the cancel reached the tool on its worker";
  settle();
  const auto events = of("hold");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(event_of(events[0]), "interrupted");
  EXPECT_EQ(payload_of(events[0]).at("reason").as_string(), "client");
}

TEST_F(CortexChannelTest, ARunPastItsTimeoutEndsWithOneTimeoutError) {
  join();
  ASSERT_EQ(reply_status(request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold","timeout_ms":60})")),
            "ok");
  auto events = until_terminal("hold");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(event_of(events[0]), "error");
  EXPECT_EQ(payload_of(events[0]).at("reason").as_string(), "timeout");
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->cancelled.load() == 1; })) << "the timeout cancels the tool";
  settle();
  EXPECT_EQ(of("hold").size(), 1u);
}

TEST_F(CortexChannelTest, ToolPayloadErrorsAreRepliedAndNoRunExists) {
  join();
  auto r = request("a", "tool", R"({"tool":"memory.store","args":{"content":5},"ref":"x"})");
  EXPECT_EQ(reply_reason(r), "invalid_args");
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "x");
  const auto& errors = reply_response(r).at("errors").as_array();
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors[0].as_object().at("field").as_string(), "args.content");
  r = request("b", "tool", R"({"tool":"memory.store","args":{}})");
  EXPECT_EQ(reply_reason(r), "invalid_args") << "a required argument missing";
  r = request("c", "tool", R"({"tool":"no.such","args":{},"ref":"y"})");
  EXPECT_EQ(reply_reason(r), "unknown_tool");
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "y");
  r = request("d", "tool", R"({"args":{}})");
  EXPECT_EQ(reply_reason(r), "invalid_payload");
  EXPECT_EQ(reply_response(r).at("errors").as_array()[0].as_object().at("field").as_string(), "tool");
  r = request("e", "tool", R"({"tool":"memory.stats","args":[]})");
  EXPECT_EQ(reply_reason(r), "invalid_payload");
  r = request("f", "tool", R"({"tool":"memory.stats","args":{},"timeout_ms":0})");
  EXPECT_EQ(reply_reason(r), "invalid_payload");
  EXPECT_TRUE(runs.list("t1", "alice").empty()) << "nothing checked before a run starts leaves a run behind";
  EXPECT_TRUE(pushes.empty());
}

TEST_F(CortexChannelTest, QueryPayloadErrorsNameTheirField) {
  join();
  struct Case {
    const char* payload;
    const char* field;
  };
  for (const Case& c : {Case{R"({})", "q"}, Case{R"({"q":5})", "q"}, Case{R"({"q":""})", "q"},
                        Case{R"({"q":"x","limit":0})", "limit"}, Case{R"({"q":"x","limit":101})", "limit"},
                        Case{R"({"q":"x","timeout_ms":1.5})", "timeout_ms"}, Case{R"({"q":"x","ref":""})", "ref"}}) {
    const auto r = request("r", "query", c.payload);
    EXPECT_EQ(reply_reason(r), "invalid_payload") << c.payload;
    EXPECT_EQ(reply_response(r).at("errors").as_array()[0].as_object().at("field").as_string(), c.field) << c.payload;
  }
  cfg.max_query_chars = 4;
  EXPECT_EQ(reply_reason(request("r", "query", R"({"q":"12345"})")), "invalid_payload");
  EXPECT_EQ(reply_status(request("r", "query", R"({"q":"1234"})")), "ok");
  EXPECT_EQ(reply_reason(request("r", "nonsense")), "unknown_event");
  EXPECT_TRUE(reply_response(request("r", "ping")).at("pong").is_int64());
}

TEST_F(CortexChannelTest, ADuplicateRefAndTheRunningLimitAreRefusedBeforeAnyRun) {
  cfg.max_running = 1;
  join();
  ASSERT_EQ(reply_status(request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})")), "ok");
  auto r = request("d", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})");
  EXPECT_EQ(reply_reason(r), "duplicate_ref");
  r = request("m", "query", R"({"q":"x","ref":"other"})");
  EXPECT_EQ(reply_reason(r), "too_many_running");
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "other");
  EXPECT_EQ(runs.list("t1", "alice").size(), 1u);
  hold->released = true;
  until_terminal("hold");
  EXPECT_EQ(reply_status(request("m2", "query", R"({"q":"x","ref":"other"})")), "ok") << "room again once it ended";
}

TEST_F(CortexChannelTest, TheQueryRateLimitAnswersRateLimitedWithRetryAfterAndTheRef) {
  cfg.queries_per_min = 1;
  cfg.query_burst = 1;
  join();
  ASSERT_EQ(reply_status(request("a", "query", R"({"q":"x","ref":"one"})")), "ok");
  const auto r = request("b", "query", R"({"q":"x","ref":"two"})");
  EXPECT_EQ(reply_reason(r), "rate_limited");
  EXPECT_GT(reply_response(r).at("retry_after_ms").to_number<std::int64_t>(), 0);
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "two");
  EXPECT_EQ(reply_reason(request("c", "tool", R"({"tool":"memory.stats","args":{}})")), "rate_limited")
      << "tools spend the same bucket";
  EXPECT_EQ(metrics.rate_limited[1].load(), 2u);
  EXPECT_EQ(runs.list("t1", "alice").size(), 1u);
}

TEST_F(CortexChannelTest, AFullQueueIsOverloadedAndADrainingServerStartsNothing) {
  // A cortex whose queue holds one waiting job.
  session.reset();
  cortex->stop();
  cortex = std::make_unique<cortex::Cortex>(one_worker(1), dir.file("memory2.db"));
  auto t = std::make_unique<HoldTool>();
  hold = t.get();
  cortex->add_tool(std::move(t));
  channels::Services s{cfg, metrics, keys, secret, broker, *cortex};
  s.channels = &registry;
  s.runs = &runs;
  s.draining = &draining;
  session = std::make_unique<channels::Session>(socket, s, std::make_shared<const auth::Principal>(alice()));
  session->on_text(frame("j", "phx_join"));
  socket.take();
  ASSERT_EQ(reply_status(request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})")), "ok");
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->started.load() == 1; }));
  ASSERT_EQ(reply_status(request("w", "query", R"({"q":"x","ref":"waits"})")), "ok");
  const auto r = request("o", "query", R"({"q":"x","ref":"over"})");
  EXPECT_EQ(reply_reason(r), "overloaded");
  EXPECT_EQ(reply_response(r).at("ref").as_string(), "over");
  EXPECT_EQ(reply_response(r).at("retry_after_ms").to_number<std::int64_t>(), 1000);
  EXPECT_TRUE(of("over").empty()) << "for the client the refused run never existed";
  for (const auto& i : runs.list("t1", "alice")) EXPECT_NE(i.ref, "over");

  draining = true;
  const auto d = request("d", "query", R"({"q":"x","ref":"late"})");
  EXPECT_EQ(reply_reason(d), "draining");
  EXPECT_EQ(reply_response(d).at("ref").as_string(), "late");
  hold->released = true;
  until_terminal("waits");
  session.reset();
  cortex->stop();
}

TEST_F(CortexChannelTest, LeavingTheTopicDoesNotEndItsRunsAndAttachReplaysThem) {
  join();
  const auto reply = request("h", "tool", R"({"tool":"test.hold","args":{},"ref":"hold"})");
  const std::string run_id(reply_response(reply).at("run_id").as_string());
  ASSERT_TRUE(socket.queue.run_until([&] { return hold->started.load() == 1; }));
  session->on_text(frame("l", "phx_leave"));
  socket.take();
  EXPECT_TRUE(runs.find(run_id)->running()) << "runs outlive their member (detach grace)";
  hold->released = true;
  ASSERT_TRUE(socket.queue.run_until([&] { return !runs.find(run_id)->running(); }));
  settle();
  EXPECT_TRUE(of("hold").empty()) << "a member that left is sent nothing";
  session->on_text(frame("j2", "phx_join"));
  socket.take();
  const auto a = request("a", "attach", R"({"run_id":")" + run_id + R"(","after_seq":0})");
  ASSERT_EQ(reply_status(a), "ok");
  EXPECT_EQ(reply_response(a).at("status").as_string(), "result");
  const auto events = of("hold");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(event_of(events[0]), "result");
  EXPECT_EQ(reply_reason(request("b", "attach", R"({"run_id":"run_nope"})")), "unknown_run");
}
