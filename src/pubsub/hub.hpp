// The Broker every node runs, in front of a Backend (pubsub/backend.hpp):
// what is the same whatever numbers and carries the messages. The Hub owns
// topic membership (per-thread member counts, the Fanout's member tables
// and filters), join gating, framing at the delivery edge, epoch resets and
// presence tracking; the backend owns offsets, epochs, history and the
// transport. src/channels sees only the Broker interface.
//
// Join, started on the member's thread T (join(), or join_async() when the
// backend is asynchronous):
//   1. under the topic's lock: the member is counted on T and listed in T's
//      fan-out table as pending, so every message the Hub receives for the
//      topic from now on is queued for T and held for it (Fanout::add_pending);
//   2. the topic's first member subscribes the node to it (Backend::subscribe);
//      joiners that come before the subscription is confirmed wait at the
//      topic's Gate (a list of continuations, not a blocked thread);
//   3. Backend::position reads the latest offset L and, when recovering,
//      the bodies after the client's offset;
//   4. on T (finish_join, under the topic's lock): the presence bound is
//      checked and the member tracked, the backlog framed, the presence
//      state taken with the diff sequence it is current at; the join is
//      answered (the channel's `done` sends reply, backlog, presence_state)
//      and only then are the held deliveries replayed through the filters
//      (Fanout::activate) with start offset L.
// A message numbered above L reaches on_message after step 1 (the backend
// hands it on only once L is past it, and the member was counted before L
// was read): held or delivered, after the reply. One at or below L is either
// in the backlog or predates the join and is filtered: exactly once.
//
// Lifetimes and cancellation as in broker.hpp's join_async contract: the
// join's state (PendingJoin) is shared by the steps; `sub` is touched only
// on T, and only while pending_[T] still lists that join. leave() removes
// it, so a completion that comes afterwards does nothing.
//
// With a shared backend (Redis), the first member's subscription is
// followed, before the gate opens, by the topic's presence snapshot (the
// other nodes' entries; changes that arrive meanwhile wait for it, then
// apply in version order), and a backend that loses its transport returns
// with on_backend_back(missed).
//
// Ordering, once for every backend (deliver): a topic's messages reach the
// members once each and in offset order. One at or below the last one
// handed on is dropped (a read-back overlapping the live stream); a jump
// within an epoch is a gap, reported to the members as a `phx_gap` push
// (docs/protocol.md §9) before what follows; a new epoch first reports
// what the old one may have lost after the last offset handed on
// (open-ended) and then resets the members' filters. From on_backend_lost
// on, live messages are held; on_backend_back(true) reads what the stream
// holds after the last offset handed on (read_missed) and hands on the
// union of the two in offset order before anything newer. Presence is read
// again after every on_backend_back.
//
// Framing: a message body is framed once per message when the backend hands
// it to on_message, and those bytes are shared by every member on every
// thread; a recovered, read-back or inspected body is framed when it is read.
//
// Locking: topics live in 32 shards by the hash of their name, each with a
// mutex guarding its topics (counts, Gate, presence, the epoch last seen).
// The Hub never calls the backend with a shard lock held (the backend calls
// on_message under its own lock, which then takes the shard lock: backend
// lock, then Hub shard lock, never the other way round); under a shard lock
// the Hub may take a Fanout inbox mutex. Gate continuations and `done`
// callbacks run with no Hub lock held. pending_ is per I/O thread, touched
// only on that thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/poster.hpp"
#include "presence/presence_tracker.hpp"
#include "pubsub/backend.hpp"
#include "pubsub/broker.hpp"
#include "pubsub/fanout.hpp"

namespace synapse::metrics {
struct Metrics;
}

namespace synapse::pubsub {

struct HubOptions {
  // Bytes of presence metas one topic may track; a join past it is refused
  // (presence_full). 0 = no bound.
  std::size_t max_presence_bytes_per_topic = 8u << 20;
  // The deadline of a join's steps (an asynchronous backend answers each
  // by then), and of a blocking publish() or presence_state().
  std::chrono::milliseconds call_timeout{2000};
  // Starts every phx_ref this node makes; unique per process across the
  // cluster (the node's id). Empty: random, per Hub.
  std::string presence_ref_prefix;
};

class Hub final : public Broker, private BackendEvents {
 public:
  // `backend` must outlive the Hub; the Hub attaches itself to it.
  Hub(HubOptions options, Backend& backend, std::vector<Poster> threads, metrics::Metrics& metrics);
  ~Hub() override;

  JoinResult join(Subscriber& sub, const JoinRequest& req) override;
  bool joins_async() const override { return async_; }
  void join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) override;
  void leave(Subscriber& sub, std::string_view topic) override;
  PublishResult publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection) override;
  bool publishes_async() const override { return async_; }
  void publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                     bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                     PublishDone done) override;
  std::string presence_state(std::string_view topic) override;
  bool presence_async() const override { return shared_; }
  void presence_state_async(std::string_view topic, PresenceDone done) override;
  void tick() override;
  BrokerStats stats() override;
  void make_durable() noexcept override { backend_.make_durable(); }
  std::optional<std::vector<TopicSummary>> list_topics() override;
  std::optional<TopicHistory> inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) override;

 private:
  struct Gate;         // joiners of a topic wait here while its first member subscribes
  struct PendingJoin;  // one join between its start and its completion on the member's thread

  // A message received while the topic reads back what it missed.
  struct Held {
    std::string epoch;
    std::uint64_t offset = 0;
    std::uint64_t exclude = 0;
    wire::Message msg;
  };

  struct Topic {
    std::uint64_t id = 0;
    std::string name;
    std::string epoch;  // as last handed on; a different one means offsets started again
    std::string prior_epoch;  // the previous membership's, for a join while the backend is down
    std::uint64_t last_offset = 0;  // the last message of `epoch` handed on
    // Whether last_offset is a position the members have: false from a first
    // join until its first message (the joiners start at the join's offset,
    // not at a stale last_offset), so that first message is not a gap.
    bool synced = false;
    // After the backend lost its transport, what the node missed is read
    // back first; live messages wait in `held` meanwhile, so order is kept.
    bool backfilling = false;
    std::uint64_t backfill_seq = 0;  // the read-back whose answer counts
    std::vector<Held> held;
    std::vector<std::uint32_t> members_per_thread;
    std::vector<std::uint32_t> presence_per_thread;
    std::size_t members = 0;
    bool subscribed = false;  // the node is subscribed (or subscribing) to the topic
    std::shared_ptr<Gate> gate;
    presence::PresenceTracker presence;
    std::uint64_t presence_seq = 0;  // diffs published so far
    bool presence_dirty = false;
    // A shared backend's presence: the other nodes' entries (phx_ref ->
    // agent), the version applied, and the changes that wait for a snapshot.
    std::unordered_map<std::string, std::string> remote;
    std::uint64_t presence_version = 0;
    bool snapshot_pending = false;
    std::vector<PresenceChange> buffered;
  };

  static constexpr std::size_t shard_count = 32;
  // Looked up by string_view: no string built per delivered message.
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::unique_ptr<Topic>, NameHash, std::equal_to<>> topics;
  };

  void on_message(std::string_view topic, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude,
                  std::string_view body) override;
  void on_local_message(std::string_view topic, std::uint64_t exclude, std::string_view body) override;
  void on_presence(std::string_view topic, const PresenceChange& change) override;
  void on_backend_lost() override;
  void on_backend_back(bool missed) override;

  // Under the topic's shard lock (see Ordering at the top of this file).
  void adopt_epoch(Topic& t, std::string_view epoch);
  void deliver(Topic& t, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude, wire::Message msg);
  // Tells the members that offsets from..to of the current epoch will not
  // be delivered (a `phx_gap` push, queued in order with the messages); no
  // `to`: nothing after `from` will, the epoch ended (`next_epoch` began).
  void notify_gap(Topic& t, std::uint64_t from, std::optional<std::uint64_t> to, std::string_view next_epoch);
  void finish_backfill(Topic& t, Missed missed);
  void apply_presence(Topic& t, const PresenceChange& change);
  // A snapshot read (nullopt: it failed), then the changes that waited for it.
  void apply_snapshot(Topic& t, const std::optional<PresenceSnapshot>& snap);

  Shard& shard_of(std::string_view name);
  static Topic* find(Shard& sh, std::string_view name, std::uint64_t id = 0);
  Topic& get_or_create(Shard& sh, std::string_view name);
  // Under the shard's lock, on sub.thread: takes `sub` out of the topic
  // (counts, presence, fan-out). True when it was the last member: the
  // caller unsubscribes the node, after releasing the lock.
  bool drop_member(Topic& t, Subscriber& sub);

  // The join's steps (see the top of this file).
  std::shared_ptr<PendingJoin> begin_join(Subscriber& sub, const JoinRequest& req, JoinDone done);
  void open_gate(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate,
                 const std::optional<PresenceSnapshot>* snap);
  void read_position(const std::shared_ptr<PendingJoin>& pj);
  void complete_join(const std::shared_ptr<PendingJoin>& pj, const Position& pos);
  // On the member's thread, the join still listed: records the result in
  // the topic and `sub`. Sets `presence_start`; a refused join is undone.
  JoinResult finish_join(PendingJoin& pj, const Position& pos, std::uint64_t& presence_start);

  HubOptions options_;
  Backend& backend_;
  const bool async_;
  const bool shared_;
  metrics::Metrics& metrics_;
  Fanout fanout_;
  std::vector<Poster> posters_;  // the I/O threads, as the Fanout's
  std::array<Shard, shard_count> shards_;
  // Per I/O thread, that thread only: the joins in flight, by member.
  std::vector<std::unordered_map<const Subscriber*, std::shared_ptr<PendingJoin>>> pending_;
  std::atomic<std::uint64_t> next_topic_id_{1};
  std::atomic<std::uint64_t> next_presence_ref_{1};
  std::string ref_prefix_;  // differs per process so refs never repeat across restarts
};

}  // namespace synapse::pubsub
