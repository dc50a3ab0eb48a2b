// The broker of a cluster: several nodes share one Redis, and behave as one
// server. Redis assigns offsets, keeps history and presence, and carries
// every message and presence change to every node on the topic's channel
// (see redis_scripts.hpp for the keys and formats); each node subscribes to
// the channels of topics it has members of and fans out locally (Fanout).
// Redis carries and stores message bodies, not frames: a node frames each
// message once when it receives it (live, backfilled or recovered) and
// shares those bytes across its members (publish_frame.hpp).
//
// No I/O thread waits on Redis. A join, a publish and a presence read send
// their commands and return; Redis's answers come on the link's thread,
// which posts the completion back to the member's I/O thread. Every step
// has a deadline (call_timeout from the join's start): a join that Redis
// does not answer in time fails with `unavailable` (docs/protocol.md §9).
//
// Join (join_async), started on the member's thread T:
//   1. count the member on T first, and list it in T's fan-out table as
//      pending: every message this node receives from now on is queued for
//      T and held for the member (Fanout::add_pending);
//   2. the first local member of a topic subscribes to its channel and,
//      once Redis confirms, loads the presence snapshot; joiners that come
//      meanwhile wait at the topic's Gate (a list of continuations, not a
//      blocked thread) until that is done;
//   3. the join script reads the latest offset L (and the missed messages
//      when recovering);
//   4. back on T (complete_join): the member is given start offset L, its
//      presence entry is tracked and the state it is sent is taken, the
//      channel's `done` sends the reply, backlog and presence_state, and
//      only then are the held messages replayed through the filters
//      (Fanout::activate); later ones are delivered directly.
// A message numbered above L was published after step 3, so after the
// subscription: it arrives on the channel after step 1 and is held or
// delivered, after the reply. One at or below L was received before step 1
// or is filtered as predating the join: exactly once.
//
// Lifetimes: the join's state (PendingJoin) is shared by the steps; the
// Subscriber is touched only on T, and only while T's pending_ map still
// lists that join. leave() on T (phx_leave, a rejoin, a close) removes it
// and sets `cancelled`, so a completion that comes afterwards finds nothing
// and the channel's `done` is never called; leave() also undoes the count
// and drops what was held. A join that failed (`unavailable`) has undone
// its membership before `done` runs, so the leave() that follows is a
// no-op. The link's steps look topics up by name and id each time: a topic
// whose last member left may be gone, or be a new one.
//
// Presence: each node keeps the whole topic's presence (its own entries and
// the others'), publishes its own changes through Redis, and applies the
// others' in version order; changes that arrive while a snapshot is loading
// wait for it. A node's heartbeat keeps it in P nodes; any node reaps the
// entries of one whose heartbeat expired, which publishes their leaves.
//
// Redis down: local members keep receiving local publishes (unnumbered,
// `_meta.local`), /health/ready reports not ready, and the link reconnects.
// From the moment the link is lost (on_down) every topic holds the live
// messages it receives; on reconnect every topic is subscribed again, the
// messages the node missed meanwhile are read from the topic's stream
// (those of a new epoch from offset 1, when Redis lost its data) and
// delivered, merged with the held live ones, in offset order before newer
// messages. Presence is reloaded and the node's own entries are published
// again.
//
// Gaps are never silent: whenever a topic's next message is not the one
// after the last delivered (the stream was trimmed past what the node
// missed, or expired), its members are sent a `phx_gap` push naming the
// epoch and the missing offsets (docs/protocol.md §9), before the messages
// that follow the gap. The push carries the gap's last offset as its
// offset, so a member that joined after the gap does not get it.
//
// Locking: topics live in `shard_count` shards by the hash of their name,
// each with its own mutex guarding its topics (and their Gates); member
// lists are the Fanout's, per thread. The link thread's on_message locks
// only its topic's shard, so traffic on one topic never waits on another
// unless they share a shard. Lock order: a shard mutex is the outermost
// broker lock and no code holds two (whole-broker passes, tick() and
// resync(), take them one after another); under one, the broker may take a
// Fanout inbox mutex and post to the link (Asio's queue), never the other
// way round. Gate continuations and `done` callbacks run with no shard
// lock held. pending_ is per I/O thread and touched only on that thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/poster.hpp"
#include "presence/presence_tracker.hpp"
#include "pubsub/broker.hpp"
#include "pubsub/fanout.hpp"
#include "redis/script.hpp"

namespace synapse::redis {
class Link;
struct Reply;
}  // namespace synapse::redis

namespace synapse::pubsub {

struct RedisBrokerOptions {
  std::string node_id;
  std::string prefix;  // key and channel prefix, "synapse:<db>:"
  std::size_t history_size = 100;
  std::int64_t history_ttl_ms = 300'000;  // 0 = forever
  std::int64_t node_ttl_ms = 10'000;
  std::chrono::milliseconds call_timeout{2000};
};

class RedisBroker final : public Broker {
 public:
  RedisBroker(RedisBrokerOptions options, redis::Link& link, std::vector<Poster> threads, metrics::Metrics& metrics);
  ~RedisBroker() override;

  // The link's handlers (on the link's thread).
  void on_message(const std::string& channel, const std::string& payload);
  void on_up();
  void on_down();
  // Called with the node's registration, and again whenever Redis had
  // forgotten the node (restart, or reaped after a stall): counters outside
  // the broker register their state again.
  void set_reregister_hook(std::function<void()> hook) { reregister_ = std::move(hook); }
  // Registers the node (blocking); false when Redis did not answer.
  bool register_node();

  // Blocks its caller (not on the link's thread) for the same steps that
  // join_async runs; for tests and tools.
  JoinResult join(Subscriber& sub, const JoinRequest& req) override;
  bool joins_async() const override { return true; }
  void join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) override;
  void leave(Subscriber& sub, std::string_view topic) override;
  PublishResult publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection) override;
  bool publishes_async() const override { return true; }
  void publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                     bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                     PublishDone done) override;
  std::string presence_state(std::string_view topic) override;
  bool presence_async() const override { return true; }
  void presence_state_async(std::string_view topic, PresenceDone done) override;
  void tick() override;
  BrokerStats stats() override;

 private:
  struct Gate;         // joiners of a topic wait here while its first member subscribes
  struct PendingJoin;  // one join between its start and its completion on the member's thread

  struct RemoteEntry {
    std::string node;
    std::string agent;
  };
  struct LocalEntry {
    std::string agent;
    std::string meta;
  };
  struct PresenceEvent {
    std::uint64_t version = 0;
    bool join = false;
    std::string node, ref, agent, meta;
  };

  struct Live {
    std::string epoch;
    std::uint64_t offset = 0;
    std::uint64_t exclude = 0;
    wire::Message msg;
  };

  struct Topic {
    std::uint64_t id = 0;
    std::string name;
    std::string channel;
    std::string epoch;  // as last seen; a different one means offsets started again
    std::string prior_epoch;  // the previous membership's, for a join while Redis is down
    std::uint64_t last_offset = 0;  // the last message of `epoch` queued for delivery
    // After a reconnect, what the node missed is read from the history
    // first; live messages wait here meanwhile, so order is kept.
    bool backfilling = false;
    std::uint64_t backfill_seq = 0;  // the backfill whose reply counts
    std::vector<Live> held;
    // Whether last_offset is a position the members have: false from a first
    // join until its first message (the joiners start at the join's offset,
    // not at a stale last_offset), so that first message is not a gap.
    bool synced = false;
    std::vector<std::uint32_t> members_per_thread;
    std::vector<std::uint32_t> presence_per_thread;
    std::size_t members = 0;
    bool wanted = false;  // subscribed, or to be subscribed by the link
    std::shared_ptr<Gate> gate;
    presence::PresenceTracker presence;
    std::uint64_t presence_seq = 0;
    bool presence_dirty = false;
    std::unordered_map<std::string, RemoteEntry> remote;  // phx_ref -> other nodes' entries
    std::map<std::string, LocalEntry> local;              // phx_ref -> this node's entries
    std::uint64_t presence_version = 0;
    bool snapshot_pending = false;
    std::vector<PresenceEvent> buffered;  // while the snapshot loads
  };

  static constexpr std::size_t shard_count = 32;
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::unique_ptr<Topic>> topics;
  };

  std::string key(const char* kind, std::string_view topic) const;
  Shard& shard_of(std::string_view name);
  // Under the shard's lock. find() also checks the id when one is given.
  static Topic* find(Shard& sh, std::string_view name, std::uint64_t id = 0);
  Topic& get_or_create(Shard& sh, std::string_view name);
  // Under the shard's lock, on sub.thread: takes `sub` out of the topic
  // (counts, presence, fan-out) and releases the topic's channel when it
  // was the last local member.
  void drop_member(Topic& t, Subscriber& sub);

  // The join's steps (see the top of this file).
  std::shared_ptr<PendingJoin> begin_join(Subscriber& sub, const JoinRequest& req, JoinDone done, bool blocking);
  void on_subscribed(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate, bool confirmed);
  void open_gate(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate, const redis::Reply* snap);
  void send_join_script(const std::shared_ptr<PendingJoin>& pj);
  void join_answered(const std::shared_ptr<PendingJoin>& pj, redis::Reply r);
  void complete_join(const std::shared_ptr<PendingJoin>& pj, const redis::Reply& r);
  // On the member's thread, the join still listed: records the result in
  // the topic and `sub`. Sets `presence_start`; a failed join is undone.
  JoinResult finish_join(PendingJoin& pj, const redis::Reply& r, std::uint64_t& presence_start);
  std::chrono::milliseconds remaining(const PendingJoin& pj) const;
  void adopt_epoch(Topic& t, std::string_view epoch);
  // Queues a numbered message for the topic's members, once and in order.
  void deliver(Topic& t, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude, wire::Message msg);
  void finish_backfill(Topic& t, const redis::Reply& r);
  // Tells the members that offsets from..to of the current epoch will not
  // be delivered (a `phx_gap` push, queued in order with the messages); no
  // `to`: nothing after `from` will, the epoch ended (`next_epoch` began).
  void notify_gap(Topic& t, std::uint64_t from, std::optional<std::uint64_t> to, std::string_view next_epoch);
  void start_backfill(Topic& t);
  // The publish script's arguments; `body` is encode_body()'s.
  std::vector<std::string> publish_args(std::string_view topic, const std::string& body,
                                        std::uint64_t exclude_connection);
  PublishResult published(const redis::Reply& r);
  // Redis is down: this node's members only, unnumbered.
  PublishResult publish_local(std::string_view topic, const std::string& body, std::uint64_t exclude_connection);
  void apply_presence(Topic& t, const PresenceEvent& ev);
  void apply_snapshot(Topic& t, const redis::Reply& r);
  void send_track(const Topic& t, const std::string& ref, const LocalEntry& e);
  // Registers the node's presence and counts again; `after_link_loss` also
  // reads what each topic missed from its stream.
  void resync(bool after_link_loss);
  void heartbeat(bool resync_if_forgotten);

  RedisBrokerOptions options_;
  redis::Link& link_;
  metrics::Metrics& metrics_;
  Fanout fanout_;
  redis::Script publish_script_, join_script_, snapshot_script_, track_script_, untrack_script_,
      heartbeat_script_, reap_script_, backfill_script_;
  std::string channel_prefix_;
  std::vector<Poster> posters_;  // the I/O threads, as the Fanout's
  std::array<Shard, shard_count> shards_;
  // Per I/O thread, that thread only: the joins in flight, by member.
  std::vector<std::unordered_map<const Subscriber*, std::shared_ptr<PendingJoin>>> pending_;
  std::atomic<std::uint64_t> next_topic_id_{1};
  std::atomic<std::uint64_t> next_presence_ref_{1};
  std::function<void()> reregister_;
  std::atomic<bool> registered_{false};
  std::int64_t last_heartbeat_ms_ = 0;  // tick()'s thread only
  std::int64_t last_reap_ms_ = 0;
};

// The prefix of every key and channel for database `db`.
std::string redis_prefix(int db);

}  // namespace synapse::pubsub
