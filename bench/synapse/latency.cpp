// latency: round trips of `heartbeat` (phoenix topic) and cortex `ping` on
// cortex:<agent>, one at a time, with N idle connections (joined to a
// pub/sub topic, silent) alongside, for each N in --idle.
#include <iostream>

#include "common.hpp"

namespace bench {

int run_latency(Context& ctx) {
  const auto idle_sizes = ctx.args.ints("idle", ctx.small ? std::vector<std::int64_t>{100, 300}
                                                          : std::vector<std::int64_t>{100, 1000});
  const auto samples = static_cast<std::uint64_t>(ctx.args.integer("samples", ctx.small ? 2000 : 10000));
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
  const std::string cortex = "cortex:" + ctx.agent;

  Fleet idle(ctx, [](Peer&, const PhxFrame&, std::uint64_t) {});

  // The probe: one connection joined to the agent's cortex topic.
  std::string waiting_ref;  // the ref of the request in flight
  std::uint64_t got_reply_at = 0;
  bool got_ok = false;
  std::uint64_t stray = 0;
  Fleet probe(ctx, [&](Peer&, const PhxFrame& f, std::uint64_t now) {
    if (f.event != "phx_reply") return;
    if (!f.ref_null && f.ref == waiting_ref) {
      got_reply_at = now;
      got_ok = reply_ok(f.payload);
    } else {
      ++stray;  // a reply to something not (or no longer) asked: duplicate or late
    }
  });
  auto ps = probe.open(1, {cortex}, "{}", now_ns() + timeout);
  if (ps.ok != 1) {
    std::cerr << "latency: the probe could not join " << cortex << ": "
              << (ps.errors.empty() ? std::string("?") : ps.errors.begin()->first) << "\n";
    Json r;
    r.str("error", "probe could not join " + cortex);
    ctx.emit(r, "");
    return 1;
  }
  Peer& p = *probe.peers()[0];

  Table table({"idle conns", "round trip", "samples", "p50 ms", "p99 ms", "p999 ms", "max ms", "lost", "errors",
               "bench CPU %"});
  std::vector<Json> rows;
  std::uint64_t lost_total = 0;
  std::uint64_t counter = 0;

  for (const auto n : idle_sizes) {
    const std::size_t have = idle.peers().size();
    Json setup;
    if (static_cast<std::size_t>(n) > have) {
      auto s = idle.open(static_cast<std::size_t>(n) - have, {"bench:idle"}, "{}", now_ns() + timeout);
      setup = s.json();
      for (const auto& [why, c] : s.errors) std::cerr << "  " << c << " idle connections failed: " << why << "\n";
    }
    ctx.loop.run_for(ms_ns(300));
    for (const std::string kind : {"heartbeat", "ping"}) {
      Histogram h;
      std::uint64_t lost = 0, errors = 0;
      PhaseClock clock(ctx);
      for (std::uint64_t i = 0; i < samples && p.st == Peer::St::joined; ++i) {
        waiting_ref = (kind == "heartbeat" ? "h" : "g") + std::to_string(++counter);
        got_reply_at = 0;
        const auto t0 = now_ns();
        if (kind == "heartbeat") {
          Fleet::send(p, "", waiting_ref, "phoenix", "heartbeat", "{}");
        } else {
          Fleet::send(p, "j1", waiting_ref, cortex, "ping", "{}");
        }
        if (!ctx.loop.run_until([&] { return got_reply_at != 0; }, t0 + ms_ns(5000))) {
          ++lost;
          if (lost >= 3) break;
          continue;
        }
        if (!got_ok) ++errors;
        h.add(got_reply_at - t0);
      }
      waiting_ref.clear();
      lost_total += lost;
      auto phase = clock.finish();
      Json row;
      row.integer("idle_connections", static_cast<std::int64_t>(idle.joined()));
      row.str("kind", kind);
      row.obj("rtt", latency_json(h));
      row.integer("lost", static_cast<std::int64_t>(lost)).integer("errors", static_cast<std::int64_t>(errors));
      row.obj("phase", phase);
      row.obj("setup", setup);
      rows.push_back(row);
      table.row({fmt_int(idle.joined()), kind, fmt_int(h.count()), fmt(ns_ms(h.quantile(0.5)), 4),
                 fmt(ns_ms(h.quantile(0.99)), 4), fmt(ns_ms(h.quantile(0.999)), 4), fmt(ns_ms(h.max()), 4),
                 fmt_int(lost), fmt_int(errors), fmt(clock.bench_cpu_pct, 0)});
    }
  }
  probe.close_all(ms_ns(5000));
  idle.close_all(ms_ns(10000));

  Json result;
  result.arr("runs", rows);
  result.integer("lost", static_cast<std::int64_t>(lost_total));
  result.integer("duplicated", static_cast<std::int64_t>(stray));
  result.integer("reordered", 0);
  result.integer("unexpected_closes", static_cast<std::int64_t>(idle.unexpected_closes() + probe.unexpected_closes()));
  ctx.emit(result, "latency (" + ctx.label + ")\n" + table.render());
  return 0;
}

}  // namespace bench
