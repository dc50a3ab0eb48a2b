// Agent workers across a cluster (issue 12, cluster case): a query on node
// B for an agent whose only free workers are on node A is relayed through
// Redis. The run stays B's (its log, its followers, its one terminal
// event); A runs a proxy run in its own registry, given to A's hub like any
// run, whose events are forwarded to B and appended to the real run there.
//
// Channels (prefix = the broker's):
//   <prefix>agents:announce      every node, every 250 ms: its hub's free
//                                capacity {"node", "free": [[tenant, agent, n]]}
//   <prefix>agents:node:<node>   a node's inbox:
//     {"t":"run", "from", "run_id", "timeout_ms", "run": <the run push payload>}   B -> A
//     {"t":"cancel", "run_id", "reason"}                                          B -> A
//     {"t":"ev", "run_id", "event", "payload"}   A -> B, the proxy's events in order
//
// Contract. start() tries the local hub first; otherwise it picks the node
// that announced the most free capacity for the run's tenant and agent
// (counting down its cached figure so a burst spreads), publishes the run
// there and returns accepted. A node that cannot take it after all answers
// with an `error agent_unavailable` event. B's cancel hook (interrupt,
// timeout) sends `cancel`; A finishes its proxy, whose hub pushes `cancel`
// to the worker. A node whose announcements stop for 3 s is gone: B ends
// the runs it relayed there with `agent_unavailable`. Ordering: the proxy
// hands its events to the link in log order (under the run's lock), one
// command connection publishes them in that order, and B applies them on
// its link thread in the order received.
//
// Threads: on_message runs on the link's thread; start() on I/O threads;
// the announcer has its own thread. One mutex guards the tables.
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "cortex/agent_backend.hpp"

namespace synapse::redis {
class Link;
}
namespace synapse::cortex {
class AgentHub;
class RunRegistry;
}

namespace synapse::cluster {

class AgentRelay final : public cortex::AgentBackend {
 public:
  AgentRelay(redis::Link& link, std::string prefix, std::string node_id, cortex::AgentHub& hub,
             cortex::RunRegistry& runs);
  ~AgentRelay() override;
  AgentRelay(const AgentRelay&) = delete;
  AgentRelay& operator=(const AgentRelay&) = delete;

  // The channels to subscribe to (the announcements and this node's inbox).
  std::vector<std::string> channels() const;
  // Starts announcing this node's free capacity.
  void start_announcing();
  // Stops the announcer and ignores every later message; call before the
  // hub and the run registry go away.
  void stop();

  Start start(const cortex::AgentRequest& req, const cortex::RunPtr& run) override;
  // A Redis message; true when it was one of this relay's channels.
  bool on_message(const std::string& channel, const std::string& payload);

 private:
  struct Node {
    std::chrono::steady_clock::time_point seen;
    std::map<std::pair<std::string, std::string>, std::int64_t> free;  // (tenant, agent) -> free
  };
  void publish(const std::string& channel, const boost::json::object& msg);
  void on_run(const boost::json::object& m);
  void on_cancel(const boost::json::object& m);
  void on_event(const boost::json::object& m);
  void announce_loop();
  // Ends the runs relayed to nodes not heard from lately.
  void reap_silent_nodes();

  redis::Link& link_;
  const std::string prefix_;
  const std::string node_;
  cortex::AgentHub& hub_;
  cortex::RunRegistry& runs_;

  std::shared_mutex alive_mu_;  // on_message holds it shared; stop() exclusively
  bool stopped_ = false;

  std::mutex mu_;
  std::map<std::string, Node> nodes_;             // other nodes' announcements
  std::map<std::string, std::string> relayed_;    // B side: run id -> node serving it
  std::map<std::string, cortex::RunPtr> proxies_;  // A side: origin run id -> proxy run

  std::mutex announce_mu_;
  std::condition_variable announce_cv_;
  bool announce_stop_ = false;
  std::thread announcer_;
};

}  // namespace synapse::cluster
