// The seam between the Hub (pubsub/hub.hpp), which every node runs the same
// way, and a backend, which numbers, stores and carries a topic's messages:
// LocalBackend in process, RedisBackend for a cluster.
//
// A backend sees opaque message bodies (pubsub/publish_frame.hpp): it
// assigns each an offset within the topic's epoch, keeps a window of them
// for recovery, and hands every one to each node subscribed to the topic.
// A shared backend (several nodes) also carries presence: it keeps this
// node's entries in the topic's presence until they are removed, hands on
// the other nodes' changes with their versions, and reports losing and
// regaining its transport. It knows nothing of members, threads, filters,
// Phoenix frames, ordering across a reconnect or gaps: those are the Hub's,
// written once for every backend.
//
// Threads and locks: the Hub never holds one of its own locks while it calls
// a backend, except presence_add() and presence_remove(), which only queue
// work and so must never take a lock that the backend holds while calling
// BackendEvents. A backend calls BackendEvents::on_message for one topic in
// offset order and never two at once for that topic (LocalBackend calls it
// under its topic lock, RedisBackend from its link's one thread), and the
// other events likewise one at a time per topic; the Hub takes its own
// topic lock inside and never calls the backend from there. Completions
// (`done`) run once, on any thread: inline for a synchronous backend
// (asynchronous() false), later otherwise; they must not be run under a
// lock the backend holds while calling BackendEvents.
//
// Deadlines: the steps of one join share a deadline (the Hub's call
// timeout from the join's start); an asynchronous backend answers each step
// by then, with a failure if it must.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pubsub/broker.hpp"

namespace synapse::pubsub {

using Deadline = std::chrono::steady_clock::time_point;

// A change of a topic's presence made by some node, numbered by the
// topic's presence version (one per change, across the cluster).
struct PresenceChange {
  std::uint64_t version = 0;
  bool join = false;  // else a leave
  bool mine = false;  // made by this node (the Hub tracks its own entries itself)
  std::string ref, agent, meta;  // a leave carries no meta
};

// A topic's whole presence, and the version it is current at.
struct PresenceSnapshot {
  struct Entry {
    std::string ref, agent, meta;
    bool mine = false;  // this node's
  };
  std::uint64_t version = 0;
  std::vector<Entry> entries;
};

// One stored message, read back after the transport was lost.
struct StoredMessage {
  std::uint64_t offset = 0;
  std::uint64_t exclude = 0;  // as in on_message
  std::string body;
};

// What a topic's stream holds from a position on (Backend::read_missed).
struct Missed {
  bool ok = true;      // false: the backend could not answer; what was held goes on
  // The transport went again before the answer: on_backend_lost has come
  // or comes, and the next on_backend_back reads again; nothing changes.
  bool lost = false;
  std::string epoch;   // the topic's epoch now; empty: none (nothing published since it was lost)
  std::vector<StoredMessage> messages;  // of `epoch`, oldest first
};

// What a backend tells the hub about the topics this node subscribed to.
class BackendEvents {
 public:
  // Message `offset` of `epoch`, in offset order per topic. `exclude` is the
  // publisher's connection when it published on this node (it does not get
  // its own message), else 0. `body` lives for the call only.
  virtual void on_message(std::string_view topic, std::string_view epoch, std::uint64_t offset,
                          std::uint64_t exclude, std::string_view body) = 0;
  // A shared backend whose transport is down: a message published on this
  // node, for this node's members only, unnumbered.
  virtual void on_local_message(std::string_view topic, std::uint64_t exclude, std::string_view body) {
    (void)topic, (void)exclude, (void)body;
  }
  // A shared backend's presence change of a subscribed topic, in the order
  // the transport carried it (versions may still come out of order with a
  // snapshot being read; the Hub sorts that out).
  virtual void on_presence(std::string_view topic, const PresenceChange& change) { (void)topic, (void)change; }
  // The transport is gone: nothing reaches on_message until on_backend_back,
  // and what was in flight is lost (the Hub reads it back then).
  virtual void on_backend_lost() {}
  // The transport is back, every subscription made again. `missed`: it had
  // been lost, so messages may have been missed (read_missed); false: the
  // backend had only forgotten this node (its own presence entries are
  // already added again), so only the presence is read again.
  virtual void on_backend_back(bool missed) { (void)missed; }

 protected:
  ~BackendEvents() = default;
};

// Where a topic stands, read by a join.
struct Position {
  bool ok = true;  // false: the backend could not answer; the join is refused (unavailable)
  // The transport is down (a shared backend): the member joins this node's
  // delivery only, its offset unknown (protocol.md §9); no other field is set.
  bool offline = false;
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
  // Whether other nodes share the topics (and so their presence): then the
  // Hub reads presence snapshots and takes on_presence changes.
  virtual bool shared() const { return false; }

  // Numbers `body` in `topic` (a new topic starts an epoch at offset 1),
  // keeps it in the history and hands it to every subscribed node's
  // on_message, then calls `done` with its offset and epoch. A shared
  // backend whose transport is down hands it to on_local_message instead,
  // then calls `done` with reach `local`.
  using PublishDone = std::function<void(PublishResult)>;
  virtual void publish(std::string_view topic, std::string body, std::uint64_t exclude_connection,
                       PublishDone done) = 0;
  // This node wants the topic's messages: from the moment `done` runs
  // (true: confirmed) every message published afterwards reaches on_message.
  // Counted: each subscribe is undone by one unsubscribe, in any order.
  // `done(false)`: not confirmed by the deadline (the subscription stays
  // wanted and is made again when the transport comes back).
  virtual void subscribe(std::string_view topic, Deadline deadline, std::function<void(bool)> done) = 0;
  virtual void unsubscribe(std::string_view topic) = 0;
  // The topic's latest offset and epoch (starting the topic if new) and,
  // when `recover` names the current epoch and the history holds every
  // message after its offset, those messages. Read after subscribe()
  // confirmed: a message numbered above the offset reaches on_message.
  virtual void position(std::string_view topic, const std::optional<Recover>& recover, Deadline deadline,
                        std::function<void(Position)> done) = 0;

  // Presence, for a shared backend (the others do nothing, and are never
  // asked for a snapshot). This node's entry `ref` is in the topic's
  // presence, for every node, until presence_remove (and again after the
  // backend forgot the node or restarted). May be called under a Hub lock.
  virtual void presence_add(std::string_view topic, const std::string& ref, const std::string& agent,
                            const std::string& meta) {
    (void)topic, (void)ref, (void)agent, (void)meta;
  }
  virtual void presence_remove(std::string_view topic, const std::string& ref, const std::string& agent) {
    (void)topic, (void)ref, (void)agent;
  }
  // The topic's presence across every node; nullopt when not read by the deadline.
  virtual void presence_snapshot(std::string_view topic, Deadline deadline,
                                 std::function<void(std::optional<PresenceSnapshot>)> done) {
    (void)topic, (void)deadline;
    done(PresenceSnapshot{});
  }
  // After on_backend_back(true): what the topic's stream holds after
  // `offset` of `epoch` (when its epoch is still `epoch`), or from offset 1
  // of the epoch that replaced it. A backend that never loses its transport
  // is never asked.
  virtual void read_missed(std::string_view topic, const std::string& epoch, std::uint64_t offset,
                           std::function<void(Missed)> done) {
    (void)topic, (void)epoch, (void)offset;
    Missed m;
    m.ok = false;
    done(std::move(m));
  }

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
