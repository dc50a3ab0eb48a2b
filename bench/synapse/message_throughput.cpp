// message_throughput: one publisher and N subscribers on one pub/sub topic.
//
// Phases, run in order of subscriber count (the subscriber fleet only grows):
//   sustained  R msg/s for D s to N subscribers: drops, latency
//   burst      M messages written back to back: time until every subscriber
//              has every message, deliveries/s
//   single     one message at a time (K of them, spaced), latency across subscribers
//   fanout     R msg/s for D s to N subscribers (10,000 at 50/s by default)
//
// Each published payload carries {"s": seq, "t": send CLOCK_MONOTONIC ns,
// "p": phase}; subscribers check seq and _meta.offset for loss, duplicates
// and order, and record now - t as delivery latency.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>

#include "common.hpp"

namespace bench {
namespace {

// The published event. "shout" because the uWebSockets peer (the issue 16
// baseline) fans out only that event; Synapse and the ws peer take any.
constexpr std::string_view kEvent = "shout";

struct PhaseSpec {
  std::string kind;  // sustained | burst | single | fanout
  std::size_t subs = 0;
  std::uint32_t messages = 0;
  double rate = 0;      // messages/s (sustained, fanout); gap for single
  double duration = 0;  // s
};

class Throughput {
 public:
  explicit Throughput(Context& ctx)
      : ctx_(ctx), fleet_(ctx, [this](Peer& p, const PhxFrame& f, std::uint64_t now) { on_frame(p, f, now); }) {
    topic_ = ctx.args.str("topic", "bench:room");
    const auto pad_bytes = static_cast<std::size_t>(std::max<std::int64_t>(0, ctx.args.integer("payload-bytes", 0)));
    pad_.assign(pad_bytes, 'x');
    drain_ = ms_ns(ctx.args.num("drain-s", 10) * 1000);
    timeout_ = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
    sync_ = ctx.args.has("sync-stdin");
  }

  int run();

 private:
  bool ensure_subscribers(std::size_t n, Json& setup);
  void begin_phase(std::uint32_t expected);
  void publish(std::int64_t seq, bool flush);
  void on_frame(Peer& p, const PhxFrame& f, std::uint64_t now);
  Json end_phase(const PhaseSpec& spec, std::uint64_t t0, std::uint64_t t_last_send);
  Json run_rate(const PhaseSpec& spec);
  Json run_burst(const PhaseSpec& spec);
  Json run_single(const PhaseSpec& spec);
  void sync_point(const std::string& what);
  std::optional<std::vector<double>> metrics();

  Context& ctx_;
  Fleet fleet_;
  std::string topic_, pad_, payload_;
  std::uint64_t drain_ = 0, timeout_ = 0;
  bool sync_ = false;

  // The phase in progress.
  std::int64_t phase_ = 0;
  std::uint32_t expected_ = 0;
  std::size_t subs_at_start_ = 0;
  Histogram lat_;
  std::uint64_t complete_subs_ = 0, deliveries_ = 0, stale_ = 0, self_echo_ = 0, unparsed_ = 0;
  std::uint64_t last_delivery_ = 0;
  std::uint64_t replies_ok_ = 0, replies_err_ = 0;
  std::map<std::string, int> reply_errors_;
  std::vector<std::uint64_t> msg_done_;  // per message: deliveries received (single)
  std::vector<std::uint64_t> msg_max_;   // per message: slowest delivery (single)
  std::uint64_t sent_ = 0;

  // Totals over every phase.
  std::uint64_t lost_total_ = 0, dup_total_ = 0, reorder_total_ = 0;
};

void Throughput::sync_point(const std::string& what) {
  if (!sync_) return;
  std::cout << "SYNC " << what << std::endl;
  pollfd p{0, POLLIN, 0};
  if (::poll(&p, 1, 30000) > 0) {
    char buf[256];
    [[maybe_unused]] const auto n = ::read(0, buf, sizeof buf);
  }
}

std::optional<std::vector<double>> Throughput::metrics() {
  return scrape_metrics(ctx_.target.host, ctx_.target.port,
                        {"synapse_write_syscalls_total", "synapse_deliveries_total", "synapse_frames_out_total"},
                        ctx_.target.tls);
}

bool Throughput::ensure_subscribers(std::size_t n, Json& setup) {
  auto& peers = fleet_.peers();
  if (peers.empty()) {
    auto s = fleet_.open(1, {topic_}, "{}", now_ns() + timeout_);
    if (s.ok != 1) {
      std::cerr << "the publisher could not join: "
                << (s.errors.empty() ? std::string("?") : s.errors.begin()->first) << "\n";
      return false;
    }
  }
  const std::size_t have = peers.size() - 1;
  if (have < n) {
    auto s = fleet_.open(n - have, {topic_}, "{}", now_ns() + timeout_);
    setup = s.json();
    for (const auto& [why, count] : s.errors) std::cerr << "  " << count << " subscribers failed: " << why << "\n";
  }
  return true;
}

void Throughput::begin_phase(std::uint32_t expected) {
  ++phase_;
  expected_ = expected;
  subs_at_start_ = 0;
  auto& peers = fleet_.peers();
  for (std::size_t i = 1; i < peers.size(); ++i) {
    peers[i]->seq.reset(expected);
    if (peers[i]->st == Peer::St::joined) ++subs_at_start_;
  }
  lat_ = Histogram();
  complete_subs_ = deliveries_ = stale_ = self_echo_ = unparsed_ = 0;
  last_delivery_ = 0;
  replies_ok_ = replies_err_ = 0;
  reply_errors_.clear();
  sent_ = 0;
  msg_done_.assign(expected, 0);
  msg_max_.assign(expected, 0);
}

void Throughput::publish(std::int64_t seq, bool flush) {
  auto& pub = *fleet_.peers()[0];
  build_publish(payload_, seq, now_ns(), phase_, pad_);
  std::string frame;
  frame.reserve(payload_.size() + topic_.size() + 40);
  frame += "[\"j1\",\"p";
  frame += std::to_string(seq);
  frame += "\",\"";
  frame += topic_;
  frame += "\",\"";
  frame += kEvent;
  frame += "\",";
  frame += payload_;
  frame += ']';
  if (flush) {
    pub.ws->send_text(frame);
  } else {
    pub.ws->queue_text(frame);
  }
  ++sent_;
}

void Throughput::on_frame(Peer& p, const PhxFrame& f, std::uint64_t now) {
  if (p.index == 0) {
    if (f.event == "phx_reply") {
      if (reply_ok(f.payload)) {
        ++replies_ok_;
      } else {
        ++replies_err_;
        ++reply_errors_[reply_reason(f.payload)];
      }
    } else if (f.event == kEvent) {
      ++self_echo_;
    }
    return;
  }
  if (f.event != kEvent) return;  // nothing else is expected on the topic
  Delivery d;
  if (!parse_delivery(f.payload, d)) {
    ++unparsed_;
    return;
  }
  if (d.phase != phase_) {
    ++stale_;
    return;
  }
  ++deliveries_;
  const std::uint64_t latency = now > d.t_ns ? now - d.t_ns : 0;
  lat_.add(latency);
  last_delivery_ = now;
  if (d.seq >= 0 && static_cast<std::size_t>(d.seq) < msg_done_.size()) {
    ++msg_done_[static_cast<std::size_t>(d.seq)];
    msg_max_[static_cast<std::size_t>(d.seq)] = std::max(msg_max_[static_cast<std::size_t>(d.seq)], latency);
  }
  if (p.seq.on(d.seq, d.offset)) ++complete_subs_;
}

Json Throughput::end_phase(const PhaseSpec& spec, std::uint64_t t0, std::uint64_t t_last_send) {
  auto& peers = fleet_.peers();
  std::uint64_t unique = 0, dup = 0, reordered = 0, out_of_range = 0;
  for (std::size_t i = 1; i < peers.size(); ++i) {
    unique += peers[i]->seq.unique();
    dup += peers[i]->seq.duplicates();
    reordered += peers[i]->seq.reordered();
    out_of_range += peers[i]->seq.out_of_range();
  }
  const std::uint64_t expected_total = static_cast<std::uint64_t>(subs_at_start_) * expected_;
  const std::uint64_t lost = expected_total > unique ? expected_total - unique : 0;
  lost_total_ += lost;
  dup_total_ += dup;
  reorder_total_ += reordered;
  const bool complete = subs_at_start_ > 0 && complete_subs_ == subs_at_start_;
  const double span = last_delivery_ > t0 ? ns_s(last_delivery_ - t0) : 0;

  Json j;
  j.str("kind", spec.kind).integer("subscribers", static_cast<std::int64_t>(subs_at_start_));
  j.integer("messages", expected_).integer("published", static_cast<std::int64_t>(sent_));
  if (spec.kind == "sustained" || spec.kind == "fanout") {
    j.num("rate_per_s", spec.rate, 1).num("duration_s", spec.duration, 1);
    j.num("publish_s", ns_s(t_last_send - t0), 3);
  }
  j.integer("expected_deliveries", static_cast<std::int64_t>(expected_total));
  j.integer("deliveries", static_cast<std::int64_t>(deliveries_));
  j.integer("lost", static_cast<std::int64_t>(lost));
  j.integer("duplicated", static_cast<std::int64_t>(dup));
  j.integer("reordered", static_cast<std::int64_t>(reordered));
  j.integer("stale", static_cast<std::int64_t>(stale_ + out_of_range));
  j.integer("self_echo", static_cast<std::int64_t>(self_echo_));
  j.integer("unparsed", static_cast<std::int64_t>(unparsed_));
  j.boolean("complete", complete);
  if (complete) {
    j.num("completion_s", span, 4);
  } else {
    j.null("completion_s");
  }
  j.num("deliveries_per_s", span > 0 ? static_cast<double>(deliveries_) / span : 0.0, 0);
  j.obj("latency", latency_json(lat_));
  j.integer("publish_replies_ok", static_cast<std::int64_t>(replies_ok_));
  j.integer("publish_replies_error", static_cast<std::int64_t>(replies_err_));
  if (!reply_errors_.empty()) {
    Json e;
    for (const auto& [why, n] : reply_errors_) e.integer(why, n);
    j.obj("publish_errors", e);
  }
  j.integer("connections_dropped", static_cast<std::int64_t>(fleet_.unexpected_closes()));
  return j;
}

Json Throughput::run_rate(const PhaseSpec& spec) {
  const auto total = static_cast<std::uint32_t>(std::max(1.0, spec.rate * spec.duration));
  begin_phase(total);
  PhaseClock clock(ctx_);
  const std::uint64_t t0 = now_ns();
  const std::uint64_t publish_end = t0 + static_cast<std::uint64_t>(spec.duration * 1e9) + ms_ns(1000);
  const std::uint64_t t_last_send = pace_sends(ctx_.loop, t0, total, spec.rate, publish_end,
                                               [&](std::uint32_t i) { publish(static_cast<std::int64_t>(i), true); });
  ctx_.loop.run_until([&] { return complete_subs_ == subs_at_start_ && replies_ok_ + replies_err_ >= sent_; },
                      now_ns() + drain_);
  auto j = end_phase(spec, t0, t_last_send);
  j.obj("phase", clock.finish());
  return j;
}

Json Throughput::run_burst(const PhaseSpec& spec) {
  begin_phase(spec.messages);
  sync_point("ready burst_" + std::to_string(subs_at_start_));
  PhaseClock clock(ctx_);
  const std::uint64_t t0 = now_ns();
  for (std::uint32_t i = 0; i < spec.messages; ++i) publish(i, false);
  fleet_.peers()[0]->ws->flush();
  ctx_.loop.run_until([&] { return complete_subs_ == subs_at_start_ && replies_ok_ + replies_err_ >= sent_; },
                      t0 + timeout_);
  auto phase = clock.finish();
  sync_point("done burst_" + std::to_string(subs_at_start_));
  auto j = end_phase(spec, t0, t0);
  j.obj("phase", phase);
  return j;
}

Json Throughput::run_single(const PhaseSpec& spec) {
  begin_phase(spec.messages);
  PhaseClock clock(ctx_);
  const std::uint64_t t0 = now_ns();
  const auto gap = ms_ns(spec.rate);
  for (std::uint32_t i = 0; i < spec.messages; ++i) {
    const auto t = now_ns();
    publish(i, true);
    // Wait for every subscriber to have it (or a generous time), then the gap.
    ctx_.loop.run_until([&] { return msg_done_[i] >= subs_at_start_; }, t + ms_ns(5000));
    ctx_.loop.run_for(gap);
  }
  ctx_.loop.run_until([&] { return complete_subs_ == subs_at_start_ && replies_ok_ + replies_err_ >= sent_; },
                      now_ns() + ms_ns(2000));
  auto j = end_phase(spec, t0, t0);
  Histogram full;  // per message: time until the last subscriber had it
  for (std::uint32_t i = 0; i < spec.messages; ++i) {
    if (msg_done_[i] >= subs_at_start_) full.add(msg_max_[i]);
  }
  j.obj("fanout_complete", latency_json(full));
  j.obj("phase", clock.finish());
  return j;
}

int Throughput::run() {
  const bool small = ctx_.small;
  std::vector<PhaseSpec> phases;
  const auto only = ctx_.args.str("only", "sustained,burst,single,fanout");
  auto want = [&](const char* k) { return only.find(k) != std::string::npos; };
  if (want("sustained")) {
    phases.push_back({"sustained", static_cast<std::size_t>(ctx_.args.integer("sustained-subs", small ? 100 : 100)),
                      0, ctx_.args.num("sustained-rate", 100), ctx_.args.num("sustained-duration", small ? 5 : 30)});
  }
  if (want("burst")) {
    for (const auto n : ctx_.args.ints("burst-subs", small ? std::vector<std::int64_t>{100, 300}
                                                           : std::vector<std::int64_t>{100, 1000})) {
      phases.push_back({"burst", static_cast<std::size_t>(n),
                        static_cast<std::uint32_t>(ctx_.args.integer("burst-messages", 1000)), 0, 0});
    }
  }
  if (want("single")) {
    for (const auto n : ctx_.args.ints("single-subs", small ? std::vector<std::int64_t>{100, 1000}
                                                            : std::vector<std::int64_t>{100, 1000, 10000})) {
      phases.push_back({"single", static_cast<std::size_t>(n),
                        static_cast<std::uint32_t>(ctx_.args.integer("single-repeats", 20)),
                        ctx_.args.num("single-gap-ms", 50), 0});
    }
  }
  if (want("fanout")) {
    phases.push_back({"fanout", static_cast<std::size_t>(ctx_.args.integer("fanout-subs", small ? 1000 : 10000)), 0,
                      ctx_.args.num("fanout-rate", 50), ctx_.args.num("fanout-duration", small ? 3 : 10)});
  }
  std::stable_sort(phases.begin(), phases.end(), [](const PhaseSpec& a, const PhaseSpec& b) { return a.subs < b.subs; });

  Table table({"phase", "subs", "msgs", "deliveries", "lost", "dup", "reord", "complete s", "deliv/s", "p50 ms",
               "p99 ms", "max ms", "srv CPU %", "bench CPU %", "writes/deliv"});
  std::vector<Json> rows;
  bool ok = true;
  for (const auto& spec : phases) {
    Json setup;
    if (!ensure_subscribers(spec.subs, setup)) {
      ok = false;
      break;
    }
    ctx_.loop.run_for(ms_ns(200));
    // The server's own counters, when it has them (Synapse's /metrics; the
    // ws baseline has none): write syscalls per delivery in this phase.
    const auto m0 = metrics();
    Json j;
    if (spec.kind == "burst") {
      j = run_burst(spec);
    } else if (spec.kind == "single") {
      j = run_single(spec);
    } else {
      j = run_rate(spec);
    }
    const auto m1 = metrics();
    if (m0 && m1) {
      const double writes = (*m1)[0] - (*m0)[0], deliveries = (*m1)[1] - (*m0)[1], frames = (*m1)[2] - (*m0)[2];
      Json s;
      s.num("write_syscalls", writes, 0).num("server_deliveries", deliveries, 0).num("frames_out", frames, 0);
      s.num("write_syscalls_per_delivery", deliveries > 0 ? writes / deliveries : 0.0, 4);
      s.num("write_syscalls_per_frame", frames > 0 ? writes / frames : 0.0, 4);
      s.str("source", "/metrics");
      j.obj("server_syscalls", s);
    } else {
      j.null("server_syscalls");
    }
    j.obj("setup", setup);
    rows.push_back(j);
    // Table cells come back out of the JSON we just built.
    std::string name = spec.kind;
    if (spec.kind == "sustained" || spec.kind == "fanout") name += " " + fmt(spec.rate, 0) + "/s";
    const std::string dump = j.dump();
    auto field = [&](const char* key) {
      const std::string needle = std::string("\"") + key + "\":";
      const auto at = dump.find(needle);
      if (at == std::string::npos) return std::string("-");
      auto end = dump.find_first_of(",}", at + needle.size());
      auto v = dump.substr(at + needle.size(), end - at - needle.size());
      return v == "null" ? std::string("-") : v;
    };
    table.row({name, field("subscribers"), field("messages"), field("deliveries"), field("lost"), field("duplicated"),
               field("reordered"), field("completion_s"), field("deliveries_per_s"), field("p50_ms"), field("p99_ms"),
               field("max_ms"), field("server_cpu_pct"), field("bench_cpu_pct"),
               field("write_syscalls_per_delivery")});
    ctx_.loop.run_for(ms_ns(300));
  }
  fleet_.close_all(ms_ns(10000));

  Json result;
  result.arr("phases", rows);
  result.integer("lost", static_cast<std::int64_t>(lost_total_));
  result.integer("duplicated", static_cast<std::int64_t>(dup_total_));
  result.integer("reordered", static_cast<std::int64_t>(reorder_total_));
  result.integer("unexpected_closes", static_cast<std::int64_t>(fleet_.unexpected_closes()));
  result.integer("close_timeouts", static_cast<std::int64_t>(fleet_.close_timeouts()));
  if (!fleet_.close_reasons().empty()) {
    Json e;
    for (const auto& [why, n] : fleet_.close_reasons()) e.integer(why, n);
    result.obj("close_reasons", e);
  }
  result.integer("payload_pad_bytes", static_cast<std::int64_t>(pad_.size()));
  ctx_.emit(result, "message_throughput (" + ctx_.label + ")\n" + table.render());
  return ok ? 0 : 1;
}

}  // namespace

int run_message_throughput(Context& ctx) {
  Throughput t(ctx);
  return t.run();
}

}  // namespace bench
