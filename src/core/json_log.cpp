#include "core/json_log.hpp"

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace synapse::logging {
namespace {

// RFC 8259 string escaping. Log text may hold anything a client sent
// (topics, reasons), including quotes, control bytes and invalid UTF-8;
// bytes >= 0x80 pass through as they are, everything below 0x20 is escaped.
void append_escaped(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
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
