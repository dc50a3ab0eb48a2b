#include "util.hpp"

#include "net.hpp"  // tls_client_ctx()
#include "protocol/envelope.hpp"  // append_json_string: the escaper the server uses, unit-tested

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace bench {

// ---------------------------------------------------------------- Histogram

namespace {
constexpr std::size_t kLinear = 128;  // exact below this
constexpr std::size_t kSub = 64;      // sub-buckets per power of two above it
constexpr std::size_t kBuckets = kLinear + 57 * kSub;
}  // namespace

Histogram::Histogram() : counts_(kBuckets, 0) {}

std::size_t Histogram::index(std::uint64_t v) noexcept {
  if (v < kLinear) return static_cast<std::size_t>(v);
  const int msb = 63 - std::countl_zero(v);  // 7..63
  const int shift = msb - 6;                 // 1..57
  const std::uint64_t sub = (v >> shift) - kSub;
  return kLinear + static_cast<std::size_t>(shift - 1) * kSub + static_cast<std::size_t>(sub);
}

std::pair<std::uint64_t, std::uint64_t> Histogram::bounds(std::size_t i) noexcept {
  if (i < kLinear) return {i, i};
  const std::size_t k = i - kLinear;
  const int shift = static_cast<int>(k / kSub) + 1;
  const std::uint64_t sub = k % kSub + kSub;
  return {sub << shift, ((sub + 1) << shift) - 1};
}

void Histogram::add(std::uint64_t v) noexcept {
  ++counts_[index(v)];
  ++n_;
  min_ = std::min(min_, v);
  max_ = std::max(max_, v);
  sum_ += static_cast<double>(v);
}

void Histogram::merge(const Histogram& o) noexcept {
  for (std::size_t i = 0; i < kBuckets; ++i) counts_[i] += o.counts_[i];
  n_ += o.n_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
  sum_ += o.sum_;
}

std::uint64_t Histogram::quantile(double q) const noexcept {
  if (n_ == 0) return 0;
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(n_)));
  rank = std::clamp<std::uint64_t>(rank, 1, n_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const auto [lo, hi] = bounds(i);
      return std::clamp<std::uint64_t>(lo + (hi - lo) / 2, min_, max_);
    }
  }
  return max_;
}

// --------------------------------------------------------------- SeqTracker

void SeqTracker::reset(std::uint32_t expected) {
  expected_ = expected;
  seen_.assign((expected + 63) / 64, 0);
  unique_ = dup_ = reordered_ = out_of_range_ = 0;
  last_seq_ = last_offset_ = -1;
}

bool SeqTracker::on(std::int64_t seq, std::int64_t offset) noexcept {
  if (seq < 0 || seq >= static_cast<std::int64_t>(expected_)) {
    ++out_of_range_;
    return false;
  }
  auto& word = seen_[static_cast<std::size_t>(seq) / 64];
  const std::uint64_t bit = 1ull << (seq % 64);
  if (word & bit) {
    ++dup_;
    return false;
  }
  word |= bit;
  ++unique_;
  // Out of order: a lower sequence number, or a server offset that does not
  // increase, after a higher one.
  if (seq < last_seq_ || (offset >= 0 && offset <= last_offset_)) ++reordered_;
  last_seq_ = std::max(last_seq_, seq);
  last_offset_ = std::max(last_offset_, offset);
  return unique_ == expected_;
}

// --------------------------------------------------------------------- /proc

ProcSample sample_proc(int pid) {
  ProcSample s;
  if (pid <= 0) return s;
  {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("VmRSS:", 0) == 0) {
        s.rss_kb = std::strtoull(line.c_str() + 6, nullptr, 10);
        s.ok = true;
      } else if (line.rfind("RssAnon:", 0) == 0) {
        s.rss_anon_kb = std::strtoull(line.c_str() + 8, nullptr, 10);
      } else if (line.rfind("RssFile:", 0) == 0) {
        s.rss_file_kb = std::strtoull(line.c_str() + 8, nullptr, 10);
      }
    }
  }
  {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    // Fields after the command name, which is in parentheses and may hold spaces.
    const auto close = all.rfind(')');
    if (close != std::string::npos) {
      std::istringstream in(all.substr(close + 2));
      std::string field;
      std::vector<std::string> fields;
      while (in >> field) fields.push_back(field);
      // fields[0] is field 3 (state); utime is field 14, stime 15.
      if (fields.size() > 13) {
        const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
        s.user_s = std::strtod(fields[11].c_str(), nullptr) / tick;
        s.sys_s = std::strtod(fields[12].c_str(), nullptr) / tick;
        s.cpu_s = s.user_s + s.sys_s;
      }
    }
  }
  return s;
}

CpuTime self_cpu() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  CpuTime c;
  c.user_s = static_cast<double>(ru.ru_utime.tv_sec) + static_cast<double>(ru.ru_utime.tv_usec) / 1e6;
  c.sys_s = static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) / 1e6;
  return c;
}

std::optional<std::vector<double>> scrape_metrics(const std::string& host, int port,
                                                  const std::vector<std::string>& names, bool tls) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string body;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
    char buf[16384];
    if (tls) {
      SSL* ssl = bench::tls_client_ctx() ? SSL_new(bench::tls_client_ctx()) : nullptr;
      if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_connect(ssl) == 1 &&
          SSL_write(ssl, req.data(), static_cast<int>(req.size())) == static_cast<int>(req.size())) {
        for (int i = 0; i < 1000; ++i) {
          const int n = SSL_read(ssl, buf, sizeof buf);
          if (n <= 0) break;
          body.append(buf, static_cast<std::size_t>(n));
        }
      }
      SSL_free(ssl);
    } else if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      for (int i = 0; i < 1000; ++i) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        body.append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fd);
  if (body.rfind("HTTP/1.1 200", 0) != 0) return std::nullopt;
  std::vector<double> out;
  for (const auto& name : names) {
    const std::string needle = "\n" + name + " ";
    const auto at = body.find(needle);
    if (at == std::string::npos) return std::nullopt;
    out.push_back(std::strtod(body.c_str() + at + needle.size(), nullptr));
  }
  return out;
}

// ---------------------------------------------------------------------- JSON

void Json::sep(std::string_view key) {
  if (!body_.empty()) body_ += ',';
  synapse::protocol::append_json_string(body_, key);
  body_ += ':';
}

Json& Json::num(std::string_view key, double v, int decimals) {
  sep(key);
  if (!std::isfinite(v)) {
    body_ += "null";
    return *this;
  }
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  body_ += b;
  return *this;
}

Json& Json::integer(std::string_view key, std::int64_t v) {
  sep(key);
  body_ += std::to_string(v);
  return *this;
}

Json& Json::str(std::string_view key, std::string_view v) {
  sep(key);
  synapse::protocol::append_json_string(body_, v);
  return *this;
}

Json& Json::boolean(std::string_view key, bool v) {
  sep(key);
  body_ += v ? "true" : "false";
  return *this;
}

Json& Json::null(std::string_view key) {
  sep(key);
  body_ += "null";
  return *this;
}

Json& Json::obj(std::string_view key, const Json& v) {
  sep(key);
  body_ += v.dump();
  return *this;
}

Json& Json::arr(std::string_view key, const std::vector<Json>& v) {
  sep(key);
  body_ += '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) body_ += ',';
    body_ += v[i].dump();
  }
  body_ += ']';
  return *this;
}

Json& Json::raw(std::string_view key, std::string_view json) {
  sep(key);
  body_ += json;
  return *this;
}

std::string Json::dump() const { return "{" + body_ + "}"; }

Json latency_json(const Histogram& h) {
  Json j;
  j.integer("count", static_cast<std::int64_t>(h.count()));
  if (h.count() == 0) {
    j.null("p50_ms").null("p99_ms").null("p999_ms").null("max_ms").null("mean_ms");
    return j;
  }
  j.num("p50_ms", ns_ms(h.quantile(0.50)), 4)
      .num("p99_ms", ns_ms(h.quantile(0.99)), 4)
      .num("p999_ms", ns_ms(h.quantile(0.999)), 4)
      .num("max_ms", ns_ms(h.max()), 4)
      .num("mean_ms", h.mean() / 1e6, 4);
  return j;
}

// --------------------------------------------------------------------- Table

std::string Table::render() const {
  std::vector<std::size_t> width;
  for (const auto& r : rows_) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (std::size_t ri = 0; ri < rows_.size(); ++ri) {
    const auto& r = rows_[ri];
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (i) out += "  ";
      // First column left-aligned, numbers right-aligned.
      const std::string pad(width[i] - r[i].size(), ' ');
      out += i == 0 ? r[i] + pad : pad + r[i];
    }
    out += '\n';
    if (ri == 0) {
      std::size_t total = 0;
      for (std::size_t i = 0; i < width.size(); ++i) total += width[i] + (i ? 2 : 0);
      out += std::string(total, '-') + '\n';
    }
  }
  return out;
}

std::string fmt(double v, int decimals) {
  if (!std::isfinite(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

std::string fmt_int(std::uint64_t v) { return std::to_string(v); }

}  // namespace bench
