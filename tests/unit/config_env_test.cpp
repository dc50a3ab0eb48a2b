// SYNAPSE_* environment variables: every option has one, and the order is
// flags > environment > file > defaults (> the --dev profile's defaults).
#include <gtest/gtest.h>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.hpp"

using namespace synapse::config;

namespace {
using Env = std::map<std::string, std::string>;

std::string write_toml(const std::string& body) {
  const auto path =
      std::filesystem::temp_directory_path() / ("synapse-cfg-env-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << body;
  return path.string();
}

// Parses `args` as `serve` flags and finishes with `file` and a fake environment.
Config parse(std::vector<std::string> args, const std::string& file, const Env& env, bool dev = false) {
  CLI::App app;
  Binder binder(app);
  std::vector<const char*> argv{"serve"};
  for (auto& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return binder.finish(file, dev, [&env](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

// The flags of every option, read from the generated example file ("# help (--flag)").
std::vector<std::string> all_flags() {
  std::vector<std::string> flags;
  std::istringstream in(example_toml());
  std::string line;
  while (std::getline(in, line)) {
    const auto open = line.rfind("(--");
    if (line.rfind("# ", 0) == 0 && open != std::string::npos && line.back() == ')') {
      flags.push_back(line.substr(open + 1, line.size() - open - 2));
    }
  }
  return flags;
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& body) : path(write_toml(body)) {}
  ~TempFile() { std::filesystem::remove(path); }
};
}  // namespace

TEST(ConfigEnv, NamesAreSynapsePlusTheFlagInUpperSnakeCase) {
  EXPECT_EQ(env_name("--port"), "SYNAPSE_PORT");
  EXPECT_EQ(env_name("--ip-new-per-min"), "SYNAPSE_IP_NEW_PER_MIN");
  EXPECT_EQ(env_name("--metrics-token"), "SYNAPSE_METRICS_TOKEN");
}

TEST(ConfigEnv, EveryOptionHasItsOwnVariable) {
  const auto flags = all_flags();
  ASSERT_GT(flags.size(), 20u);
  std::set<std::string> names;
  for (const auto& f : flags) {
    const auto n = env_name(f);
    EXPECT_EQ(n.rfind("SYNAPSE_", 0), 0u) << f;
    EXPECT_EQ(n.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"), std::string::npos) << n;
    EXPECT_TRUE(names.insert(n).second) << "two options share " << n;
  }
}

TEST(ConfigEnv, EnvironmentOverridesTheFileAndFlagsOverrideBoth) {
  const TempFile file("[server]\nport = 5000\nthreads = 3\n[limits]\nmax_topics = 7\n");
  const Env env{{"SYNAPSE_PORT", "5500"}, {"SYNAPSE_MAX_TOPICS", "8"}};

  const Config file_only = parse({}, file.path, {});
  EXPECT_EQ(file_only.port, 5000);
  EXPECT_EQ(file_only.max_topics, 7);

  const Config with_env = parse({}, file.path, env);
  EXPECT_EQ(with_env.port, 5500);      // env > file
  EXPECT_EQ(with_env.max_topics, 8);   // env > file
  EXPECT_EQ(with_env.threads, 3);      // only in the file: the file's

  const Config with_flag = parse({"--port", "6000"}, file.path, env);
  EXPECT_EQ(with_flag.port, 6000);     // flag > env
  EXPECT_EQ(with_flag.max_topics, 8);  // no flag: still the environment's
  EXPECT_EQ(with_flag.threads, 3);
}

TEST(ConfigEnv, EnvironmentOverridesTheDefaultsWithoutAFile) {
  const Config c = parse({}, "", {{"SYNAPSE_PORT", "4100"}, {"SYNAPSE_HISTORY_SIZE", "250"}});
  EXPECT_EQ(c.port, 4100);
  EXPECT_EQ(c.history_size, 250);
  EXPECT_EQ(c.max_topics, Config{}.max_topics);
}

TEST(ConfigEnv, EveryKindOfValueIsReadFromText) {
  const Config c = parse({}, "",
                         {{"SYNAPSE_DEBUG_CRASH", "true"},
                          {"SYNAPSE_ALLOWED_ORIGINS", "http://a.example,https://*.b.example"},
                          {"SYNAPSE_METRICS_TOKEN", "s3cret"}});
  EXPECT_TRUE(c.debug_crash);
  EXPECT_EQ(c.allowed_origins, (std::vector<std::string>{"http://a.example", "https://*.b.example"}));
  EXPECT_EQ(c.metrics_token, "s3cret");
  EXPECT_FALSE(parse({}, "", {{"SYNAPSE_DEBUG_CRASH", "false"}}).debug_crash);
}

TEST(ConfigEnv, AFlagWinsOverTheEnvironmentForBooleansAndLists) {
  const Env env{{"SYNAPSE_DEBUG_CRASH", "false"}, {"SYNAPSE_ALLOWED_ORIGINS", "http://env.example"}};
  const Config c = parse({"--debug-crash", "--allowed-origins", "http://flag.example"}, "", env);
  EXPECT_TRUE(c.debug_crash);
  EXPECT_EQ(c.allowed_origins, (std::vector<std::string>{"http://flag.example"}));
}

TEST(ConfigEnv, TheEnvironmentOverridesTheDevProfile) {
  const Config dev = parse({}, "", {}, true);
  EXPECT_EQ(dev.ip_new_per_min, 0);
  const Config c = parse({}, "", {{"SYNAPSE_IP_NEW_PER_MIN", "5"}, {"SYNAPSE_LOG_LEVEL", "warn"}}, true);
  EXPECT_EQ(c.ip_new_per_min, 5);
  EXPECT_EQ(c.log_level, "warn");
}

TEST(ConfigEnv, ABadValueNamesTheVariable) {
  try {
    parse({}, "", {{"SYNAPSE_PORT", "not-a-port"}});
    FAIL() << "a bad SYNAPSE_PORT must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("SYNAPSE_PORT"), std::string::npos) << e.what();
  }
  try {
    parse({}, "", {{"SYNAPSE_PORT", "70000"}});
    FAIL() << "an out-of-range SYNAPSE_PORT must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("SYNAPSE_PORT"), std::string::npos) << e.what();
  }
  // A flag replacing a broken variable does not hide it: the operator learns
  // about the broken environment now, not when the flag is dropped.
  EXPECT_THROW(parse({"--port", "4001"}, "", {{"SYNAPSE_PORT", "x"}}), ConfigError);
}

TEST(ConfigEnv, UnrelatedVariablesAreIgnored) {
  const Config c = parse({}, "", {{"SYNAPSE_NOT_AN_OPTION", "1"}, {"PORT", "1"}, {"synapse_port", "1"}});
  EXPECT_EQ(c.port, Config{}.port);
}
