// synapse: the command line. `serve` runs the gateway; `keys` manages API
// keys in the data directory; `config example` prints every option.
#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "core/crypto.hpp"
#include "cluster/agent_relay.hpp"
#include "cluster/redis_connection_counts.hpp"
#include "cluster/run_mirror.hpp"
#include "auth/jwks.hpp"
#include "auth/key_store.hpp"
#include "channels/mcp_endpoint.hpp"
#include "channels/agent_channel.hpp"
#include "channels/channel_registry.hpp"
#include "channels/cortex_channel.hpp"
#include "channels/pubsub_channel.hpp"
#include "channels/services.hpp"
#include "hooks/hooks.hpp"
#include "config/config.hpp"
#include "core/json_log.hpp"
#include "cortex/agent_hub.hpp"
#include "cortex/agent_routes.hpp"
#include "cortex/cortex.hpp"
#include "cortex/mcp_client.hpp"
#include "cortex/http_backend.hpp"
#include "cortex/runs.hpp"
#include "limits/accept_gate.hpp"
#include "limits/connection_limiter.hpp"
#include "metrics/metrics.hpp"
#include "net/admin_backend.hpp"
#include "net/http_api.hpp"
#include "net/server.hpp"
#include "net/tls.hpp"
#include "pubsub/history_log.hpp"
#include "pubsub/local_broker.hpp"
#include "pubsub/redis_broker.hpp"
#include "redis/link.hpp"

namespace fs = std::filesystem;
using namespace synapse;

namespace {

constexpr int exit_usage = 2;

std::string db_path(const std::string& data_dir) { return (fs::path(data_dir) / "synapse.db").string(); }

// The accept gate's limits for this process: the soft descriptor limit is
// raised to the hard one, and what is left after the descriptors already
// open (plus a margin for SQLite connections, Redis and child processes
// opened later) is the sockets' capacity.
limits::AcceptLimits accept_limits(const config::Config& cfg) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  std::int64_t own = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/self/fd", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    ++own;
  }
  constexpr std::int64_t margin = 64;
  limits::AcceptLimits l;
  l.per_ip = cfg.ip_max_sockets;
  l.reserve = cfg.fd_reserve;
  l.capacity = rl.rlim_cur == RLIM_INFINITY ? 0
                                            : limits::socket_capacity(static_cast<std::int64_t>(rl.rlim_cur),
                                                                      own + margin);
  spdlog::info("descriptors: limit {}, {} for client sockets ({} reserved), {} per address",
               static_cast<std::int64_t>(rl.rlim_cur), l.capacity, std::min(l.reserve, l.capacity / 2), l.per_ip);
  return l;
}

void ensure_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create data directory " + dir + ": " + ec.message());
}

// The configured secret, or the one kept in <data_dir>/jwt.secret, created
// on first use with mode 0600.
std::string load_jwt_secret(const config::Config& cfg) {
  if (!cfg.jwt_secret.empty()) return cfg.jwt_secret;
  const fs::path path = fs::path(cfg.data_dir) / "jwt.secret";
  if (fs::exists(path)) {
    std::ifstream in(path, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    if (s.size() < 32) throw std::runtime_error(path.string() + " holds fewer than 32 bytes");
    return s;
  }
  const std::string secret = core::base64url_encode(core::random_bytes(48));
  const mode_t old = ::umask(077);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << secret << '\n';
    if (!out) throw std::runtime_error("cannot write " + path.string());
  }
  ::umask(old);
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  spdlog::info("generated a JWT secret in {}", path.string());
  return secret;
}

// Where revocations are announced to every node of a cluster (a channel,
// and a set of the same name for nodes that were away).
std::string revocation_channel(const redis::Url& url) { return pubsub::redis_prefix(url.db) + "revoked"; }

// Where key rows are announced (`keys create --redis`): a channel, and a hash
// of the same name (id -> row) for nodes that were away. Rows hold the
// key's hash, never its secret.
std::string key_channel(const redis::Url& url) { return pubsub::redis_prefix(url.db) + "keys"; }

void import_key(auth::KeyStore& keys, const std::string& row) {
  try {
    auto parsed = auth::KeyStore::parse_row(row);
    if (!parsed) {
      spdlog::warn("ignored a malformed key row from Redis");
      return;
    }
    if (keys.import(parsed->first, parsed->second)) spdlog::info("key {} learned through Redis", parsed->first.id);
  } catch (const std::exception& e) {
    spdlog::warn("could not record a key row from Redis: {}", e.what());
  }
}

// The identity provider's JWKS: fetched over HTTP on the client's thread,
// or read from a file (small and local, so read where the refresh runs).
std::unique_ptr<auth::JwksCache> make_jwks(const config::Config& cfg, hooks::HttpClient& client) {
  if (cfg.jwks_url.empty() && cfg.jwks_file.empty()) return nullptr;
  auth::JwksCache::Options o;
  o.source = cfg.jwks_url.empty() ? cfg.jwks_file : cfg.jwks_url;
  o.refresh_every = std::chrono::seconds(cfg.jwks_refresh_s);
  o.min_refresh = std::chrono::milliseconds(cfg.jwks_min_refresh_ms);
  auth::JwksCache::Fetch fetch;
  if (!cfg.jwks_url.empty()) {
    hooks::ClientRequest req;
    req.url = *hooks::parse_http_url(cfg.jwks_url);  // validated with the config
    req.timeout = std::chrono::seconds(5);
    fetch = [&client, req](auth::JwksCache::FetchDone done) {
      client.request(req, [done = std::move(done)](hooks::ClientResponse r) {
        if (!r.ok) return done(false, r.error);
        if (r.status != 200) return done(false, "HTTP " + std::to_string(r.status));
        done(true, std::move(r.body));
      });
    };
  } else {
    fetch = [path = cfg.jwks_file](auth::JwksCache::FetchDone done) {
      std::ifstream in(path, std::ios::binary);
      if (!in) return done(false, "cannot read " + path);
      std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      done(true, std::move(s));
    };
  }
  return std::make_unique<auth::JwksCache>(std::move(o), std::move(fetch));
}

// Who answers each agent (docs/protocol.md section 10): one AgentRoute per
// `[[cortex.routes]]` table, in order, and the default from `[cortex]
// backend`. Backends that are not the hub are made here and kept in
// `owned`. Returns an error message, empty when every route could be built.
std::string build_routes(const config::Config& cfg, cortex::AgentBackend& hub, cortex::AgentRoutes& routes,
                         std::vector<std::unique_ptr<cortex::AgentBackend>>& owned) {
  auto make = [&](const std::string& pattern, const std::string& backend, const std::string& url,
                  cortex::AgentRoute& out) -> std::string {
    out.pattern = pattern;
    out.name = backend;
    if (backend == "builtin") return {};
    if (backend == "workers" || backend == "workers_then_builtin") {
      out.backend = &hub;
      out.fallback_builtin = backend == "workers_then_builtin";
      return {};
    }
    if (backend == "http") {
      if (url.empty()) return "backend http needs url";
      // ---- HTTP BACKEND: construct it here --------------------------------
      // The streaming HTTP backend (cortex/http_backend.*, issue 12 item 7),
      // with an HTTP client thread of its own per route.
      cortex::HttpBackendOptions o;
      o.url = url;
      o.secret = cfg.hook_secret;
      try {
        owned.push_back(std::make_unique<cortex::HttpBackend>(std::move(o)));
      } catch (const std::invalid_argument& e) {
        return e.what();
      }
      out.backend = owned.back().get();
      return {};
      // ---------------------------------------------------------------------
    }
    return "unknown backend " + backend;
  };
  for (std::size_t i = 0; i < cfg.routes.size(); ++i) {
    cortex::AgentRoute r;
    const auto& c = cfg.routes[i];
    if (auto err = make(c.agents, c.backend, c.url, r); !err.empty()) {
      return "cortex.routes[" + std::to_string(i) + "]: " + err;
    }
    routes.add(std::move(r));
  }
  cortex::AgentRoute d;
  if (auto err = make("*", cfg.backend, {}, d); !err.empty()) return "cortex.backend: " + err;
  routes.set_default(std::move(d));
  return {};
}

std::unique_ptr<hooks::Hooks> make_hooks(const config::Config& cfg, hooks::HttpClient& client) {
  hooks::HooksOptions o;
  o.timeout = std::chrono::milliseconds(cfg.hook_timeout_ms);
  o.secret = cfg.hook_secret;
  const std::pair<const std::string*, const std::string*> per_hook[] = {
      {&cfg.hook_connect_url, &cfg.hook_connect_failure},
      {&cfg.hook_join_url, &cfg.hook_join_failure},
      {&cfg.hook_publish_url, &cfg.hook_publish_failure}};
  bool any = false;
  for (std::size_t i = 0; i < 3; ++i) {
    if (per_hook[i].first->empty()) continue;
    o.targets[i].url = hooks::parse_http_url(*per_hook[i].first);
    o.targets[i].allow_on_failure = *per_hook[i].second == "allow";
    any = true;
  }
  if (!any) return nullptr;  // no hook, no cost
  return std::make_unique<hooks::Hooks>(std::move(o), client);
}

void revoke_locally(auth::KeyStore& keys, const std::string& id) {
  try {
    if (keys.revoke(id)) spdlog::info("key {} revoked through Redis", id);
  } catch (const std::exception& e) {
    spdlog::warn("could not record the revocation of key {}: {}", id, e.what());
  }
}

// Held while a node creates what the data directory holds once (the JWT
// secret, the first admin key): nodes of a cluster that share the directory
// and start together must not each create their own.
class DataDirLock {
 public:
  explicit DataDirLock(const std::string& dir) {
    fd_ = ::open((fs::path(dir) / ".init.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd_ >= 0) ::flock(fd_, LOCK_EX);
  }
  ~DataDirLock() { release(); }
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;
  void release() {
    if (fd_ >= 0) ::close(fd_);  // closing drops the lock
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

int serve(const config::Config& cfg) {
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  if (cfg.log_format == "json") logging::use_json_format();
  std::signal(SIGPIPE, SIG_IGN);
  // TLS first: a certificate or key that cannot be used stops the start
  // before anything is opened. Declared before the I/O threads, whose
  // sessions count their handshakes in it.
  std::unique_ptr<net::TlsContext> tls;
  if (!cfg.tls_cert.empty()) {
    try {
      tls = std::make_unique<net::TlsContext>(cfg.tls_cert, cfg.tls_key);
    } catch (const std::exception& e) {
      spdlog::critical("cannot serve TLS: {}", e.what());
      return 1;
    }
  }
  ensure_dir(cfg.data_dir);
  DataDirLock init_lock(cfg.data_dir);
  const std::string secret = load_jwt_secret(cfg);
  auth::KeyStore keys(db_path(cfg.data_dir));

  const std::size_t n_threads =
      cfg.threads > 0 ? static_cast<std::size_t>(cfg.threads) : std::max(1u, std::thread::hardware_concurrency());
  metrics::Metrics metrics;
  // The limiter and the accept gate before the threads: a permit points at
  // their map entries, and the sockets and HTTP sessions still waiting in a
  // thread's io_context at shutdown give theirs back only when the threads
  // are destroyed, so both must outlive them.
  limits::ConnectionLimiter limiter(
      limits::ConnectionLimits{cfg.ip_max_connections, cfg.ip_new_per_min, cfg.key_max_connections});
  limits::AcceptGate accept_gate(accept_limits(cfg));
  net::IoThreads threads(n_threads);

  // One broker: in process, or shared with the other nodes through Redis.
  // The link is stopped before the broker it calls goes away.
  std::unique_ptr<pubsub::HistoryLog> history_log;  // outlives the broker that writes it
  std::unique_ptr<pubsub::LocalBroker> local_broker;
  std::unique_ptr<redis::Link> link;
  std::unique_ptr<pubsub::RedisBroker> redis_broker;
  std::unique_ptr<cluster::RedisConnectionCounts> shared_counts;
  // Agent workers across the cluster (cluster/agent_relay.hpp): made once
  // the hub and the run registry exist, destroyed after the link stopped;
  // the link's thread finds it through the atomic pointer.
  std::unique_ptr<cluster::AgentRelay> agent_relay;
  std::atomic<cluster::AgentRelay*> relay_ptr{nullptr};
  std::string cluster_node;
  struct StopLink {
    std::unique_ptr<redis::Link>& link;
    ~StopLink() {
      if (link) link->stop();
    }
  } stop_link{link};
  // Cluster mode's run mirror (created with the run registry below); the
  // link's handlers find it through this once it exists.
  std::atomic<cluster::RunMirror*> mirror_at{nullptr};
  std::string node_instance;
  pubsub::Broker* broker = nullptr;
  if (cfg.redis.empty()) {
    pubsub::BrokerOptions bo;
    bo.history_size = static_cast<std::size_t>(cfg.history_size);
    bo.history_ttl_ms = cfg.history_ttl_s * 1000;
    bo.history_max_bytes_per_topic = static_cast<std::size_t>(cfg.history_max_bytes_per_topic);
    bo.history_max_bytes = static_cast<std::size_t>(cfg.history_max_bytes);
    bo.max_presence_bytes_per_topic = static_cast<std::size_t>(cfg.max_presence_bytes_per_topic);
    if (cfg.history_store == "disk") {
      const std::string path = (fs::path(cfg.data_dir) / "history.db").string();
      try {
        history_log = std::make_unique<pubsub::HistoryLog>(path);
      } catch (const std::exception& e) {
        spdlog::critical("cannot open the history store {}: {}", path, e.what());
        std::cerr << "synapse: cannot open the history store " << path << ": " << e.what() << std::endl;
        return 1;
      }
      bo.log = history_log.get();
    }
    local_broker = std::make_unique<pubsub::LocalBroker>(bo, threads.posters(), metrics);
    broker = local_broker.get();
  } else {
    const redis::Url url = *redis::parse_url(cfg.redis);  // validated with the config
    pubsub::RedisBrokerOptions ro;
    // The name is the operator's; the suffix makes each process a new
    // member of the cluster, so a node restarted under the same name before
    // its old heartbeat expired does not keep the dead process's presence
    // entries and connection counts alive (they are reaped as usual).
    ro.node_id = (cfg.node_id.empty() ? std::string("node") : cfg.node_id) + "." +
                 core::hex_encode(core::random_bytes(3));
    ro.prefix = pubsub::redis_prefix(url.db);
    ro.history_size = static_cast<std::size_t>(cfg.history_size);
    ro.history_ttl_ms = cfg.history_ttl_s * 1000;
    ro.node_ttl_ms = cfg.node_ttl_ms;
    ro.max_presence_bytes_per_topic = static_cast<std::size_t>(cfg.max_presence_bytes_per_topic);
    link = std::make_unique<redis::Link>(url, "synapse:" + ro.node_id);
    redis_broker = std::make_unique<pubsub::RedisBroker>(ro, *link, threads.posters(), metrics);
    auto* rb = redis_broker.get();
    // Revocations made with `synapse keys revoke --redis` on any host reach
    // this node's own key database; its revocation poll then closes the
    // key's connections. The set catches up a node that was away.
    const std::string revoked = revocation_channel(url);
    const std::string created = key_channel(url);
    auto* l = link.get();
    node_instance = ro.node_id;
    cluster_node = ro.node_id;
    link->set_handlers({[rb, &keys, revoked, created, &mirror_at, &relay_ptr](const std::string& channel,
                                                                               const std::string& payload) {
                          if (auto* m = mirror_at.load(std::memory_order_acquire); m && m->owns(channel)) {
                            m->on_message(channel, payload);
                            return;
                          }
                          if (auto* relay = relay_ptr.load(std::memory_order_acquire);
                              relay && relay->on_message(channel, payload)) {
                            return;
                          }
                          if (channel == revoked) {
                            revoke_locally(keys, payload);
                          } else if (channel == created) {
                            import_key(keys, payload);
                          } else {
                            rb->on_message(channel, payload);
                          }
                        },
                        [rb, l, &keys, revoked, created, &mirror_at] {
                          rb->on_up();
                          if (auto* m = mirror_at.load(std::memory_order_acquire)) m->on_up();
                          // Keys first, then revocations: a key created and
                          // revoked while this node was away ends up revoked.
                          l->command({"HVALS", created}, [l, &keys, revoked](redis::Reply r) {
                            for (const auto& row : r.elements) import_key(keys, row.str);
                            l->command({"SMEMBERS", revoked}, [&keys](redis::Reply r2) {
                              for (const auto& id : r2.elements) revoke_locally(keys, id.str);
                            });
                          });
                        },
                        [rb] { rb->on_down(); }});
    shared_counts = std::make_unique<cluster::RedisConnectionCounts>(*link, ro.prefix, ro.node_id,
                                                                    std::chrono::milliseconds(1000));
    rb->set_reregister_hook([&limiter, counts = shared_counts.get()] { counts->replace(limiter.shared_snapshot()); });
    const std::string err = link->start(std::chrono::seconds(5));
    if (!err.empty() || !rb->register_node()) {
      const std::string why = err.empty() ? "it did not answer" : err;
      spdlog::critical("cannot connect to Redis at {}: {}", url.text(), why);
      std::cerr << "synapse: cannot connect to Redis at " << url.text() << ": " << why << std::endl;
      return 1;
    }
    if (!link->subscribe(revoked, std::chrono::seconds(2))) spdlog::warn("could not subscribe to {}", revoked);
    if (!link->subscribe(created, std::chrono::seconds(2))) spdlog::warn("could not subscribe to {}", created);
    limiter.share(shared_counts.get());
    spdlog::info("cluster node {} on Redis {}", ro.node_id, url.text());
    broker = rb;
  }

  cortex::CortexOptions co;
  co.workers = static_cast<std::size_t>(cfg.workers);
  co.queue_limit = static_cast<std::size_t>(cfg.worker_queue);
  co.tenant_queue_limit = static_cast<std::size_t>(cfg.tenant_queue);
  co.budget.max_terms = static_cast<std::size_t>(cfg.query_max_terms);
  co.budget.time = std::chrono::milliseconds(cfg.query_budget_ms);
  co.debug_crash = cfg.debug_crash;
  co.ranking.bm25_weight = cfg.rank_bm25_weight;
  co.ranking.recency_weight = cfg.rank_recency_weight;
  co.ranking.importance_weight = cfg.rank_importance_weight;
  co.ranking.recency_half_life_h = cfg.rank_recency_half_life_h;
  co.ranking.candidates = static_cast<std::size_t>(cfg.rank_candidates);
  cortex::Cortex cortex(co, db_path(cfg.data_dir));
  cortex::register_builtin_tools(cortex);
  cortex.tools().add("builtin", cortex::make_demo_tokens_tool(cortex));
  // The agent workers of this node; it outlives the run registry below,
  // whose runs' cancel hooks call it.
  cortex::AgentHub hub(cortex::HubOptions{cfg.redispatch_unstarted}, cortex.tools());
  cortex::RunOptions run_options;
  run_options.retention_ms = cfg.run_retention_s * 1000;
  run_options.detach_grace_ms = cfg.detach_grace_s * 1000;
  run_options.max_bytes_per_run = static_cast<std::size_t>(cfg.run_log_max_bytes_per_run);
  run_options.max_bytes_total = static_cast<std::size_t>(cfg.run_log_max_bytes);
  run_options.keep = cfg.run_log;
  cortex::RunRegistry runs(run_options);
  // Cluster mode: every run's log is copied to Redis, and a client on any
  // node attaches to a run of another (cluster/run_mirror.hpp).
  std::unique_ptr<cluster::RunMirror> run_mirror;
  if (link) {
    cluster::RunMirrorOptions mo;
    mo.prefix = pubsub::redis_prefix(redis::parse_url(cfg.redis)->db);
    mo.node_id = node_instance;
    mo.retention_ms = run_options.retention_ms;
    mo.node_ttl_ms = cfg.node_ttl_ms;
    run_mirror = std::make_unique<cluster::RunMirror>(mo, *link, runs);
    for (const auto& ch : run_mirror->channels()) {
      if (!link->subscribe(ch, std::chrono::seconds(2))) spdlog::warn("could not subscribe to {}", ch);
    }
    runs.set_observer(run_mirror.get());
    mirror_at.store(run_mirror.get(), std::memory_order_release);
    run_mirror->start();
  }

  // One client (and thread, and child process) per [[mcp.servers]] table.
  // Each starts its child and initializes it in the background: startup
  // never waits for a child, and its tools appear when it is ready. Owned
  // here, after the cortex whose registry they fill; stopped (children
  // killed) once the server stopped serving, before the cortex stops.
  std::vector<std::unique_ptr<cortex::McpServer>> mcp_servers;
  for (const auto& m : cfg.mcp_servers) {
    cortex::McpServerOptions o;
    o.name = m.name;
    o.command = m.command;
    o.args = m.args;
    o.env = m.env;
    o.cwd = m.cwd;
    o.timeout = std::chrono::milliseconds(m.timeout_ms);
    o.max_concurrent = static_cast<std::size_t>(m.max_concurrent);
    o.client_version = SYNAPSE_VERSION;
    mcp_servers.push_back(std::make_unique<cortex::McpServer>(std::move(o), cortex.tools()));
  }
  struct StopMcp {
    std::vector<std::unique_ptr<cortex::McpServer>>& servers;
    ~StopMcp() {
      for (auto& s : servers) s->stop();
    }
  } stop_mcp{mcp_servers};
  for (auto& s : mcp_servers) s->start();
  // Stops the relay before the registry and the hub it uses go away.
  struct StopRelay {
    std::unique_ptr<cluster::AgentRelay>& relay;
    ~StopRelay() {
      if (relay) relay->stop();
    }
  } stop_relay{agent_relay};
  if (link) {
    agent_relay = std::make_unique<cluster::AgentRelay>(*link, pubsub::redis_prefix(redis::parse_url(cfg.redis)->db),
                                                        cluster_node, hub, runs);
    relay_ptr.store(agent_relay.get(), std::memory_order_release);
    for (const auto& ch : agent_relay->channels()) {
      if (!link->subscribe(ch, std::chrono::seconds(2))) spdlog::warn("could not subscribe to {}", ch);
    }
    agent_relay->start_announcing();
  }
  // With a cluster, runs no local worker can take go to another node's.
  cortex::AgentBackend& workers_backend =
      agent_relay ? static_cast<cortex::AgentBackend&>(*agent_relay) : static_cast<cortex::AgentBackend&>(hub);
  cortex::AgentRoutes agent_routes;
  std::vector<std::unique_ptr<cortex::AgentBackend>> agent_backends;
  if (const std::string err = build_routes(cfg, workers_backend, agent_routes, agent_backends); !err.empty()) {
    spdlog::critical("{}", err);
    std::cerr << "synapse: " << err << std::endl;
    return exit_usage;
  }

  // The first admin key is created only once nothing else can fail before
  // listening (a missing Redis, say), so that it is not printed and lost.
  if (keys.count() == 0) {
    auth::NewKey spec;
    spec.name = "admin";
    spec.admin = true;
    spec.publish = true;
    auto [key, plain] = keys.create(spec);
    std::cout << "No API keys yet: created admin key " << key.id << " (agent \"" << key.agent_id
              << "\"). It is shown once; keep it:\n"
              << plain << std::endl;
  }
  init_lock.release();
  // JWKS fetches and hooks share one HTTP client thread. The cache is
  // destroyed before the client (it waits for a fetch still running).
  hooks::HttpClient http_client;
  std::unique_ptr<auth::JwksCache> jwks = make_jwks(cfg, http_client);
  std::optional<auth::IdentityProvider> idp;
  if (jwks) {
    if (!jwks->start(std::chrono::seconds(5))) {
      spdlog::warn("no usable JWKS from {} yet: identity-provider tokens are refused until a refresh loads one",
                   cfg.jwks_url.empty() ? cfg.jwks_file : cfg.jwks_url);
    }
    if (cfg.issuer.empty() || cfg.audience.empty()) {
      spdlog::warn("auth.issuer or auth.audience is empty: identity-provider tokens are not checked for it");
    }
    idp.emplace(auth::IdentityProvider{*jwks, auth::IdpOptions{cfg.issuer, cfg.audience, cfg.leeway_s}});
  }
  std::unique_ptr<hooks::Hooks> hooks = make_hooks(cfg, http_client);
  std::atomic<bool> draining{false};
  channels::Services services{cfg, metrics, keys, secret, *broker, cortex};
  services.draining = &draining;
  services.idp = idp ? &*idp : nullptr;
  services.hooks = hooks.get();
  services.runs = &runs;
  // The channel registry: topic kinds, first match wins (the catch-all last).
  channels::ChannelRegistry channel_kinds;
  channel_kinds.add({"cortex:*", "cortex", channels::join_cortex, {}});
  channel_kinds.add({"agent:*", "agent", channels::join_agent, {}});
  channel_kinds.add({"*", "pubsub", channels::join_pubsub, channels::pubsub_join_permitted});
  services.channels = &channel_kinds;
  services.hub = &hub;
  services.routes = &agent_routes;
  // The agent hub's gauges, beside every node's other extra samples.
  auto hub_samples = [&hub, &runs](std::vector<metrics::Sample> v) {
    const auto st = hub.stats();
    v.push_back({"synapse_agent_workers", "Agent workers joined to this node (one per agent-topic join)",
                 static_cast<double>(st.workers)});
    v.push_back({"synapse_agent_worker_runs", "Runs an agent worker of this node is serving now",
                 static_cast<double>(st.runs)});
    v.push_back({"synapse_run_log_bytes", "Bytes this node's run logs hold (events kept for attach)",
                 static_cast<double>(runs.bytes())});
    return v;
  };
  net::HttpContext http{cfg, services, limiter, draining, [&] {
                          return hub_samples(std::vector<metrics::Sample>{
                              {"synapse_io_threads", "I/O threads", static_cast<double>(n_threads)},
                              {"synapse_workers", "Cortex worker threads", static_cast<double>(cfg.workers)}});
                        },
                        {}};
  if (link) {
    http.backplane_up = [l = link.get()] { return l->up(); };
    http.extra_samples = [n_threads, &cfg, l = link.get(), hub_samples] {
      return hub_samples(std::vector<metrics::Sample>{
          {"synapse_io_threads", "I/O threads", static_cast<double>(n_threads)},
          {"synapse_workers", "Cortex worker threads", static_cast<double>(cfg.workers)},
          {"synapse_redis_up", "1 while the link to Redis is up", l->up() ? 1.0 : 0.0},
          {"synapse_redis_reconnects", "Reconnections to Redis since start", static_cast<double>(l->reconnects())}});
    };
  }
  if (!mcp_servers.empty()) {
    // MCP servers on /metrics: how many are configured, ready, and how many
    // child processes were started in all (1 per server when none restarted).
    http.extra_samples = [base = http.extra_samples, &mcp_servers] {
      auto v = base();
      double ready = 0, starts = 0;
      for (const auto& s : mcp_servers) {
        ready += s->ready() ? 1 : 0;
        starts += static_cast<double>(s->starts());
      }
      v.push_back({"synapse_mcp_servers", "Configured MCP servers ([[mcp.servers]])",
                   static_cast<double>(mcp_servers.size())});
      v.push_back({"synapse_mcp_servers_ready", "MCP servers whose tools can run now", ready});
      v.push_back({"synapse_mcp_server_starts", "MCP server child processes started since start (restarts included)",
                   starts});
      return v;
    };
  }
  if (tls) {
    http.tls = tls.get();
    http.extra_samples = [base = http.extra_samples, t = tls.get()] {
      auto v = base();
      auto n = [](const std::atomic<std::uint64_t>& c) { return static_cast<double>(c.load()); };
      v.push_back({"synapse_tls_handshakes", "TLS handshakes completed since start", n(t->handshakes)});
      v.push_back({"synapse_tls_handshake_failures",
                   "TLS handshakes that failed since start (plain HTTP on the TLS port included)",
                   n(t->handshake_failures)});
      v.push_back({"synapse_tls_reloads", "Certificate reloads (SIGHUP) that took effect", n(t->reloads)});
      v.push_back({"synapse_tls_reload_failures", "Certificate reloads that failed (the previous one kept)",
                   n(t->reload_failures)});
      v.push_back({"synapse_tls_cert_not_after_seconds", "The served certificate's notAfter (Unix time)",
                   static_cast<double>(t->not_after_unix.load())});
      return v;
    };
  }
  http.accept_gate = &accept_gate;
  const auto admin_backend = net::make_admin_backend(threads);
  http.admin = admin_backend.get();
  // Before the server, so it outlives every connection that calls it.
  std::unique_ptr<channels::McpEndpoint> mcp;
  if (cfg.mcp_enabled) mcp = std::make_unique<channels::McpEndpoint>(services);
  http.mcp = mcp.get();
  net::Server server(threads, http, draining);
  try {
    server.listen(cfg.bind, static_cast<std::uint16_t>(cfg.port));
  } catch (const std::exception& e) {
    spdlog::critical("cannot listen on {}:{}: {}", cfg.bind, cfg.port, e.what());
    return 1;
  }
  spdlog::info("synapse listening on {}:{} (threads={}, workers={}, data={}{})", cfg.bind, server.port(), n_threads,
               cfg.workers, cfg.data_dir, tls ? ", TLS" : "");
  // Scripts and tests wait for this line.
  std::cout << "listening on " << cfg.bind << ":" << server.port() << std::endl;
  const int rc = server.run();
  for (auto& s : mcp_servers) s->stop();  // kills the children (by PID, process group and all)
  cortex.stop();  // workers post to I/O threads: stop them while those exist
  agent_backends.clear();  // so do the HTTP backends' client threads (runs outlive them)
  // Connections a drain timeout left open go now, on this thread (the I/O
  // threads have stopped), while the broker and the limiter they leave and
  // give their counts back to still exist.
  for (std::size_t i = 0; i < threads.size(); ++i) threads[i].connections.clear();
  // HTTP sessions and sockets still queued in the stopped threads' io_contexts
  // give their permits back only when `threads` is destroyed, which is after
  // the cluster's shared counts and their link: from here on a permit counts
  // down locally only (the node's counts in Redis go with its heartbeat).
  limiter.share(nullptr);
  // The mirror's work runs on the link's thread: both stop before the run
  // registry they use goes away.
  if (run_mirror) {
    run_mirror->stop();
    link->stop();
  }
  return rc;
}

std::string flags_of(const auth::ApiKey& k) {
  std::string f;
  if (k.admin) f += "admin ";
  if (k.publish) f += "publish ";
  if (k.unlimited) f += "unlimited ";
  if (k.worker) f += "worker ";
  if (!f.empty()) f.pop_back();
  return f.empty() ? "-" : f;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Synapse: a real-time WebSocket gateway for AI agents (Phoenix Channels V2)"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "Print the version and exit");

  // serve
  auto* serve_cmd = app.add_subcommand("serve", "Run the gateway");
  std::string config_file;
  serve_cmd->add_option("--config", config_file, "TOML configuration file (flags override it)")
      ->check(CLI::ExistingFile)
      ->envname("SYNAPSE_CONFIG");
  // `--dev`, `--dev true|false` or SYNAPSE_DEV=1, like the boolean options.
  std::string dev_text;
  serve_cmd
      ->add_option("--dev", dev_text,
                   "Local development defaults: localhost browser origins, no new-connection rate limit, debug logs "
                   "(a file, SYNAPSE_* variables and flags still override them) [default: false]")
      ->expected(0, 1)
      ->type_name("BOOL")
      ->envname("SYNAPSE_DEV");
  config::Binder binder(*serve_cmd);

  // keys
  auto* keys_cmd = app.add_subcommand("keys", "Manage API keys");
  keys_cmd->require_subcommand(1);
  std::string data_dir = "./data";
  auto add_data_dir = [&](CLI::App* c) {
    c->add_option("--data-dir", data_dir, "Data directory holding synapse.db")->capture_default_str();
  };
  auth::NewKey spec;
  auto* create = keys_cmd->add_subcommand("create", "Create a key; the key alone is printed on the last line");
  create->add_option("--name", spec.name, "A name for the key")->required();
  create->add_option("--agent", spec.agent_id, "Agent id the key acts as (default: the name)");
  create->add_option("--tenant", spec.tenant, "Tenant whose memories the key sees (default: default)");
  create->add_flag("--admin", spec.admin, "May join any cortex topic and mint tokens for any agent");
  create->add_flag("--publish", spec.publish, "May use POST /api/broadcast");
  create->add_flag("--unlimited", spec.unlimited, "Skips rate and per-key connection limits");
  create->add_flag("--worker", spec.worker,
                   "An agent worker's key: serves its agent on agent:<agent_id> (--agent '*': every agent of its "
                   "tenant) and may not query cortex topics");
  create->add_option("--msgs-per-min", spec.rates.msgs_per_min, "Override: messages per minute")->check(CLI::NonNegativeNumber);
  create->add_option("--queries-per-min", spec.rates.queries_per_min, "Override: queries per minute")
      ->check(CLI::NonNegativeNumber);
  create->add_option("--burst", spec.rates.burst, "Override: message burst")->check(CLI::NonNegativeNumber);
  // Channel capabilities: giving any of them restricts the key to what is given.
  std::array<std::vector<std::string>, 4> cap_patterns;
  for (std::size_t i = 0; i < auth::capability_names.size(); ++i) {
    const std::string name(auth::capability_names[i]);
    create->add_option("--can-" + name, cap_patterns[i],
                       "Topic pattern the key may " + name + " (repeatable; e.g. room:*). With any --can-* option, "
                       "what is not listed is refused")
        ->take_all();
  }
  std::string create_redis;
  create->add_option("--redis", create_redis,
                     "Also announce the key on this Redis (redis://HOST:PORT[/DB]): every cluster node learns it "
                     "within a second (its hash, never the secret)");
  add_data_dir(create);
  bool as_json = false;
  auto* list = keys_cmd->add_subcommand("list", "List keys (never their secrets)");
  list->add_flag("--json", as_json, "One JSON object per line");
  add_data_dir(list);
  std::string revoke_id;
  auto* revoke = keys_cmd->add_subcommand("revoke", "Revoke a key; its live connections close with 4003 within seconds");
  revoke->add_option("id", revoke_id, "Key id (see keys list)")->required();
  std::string revoke_redis;
  revoke->add_option("--redis", revoke_redis,
                     "Also announce it on this Redis (redis://HOST:PORT[/DB]): every cluster node records it in its "
                     "own key database and closes the key's connections");
  add_data_dir(revoke);

  // config
  auto* config_cmd = app.add_subcommand("config", "Configuration helpers");
  config_cmd->require_subcommand(1);
  auto* example = config_cmd->add_subcommand("example", "Print an example TOML file with every option and its default");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : exit_usage;
  }

  if (show_version) {
    std::cout << "synapse " << SYNAPSE_VERSION << "\n";
    return 0;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << app.help() << "synapse: a subcommand is required (serve, keys, config)\n";
    return exit_usage;
  }
  try {
    if (*serve_cmd) {
      config::Config cfg;
      try {
        const bool dev_profile = (serve_cmd->count("--dev") > 0 || !dev_text.empty()) && dev_text != "false" &&
                                 dev_text != "0" && dev_text != "no" && dev_text != "off";
        cfg = binder.finish(config_file, dev_profile);
      } catch (const config::ConfigError& e) {
        std::cerr << "synapse: " << e.what() << "\n";
        return exit_usage;
      }
      return serve(cfg);
    }
    if (*example) {
      std::cout << config::example_toml();
      return 0;
    }
    ensure_dir(data_dir);
    auth::KeyStore keys(db_path(data_dir));
    if (*create) {
      if (spec.name.empty()) {
        std::cerr << "synapse: --name must not be empty\n";
        return exit_usage;
      }
      if (spec.worker && spec.admin) {
        std::cerr << "synapse: --worker and --admin do not go together (a worker key serves agents only)\n";
        return exit_usage;
      }
      bool restricted = false;
      for (const auto& p : cap_patterns) restricted |= !p.empty();
      if (restricted) {
        auth::Capabilities caps;
        caps.patterns = cap_patterns;
        spec.caps = caps;
      }
      std::optional<redis::Url> url;
      if (!create_redis.empty()) {
        std::string why;
        url = redis::parse_url(create_redis, &why);
        if (!url) {
          std::cerr << "synapse: --redis '" << create_redis << "': " << why << "\n";
          return exit_usage;
        }
      }
      auto [key, plain] = keys.create(spec);
      if (url) {
        // The hash first (for nodes that were away), then the message.
        const std::string row = auth::KeyStore::row_json(key, keys.hash_of(key.id));
        redis::Link link(*url, "synapse:cli");
        const std::string err = link.start(std::chrono::seconds(3));
        const std::string channel = key_channel(*url);
        redis::Reply r;
        if (err.empty()) r = link.call({"HSET", channel, key.id, row}, std::chrono::seconds(3));
        if (err.empty() && r.ok()) r = link.call({"PUBLISH", channel, row}, std::chrono::seconds(3));
        link.stop();
        if (!err.empty() || !r.ok()) {
          std::cerr << "synapse: the key was created here but could not be announced on " << url->text() << ": "
                    << (err.empty() ? r.str : err) << "\n";
          return 1;
        }
      }
      std::cout << "created key " << key.id << " name=" << key.name << " agent=" << key.agent_id
                << " tenant=" << key.tenant << " flags=" << flags_of(key) << "\n"
                << "the key is shown once, on the next line:\n"
                << plain << std::endl;
      return 0;
    }
    if (*list) {
      const auto all = keys.list();
      if (!as_json) std::printf("%-14s %-16s %-16s %-10s %-22s %-10s %s\n", "ID", "NAME", "AGENT", "TENANT", "FLAGS", "CREATED", "REVOKED");
      for (const auto& k : all) {
        if (as_json) {
          boost::json::object o{{"id", k.id},         {"name", k.name},       {"agent_id", k.agent_id},
                                {"tenant", k.tenant}, {"admin", k.admin},     {"publish", k.publish},
                                {"unlimited", k.unlimited}, {"worker", k.worker},
                                {"created_at", k.created_at}};
          o["revoked_at"] = k.revoked_at ? boost::json::value(*k.revoked_at) : boost::json::value(nullptr);
          if (k.caps) o["caps"] = boost::json::parse(auth::capabilities_json(*k.caps));
          std::cout << boost::json::serialize(o) << "\n";
        } else {
          std::printf("%-14s %-16s %-16s %-10s %-22s %-10lld %s\n", k.id.c_str(), k.name.c_str(), k.agent_id.c_str(),
                      k.tenant.c_str(), flags_of(k).c_str(), static_cast<long long>(k.created_at),
                      k.revoked_at ? std::to_string(*k.revoked_at).c_str() : "-");
        }
      }
      return 0;
    }
    if (*revoke) {
      std::optional<redis::Url> url;
      if (!revoke_redis.empty()) {
        std::string why;
        url = redis::parse_url(revoke_redis, &why);
        if (!url) {
          std::cerr << "synapse: --redis '" << revoke_redis << "': " << why << "\n";
          return exit_usage;
        }
      }
      const bool here = keys.revoke(revoke_id);
      if (!here && !url) {
        std::cerr << "synapse: no key with id " << revoke_id << "\n";
        return 1;
      }
      if (here) std::cout << "revoked " << revoke_id << "\n";
      if (url) {
        // The set first: a node that misses the message finds it there.
        redis::Link link(*url, "synapse:cli");
        const std::string err = link.start(std::chrono::seconds(3));
        const std::string channel = revocation_channel(*url);
        redis::Reply r;
        if (err.empty()) r = link.call({"SADD", channel, revoke_id}, std::chrono::seconds(3));
        if (err.empty() && r.ok()) r = link.call({"PUBLISH", channel, revoke_id}, std::chrono::seconds(3));
        link.stop();
        if (!err.empty() || !r.ok()) {
          std::cerr << "synapse: could not announce the revocation on " << url->text() << ": "
                    << (err.empty() ? r.str : err) << "\n";
          return 1;
        }
        std::cout << "announced to the cluster on " << url->text() << " (" << r.as_int() << " nodes listening)\n";
      }
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "synapse: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
