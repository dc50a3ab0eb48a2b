// deflate-micro: the CPU cost of permessage-deflate in wire/, without
// sockets. For each payload size and zlib level: compressing one message
// (Message::deflated on a fresh message: what the first subscriber pays,
// once per message), handing the shared variant to every further subscriber
// (Message::deflated on a message already compressed: one atomic load and
// one increment), a plain Message copy for comparison (what a subscriber
// without the extension costs), and inflating a client message of that size.
//
//   build/release/deflate-micro            (about 10 s; one thread)
//
// The payloads are JSON objects of varied words, ids and numbers, like
// bench/deflate_cost.py's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "wire/deflate.hpp"
#include "wire/message.hpp"

using namespace synapse::wire;
using Clock = std::chrono::steady_clock;

namespace {

std::string payload(std::size_t size, unsigned seed) {
  static const char* vocab[] = {"the",      "agent",   "searched", "memory",  "for",      "deployment", "notes",
                                "found",    "matching", "entries", "ranked",  "recency",  "importance", "rollback",
                                "canary",   "release", "database", "latency", "budget",   "retry",      "queue",
                                "worker",   "tenant",  "cache",    "token",   "stream",   "partial",    "result",
                                "summary",  "tool",    "returned", "error",   "timeout",  "recovered",  "offset"};
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < size) {
    const auto r = rng() % 10;
    if (r == 0) {
      char b[16];
      std::snprintf(b, sizeof b, "%08x ", static_cast<unsigned>(rng()));
      text += b;
    } else if (r == 1) {
      text += std::to_string(rng() % 100000) + " ";
    } else {
      text += vocab[rng() % (sizeof vocab / sizeof vocab[0])];
      text += ' ';
    }
  }
  text.resize(size);
  return R"({"i":)" + std::to_string(seed) + R"(,"kind":"thought","agent":"planner-7","text":")" + text + R"("})";
}

template <class F>
double ns_per(std::size_t n, F&& f) {
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) f(i);
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    const bool help = std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h";
    std::fputs("usage: deflate-micro\n"
               "  Times permessage-deflate's CPU cost without sockets (about 10 s, one thread): compressing\n"
               "  a message once, sharing it per further subscriber, a plain copy, and inflating, for\n"
               "  payloads of 300, 2,000 and 16,000 bytes at zlib levels 1 and 6. Takes no options.\n",
               help ? stdout : stderr);
    return help ? 0 : 2;
  }
  std::printf("| payload (B) | level | compressed (B) | compress once per message (µs) | each further subscriber (ns) "
              "| plain copy per subscriber (ns) | inflate a client message (µs) |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (std::size_t size : {300u, 2000u, 16000u}) {
    for (int level : {1, 6}) {
      // Each figure is the best of `reps` runs: the machine is shared, and
      // the least disturbed run is the closest to the code's own cost.
      constexpr int reps = 7;
      constexpr std::size_t messages = 500;
      // A warm-up pass on other messages (this thread's zlib stream, caches).
      for (std::size_t i = 0; i < 200; ++i) {
        (void)Message::text(payload(size, static_cast<unsigned>(messages + i))).deflated(0, level);
      }
      double once = 1e300, further = 1e300, copy = 1e300, inflate = 1e300;
      std::size_t compressed = 0, sink = 0, payload_size = 0;
      std::vector<std::string> client;
      for (std::size_t i = 0; i < 200; ++i) {
        std::string c;
        deflate_message(payload(size, static_cast<unsigned>(i)), level, c);
        client.push_back(std::move(c));
      }
      std::string out;
      for (int r = 0; r < reps; ++r) {
        std::vector<Message> fresh;
        fresh.reserve(messages);
        for (std::size_t i = 0; i < messages; ++i) {
          fresh.push_back(Message::text(payload(size, static_cast<unsigned>(i))));
        }
        payload_size = fresh[0].payload().size();
        // Threshold 0: even the 300-byte ones are compressed here, to show the cost.
        compressed = 0;
        once = std::min(once, ns_per(messages, [&](std::size_t i) { compressed += fresh[i].deflated(0, level).size(); }));
        const Message& m = fresh[0];
        constexpr std::size_t subs = 1'000'000;
        further = std::min(further, ns_per(subs, [&](std::size_t) { sink += m.deflated(0, level).size(); }));
        copy = std::min(copy, ns_per(subs, [&](std::size_t) {
                          Message c = m;
                          sink += c.size();
                        }));
        inflate = std::min(inflate, ns_per(client.size(), [&](std::size_t i) {
                             inflate_message(client[i], 1 << 20, out);
                             sink += out.size();
                           }));
      }
      std::printf("| %zu | %d | %zu | %.1f | %.1f | %.1f | %.1f |\n", payload_size, level,
                  compressed / messages, once / 1000, further, copy, inflate / 1000);
      if (sink == 42) std::printf(" ");  // keeps the loops
    }
  }
  return 0;
}
