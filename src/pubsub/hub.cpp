#include "pubsub/hub.hpp"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <set>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/handoff.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"
#include "pubsub/publish_frame.hpp"

namespace synapse::pubsub {
namespace json = boost::json;

namespace {

// A backend's completion handed to a caller that blocks for it (join() and
// publish() in front of an asynchronous backend).
using core::Handoff;

}  // namespace

// The joiners of a topic that came while its first member subscribes: their
// next step runs when the subscription is confirmed. Guarded by the topic's
// shard mutex; the continuations run outside it.
struct Hub::Gate {
  bool open = false;
  std::vector<std::function<void()>> waiters;
};

struct Hub::PendingJoin {
  // Set on the member's thread when the join starts; read-only afterwards.
  Subscriber* sub = nullptr;  // dereferenced on `thread` only, while pending_ lists this join
  std::string topic;
  std::uint64_t topic_id = 0;
  std::size_t thread = 0;
  bool presence = false;
  bool tracked = true;
  json::object meta;
  std::optional<Recover> recover;
  Deadline deadline;                           // of every step
  JoinDone done;                               // join_async's; runs on `thread`
  std::shared_ptr<Handoff<Position>> handoff;  // a blocking join() waits here instead
  // Set by leave() (on `thread`); the other steps read it only to skip work
  // nobody waits for. What decides is pending_, on `thread`.
  std::atomic<bool> cancelled{false};
};

Hub::Hub(HubOptions options, Backend& backend, std::vector<Poster> threads, metrics::Metrics& metrics)
    : options_(options),
      backend_(backend),
      async_(backend.asynchronous()),
      shared_(backend.shared()),
      metrics_(metrics),
      fanout_(threads, metrics),
      posters_(std::move(threads)),  // after fanout_, which copied them
      pending_(fanout_.threads()),
      ref_prefix_(options_.presence_ref_prefix.empty() ? core::hex_encode(core::random_bytes(3))
                                                       : options_.presence_ref_prefix) {
  backend_.attach(*this);
}

Hub::~Hub() = default;

Hub::Shard& Hub::shard_of(std::string_view name) {
  return shards_[std::hash<std::string_view>{}(name) % shard_count];
}

Hub::Topic* Hub::find(Shard& sh, std::string_view name, std::uint64_t id) {
  auto it = sh.topics.find(name);
  if (it == sh.topics.end() || (id != 0 && it->second->id != id)) return nullptr;
  return it->second.get();
}

Hub::Topic& Hub::get_or_create(Shard& sh, std::string_view name) {
  auto it = sh.topics.find(name);
  if (it != sh.topics.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->id = next_topic_id_.fetch_add(1, std::memory_order_relaxed);
  t->name = std::string(name);
  t->members_per_thread.assign(fanout_.threads(), 0);
  t->presence_per_thread.assign(fanout_.threads(), 0);
  return *sh.topics.emplace(t->name, std::move(t)).first->second;
}

// ---------------------------------------------------------------- delivery

// Contract: called by the backend for a topic this node subscribed to, in
// offset order per topic and never twice at once for one topic, with no Hub
// lock held. Frames the body once, outside the lock, and queues the same
// bytes for every thread with members of the topic, under the topic's shard
// lock (so a member counted before the backend read a join's position gets
// every message above it), through deliver(); while the topic reads back
// what it missed, the message is held instead. A body that does not decode
// is dropped with a warning (a hole, which deliver() reports as a gap when
// the next message comes).
void Hub::on_message(std::string_view topic, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude,
                     std::string_view body) {
  const auto parts = decode_body(body);
  if (!parts) {
    spdlog::warn("topic {}: dropped message {} of epoch {}: not a message body", topic, offset, epoch);
    return;
  }
  wire::Message msg = frame_numbered(topic, *parts, epoch, offset);
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  Topic* t = find(sh, topic);
  if (!t || t->members == 0) return;
  if (t->backfilling) {
    t->held.push_back(Held{std::string(epoch), offset, exclude, std::move(msg)});
    return;
  }
  deliver(*t, epoch, offset, exclude, std::move(msg));
}

void Hub::on_local_message(std::string_view topic, std::uint64_t exclude, std::string_view body) {
  const auto parts = decode_body(body);  // encode_body's: always decodes
  if (!parts) return;
  wire::Message msg = frame_local(topic, *parts);
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  Topic* t = find(sh, topic);
  if (!t || t->members == 0) return;
  fanout_.queue(t->members_per_thread, Delivery{t->id, unnumbered, exclude, std::move(msg), DeliveryKind::message});
}

void Hub::adopt_epoch(Topic& t, std::string_view epoch) {
  if (t.epoch == epoch) return;
  if (!t.epoch.empty() && t.members > 0) {
    spdlog::warn("topic {}: epoch changed from {} to {} (the backend lost its history)", t.name, t.epoch, epoch);
    // Whatever the old epoch numbered after the last offset handed on went
    // with the backend's data, if there was any: an open-ended gap, before
    // the reset. Not before this membership's first message, whose
    // last_offset is stale (the joiners start where their join read).
    if (t.synced) notify_gap(t, t.last_offset + 1, std::nullopt, epoch);
    fanout_.queue(t.members_per_thread, Delivery{t.id, 0, 0, {}, DeliveryKind::reset});
  }
  t.epoch = std::string(epoch);
  t.last_offset = 0;
}

void Hub::deliver(Topic& t, std::string_view epoch, std::uint64_t offset, std::uint64_t exclude, wire::Message msg) {
  adopt_epoch(t, epoch);
  if (offset <= t.last_offset) return;  // already handed on (a read-back overlaps the live stream)
  // Within an epoch every offset is published once, in order: a jump means
  // this node never received the ones in between and nobody can supply them.
  if (t.synced && offset > t.last_offset + 1) notify_gap(t, t.last_offset + 1, offset - 1, {});
  t.synced = true;
  t.last_offset = offset;
  fanout_.queue(t.members_per_thread, Delivery{t.id, offset, exclude, std::move(msg), DeliveryKind::message});
}

void Hub::notify_gap(Topic& t, std::uint64_t from, std::optional<std::uint64_t> to, std::string_view next_epoch) {
  spdlog::warn("topic {}: offsets {}..{} of epoch {} never reached this node and are not in the history; "
               "its members are told (phx_gap)",
               t.name, from, to ? std::to_string(*to) : std::string("end"), t.epoch);
  std::string body = "{\"recovered\":false,\"epoch\":";
  protocol::append_json_string(body, t.epoch);
  body += ",\"from\":" + std::to_string(from) + ",\"to\":" + (to ? std::to_string(*to) : std::string("null"));
  if (!next_epoch.empty()) {
    body += ",\"next_epoch\":";
    protocol::append_json_string(body, next_epoch);
  }
  body += '}';
  // Numbered `to`: a member whose start is at or past the gap (it joined
  // after it) does not get the push; the others get it in order, before what
  // follows. Open-ended (the epoch ended): every member gets it.
  fanout_.queue(t.members_per_thread,
                Delivery{t.id, to ? *to : unnumbered, 0,
                         wire::Message::text(protocol::encode_raw(std::nullopt, std::nullopt, t.name, "phx_gap", body)),
                         DeliveryKind::message});
}

// ---------------------------------------------------------------- backend lost and back

void Hub::on_backend_lost() {
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto& [name, t] : sh.topics) {
      if (t->members == 0 || t->epoch.empty()) continue;
      // Whatever arrives after the return waits for the read-back, so it is
      // handed on after what was missed, in order. A read-back in flight on
      // the lost transport no longer counts.
      t->backfilling = true;
      ++t->backfill_seq;
    }
  }
}

void Hub::on_backend_back(bool missed) {
  struct ReadBack {
    std::string name, epoch;
    std::uint64_t id, after, seq;
  };
  std::vector<ReadBack> reads;
  std::vector<std::pair<std::string, std::uint64_t>> snapshots;
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto& [name, t] : sh.topics) {
      if (t->members == 0) continue;
      if (shared_) {
        t->snapshot_pending = true;
        t->buffered.clear();
        snapshots.emplace_back(name, t->id);
      }
      // Without a loss (the backend had only forgotten the node) nothing
      // was missed: the subscription stayed.
      if (missed && !t->epoch.empty()) {
        t->backfilling = true;
        reads.push_back(ReadBack{name, t->epoch, t->id, t->last_offset, ++t->backfill_seq});
      }
    }
  }
  for (auto& rb : reads) {
    backend_.read_missed(rb.name, rb.epoch, rb.after, [this, name = rb.name, id = rb.id, seq = rb.seq](Missed m) {
      Shard& sh = shard_of(name);
      std::lock_guard lock(sh.mu);
      Topic* t = find(sh, name, id);
      if (t && t->backfilling && t->backfill_seq == seq) finish_backfill(*t, std::move(m));
    });
  }
  for (auto& [name, id] : snapshots) {
    backend_.presence_snapshot(name, std::chrono::steady_clock::now() + options_.call_timeout,
                               [this, name = name, id = id](std::optional<PresenceSnapshot> snap) {
                                 Shard& sh = shard_of(name);
                                 std::lock_guard lock(sh.mu);
                                 Topic* t = find(sh, name, id);
                                 if (!t || !t->snapshot_pending) return;
                                 if (!snap) spdlog::warn("topic {}: the presence snapshot could not be read", name);
                                 apply_snapshot(*t, snap);
                               });
  }
}

// Contract: called once per read-back, under the topic's shard lock, with
// read_missed's answer. Hands on, in offset order and once each, the union
// of what the stream still holds after the last offset handed on (or,
// under a new epoch, from offset 1) and the live messages held since the
// transport was lost; a hole in that union is reported to the members
// (deliver -> notify_gap) before the messages after it. Afterwards live
// messages are handed on directly again. Messages still in flight that the
// stream also held are dropped as duplicates by deliver(); the stream keeps
// its newest entries, so anything it no longer holds is older than what it
// does.
void Hub::finish_backfill(Topic& t, Missed m) {
  if (m.lost) return;  // still held: read again when the backend is back
  t.backfilling = false;
  std::vector<Held> held = std::move(t.held);
  t.held.clear();
  if (!m.ok || m.epoch.empty()) {
    // Not read (the held messages go on; the hole, if any, is reported by
    // deliver()), or no epoch any more (the backend lost its data and
    // nothing was published since): the next epoch's messages come live.
    if (!m.ok) spdlog::error("topic {}: reading what the node missed failed", t.name);
    for (auto& h : held) deliver(t, h.epoch, h.offset, h.exclude, std::move(h.msg));
    return;
  }
  std::map<std::uint64_t, Held> merged;
  for (auto& h : held) {
    if (h.epoch == m.epoch) {
      merged.emplace(h.offset, std::move(h));
    } else {
      // Received under the epoch that preceded the stream's (the backend
      // renumbered the topic meanwhile): they come first.
      deliver(t, h.epoch, h.offset, h.exclude, std::move(h.msg));
    }
  }
  const std::size_t held_count = merged.size();
  // A new epoch resets the members' filters now, so its offset 1 is owed.
  adopt_epoch(t, m.epoch);
  for (auto& stored : m.messages) {
    const auto parts = decode_body(stored.body);
    if (!parts) continue;  // not a body: a hole, reported as a gap like any other
    merged.emplace(stored.offset,
                   Held{m.epoch, stored.offset, stored.exclude, frame_numbered(t.name, *parts, m.epoch, stored.offset)});
  }
  std::uint64_t count = 0;
  for (auto& [offset, h] : merged) {
    const std::uint64_t before = t.last_offset;
    deliver(t, m.epoch, offset, h.exclude, std::move(h.msg));
    count += t.last_offset != before;
  }
  if (count) {
    spdlog::info("topic {}: delivered {} messages missed while the backend was away ({} were held live), epoch {}",
                 t.name, count, held_count, m.epoch);
  }
}

// ---------------------------------------------------------------- presence of other nodes

void Hub::on_presence(std::string_view topic, const PresenceChange& change) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  Topic* t = find(sh, topic);
  if (!t || t->members == 0) return;
  if (t->snapshot_pending) {
    t->buffered.push_back(change);
  } else if (change.version > t->presence_version) {
    apply_presence(*t, change);
  }
}

void Hub::apply_presence(Topic& t, const PresenceChange& ev) {
  t.presence_version = std::max(t.presence_version, ev.version);
  if (ev.mine) return;  // this node's entries are tracked directly
  if (ev.join) {
    if (t.remote.count(ev.ref)) return;
    t.remote.emplace(ev.ref, ev.agent);
    t.presence.track(ev.agent, ev.ref, ev.meta);
  } else {
    auto it = t.remote.find(ev.ref);
    if (it == t.remote.end()) return;
    t.presence.untrack(it->second, ev.ref);
    t.remote.erase(it);
  }
  t.presence_dirty = true;
}

// Contract: under the topic's shard lock. A snapshot that was read replaces
// the other nodes' entries (those it lacks left while it was not watched)
// and sets the version; then the changes that came while it loaded apply in
// version order, those it already includes skipped by version. A failed
// read keeps what is tracked. Either way the topic stops waiting.
void Hub::apply_snapshot(Topic& t, const std::optional<PresenceSnapshot>& snap) {
  if (snap) {
    std::set<std::string> seen;
    for (const auto& e : snap->entries) {
      if (e.mine) continue;
      seen.insert(e.ref);
      if (t.remote.count(e.ref)) continue;
      t.remote.emplace(e.ref, e.agent);
      t.presence.track(e.agent, e.ref, e.meta);
      t.presence_dirty = true;
    }
    for (auto it = t.remote.begin(); it != t.remote.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      t.presence.untrack(it->second, it->first);
      it = t.remote.erase(it);
      t.presence_dirty = true;
    }
    t.presence_version = snap->version;
  }
  std::sort(t.buffered.begin(), t.buffered.end(),
            [](const PresenceChange& a, const PresenceChange& b) { return a.version < b.version; });
  for (const auto& ev : t.buffered) {
    if (ev.version > t.presence_version) apply_presence(t, ev);
  }
  t.buffered.clear();
  t.snapshot_pending = false;
}

// ---------------------------------------------------------------- join

// Step 1, on the member's thread: count it, list it as pending, and start
// step 2 (the first member) or wait at the Gate / go to step 3 (the others).
std::shared_ptr<Hub::PendingJoin> Hub::begin_join(Subscriber& sub, const JoinRequest& req, JoinDone done) {
  auto pj = std::make_shared<PendingJoin>();
  pj->sub = &sub;
  pj->topic = std::string(req.topic);
  pj->thread = req.thread;
  pj->presence = req.presence;
  pj->tracked = req.tracked;
  pj->meta = req.meta;
  pj->recover = req.recover;
  pj->deadline = std::chrono::steady_clock::now() + options_.call_timeout;
  pj->done = std::move(done);
  if (!pj->done) pj->handoff = std::make_shared<Handoff<Position>>();
  sub.presence_ref.clear();

  std::shared_ptr<Gate> first;  // set: this join subscribes the node
  bool go_on = false;           // straight to the position
  {
    Shard& sh = shard_of(req.topic);
    std::lock_guard lock(sh.mu);
    Topic& t = get_or_create(sh, req.topic);
    pj->topic_id = t.id;
    // Counted before the backend is asked anything: from here on every
    // message handed to on_message for the topic is queued for our thread.
    ++t.members_per_thread[req.thread];
    if (req.presence) ++t.presence_per_thread[req.thread];
    ++t.members;
    if (!t.subscribed) {
      t.subscribed = true;
      t.gate = std::make_shared<Gate>();
      first = t.gate;
      // A new membership: the epoch and offset last handed on belong to the
      // previous one (its members all left), and the backend may have begun
      // a new epoch since. Kept, that stale epoch made the current epoch's
      // first message or read-back look like an epoch change, whose reset
      // cleared the new members' filters: they got messages from before
      // their join (tests/unit/broker_contract_test.cpp,
      // BackendDataLossStartsANewEpochAndMembersAreTold). The join's
      // position sets the epoch again; a join while the backend is down
      // still reports the last one seen (protocol.md §9).
      if (!t.epoch.empty()) t.prior_epoch = std::move(t.epoch);
      t.epoch.clear();
      t.last_offset = 0;
      t.synced = false;
      t.snapshot_pending = shared_;
      t.buffered.clear();
    } else if (t.gate && !t.gate->open) {
      t.gate->waiters.push_back([this, pj] { read_position(pj); });
    } else {
      go_on = true;
    }
  }
  // The member's table is its thread's (ours): no drain runs before we return.
  fanout_.add_pending(sub, req, pj->topic_id);
  pending_[req.thread][&sub] = pj;
  if (first) {
    backend_.subscribe(pj->topic, pj->deadline, [this, pj, first](bool confirmed) {
      if (!confirmed) {
        // Down, or slow: the subscription stays wanted and is made again
        // when the backend is back (on_backend_back reads the presence then).
        spdlog::warn("topic {}: the backend did not confirm the subscription", pj->topic);
        open_gate(pj, first, nullptr);
      } else if (shared_) {
        // The snapshot is the topic's, for every joiner at the gate, so it
        // is read even if this one has left meanwhile.
        backend_.presence_snapshot(pj->topic, pj->deadline,
                                   [this, pj, first](std::optional<PresenceSnapshot> snap) {
                                     if (!snap) spdlog::warn("topic {}: the presence snapshot could not be read", pj->topic);
                                     open_gate(pj, first, &snap);
                                   });
      } else {
        open_gate(pj, first, nullptr);
      }
    });
  } else if (go_on) {
    read_position(pj);
  }
  return pj;
}

// Step 2 done (any thread): the first member's subscription answered (and,
// for a shared backend, the presence snapshot `snap` read); the joiners that
// waited go on, this one included (even if it has left: the others'
// continuations are what matters).
void Hub::open_gate(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate,
                    const std::optional<PresenceSnapshot>* snap) {
  std::vector<std::function<void()>> waiters;
  {
    Shard& sh = shard_of(pj->topic);
    std::lock_guard lock(sh.mu);
    // Only for the topic this subscription was made for: its last member
    // may have left, and a new first member be subscribing again.
    if (Topic* t = find(sh, pj->topic, pj->topic_id); shared_ && t && t->gate == gate && t->snapshot_pending) {
      apply_snapshot(*t, snap ? *snap : std::optional<PresenceSnapshot>{});
    }
    gate->open = true;
    waiters.swap(gate->waiters);
  }
  read_position(pj);
  for (auto& w : waiters) w();
}

// Step 3, any thread.
void Hub::read_position(const std::shared_ptr<PendingJoin>& pj) {
  if (pj->cancelled.load(std::memory_order_acquire)) return;  // left: nobody waits for it
  backend_.position(pj->topic, pj->recover, pj->deadline, [this, pj](Position pos) {
    if (pj->handoff) {
      pj->handoff->set(std::move(pos));
      return;
    }
    if (pj->cancelled.load(std::memory_order_acquire)) return;
    // Posted even from a synchronous backend: `done` never runs inside join_async.
    posters_[pj->thread]([this, pj, pos = std::move(pos)] { complete_join(pj, pos); });
  });
}

// Step 4, on the member's thread (join_async).
void Hub::complete_join(const std::shared_ptr<PendingJoin>& pj, const Position& pos) {
  auto& pending = pending_[pj->thread];
  auto it = pending.find(pj->sub);
  if (it == pending.end() || it->second != pj) return;  // left meanwhile: `sub` may be gone
  Subscriber& sub = *pj->sub;
  std::uint64_t presence_start = 0;
  JoinResult result = finish_join(*pj, pos, presence_start);
  const bool joined = !result.unavailable && !result.presence_full;
  const std::uint64_t start = result.offset;
  // Still listed while `done` runs: a leave() from inside it cancels the
  // replay below (and may destroy `sub`).
  JoinDone done = std::move(pj->done);
  if (done) done(std::move(result));
  if (!joined) return;
  auto again = pending.find(pj->sub);
  if (again == pending.end() || again->second != pj) return;
  pending.erase(again);
  fanout_.activate(sub, start, presence_start);
}

// Contract: on pj.thread, with pj still listed in pending_ and no Hub lock
// held. Frames the backlog (outside the lock); then, under the topic's
// lock, either undoes the membership (the backend could not answer: the
// result says unavailable; the presence bound is reached: presence_full;
// pending_ no longer lists the join in both cases, and the node is
// unsubscribed when it was the topic's last member) or records the join:
// the member's presence entry (added to a shared backend too), the epoch,
// and the presence state together with `presence_start`, the diff sequence
// it is current at, so the member gets every later diff and none before. A
// backend that is down (`offline`) joins the member to this node's delivery
// with the last epoch seen and offset 0. A recovered body that does not
// decode (a history written by an older version) makes the join not
// recovered rather than recovered with a hole.
JoinResult Hub::finish_join(PendingJoin& pj, const Position& pos, std::uint64_t& presence_start) {
  Subscriber& sub = *pj.sub;
  JoinResult r;
  if (pos.ok && !pos.offline) {
    r.offset = pos.offset;
    r.epoch = pos.epoch;
    r.recovered = pos.recovered;
    std::uint64_t at = pj.recover ? pj.recover->offset : 0;
    r.backlog.reserve(pos.bodies.size());
    for (const auto& b : pos.bodies) {
      const auto parts = decode_body(b);
      if (!parts) {
        spdlog::warn("topic {}: history entry {} is not a message body; the join is not recovered", pj.topic, at + 1);
        r.recovered = false;
        r.backlog.clear();
        break;
      }
      r.backlog.push_back(frame_numbered(pj.topic, *parts, pos.epoch, ++at));
    }
  }
  bool unsubscribe = false;
  {
    Shard& sh = shard_of(pj.topic);
    std::lock_guard lock(sh.mu);
    // A member keeps its topic: it cannot have been released meanwhile.
    Topic* tp = find(sh, pj.topic, pj.topic_id);
    if (!tp) {
      spdlog::error("join of {}: the topic went away under a pending member", pj.topic);
      pending_[pj.thread].erase(&sub);
      fanout_.remove(sub);
      sub.topic_id = 0;
      r = JoinResult{};
      r.unavailable = true;
      return r;
    }
    Topic& t = *tp;
    std::string ref, meta;
    if (pos.ok && pj.tracked) {
      ref = ref_prefix_ + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
      meta = presence::meta_json(pj.meta, ref, unix_ms());
    }
    const std::size_t cap = options_.max_presence_bytes_per_topic;
    const bool full =
        pos.ok && pj.tracked && cap > 0 && t.presence.bytes() + presence::entry_bytes(sub.agent_id, meta) > cap;
    if (!pos.ok || full) {
      pending_[pj.thread].erase(&sub);
      unsubscribe = drop_member(t, sub);
      r = JoinResult{};
      (full ? r.presence_full : r.unavailable) = true;
    } else {
      if (pos.offline) {
        spdlog::warn("join of {} while the backend is down: this node's messages only", pj.topic);
        r.epoch = t.epoch.empty() ? t.prior_epoch : t.epoch;
      } else if (t.epoch.empty()) {
        t.epoch = pos.epoch;
      }
      // Every member is tracked unless its credential may not appear (an
      // empty presence_ref then makes its leave untrack nothing); only
      // presence members receive presence traffic.
      if (pj.tracked) {
        sub.presence_ref = ref;
        const std::string agent(sub.agent_id.view());
        if (shared_) backend_.presence_add(pj.topic, ref, agent, meta);
        t.presence.track(agent, ref, std::move(meta));
        t.presence_dirty = true;
      }
      presence_start = t.presence_seq;
      if (pj.presence) r.presence_state_json = t.presence.state_for_joiner();
    }
  }
  if (unsubscribe) backend_.unsubscribe(pj.topic);
  return r;
}

void Hub::join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) {
  begin_join(sub, req, std::move(done));
}

JoinResult Hub::join(Subscriber& sub, const JoinRequest& req) {
  auto pj = begin_join(sub, req, {});
  // A synchronous backend answered inside begin_join; an asynchronous one
  // answers by the join's deadline, and the margin only covers one that stopped.
  auto pos = pj->handoff->wait(options_.call_timeout + std::chrono::milliseconds(500));
  if (!pos) {
    pj->cancelled.store(true, std::memory_order_release);
    pos.emplace();
    pos->ok = false;
  }
  std::uint64_t presence_start = 0;
  JoinResult result = finish_join(*pj, *pos, presence_start);
  if (!result.unavailable && !result.presence_full) {
    pending_[pj->thread].erase(&sub);
    // This thread was blocked: nothing was drained, so nothing was held.
    fanout_.activate(sub, result.offset, presence_start);
  }
  return result;
}

bool Hub::drop_member(Topic& t, Subscriber& sub) {
  fanout_.remove(sub);
  --t.members_per_thread[sub.thread];
  if (sub.receives_presence) --t.presence_per_thread[sub.thread];
  --t.members;
  if (!sub.presence_ref.empty()) {  // empty: never tracked (see finish_join)
    // The tracker and the backend take std::strings: copies made on leave
    // only, so the member keeps its 16-byte SmallTexts.
    const std::string agent(sub.agent_id.view()), ref(sub.presence_ref.view());
    t.presence.untrack(agent, ref);
    if (shared_) backend_.presence_remove(t.name, ref, agent);
    t.presence_dirty = true;
  }
  sub.topic_id = 0;
  if (t.members > 0) return false;
  // The last member: the node stops listening, and forgets the other nodes'
  // presence, which nobody here watches any more. Joiners still at the gate
  // cannot exist (they count as members).
  t.subscribed = false;
  t.gate.reset();
  for (const auto& [ref, agent] : t.remote) t.presence.untrack(agent, ref);
  t.remote.clear();
  t.buffered.clear();
  t.snapshot_pending = false;
  t.held.clear();
  t.backfilling = false;
  ++t.backfill_seq;
  return true;
}

void Hub::leave(Subscriber& sub, std::string_view topic) {
  if (sub.thread < pending_.size()) {
    auto& pending = pending_[sub.thread];
    if (auto it = pending.find(&sub); it != pending.end()) {
      // A join in flight: its completion will find nothing and do nothing.
      it->second->cancelled.store(true, std::memory_order_release);
      pending.erase(it);
    }
  }
  bool unsubscribe = false;
  {
    Shard& sh = shard_of(topic);
    std::lock_guard lock(sh.mu);
    if (sub.topic_id == 0) return;  // never joined, or the join was refused and undone
    Topic* t = find(sh, topic, sub.topic_id);
    if (!t) return;
    unsubscribe = drop_member(*t, sub);
  }
  if (unsubscribe) backend_.unsubscribe(topic);
}

// ---------------------------------------------------------------- publish

PublishResult Hub::publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                           bool payload_empty, std::string_view from, std::uint64_t exclude_connection) {
  if (!async_) {
    // A synchronous backend completes inside the call: no handoff needed.
    PublishResult out;
    backend_.publish(topic, encode_body(event, payload_json, payload_empty, from, unix_ms()), exclude_connection,
                     [&out](PublishResult r) { out = std::move(r); });
    return out;
  }
  auto handoff = std::make_shared<Handoff<PublishResult>>();
  backend_.publish(topic, encode_body(event, payload_json, payload_empty, from, unix_ms()), exclude_connection,
                   [handoff](PublishResult r) { handoff->set(std::move(r)); });
  auto r = handoff->wait(options_.call_timeout + std::chrono::milliseconds(500));
  if (!r) {
    PublishResult unknown;
    unknown.reach = PublishResult::Reach::unknown;
    return unknown;
  }
  return std::move(*r);
}

void Hub::publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                        PublishDone done) {
  backend_.publish(topic, encode_body(event, payload_json, payload_empty, from, unix_ms()), exclude_connection,
                   std::move(done));
}

// ---------------------------------------------------------------- the rest

namespace {

// Every node's entries of a snapshot, as presence_state's JSON.
std::string snapshot_json(const PresenceSnapshot& snap) {
  presence::PresenceTracker all;
  for (const auto& e : snap.entries) all.track(e.agent, e.ref, e.meta);
  return all.current_json();
}

}  // namespace

std::string Hub::presence_state(std::string_view topic) {
  {
    Shard& sh = shard_of(topic);
    std::lock_guard lock(sh.mu);
    const Topic* t = find(sh, topic);
    if (!shared_) return t ? t->presence.current_json() : "{}";
    // This node watches the topic's presence: it is current here.
    if (t && t->members > 0 && !t->snapshot_pending) return t->presence.current_json();
  }
  auto handoff = std::make_shared<Handoff<std::optional<PresenceSnapshot>>>();
  backend_.presence_snapshot(topic, std::chrono::steady_clock::now() + options_.call_timeout,
                             [handoff](std::optional<PresenceSnapshot> snap) { handoff->set(std::move(snap)); });
  auto snap = handoff->wait(options_.call_timeout + std::chrono::milliseconds(500));
  return snap && *snap ? snapshot_json(**snap) : "{}";
}

void Hub::presence_state_async(std::string_view topic, PresenceDone done) {
  std::optional<std::string> here;
  {
    Shard& sh = shard_of(topic);
    std::lock_guard lock(sh.mu);
    const Topic* t = find(sh, topic);
    if (!shared_ || (t && t->members > 0 && !t->snapshot_pending)) here = t ? t->presence.current_json() : "{}";
  }
  if (here) {
    done(std::move(here));  // no Hub lock held
    return;
  }
  // Nobody here is in the topic (or its snapshot is loading): every node's
  // entries, from the backend.
  backend_.presence_snapshot(topic, std::chrono::steady_clock::now() + options_.call_timeout,
                             [done = std::move(done)](std::optional<PresenceSnapshot> snap) {
                               if (!snap) {
                                 done(std::nullopt);
                                 return;
                               }
                               done(snapshot_json(*snap));
                             });
}

void Hub::tick() {
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto it = sh.topics.begin(); it != sh.topics.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty && !t.snapshot_pending) {
        t.presence_dirty = false;
        fanout_.flush_presence(t.id, t.name, t.presence, t.presence_seq, t.presence_per_thread);
      }
      if (t.members == 0 && !t.subscribed && t.presence.empty()) {
        it = sh.topics.erase(it);
      } else {
        ++it;
      }
    }
  }
  backend_.tick();
}

BrokerStats Hub::stats() {
  BrokerStats s;
  backend_.stats(s);
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (const auto& [name, t] : sh.topics) s.members += t->members;
  }
  return s;
}

std::optional<std::vector<TopicSummary>> Hub::list_topics() {
  auto held = backend_.list_topics();
  if (!held) return std::nullopt;
  std::vector<TopicSummary> out;
  out.reserve(held->size());
  for (const auto& b : *held) {
    TopicSummary s;
    s.name = b.name;
    s.last_offset = b.last_offset;
    s.history = b.history;
    Shard& sh = shard_of(b.name);
    std::lock_guard lock(sh.mu);
    if (const Topic* t = find(sh, b.name)) {
      s.members = t->members;
      for (auto n : t->presence_per_thread) s.presences += n;
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const TopicSummary& a, const TopicSummary& b) { return a.name < b.name; });
  return out;
}

std::optional<TopicHistory> Hub::inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) {
  auto b = backend_.inspect_topic(topic, since, limit);
  if (!b) return std::nullopt;
  TopicHistory h;
  h.summary.name = std::string(topic);
  h.summary.last_offset = b->last_offset;
  h.summary.history = b->history;
  h.epoch = b->epoch;
  for (const auto& [offset, body] : b->bodies) {
    if (const auto parts = decode_body(body)) h.messages.emplace_back(offset, frame_numbered(topic, *parts, b->epoch, offset));
  }
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  if (const Topic* t = find(sh, topic)) {
    h.summary.members = t->members;
    for (auto n : t->presence_per_thread) h.summary.presences += n;
  }
  return h;
}

}  // namespace synapse::pubsub
