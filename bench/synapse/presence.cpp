// presence: N members join one topic; every tenth (--presence-every) joins
// with {"presence": true}, spread evenly through the joins. It shows that
// presence stays cheap on a big topic:
//   - pushes: a presence member receives one presence_state and then one
//     presence_diff per interval with changes, so its pushes grow with the
//     time it is a member, not with the number of joins (a diff per join
//     would be ~N x P / 2 pushes in all);
//   - bytes: every member must learn every other member once, so presence
//     bytes grow with N x P; each diff is serialized once and shared;
//   - correctness: every presence member's view, state and diffs applied by
//     phx_ref as phoenix.js's Presence does, must end with exactly N metas.
// Sizes scale N (default 2,500, 5,000, 10,000) so growth can be read off.
#include <algorithm>
#include <iostream>

#include "common.hpp"

namespace bench {
namespace {

// Each `"phx_ref":"..."` value in `json[from, to)`.
template <class Fn>
void for_each_ref(std::string_view json, std::size_t from, std::size_t to, Fn fn) {
  static constexpr std::string_view key = "\"phx_ref\":\"";
  std::size_t at = json.find(key, from);
  while (at != std::string_view::npos && at < to) {
    const std::size_t start = at + key.size();
    const std::size_t end = json.find('"', start);
    if (end == std::string_view::npos) return;
    fn(json.substr(start, end - start));
    at = json.find(key, end);
  }
}

// A presence member's view: the phx_refs it was told of, as 64-bit hashes
// (8 bytes each, so every member can be checked, not a sample).
struct View {
  std::uint64_t states = 0, diffs = 0, bytes = 0;
  std::vector<std::uint64_t> joined, left;
  // Distinct metas present: joined minus left, by phx_ref.
  std::size_t metas() {
    std::sort(joined.begin(), joined.end());
    joined.erase(std::unique(joined.begin(), joined.end()), joined.end());
    std::sort(left.begin(), left.end());
    std::size_t gone = 0;
    for (auto h : left) gone += std::binary_search(joined.begin(), joined.end(), h);
    return joined.size() - gone;
  }
};

std::uint64_t hash_ref(std::string_view r) { return std::hash<std::string_view>{}(r); }

}  // namespace

int run_presence(Context& ctx) {
  const auto sizes = ctx.args.ints("members", ctx.small ? std::vector<std::int64_t>{500, 1000}
                                                        : std::vector<std::int64_t>{2500, 5000, 10000});
  const auto every = std::max<std::int64_t>(1, ctx.args.integer("presence-every", 10));
  const auto rounds = std::max<std::int64_t>(1, ctx.args.integer("rounds", 20));
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
  const std::string topic = ctx.args.str("topic", "bench:presence");

  Table table({"members", "presence", "join s", "converged s", "states", "diffs", "diffs/member", "max diffs",
               "per-join pushes", "MB in", "KB/member", "server CPU s", "views exact"});
  const auto quiet_ns = ms_ns(ctx.args.num("quiet-ms", 400));
  std::vector<Json> rows;
  bool all_exact = true;

  for (const auto n : sizes) {
    const std::int64_t p = n / every;
    std::vector<View> views(static_cast<std::size_t>(n));
    std::int64_t presence_seen = 0;
    std::uint64_t last_presence_ns = now_ns();
    Fleet fleet(ctx, [&](Peer& peer, const PhxFrame& f, std::uint64_t now) {
      const bool state = f.event == "presence_state";
      if (!state && f.event != "presence_diff") return;
      last_presence_ns = now;
      View& v = views[peer.index];
      v.bytes += f.payload.size();
      if (state) {
        if (v.states++ == 0) ++presence_seen;
        for_each_ref(f.payload, 0, f.payload.size(), [&](std::string_view r) { v.joined.push_back(hash_ref(r)); });
        return;
      }
      ++v.diffs;
      const std::size_t leaves = f.payload.find("\"leaves\":");
      const std::size_t split = leaves == std::string_view::npos ? f.payload.size() : leaves;
      for_each_ref(f.payload, 0, split, [&](std::string_view r) { v.joined.push_back(hash_ref(r)); });
      for_each_ref(f.payload, split, f.payload.size(), [&](std::string_view r) { v.left.push_back(hash_ref(r)); });
    });

    // Joins in rounds; within each round the plain members go first, then
    // that round's share of presence members, so presence members join all
    // through the run and each one sees the topic grow.
    PhaseClock clock(ctx);
    const std::uint64_t t0 = now_ns();
    std::size_t failed = 0;
    const std::int64_t plain_total = n - p;
    for (std::int64_t r = 0; r < rounds; ++r) {
      const auto share = [&](std::int64_t total) { return total * (r + 1) / rounds - total * r / rounds; };
      const auto a = fleet.open(static_cast<std::size_t>(share(plain_total)), {topic}, "{}", now_ns() + timeout);
      const auto b = fleet.open(static_cast<std::size_t>(share(p)), {topic}, R"({"presence":true})", now_ns() + timeout);
      failed += a.failed + b.failed;
    }
    const std::uint64_t joined_at = now_ns();
    // Settled: every presence member has its state and no presence traffic
    // has arrived for a few intervals.
    // (The loop checks its condition only when something arrives, so wait
    // in short slices to notice the quiet.)
    const std::uint64_t settle_deadline = now_ns() + ms_ns(20000);
    while (!(presence_seen >= p && now_ns() - last_presence_ns > quiet_ns) && now_ns() < settle_deadline) {
      ctx.loop.run_for(ms_ns(50));
    }
    const std::uint64_t done_at = last_presence_ns;
    auto phase = clock.finish();

    std::uint64_t states = 0, diffs = 0, bytes = 0, max_diffs = 0, members_seen = 0, exact = 0;
    for (auto& v : views) {
      if (v.states == 0) continue;
      ++members_seen;
      states += v.states;
      diffs += v.diffs;
      bytes += v.bytes;
      max_diffs = std::max(max_diffs, v.diffs);
      const std::size_t m = v.metas();
      if (static_cast<std::int64_t>(m) == n) {
        ++exact;
      } else if (members_seen - exact <= 3) {
        std::cerr << "presence: a view holds " << m << " of " << n << " metas\n";
      }
      std::vector<std::uint64_t>().swap(v.joined);
      std::vector<std::uint64_t>().swap(v.left);
    }
    const bool ok = failed == 0 && members_seen == static_cast<std::uint64_t>(p) && exact == members_seen &&
                    states == static_cast<std::uint64_t>(p);
    all_exact &= ok;
    // With a diff per join, presence member k (joining after k * every
    // members) would receive one push per later join: about n * p / 2.
    const double per_join = static_cast<double>(n) * static_cast<double>(p) / 2.0;
    const double join_s = ns_s(joined_at - t0);
    const double conv_s = ns_s(done_at > t0 ? done_at - t0 : 0);

    Json row;
    row.integer("members", n).integer("presence_members", p).integer("failed", static_cast<std::int64_t>(failed));
    row.num("join_s", join_s, 3).num("converged_s", conv_s, 3);
    row.integer("presence_states", static_cast<std::int64_t>(states));
    row.integer("presence_diffs", static_cast<std::int64_t>(diffs));
    row.num("diffs_per_presence_member", p ? static_cast<double>(diffs) / static_cast<double>(p) : 0, 1);
    row.integer("max_diffs_one_member", static_cast<std::int64_t>(max_diffs));
    row.num("pushes_if_one_diff_per_join", per_join, 0);
    row.integer("presence_bytes", static_cast<std::int64_t>(bytes));
    row.num("presence_bytes_per_member", p ? static_cast<double>(bytes) / static_cast<double>(p) : 0, 0);
    row.integer("views", static_cast<std::int64_t>(members_seen));
    row.integer("views_exact", static_cast<std::int64_t>(exact));
    row.boolean("ok", ok);
    row.obj("phase", phase);
    rows.push_back(row);
    table.row({fmt_int(static_cast<std::uint64_t>(n)), fmt_int(static_cast<std::uint64_t>(p)), fmt(join_s, 3),
               fmt(conv_s, 3), fmt_int(states), fmt_int(diffs),
               fmt(p ? static_cast<double>(diffs) / static_cast<double>(p) : 0, 1), fmt_int(max_diffs), fmt(per_join, 0),
               fmt(static_cast<double>(bytes) / 1e6, 1), fmt(p ? static_cast<double>(bytes) / 1024.0 / static_cast<double>(p) : 0, 1),
               clock.server_cpu_s >= 0 ? fmt(clock.server_cpu_s, 2) : "-",
               fmt_int(exact) + "/" + fmt_int(members_seen) + (ok ? "" : " FAIL")});
    fleet.close_all(ms_ns(10000));
    ctx.loop.run_for(ms_ns(500));
  }

  Json result;
  result.arr("sizes", rows);
  result.boolean("ok", all_exact);
  result.integer("lost", 0).integer("duplicated", 0).integer("reordered", 0);
  ctx.emit(result, "presence (" + ctx.label + ")\n" + table.render());
  return all_exact ? 0 : 1;
}

}  // namespace bench
