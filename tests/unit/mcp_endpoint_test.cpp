// The /mcp endpoint's protocol side (channels/mcp_endpoint) with a tool of
// the test's own behind the asynchronous seam, so that what a provider
// reports (progress, a CallToolResult of a bridged MCP server, an
// unavailable provider) and what reaches it (cancellation through its
// CancelToken) can be driven exactly, and so that the tool list can change
// while a client listens (notifications/tools/list_changed), which no
// built-in provider does. The HTTP side is tests/integration/test_mcp_endpoint.py.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <unistd.h>

#include "auth/key_store.hpp"
#include "channels/mcp_endpoint.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "cortex/cortex.hpp"
#include "cortex/runs.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/local_broker.hpp"

namespace json = boost::json;
using namespace synapse;

namespace {

struct FakeExchange final : channels::McpExchange {
  std::optional<channels::McpReply> replied;
  bool opened = false;
  bool ended = false;
  std::vector<json::value> events;
  void reply(channels::McpReply r) override { replied = std::move(r); }
  void open_stream(channels::McpHeaders) override { opened = true; }
  void send_event(std::string j) override { events.push_back(json::parse(j)); }
  void end_stream() override { ended = true; }
  std::size_t queued_bytes() const override { return 0; }
  json::value body() const { return json::parse(replied->body); }
};

// Keeps each call for the test to complete; available() as the test says.
class ManualTool final : public cortex::Tool {
 public:
  explicit ManualTool(std::string name) {
    spec_.name = std::move(name);
    spec_.description = "driven by the test";
    spec_.input_schema = json::parse(R"({"type":"object","properties":{"n":{"type":"integer"}}})").as_object();
  }
  const cortex::ToolSpec& spec() const override { return spec_; }
  bool available() const override { return up.load(); }
  cortex::StartResult start(cortex::ToolCall call) const override {
    calls.push_back(std::move(call));
    return {};
  }
  std::atomic<bool> up{true};
  mutable std::vector<cortex::ToolCall> calls;

 private:
  cortex::ToolSpec spec_;
};

class McpEndpointTest : public ::testing::Test {
 protected:
  McpEndpointTest() {
    auth::NewKey k;
    k.name = "mcp-unit";
    key = keys.create(k).second;
    cortex.tools().claim("test", "test");
    tool = std::make_shared<ManualTool>("test.manual");
    cortex.tools().add("test", tool);
    services.runs = &runs;
    mcp = std::make_unique<channels::McpEndpoint>(services);
  }
  ~McpEndpointTest() override {
    mcp.reset();
    cortex.stop();
    std::filesystem::remove_all(dir);
  }

  // Runs what the endpoint posted to "its thread" (this one).
  void drain() {
    for (;;) {
      Task t;
      {
        std::lock_guard lock(mu);
        if (tasks.empty()) return;
        t = std::move(tasks.front());
        tasks.pop_front();
      }
      t();
    }
  }

  std::shared_ptr<FakeExchange> send(const std::string& method, const std::string& body,
                                     std::optional<std::string> session = std::nullopt) {
    channels::McpHttpRequest r;
    r.method = method;
    r.authorization = "Bearer " + key;
    r.accept = "application/json, text/event-stream";
    r.content_type = "application/json";
    r.session_id = std::move(session);
    r.body = body;
    auto ex = std::make_shared<FakeExchange>();
    mcp->handle(r, ex, post);
    return ex;
  }

  std::string initialize() {
    auto ex = send("POST", R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}})");
    EXPECT_EQ(ex->replied->status, 200);
    for (const auto& [k, v] : ex->replied->headers) {
      if (k == "Mcp-Session-Id") return v;
    }
    ADD_FAILURE() << "no session id";
    return {};
  }

  std::shared_ptr<FakeExchange> call(const std::string& sid, int id) {
    return send("POST",
                R"({"jsonrpc":"2.0","id":)" + std::to_string(id) +
                    R"(,"method":"tools/call","params":{"name":"test.manual","arguments":{"n":1},"_meta":{"progressToken":"tok"}}})",
                sid);
  }

  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("synapse-mcp-unit-" + std::to_string(::getpid()) + "-" +
                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  bool dir_made = std::filesystem::create_directories(dir);  // before the stores below open their files
  config::Config cfg;
  metrics::Metrics metrics;
  auth::KeyStore keys{(dir / "keys.db").string()};
  std::string secret = "mcp-unit-test-secret-mcp-unit-test-secret";
  pubsub::LocalBroker broker{pubsub::BrokerOptions{}, {}, metrics};
  cortex::Cortex cortex{cortex::CortexOptions{}, (dir / "memory.db").string()};
  cortex::RunRegistry runs{cortex::RunOptions{}};
  channels::Services services{cfg, metrics, keys, secret, broker, cortex};
  std::unique_ptr<channels::McpEndpoint> mcp;
  std::shared_ptr<ManualTool> tool;
  std::string key;
  std::mutex mu;
  std::deque<Task> tasks;
  Poster post = [this](Task t) {
    std::lock_guard lock(mu);
    tasks.push_back(std::move(t));
  };
};

TEST_F(McpEndpointTest, ProgressThenABridgedResultPassesThroughAsGiven) {
  const std::string sid = initialize();
  auto ex = call(sid, 5);
  ASSERT_FALSE(ex->replied);
  ASSERT_TRUE(ex->opened);
  ASSERT_EQ(tool->calls.size(), 1u);
  auto& c = tool->calls[0];
  EXPECT_EQ(c.args, json::parse(R"({"n":1})"));
  c.callbacks.progress(1, 4, "a quarter");
  c.callbacks.progress(2.5, -1, "");
  drain();
  ASSERT_EQ(ex->events.size(), 2u);
  EXPECT_EQ(ex->events[0], json::parse(R"({"jsonrpc":"2.0","method":"notifications/progress",
      "params":{"progressToken":"tok","progress":1,"total":4,"message":"a quarter"}})"));
  EXPECT_EQ(ex->events[1].at("params"), json::parse(R"({"progressToken":"tok","progress":2.5})"));
  // An MCP server's CallToolResult (content items, isError) is passed on as it came.
  c.callbacks.done(cortex::ToolOutcome{cortex::ToolOutcome::Kind::result,
                                       json::parse(R"({"content":[{"type":"text","text":"hi"}],"isError":false})"),
                                       {}});
  drain();
  ASSERT_EQ(ex->events.size(), 3u);
  EXPECT_EQ(ex->events[2], json::parse(R"({"jsonrpc":"2.0","id":5,
      "result":{"content":[{"type":"text","text":"hi"}],"isError":false}})"));
  EXPECT_TRUE(ex->ended);
}

TEST_F(McpEndpointTest, ABareListOfContentItemsIsTheContentAnyOtherValueIsTextAndStructured) {
  const std::string sid = initialize();
  auto a = call(sid, 1);
  auto b = call(sid, 2);
  auto c = call(sid, 3);
  ASSERT_EQ(tool->calls.size(), 3u);
  using K = cortex::ToolOutcome::Kind;
  tool->calls[0].callbacks.done({K::result, json::parse(R"([{"type":"text","text":"one"},{"type":"image","data":"x"}])"), {}});
  tool->calls[1].callbacks.done({K::result, json::parse(R"({"n":3})"), {}});
  tool->calls[2].callbacks.done({K::result, json::parse(R"([1,2])"), {}});
  drain();
  EXPECT_EQ(a->events.at(0).at("result"),
            json::parse(R"({"content":[{"type":"text","text":"one"},{"type":"image","data":"x"}]})"));
  EXPECT_EQ(b->events.at(0).at("result"),
            json::parse(R"({"content":[{"type":"text","text":"{\"n\":3}"}],"structuredContent":{"n":3}})"));
  EXPECT_EQ(c->events.at(0).at("result"), json::parse(R"({"content":[{"type":"text","text":"[1,2]"}]})"));
}

TEST_F(McpEndpointTest, CancellationReachesTheProviderAndNoResponseIsSent) {
  const std::string sid = initialize();
  auto ex = call(sid, 6);
  ASSERT_EQ(tool->calls.size(), 1u);
  bool hook_ran = false;
  tool->calls[0].cancel->on_cancel([&] { hook_ran = true; });
  auto note = send("POST", R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6,"reason":"stop"}})",
                   sid);
  EXPECT_EQ(note->replied->status, 202);
  EXPECT_TRUE(tool->calls[0].cancel->cancelled());
  EXPECT_TRUE(hook_ran);
  // A late answer of the provider is ignored: the run already ended.
  tool->calls[0].callbacks.done(cortex::ToolOutcome{cortex::ToolOutcome::Kind::result, json::object{}, {}});
  drain();
  EXPECT_TRUE(ex->events.empty());
  EXPECT_TRUE(ex->ended);
  auto list = runs.list_all();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].status, "interrupted");
}

TEST_F(McpEndpointTest, UnavailableIsAToolErrorResultInternalIsAJsonRpcError) {
  const std::string sid = initialize();
  auto a = call(sid, 1);
  auto b = call(sid, 2);
  ASSERT_EQ(tool->calls.size(), 2u);
  tool->calls[0].callbacks.done(cortex::ToolOutcome{cortex::ToolOutcome::Kind::unavailable, {}, "child restarting"});
  tool->calls[1].callbacks.done(cortex::ToolOutcome{cortex::ToolOutcome::Kind::internal, {}, "bug"});
  drain();
  ASSERT_EQ(a->events.size(), 1u);
  EXPECT_EQ(a->events[0].at("result").at("isError"), true);
  EXPECT_EQ(a->events[0].at("result").at("content").at(0).at("text"), "tool_unavailable: child restarting");
  ASSERT_EQ(b->events.size(), 1u);
  EXPECT_EQ(b->events[0].at("error").at("code"), -32603);
}

TEST_F(McpEndpointTest, AListeningClientHearsWhenTheToolListChanges) {
  const std::string sid = initialize();
  auto get = send("GET", "", sid);
  ASSERT_TRUE(get->opened);
  ASSERT_TRUE(get->on_tick);
  get->on_tick();
  EXPECT_TRUE(get->events.empty());  // nothing changed since initialize

  // A provider adds a tool (an MCP server's refreshed list).
  cortex.tools().add("test", std::make_shared<ManualTool>("test.other"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // the signature is recomputed once a second
  get->on_tick();
  ASSERT_EQ(get->events.size(), 1u);
  EXPECT_EQ(get->events[0], json::parse(R"({"jsonrpc":"2.0","method":"notifications/tools/list_changed"})"));
  get->on_tick();
  EXPECT_EQ(get->events.size(), 1u);  // once per change

  // A provider going down takes its tools out of the list: a change too.
  tool->up = false;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  get->on_tick();
  EXPECT_EQ(get->events.size(), 2u);
  auto list = send("POST", R"({"jsonrpc":"2.0","id":3,"method":"tools/list"})", sid);
  const json::value answer = list->body();
  const auto& tools = answer.at("result").at("tools").as_array();
  EXPECT_EQ(tools.size(), 1u);  // test.other only (no built-in tools registered here)
  for (const auto& t : tools) EXPECT_NE(t.at("name"), "test.manual");

  // DELETE ends the stream (on its thread).
  auto del = send("DELETE", "", sid);
  EXPECT_EQ(del->replied->status, 204);
  drain();
  EXPECT_TRUE(get->ended);
}

}  // namespace
