// connection_load: N connections, each connected, upgraded and joined to one
// pub/sub topic, for each N in --sizes. Wall time, per-connection p50/p99,
// failures, and the server's RSS growth per connection.
//
// RSS is read from /proc/<server-pid>/status before the first size (on a
// fresh server) and after each size is joined and settled; growth per
// connection is (after - before) / joined, and the same for its anonymous
// and file-backed parts (RssAnon, RssFile). The connections of one size are
// closed before the next size starts.
#include <iostream>

#include "common.hpp"

namespace bench {

int run_connection_load(Context& ctx) {
  const auto sizes = ctx.args.ints("sizes", ctx.small ? std::vector<std::int64_t>{100, 500, 1000}
                                                      : std::vector<std::int64_t>{100, 500, 1000, 5000, 10000});
  const auto settle = ms_ns(ctx.args.num("settle-ms", 500));
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
  const std::string topic = ctx.args.str("topic", "bench:conn");

  Table table({"connections", "ok", "failed", "wall s", "conn/s", "p50 ms", "p99 ms", "max ms", "RSS MB",
               "RSS/conn B", "anon/file B/conn", "server CPU s", "user/kernel us/conn", "bench CPU %"});
  std::vector<Json> rows;
  const auto base = ctx.server();
  std::uint64_t unexpected = 0, unparsed = 0;

  for (const auto n : sizes) {
    Fleet fleet(ctx, [&](Peer&, const PhxFrame&, std::uint64_t) {});
    PhaseClock clock(ctx);
    auto stats = fleet.open(static_cast<std::size_t>(n), {topic}, "{}", now_ns() + timeout);
    auto phase = clock.finish();
    // Let the server finish any work the joins left behind before reading its RSS.
    ctx.loop.run_for(settle);
    const auto after = ctx.server();
    const double wall = ns_s(stats.t_end - stats.t_begin);

    Json row = stats.json();
    row.integer("connections", n);
    row.num("connections_per_s", wall > 0 ? static_cast<double>(stats.ok) / wall : 0.0, 1);
    row.obj("phase", phase);
    double per_conn = -1, anon_per_conn = 0, file_per_conn = 0;
    if (base.ok && after.ok) {
      // Growth per joined connection, of all of RSS and of its two parts:
      // anonymous memory is what the connections hold; file pages are code
      // first run after the baseline was read.
      auto per_joined = [&](std::uint64_t before_kb, std::uint64_t after_kb) {
        return stats.ok ? (static_cast<double>(after_kb) - static_cast<double>(before_kb)) * 1024.0 /
                              static_cast<double>(stats.ok)
                        : 0.0;
      };
      per_conn = per_joined(base.rss_kb, after.rss_kb);
      anon_per_conn = per_joined(base.rss_anon_kb, after.rss_anon_kb);
      file_per_conn = per_joined(base.rss_file_kb, after.rss_file_kb);
      row.integer("rss_before_kb", static_cast<std::int64_t>(base.rss_kb))
          .integer("rss_after_kb", static_cast<std::int64_t>(after.rss_kb))
          .num("rss_per_conn_bytes", per_conn, 0)
          .num("rss_anon_per_conn_bytes", anon_per_conn, 0)
          .num("rss_file_per_conn_bytes", file_per_conn, 0);
    } else {
      row.null("rss_before_kb").null("rss_after_kb").null("rss_per_conn_bytes");
      row.null("rss_anon_per_conn_bytes").null("rss_file_per_conn_bytes");
    }
    fleet.close_all(ms_ns(10000));
    unexpected += fleet.unexpected_closes();
    unparsed += fleet.unparsed();
    row.integer("unexpected_closes", static_cast<std::int64_t>(fleet.unexpected_closes()));
    row.integer("close_timeouts", static_cast<std::int64_t>(fleet.close_timeouts()));
    rows.push_back(row);

    table.row({fmt_int(static_cast<std::uint64_t>(n)), fmt_int(stats.ok), fmt_int(stats.failed), fmt(wall, 3),
               fmt(wall > 0 ? static_cast<double>(stats.ok) / wall : 0, 0),
               fmt(ns_ms(stats.per_conn.quantile(0.5)), 2), fmt(ns_ms(stats.per_conn.quantile(0.99)), 2),
               fmt(ns_ms(stats.per_conn.max()), 2), after.ok ? fmt(static_cast<double>(after.rss_kb) / 1024, 1) : "-",
               per_conn >= 0 ? fmt(per_conn, 0) : "-",
               per_conn >= 0 ? fmt(anon_per_conn, 0) + " / " + fmt(file_per_conn, 0) : "-",
               clock.server_cpu_s >= 0 ? fmt(clock.server_cpu_s, 2) : "-",
               clock.server_user_s >= 0 && stats.ok
                   ? fmt(1e6 * clock.server_user_s / static_cast<double>(stats.ok), 1) + " / " +
                         fmt(1e6 * clock.server_sys_s / static_cast<double>(stats.ok), 1)
                   : "-",
               fmt(clock.bench_cpu_pct, 0)});
    for (const auto& [why, count] : stats.errors) {
      std::cout << "  " << n << " connections: " << count << " failed: " << why << "\n";
    }
    // Give the server a moment to release the closed connections.
    ctx.loop.run_for(settle);
  }

  Json result;
  result.arr("sizes", rows);
  // Lost/duplicated/reordered do not apply (no messages); what does: closes.
  result.integer("lost", 0).integer("duplicated", 0).integer("reordered", 0);
  result.integer("unexpected_closes", static_cast<std::int64_t>(unexpected));
  result.integer("unparsed_frames", static_cast<std::int64_t>(unparsed));
  if (base.ok) result.integer("rss_start_kb", static_cast<std::int64_t>(base.rss_kb));
  ctx.emit(result, "connection_load (" + ctx.label + ")\n" + table.render());
  return 0;
}

}  // namespace bench
