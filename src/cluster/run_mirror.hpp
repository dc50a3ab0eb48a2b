// Runs across a cluster (protocol.md section 9 "Runs", docs/cortex.md "Runs
// in cluster mode"): a run executes on the node that started it, its log is
// copied to Redis, and a client on any other node attaches to it there.
//
// Keys and channels (P = the Redis prefix of the database):
//   P run:<id>        hash {tenant, agent, ref, kind, tool, node, status, started_at}
//   P run:<id>:log    stream; each entry's field e = "<seq> <terminal 0|1> <event>\n<payload>", in seq order
//   P runnode:<node>  a node's heartbeat (expires when the node is gone)
//   P runctl:<node>   channel: follow / unfollow / interrupt for runs the node executes
//   P runev:<node>    channel: "F <id>" (follow confirmed) and "E <id> <entry>"
//                     (a live event) for the runs the node follows
//
// Following without a gap. A follower asks the executing node to follow
// (`follow` on its runctl channel); that node registers it and answers "F"
// on the follower's runev channel, and from then on publishes every new
// event of the run there. The follower reads the log (XRANGE) only after
// the "F", holding the live events that come meanwhile, then replays the
// log and the held events in seq order, dropping copies. The executing node
// issues each event's XADD and PUBLISHes, and the "F", from one mutex in
// one connection's order, so every event is either in the log the follower
// reads or published to it after the "F".
//
// Threads. appended() runs under the run's mutex on whichever thread emits
// (cortex workers, I/O threads): it only queues commands on the link. The
// follower side (`proxies_`) is touched only on the link's thread; the
// executing side (`followers_`) is guarded by `mu_`, taken after a run's
// mutex and never before it. A tick thread posts a tick to the link's thread
// every second: heartbeat, follow refreshes, dead nodes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cortex/runs.hpp"

namespace synapse::redis {
class Link;
}

namespace synapse::cluster {

struct RunMirrorOptions {
  std::string prefix;   // P
  std::string node_id;  // this process's instance id
  std::int64_t retention_ms = 300'000;
  std::int64_t node_ttl_ms = 5'000;  // a node silent this long is gone
  std::size_t max_log_entries = 100'000;  // per run in Redis (MAXLEN ~); older entries are trimmed
};

class RunMirror final : public cortex::RunObserver {
 public:
  RunMirror(RunMirrorOptions o, redis::Link& link, cortex::RunRegistry& runs);
  ~RunMirror() override;
  RunMirror(const RunMirror&) = delete;
  RunMirror& operator=(const RunMirror&) = delete;

  // The channels this node subscribes to (subscribe them before start()).
  std::vector<std::string> channels() const { return {ctl_channel(opt_.node_id), ev_channel(opt_.node_id)}; }
  bool owns(const std::string& channel) const;
  // Link thread.
  void on_message(const std::string& channel, const std::string& payload);
  void on_up();
  // Starts the tick thread.
  void start();
  void stop();

  // cortex::RunObserver
  void started(const cortex::Run& run, std::int64_t timeout_ms) override;
  void appended(const cortex::Run& run, const cortex::RunEventPtr& ev) override;
  void interrupt_remote(const cortex::Run& run, const std::string& reason) override;
  void unfollowed(const cortex::Run& run) override;
  void locate(std::string run_id, std::string tenant, std::string agent, Located done) override;

 private:
  // A remote run this node follows (link thread only).
  struct Proxy {
    cortex::RunPtr run;
    std::string origin;
    bool loaded = false;
    std::vector<Located> waiting;
    std::vector<std::string> held;  // live entries that came before the log was read
    std::chrono::steady_clock::time_point asked{};
  };
  // A node following one of this node's runs.
  struct Follower {
    std::uint64_t sub = 0;  // keeps the run followed, so its detach grace does not start
    std::chrono::steady_clock::time_point refreshed{};
  };

  std::string meta_key(std::string_view id) const { return opt_.prefix + "run:" + std::string(id); }
  std::string log_key(std::string_view id) const { return opt_.prefix + "run:" + std::string(id) + ":log"; }
  std::string alive_key(std::string_view node) const { return opt_.prefix + "runnode:" + std::string(node); }
  std::string ctl_channel(std::string_view node) const { return opt_.prefix + "runctl:" + std::string(node); }
  std::string ev_channel(std::string_view node) const { return opt_.prefix + "runev:" + std::string(node); }

  void on_control(const std::string& payload);
  void follow_local(const std::string& id, const std::string& from);
  void unfollow_local(const std::string& id, const std::string& from);
  void load(const std::string& id);
  void replay_entry(Proxy& p, const std::string& entry);
  void lost(const std::string& id, Proxy& p);
  void tick();
  void tick_loop();

  RunMirrorOptions opt_;
  redis::Link& link_;
  cortex::RunRegistry& runs_;

  std::mutex mu_;
  std::map<std::string, std::map<std::string, Follower>, std::less<>> followers_;  // run -> node -> follower

  std::map<std::string, Proxy, std::less<>> proxies_;  // link thread

  std::mutex tick_mu_;
  std::condition_variable tick_cv_;
  bool stopping_ = false;
  std::thread tick_thread_;
};

}  // namespace synapse::cluster
