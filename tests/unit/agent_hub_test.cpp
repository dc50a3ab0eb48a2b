// The agent hub (cortex/agent_hub.*): least-loaded dispatch within capacity,
// ownership of runs (unknown_run, dropped), cancel pushes, and what happens
// to a departing worker's runs (agent_unavailable, or one re-dispatch).
#include <gtest/gtest.h>

#include <mutex>

#include "cortex/agent_hub.hpp"
#include "cortex/runs.hpp"
#include "cortex/tool_registry.hpp"

using namespace synapse::cortex;
namespace json = boost::json;

namespace {

struct Pushes {
  std::mutex mu;
  std::vector<std::pair<std::string, json::object>> got;
  WorkerPush handle() {
    return [this](std::string event, json::object payload) {
      std::lock_guard lock(mu);
      got.emplace_back(std::move(event), std::move(payload));
    };
  }
  std::size_t count(const std::string& event) {
    std::lock_guard lock(mu);
    std::size_t n = 0;
    for (auto& [e, p] : got) n += e == event;
    return n;
  }
};

struct Fixture {
  ToolRegistry tools;
  AgentHub hub{HubOptions{true}, tools};
  RunRegistry runs{RunOptions{}};

  RunPtr run() { return runs.start("r", "query", "", "t", "a", 10'000, {}); }
  static AgentRequest query() {
    AgentRequest req;
    req.kind = "query";
    req.q = "hi";
    req.caller = Caller{"t", "a"};
    return req;
  }
  static WorkerSpec spec(std::size_t capacity, std::string agent = "a") {
    WorkerSpec s;
    s.tenant = "t";
    s.agent = std::move(agent);
    s.capacity = capacity;
    return s;
  }
};

std::string status(const RunPtr& r) { return r->info().status; }

}  // namespace

TEST(AgentHub, NoWorkerMeansUnavailable) {
  Fixture f;
  auto r = f.run();
  EXPECT_EQ(f.hub.start(Fixture::query(), r), AgentBackend::Start::unavailable);
  EXPECT_TRUE(r->running());
}

TEST(AgentHub, LeastLoadedWithinCapacityAndTenantAndAgent) {
  Fixture f;
  Pushes a, b, other;
  f.hub.add_worker(Fixture::spec(2), a.handle());
  f.hub.add_worker(Fixture::spec(1), b.handle());
  f.hub.add_worker(Fixture::spec(5, "someone-else"), other.handle());
  std::vector<RunPtr> rs;
  for (int i = 0; i < 3; ++i) {
    rs.push_back(f.run());
    EXPECT_EQ(f.hub.start(Fixture::query(), rs.back()), AgentBackend::Start::accepted);
  }
  EXPECT_EQ(a.count("run"), 2u);
  EXPECT_EQ(b.count("run"), 1u);
  EXPECT_EQ(other.count("run"), 0u);
  // Everyone of agent a is full now.
  EXPECT_EQ(f.hub.start(Fixture::query(), f.run()), AgentBackend::Start::unavailable);
}

TEST(AgentHub, OnlyTheOwnerMayReportAndEndedRunsAreDropped) {
  Fixture f;
  Pushes a, b;
  const auto wa = f.hub.add_worker(Fixture::spec(1), a.handle());
  const auto wb = f.hub.add_worker(Fixture::spec(1), b.handle());
  auto r = f.run();
  ASSERT_EQ(f.hub.start(Fixture::query(), r), AgentBackend::Start::accepted);
  const auto owner = a.count("run") ? wa : wb;
  const auto stranger = owner == wa ? wb : wa;
  json::object tok{{"run_id", r->id()}, {"text", "x"}};
  EXPECT_EQ(f.hub.on_event(stranger, "token", tok).reason, "unknown_run");
  EXPECT_TRUE(f.hub.on_event(owner, "token", tok).reason.empty());
  EXPECT_EQ(f.hub.on_event(owner, "token", json::object{{"run_id", r->id()}}).reason, "invalid_payload");
  EXPECT_EQ(f.hub.on_event(owner, "shout", tok).reason, "unknown_event");
  EXPECT_TRUE(f.hub.on_event(owner, "result", json::object{{"run_id", r->id()}, {"data", 1}}).reason.empty());
  EXPECT_EQ(status(r), "result");
  const HubReply late = f.hub.on_event(owner, "token", tok);
  EXPECT_TRUE(late.reason.empty());
  EXPECT_TRUE(late.dropped);
  // The worker's own result is not answered with a cancel.
  EXPECT_EQ(a.count("cancel") + b.count("cancel"), 0u);
}

TEST(AgentHub, InterruptPushesCancelAndFreesCapacity) {
  Fixture f;
  Pushes a;
  const auto w = f.hub.add_worker(Fixture::spec(1), a.handle());
  auto r = f.run();
  ASSERT_EQ(f.hub.start(Fixture::query(), r), AgentBackend::Start::accepted);
  r->finish(RunEnd::interrupted, json::object{{"reason", "client"}});
  ASSERT_EQ(a.count("cancel"), 1u);
  EXPECT_EQ(a.got.back().second.at("reason").as_string(), "interrupted");
  EXPECT_TRUE(f.hub.on_event(w, "token", json::object{{"run_id", r->id()}, {"text", "x"}}).dropped);
  EXPECT_EQ(f.hub.start(Fixture::query(), f.run()), AgentBackend::Start::accepted);
}

TEST(AgentHub, ADepartingWorkersRunsEndOrMoveOnceToAnotherWorker) {
  Fixture f;
  Pushes a, b;
  const auto wa = f.hub.add_worker(Fixture::spec(2), a.handle());
  auto streamed = f.run();
  auto quiet = f.run();
  ASSERT_EQ(f.hub.start(Fixture::query(), streamed), AgentBackend::Start::accepted);
  ASSERT_EQ(f.hub.start(Fixture::query(), quiet), AgentBackend::Start::accepted);
  ASSERT_TRUE(f.hub.on_event(wa, "token", json::object{{"run_id", streamed->id()}, {"text", "x"}}).reason.empty());
  const auto wb = f.hub.add_worker(Fixture::spec(2), b.handle());
  f.hub.remove_worker(wa);
  EXPECT_EQ(status(streamed), "error");
  EXPECT_TRUE(quiet->running());
  ASSERT_EQ(b.count("run"), 1u);
  EXPECT_EQ(b.got.back().second.at("run_id").as_string(), quiet->id());
  // Once only: when the second worker goes too, it ends.
  f.hub.remove_worker(wb);
  EXPECT_EQ(status(quiet), "error");
  EXPECT_EQ(f.hub.stats().runs, 0u);
}
