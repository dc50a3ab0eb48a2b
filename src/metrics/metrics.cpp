#include "metrics/metrics.hpp"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace synapse::metrics {

std::string_view refusal_name(Refusal r) noexcept {
  switch (r) {
    case Refusal::unauthorized: return "unauthorized";
    case Refusal::token_expired: return "token_expired";
    case Refusal::forbidden_origin: return "forbidden_origin";
    case Refusal::unsupported_version: return "unsupported_version";
    case Refusal::too_many_connections: return "too_many_connections";
    case Refusal::connection_rate_exceeded: return "connection_rate_exceeded";
    case Refusal::bad_request: return "bad_request";
    case Refusal::handshake_timeout: return "handshake_timeout";
    case Refusal::draining: return "draining";
    case Refusal::store_unavailable: return "store_unavailable";
    case Refusal::overloaded: return "overloaded";
    case Refusal::count_: break;
  }
  return "unknown";
}

std::string_view run_end_name(RunEnd e) noexcept {
  switch (e) {
    case RunEnd::result: return "result";
    case RunEnd::error: return "error";
    case RunEnd::interrupted: return "interrupted";
    case RunEnd::timeout: return "timeout";
    case RunEnd::cancelled: return "cancelled";
    case RunEnd::count_: break;
  }
  return "unknown";
}

void Metrics::count_close(std::uint16_t code) noexcept {
  for (std::size_t i = 0; i < tracked_close_codes.size(); ++i) {
    if (tracked_close_codes[i] == code) {
      bump(closes[i]);
      return;
    }
  }
  bump(closes[tracked_close_codes.size()]);
}

namespace {
std::uint64_t v(const Counter& c) { return c.load(std::memory_order_relaxed); }

void counter(std::string& out, std::string_view name, std::string_view help, std::uint64_t value) {
  fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
}
void gauge(std::string& out, std::string_view name, std::string_view help, double value) {
  fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, value);
}
}  // namespace

std::string render_prometheus(const Metrics& m, const std::vector<Sample>& extra) {
  std::string out;
  out.reserve(4096);
  gauge(out, "synapse_connections_open", "WebSocket connections currently open",
        static_cast<double>(m.connections_open.load(std::memory_order_relaxed)));
  counter(out, "synapse_connections_total", "WebSocket connections accepted", v(m.connections_total));

  out += "# HELP synapse_connections_refused_total Upgrade requests refused, by reason\n"
         "# TYPE synapse_connections_refused_total counter\n";
  for (std::size_t i = 0; i < m.refusals.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "synapse_connections_refused_total{{reason=\"{}\"}} {}\n",
                   refusal_name(static_cast<Refusal>(i)), v(m.refusals[i]));
  }
  out += "# HELP synapse_connections_closed_total Connections closed, by close code\n"
         "# TYPE synapse_connections_closed_total counter\n";
  for (std::size_t i = 0; i < tracked_close_codes.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "synapse_connections_closed_total{{code=\"{}\"}} {}\n",
                   tracked_close_codes[i], v(m.closes[i]));
  }
  fmt::format_to(std::back_inserter(out), "synapse_connections_closed_total{{code=\"other\"}} {}\n",
                 v(m.closes[tracked_close_codes.size()]));

  counter(out, "synapse_frames_in_total", "WebSocket messages received", v(m.frames_in));
  counter(out, "synapse_bytes_in_total", "Bytes received on WebSocket connections", v(m.bytes_in));
  counter(out, "synapse_frames_out_total", "WebSocket messages sent", v(m.frames_out));
  counter(out, "synapse_bytes_out_total", "Bytes sent on WebSocket connections", v(m.bytes_out));
  counter(out, "synapse_write_syscalls_total", "writev calls on WebSocket connections", v(m.write_syscalls));
  counter(out, "synapse_malformed_frames_total", "Client frames answered with malformed_frame",
          v(m.malformed_frames));
  out += "# HELP synapse_rate_limited_total Client messages refused by a rate limit, by bucket\n"
         "# TYPE synapse_rate_limited_total counter\n";
  fmt::format_to(std::back_inserter(out), "synapse_rate_limited_total{{bucket=\"messages\"}} {}\n",
                 v(m.rate_limited[0]));
  fmt::format_to(std::back_inserter(out), "synapse_rate_limited_total{{bucket=\"queries\"}} {}\n",
                 v(m.rate_limited[1]));
  counter(out, "synapse_http_requests_total", "Plain HTTP requests served", v(m.http_requests));
  counter(out, "synapse_publishes_total", "Messages published to pub/sub topics", v(m.publishes));
  counter(out, "synapse_deliveries_total", "Pub/sub messages queued to subscribers", v(m.deliveries));
  gauge(out, "synapse_topics", "Pub/sub topics held in memory",
        static_cast<double>(m.topics.load(std::memory_order_relaxed)));
  counter(out, "synapse_presence_diffs_total", "presence_diff pushes serialized", v(m.presence_diffs));
  gauge(out, "synapse_runs_active", "Cortex queries and tools running",
        static_cast<double>(m.runs_active.load(std::memory_order_relaxed)));
  out += "# HELP synapse_runs_ended_total Cortex runs ended, by outcome\n"
         "# TYPE synapse_runs_ended_total counter\n";
  for (std::size_t i = 0; i < m.runs_ended.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "synapse_runs_ended_total{{outcome=\"{}\"}} {}\n",
                   run_end_name(static_cast<RunEnd>(i)), v(m.runs_ended[i]));
  }
  counter(out, "synapse_channel_crashes_total", "Channel handlers that threw and were closed",
          v(m.channel_crashes));
  m.fanout_latency.render(out, "synapse_fanout_latency_seconds",
                          "From a publish being accepted to its delivery being queued on a subscriber's connection");
  m.run_duration.render(out, "synapse_run_duration_seconds", "Cortex run duration, start to terminal event");
  m.join_latency.render(out, "synapse_join_latency_seconds", "phx_join handling time, request to reply");

  const ProcessStats p = read_process_stats();
  fmt::format_to(std::back_inserter(out),
                 "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                 "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
                 p.cpu_seconds);
  gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", static_cast<double>(p.rss_bytes));
  gauge(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", static_cast<double>(p.virtual_bytes));
  gauge(out, "process_open_fds", "Number of open file descriptors.", static_cast<double>(p.open_fds));
  gauge(out, "process_max_fds", "Maximum number of open file descriptors.", static_cast<double>(p.max_fds));
  gauge(out, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds);
  gauge(out, "process_threads", "Number of OS threads in the process.", static_cast<double>(p.threads));
  for (const auto& s : extra) gauge(out, s.name, s.help, s.value);
  return out;
}

ProcessStats read_process_stats() {
  ProcessStats p;
  const long ticks = ::sysconf(_SC_CLK_TCK);
  const long page = ::sysconf(_SC_PAGESIZE);
  {
    // /proc/self/stat: the command may hold spaces and parentheses, so the
    // fields are counted from the last ')'. utime and stime are fields 14
    // and 15, num_threads 20, starttime 22, vsize 23, rss 24.
    std::ifstream in("/proc/self/stat");
    std::string line;
    std::getline(in, line);
    const auto close = line.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(line.substr(close + 2));
      std::vector<std::string> f;
      for (std::string x; fields >> x;) f.push_back(x);
      auto num = [&](std::size_t field) -> double {  // field numbers as in proc(5)
        const std::size_t i = field - 3;
        return i < f.size() ? std::strtod(f[i].c_str(), nullptr) : 0.0;
      };
      if (ticks > 0) {
        p.cpu_seconds = (num(14) + num(15)) / static_cast<double>(ticks);
        double boot = 0;
        std::ifstream st("/proc/stat");
        for (std::string key; st >> key;) {
          if (key == "btime") {
            st >> boot;
            break;
          }
        }
        p.start_time_seconds = boot + num(22) / static_cast<double>(ticks);
      }
      p.threads = static_cast<std::int64_t>(num(20));
      p.virtual_bytes = static_cast<std::int64_t>(num(23));
      p.rss_bytes = static_cast<std::int64_t>(num(24)) * page;
    }
  }
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++p.open_fds;
  }
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) p.max_fds = static_cast<std::int64_t>(rl.rlim_cur);
  return p;
}

}  // namespace synapse::metrics
