#include "common.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>

namespace bench {

// --------------------------------------------------------------------- Args

bool Args::parse(int argc, char** argv, const std::set<std::string>& flags, std::string* error) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      *error = "unexpected argument: " + a;
      return false;
    }
    a = a.substr(2);
    const auto eq = a.find('=');
    if (eq != std::string::npos) {
      values_[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (flags.count(a)) {
      values_[a] = "1";
    } else if (i + 1 < argc) {
      values_[a] = argv[++i];
    } else {
      *error = "option --" + a + " needs a value";
      return false;
    }
  }
  return true;
}

std::string Args::str(const std::string& key, const std::string& def) const {
  const auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

double Args::num(const std::string& key, double def) const {
  const auto it = values_.find(key);
  return it == values_.end() ? def : std::strtod(it->second.c_str(), nullptr);
}

std::int64_t Args::integer(const std::string& key, std::int64_t def) const {
  const auto it = values_.find(key);
  return it == values_.end() ? def : std::strtoll(it->second.c_str(), nullptr, 10);
}

std::vector<std::int64_t> Args::ints(const std::string& key, const std::vector<std::int64_t>& def) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return def;
  std::vector<std::int64_t> out;
  const char* p = it->second.c_str();
  while (*p) {
    char* end = nullptr;
    const long long v = std::strtoll(p, &end, 10);
    if (end == p) break;
    out.push_back(v);
    p = end;
    while (*p == ',' || *p == ' ') ++p;
  }
  return out;
}

std::vector<std::string> Args::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : values_) out.push_back(k);
  return out;
}

// ------------------------------------------------------------ Phoenix frames

namespace {

void skip_ws(std::string_view s, std::size_t& i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
}

bool parse_elem(std::string_view s, std::size_t& i, std::string_view& out, bool& is_null) {
  skip_ws(s, i);
  if (s.substr(i, 4) == "null") {
    is_null = true;
    out = {};
    i += 4;
    return true;
  }
  if (i >= s.size() || s[i] != '"') return false;
  const std::size_t start = ++i;
  while (i < s.size() && s[i] != '"') {
    if (s[i] == '\\') ++i;
    ++i;
  }
  if (i >= s.size()) return false;
  is_null = false;
  out = s.substr(start, i - start);
  ++i;
  return true;
}

bool expect(std::string_view s, std::size_t& i, char c) {
  skip_ws(s, i);
  if (i >= s.size() || s[i] != c) return false;
  ++i;
  return true;
}

bool parse_i64(std::string_view s, std::size_t& i, std::int64_t& out) {
  skip_ws(s, i);
  const auto r = std::from_chars(s.data() + i, s.data() + s.size(), out);
  if (r.ec != std::errc()) return false;
  i = static_cast<std::size_t>(r.ptr - s.data());
  return true;
}

}  // namespace

bool parse_frame(std::string_view s, PhxFrame& f) {
  std::size_t i = 0;
  bool null_topic = false, null_event = false;
  if (!expect(s, i, '[')) return false;
  if (!parse_elem(s, i, f.join_ref, f.join_ref_null) || !expect(s, i, ',')) return false;
  if (!parse_elem(s, i, f.ref, f.ref_null) || !expect(s, i, ',')) return false;
  if (!parse_elem(s, i, f.topic, null_topic) || !expect(s, i, ',')) return false;
  if (!parse_elem(s, i, f.event, null_event) || !expect(s, i, ',')) return false;
  if (null_topic || null_event) return false;
  skip_ws(s, i);
  std::size_t end = s.size();
  while (end > i && (s[end - 1] == ' ' || s[end - 1] == '\n')) --end;
  if (end == i || s[end - 1] != ']') return false;
  --end;
  while (end > i && s[end - 1] == ' ') --end;
  f.payload = s.substr(i, end - i);
  return !f.payload.empty() && f.payload.front() == '{';
}

bool reply_ok(std::string_view payload) { return payload.find("\"status\":\"ok\"") != std::string_view::npos; }

std::string reply_reason(std::string_view payload) {
  const auto at = payload.find("\"reason\":\"");
  if (at == std::string_view::npos) return std::string(payload.substr(0, 120));
  const auto start = at + 10;
  const auto end = payload.find('"', start);
  return std::string(payload.substr(start, end == std::string_view::npos ? 40 : end - start));
}

bool find_int(std::string_view json, std::string_view key, std::int64_t& out, std::size_t from) {
  std::string needle;
  needle.reserve(key.size() + 3);
  needle += '"';
  needle += key;
  needle += "\":";
  const auto at = json.find(needle, from);
  if (at == std::string_view::npos) return false;
  std::size_t i = at + needle.size();
  return parse_i64(json, i, out);
}

std::uint64_t pace_sends(Loop& loop, std::uint64_t t0, std::uint32_t total, double rate, std::uint64_t give_up_ns,
                         const std::function<void(std::uint32_t)>& send) {
  const double interval = 1e9 / rate;
  auto due = [&](std::uint32_t i) { return t0 + static_cast<std::uint64_t>(static_cast<double>(i) * interval); };
  std::uint32_t sent = 0;
  std::uint64_t last_tick = t0;
  std::optional<Loop::TimerId> pending;
  std::function<void()> tick = [&] {
    pending.reset();
    const std::uint64_t now = now_ns();
    while (sent < total && due(sent) <= now) send(sent++);
    last_tick = now;
    if (sent < total) pending = loop.at(due(sent), tick);
  };
  tick();
  loop.run_until([&] { return sent >= total; }, give_up_ns);
  if (pending) loop.cancel(*pending);
  return last_tick;
}

void build_publish(std::string& out, std::int64_t seq, std::uint64_t t_ns, std::int64_t phase,
                   std::string_view pad) {
  char b[96];
  const int n = std::snprintf(b, sizeof b, "{\"s\":%lld,\"t\":%llu,\"p\":%lld", static_cast<long long>(seq),
                              static_cast<unsigned long long>(t_ns), static_cast<long long>(phase));
  out.assign(b, static_cast<std::size_t>(n));
  if (!pad.empty()) {
    out += ",\"x\":\"";
    out += pad;
    out += '"';
  }
  out += '}';
}

bool parse_delivery(std::string_view p, Delivery& d) {
  // The publisher's keys come first and in order: {"s":..,"t":..,"p":..
  if (p.substr(0, 5) != "{\"s\":") return false;
  std::size_t i = 5;
  std::int64_t t = 0;
  if (!parse_i64(p, i, d.seq)) return false;
  if (p.substr(i, 5) != ",\"t\":") return false;
  i += 5;
  if (!parse_i64(p, i, t)) return false;
  d.t_ns = static_cast<std::uint64_t>(t);
  if (p.substr(i, 5) != ",\"p\":") return false;
  i += 5;
  if (!parse_i64(p, i, d.phase)) return false;
  const auto meta = p.find("\"_meta\":", i);
  d.offset = -1;
  // The uWS baseline relays the payload as published, with no _meta: its
  // order is then checked by the publisher's sequence number alone.
  if (meta == std::string_view::npos) return true;
  return find_int(p, "offset", d.offset, meta);
}

// ------------------------------------------------------------------ Context

void Context::emit(const Json& result, const std::string& table) {
  const auto cpu = self_cpu();
  const double wall = ns_s(now_ns() - t_start);
  Json j;
  j.str("scenario", scenario).str("label", label);
  j.str("url", (target.tls ? "wss://" : "ws://") + target.host + ":" + std::to_string(target.port));
  j.integer("server_pid", server_pid);
  j.boolean("small", small);
  j.integer("unix_time", static_cast<std::int64_t>(std::time(nullptr)));
  j.num("wall_s", wall, 3);
  j.num("bench_cpu_s", cpu.total() - cpu_start.total(), 3);
  j.num("bench_cpu_pct", wall > 0 ? 100.0 * (cpu.total() - cpu_start.total()) / wall : 0.0, 1);
  j.obj("result", result);
  std::cout << table;
  std::cout << "bench CPU: " << fmt(cpu.user_s - cpu_start.user_s) << " s user + "
            << fmt(cpu.sys_s - cpu_start.sys_s) << " s system over " << fmt(wall) << " s wall ("
            << fmt(wall > 0 ? 100.0 * (cpu.total() - cpu_start.total()) / wall : 0, 1) << " %)\n";
  const std::string line = j.dump();
  std::cout << "RESULT " << line << std::endl;
  const auto out = args.str("json-out");
  if (!out.empty()) {
    std::ofstream f(out);
    f << line << '\n';
  }
}

PhaseClock::PhaseClock(const Context& c) : c_(c), t0_(now_ns()), cpu0_(self_cpu()), srv0_(c.server()) {}

Json PhaseClock::finish() {
  const double wall = wall_s();
  const auto cpu = self_cpu();
  const auto srv = c_.server();
  Json j;
  j.num("wall_s", wall, 4);
  const double bench = cpu.total() - cpu0_.total();
  bench_cpu_pct = wall > 0 ? 100.0 * bench / wall : 0;
  j.num("bench_cpu_s", bench, 3).num("bench_cpu_pct", bench_cpu_pct, 1);
  if (srv.ok && srv0_.ok) {
    server_cpu_s = srv.cpu_s - srv0_.cpu_s;
    server_user_s = srv.user_s - srv0_.user_s;
    server_sys_s = srv.sys_s - srv0_.sys_s;
    j.num("server_cpu_s", server_cpu_s, 3).num("server_cpu_pct", wall > 0 ? 100.0 * server_cpu_s / wall : 0, 1);
    j.num("server_user_s", server_user_s, 3).num("server_sys_s", server_sys_s, 3);
  } else {
    j.null("server_cpu_s").null("server_cpu_pct").null("server_user_s").null("server_sys_s");
  }
  // A load generator busy more than 90 % of the time may be what limits the result.
  j.boolean("bench_saturated", bench_cpu_pct > 90.0);
  return j;
}

Json OpenStats::json() const {
  Json j;
  j.integer("requested", static_cast<std::int64_t>(requested))
      .integer("ok", static_cast<std::int64_t>(ok))
      .integer("failed", static_cast<std::int64_t>(failed))
      .num("wall_s", t_end > t_begin ? ns_s(t_end - t_begin) : 0.0, 4)
      .obj("per_connection", latency_json(per_conn));
  Json e;
  for (const auto& [why, n] : errors) e.integer(why, n);
  j.obj("errors", e);
  return j;
}

// -------------------------------------------------------------------- Fleet

Fleet::~Fleet() {
  // Sockets still open are reset by WsClient's destructor (close()).
  for (auto& p : peers_) p->ws.reset();
}

void Fleet::send(Peer& p, std::string_view join_ref, std::string_view ref, std::string_view topic,
                 std::string_view event, std::string_view payload) {
  std::string f;
  f.reserve(32 + join_ref.size() + ref.size() + topic.size() + event.size() + payload.size());
  f += '[';
  if (join_ref.empty()) {
    f += "null";
  } else {
    f += '"';
    f += join_ref;
    f += '"';
  }
  f += ",\"";
  f += ref;
  f += "\",\"";
  f += topic;
  f += "\",\"";
  f += event;
  f += "\",";
  f += payload;
  f += ']';
  p.ws->send_text(f);
}

OpenStats Fleet::open(std::size_t n, const std::vector<std::string>& topics, const std::string& join_payload,
                      std::uint64_t deadline_ns) {
  OpenStats stats;
  stats.requested = n;
  stats.t_begin = now_ns();
  topics_ = topics;
  join_payload_ = join_payload;
  stats_ = &stats;
  next_ = peers_.size();
  end_ = next_ + n;
  peers_.reserve(end_);
  for (std::size_t i = next_; i < end_; ++i) {
    auto p = std::make_unique<Peer>();
    p->index = static_cast<std::uint32_t>(i);
    p->ws = std::make_unique<WsClient>(ctx_.loop, *this, static_cast<std::uint32_t>(i));
    peers_.push_back(std::move(p));
  }
  start_next();
  ctx_.loop.run_until([&] { return next_ >= end_ && in_flight_ == 0; }, deadline_ns);
  // Whatever did not make it in time fails.
  for (std::size_t i = end_ - n; i < end_; ++i) {
    auto& p = *peers_[i];
    if (p.st == Peer::St::connecting || p.st == Peer::St::joining) {
      p.st = Peer::St::failed;
      ++stats.failed;
      ++stats.errors["timeout"];
      p.ws->abort("timeout");
    } else if (p.st == Peer::St::pending) {
      p.st = Peer::St::failed;
      ++stats.failed;
      ++stats.errors["not started before the deadline"];
    }
  }
  in_flight_ = 0;
  next_ = end_;
  stats_ = nullptr;
  if (stats.t_end == 0) stats.t_end = now_ns();
  return stats;
}

void Fleet::start_next() {
  while (next_ < end_ && in_flight_ < ctx_.concurrency) {
    auto& p = *peers_[next_++];
    p.t_start = now_ns();
    std::string err;
    if (!p.ws->connect(target_ ? *target_ : ctx_.target, &err)) {
      p.st = Peer::St::failed;
      if (stats_) {
        ++stats_->failed;
        ++stats_->errors[err];
      }
      continue;
    }
    p.st = Peer::St::connecting;
    ++in_flight_;
  }
}

void Fleet::peer_done(Peer& p, bool ok, std::string_view why) {
  const bool was_in_flight = p.st == Peer::St::connecting || p.st == Peer::St::joining;
  if (ok) {
    p.st = Peer::St::joined;
    p.t_joined = now_ns();
    ++joined_;
    if (stats_) {
      ++stats_->ok;
      stats_->per_conn.add(p.t_joined - p.t_start);
      stats_->t_end = p.t_joined;
    }
  } else {
    p.st = Peer::St::failed;
    if (stats_) {
      ++stats_->failed;
      ++stats_->errors[std::string(why.substr(0, 160))];
    }
  }
  if (was_in_flight && in_flight_ > 0) {
    --in_flight_;
    start_next();
  }
}

std::size_t Fleet::join_more(std::size_t from, std::size_t to, const std::string& topic,
                             const std::string& join_payload, std::uint64_t deadline_ns) {
  std::size_t waiting = 0;
  for (std::size_t i = from; i < to && i < peers_.size(); ++i) {
    auto& p = *peers_[i];
    if (p.st != Peer::St::joined) continue;
    const std::string ref = "j" + std::to_string(p.next_ref++);
    send(p, ref, ref, topic, "phx_join", join_payload);
    ++p.joins_waiting;
    ++waiting;
  }
  std::size_t ok = 0;
  ctx_.loop.run_until(
      [&] {
        std::size_t w = 0;
        for (std::size_t i = from; i < to && i < peers_.size(); ++i) w += peers_[i]->joins_waiting;
        return w == 0;
      },
      deadline_ns);
  for (std::size_t i = from; i < to && i < peers_.size(); ++i) {
    if (peers_[i]->st == Peer::St::joined && peers_[i]->joins_waiting == 0) ++ok;
  }
  return ok;
}

void Fleet::close_all(std::uint64_t grace_ns) {
  closing_ = true;
  closing_left_ = 0;
  for (auto& p : peers_) {
    if (p->ws && p->ws->state() != WsClient::State::closed && p->ws->state() != WsClient::State::idle) {
      ++closing_left_;
      p->ws->close();  // resets a connection still connecting or upgrading (on_closed counts it)
    }
  }
  const auto deadline = now_ns() + grace_ns;
  ctx_.loop.run_until([&] { return closing_left_ == 0; }, deadline);
  for (auto& p : peers_) {
    if (p->ws && p->ws->state() != WsClient::State::closed && p->ws->state() != WsClient::State::idle) {
      ++close_timeouts_;
      p->ws->abort("close timeout");
    }
  }
  closing_ = false;
}

void Fleet::on_open(WsClient& c, std::uint64_t now) {
  auto& p = *peers_[c.id()];
  p.t_open = now;
  p.st = Peer::St::joining;
  for (const auto& topic : topics_) {
    const std::string ref = "j" + std::to_string(p.next_ref++);
    send(p, ref, ref, topic, "phx_join", join_payload_);
    ++p.joins_waiting;
  }
  if (topics_.empty()) peer_done(p, true, {});
}

void Fleet::on_text(WsClient& c, std::string_view text, std::uint64_t now) {
  auto& p = *peers_[c.id()];
  PhxFrame f;
  if (!parse_frame(text, f)) {
    ++unparsed_;
    return;
  }
  if (f.event == "phx_reply" && !f.ref_null && !f.ref.empty() && f.ref[0] == 'j' && p.joins_waiting > 0) {
    --p.joins_waiting;
    if (!reply_ok(f.payload)) {
      if (p.st == Peer::St::joining) {
        peer_done(p, false, "join refused: " + reply_reason(f.payload));
        p.ws->close();
      }
      return;
    }
    if (p.st == Peer::St::joining && p.joins_waiting == 0) peer_done(p, true, {});
    return;
  }
  on_frame_(p, f, now);
}

void Fleet::on_closed(WsClient& c, bool clean, std::string_view why) {
  auto& p = *peers_[c.id()];
  if (closing_ && closing_left_ > 0) --closing_left_;
  if (p.st == Peer::St::connecting || p.st == Peer::St::joining) {
    peer_done(p, false, why);
  } else if (p.st == Peer::St::joined) {
    --joined_;
    if (!closing_ || !clean) {
      if (!closing_) {
        ++unexpected_closes_;
        ++close_reasons_[std::string(why.substr(0, 120))];
      }
    }
  }
  p.st = Peer::St::closed;
  p.joins_waiting = 0;
}

}  // namespace bench
