// The seam between the Hub (pubsub/hub.hpp), which every node runs the same
// way, and a backend, which numbers, stores and carries a topic's messages:
// LocalBackend in process, Redis for a cluster.
//
// A backend sees opaque message bodies (pubsub/publish_frame.hpp): it
// assigns each an offset within the topic's epoch, keeps a window of them
// for recovery, and hands every one to each node subscribed to the topic.
// It knows nothing of members, threads, filters, Phoenix frames or presence
// tracking: those are the Hub's, written once for every backend.
//
// Threads and locks: the Hub never holds one of its own locks while it calls
// a backend. A backend calls BackendEvents::on_message for one topic in
// offset order and never two at once for that topic (LocalBackend calls it
// under its topic lock, which is what gives every I/O thread the same order);
// the Hub takes its own topic lock inside and never calls the backend from
// there. Completions (`done`) run once, on any thread: inline for a
// synchronous backend (asynchronous() false), later otherwise; they must
// not be run under a lock the backend holds while calling on_message.
//
// Still the Redis broker's alone (issue 18 item 1 step 3): presence
// replication (add/remove/snapshot with versions), loss/return of the
// backplane and gap reports; they join this interface when it moves behind
// the Hub.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pubsub/broker.hpp"

namespace synapse::pubsub {

// What a backend tells the hub about the topics this node subscribed to.
class BackendEvents {
 public:
  // Message `offset` of `epoch`, in offset order per topic. `exclude` is the
  // publisher's connection when it published on this node (it does not get
  // its own message), else 0. `body` lives for the call only.
  virtual void on_message(std::string_view topic, std::string_view epoch, std::uint64_t offset,
                          std::uint64_t exclude, std::string_view body) = 0;

 protected:
  ~BackendEvents() = default;
};

// Where a topic stands, read by a join.
struct Position {
  bool ok = true;  // false: the backend could not answer; the join is refused (unavailable)
  std::uint64_t offset = 0;  // the latest offset
  std::string epoch;
  // The join asked to recover and everything after its offset is still held:
  // `bodies` are offsets recover.offset+1 .. offset, in order, every one present.
  bool recovered = false;
  std::vector<std::string> bodies;
};

// What a backend holds of a topic, for the admin API.
struct BackendTopic {
  std::string name;
  std::string epoch;
  std::uint64_t last_offset = 0;
  std::size_t history = 0;  // messages held for recovery
  std::vector<std::pair<std::uint64_t, std::string>> bodies;  // offset > since, oldest first
};

class Backend {
 public:
  virtual ~Backend() = default;

  // Called once, by the Hub's constructor, before anything else.
  virtual void attach(BackendEvents& events) = 0;
  // Whether completions may come later, on another thread (then no I/O
  // thread waits for them: the Hub's joins and publishes are asynchronous).
  virtual bool asynchronous() const { return false; }

  // Numbers `body` in `topic` (a new topic starts an epoch at offset 1),
  // keeps it in the history and hands it to every subscribed node's
  // on_message, then calls `done` with its offset and epoch.
  using PublishDone = std::function<void(PublishResult)>;
  virtual void publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
                       PublishDone done) = 0;
  // This node wants the topic's messages: from the moment `done` runs
  // (true: confirmed) every message published afterwards reaches on_message.
  // Counted: each subscribe is undone by one unsubscribe, in any order.
  virtual void subscribe(std::string_view topic, std::function<void(bool)> done) = 0;
  virtual void unsubscribe(std::string_view topic) = 0;
  // The topic's latest offset and epoch (starting the topic if new) and,
  // when `recover` names the current epoch and the history holds every
  // message after its offset, those messages. Read after subscribe()
  // confirmed: a message numbered above the offset reaches on_message.
  virtual void position(std::string_view topic, const std::optional<Recover>& recover,
                        std::function<void(Position)> done) = 0;

  // Periodic work (history expiry, releasing idle topics), from tick()'s thread.
  virtual void tick() {}
  // Fills `topics` and the history fields.
  virtual void stats(BrokerStats& s) { (void)s; }
  // See Broker::make_durable.
  virtual void make_durable() noexcept {}
  // Admin reads, any thread; nullopt when the backend cannot answer alone.
  virtual std::optional<std::vector<BackendTopic>> list_topics() { return std::nullopt; }
  virtual std::optional<BackendTopic> inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) {
    (void)topic, (void)since, (void)limit;
    return std::nullopt;
  }
};

}  // namespace synapse::pubsub
