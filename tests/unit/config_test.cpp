// Configuration: defaults, TOML, flags, and errors that name the key.
#include <gtest/gtest.h>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>

#include "config/config.hpp"

using namespace synapse::config;

namespace {
std::string write_toml(const std::string& body) {
  const auto path = std::filesystem::temp_directory_path() / ("synapse-cfg-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << body;
  return path.string();
}

Config parse(std::vector<std::string> args, const std::string& file = "") {
  CLI::App app;
  Binder binder(app);
  std::vector<const char*> argv{"serve"};
  for (auto& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return binder.finish(file);
}
}  // namespace

TEST(Config, DefaultsAreTheProtocols) {
  const Config c = parse({});
  EXPECT_EQ(c.port, 4000);
  EXPECT_EQ(c.max_message_bytes, 1 << 20);
  EXPECT_EQ(c.idle_timeout_ms, 60000);
  EXPECT_EQ(c.messages_per_min, 60);
  EXPECT_EQ(c.message_burst, 20);
  EXPECT_EQ(c.queries_per_min, 10);
  EXPECT_EQ(c.ip_max_connections, 100);
  EXPECT_EQ(c.ip_new_per_min, 10);
  EXPECT_EQ(c.key_max_connections, 10);
  EXPECT_EQ(c.max_topics, 100);
  EXPECT_EQ(c.max_running, 4);
  EXPECT_EQ(c.outbound_queue_bytes, 4 << 20);
  EXPECT_EQ(c.history_size, 100);
  EXPECT_EQ(c.history_ttl_s, 300);
  EXPECT_EQ(c.presence_interval_ms, 100);
  EXPECT_FALSE(c.debug_crash);
  EXPECT_TRUE(c.self_refresh);
}

TEST(Config, FlagsOverrideTomlWhichOverridesDefaults) {
  const auto file = write_toml("[server]\nport = 5000\nthreads = 3\n[limits]\nmax_topics = 7\n");
  const Config c = parse({"--port", "6000", "--debug-crash"}, file);
  EXPECT_EQ(c.port, 6000);
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.max_topics, 7);
  EXPECT_TRUE(c.debug_crash);
  std::filesystem::remove(file);
}

TEST(Config, BadValuesNameTheKey) {
  auto message = [](std::vector<std::string> args, const std::string& file = "") {
    try {
      parse(std::move(args), file);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"--port", "70000"}).find("server.port"), std::string::npos);
  EXPECT_NE(message({"--idle-timeout-ms", "soon"}).find("websocket.idle_timeout_ms"), std::string::npos);
  EXPECT_NE(message({"--log-level", "loud"}).find("server.log_level"), std::string::npos);
  EXPECT_NE(message({"--debug-crash", "maybe"}).find("cortex.debug_crash"), std::string::npos);
  const auto f1 = write_toml("[limits]\nmax_topics = \"many\"\n");
  EXPECT_NE(message({}, f1).find("limits.max_topics"), std::string::npos);
  const auto f2 = write_toml("[limits]\nmax_topicz = 3\n");
  EXPECT_NE(message({}, f2).find("limits.max_topicz"), std::string::npos);
  std::filesystem::remove(f2);
}

TEST(Config, ExampleFileParsesToTheDefaults) {
  const auto file = write_toml(example_toml());
  const Config c = parse({}, file);
  const Config d;
  EXPECT_EQ(c.port, d.port);
  EXPECT_EQ(c.allowed_origins, d.allowed_origins);
  EXPECT_DOUBLE_EQ(c.rank_bm25_weight, d.rank_bm25_weight);
  std::filesystem::remove(file);
}

TEST(Config, CommittedExampleMatchesTheOptionTable) {
  std::ifstream in(std::string(SYNAPSE_SOURCE_DIR) + "/config/synapse.example.toml");
  ASSERT_TRUE(in) << "config/synapse.example.toml is missing; regenerate with `synapse config example`";
  const std::string committed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(committed, example_toml()) << "regenerate: synapse config example > config/synapse.example.toml";
}

TEST(Config, CortexRoutesAreArraysOfTablesInOrder) {
  const auto file = write_toml(
      "[cortex]\nbackend = \"workers\"\n"
      "[[cortex.routes]]\nagents = \"support-*\"\nbackend = \"workers_then_builtin\"\n"
      "[[cortex.routes]]\nagents = \"notes\"\nbackend = \"builtin\"\n");
  const Config c = parse({}, file);
  EXPECT_EQ(c.backend, "workers");
  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].agents, "support-*");
  EXPECT_EQ(c.routes[0].backend, "workers_then_builtin");
  EXPECT_EQ(c.routes[1].agents, "notes");
  EXPECT_EQ(c.routes[1].backend, "builtin");
  std::filesystem::remove(file);
}

TEST(Config, BadCortexRoutesNameTheRoute) {
  auto refused = [](const std::string& body, const std::string& needle) {
    const auto file = write_toml(body);
    try {
      parse({}, file);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    std::filesystem::remove(file);
  };
  refused("[[cortex.routes]]\nagents = \"a\"\nbackend = \"magic\"\n", "cortex.routes[0].backend");
  refused("[[cortex.routes]]\nagents = \"a\"\nbackend = \"http\"\n", "backend http needs url");
  refused("[[cortex.routes]]\nbackend = \"workers\"\n", "cortex.routes[0].agents is required");
  refused("[[cortex.routes]]\nagents = \"a*b\"\nbackend = \"workers\"\n", "prefix ending in *");
  refused("[[cortex.routes]]\nagents = \"a\"\nbackend = \"workers\"\ncolour = \"red\"\n", "unknown key");
  refused("[cortex]\nroutes = 3\n", "array of tables");
  refused("[cortex]\nbackend = \"http\"\n", "backend http needs url");
}
