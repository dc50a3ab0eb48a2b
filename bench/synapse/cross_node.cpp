// cross_node: fan-out latency across two Synapse nodes that share one Redis.
//
// N subscribers (--subs, default 1,000) join one pub/sub topic, half on node A
// (--url) and half on node B (--url2); one publisher, also on node A,
// publishes R messages/s (--rate, default 100) for D s (--duration, default
// 10). Subscribers on A measure same-node fan-out (the publishing node
// delivers to its own members); subscribers on B measure cross-node fan-out
// (node A -> Redis -> node B -> socket).
//
// Each payload is {"s": seq, "t": send time, "p": phase[, "x": pad]} with
// `t` the generator's own CLOCK_MONOTONIC nanoseconds taken just before the
// frame is written, so a delivery's latency is receive time - send time in
// this one process, on one clock. The server's `_meta.ts` is not used for it;
// it is only checked to lie between the send and the receive (wall clock).
//
// Before the measured phase, probes (phase 1) are published every
// --warmup-gap-ms until one has reached every subscriber on both nodes (at
// most --warmup-s): the result says how long after the last join reply node B
// delivered its first probe and how many probe deliveries were missed before
// that (a node that replies to a join before its Redis subscription is in
// place shows up here).
//
// Per node and overall: deliveries expected vs received, lost, duplicated,
// reordered (a lower seq or a non-increasing _meta.offset after a higher
// one), latency p50/p99/p999/max, and per message the time until the last
// subscriber (of the node, of both) had it. Also checked: every subscriber
// saw the same _meta.offset and _meta.epoch for the same message, whichever
// node delivered it, and the payload arrived byte for byte (the publisher's
// keys first and in order).
#include <time.h>

#include <algorithm>
#include <iostream>

#include "common.hpp"

namespace bench {
namespace {

constexpr std::int64_t kWarmPhase = 1, kMeasuredPhase = 2;

// What a delivery carried: the publisher's keys, and _meta.
struct Parsed {
  std::int64_t seq = -1, phase = -1, offset = -1, ts = -1;
  std::uint64_t t_ns = 0;
  std::string_view epoch;
  bool exact = false;  // the publisher's keys came first and in order (relayed byte for byte)
};

bool parse(std::string_view p, Parsed& d) {
  Delivery dd;
  d.exact = parse_delivery(p, dd);
  if (d.exact) {
    d.seq = dd.seq;
    d.phase = dd.phase;
    d.t_ns = dd.t_ns;
    d.offset = dd.offset;
  } else {
    // Tolerant: the same keys anywhere (a server that re-serialized the payload).
    std::int64_t t = 0;
    if (!find_int(p, "s", d.seq) || !find_int(p, "t", t) || !find_int(p, "p", d.phase)) return false;
    d.t_ns = static_cast<std::uint64_t>(t);
  }
  const auto meta = p.find("\"_meta\":");
  if (meta == std::string_view::npos) return false;
  if (!d.exact && !find_int(p, "offset", d.offset, meta)) d.offset = -1;
  if (!find_int(p, "ts", d.ts, meta)) d.ts = -1;
  static constexpr std::string_view ek = "\"epoch\":";
  const auto e = p.find(ek, meta);
  if (e != std::string_view::npos) {
    const auto start = e + ek.size();
    const auto end = p.find_first_of(",}", start);
    if (end != std::string_view::npos) {
      d.epoch = p.substr(start, end - start);
      if (d.epoch.size() >= 2 && d.epoch.front() == '"' && d.epoch.back() == '"')
        d.epoch = d.epoch.substr(1, d.epoch.size() - 2);
    }
  }
  return true;
}

std::uint64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// One node's subscribers and what they saw.
struct Side {
  Side(Context& ctx, Fleet::FrameFn fn, const Target* target, std::string name_, std::string role_)
      : fleet(ctx, std::move(fn), target), name(std::move(name_)), role(std::move(role_)) {}
  Fleet fleet;
  std::string name, role;  // "A" / "same-node", "B" / "cross-node"
  std::size_t requested = 0, subs0 = 0;
  OpenStats join;
  // Warm-up.
  std::vector<std::uint32_t> probe_count;
  std::uint64_t probe_deliveries = 0, first_probe_at = 0;
  // Measured phase.
  Histogram lat;
  std::uint64_t deliveries = 0, complete = 0, stale = 0, unparsed = 0, reformatted = 0, other_events = 0;
  std::vector<std::uint32_t> msg_done;
  std::vector<std::uint64_t> msg_max;
};

class CrossNode {
 public:
  explicit CrossNode(Context& ctx)
      : ctx_(ctx),
        pub_(ctx, [this](Peer& p, const PhxFrame& f, std::uint64_t now) { on_pub_frame(p, f, now); }),
        a_(ctx, [this](Peer& p, const PhxFrame& f, std::uint64_t now) { on_sub_frame(a_, p, f, now); }, nullptr,
           "A", "same-node"),
        b_(ctx, [this](Peer& p, const PhxFrame& f, std::uint64_t now) { on_sub_frame(b_, p, f, now); }, &target_b_,
           "B", "cross-node") {
    topic_ = ctx.args.str("topic", "bench:cross");
    const auto pad = static_cast<std::size_t>(std::max<std::int64_t>(0, ctx.args.integer("payload-bytes", 0)));
    pad_.assign(pad, 'x');
    const auto subs = static_cast<std::size_t>(std::max<std::int64_t>(2, ctx.args.integer("subs", 1000)));
    b_.requested = subs / 2;
    a_.requested = subs - b_.requested;
    rate_ = std::max(0.1, ctx.args.num("rate", 100));
    duration_ = std::max(0.1, ctx.args.num("duration", ctx.small ? 3 : 10));
    drain_ = ms_ns(ctx.args.num("drain-s", 5) * 1000);
    timeout_ = ms_ns(ctx.args.num("timeout-s", 60) * 1000);
    warm_gap_ = ms_ns(std::max(1.0, ctx.args.num("warmup-gap-ms", 20)));
    warm_max_ = ms_ns(ctx.args.num("warmup-s", 5) * 1000);
    quiet_ = ms_ns(ctx.args.num("quiet-ms", 300));
    pid_b_ = static_cast<int>(ctx.args.integer("server-pid2", 0));
    redis_pid_ = static_cast<int>(ctx.args.integer("redis-pid", 0));
    wall_minus_mono_ = static_cast<std::int64_t>(realtime_ns()) - static_cast<std::int64_t>(now_ns());
  }

  // The second node's address: --url2, with --url's path and key unless it has its own path.
  bool setup(std::string* err) {
    url2_ = ctx_.args.str("url2");
    if (url2_.empty()) {
      *err = "cross_node needs --url2 ws://HOST:PORT (node B)";
      return false;
    }
    if (!parse_url(url2_, target_b_, err)) return false;
    if (target_b_.path.empty()) {
      target_b_.path = ctx_.target.path;  // the default path, api_key included
    } else if (!ctx_.key.empty()) {
      target_b_.path += (target_b_.path.find('?') == std::string::npos ? "?" : "&");
      target_b_.path += "api_key=" + ctx_.key;
    }
    target_b_.sources = ctx_.target.sources;
    if (target_b_.addr.sin_addr.s_addr == ctx_.target.addr.sin_addr.s_addr && target_b_.port == ctx_.target.port) {
      std::cerr << "cross_node: warning: --url2 is the same server as --url\n";
    }
    for (const auto& [pid, what] : {std::pair{pid_b_, "--server-pid2"}, std::pair{redis_pid_, "--redis-pid"}}) {
      if (pid > 0 && !sample_proc(pid).ok) {
        *err = "no process " + std::to_string(pid) + " (" + what + ")";
        return false;
      }
    }
    return true;
  }

  int run();

 private:
  void publish(std::int64_t seq, std::int64_t phase);
  void on_pub_frame(Peer& p, const PhxFrame& f, std::uint64_t now);
  void on_sub_frame(Side& s, Peer& p, const PhxFrame& f, std::uint64_t now);
  Json warmup();
  Json measure();
  Json node_json(Side& s, Histogram& full_out);
  int fail(const std::string& why);

  Context& ctx_;
  Target target_b_;
  Fleet pub_;
  Side a_, b_;
  std::string url2_, topic_, pad_, payload_;
  double rate_ = 100, duration_ = 10;
  std::uint64_t drain_ = 0, timeout_ = 0, warm_gap_ = 0, warm_max_ = 0, quiet_ = 0;
  int pid_b_ = 0, redis_pid_ = 0;
  std::int64_t wall_minus_mono_ = 0;

  std::int64_t phase_ = 0;
  // Warm-up.
  std::uint32_t probes_sent_ = 0;
  std::int64_t warm_full_ = -1;  // the first probe every subscriber on both nodes had
  std::uint64_t warm_full_at_ = 0;
  // Measured phase.
  std::uint32_t total_ = 0, sent_ = 0;
  std::uint64_t replies_ok_ = 0, replies_err_ = 0, warm_replies_ok_ = 0, warm_replies_err_ = 0, self_echo_ = 0;
  std::map<std::string, int> reply_errors_;
  std::vector<std::int64_t> offset_of_;  // per seq: the first _meta.offset seen
  std::vector<std::uint32_t> done_;      // per seq: deliveries on both nodes
  std::vector<std::uint64_t> max_;       // per seq: slowest delivery on both nodes
  std::string epoch_;
  bool epoch_seen_ = false;
  std::uint64_t offset_mismatch_ = 0, epoch_mismatch_ = 0, no_offset_ = 0;
  std::uint64_t ts_checked_ = 0, ts_outside_ = 0;
  double ts_before_send_max_ms_ = 0, ts_after_recv_max_ms_ = 0;
};

void CrossNode::publish(std::int64_t seq, std::int64_t phase) {
  auto& pub = *pub_.peers()[0];
  build_publish(payload_, seq, now_ns(), phase, pad_);
  Fleet::send(pub, "j1", (phase == kWarmPhase ? "w" : "p") + std::to_string(seq), topic_, "m", payload_);
}

void CrossNode::on_pub_frame(Peer&, const PhxFrame& f, std::uint64_t) {
  if (f.event == "phx_reply" && !f.ref_null && !f.ref.empty()) {
    const bool ok = reply_ok(f.payload);
    if (f.ref[0] == 'w') {
      ++(ok ? warm_replies_ok_ : warm_replies_err_);
    } else if (f.ref[0] == 'p') {
      ++(ok ? replies_ok_ : replies_err_);
    }
    if (!ok) ++reply_errors_[reply_reason(f.payload)];
  } else if (f.event == "m") {
    ++self_echo_;  // live delivery skips the publishing socket
  }
}

void CrossNode::on_sub_frame(Side& s, Peer& p, const PhxFrame& f, std::uint64_t now) {
  if (f.event != "m") {
    ++s.other_events;
    return;
  }
  Parsed d;
  if (!parse(f.payload, d)) {
    ++s.unparsed;
    return;
  }
  if (d.phase == kWarmPhase) {
    ++s.probe_deliveries;
    if (s.first_probe_at == 0) s.first_probe_at = now;
    if (d.seq >= 0 && static_cast<std::size_t>(d.seq) < s.probe_count.size()) {
      const auto k = static_cast<std::size_t>(d.seq);
      ++s.probe_count[k];
      if (warm_full_ < 0 && a_.probe_count[k] >= a_.subs0 && b_.probe_count[k] >= b_.subs0) {
        warm_full_ = d.seq;
        warm_full_at_ = now;
      }
    }
    return;
  }
  if (d.phase != kMeasuredPhase || phase_ != kMeasuredPhase) {
    ++s.stale;
    return;
  }
  if (!d.exact) ++s.reformatted;
  ++s.deliveries;
  const std::uint64_t latency = now > d.t_ns ? now - d.t_ns : 0;
  s.lat.add(latency);
  if (d.seq >= 0 && static_cast<std::size_t>(d.seq) < done_.size()) {
    const auto k = static_cast<std::size_t>(d.seq);
    ++done_[k];
    max_[k] = std::max(max_[k], latency);
    ++s.msg_done[k];
    s.msg_max[k] = std::max(s.msg_max[k], latency);
    if (d.offset < 0) {
      ++no_offset_;
    } else if (offset_of_[k] < 0) {
      offset_of_[k] = d.offset;
    } else if (offset_of_[k] != d.offset) {
      ++offset_mismatch_;
    }
  }
  if (!d.epoch.empty()) {
    if (!epoch_seen_) {
      epoch_ = std::string(d.epoch);
      epoch_seen_ = true;
    } else if (d.epoch != epoch_) {
      ++epoch_mismatch_;
    }
  }
  if (d.ts >= 0) {
    // _meta.ts (unix ms, stamped by the publishing node) should lie between
    // this message's send and this receive, on the wall clock.
    ++ts_checked_;
    const double send_ms = static_cast<double>(static_cast<std::int64_t>(d.t_ns) + wall_minus_mono_) / 1e6;
    const double recv_ms = static_cast<double>(static_cast<std::int64_t>(now) + wall_minus_mono_) / 1e6;
    const double ts = static_cast<double>(d.ts);
    const double before = send_ms - ts, after = ts - recv_ms;
    ts_before_send_max_ms_ = std::max(ts_before_send_max_ms_, before);
    ts_after_recv_max_ms_ = std::max(ts_after_recv_max_ms_, after);
    if (before > 5.0 || after > 5.0) ++ts_outside_;  // ms resolution and clock reads: 5 ms of slack
  }
  if (p.seq.on(d.seq, d.offset)) ++s.complete;
}

int CrossNode::fail(const std::string& why) {
  std::cerr << "cross_node: " << why << "\n";
  Json r;
  r.str("error", why);
  r.obj("join_a", a_.join.json()).obj("join_b", b_.join.json());
  ctx_.emit(r, "");
  return 1;
}

Json CrossNode::warmup() {
  phase_ = kWarmPhase;
  a_.subs0 = a_.fleet.joined();
  b_.subs0 = b_.fleet.joined();
  const std::size_t max_probes =
      static_cast<std::size_t>(static_cast<double>(warm_max_) / static_cast<double>(warm_gap_)) + 1;
  a_.probe_count.assign(max_probes, 0);
  b_.probe_count.assign(max_probes, 0);
  const std::uint64_t t0 = now_ns();
  const std::uint64_t end = t0 + warm_max_;
  while (warm_full_ < 0 && probes_sent_ < max_probes && now_ns() < end) {
    publish(probes_sent_, kWarmPhase);
    ++probes_sent_;
    ctx_.loop.run_until([&] { return warm_full_ >= 0; }, std::min(now_ns() + warm_gap_, end));
  }
  // Stragglers of the probes (and their replies) arrive before the measured phase starts.
  ctx_.loop.run_for(ms_ns(200));
  auto missing = [&](const Side& s) {
    std::uint64_t m = 0;
    for (std::uint32_t k = 0; k < probes_sent_; ++k) m += s.subs0 > s.probe_count[k] ? s.subs0 - s.probe_count[k] : 0;
    return m;
  };
  Json j;
  j.integer("probes_sent", probes_sent_).num("gap_ms", ns_ms(warm_gap_), 1);
  j.boolean("ready", warm_full_ >= 0);
  if (warm_full_ >= 0) {
    j.integer("first_complete_probe", warm_full_).num("ready_ms", ns_ms(warm_full_at_ - t0), 3);
  } else {
    j.null("first_complete_probe").null("ready_ms");
  }
  j.boolean("first_probe_complete_on_a", probes_sent_ > 0 && a_.probe_count[0] >= a_.subs0);
  j.boolean("first_probe_complete_on_b", probes_sent_ > 0 && b_.probe_count[0] >= b_.subs0);
  for (Side* s : {&a_, &b_}) {
    Json n;
    n.integer("probe_deliveries", static_cast<std::int64_t>(s->probe_deliveries));
    n.integer("probe_deliveries_missing", static_cast<std::int64_t>(missing(*s)));
    if (s->first_probe_at) {
      n.num("first_delivery_ms", ns_ms(s->first_probe_at - t0), 3);
    } else {
      n.null("first_delivery_ms");
    }
    j.obj("node_" + std::string(s->name == "A" ? "a" : "b"), n);
  }
  j.integer("publish_replies_ok", static_cast<std::int64_t>(warm_replies_ok_));
  j.integer("publish_replies_error", static_cast<std::int64_t>(warm_replies_err_));
  return j;
}

Json CrossNode::node_json(Side& s, Histogram& full_out) {
  std::uint64_t unique = 0, dup = 0, reordered = 0, out_of_range = 0;
  for (auto& p : s.fleet.peers()) {
    unique += p->seq.unique();
    dup += p->seq.duplicates();
    reordered += p->seq.reordered();
    out_of_range += p->seq.out_of_range();
  }
  const std::uint64_t expected = static_cast<std::uint64_t>(s.subs0) * total_;
  Histogram full;  // per message: until the last subscriber of this node had it
  for (std::uint32_t k = 0; k < total_; ++k) {
    if (s.subs0 > 0 && s.msg_done[k] >= s.subs0) full.add(s.msg_max[k]);
  }
  full_out = full;
  Json j;
  j.str("node", s.name).str("role", s.role);
  j.str("url", s.name == "A" ? "ws://" + ctx_.target.host + ":" + std::to_string(ctx_.target.port) : url2_);
  j.integer("subscribers", static_cast<std::int64_t>(s.subs0));
  j.integer("expected_deliveries", static_cast<std::int64_t>(expected));
  j.integer("deliveries", static_cast<std::int64_t>(s.deliveries));
  j.integer("unique", static_cast<std::int64_t>(unique));
  j.integer("lost", static_cast<std::int64_t>(expected > unique ? expected - unique : 0));
  j.integer("duplicated", static_cast<std::int64_t>(dup));
  j.integer("reordered", static_cast<std::int64_t>(reordered));
  j.integer("out_of_range", static_cast<std::int64_t>(out_of_range));
  j.integer("stale", static_cast<std::int64_t>(s.stale));
  j.integer("unparsed", static_cast<std::int64_t>(s.unparsed));
  j.integer("not_byte_for_byte", static_cast<std::int64_t>(s.reformatted));
  j.integer("other_events", static_cast<std::int64_t>(s.other_events));
  j.boolean("complete", s.subs0 > 0 && s.complete == s.subs0);
  j.obj("latency", latency_json(s.lat));
  j.obj("fanout_complete", latency_json(full));
  j.integer("connections_dropped", static_cast<std::int64_t>(s.fleet.unexpected_closes()));
  return j;
}

Json CrossNode::measure() {
  phase_ = kMeasuredPhase;
  total_ = static_cast<std::uint32_t>(std::max(1.0, rate_ * duration_));
  for (Side* s : {&a_, &b_}) {
    s->subs0 = s->fleet.joined();
    for (auto& p : s->fleet.peers()) p->seq.reset(total_);
    s->msg_done.assign(total_, 0);
    s->msg_max.assign(total_, 0);
  }
  offset_of_.assign(total_, -1);
  done_.assign(total_, 0);
  max_.assign(total_, 0);

  PhaseClock clock(ctx_);
  const auto b0 = sample_proc(pid_b_), r0 = sample_proc(redis_pid_);
  const std::uint64_t t0 = now_ns();
  const std::uint64_t t_last_send =
      pace_sends(ctx_.loop, t0, static_cast<std::uint32_t>(total_), rate_,
                 t0 + static_cast<std::uint64_t>(duration_ * 1e9) + ms_ns(1000), [&](std::uint32_t i) {
                   publish(i, kMeasuredPhase);
                   ++sent_;
                 });
  const bool drained = ctx_.loop.run_until(
      [&] { return a_.complete == a_.subs0 && b_.complete == b_.subs0 && replies_ok_ + replies_err_ >= sent_; },
      now_ns() + drain_);
  auto phase = clock.finish();
  const double wall = clock.wall_s();
  const auto b1 = sample_proc(pid_b_), r1 = sample_proc(redis_pid_);
  // Anything late (duplicates in particular) still counts.
  ctx_.loop.run_for(quiet_);

  Json j;
  j.str("topic", topic_).num("rate_per_s", rate_, 1).num("duration_s", duration_, 1);
  j.integer("payload_pad_bytes", static_cast<std::int64_t>(pad_.size()));
  j.integer("messages", total_).integer("published", sent_);
  j.num("publish_s", ns_s(t_last_send - t0), 3);
  j.boolean("drained", drained);

  Histogram full_a, full_b;
  auto ja = node_json(a_, full_a);
  auto jb = node_json(b_, full_b);
  Histogram all;
  all.merge(a_.lat);
  all.merge(b_.lat);
  Histogram full;
  const std::size_t subs = a_.subs0 + b_.subs0;
  for (std::uint32_t k = 0; k < total_; ++k) {
    if (subs > 0 && done_[k] >= subs) full.add(max_[k]);
  }
  std::uint64_t unique = 0, dup = 0, reordered = 0;
  for (Side* s : {&a_, &b_}) {
    for (auto& p : s->fleet.peers()) {
      unique += p->seq.unique();
      dup += p->seq.duplicates();
      reordered += p->seq.reordered();
    }
  }
  const std::uint64_t expected = static_cast<std::uint64_t>(subs) * total_;
  Json overall;
  overall.integer("subscribers", static_cast<std::int64_t>(subs));
  overall.integer("expected_deliveries", static_cast<std::int64_t>(expected));
  overall.integer("deliveries", static_cast<std::int64_t>(a_.deliveries + b_.deliveries));
  overall.integer("lost", static_cast<std::int64_t>(expected > unique ? expected - unique : 0));
  overall.integer("duplicated", static_cast<std::int64_t>(dup));
  overall.integer("reordered", static_cast<std::int64_t>(reordered));
  overall.obj("latency", latency_json(all));
  overall.obj("fanout_complete", latency_json(full));
  j.obj("overall", overall);
  j.obj("node_a", ja).obj("node_b", jb);
  // The headline split, repeated flat for readers of the JSON.
  j.obj("same_node", latency_json(a_.lat)).obj("cross_node", latency_json(b_.lat));
  const double cross_minus_same_p50 = ns_ms(b_.lat.quantile(0.5)) - ns_ms(a_.lat.quantile(0.5));
  j.num("cross_minus_same_p50_ms", cross_minus_same_p50, 4);

  Json meta;
  meta.integer("offset_mismatch", static_cast<std::int64_t>(offset_mismatch_));
  meta.integer("epoch_mismatch", static_cast<std::int64_t>(epoch_mismatch_));
  meta.integer("without_offset", static_cast<std::int64_t>(no_offset_));
  meta.str("epoch", epoch_);
  meta.integer("ts_checked", static_cast<std::int64_t>(ts_checked_));
  meta.integer("ts_outside_send_receive", static_cast<std::int64_t>(ts_outside_));
  meta.num("ts_before_send_max_ms", ts_before_send_max_ms_, 3);
  meta.num("ts_after_receive_max_ms", ts_after_recv_max_ms_, 3);
  j.obj("meta_checks", meta);

  j.integer("publish_replies_ok", static_cast<std::int64_t>(replies_ok_));
  j.integer("publish_replies_error", static_cast<std::int64_t>(replies_err_));
  if (!reply_errors_.empty()) {
    Json e;
    for (const auto& [why, n] : reply_errors_) e.integer(why, n);
    j.obj("publish_errors", e);
  }
  j.integer("self_echo", static_cast<std::int64_t>(self_echo_));

  // CPU of each process over the phase: node A through --server-pid (PhaseClock),
  // node B and Redis through --server-pid2 and --redis-pid.
  auto cpu = [&](const ProcSample& s0, const ProcSample& s1) {
    Json c;
    if (s0.ok && s1.ok) {
      c.num("cpu_s", s1.cpu_s - s0.cpu_s, 3).num("cpu_pct", wall > 0 ? 100.0 * (s1.cpu_s - s0.cpu_s) / wall : 0, 1);
      c.integer("rss_kb", static_cast<std::int64_t>(s1.rss_kb));
    } else {
      c.null("cpu_s").null("cpu_pct").null("rss_kb");
    }
    return c;
  };
  j.obj("phase", phase);
  j.obj("node_b_process", cpu(b0, b1));
  j.obj("redis_process", cpu(r0, r1));
  return j;
}

int CrossNode::run() {
  std::string err;
  if (!setup(&err)) return fail(err);
  // Subscribers first, node A then node B; the publisher (on A) last.
  a_.join = a_.fleet.open(a_.requested, {topic_}, "{}", now_ns() + timeout_);
  for (const auto& [why, n] : a_.join.errors) std::cerr << "  node A: " << n << " subscribers failed: " << why << "\n";
  b_.join = b_.fleet.open(b_.requested, {topic_}, "{}", now_ns() + timeout_);
  for (const auto& [why, n] : b_.join.errors) std::cerr << "  node B: " << n << " subscribers failed: " << why << "\n";
  auto ps = pub_.open(1, {topic_}, "{}", now_ns() + timeout_);
  if (ps.ok != 1) {
    return fail("the publisher could not join node A: " +
                (ps.errors.empty() ? std::string("?") : ps.errors.begin()->first));
  }
  if (a_.fleet.joined() == 0 || b_.fleet.joined() == 0) return fail("no subscriber joined on one of the nodes");

  const auto warm = warmup();
  const auto m = measure();

  pub_.close_all(ms_ns(5000));
  a_.fleet.close_all(ms_ns(5000));
  b_.fleet.close_all(ms_ns(5000));

  Json result = m;
  result.str("url2", url2_);
  Json join;
  join.obj("node_a", a_.join.json()).obj("node_b", b_.join.json()).obj("publisher", ps.json());
  result.obj("join", join);
  result.obj("warmup", warm);
  std::uint64_t lost = 0, dup = 0, reordered = 0;
  {
    // Totals with the same names as the other scenarios (lost, duplicated, reordered).
    std::uint64_t unique = 0;
    for (Side* s : {&a_, &b_}) {
      for (auto& p : s->fleet.peers()) {
        unique += p->seq.unique();
        dup += p->seq.duplicates();
        reordered += p->seq.reordered();
      }
    }
    const std::uint64_t expected = static_cast<std::uint64_t>(a_.subs0 + b_.subs0) * total_;
    lost = expected > unique ? expected - unique : 0;
  }
  result.integer("lost", static_cast<std::int64_t>(lost));
  result.integer("duplicated", static_cast<std::int64_t>(dup));
  result.integer("reordered", static_cast<std::int64_t>(reordered));
  const std::uint64_t closes = pub_.unexpected_closes() + a_.fleet.unexpected_closes() + b_.fleet.unexpected_closes();
  result.integer("unexpected_closes", static_cast<std::int64_t>(closes));
  result.integer("close_timeouts",
                 static_cast<std::int64_t>(pub_.close_timeouts() + a_.fleet.close_timeouts() + b_.fleet.close_timeouts()));
  std::map<std::string, int> reasons;
  for (const Fleet* f : {&pub_, &a_.fleet, &b_.fleet}) {
    for (const auto& [why, n] : f->close_reasons()) reasons[why] += n;
  }
  if (!reasons.empty()) {
    Json e;
    for (const auto& [why, n] : reasons) e.integer(why, n);
    result.obj("close_reasons", e);
  }

  // The table.
  Table t({"subscribers", "node", "subs", "expected", "received", "lost", "dup", "reord", "p50 ms", "p99 ms",
           "p999 ms", "max ms", "all-subs p99 ms"});
  auto row = [&](const std::string& who, const std::string& node, std::size_t subs, const Histogram& h,
                 const Histogram& full) {
    std::uint64_t unique = 0, d = 0, r = 0, received = 0;
    for (Side* s : {&a_, &b_}) {
      if (node != "A+B" && node != s->name) continue;
      received += s->deliveries;
      for (auto& p : s->fleet.peers()) {
        unique += p->seq.unique();
        d += p->seq.duplicates();
        r += p->seq.reordered();
      }
    }
    const std::uint64_t expected = static_cast<std::uint64_t>(subs) * total_;
    t.row({who, node, fmt_int(subs), fmt_int(expected), fmt_int(received),
           fmt_int(expected > unique ? expected - unique : 0), fmt_int(d), fmt_int(r), fmt(ns_ms(h.quantile(0.5)), 3),
           fmt(ns_ms(h.quantile(0.99)), 3), fmt(ns_ms(h.quantile(0.999)), 3), fmt(ns_ms(h.max()), 3),
           fmt(ns_ms(full.quantile(0.99)), 3)});
  };
  Histogram full_a, full_b, full_all, all;
  for (std::uint32_t k = 0; k < total_; ++k) {
    if (a_.msg_done[k] >= a_.subs0) full_a.add(a_.msg_max[k]);
    if (b_.msg_done[k] >= b_.subs0) full_b.add(b_.msg_max[k]);
    if (done_[k] >= a_.subs0 + b_.subs0) full_all.add(max_[k]);
  }
  all.merge(a_.lat);
  all.merge(b_.lat);
  row("same-node", "A", a_.subs0, a_.lat, full_a);
  row("cross-node", "B", b_.subs0, b_.lat, full_b);
  row("all", "A+B", a_.subs0 + b_.subs0, all, full_all);
  std::string head = "cross_node (" + ctx_.label + "): " + fmt(rate_, 0) + " msg/s for " + fmt(duration_, 1) +
                     " s from node A, " + fmt_int(a_.subs0) + " subscribers on A + " + fmt_int(b_.subs0) +
                     " on B\n";
  std::string tail = "warm-up: " + std::to_string(probes_sent_) + " probe(s); " +
                     (warm_full_ >= 0 ? "probe " + std::to_string(warm_full_) + " was the first on every subscriber"
                                      : std::string("NO probe reached every subscriber")) +
                     "\n_meta: offset mismatches " + fmt_int(offset_mismatch_) + ", epoch mismatches " +
                     fmt_int(epoch_mismatch_) + ", ts outside send..receive " + fmt_int(ts_outside_) +
                     "; publish replies ok " + fmt_int(replies_ok_) + ", error " + fmt_int(replies_err_) +
                     "; self echo " + fmt_int(self_echo_) + "\n";
  ctx_.emit(result, head + t.render() + tail);
  // Like the other scenarios: losses and duplicates are results, not failures.
  return 0;
}

}  // namespace

int run_cross_node(Context& ctx) {
  CrossNode c(ctx);
  return c.run();
}

}  // namespace bench
