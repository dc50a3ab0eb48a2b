#include "config/config.hpp"

#include "redis/url.hpp"

#include <CLI/CLI.hpp>
#include <toml.hpp>

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>
#include <limits>
#include <variant>

namespace synapse::config {
namespace {

using Member = std::variant<std::int64_t Config::*, double Config::*, std::string Config::*, bool Config::*,
                            std::vector<std::string> Config::*>;

struct Option {
  const char* key;   // TOML "section.name"
  const char* flag;  // command-line flag
  const char* help;
  Member member;
  double min = 0;
  double max = std::numeric_limits<double>::max();
};

constexpr double kMaxInt = 9.0e15;

// The one description of every option. Order is the order of --help and of
// the example file.
const std::vector<Option>& options() {
  static const std::vector<Option> table = {
      {"server.bind", "--bind", "Address to listen on", &Config::bind},
      {"server.port", "--port", "TCP port to listen on", &Config::port, 0, 65535},
      {"server.data_dir", "--data-dir", "Directory for synapse.db and jwt.secret", &Config::data_dir},
      {"server.threads", "--threads", "I/O threads; 0 = one per core", &Config::threads, 0, 256},
      {"server.log_level", "--log-level", "trace, debug, info, warn, error or off", &Config::log_level},
      {"server.log_format", "--log-format", "text, or json: one JSON object per line", &Config::log_format},
      {"server.drain_timeout_ms", "--drain-timeout-ms",
       "On SIGTERM/SIGINT, how long running queries and tools may finish before they are interrupted and "
       "every connection is closed with 1001 (0 = at once)",
       &Config::drain_timeout_ms, 0, kMaxInt},
      {"server.tls_cert", "--tls-cert",
       "PEM certificate chain: the port serves TLS only (wss://, https://); needs server.tls_key; re-read on SIGHUP "
       "(empty = plain TCP)",
       &Config::tls_cert},
      {"server.tls_key", "--tls-key", "PEM private key (unencrypted) of server.tls_cert; re-read on SIGHUP",
       &Config::tls_key},

      {"websocket.max_message_bytes", "--max-message-bytes",
       "Largest client message; larger ones close the connection with 1009 (0 = unlimited)",
       &Config::max_message_bytes, 0, 1u << 30},
      {"websocket.handshake_timeout_ms", "--handshake-timeout-ms",
       "Time allowed for the HTTP upgrade request, the TLS handshake included (0 = unlimited)",
       &Config::handshake_timeout_ms, 0, kMaxInt},
      {"websocket.idle_timeout_ms", "--idle-timeout-ms",
       "Close with 4000 after this long without any client frame (0 = never)", &Config::idle_timeout_ms, 0,
       kMaxInt},
      {"websocket.malformed_limit", "--malformed-limit",
       "Malformed frames tolerated per window before closing with 1008 (0 = unlimited)",
       &Config::malformed_limit, 0, kMaxInt},
      {"websocket.malformed_window_ms", "--malformed-window-ms", "Window for malformed_limit",
       &Config::malformed_window_ms, 1, kMaxInt},
      {"websocket.outbound_queue_bytes", "--outbound-queue-bytes",
       "Bytes queued to one client before it is closed with 4008 (0 = unlimited)",
       &Config::outbound_queue_bytes, 0, kMaxInt},
      {"websocket.allowed_origins", "--allowed-origins",
       "Browser Origins allowed to connect (comma-separated; patterns like http://localhost:* and "
       "https://*.example.com; \"*\" = any; empty = same host only)",
       &Config::allowed_origins},
      {"websocket.permessage_deflate", "--permessage-deflate",
       "Negotiate permessage-deflate (RFC 7692) with clients that offer it; each message is compressed once for "
       "all its subscribers",
       &Config::permessage_deflate},
      {"websocket.deflate_threshold_bytes", "--deflate-threshold-bytes",
       "With permessage_deflate: payloads shorter than this go uncompressed", &Config::deflate_threshold_bytes, 0,
       kMaxInt},
      {"websocket.deflate_level", "--deflate-level",
       "With permessage_deflate: zlib level, 1 (fastest) to 9 (smallest)", &Config::deflate_level, 1, 9},

      {"auth.jwt_secret", "--jwt-secret",
       "HS256 secret; empty = generated once into <data_dir>/jwt.secret (0600)", &Config::jwt_secret},
      {"auth.self_refresh", "--self-refresh", "Allow `refresh {}` to mint a fresh token for the same sub",
       &Config::self_refresh},
      {"auth.token_default_ttl_s", "--token-default-ttl-s", "TTL of tokens from /api/token without ttl_s",
       &Config::token_default_ttl_s, 1, kMaxInt},
      {"auth.token_max_ttl_s", "--token-max-ttl-s", "Longest TTL /api/token will grant",
       &Config::token_max_ttl_s, 1, kMaxInt},
      {"auth.token_warning_s", "--token-warning-s", "Push token_expiring this long before exp",
       &Config::token_warning_s, 0, kMaxInt},
      {"auth.revocation_poll_ms", "--revocation-poll-ms",
       "How often revoked keys are looked up to close their connections", &Config::revocation_poll_ms, 50,
       60'000},
      {"auth.jwks_url", "--jwks-url",
       "http:// URL of the identity provider's JWKS; RS256, ES256 and EdDSA tokens are verified against it",
       &Config::jwks_url},
      {"auth.jwks_file", "--jwks-file", "A JWKS file, instead of jwks_url (re-read at every refresh)",
       &Config::jwks_file},
      {"auth.jwks_refresh_s", "--jwks-refresh-s", "How often the JWKS is fetched again in the background",
       &Config::jwks_refresh_s, 1, kMaxInt},
      {"auth.jwks_min_refresh_ms", "--jwks-min-refresh-ms",
       "A token with an unknown kid refreshes the JWKS at most this often", &Config::jwks_min_refresh_ms, 0,
       kMaxInt},
      {"auth.issuer", "--issuer", "The iss identity-provider tokens must carry (empty = not checked)",
       &Config::issuer},
      {"auth.audience", "--audience", "The aud identity-provider tokens must name (empty = not checked)",
       &Config::audience},
      {"auth.leeway_s", "--leeway-s", "Clock skew allowed on identity-provider tokens' exp and nbf",
       &Config::leeway_s, 0, 3600},

      {"hooks.connect_url", "--hook-connect-url",
       "http:// URL the application decides connections at (empty = no connect hook)", &Config::hook_connect_url},
      {"hooks.join_url", "--hook-join-url", "http:// URL the application decides pub/sub joins at (empty = none)",
       &Config::hook_join_url},
      {"hooks.publish_url", "--hook-publish-url",
       "http:// URL the application decides (and may rewrite) publishes at (empty = none)",
       &Config::hook_publish_url},
      {"hooks.timeout_ms", "--hook-timeout-ms", "How long a hook may take before its failure policy applies",
       &Config::hook_timeout_ms, 1, 60'000},
      {"hooks.connect_failure", "--hook-connect-failure", "deny or allow when the connect hook gives no answer",
       &Config::hook_connect_failure},
      {"hooks.join_failure", "--hook-join-failure", "deny or allow when the join hook gives no answer",
       &Config::hook_join_failure},
      {"hooks.publish_failure", "--hook-publish-failure", "deny or allow when the publish hook gives no answer",
       &Config::hook_publish_failure},
      {"hooks.secret", "--hook-secret",
       "When set, each hook request carries X-Synapse-Signature: sha256=<hex HMAC-SHA256 of the body>",
       &Config::hook_secret},

      {"limits.messages_per_min", "--messages-per-min", "Client messages per minute per connection (0 = unlimited)",
       &Config::messages_per_min, 0, kMaxInt},
      {"limits.message_burst", "--message-burst", "Message bucket size", &Config::message_burst, 0, kMaxInt},
      {"limits.queries_per_min", "--queries-per-min", "Queries and tools per minute per connection (0 = unlimited)",
       &Config::queries_per_min, 0, kMaxInt},
      {"limits.query_burst", "--query-burst", "Query bucket size", &Config::query_burst, 0, kMaxInt},
      {"limits.ip_max_connections", "--ip-max-connections", "Concurrent connections per IP (0 = unlimited)",
       &Config::ip_max_connections, 0, kMaxInt},
      {"limits.ip_max_sockets", "--ip-max-sockets",
       "Open TCP connections per IP, counted from accept, upgraded or not (0 = unlimited)",
       &Config::ip_max_sockets, 0, kMaxInt},
      {"limits.fd_reserve", "--fd-reserve",
       "Descriptors kept for addresses holding few connections once the process nears its limit",
       &Config::fd_reserve, 0, kMaxInt},
      {"limits.ip_new_per_min", "--ip-new-per-min", "New connections per IP per minute (0 = unlimited)",
       &Config::ip_new_per_min, 0, kMaxInt},
      {"limits.key_max_connections", "--key-max-connections",
       "Concurrent connections per API key or token sub (0 = unlimited)", &Config::key_max_connections, 0,
       kMaxInt},
      {"limits.max_topics", "--max-topics", "Topics one connection may join (0 = unlimited)", &Config::max_topics,
       0, kMaxInt},
      {"limits.max_running", "--max-running", "Queries and tools running at once per connection (0 = unlimited)",
       &Config::max_running, 0, kMaxInt},
      {"limits.worker_msgs_per_min", "--worker-msgs-per-min",
       "Messages per minute per agent-worker connection; the client limits do not apply to workers (0 = unlimited)",
       &Config::worker_msgs_per_min, 0, kMaxInt},
      {"limits.worker_burst", "--worker-burst", "Agent workers' message bucket size", &Config::worker_burst, 0,
       kMaxInt},

      {"pubsub.history_size", "--history-size", "Messages kept per topic for recovery (0 = none)",
       &Config::history_size, 0, 1'000'000},
      {"pubsub.history_ttl_s", "--history-ttl-s", "How long a message stays recoverable (0 = forever)",
       &Config::history_ttl_s, 0, kMaxInt},
      {"pubsub.history_store", "--history-store",
       "memory, or disk: history kept in <data_dir>/history.db survives a crash (single node)",
       &Config::history_store},
      {"pubsub.presence_interval_ms", "--presence-interval-ms", "Presence changes are coalesced per this interval",
       &Config::presence_interval_ms, 1, 60'000},
      {"pubsub.max_presence_meta_bytes", "--max-presence-meta-bytes", "Largest presence meta (serialized JSON)",
       &Config::max_presence_meta_bytes, 0, 1 << 20},
      {"pubsub.history_max_bytes_per_topic", "--history-max-bytes-per-topic",
       "Bytes of history kept per topic; oldest dropped first (0 = no bound)", &Config::history_max_bytes_per_topic,
       0, kMaxInt},
      {"pubsub.history_max_bytes", "--history-max-bytes",
       "Bytes of history kept for all topics together; oldest dropped first (0 = no bound)",
       &Config::history_max_bytes, 0, kMaxInt},
      {"pubsub.max_presence_bytes_per_topic", "--max-presence-bytes-per-topic",
       "Bytes of presence metas one topic tracks; joins past it get presence_full (0 = no bound)",
       &Config::max_presence_bytes_per_topic, 0, kMaxInt},

      {"cortex.workers", "--workers", "Threads that run queries and tools", &Config::workers, 1, 256},
      {"cortex.backend", "--cortex-backend",
       "Who answers queries of agents no [[cortex.routes]] table matches: builtin, workers (agent workers; none "
       "free = error agent_unavailable), workers_then_builtin, or http (a route's url)",
       &Config::backend},
      {"cortex.redispatch_unstarted", "--redispatch-unstarted",
       "A run whose agent worker went away before it streamed anything is given once to another worker",
       &Config::redispatch_unstarted},
      {"cortex.worker_error_budget", "--worker-error-budget",
       "Errors (malformed events, runs it does not own) an agent worker may cause per minute before it is "
       "closed with 1008 (0 = unlimited)",
       &Config::worker_error_budget, 0, kMaxInt},
      {"cortex.worker_queue", "--worker-queue", "Runs waiting for a worker before new ones are refused",
       &Config::worker_queue, 1, 1'000'000},
      {"cortex.tenant_queue", "--tenant-queue",
       "Runs one tenant may have waiting for a worker, its share of worker_queue (0 = only worker_queue)",
       &Config::tenant_queue, 0, 1'000'000},
      {"cortex.query_budget_ms", "--query-budget-ms",
       "Search time one query or memory.search may take; past it the result is partial (0 = unlimited)",
       &Config::query_budget_ms, 0, kMaxInt},
      {"cortex.query_max_terms", "--query-max-terms",
       "Distinct search terms a query uses; the rest are dropped", &Config::query_max_terms, 1, 32},
      {"cortex.default_timeout_ms", "--default-timeout-ms", "Run timeout when the client gives none",
       &Config::default_timeout_ms, 1, kMaxInt},
      {"cortex.max_timeout_ms", "--max-timeout-ms", "Largest timeout_ms a client may ask for",
       &Config::max_timeout_ms, 1, kMaxInt},
      {"cortex.run_retention_s", "--run-retention-s", "Seconds an ended run's log stays attachable",
       &Config::run_retention_s, 0, 86'400},
      {"cortex.detach_grace_s", "--detach-grace-s",
       "Seconds a run nobody follows goes on before it is interrupted (0 = at once)", &Config::detach_grace_s, 0,
       86'400},
      {"cortex.run_log_max_bytes_per_run", "--run-log-max-bytes-per-run", "Bytes of events one run's log keeps",
       &Config::run_log_max_bytes_per_run, 1024, kMaxInt},
      {"cortex.run_log_max_bytes", "--run-log-max-bytes", "Bytes of run logs this node keeps in all",
       &Config::run_log_max_bytes, 1024, kMaxInt},
      {"cortex.run_log", "--run-log",
       "Keep each run's events for attach and snapshots (false: events are relayed and not kept, so a run "
       "cannot be re-attached; for measuring the log's cost)",
       &Config::run_log},
      {"cortex.max_query_chars", "--max-query-chars", "Longest query text, in characters", &Config::max_query_chars,
       1, 1 << 20},
      {"cortex.debug_crash", "--debug-crash", "Enable the debug.crash fault-injection tool (tests only)",
       &Config::debug_crash},
      {"cortex.rank_bm25_weight", "--rank-bm25-weight", "Weight of text relevance in the memory ranking",
       &Config::rank_bm25_weight, 0, 1000},
      {"cortex.rank_recency_weight", "--rank-recency-weight", "Weight of recency in the memory ranking",
       &Config::rank_recency_weight, 0, 1000},
      {"cortex.rank_importance_weight", "--rank-importance-weight", "Weight of importance in the memory ranking",
       &Config::rank_importance_weight, 0, 1000},
      {"cortex.rank_recency_half_life_h", "--rank-recency-half-life-h",
       "Age in hours at which the recency score halves", &Config::rank_recency_half_life_h, 0.001, 1e9},
      {"cortex.rank_candidates", "--rank-candidates", "Text matches fetched before re-ranking",
       &Config::rank_candidates, 1, 100'000},
      {"cortex.default_result_limit", "--default-result-limit", "Results returned when a query gives no limit",
       &Config::default_result_limit, 1, 1000},

      {"mcp_server.enabled", "--mcp-server", "Serve the MCP Streamable HTTP endpoint /mcp (Synapse as an MCP server)",
       &Config::mcp_enabled},
      {"mcp_server.max_sessions", "--mcp-max-sessions", "MCP sessions open at once on this node (0 = unlimited)",
       &Config::mcp_max_sessions, 0, kMaxInt},
      {"mcp_server.max_sessions_per_key", "--mcp-max-sessions-per-key",
       "MCP sessions one API key (or the tokens it minted) may hold open (0 = unlimited)",
       &Config::mcp_max_sessions_per_key, 0, kMaxInt},
      {"mcp_server.session_idle_s", "--mcp-session-idle-s",
       "An MCP session with no request, no running call and no GET stream for this long ends (404 afterwards)",
       &Config::mcp_session_idle_s, 1, kMaxInt},

      {"metrics.token", "--metrics-token", "When set, /metrics requires Authorization: Bearer <token>",
       &Config::metrics_token},

      {"cluster.redis", "--redis",
       "redis://HOST:PORT[/DB]: share pub/sub, presence, history and connection limits with the other nodes "
       "on this Redis (empty = a single node)",
       &Config::redis},
      {"cluster.node_id", "--node-id", "This node's name in the cluster (letters, digits, . _ -); each start adds a random suffix (empty = node)",
       &Config::node_id},
      {"cluster.node_ttl_ms", "--node-ttl-ms",
       "A node whose heartbeat stops this long is dead: its presence leaves, its connections stop counting",
       &Config::node_ttl_ms, 1000, 3'600'000},
  };
  return table;
}

std::string render(const Config& c, const Member& m) {
  return std::visit(
      [&](auto ptr) -> std::string {
        using T = std::decay_t<decltype(c.*ptr)>;
        const T& v = c.*ptr;
        if constexpr (std::is_same_v<T, std::int64_t>) {
          return std::to_string(v);
        } else if constexpr (std::is_same_v<T, double>) {
          return fmt::format("{}", v);
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return v;
        } else {
          std::string out;
          for (std::size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + v[i];
          return out;
        }
      },
      m);
}

[[noreturn]] void bad(const Option& o, const std::string& why) {
  throw ConfigError(fmt::format("invalid value for {} ({}): {}", o.key, o.flag, why));
}

void check_range(const Option& o, double v) {
  if (!(v >= o.min && v <= o.max)) bad(o, fmt::format("{} is outside {}..{}", v, o.min, o.max));
}

// Applies one option's text (from a flag) to `cfg`.
void apply_text(Config& cfg, const Option& o, const std::string& text) {
  std::visit(
      [&](auto ptr) {
        using T = std::decay_t<decltype(cfg.*ptr)>;
        if constexpr (std::is_same_v<T, std::int64_t>) {
          std::int64_t v = 0;
          auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
          if (ec != std::errc() || end != text.data() + text.size()) bad(o, "'" + text + "' is not an integer");
          check_range(o, static_cast<double>(v));
          cfg.*ptr = v;
        } else if constexpr (std::is_same_v<T, double>) {
          char* end = nullptr;
          const double v = std::strtod(text.c_str(), &end);
          if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v)) {
            bad(o, "'" + text + "' is not a number");
          }
          check_range(o, v);
          cfg.*ptr = v;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (text.empty() || text == "true" || text == "1" || text == "yes" || text == "on") {
            cfg.*ptr = true;
          } else if (text == "false" || text == "0" || text == "no" || text == "off") {
            cfg.*ptr = false;
          } else {
            bad(o, "'" + text + "' is not true or false");
          }
        } else if constexpr (std::is_same_v<T, std::string>) {
          cfg.*ptr = text;
        } else {
          std::vector<std::string> items;
          std::size_t start = 0;
          while (start <= text.size() && !text.empty()) {
            const auto comma = text.find(',', start);
            const auto item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
            if (!item.empty()) items.push_back(item);
            if (comma == std::string::npos) break;
            start = comma + 1;
          }
          cfg.*ptr = std::move(items);
        }
      },
      o.member);
}

void apply_toml_value(Config& cfg, const Option& o, const toml::value& v) {
  std::visit(
      [&](auto ptr) {
        using T = std::decay_t<decltype(cfg.*ptr)>;
        if constexpr (std::is_same_v<T, std::int64_t>) {
          if (!v.is_integer()) bad(o, "expected an integer");
          check_range(o, static_cast<double>(v.as_integer()));
          cfg.*ptr = v.as_integer();
        } else if constexpr (std::is_same_v<T, double>) {
          double d = 0;
          if (v.is_floating()) {
            d = v.as_floating();
          } else if (v.is_integer()) {
            d = static_cast<double>(v.as_integer());
          } else {
            bad(o, "expected a number");
          }
          check_range(o, d);
          cfg.*ptr = d;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!v.is_boolean()) bad(o, "expected true or false");
          cfg.*ptr = v.as_boolean();
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (!v.is_string()) bad(o, "expected a string");
          cfg.*ptr = v.as_string().str;
        } else {
          if (!v.is_array()) bad(o, "expected an array of strings");
          std::vector<std::string> items;
          for (const auto& item : v.as_array()) {
            if (!item.is_string()) bad(o, "expected an array of strings");
            items.push_back(item.as_string().str);
          }
          cfg.*ptr = std::move(items);
        }
      },
      o.member);
}

// `[[cortex.routes]]`: an array of tables, each {agents, backend, url?}.
// The options table holds scalars and lists only, so this one key is read here.
void apply_routes(Config& cfg, const toml::value& v) {
  if (!v.is_array()) throw ConfigError("cortex.routes must be an array of tables ([[cortex.routes]])");
  std::vector<AgentRoute> routes;
  std::size_t i = 0;
  for (const auto& item : v.as_array()) {
    const std::string where = fmt::format("cortex.routes[{}]", i++);
    if (!item.is_table()) throw ConfigError(where + " must be a table {agents, backend, url}");
    AgentRoute r;
    for (const auto& [k, field] : item.as_table()) {
      std::string* out = k == "agents" ? &r.agents : k == "backend" ? &r.backend : k == "url" ? &r.url : nullptr;
      if (!out) throw ConfigError(fmt::format("unknown key {}.{} (a route has agents, backend and url)", where, k));
      if (!field.is_string()) throw ConfigError(fmt::format("{}.{} must be a string", where, k));
      *out = field.as_string().str;
    }
    if (r.agents.empty()) throw ConfigError(where + ".agents is required (an agent id, or a prefix ending in *)");
    if (r.backend.empty()) throw ConfigError(where + ".backend is required");
    routes.push_back(std::move(r));
  }
  cfg.routes = std::move(routes);
}

const Option* find_option(const std::string& key) {
  for (const auto& o : options()) {
    if (key == o.key) return &o;
  }
  return nullptr;
}

// `[[mcp.servers]]`: an array of tables, each one server. Every key is
// checked here (type, unknown keys); the rules across servers (names,
// duplicates) are validate()'s. Errors name the table by its index.
[[noreturn]] void bad_mcp(std::size_t i, std::string_view key, const std::string& why) {
  throw ConfigError(fmt::format("invalid value for mcp.servers[{}].{}: {}", i, key, why));
}

std::vector<McpServerConfig> parse_mcp_servers(const toml::value& v) {
  if (!v.is_array()) throw ConfigError("invalid value for mcp.servers: expected [[mcp.servers]] tables");
  std::vector<McpServerConfig> out;
  std::size_t i = 0;
  for (const auto& item : v.as_array()) {
    if (!item.is_table()) throw ConfigError(fmt::format("invalid value for mcp.servers[{}]: expected a table", i));
    McpServerConfig m;
    auto text = [&](const std::string& key, const toml::value& x) {
      if (!x.is_string()) bad_mcp(i, key, "expected a string");
      return x.as_string().str;
    };
    auto integer = [&](const std::string& key, const toml::value& x, std::int64_t lo, std::int64_t hi) {
      if (!x.is_integer() || x.as_integer() < lo || x.as_integer() > hi) {
        bad_mcp(i, key, fmt::format("expected an integer from {} to {}", lo, hi));
      }
      return static_cast<std::int64_t>(x.as_integer());
    };
    for (const auto& [key, x] : item.as_table()) {
      if (key == "name") {
        m.name = text(key, x);
      } else if (key == "command") {
        m.command = text(key, x);
      } else if (key == "cwd") {
        m.cwd = text(key, x);
      } else if (key == "args") {
        if (!x.is_array()) bad_mcp(i, key, "expected an array of strings");
        for (const auto& a : x.as_array()) {
          if (!a.is_string()) bad_mcp(i, key, "expected an array of strings");
          m.args.push_back(a.as_string().str);
        }
      } else if (key == "env") {
        if (!x.is_table()) bad_mcp(i, key, "expected a table of strings, like env = { NAME = \"value\" }");
        for (const auto& [name, val] : x.as_table()) {
          if (!val.is_string()) bad_mcp(i, "env." + name, "expected a string");
          if (name.empty() || name.find('=') != std::string::npos) {
            bad_mcp(i, "env", "'" + name + "' is not a variable name");
          }
          m.env.emplace_back(name, val.as_string().str);
        }
        std::sort(m.env.begin(), m.env.end());
      } else if (key == "timeout_ms") {
        m.timeout_ms = integer(key, x, 1, 3'600'000);
      } else if (key == "max_concurrent") {
        m.max_concurrent = integer(key, x, 1, 1024);
      } else {
        throw ConfigError(fmt::format("unknown config key mcp.servers[{}].{} (a server takes name, command, args, "
                                      "env, cwd, timeout_ms and max_concurrent)",
                                      i, key));
      }
    }
    out.push_back(std::move(m));
    ++i;
  }
  return out;
}

}  // namespace

void apply_toml(Config& cfg, const std::string& path) {
  toml::value root;
  try {
    root = toml::parse(path);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("cannot read config file {}: {}", path, e.what()));
  }
  if (!root.is_table()) throw ConfigError("config file " + path + " is not a TOML table");
  for (const auto& [section, body] : root.as_table()) {
    if (!body.is_table()) throw ConfigError(fmt::format("unknown config key {} (options live in sections)", section));
    for (const auto& [name, value] : body.as_table()) {
      const std::string key = section + "." + name;
      if (key == "cortex.routes") {
        apply_routes(cfg, value);
        continue;
      }
      if (key == "mcp.servers") {
        cfg.mcp_servers = parse_mcp_servers(value);
        continue;
      }
      const Option* o = find_option(key);
      if (!o) throw ConfigError("unknown config key " + key);
      apply_toml_value(cfg, *o, value);
    }
  }
}

// A server's name is its tools' namespace: it may not hold a dot, repeat
// another server's, or take a built-in namespace.
static void validate_mcp_servers(const std::vector<McpServerConfig>& servers) {
  for (std::size_t i = 0; i < servers.size(); ++i) {
    const McpServerConfig& m = servers[i];
    if (m.name.empty()) bad_mcp(i, "name", "is required");
    bool ok = m.name.size() <= 64;
    for (char c : m.name) {
      ok &= (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    }
    if (!ok) bad_mcp(i, "name", "'" + m.name + "' must be 1..64 letters, digits, '_' or '-'");
    for (const char* reserved : {"memory", "demo", "debug"}) {
      if (m.name == reserved) bad_mcp(i, "name", "'" + m.name + "' is a built-in tool namespace");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (servers[j].name == m.name) bad_mcp(i, "name", fmt::format("'{}' is also mcp.servers[{}]'s name", m.name, j));
    }
    if (m.command.empty()) bad_mcp(i, "command", "is required");
  }
}

void validate(const Config& cfg) {
  // Numeric ranges are checked as values are applied; these are the rules
  // that a range cannot express.
  static const char* levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  bool level_ok = false;
  for (const char* l : levels) level_ok |= cfg.log_level == l;
  if (!level_ok) bad(*find_option("server.log_level"), "'" + cfg.log_level + "' is not a log level");
  if (cfg.history_store != "memory" && cfg.history_store != "disk") {
    bad(*find_option("pubsub.history_store"), "'" + cfg.history_store + "' is not memory or disk");
  }
  if (cfg.log_format != "text" && cfg.log_format != "json") {
    bad(*find_option("server.log_format"), "'" + cfg.log_format + "' is not text or json");
  }
  if (cfg.bind.empty()) bad(*find_option("server.bind"), "must not be empty");
  if (cfg.data_dir.empty()) bad(*find_option("server.data_dir"), "must not be empty");
  if (cfg.tls_cert.empty() != cfg.tls_key.empty()) {
    bad(*find_option(cfg.tls_cert.empty() ? "server.tls_cert" : "server.tls_key"),
        "TLS needs both server.tls_cert and server.tls_key");
  }
  if (cfg.default_timeout_ms > cfg.max_timeout_ms) {
    bad(*find_option("cortex.default_timeout_ms"), "must not exceed cortex.max_timeout_ms");
  }
  if (cfg.token_default_ttl_s > cfg.token_max_ttl_s) {
    bad(*find_option("auth.token_default_ttl_s"), "must not exceed auth.token_max_ttl_s");
  }
  if (!cfg.redis.empty()) {
    std::string why;
    if (!redis::parse_url(cfg.redis, &why)) bad(*find_option("cluster.redis"), "'" + cfg.redis + "': " + why);
  }
  if (!cfg.node_id.empty()) {
    bool ok = cfg.node_id.size() <= 64;
    for (char c : cfg.node_id) {
      ok &= (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
            c == '-';
    }
    if (!ok) bad(*find_option("cluster.node_id"), "must be 1..64 letters, digits, '.', '_' or '-'");
  }
  for (const char* key : {"auth.jwks_url", "hooks.connect_url", "hooks.join_url", "hooks.publish_url"}) {
    const Option& o = *find_option(key);
    const std::string& url = cfg.*std::get<std::string Config::*>(o.member);
    if (!url.empty() && !url.starts_with("http://")) bad(o, "'" + url + "' is not an http:// URL");
  }
  if (!cfg.jwks_url.empty() && !cfg.jwks_file.empty()) {
    bad(*find_option("auth.jwks_file"), "give auth.jwks_url or auth.jwks_file, not both");
  }
  for (const char* key : {"hooks.connect_failure", "hooks.join_failure", "hooks.publish_failure"}) {
    const Option& o = *find_option(key);
    const std::string& v = cfg.*std::get<std::string Config::*>(o.member);
    if (v != "deny" && v != "allow") bad(o, "'" + v + "' is not deny or allow");
  }
  {
    auto backend_ok = [](const std::string& b) {
      return b == "builtin" || b == "workers" || b == "workers_then_builtin" || b == "http";
    };
    if (!backend_ok(cfg.backend)) {
      bad(*find_option("cortex.backend"),
          "'" + cfg.backend + "' is not builtin, workers, workers_then_builtin or http");
    }
    if (cfg.backend == "http") {
      bad(*find_option("cortex.backend"), "backend http needs url: give it in a [[cortex.routes]] table");
    }
    for (std::size_t i = 0; i < cfg.routes.size(); ++i) {
      const AgentRoute& r = cfg.routes[i];
      if (!backend_ok(r.backend)) {
        throw ConfigError(fmt::format("invalid value for cortex.routes[{}].backend: '{}' is not builtin, workers, "
                                      "workers_then_builtin or http",
                                      i, r.backend));
      }
      if (r.backend == "http" && r.url.empty()) {
        throw ConfigError(fmt::format("invalid value for cortex.routes[{}]: backend http needs url", i));
      }
      if (r.backend != "http" && !r.url.empty()) {
        throw ConfigError(fmt::format("invalid value for cortex.routes[{}].url: only backend http takes a url", i));
      }
      const auto star = r.agents.find('*');
      if (star != std::string::npos && star + 1 != r.agents.size()) {
        throw ConfigError(fmt::format(
            "invalid value for cortex.routes[{}].agents: '{}' (an agent id, or a prefix ending in *)", i, r.agents));
      }
    }
  }
  if (!cfg.jwt_secret.empty() && cfg.jwt_secret.size() < 32) {
    bad(*find_option("auth.jwt_secret"), "must be at least 32 bytes");
  }
  validate_mcp_servers(cfg.mcp_servers);
}

struct Binder::Flag {};

Binder::Binder(CLI::App& app) : app_(app) {
  const Config defaults;
  std::size_t i = 0;
  for (const auto& o : options()) {
    auto& slot = storage_.emplace_back(std::make_unique<std::string>());
    CLI::Option* opt = nullptr;
    if (std::holds_alternative<bool Config::*>(o.member)) {
      // CLI11 would take a default_str as the value of a bare `--flag`, so
      // booleans show their default in the description instead.
      opt = app.add_option(o.flag, *slot, std::string(o.help) + " [default: " + render(defaults, o.member) + "]");
      opt->expected(0, 1);
      opt->type_name("BOOL");
    } else {
      opt = app.add_option(o.flag, *slot, o.help);
      opt->default_str(render(defaults, o.member));
      opt->type_name(std::visit(
          [](auto ptr) -> const char* {
            using T = std::decay_t<decltype(Config{}.*ptr)>;
            if constexpr (std::is_same_v<T, std::int64_t>) return "INT";
            if constexpr (std::is_same_v<T, double>) return "NUMBER";
            if constexpr (std::is_same_v<T, std::vector<std::string>>) return "LIST";
            return "TEXT";
          },
          o.member));
    }
    opt->group("Server options");
    given_.emplace_back(i++, slot.get());
  }
}

std::string env_name(std::string_view flag) {
  while (!flag.empty() && flag.front() == '-') flag.remove_prefix(1);
  std::string out = "SYNAPSE_";
  for (char c : flag) out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

void apply_dev_profile(Config& cfg) {
  // The usual local dev-server ports; admission matches origins exactly.
  cfg.allowed_origins.clear();
  for (const char* host : {"localhost", "127.0.0.1"}) {
    for (int port : {3000, 4000, 5173, 8000, 8080}) cfg.allowed_origins.push_back(fmt::format("http://{}:{}", host, port));
  }
  cfg.ip_new_per_min = 0;      // reconnect loops while editing code are not an attack
  cfg.log_level = "debug";
}

Config Binder::finish(const std::string& config_file, bool dev,
                      const std::function<const char*(const char*)>& env) const {
  Config cfg;
  if (dev) apply_dev_profile(cfg);
  if (!config_file.empty()) apply_toml(cfg, config_file);
  const auto& table = options();
  // flags > environment > file > defaults
  for (const auto& o : table) {
    const std::string name = env_name(o.flag);
    const char* value = env ? env(name.c_str()) : std::getenv(name.c_str());
    if (!value) continue;
    try {
      apply_text(cfg, o, value);
    } catch (const ConfigError& e) {
      throw ConfigError(fmt::format("{} (from the environment variable {})", e.what(), name));
    }
  }
  for (const auto& [index, raw] : given_) {
    const Option& o = table[index];
    if (app_.count(o.flag) > 0) apply_text(cfg, o, *raw);
  }
  validate(cfg);
  return cfg;
}

// `[[cortex.routes]]` has no entry in the options table (it is an array of
// tables); the example shows it commented out.
constexpr const char* routes_example =
    "# Per agent-id routes, first match wins (agents: an id, or a prefix ending in *;\n"
    "# backend: builtin, workers, workers_then_builtin or http with url). None by default.\n"
    "# [[cortex.routes]]\n"
    "# agents = \"support-*\"\n"
    "# backend = \"workers\"\n";

std::string example_toml() {
  const Config defaults;
  std::string out =
      "# Synapse configuration. Every key is optional; the values shown are the defaults.\n"
      "# Each key also has a command-line flag (shown after the description), which wins over this file.\n"
      "# Pass the file with: synapse serve --config FILE\n";
  std::string section;
  for (const auto& o : options()) {
    const std::string key = o.key;
    const auto dot = key.find('.');
    const std::string sec = key.substr(0, dot);
    if (sec != section) {
      if (section == "cortex") out += routes_example;
      section = sec;
      out += "\n[" + section + "]\n";
    }
    out += fmt::format("# {} ({})\n", o.help, o.flag);
    const std::string name = key.substr(dot + 1);
    std::visit(
        [&](auto ptr) {
          using T = std::decay_t<decltype(defaults.*ptr)>;
          const T& v = defaults.*ptr;
          if constexpr (std::is_same_v<T, std::string>) {
            out += fmt::format("{} = \"{}\"\n", name, v);
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            std::string items;
            for (std::size_t j = 0; j < v.size(); ++j) items += fmt::format("{}\"{}\"", j ? ", " : "", v[j]);
            out += fmt::format("{} = [{}]\n", name, items);
          } else if constexpr (std::is_same_v<T, double>) {
            std::string num = fmt::format("{}", v);
            if (num.find_first_of(".e") == std::string::npos) num += ".0";
            out += fmt::format("{} = {}\n", name, num);
          } else {
            out += fmt::format("{} = {}\n", name, render(defaults, o.member));
          }
        },
        o.member);
  }
  out +=
      "\n# MCP servers whose tools Synapse offers as <name>.<tool> (docs/mcp.md), one\n"
      "# [[mcp.servers]] table each; none by default. Each runs as a child over stdio.\n"
      "# [[mcp.servers]]\n"
      "# name = \"everything\"               # the tools' namespace: letters, digits, _ and -\n"
      "# command = \"mcp-server-everything\" # looked up in PATH unless it contains a /\n"
      "# args = [\"stdio\"]\n"
      "# env = { LOG_LEVEL = \"info\" }      # added to Synapse's environment\n"
      "# cwd = \"\"                          # empty: Synapse's working directory\n"
      "# timeout_ms = 30000                  # answer time allowed per request (tools/call, initialize, ping)\n"
      "# max_concurrent = 4                  # calls in flight at once; more are refused with overloaded\n";
  return out;
}

}  // namespace synapse::config
