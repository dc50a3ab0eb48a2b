// fairness: another tenant's query latency while one tenant saturates the
// cortex worker pool (issue 19, item 10).
//
// 1. Tenant A (--key) stores --memories memories with memory.store, each 12
//    words of a --vocabulary-word vocabulary, so that a query of 16 of those
//    words matches nearly every memory and is expensive.
// 2. Idle reference: tenant B (--key2, another tenant's key, agent --agent2)
//    sends --idle-probes queries one after another, nothing else running.
// 3. Flood, --duration s: A's --flood-connections connections each keep
//    --in-flight 16-term queries running (far more than the workers), while
//    B keeps sending one query at a time, --probe-gap-ms apart.
// Figures: B's query latency (send to terminal event) idle and under the
// flood, p50/p99/max; A's queries/s, result latency, and how many of A's
// results were partial (the time budget) or refused (`overloaded`).
#include <iostream>
#include <unordered_map>

#include "common.hpp"

namespace bench {
namespace {

std::vector<std::string> fair_vocabulary(std::size_t n) {
  static const char* const syl[] = {"ka", "lo", "mi", "ren", "tu", "sa", "vor", "ne", "di", "qua",
                                    "ber", "zo", "fin", "gal", "hu", "pex", "jor", "ly", "wen", "cet"};
  std::vector<std::string> out;
  for (std::size_t i = 0; out.size() < n; ++i) out.push_back(std::string(syl[i % 20]) + syl[(i / 20) % 20] + "x");
  return out;
}

std::string_view ref_of(std::string_view payload) {
  const auto at = payload.find("\"ref\":\"");
  if (at == std::string_view::npos) return {};
  const auto end = payload.find('"', at + 7);
  return end == std::string_view::npos ? std::string_view() : payload.substr(at + 7, end - at - 7);
}

}  // namespace

int run_fairness(Context& ctx) {
  const bool small = ctx.small;
  const auto memories = static_cast<std::uint64_t>(ctx.args.integer("memories", small ? 5000 : 50000));
  const auto store_conns = static_cast<std::size_t>(ctx.args.integer("store-connections", 8));
  const auto flood_conns = static_cast<std::size_t>(ctx.args.integer("flood-connections", 8));
  const auto in_flight = static_cast<std::uint32_t>(ctx.args.integer("in-flight", 4));
  const double duration = ctx.args.num("duration", small ? 3 : 10);
  const auto idle_probes = static_cast<std::uint64_t>(ctx.args.integer("idle-probes", 20));
  const auto gap_ns = ms_ns(ctx.args.num("probe-gap-ms", 50));
  const auto timeout = ms_ns(ctx.args.num("timeout-s", 120) * 1000);
  const auto vocab = fair_vocabulary(static_cast<std::size_t>(ctx.args.integer("vocabulary", 100)));
  const std::string key2 = ctx.args.str("key2");
  const std::string topic_a = "cortex:" + ctx.agent;
  const std::string topic_b = "cortex:" + ctx.args.str("agent2", "bench2");
  if (key2.empty()) {
    std::cerr << "fairness needs --key2 KEY: a key of another tenant (keys create --tenant ...)\n";
    return 2;
  }
  Target target_b = ctx.target;
  const auto k = target_b.path.find("api_key=");
  target_b.path = (k == std::string::npos ? target_b.path + "&" : target_b.path.substr(0, k)) + "api_key=" + key2;
  Rng rng(7);

  enum class Phase { store, idle, flood, drain } phase = Phase::store;
  std::vector<std::uint32_t> running;
  std::unordered_map<std::string, std::uint64_t> sent_at;  // A's runs by ref
  std::uint64_t a_started = 0, a_finished = 0, a_ok = 0, a_partial = 0, a_errors = 0, a_refused = 0;
  std::map<std::string, int> errors;
  Histogram a_lat, b_idle, b_flood;
  std::uint64_t to_store = memories;
  bool sending = false;
  std::function<void(Peer&)> next_a;

  Fleet fleet_a(ctx, [&](Peer& p, const PhxFrame& f, std::uint64_t now) {
    if (f.event == "phx_reply") {
      if (reply_ok(f.payload)) return;
      // No run exists: message ref "m<k>" is run "a<k>".
      const std::string ref = "a" + std::string(f.ref.substr(f.ref.empty() ? 0 : 1));
      if (sent_at.erase(ref) == 0) return;
      ++a_refused;
      ++errors["reply " + reply_reason(f.payload)];
      ++a_finished;
      --running[p.index];
      next_a(p);
      return;
    }
    if (f.event != "result" && f.event != "error" && f.event != "interrupted") return;
    auto it = sent_at.find(std::string(ref_of(f.payload)));
    if (it == sent_at.end()) return;
    if (f.event == "result") {
      ++a_ok;
      if (phase != Phase::store) a_lat.add(now - it->second);
      if (f.payload.find("\"partial\":true") != std::string_view::npos) ++a_partial;
    } else {
      ++a_errors;
      ++errors[std::string(f.event) + " " + reply_reason(f.payload)];
    }
    sent_at.erase(it);
    ++a_finished;
    --running[p.index];
    next_a(p);
  });

  // B: one connection, one query at a time.
  std::uint64_t b_sent = 0, b_done = 0, b_errors = 0, b_t0 = 0;
  bool b_waiting = false, probing = false, timer_armed = false;
  Loop::TimerId probe_timer{};
  std::function<void()> send_probe;
  // The next probe, --probe-gap-ms after the last one ended.
  auto after_probe = [&](std::uint64_t now) {
    b_waiting = false;
    if (!probing) return;
    timer_armed = true;
    probe_timer = ctx.loop.at(now + gap_ns, [&] {
      timer_armed = false;
      send_probe();
    });
  };
  Fleet fleet_b(
      ctx,
      [&](Peer&, const PhxFrame& f, std::uint64_t now) {
        if (f.event == "phx_reply") {
          if (!reply_ok(f.payload) && b_waiting) {
            ++b_errors;
            ++errors["probe reply " + reply_reason(f.payload)];
            after_probe(now);
          }
          return;
        }
        if (f.event != "result" && f.event != "error" && f.event != "interrupted") return;
        if (!b_waiting || ref_of(f.payload) != "p" + std::to_string(b_sent)) return;
        ++b_done;
        if (f.event != "result") {
          ++b_errors;
          ++errors["probe " + std::string(f.event) + " " + reply_reason(f.payload)];
        }
        (phase == Phase::idle ? b_idle : b_flood).add(now - b_t0);
        after_probe(now);
      },
      &target_b);

  std::string buf;
  auto send_a = [&](Peer& p) {
    while (running[p.index] < in_flight && p.st == Peer::St::joined) {
      if (phase == Phase::store ? to_store == 0 : !sending) return;
      const std::string n = std::to_string(++a_started);
      if (phase == Phase::store) {
        --to_store;
        buf = "{\"tool\":\"memory.store\",\"ref\":\"a" + n + "\",\"args\":{\"content\":\"";
        for (int w = 0; w < 12; ++w) {
          if (w) buf += ' ';
          buf += vocab[rng.below(static_cast<std::uint32_t>(vocab.size()))];
        }
        buf += "\"}}";
        Fleet::send(p, "j1", "m" + n, topic_a, "tool", buf);
      } else {
        // 16 distinct words: the default term budget, all of them searched.
        buf = "{\"ref\":\"a" + n + "\",\"timeout_ms\":600000,\"q\":\"";
        const auto start = rng.below(static_cast<std::uint32_t>(vocab.size()));
        for (std::uint32_t w = 0; w < 16; ++w) {
          if (w) buf += ' ';
          buf += vocab[(start + w * 7) % vocab.size()];
        }
        buf += "\"}";
        Fleet::send(p, "j1", "m" + n, topic_a, "query", buf);
      }
      sent_at["a" + n] = now_ns();
      ++running[p.index];
    }
  };
  next_a = send_a;
  send_probe = [&] {
    if (!probing || b_waiting || fleet_b.peers().empty()) return;
    Peer& p = *fleet_b.peers()[0];
    if (p.st != Peer::St::joined) return;
    ++b_sent;
    b_waiting = true;
    b_t0 = now_ns();
    Fleet::send(p, "j1", "b" + std::to_string(b_sent), topic_b, "query",
                "{\"q\":\"" + vocab[b_sent % vocab.size()] + " " + vocab[(b_sent * 3) % vocab.size()] +
                    "\",\"ref\":\"p" + std::to_string(b_sent) + "\",\"timeout_ms\":600000}");
  };

  auto oa = fleet_a.open(store_conns + flood_conns, {topic_a}, "{}", now_ns() + timeout);
  auto ob = fleet_b.open(1, {topic_b}, "{}", now_ns() + timeout);
  if (oa.ok == 0 || ob.ok == 0) {
    std::cerr << "fairness: could not join " << (oa.ok == 0 ? topic_a : topic_b) << "\n";
    Json r;
    r.str("error", "could not join");
    ctx.emit(r, "");
    return 1;
  }
  running.assign(fleet_a.peers().size(), 0);
  Table table({"phase", "queries", "ok", "partial", "refused", "errors", "queries/s", "p50 ms", "p99 ms", "max ms",
               "srv CPU %"});
  Json result;

  // ---- store
  {
    PhaseClock clock(ctx);
    const auto t0 = now_ns();
    for (std::size_t i = 0; i < store_conns && i < fleet_a.peers().size(); ++i) send_a(*fleet_a.peers()[i]);
    ctx.loop.run_until([&] { return to_store == 0 && a_finished == a_started; }, t0 + timeout);
    const double wall = ns_s(now_ns() - t0);
    Json s;
    s.integer("memories", static_cast<std::int64_t>(memories));
    s.integer("stored", static_cast<std::int64_t>(a_ok));
    s.num("stores_per_s", wall > 0 ? static_cast<double>(a_ok) / wall : 0, 1);
    s.obj("phase", clock.finish());
    result.obj("store", s);
    std::cerr << "fairness: stored " << a_ok << " memories in " << fmt(wall, 1) << " s\n";
  }
  const std::uint64_t stored = a_ok;
  a_started = a_finished = a_ok = a_errors = a_refused = 0;
  sent_at.clear();
  std::fill(running.begin(), running.end(), 0);

  // ---- B alone
  phase = Phase::idle;
  {
    probing = true;
    send_probe();
    ctx.loop.run_until([&] { return b_done >= idle_probes && !b_waiting; }, now_ns() + timeout);
    probing = false;
  }
  const std::uint64_t idle_done = b_done;

  // ---- flood
  phase = Phase::flood;
  sending = true;
  PhaseClock clock(ctx);
  const auto t0 = now_ns();
  const std::size_t first = store_conns < fleet_a.peers().size() ? store_conns : 0;
  for (std::size_t i = first; i < fleet_a.peers().size(); ++i) send_a(*fleet_a.peers()[i]);
  probing = true;
  if (timer_armed) {
    ctx.loop.cancel(probe_timer);
    timer_armed = false;
  }
  // The first probe once A's queries are queued (the server reads them first).
  timer_armed = true;
  probe_timer = ctx.loop.at(now_ns() + gap_ns, [&] {
    timer_armed = false;
    send_probe();
  });
  ctx.loop.run_until([] { return false; }, t0 + static_cast<std::uint64_t>(duration * 1e9));
  sending = false;
  probing = false;
  if (timer_armed) {
    ctx.loop.cancel(probe_timer);
    timer_armed = false;
  }
  const double flood_wall = ns_s(now_ns() - t0);
  const std::uint64_t b_flood_done = b_done - idle_done;
  phase = Phase::drain;
  ctx.loop.run_until([&] { return a_finished == a_started && !b_waiting; }, now_ns() + ms_ns(60000));
  Json phase_json = clock.finish();

  auto row = [&](const char* name, std::uint64_t n, std::uint64_t okn, std::uint64_t partial, std::uint64_t refused,
                 std::uint64_t errs, double wall, const Histogram& h, const std::string& cpu) {
    table.row({name, fmt_int(n), fmt_int(okn), fmt_int(partial), fmt_int(refused), fmt_int(errs),
               fmt(wall > 0 ? static_cast<double>(okn) / wall : 0, 1), fmt(ns_ms(h.quantile(0.5)), 1),
               fmt(ns_ms(h.quantile(0.99)), 1), fmt(ns_ms(h.quantile(1.0)), 1), cpu});
  };
  row("B alone", idle_done, idle_done, 0, 0, 0, 0, b_idle, "-");
  row("B during A's flood", b_flood_done, b_flood_done, 0, 0, b_errors, 0, b_flood,
      fmt(clock.server_cpu_s >= 0 ? 100.0 * clock.server_cpu_s / flood_wall : 0, 0));
  row("A's flood", a_started, a_ok, a_partial, a_refused, a_errors, flood_wall, a_lat, "-");
  for (const auto& [why, n] : errors) std::cerr << "  " << n << " x " << why << "\n";

  result.integer("memories", static_cast<std::int64_t>(stored));
  result.integer("a_in_flight", static_cast<std::int64_t>((fleet_a.peers().size() - first) * in_flight));
  result.obj("b_idle", latency_json(b_idle));
  result.obj("b_during_flood", latency_json(b_flood));
  result.integer("b_queries_during_flood", static_cast<std::int64_t>(b_flood_done));
  result.integer("b_errors", static_cast<std::int64_t>(b_errors));
  Json a;
  a.integer("queries", static_cast<std::int64_t>(a_started));
  a.integer("ok", static_cast<std::int64_t>(a_ok));
  a.integer("partial", static_cast<std::int64_t>(a_partial));
  a.integer("refused", static_cast<std::int64_t>(a_refused));
  a.integer("errors", static_cast<std::int64_t>(a_errors));
  a.integer("lost", static_cast<std::int64_t>(a_started - a_finished));
  a.num("queries_per_s", flood_wall > 0 ? static_cast<double>(a_ok) / flood_wall : 0, 1);
  a.obj("result", latency_json(a_lat));
  result.obj("a_flood", a);
  result.obj("phase", phase_json);
  fleet_a.close_all(ms_ns(5000));
  fleet_b.close_all(ms_ns(5000));
  ctx.emit(result, "fairness (" + ctx.label + ")\n" + table.render());
  return 0;
}

}  // namespace bench
