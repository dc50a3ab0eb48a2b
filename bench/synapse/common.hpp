// What every scenario shares: options, the Phoenix V2 frame scanner, and a
// fleet of client connections that connect, upgrade and join with bounded
// concurrency.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "net.hpp"
#include "util.hpp"

namespace bench {

// --------------------------------------------------------------------- Args

class Args {
 public:
  // argv after the scenario name: `--key value` pairs and bare `--flag`s.
  bool parse(int argc, char** argv, const std::set<std::string>& flags, std::string* error);
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  std::string str(const std::string& key, const std::string& def = "") const;
  double num(const std::string& key, double def) const;
  std::int64_t integer(const std::string& key, std::int64_t def) const;
  std::vector<std::int64_t> ints(const std::string& key, const std::vector<std::int64_t>& def) const;
  std::vector<std::string> keys() const;

 private:
  std::map<std::string, std::string> values_;
};

// ------------------------------------------------------------ Phoenix frames

// [join_ref, ref, topic, event, payload] as views into the text; payload is
// the raw JSON object. Strings keep their escapes (the bench uses none).
struct PhxFrame {
  std::string_view join_ref, ref, topic, event, payload;
  bool join_ref_null = true, ref_null = true;
};
bool parse_frame(std::string_view text, PhxFrame& f);
// `"status":"ok"` in a phx_reply payload.
bool reply_ok(std::string_view payload);
// The value of `"reason":"..."` in an error reply, for messages.
std::string reply_reason(std::string_view payload);
// The integer after the first `"key":` at or after `from`; false if absent.
bool find_int(std::string_view json, std::string_view key, std::int64_t& out, std::size_t from = 0);

// A publish payload {"s":SEQ,"t":SEND_NS,"p":PHASE[,"x":"pad"]}, and its
// parse from a delivery (which adds "_meta":{...,"offset":N,...}).
// Calls send(i) for i = 0, 1, ... total-1 at `rate` per second from t0, each
// as soon as it is due (catching up when the loop was late), until all are
// sent or `give_up_ns`. Returns when the last tick ran.
std::uint64_t pace_sends(Loop& loop, std::uint64_t t0, std::uint32_t total, double rate, std::uint64_t give_up_ns,
                         const std::function<void(std::uint32_t)>& send);

void build_publish(std::string& out, std::int64_t seq, std::uint64_t t_ns, std::int64_t phase,
                   std::string_view pad);
struct Delivery {
  std::int64_t seq = -1, phase = -1, offset = -1;
  std::uint64_t t_ns = 0;
};
bool parse_delivery(std::string_view payload, Delivery& d);

// ------------------------------------------------------------------ Context

struct Context {
  Loop loop;
  Target target;
  Args args;
  std::string scenario;
  std::string label;  // names the server in the output, e.g. synapse-1t or ws
  std::string key;
  std::string agent;
  int server_pid = 0;
  std::size_t concurrency = 256;  // connection attempts in flight
  bool small = false;             // --small: the reduced sizes for a smoke run
  CpuTime cpu_start;
  std::uint64_t t_start = 0;

  // Server CPU and RSS (when --server-pid was given).
  ProcSample server() const { return sample_proc(server_pid); }
  // Writes `RESULT {...}` (and --json-out FILE) with the common fields added.
  void emit(const Json& result, const std::string& table);
};

// Measures one phase: wall time, this process's CPU and the server's.
struct PhaseClock {
  explicit PhaseClock(const Context& c);
  Json finish();  // wall_s, bench_cpu_s, bench_cpu_pct, server_cpu_s, server_cpu_pct, bench_saturated
  double wall_s() const { return ns_s(now_ns() - t0_); }
  double bench_cpu_pct = 0, server_cpu_s = -1;
  double server_user_s = -1, server_sys_s = -1;  // server_cpu_s split: user space and kernel

 private:
  const Context& c_;
  std::uint64_t t0_;
  CpuTime cpu0_;
  ProcSample srv0_;
};

// -------------------------------------------------------------------- Fleet

struct Peer {
  enum class St : std::uint8_t { pending, connecting, joining, joined, failed, closed };
  std::unique_ptr<WsClient> ws;
  St st = St::pending;
  std::uint32_t index = 0;
  std::uint32_t joins_waiting = 0;
  std::uint64_t t_start = 0, t_open = 0, t_joined = 0;
  std::uint64_t next_ref = 1;
  SeqTracker seq;  // for the scenario's use
  std::int64_t tag = 0;
};

struct OpenStats {
  std::size_t requested = 0, ok = 0, failed = 0;
  std::uint64_t t_begin = 0, t_end = 0;  // first connect() to last join reply
  Histogram per_conn;                    // connect() to join reply, per connection
  std::map<std::string, int> errors;     // failure reason -> count
  Json json() const;
};

class Fleet final : public WsClient::Events {
 public:
  using FrameFn = std::function<void(Peer&, const PhxFrame&, std::uint64_t now)>;

  // `target`: where this fleet connects; null means ctx.target (the --url).
  Fleet(Context& ctx, FrameFn on_frame, const Target* target = nullptr)
      : ctx_(ctx), on_frame_(std::move(on_frame)), target_(target) {}
  ~Fleet();

  // Opens `n` more connections; each joins every topic in `topics` (with
  // `join_payload`) once upgraded. Returns when all are joined or failed, or
  // at the deadline (the rest are reset and count as failed).
  OpenStats open(std::size_t n, const std::vector<std::string>& topics, const std::string& join_payload,
                 std::uint64_t deadline_ns);
  // Joins the live peers in [from, to) to one more topic and waits for the replies.
  std::size_t join_more(std::size_t from, std::size_t to, const std::string& topic,
                        const std::string& join_payload, std::uint64_t deadline_ns);
  // Closing handshake on every live peer; resets whatever is left after `grace_ns`.
  void close_all(std::uint64_t grace_ns);

  std::vector<std::unique_ptr<Peer>>& peers() { return peers_; }
  std::size_t joined() const { return joined_; }
  // Connections the server closed, or that broke, while they were in use.
  std::uint64_t unexpected_closes() const { return unexpected_closes_; }
  const std::map<std::string, int>& close_reasons() const { return close_reasons_; }
  std::uint64_t unparsed() const { return unparsed_; }
  // Connections whose closing handshake was not finished by the server in time (reset).
  std::uint64_t close_timeouts() const { return close_timeouts_; }

  // Sends a frame [join_ref, ref, topic, event, payload] (join_ref "1").
  static void send(Peer& p, std::string_view join_ref, std::string_view ref, std::string_view topic,
                   std::string_view event, std::string_view payload);

  void on_open(WsClient& c, std::uint64_t now) override;
  void on_text(WsClient& c, std::string_view text, std::uint64_t now) override;
  void on_closed(WsClient& c, bool clean, std::string_view why) override;

 private:
  void start_next();
  void peer_done(Peer& p, bool ok, std::string_view why);

  Context& ctx_;
  FrameFn on_frame_;
  const Target* target_ = nullptr;
  std::vector<std::unique_ptr<Peer>> peers_;
  // The open() in progress.
  std::vector<std::string> topics_;
  std::string join_payload_;
  std::size_t next_ = 0, end_ = 0, in_flight_ = 0;
  OpenStats* stats_ = nullptr;
  std::size_t joined_ = 0;
  bool closing_ = false;
  std::size_t closing_left_ = 0;  // connections close_all() still waits for
  std::uint64_t unexpected_closes_ = 0, unparsed_ = 0, close_timeouts_ = 0;
  std::map<std::string, int> close_reasons_;
  std::string frame_;
};

// Scenario entry points (return the process exit code).
int run_connection_load(Context& ctx);
int run_message_throughput(Context& ctx);
int run_latency(Context& ctx);
int run_query_load(Context& ctx);
int run_presence(Context& ctx);
int run_cross_node(Context& ctx);
int run_fairness(Context& ctx);
int run_agent_relay(Context& ctx);

}  // namespace bench
