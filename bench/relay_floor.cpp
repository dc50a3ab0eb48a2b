// relay-floor: what relaying a token costs without a gateway in the way: the
// floor under synapse-bench agent_relay's "added latency" (docs/performance.md,
// agent workers). Two roles of one program, over loopback TCP:
//
//   relay-floor relay PORT
//     A single-threaded epoll relay doing the least any relay must: read the
//     worker connections, split their lines, queue each line on the client
//     connection it names, and after each epoll batch write every client's
//     queue in one write (TCP_NODELAY on every socket). No WebSocket
//     framing, no JSON, no run log. Runs until SIGTERM or SIGINT.
//
//   relay-floor load PORT [--workers 4] [--runs 100] [--tokens-per-s 1000]
//       [--duration 5] [--pacing staggered|aligned] [--tick-us N] [--bytes 120]
//       [--relay-pid PID]
//     agent_relay's paced phase against it: --runs client connections,
//     --workers worker connections, every run streaming --tokens-per-s lines
//     of --bytes bytes (its index and the send time, on one clock), paced
//     exactly as agent_relay paces (see its header), and the latency from
//     the worker's send to the client's read, p50 / p99, with the relay's CPU.
//
// The wire protocol: a connection's first line is "W" (a worker) or "C <i>"
// (the client of run i); a worker's lines are "<i> <send ns> <padding>".
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

void tune(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// Writes what it can of `out` (non-blocking); keeps the rest.
void write_some(int fd, std::string& out) {
  while (!out.empty()) {
    const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      out.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return;  // EAGAIN (the next batch retries) or a closed peer
  }
}

volatile std::sig_atomic_t stop = 0;

// ---------------------------------------------------------------- relay

struct Conn {
  int fd = -1;
  bool announced = false;
  bool worker = false;
  std::string in;
  std::string out;
  bool dirty = false;
};

int relay(int port) {
  std::signal(SIGTERM, [](int) { stop = 1; });
  std::signal(SIGINT, [](int) { stop = 1; });
  const int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
  if (::listen(ls, 1024) < 0) die("listen");
  fcntl(ls, F_SETFL, fcntl(ls, F_GETFL) | O_NONBLOCK);
  const int ep = epoll_create1(0);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = ls;
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
  std::vector<Conn> conns(65536);
  std::vector<int> clients;  // run index -> fd
  std::vector<int> dirty;
  char buf[65536];
  epoll_event evs[256];
  while (!stop) {
    const int n = epoll_wait(ep, evs, 256, 200);
    for (int k = 0; k < n; ++k) {
      const int fd = evs[k].data.fd;
      if (fd == ls) {
        for (;;) {
          const int c = ::accept(ls, nullptr, nullptr);
          if (c < 0) break;
          tune(c);
          conns[static_cast<std::size_t>(c)] = Conn{};
          conns[static_cast<std::size_t>(c)].fd = c;
          epoll_event ce{};
          ce.events = EPOLLIN;
          ce.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      Conn& c = conns[static_cast<std::size_t>(fd)];
      const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
      if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        c = Conn{};
        continue;
      }
      c.in.append(buf, static_cast<std::size_t>(got));
      std::size_t start = 0;
      for (;;) {
        const auto nl = c.in.find('\n', start);
        if (nl == std::string::npos) break;
        const std::string_view line(c.in.data() + start, nl + 1 - start);
        if (!c.announced) {
          c.announced = true;
          c.worker = line[0] == 'W';
          if (!c.worker) {
            const auto i = static_cast<std::size_t>(std::strtoul(line.data() + 2, nullptr, 10));
            if (clients.size() <= i) clients.resize(i + 1, -1);
            clients[i] = fd;
          }
        } else if (c.worker) {
          const auto i = static_cast<std::size_t>(std::strtoul(line.data(), nullptr, 10));
          if (i < clients.size() && clients[i] >= 0) {
            Conn& to = conns[static_cast<std::size_t>(clients[i])];
            to.out.append(line);
            if (!to.dirty) {
              to.dirty = true;
              dirty.push_back(to.fd);
            }
          }
        }
        start = nl + 1;
      }
      c.in.erase(0, start);
    }
    // One write per client per batch, as a gateway coalesces.
    for (int fd : dirty) {
      Conn& c = conns[static_cast<std::size_t>(fd)];
      c.dirty = false;
      write_some(fd, c.out);
      if (!c.out.empty()) {  // retried on the next batch
        c.dirty = true;
      }
    }
    std::erase_if(dirty, [&](int fd) { return !conns[static_cast<std::size_t>(fd)].dirty; });
  }
  return 0;
}

// ---------------------------------------------------------------- load

double cpu_s(int pid) {
  if (pid <= 0) return -1;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return -1;
  std::vector<std::string> fields;
  std::size_t i = rp + 2;
  while (i < s.size()) {
    const auto sp = s.find(' ', i);
    fields.push_back(s.substr(i, sp - i));
    if (sp == std::string::npos) break;
    i = sp + 1;
  }
  // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
  return (std::stod(fields[11]) + std::stod(fields[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int connect_to(int port, const std::string& hello) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("connect");
  if (::send(fd, hello.data(), hello.size(), 0) != static_cast<ssize_t>(hello.size())) die("send");
  tune(fd);
  return fd;
}

int load(int port, int argc, char** argv) {
  std::size_t n_workers = 4, n_runs = 100, bytes = 120;
  double rate = 1000, duration = 5, tick_us = -1;
  std::string pacing = "staggered";
  int relay_pid = 0;
  for (int i = 0; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--workers") n_workers = std::stoul(v);
    else if (k == "--runs") n_runs = std::stoul(v);
    else if (k == "--tokens-per-s") rate = std::stod(v);
    else if (k == "--duration") duration = std::stod(v);
    else if (k == "--pacing") pacing = v;
    else if (k == "--tick-us") tick_us = std::stod(v);
    else if (k == "--bytes") bytes = std::stoul(v);
    else if (k == "--relay-pid") relay_pid = std::stoi(v);
    else {
      std::fprintf(stderr, "relay-floor load: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const bool staggered = pacing == "staggered";
  if (tick_us < 0) tick_us = staggered ? 100 : 1000;
  std::vector<int> workers, clients;
  for (std::size_t w = 0; w < n_workers; ++w) workers.push_back(connect_to(port, "W\n"));
  for (std::size_t r = 0; r < n_runs; ++r) clients.push_back(connect_to(port, "C " + std::to_string(r) + "\n"));
  ::usleep(200000);  // every announcement read before the first token
  const int ep = epoll_create1(0);
  for (std::size_t r = 0; r < n_runs; ++r) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = r;
    epoll_ctl(ep, EPOLL_CTL_ADD, clients[r], &e);
  }
  std::vector<std::string> in(n_runs), out(n_workers);
  std::vector<std::uint64_t> sent(n_runs, 0), next(n_runs, 0);
  std::vector<std::uint32_t> lat;
  lat.reserve(static_cast<std::size_t>(rate * duration * static_cast<double>(n_runs)) + 1024);
  std::uint64_t lost = 0, received = 0;
  const std::string pad(bytes, 'x');
  char buf[65536];
  epoll_event evs[256];
  const double cpu0 = cpu_s(relay_pid);
  const std::uint64_t t0 = now_ns(), end = t0 + static_cast<std::uint64_t>(duration * 1e9);
  // Waits up to `timeout_ns` (epoll_pwait2: agent_relay's loop waits so too,
  // not in whole milliseconds and not spinning).
  auto read_clients = [&](std::uint64_t timeout_ns) {
    timespec ts{static_cast<time_t>(timeout_ns / 1000000000ull), static_cast<long>(timeout_ns % 1000000000ull)};
    const int n = epoll_pwait2(ep, evs, 256, &ts, nullptr);
    for (int k = 0; k < n; ++k) {
      const std::size_t r = evs[k].data.u64;
      const ssize_t got = ::recv(clients[r], buf, sizeof buf, 0);
      if (got <= 0) continue;
      const std::uint64_t now = now_ns();
      in[r].append(buf, static_cast<std::size_t>(got));
      std::size_t start = 0;
      for (;;) {
        const auto nl = in[r].find('\n', start);
        if (nl == std::string::npos) break;
        // "<run> <index> <send ns> <pad>"
        const char* p = in[r].data() + start;
        char* q = nullptr;
        std::strtoull(p, &q, 10);
        const std::uint64_t index = std::strtoull(q, &q, 10);
        const std::uint64_t t_send = std::strtoull(q, &q, 10);
        if (index != next[r]) lost += index > next[r] ? index - next[r] : 0;
        next[r] = index + 1;
        ++received;
        if (now >= t_send) {
          lat.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(now - t_send, UINT32_MAX)));
        }
        start = nl + 1;
      }
      in[r].erase(0, start);
    }
  };
  std::uint64_t next_tick = t0;
  while (now_ns() < end) {
    const double due = rate * static_cast<double>(now_ns() - t0) / 1e9;
    for (std::size_t r = 0; r < n_runs; ++r) {
      const double shift = staggered ? static_cast<double>(r) / static_cast<double>(n_runs) : 0.0;
      while (static_cast<double>(sent[r]) + shift < due) {
        std::string& o = out[r % n_workers];
        o += std::to_string(r);
        o += ' ';
        o += std::to_string(sent[r]++);
        o += ' ';
        o += std::to_string(now_ns());
        o += ' ';
        o += pad;
        o += '\n';
      }
    }
    for (std::size_t w = 0; w < n_workers; ++w) write_some(workers[w], out[w]);
    next_tick += static_cast<std::uint64_t>(tick_us * 1000);
    // Read until the next tick is due (the agent_relay loop's run_for).
    for (;;) {
      const std::uint64_t t = now_ns();
      if (t >= next_tick) break;
      read_clients(next_tick - t);
    }
  }
  const std::uint64_t want = [&] {
    std::uint64_t s = 0;
    for (auto x : sent) s += x;
    return s;
  }();
  const std::uint64_t drain_until = now_ns() + 2'000'000'000ull;
  while (received < want && now_ns() < drain_until) read_clients(10'000'000);
  const double wall = static_cast<double>(now_ns() - t0) / 1e9;
  const double cpu1 = cpu_s(relay_pid);
  for (std::size_t r = 0; r < n_runs; ++r) lost += sent[r] - std::min(sent[r], next[r]);
  auto q = [&](double p) {
    if (lat.empty()) return 0.0;
    const auto k = static_cast<std::size_t>(p * static_cast<double>(lat.size() - 1));
    std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(k), lat.end());
    return lat[k] / 1e6;
  };
  const double p50 = q(0.5), p99 = q(0.99);
  std::printf(
      "relay-floor: %zu runs x %.0f tokens/s (%s, tick %.0f us), %zu-byte lines: sent %llu, received %llu, lost %llu; "
      "latency p50 %.3f ms, p99 %.3f ms; relay CPU %.0f %%\n",
      n_runs, rate, pacing.c_str(), tick_us, bytes, static_cast<unsigned long long>(want),
      static_cast<unsigned long long>(received), static_cast<unsigned long long>(lost), p50, p99,
      cpu0 >= 0 ? 100.0 * (cpu1 - cpu0) / wall : -1.0);
  return lost == 0 && received == want ? 0 : 1;
}

}  // namespace

constexpr const char* usage_text =
    "usage: relay-floor relay PORT | relay-floor load PORT [options]\n"
    "  relay PORT  a minimal single-threaded epoll relay on 127.0.0.1:PORT (until SIGTERM)\n"
    "  load PORT   agent_relay's paced phase against it; prints p50 / p99 and the relay's CPU\n"
    "    --workers N (4)  --runs N (100)  --tokens-per-s R (1000)  --duration S (5)\n"
    "    --pacing staggered|aligned  --tick-us N  --bytes N (120)  --relay-pid PID\n";

int main(int argc, char** argv) {
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(usage_text, stdout);
    return 0;
  }
  if (argc < 3) {
    std::fputs(usage_text, stderr);
    return 2;
  }
  const std::string role = argv[1];
  const int port = std::atoi(argv[2]);
  if (role == "relay") return relay(port);
  if (role == "load") return load(port, argc - 3, argv + 3);
  std::fprintf(stderr, "relay-floor: unknown role %s\n", role.c_str());
  return 2;
}
