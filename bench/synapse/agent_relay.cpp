// agent_relay: what the gateway costs between an agent worker and a client
// (protocol.md section 10), per token and in total.
//
// --workers W connections with the worker key (--worker-key) join
// agent:<agent> with capacity enough for every run; --runs R client
// connections each start one query on cortex:<agent>. Synapse hands each
// run to a worker (`run` push); the worker streams `token {run_id, text}`
// frames (without a ref, so they get no reply), each text carrying the
// token's index in its run and the worker's send time. The client reads the
// relayed `token {delta}` and checks every run's tokens arrive once, in
// order, with consecutive indexes.
//
// Phase "paced": every run streams --tokens-per-s tokens a second for
// --duration s: the gateway's added latency per token (worker send to
// client receive, one clock: both ends live in this process), p50/p99.
// --pacing staggered (the default): run i's tokens are due at
// t0 + (k + i/R)/rate, as independent streams are, and the bench sends what
// is due every --tick-us (100); --pacing aligned: every run's token is due
// at the same instant, one burst of R tokens per 1/rate (the worst case: a
// token waits behind the whole burst; --tick-us defaults to 1000).
// Phase "max": the workers send as fast as the server reads (each worker
// keeps at most --window-kib of unsent bytes) for --duration s: the tokens
// per second one server relays, and its CPU.
// After each phase every run ends with `result`; lost / duplicated /
// reordered tokens and runs are counted.
#include <iostream>
#include <unordered_map>

#include "common.hpp"

namespace bench {
namespace {

std::string_view string_field(std::string_view payload, std::string_view key) {
  const std::string pat = "\"" + std::string(key) + "\":\"";
  const auto at = payload.find(pat);
  if (at == std::string_view::npos) return {};
  const auto start = at + pat.size();
  const auto end = payload.find('"', start);
  return end == std::string_view::npos ? std::string_view() : payload.substr(start, end - start);
}

// One run as both ends see it.
struct RelayRun {
  std::string ref;
  std::string run_id;
  std::uint32_t client = 0;  // client peer index
  std::uint32_t worker = 0;  // worker peer index
  bool dispatched = false;   // the worker got its `run`
  bool ended = false;        // the worker sent `result`
  bool terminal = false;     // the client got the terminal event
  std::uint64_t sent = 0;      // tokens the worker sent
  std::uint64_t received = 0;  // tokens the client received
  std::int64_t next_index = 0;
  std::int64_t last_seq = 0;
  std::uint64_t t_start = 0;  // when the worker got the run
};

struct Counts {
  std::uint64_t lost = 0, duplicated = 0, reordered = 0, runs_ok = 0, runs_err = 0, unrouted = 0;
};

}  // namespace

int run_agent_relay(Context& ctx) {
  const bool small = ctx.small;
  const auto n_workers = static_cast<std::size_t>(ctx.args.integer("workers", 4));
  const auto n_runs = static_cast<std::size_t>(ctx.args.integer("runs", small ? 20 : 100));
  const double rate = ctx.args.num("tokens-per-s", 1000);
  const double duration = ctx.args.num("duration", small ? 2 : 5);
  const std::string pacing = ctx.args.str("pacing", "staggered");
  if (pacing != "staggered" && pacing != "aligned") {
    std::cerr << "agent_relay: --pacing is staggered or aligned\n";
    return 2;
  }
  const bool staggered = pacing == "staggered";
  const double tick_us = ctx.args.num("tick-us", staggered ? 100 : 1000);
  const auto window = static_cast<std::size_t>(ctx.args.integer("window-kib", 256)) * 1024;
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
  const std::string worker_key = ctx.args.str("worker-key");
  if (worker_key.empty()) {
    std::cerr << "agent_relay: --worker-key KEY is required (synapse keys create --worker --agent "
              << ctx.agent << " --unlimited)\n";
    return 2;
  }
  const std::string cortex = "cortex:" + ctx.agent;
  const std::string agent_topic = "agent:" + ctx.agent;

  Target wtarget = ctx.target;
  if (const auto at = wtarget.path.find("api_key="); at != std::string::npos) wtarget.path.resize(at);
  wtarget.path += (wtarget.path.find('?') == std::string::npos ? "?" : "&");
  wtarget.path += "api_key=" + worker_key;

  std::vector<RelayRun> runs;
  std::unordered_map<std::string, std::size_t> by_ref, by_id;
  Histogram token_lat;
  Counts c;
  std::map<std::string, int> errors;
  bool measuring = false;  // token latency is recorded in the paced phase only
  std::uint64_t received_total = 0;

  // A worker's `run` push may be read before the client's reply that names
  // the same run_id: it waits here until the reply is read.
  std::unordered_map<std::string, std::uint32_t> unmatched;  // run_id -> worker
  std::vector<std::vector<std::size_t>> worker_runs(n_workers);
  auto bind = [&](std::size_t i, std::uint32_t worker, std::uint64_t now) {
    RelayRun& r = runs[i];
    r.dispatched = true;
    r.worker = worker;
    r.t_start = now;
    worker_runs[worker].push_back(i);
  };

  // ---- clients
  Fleet clients(ctx, [&](Peer&, const PhxFrame& f, std::uint64_t now) {
    if (f.event == "phx_reply") {
      if (!reply_ok(f.payload)) {
        ++errors["reply " + reply_reason(f.payload)];
        return;
      }
      const auto ref = string_field(f.payload, "ref");
      const auto id = string_field(f.payload, "run_id");
      auto it = by_ref.find(std::string(ref));
      if (it == by_ref.end() || id.empty()) return;
      runs[it->second].run_id = std::string(id);
      by_id[std::string(id)] = it->second;
      if (auto u = unmatched.find(std::string(id)); u != unmatched.end()) {
        bind(it->second, u->second, now);
        unmatched.erase(u);
      }
      return;
    }
    const auto ref = string_field(f.payload, "ref");
    auto it = by_ref.find(std::string(ref));
    if (it == by_ref.end()) return;
    RelayRun& r = runs[it->second];
    if (f.event == "token") {
      if (r.terminal) {
        ++c.reordered;
        return;
      }
      std::int64_t seq = 0;
      if (find_int(f.payload, "seq", seq)) {
        if (seq <= r.last_seq) ++c.reordered;
        r.last_seq = seq;
      }
      // delta is "<index> <send ns> "
      const auto delta = string_field(f.payload, "delta");
      const auto sp = delta.find(' ');
      if (sp == std::string_view::npos) return;
      const std::int64_t index = std::stoll(std::string(delta.substr(0, sp)));
      const std::uint64_t t_send = std::stoull(std::string(delta.substr(sp + 1)));
      if (index < r.next_index) {
        ++c.duplicated;
      } else {
        if (index > r.next_index) {
          c.lost += static_cast<std::uint64_t>(index - r.next_index);
          ++c.reordered;
        }
        r.next_index = index + 1;
      }
      ++r.received;
      ++received_total;
      if (measuring && now >= t_send) token_lat.add(now - t_send);
      return;
    }
    if (f.event == "result" || f.event == "error" || f.event == "interrupted") {
      if (r.terminal) {
        ++c.duplicated;
        return;
      }
      r.terminal = true;
      if (f.event == "result") {
        ++c.runs_ok;
      } else {
        ++c.runs_err;
        ++errors[std::string(f.event) + " " + reply_reason(f.payload)];
      }
    }
  });

  // ---- workers
  std::string frame;
  // Queues [join_ref, ref, topic, event, payload] on a worker; a token goes
  // without a ref, so the server sends no reply for it.
  auto worker_send = [&](Peer& w, std::string_view event, std::string_view payload, bool with_ref) {
    frame.clear();
    frame += "[\"j1\",";
    if (with_ref) {
      frame += "\"w" + std::to_string(w.next_ref++) + "\"";
    } else {
      frame += "null";
    }
    frame += ",\"" + agent_topic + "\",\"";
    frame += event;
    frame += "\",";
    frame += payload;
    frame += ']';
    w.ws->queue_text(frame);
  };
  std::string tok;
  auto send_token = [&](Peer& w, RelayRun& r) {
    tok.clear();
    tok += "{\"run_id\":\"";
    tok += r.run_id;
    tok += "\",\"text\":\"";
    tok += std::to_string(r.sent);
    tok += ' ';
    tok += std::to_string(now_ns());
    tok += " \"}";
    worker_send(w, "token", tok, false);
    ++r.sent;
  };
  Fleet workers(
      ctx,
      [&](Peer& w, const PhxFrame& f, std::uint64_t now) {
        if (f.event == "phx_reply") {
          if (!reply_ok(f.payload)) ++errors["worker reply " + reply_reason(f.payload)];
          return;
        }
        if (f.event != "run") return;
        const std::string id(string_field(f.payload, "run_id"));
        if (auto it = by_id.find(id); it != by_id.end()) {
          bind(it->second, w.index, now);
        } else {
          unmatched[id] = w.index;
        }
      },
      &wtarget);

  const std::string capacity = "{\"capacity\":" + std::to_string(n_runs) + "}";
  auto ws = workers.open(n_workers, {agent_topic}, capacity, now_ns() + timeout);
  if (ws.ok != n_workers) {
    std::cerr << "agent_relay: " << ws.ok << " of " << n_workers << " workers joined " << agent_topic << ": "
              << (ws.errors.empty() ? std::string("?") : ws.errors.begin()->first) << "\n";
    Json r;
    r.str("error", "workers could not join " + agent_topic);
    ctx.emit(r, "");
    return 1;
  }
  auto cs = clients.open(n_runs, {cortex}, "{}", now_ns() + timeout);
  if (cs.ok != n_runs) {
    std::cerr << "agent_relay: " << cs.ok << " of " << n_runs << " clients joined " << cortex << "\n";
    Json r;
    r.str("error", "clients could not join " + cortex);
    ctx.emit(r, "");
    return 1;
  }

  Table table({"phase", "runs", "ok", "err", "tokens", "lost", "dup", "reord", "tokens/s", "p50 ms", "p99 ms",
               "srv CPU %", "bench CPU %"});
  Json result;
  std::uint64_t phase_no = 0;
  std::uint64_t lost_total = 0, dup_total = 0, reord_total = 0;

  // One phase: a query per client, every run dispatched to a worker, then
  // `feed` streams tokens for `duration`, then every run ends with `result`.
  auto phase = [&](const std::string& name, const std::function<void(std::uint64_t t0)>& feed) -> bool {
    runs.assign(n_runs, RelayRun{});
    by_ref.clear();
    by_id.clear();
    unmatched.clear();
    for (auto& v : worker_runs) v.clear();
    c = Counts{};
    received_total = 0;
    ++phase_no;
    for (std::size_t i = 0; i < n_runs; ++i) {
      RelayRun& r = runs[i];
      r.ref = "p" + std::to_string(phase_no) + "r" + std::to_string(i);
      r.client = static_cast<std::uint32_t>(i);
      by_ref[r.ref] = i;
      Fleet::send(*clients.peers()[i], "j1", r.ref, cortex, "query", "{\"q\":\"relay\",\"ref\":\"" + r.ref + "\"}");
    }
    const bool all = ctx.loop.run_until(
        [&] {
          for (const auto& r : runs) {
            if (!r.dispatched) return false;
          }
          return true;
        },
        now_ns() + timeout);
    if (!all) {
      std::size_t n = 0;
      for (const auto& r : runs) n += r.dispatched;
      std::cerr << "agent_relay: only " << n << " of " << n_runs << " runs reached a worker\n";
      for (const auto& [why, k] : errors) std::cerr << "  " << k << " x " << why << "\n";
      return false;
    }
    PhaseClock clock(ctx);
    const auto t0 = now_ns();
    measuring = name == "paced";
    feed(t0);
    std::uint64_t sent = 0;
    for (std::size_t w = 0; w < n_workers; ++w) {
      Peer& p = *workers.peers()[w];
      for (std::size_t i : worker_runs[w]) {
        RelayRun& r = runs[i];
        sent += r.sent;
        worker_send(p, "result", "{\"run_id\":\"" + r.run_id + "\",\"data\":{\"tokens\":" + std::to_string(r.sent) + "}}",
                    true);
        r.ended = true;
      }
      p.ws->flush();
    }
    ctx.loop.run_until(
        [&] {
          for (const auto& r : runs) {
            if (!r.terminal) return false;
          }
          return true;
        },
        now_ns() + timeout);
    measuring = false;
    const double wall = ns_s(now_ns() - t0);
    std::uint64_t received = 0, runs_lost = 0;
    for (const auto& r : runs) {
      received += r.received;
      runs_lost += !r.terminal;
      if (r.next_index < static_cast<std::int64_t>(r.sent)) c.lost += r.sent - static_cast<std::uint64_t>(r.next_index);
    }
    Json pj;
    pj.integer("runs", static_cast<std::int64_t>(n_runs));
    pj.integer("runs_ok", static_cast<std::int64_t>(c.runs_ok));
    pj.integer("runs_error", static_cast<std::int64_t>(c.runs_err));
    pj.integer("runs_lost", static_cast<std::int64_t>(runs_lost));
    pj.integer("tokens_sent", static_cast<std::int64_t>(sent));
    pj.integer("tokens_received", static_cast<std::int64_t>(received));
    pj.integer("lost", static_cast<std::int64_t>(c.lost));
    pj.integer("duplicated", static_cast<std::int64_t>(c.duplicated));
    pj.integer("reordered", static_cast<std::int64_t>(c.reordered));
    pj.num("tokens_per_s", wall > 0 ? static_cast<double>(received) / wall : 0.0, 1);
    if (name == "paced") {
      pj.num("offered_tokens_per_s", rate * static_cast<double>(n_runs), 1);
      pj.str("pacing", pacing);
      pj.num("tick_us", tick_us, 0);
      pj.obj("token_latency", latency_json(token_lat));
    }
    Json e;
    for (const auto& [why, k] : errors) e.integer(why, k);
    pj.obj("error_reasons", e);
    pj.obj("phase", clock.finish());
    result.obj(name, pj);
    table.row({name, fmt_int(n_runs), fmt_int(c.runs_ok), fmt_int(c.runs_err), fmt_int(received), fmt_int(c.lost),
               fmt_int(c.duplicated), fmt_int(c.reordered),
               fmt(wall > 0 ? static_cast<double>(received) / wall : 0, 0),
               name == "paced" ? fmt(ns_ms(token_lat.quantile(0.5)), 3) : "-",
               name == "paced" ? fmt(ns_ms(token_lat.quantile(0.99)), 3) : "-",
               fmt(clock.server_cpu_s >= 0 ? 100.0 * clock.server_cpu_s / wall : 0, 0), fmt(clock.bench_cpu_pct, 0)});
    lost_total += c.lost + runs_lost;
    dup_total += c.duplicated;
    reord_total += c.reordered;
    for (const auto& [why, k] : errors) std::cerr << "  " << k << " x " << why << "\n";
    errors.clear();
    return true;
  };

  const auto dur_ns = static_cast<std::uint64_t>(duration * 1e9);
  // Paced: every run's tokens are due at `rate` per second from t0 (run i
  // shifted by i/R of the interval when staggered); each tick sends what is
  // due (catching up when the loop was late).
  bool ok = phase("paced", [&](std::uint64_t t0) {
    const auto end = t0 + dur_ns;
    while (now_ns() < end) {
      const double due = rate * ns_s(now_ns() - t0);
      for (std::size_t w = 0; w < n_workers; ++w) {
        Peer& p = *workers.peers()[w];
        bool any = false;
        for (std::size_t i : worker_runs[w]) {
          RelayRun& r = runs[i];
          const double shift = staggered ? static_cast<double>(i) / static_cast<double>(n_runs) : 0.0;
          while (static_cast<double>(r.sent) + shift < due) {
            send_token(p, r);
            any = true;
          }
        }
        if (any) p.ws->flush();
      }
      ctx.loop.run_for(static_cast<std::uint64_t>(tick_us * 1000));
    }
  });
  // Max: each worker keeps its unsent bytes under the window, its runs in
  // turn, for as long as the server reads.
  ok = ok && phase("max", [&](std::uint64_t t0) {
    const auto end = t0 + dur_ns;
    std::vector<std::size_t> turn(n_workers, 0);
    while (now_ns() < end) {
      for (std::size_t w = 0; w < n_workers; ++w) {
        Peer& p = *workers.peers()[w];
        auto& mine = worker_runs[w];
        if (mine.empty()) continue;
        std::size_t budget = 256;
        while (budget-- > 0 && p.ws->pending_bytes() < window) {
          send_token(p, runs[mine[turn[w]++ % mine.size()]]);
        }
        p.ws->flush();
      }
      ctx.loop.run_for(ms_ns(0.2));
    }
  });

  workers.close_all(ms_ns(5000));
  clients.close_all(ms_ns(5000));
  result.integer("lost", static_cast<std::int64_t>(lost_total));
  result.integer("duplicated", static_cast<std::int64_t>(dup_total));
  result.integer("reordered", static_cast<std::int64_t>(reord_total));
  result.integer("unexpected_closes",
                 static_cast<std::int64_t>(workers.unexpected_closes() + clients.unexpected_closes()));
  ctx.emit(result, "agent_relay (" + ctx.label + ")\n" + table.render());
  return ok ? 0 : 1;
}

}  // namespace bench
