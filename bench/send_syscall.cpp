// send-syscall: the kernel's cost of one small write on a loopback TCP
// socket through send() against sendmsg() with a one-element iovec, the
// two ways Connection::write_out can hand a single waiting frame to the
// kernel (docs/performance.md "One frame, one send()").
//
// One connected pair on 127.0.0.1; a reader thread drains the peer so the
// writer never meets a full buffer. Rounds alternate which call goes first
// (so a warming or cooling machine does not favour one), and the summary
// gives each call's median over the rounds. Run it pinned to one core
// (`taskset -c 0 build/release/send-syscall`) as the server is in run-bench:
// the writer then also pays for the receiver's side, as the server does.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--calls N] [--rounds R] [--bytes B]\n"
      "  Times N writes of B bytes on a loopback TCP socket through send() and through\n"
      "  sendmsg() (one iovec), R rounds each, alternating which goes first; prints\n"
      "  ns per call for every round and the median of each.\n"
      "  defaults: --calls 200000 --rounds 8 --bytes 120\n",
      argv0);
}

bool parse_count(const char* text, long min, long max, long& out) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < min || v > max) return false;
  out = v;
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  long calls = 200000, rounds = 8, bytes = 120;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    }
    long* target = a == "--calls" ? &calls : a == "--rounds" ? &rounds : a == "--bytes" ? &bytes : nullptr;
    if (!target || i + 1 >= argc || !parse_count(argv[i + 1], 1, 100'000'000, *target)) {
      std::fprintf(stderr, "send-syscall: bad argument %s (see --help)\n", a.c_str());
      return 2;
    }
    ++i;
  }
  if (bytes > 65536) {
    std::fprintf(stderr, "send-syscall: --bytes is at most 65536\n");
    return 2;
  }

  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener, 1) != 0 || ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("send-syscall: listen");
    return 1;
  }
  const int reader_fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (reader_fd < 0 || ::connect(reader_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("send-syscall: connect");
    return 1;
  }
  const int fd = ::accept(listener, nullptr, nullptr);
  if (fd < 0) {
    std::perror("send-syscall: accept");
    return 1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // as the server's sockets

  unsigned long long received = 0;
  std::thread reader([&] {
    std::vector<char> buf(1 << 16);
    for (;;) {
      const ssize_t n = ::read(reader_fd, buf.data(), buf.size());
      if (n <= 0) break;
      received += static_cast<unsigned long long>(n);
    }
  });

  std::vector<char> msg(static_cast<std::size_t>(bytes), 'x');
  std::vector<double> by_call[2];  // 0: send, 1: sendmsg
  const char* names[2] = {"send", "sendmsg"};
  unsigned long long sent = 0;
  bool failed = false;
  for (long round = 0; round < rounds && !failed; ++round) {
    for (int k = 0; k < 2; ++k) {
      const int call = static_cast<int>((k + round) % 2);
      const auto t0 = std::chrono::steady_clock::now();
      for (long i = 0; i < calls; ++i) {
        ssize_t n;
        if (call == 0) {
          n = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL);
        } else {
          iovec iov{msg.data(), msg.size()};
          msghdr mh{};
          mh.msg_iov = &iov;
          mh.msg_iovlen = 1;
          n = ::sendmsg(fd, &mh, MSG_NOSIGNAL);
        }
        if (n < 0) {
          std::perror("send-syscall: write");
          failed = true;  // the reader still has to be joined
          break;
        }
        sent += static_cast<unsigned long long>(n);
      }
      if (failed) break;
      const double ns =
          std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / double(calls);
      by_call[call].push_back(ns);
      std::printf("round %ld  %-7s %7.0f ns/call\n", round + 1, names[call], ns);
      std::fflush(stdout);
    }
  }
  ::shutdown(fd, SHUT_WR);
  reader.join();
  if (failed) return 1;
  if (received != sent) {
    std::fprintf(stderr, "send-syscall: sent %llu bytes, the reader got %llu\n", sent, received);
    return 1;
  }
  const double s = median(by_call[0]), m = median(by_call[1]);
  std::printf("median  send %.0f ns, sendmsg %.0f ns per call of %ld bytes: send saves %.0f ns (%.1f %%)\n", s, m,
              bytes, m - s, 100.0 * (m - s) / m);
  ::close(fd);
  ::close(reader_fd);
  ::close(listener);
  return 0;
}
