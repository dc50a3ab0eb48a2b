#include "core/json_log.hpp"

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace synapse::logging {
namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] (Unicode table
// 3-7: no overlongs, no surrogates, nothing past U+10FFFF), or 0.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > s.size() || b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xbf) return 0;
  }
  return n;
}

// RFC 8259 string escaping. Log text may hold anything a client sent
// (topics, reasons, headers), including quotes, control bytes and invalid
// UTF-8: well-formed UTF-8 passes through as it is, each byte of an
// ill-formed sequence becomes U+FFFD (so every line stays valid JSON), and
// everything below 0x20 is escaped.
void append_escaped(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = utf8_sequence(s, i);
      if (n == 0) {
        out += "\xef\xbf\xbd";
      } else {
        out.append(s.substr(i, n));
        i += n - 1;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

bool all_digits(std::string_view v) {
  if (v.empty() || v.size() > 18) return false;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// key=value tokens worth a field, and the field each becomes.
struct Lift {
  std::string_view key;
  std::string_view field;
};
constexpr Lift lifted[] = {{"conn", "conn_id"}, {"topic", "topic"}, {"run", "run_id"}, {"ref", "ref"},
                           {"peer", "peer"},    {"key", "key_id"},  {"event", "event"}, {"status", "status"}};

void append_fields(std::string& out, std::string_view msg) {
  bool seen[std::size(lifted)] = {};
  std::size_t pos = 0;
  while (pos < msg.size()) {
    const auto end = msg.find(' ', pos);
    const std::string_view tok = msg.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? msg.size() : end + 1;
    const auto eq = tok.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    const std::string_view k = tok.substr(0, eq);
    std::string_view v = tok.substr(eq + 1);
    for (std::size_t i = 0; i < std::size(lifted); ++i) {
      if (lifted[i].key != k || seen[i] || v.empty()) continue;
      seen[i] = true;
      out += ',';
      append_escaped(out, lifted[i].field);
      out += ':';
      if (lifted[i].key == "conn" && all_digits(v)) {
        out += v;
      } else {
        append_escaped(out, v);
      }
    }
  }
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count();
    const auto level = spdlog::level::to_string_view(msg.level);
    const std::string line = json_record(std::string_view(level.data(), level.size()), ms, msg.thread_id,
                                         std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

std::string json_record(std::string_view level, std::int64_t ts_ms, std::size_t thread, std::string_view message) {
  std::string out;
  out.reserve(96 + message.size());
  const std::time_t secs = static_cast<std::time_t>(ts_ms / 1000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char ts[96];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ts_ms % 1000));
  out += "{\"ts\":\"";
  out += ts;
  out += "\",\"level\":";
  append_escaped(out, level);
  out += ",\"thread\":";
  out += std::to_string(thread);
  out += ",\"msg\":";
  append_escaped(out, message);
  append_fields(out, message);
  out += "}\n";
  return out;
}

std::unique_ptr<spdlog::formatter> make_json_formatter() { return std::make_unique<JsonFormatter>(); }

void use_json_format() { spdlog::set_formatter(make_json_formatter()); }

}  // namespace synapse::logging
