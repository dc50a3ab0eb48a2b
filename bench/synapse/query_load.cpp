// query_load: the cortex under concurrent queries over stored memories.
//
// 1. Stores --memories synthetic memories with the memory.store tool (event
//    `tool`), --store-connections connections with up to --in-flight runs each.
// 2. For --duration s, --query-connections connections each keep --in-flight
//    queries (event `query`) running: every query is answered by a reply
//    {ref, status}, `thought` pushes, then exactly one terminal push.
//    Queries/s, first-thought and result latency; lost (no terminal),
//    duplicated (a second terminal) and reordered (thought seq not
//    increasing, or a thought after the terminal).
#include <iostream>
#include <unordered_map>

#include "common.hpp"

namespace bench {
namespace {

// A deterministic vocabulary of pronounceable words.
std::vector<std::string> make_vocabulary(std::size_t n) {
  static const char* const syl[] = {"ka", "lo", "mi", "ren", "tu", "sa", "vor", "ne", "di", "qua", "ber", "zo",
                                    "fin", "gal", "hu", "pex", "jor", "ly", "wen", "cet"};
  constexpr std::size_t ns = sizeof syl / sizeof syl[0];
  std::vector<std::string> out;
  for (std::size_t i = 0; out.size() < n; ++i) {
    std::string w = std::string(syl[i % ns]) + syl[(i / ns) % ns];
    if (i >= ns * ns) w += syl[(i / (ns * ns)) % ns];
    out.push_back(w);
  }
  return out;
}

std::string_view payload_ref(std::string_view payload) {
  const auto at = payload.find("\"ref\":\"");
  if (at == std::string_view::npos) return {};
  const auto start = at + 7;
  const auto end = payload.find('"', start);
  return end == std::string_view::npos ? std::string_view() : payload.substr(start, end - start);
}

struct Run {
  std::uint64_t t_send = 0;
  std::int64_t last_seq = 0;
  bool first_thought = false;
  bool done = false;
  std::uint32_t peer = 0;
};

}  // namespace

int run_query_load(Context& ctx) {
  const bool small = ctx.small;
  const auto memories = static_cast<std::uint64_t>(ctx.args.integer("memories", small ? 1000 : 10000));
  const auto store_conns = static_cast<std::size_t>(ctx.args.integer("store-connections", 8));
  const auto query_conns = static_cast<std::size_t>(ctx.args.integer("query-connections", 4));
  const auto in_flight = static_cast<std::uint32_t>(ctx.args.integer("in-flight", 4));
  const double duration = ctx.args.num("duration", small ? 3 : 10);
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 120) * 1000);
  const auto words = static_cast<std::size_t>(ctx.args.integer("vocabulary", 2000));
  const std::string cortex = "cortex:" + ctx.agent;
  const auto vocab = make_vocabulary(words);
  Rng rng(42);

  // Shared by both phases: runs by ref, and what came back.
  std::unordered_map<std::string, Run> runs;
  std::vector<std::uint32_t> running;  // per peer
  Histogram first_thought, result_lat, store_lat;
  std::uint64_t terminals_ok = 0, terminals_err = 0, reply_err = 0, duplicated = 0, reordered = 0;
  std::map<std::string, int> errors;
  std::uint64_t started = 0, finished = 0;
  bool storing = true;
  std::function<void(Peer&)> next;

  Fleet fleet(ctx, [&](Peer& p, const PhxFrame& f, std::uint64_t now) {
    if (f.event == "phx_reply") {
      if (!reply_ok(f.payload)) {
        ++reply_err;
        ++errors["reply " + reply_reason(f.payload)];
        // No run exists: free the slot and start another. The message ref is
        // "t<k>" (tool) or "r<k>" (query) for the run "s<k>" or "q<k>".
        const std::string ref = (storing ? "s" : "q") + std::string(f.ref.substr(f.ref.empty() ? 0 : 1));
        auto r = runs.find(ref);
        if (r != runs.end() && !r->second.done) {
          r->second.done = true;
          ++finished;
          --running[p.index];
          next(p);
        }
      }
      return;
    }
    const auto ref = payload_ref(f.payload);
    if (ref.empty()) return;
    auto it = runs.find(std::string(ref));
    if (it == runs.end()) return;
    Run& r = it->second;
    if (f.event == "thought" || f.event == "progress") {
      if (r.done) {
        ++reordered;  // after the terminal
        return;
      }
      std::int64_t seq = 0;
      if (f.event == "thought" && find_int(f.payload, "seq", seq)) {
        if (seq <= r.last_seq) ++reordered;
        r.last_seq = seq;
      }
      if (!r.first_thought && f.event == "thought") {
        r.first_thought = true;
        if (!storing) first_thought.add(now - r.t_send);
      }
      return;
    }
    if (f.event == "result" || f.event == "error" || f.event == "interrupted") {
      if (r.done) {
        ++duplicated;
        return;
      }
      r.done = true;
      ++finished;
      if (f.event == "result") {
        ++terminals_ok;
        (storing ? store_lat : result_lat).add(now - r.t_send);
      } else {
        ++terminals_err;
        ++errors[std::string(f.event) + " " + reply_reason(f.payload)];
      }
      --running[p.index];
      next(p);
    }
  });

  // ---- store
  std::uint64_t to_store = memories;
  std::string buf;
  auto store_one = [&](Peer& p) {
    while (to_store > 0 && running[p.index] < in_flight && p.st == Peer::St::joined) {
      --to_store;
      const std::string ref = "s" + std::to_string(++started);
      buf = "{\"tool\":\"memory.store\",\"ref\":\"" + ref + "\",\"args\":{\"content\":\"";
      const std::size_t n = 8 + rng.below(9);
      for (std::size_t w = 0; w < n; ++w) {
        if (w) buf += ' ';
        buf += vocab[rng.below(static_cast<std::uint32_t>(vocab.size()))];
      }
      buf += "\",\"importance\":0.5}}";
      runs[ref] = Run{now_ns(), 0, false, false, p.index};
      ++running[p.index];
      Fleet::send(p, "j1", "t" + ref.substr(1), cortex, "tool", buf);
    }
  };
  const bool skip_store = ctx.args.has("skip-store");
  Table table({"phase", "runs", "ok", "errors", "lost", "dup", "reord", "runs/s", "first thought p50 ms",
               "p99 ms", "result p50 ms", "p99 ms", "srv CPU %", "bench CPU %"});
  Json result;

  auto os = fleet.open(store_conns + query_conns, {cortex}, "{}", now_ns() + timeout);
  if (os.ok == 0) {
    std::cerr << "query_load: no connection could join " << cortex << ": "
              << (os.errors.empty() ? std::string("?") : os.errors.begin()->first) << "\n";
    Json r;
    r.str("error", "could not join " + cortex);
    ctx.emit(r, "");
    return 1;
  }
  running.assign(fleet.peers().size(), 0);

  {
    PhaseClock clock(ctx);
    const auto t0 = now_ns();
    if (!skip_store) {
      next = store_one;
      for (std::size_t i = 0; i < store_conns && i < fleet.peers().size(); ++i) store_one(*fleet.peers()[i]);
      ctx.loop.run_until([&] { return to_store == 0 && finished == started; }, t0 + timeout);
    }
    const double wall = ns_s(now_ns() - t0);
    Json s;
    s.integer("memories", static_cast<std::int64_t>(skip_store ? 0 : memories));
    s.integer("stored", static_cast<std::int64_t>(terminals_ok));
    s.integer("errors", static_cast<std::int64_t>(terminals_err + reply_err));
    s.integer("lost", static_cast<std::int64_t>(started - finished));
    s.num("stores_per_s", wall > 0 ? static_cast<double>(terminals_ok) / wall : 0.0, 1);
    s.obj("latency", latency_json(store_lat));
    s.obj("phase", clock.finish());
    result.obj("store", s);
    table.row({"store", fmt_int(started), fmt_int(terminals_ok), fmt_int(terminals_err + reply_err),
               fmt_int(started - finished), fmt_int(duplicated), fmt_int(reordered),
               fmt(wall > 0 ? static_cast<double>(terminals_ok) / wall : 0, 0), "-", "-",
               fmt(ns_ms(store_lat.quantile(0.5)), 2), fmt(ns_ms(store_lat.quantile(0.99)), 2),
               fmt(clock.server_cpu_s >= 0 ? 100.0 * clock.server_cpu_s / wall : 0, 0), fmt(clock.bench_cpu_pct, 0)});
  }
  const std::uint64_t store_lost = started - finished;

  // ---- queries
  storing = false;
  const std::uint64_t dup_store = duplicated, reord_store = reordered;
  runs.clear();
  std::fill(running.begin(), running.end(), 0);
  terminals_ok = terminals_err = reply_err = 0;
  started = finished = 0;
  errors.clear();
  bool sending = true;
  auto query_one = [&](Peer& p) {
    while (sending && running[p.index] < in_flight && p.st == Peer::St::joined) {
      const std::string ref = "q" + std::to_string(++started);
      std::string q;
      const std::size_t n = 1 + rng.below(2);
      for (std::size_t w = 0; w < n; ++w) {
        if (w) q += ' ';
        q += vocab[rng.below(static_cast<std::uint32_t>(vocab.size()))];
      }
      runs[ref] = Run{now_ns(), 0, false, false, p.index};
      ++running[p.index];
      Fleet::send(p, "j1", "r" + ref.substr(1), cortex, "query", "{\"q\":\"" + q + "\",\"ref\":\"" + ref + "\"}");
    }
  };
  next = query_one;
  PhaseClock clock(ctx);
  const auto t0 = now_ns();
  const std::size_t first = store_conns < fleet.peers().size() ? store_conns : 0;
  for (std::size_t i = first; i < fleet.peers().size(); ++i) query_one(*fleet.peers()[i]);
  ctx.loop.run_until([] { return false; }, t0 + static_cast<std::uint64_t>(duration * 1e9));
  sending = false;
  const auto t_stop = now_ns();
  ctx.loop.run_until([&] { return finished == started; }, t_stop + ms_ns(30000));
  const double wall = ns_s(now_ns() - t0);
  const std::uint64_t lost = started - finished;
  Json qj;
  qj.integer("queries", static_cast<std::int64_t>(started));
  qj.integer("ok", static_cast<std::int64_t>(terminals_ok));
  qj.integer("errors", static_cast<std::int64_t>(terminals_err + reply_err));
  qj.integer("lost", static_cast<std::int64_t>(lost));
  qj.integer("duplicated", static_cast<std::int64_t>(duplicated - dup_store));
  qj.integer("reordered", static_cast<std::int64_t>(reordered - reord_store));
  qj.integer("concurrency", static_cast<std::int64_t>((fleet.peers().size() - first) * in_flight));
  qj.num("queries_per_s", wall > 0 ? static_cast<double>(terminals_ok) / wall : 0.0, 1);
  qj.obj("first_thought", latency_json(first_thought));
  qj.obj("result", latency_json(result_lat));
  Json e;
  for (const auto& [why, n] : errors) e.integer(why, n);
  qj.obj("error_reasons", e);
  qj.obj("phase", clock.finish());
  result.obj("queries", qj);
  table.row({"query", fmt_int(started), fmt_int(terminals_ok), fmt_int(terminals_err + reply_err), fmt_int(lost),
             fmt_int(duplicated - dup_store), fmt_int(reordered - reord_store),
             fmt(wall > 0 ? static_cast<double>(terminals_ok) / wall : 0, 0),
             fmt(ns_ms(first_thought.quantile(0.5)), 2), fmt(ns_ms(first_thought.quantile(0.99)), 2),
             fmt(ns_ms(result_lat.quantile(0.5)), 2), fmt(ns_ms(result_lat.quantile(0.99)), 2),
             fmt(clock.server_cpu_s >= 0 ? 100.0 * clock.server_cpu_s / wall : 0, 0), fmt(clock.bench_cpu_pct, 0)});
  for (const auto& [why, n] : errors) std::cerr << "  " << n << " x " << why << "\n";

  fleet.close_all(ms_ns(5000));
  result.integer("lost", static_cast<std::int64_t>(lost + store_lost));
  result.integer("duplicated", static_cast<std::int64_t>(duplicated));
  result.integer("reordered", static_cast<std::int64_t>(reordered));
  result.integer("unexpected_closes", static_cast<std::int64_t>(fleet.unexpected_closes()));
  ctx.emit(result, "query_load (" + ctx.label + ")\n" + table.render());
  return 0;
}

}  // namespace bench
