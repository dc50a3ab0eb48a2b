// synapse-bench: a single-threaded epoll load generator for Synapse and for
// any server speaking the same Phoenix V2 protocol subset.
//
//   synapse-bench <scenario> --url ws://127.0.0.1:4000 --key KEY [options]
//
// Every scenario ends by itself, prints a table and exactly one line
// `RESULT {json}`.
#include <arpa/inet.h>

#include <cstring>
#include <iostream>

#include "common.hpp"

namespace {

const char* const kUsage = R"(usage: synapse-bench <scenario> --url ws://HOST:PORT --key KEY [options]

scenarios:
  connection_load      N connections connected, upgraded and joined (--sizes 100,500,1000,5000,10000)
  message_throughput   sustained rate, bursts, single-message fan-out, 10,000-subscriber fan-out
  latency              heartbeat and cortex ping round trips with idle connections alongside
  query_load           cortex queries over stored memories (Synapse only)
  presence             N members join one topic, every tenth with presence (Synapse only)
  cross_node           fan-out latency across two clustered nodes (shared Redis): subscribers
                       split over --url (node A, also the publisher's) and --url2 (node B)
  fairness             tenant B's query latency while tenant A (--key) saturates the cortex
                       workers; --key2 is B's key (another tenant) (Synapse only)
  agent_relay          agent workers streaming tokens to clients through the gateway: per-token
                       added latency (paced) and tokens/s relayed (max) (Synapse only)

common options:
  --url URL            ws://HOST:PORT[/path] or wss://; the path defaults to /cortex/websocket?vsn=2.0.0
  --tls                TLS on a ws:// URL (as wss://); the server's /metrics is then read over TLS too
  --tls-ca FILE        verify the server's certificate against FILE (default: not verified)
  --key KEY            API key, sent as ?api_key= (create it with --unlimited)
  --agent ID           the key's agent id, for cortex:<agent> (default: bench)
  --server-pid PID     read the server's RSS and CPU time from /proc/PID
  --label NAME         names the server in the output (default: server)
  --concurrency N      connection attempts in flight at once (default 256)
  --source-ips N       spread connections over 127.0.0.1..N as source addresses (default 4)
  --small              reduced sizes, for a smoke run
  --json-out FILE      also write the RESULT JSON to FILE
  --timeout-s S        bound on any one wait (default 60; query_load 120)

connection_load:     --sizes LIST  --settle-ms MS  --topic T
message_throughput:  --only sustained,burst,single,fanout  --topic T  --payload-bytes N  --drain-s S
                     --sustained-subs N --sustained-rate R --sustained-duration S
                     --burst-subs LIST --burst-messages M
                     --single-subs LIST --single-repeats K --single-gap-ms MS
                     --fanout-subs N --fanout-rate R --fanout-duration S
                     --sync-stdin  (print "SYNC ready|done burst_N" around each burst and wait
                                    for a line on stdin; for attaching strace)
latency:             --idle LIST  --samples N
presence:            --members LIST (default 2500,5000,10000) --presence-every K (10) --rounds R (20)
                     --quiet-ms MS (no presence traffic for this long ends a size, 400)
cross_node:          --url2 URL (node B; path and key as --url's)  --subs N (1000, half per node)
                     --rate R (100 msg/s)  --duration S (10)  --payload-bytes N  --topic T
                     --server-pid2 PID (node B)  --redis-pid PID  --drain-s S (5)
                     --warmup-s S (5)  --warmup-gap-ms MS (20)  --quiet-ms MS (300)
query_load:          --memories N --store-connections N --query-connections N --in-flight N
                     --duration S --vocabulary N --skip-store
agent_relay:         --worker-key KEY (required; keys create --worker --unlimited) --workers N (4)
                      --runs N (100) --tokens-per-s N (1000, paced phase) --duration S (5)
                      --window-kib N (256, max phase) --pacing staggered|aligned (staggered:
                      run i's tokens shifted by i/runs of the interval; aligned: all runs' tokens
                      at once) --tick-us N (the paced send tick: 100 staggered, 1000 aligned)
fairness:            --key2 KEY (required) --agent2 ID (bench2) --memories N (50000)
                     --store-connections N (8) --flood-connections N (8) --in-flight N (4)
                     --duration S (10) --idle-probes N (20) --probe-gap-ms MS (50) --vocabulary N (100)
)";

}  // namespace

int main(int argc, char** argv) {
  using namespace bench;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  Context ctx;
  ctx.t_start = now_ns();
  ctx.cpu_start = self_cpu();
  ctx.scenario = argv[1];
  std::string err;
  if (!ctx.args.parse(argc - 2, argv + 2, {"small", "sync-stdin", "skip-store", "help", "tls"}, &err)) {
    std::cerr << "synapse-bench: " << err << "\n";
    return 2;
  }
  if (ctx.args.has("help")) {
    std::cout << kUsage;
    return 0;
  }
  const auto url = ctx.args.str("url", "ws://127.0.0.1:4000");
  if (!parse_url(url, ctx.target, &err)) {
    std::cerr << "synapse-bench: " << err << "\n";
    return 2;
  }
  if (ctx.args.has("tls")) ctx.target.tls = true;
  if (ctx.target.tls || ctx.args.str("url2", "").rfind("wss://", 0) == 0) {
    if (!init_tls_client(ctx.args.str("tls-ca", ""), &err)) {
      std::cerr << "synapse-bench: " << err << "\n";
      return 2;
    }
  }
  ctx.key = ctx.args.str("key");
  ctx.agent = ctx.args.str("agent", "bench");
  ctx.label = ctx.args.str("label", "server");
  ctx.server_pid = static_cast<int>(ctx.args.integer("server-pid", 0));
  ctx.concurrency = static_cast<std::size_t>(std::max<std::int64_t>(1, ctx.args.integer("concurrency", 256)));
  ctx.small = ctx.args.has("small");
  if (ctx.target.path.empty()) ctx.target.path = "/cortex/websocket?vsn=2.0.0";
  if (!ctx.key.empty()) {
    ctx.target.path += (ctx.target.path.find('?') == std::string::npos ? "?" : "&");
    ctx.target.path += "api_key=" + ctx.key;
  }
  // Several loopback source addresses, so ephemeral ports never run out.
  const auto nsrc = ctx.args.integer("source-ips", 4);
  if ((ntohl(ctx.target.addr.sin_addr.s_addr) >> 24) == 127) {
    for (std::int64_t i = 1; i <= nsrc; ++i) {
      in_addr a{};
      a.s_addr = htonl((127u << 24) | static_cast<std::uint32_t>(i));
      ctx.target.sources.push_back(a);
    }
  }
  const auto files = raise_fd_limit();
  if (ctx.server_pid > 0 && !sample_proc(ctx.server_pid).ok) {
    std::cerr << "synapse-bench: no process " << ctx.server_pid << " (--server-pid)\n";
    return 2;
  }

  try {
    if (ctx.scenario == "connection_load") {
      if (files < 10100) std::cerr << "synapse-bench: warning: only " << files << " open files allowed\n";
      return run_connection_load(ctx);
    }
    if (ctx.scenario == "message_throughput") return run_message_throughput(ctx);
    if (ctx.scenario == "latency") return run_latency(ctx);
    if (ctx.scenario == "query_load") return run_query_load(ctx);
    if (ctx.scenario == "presence") return run_presence(ctx);
    if (ctx.scenario == "cross_node") return run_cross_node(ctx);
    if (ctx.scenario == "fairness") return run_fairness(ctx);
    if (ctx.scenario == "agent_relay") return run_agent_relay(ctx);
  } catch (const std::exception& e) {
    std::cerr << "synapse-bench: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "synapse-bench: unknown scenario " << ctx.scenario << "\n" << kUsage;
  return 2;
}
