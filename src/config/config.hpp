// Server configuration: defaults are the protocol's; a TOML file and a flag
// per option override them, in that order. Every option is described once, in
// config.cpp's table, which drives the TOML reader, the flags and --help.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace CLI {
class App;
}

namespace synapse::config {

// One `[[cortex.routes]]` table: who answers the agents whose id matches
// `agents` (an id, or a prefix ending in `*`). docs/protocol.md section 10.
struct AgentRoute {
  std::string agents;
  std::string backend;  // builtin, workers, workers_then_builtin or http
  std::string url;      // backend http only
};

// One `[[mcp.servers]]` table: an MCP server Synapse runs as a child over
// stdio, whose tools become `<name>.<tool>` (docs/mcp.md). TOML only: an
// array of tables has no flag or environment variable.
struct McpServerConfig {
  std::string name;     // the tools' namespace: 1..64 letters, digits, '_' or '-'
  std::string command;  // looked up in PATH unless it contains a '/'
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;  // added to Synapse's environment, by name
  std::string cwd;                     // empty: Synapse's working directory
  std::int64_t timeout_ms = 30'000;    // one request's answer (initialize, tools/list, tools/call, ping)
  std::int64_t max_concurrent = 4;     // calls in flight; more are refused with `overloaded`
};

struct Config {
  // [server]
  std::string bind = "127.0.0.1";
  std::int64_t port = 4000;
  std::string data_dir = "./data";
  std::int64_t threads = 0;  // 0 = one per core
  std::string log_level = "info";
  std::string log_format = "text";  // text or json (one object per line)
  std::int64_t drain_timeout_ms = 30'000;
  // TLS on the listener (wss://, and https:// for the HTTP endpoints): PEM
  // files, both or neither; re-read on SIGHUP.
  std::string tls_cert;
  std::string tls_key;

  // [websocket]
  std::int64_t max_message_bytes = 1 << 20;
  std::int64_t handshake_timeout_ms = 10'000;
  std::int64_t idle_timeout_ms = 60'000;
  std::int64_t malformed_limit = 10;
  std::int64_t malformed_window_ms = 60'000;
  std::int64_t outbound_queue_bytes = 4 << 20;
  std::vector<std::string> allowed_origins;  // empty: only same-host origins
  bool permessage_deflate = false;           // RFC 7692, when the client offers it
  std::int64_t deflate_threshold_bytes = 1024;  // smaller payloads go uncompressed
  std::int64_t deflate_level = 1;            // zlib 1 (fastest) .. 9 (smallest)

  // [auth]
  std::string jwt_secret;  // empty: generated once into <data_dir>/jwt.secret
  bool self_refresh = true;
  std::int64_t token_default_ttl_s = 3600;
  std::int64_t token_max_ttl_s = 86'400;
  std::int64_t token_warning_s = 60;
  std::int64_t revocation_poll_ms = 1000;
  // Identity-provider tokens (RS256, ES256, EdDSA) verified against a JWKS.
  std::string jwks_url;   // http:// only; empty: not fetched
  std::string jwks_file;  // a JWKS document on disk, re-read with every refresh
  std::int64_t jwks_refresh_s = 300;
  std::int64_t jwks_min_refresh_ms = 10'000;  // unknown-kid refreshes at most this often
  std::string issuer;    // required `iss` of IdP tokens (empty: not checked)
  std::string audience;  // `aud` IdP tokens must name (empty: not checked)
  std::int64_t leeway_s = 30;  // clock skew allowed on IdP tokens' exp and nbf

  // [hooks] backend hooks; an empty URL turns the hook off
  std::string hook_connect_url;
  std::string hook_join_url;
  std::string hook_publish_url;
  std::int64_t hook_timeout_ms = 2000;
  std::string hook_connect_failure = "deny";  // deny or allow, when the backend gives no answer
  std::string hook_join_failure = "deny";
  std::string hook_publish_failure = "deny";
  std::string hook_secret;  // signs each hook body (X-Synapse-Signature)

  // [limits]
  std::int64_t messages_per_min = 60;
  std::int64_t message_burst = 20;
  std::int64_t queries_per_min = 10;
  std::int64_t query_burst = 10;
  std::int64_t ip_max_connections = 100;
  std::int64_t ip_max_sockets = 200;
  std::int64_t fd_reserve = 256;
  std::int64_t ip_new_per_min = 10;
  std::int64_t key_max_connections = 10;
  std::int64_t max_topics = 100;
  std::int64_t max_running = 4;
  // Agent workers' own budget (client limits do not apply to them).
  std::int64_t worker_msgs_per_min = 600'000;
  std::int64_t worker_burst = 20'000;

  // [pubsub]
  std::int64_t history_size = 100;
  std::int64_t history_ttl_s = 300;
  std::int64_t presence_interval_ms = 100;
  std::int64_t max_presence_meta_bytes = 1024;
  std::int64_t history_max_bytes_per_topic = 4 << 20;
  std::int64_t history_max_bytes = 256 << 20;
  std::string history_store = "memory";  // or "disk" (single node)
  std::int64_t max_presence_bytes_per_topic = 8 << 20;

  // [cortex]
  std::int64_t workers = 4;
  std::int64_t worker_queue = 1024;
  std::int64_t tenant_queue = 256;  // runs one tenant may have waiting; 0 = only worker_queue
  std::int64_t query_budget_ms = 200;  // SQLite time per query or memory.search; 0 = unlimited
  std::int64_t query_max_terms = 16;
  std::int64_t default_timeout_ms = 30'000;
  std::int64_t max_timeout_ms = 600'000;
  std::int64_t max_query_chars = 8192;
  bool debug_crash = false;
  double rank_bm25_weight = 0.6;
  double rank_recency_weight = 0.25;
  double rank_importance_weight = 0.15;
  double rank_recency_half_life_h = 168.0;
  std::int64_t rank_candidates = 100;
  std::int64_t default_result_limit = 10;
  // Runs outlive their connection (docs/cortex.md "Run logs and retention").
  std::int64_t run_retention_s = 300;
  std::int64_t detach_grace_s = 60;
  std::int64_t run_log_max_bytes_per_run = 1 << 20;
  bool run_log = true;
  std::int64_t run_log_max_bytes = 64 << 20;
  // Who answers queries (docs/protocol.md section 10): the default backend,
  // and per agent-id pattern the `[[cortex.routes]]` tables (first match
  // wins). The routes exist only in a TOML file: no flag, no variable.
  std::string backend = "builtin";
  std::vector<AgentRoute> routes;
  bool redispatch_unstarted = true;
  std::int64_t worker_error_budget = 20;  // worker errors per minute before 1008; 0 = unlimited

  // [mcp_server] Synapse as an MCP server: POST/GET/DELETE /mcp (docs/mcp.md)
  bool mcp_enabled = true;
  std::int64_t mcp_max_sessions = 10'000;      // every key's together
  std::int64_t mcp_max_sessions_per_key = 16;  // per API key (a token counts as its minting key)
  std::int64_t mcp_session_idle_s = 1800;      // a session with no request and no call this long ends

  // [metrics]
  std::string metrics_token;  // empty: /metrics is open

  // [cluster]
  std::string redis;    // redis://HOST:PORT[/DB]; empty: a single node, nothing shared
  std::string node_id;  // empty: random at each start
  std::int64_t node_ttl_ms = 10'000;

  // [[mcp.servers]]
  std::vector<McpServerConfig> mcp_servers;
};

// A bad value or an unknown key; the message names the key.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Adds a flag for every option to `app`. After parsing, call finish().
class Binder {
 public:
  explicit Binder(CLI::App& app);
  // Starts from the defaults (the --dev profile's when `dev`), applies
  // `config_file` (if any), then SYNAPSE_* environment variables, then the
  // flags that were given, then checks every value. Throws ConfigError.
  // `env` looks a variable up (std::getenv by default; tests pass their own).
  Config finish(const std::string& config_file, bool dev = false,
                const std::function<const char*(const char*)>& env = {}) const;

 private:
  struct Flag;
  std::vector<std::pair<std::size_t, std::string*>> given_;  // option index -> raw text
  std::vector<std::unique_ptr<std::string>> storage_;
  CLI::App& app_;
};

// Loads a TOML file over `base`; throws ConfigError naming the bad key.
void apply_toml(Config& cfg, const std::string& path);
// Range checks every option; throws ConfigError naming the bad key.
void validate(const Config& cfg);
// The example file, generated from the option table (docs and tests use it).
std::string example_toml();
// The environment variable of a flag: --port -> SYNAPSE_PORT,
// --metrics-token -> SYNAPSE_METRICS_TOKEN.
std::string env_name(std::string_view flag);
// The --dev profile: defaults for local development (browser origins on
// localhost, no new-connection rate limit, debug logs). Production defaults
// are Config{}'s and are not changed by it.
void apply_dev_profile(Config& cfg);

}  // namespace synapse::config
