#include "pubsub/hub.hpp"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/handoff.hpp"
#include "metrics/metrics.hpp"
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
      metrics_(metrics),
      fanout_(threads, metrics),
      posters_(std::move(threads)),  // after fanout_, which copied them
      pending_(fanout_.threads()),
      ref_prefix_(core::hex_encode(core::random_bytes(3))) {
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
// every message above it). A change of epoch first queues a reset, so the
// members' start offsets, which belong to the old numbering, drop nothing
// of the new one. A body that does not decode is dropped with a warning.
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
  if (t->epoch != epoch) {
    if (!t->epoch.empty()) {
      spdlog::warn("topic {}: epoch changed from {} to {}", t->name, t->epoch, epoch);
      fanout_.queue(t->members_per_thread, Delivery{t->id, 0, 0, {}, DeliveryKind::reset});
    }
    t->epoch = std::string(epoch);
  }
  fanout_.queue(t->members_per_thread, Delivery{t->id, offset, exclude, std::move(msg), DeliveryKind::message});
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
      // A new membership: the epoch last handed on belongs to the previous
      // one, and the backend may have begun another since; kept, it would
      // make the first message look like an epoch change. The position
      // read by the join sets it again.
      t.epoch.clear();
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
    backend_.subscribe(pj->topic, [this, pj, first](bool confirmed) {
      if (!confirmed) spdlog::warn("topic {}: the backend did not confirm the subscription", pj->topic);
      open_gate(pj, first);
    });
  } else if (go_on) {
    read_position(pj);
  }
  return pj;
}

// Step 2 done (any thread): the first member's subscription answered; the
// joiners that waited go on, this one included (even if it has left: the
// others' continuations are what matters).
void Hub::open_gate(const std::shared_ptr<PendingJoin>& pj, const std::shared_ptr<Gate>& gate) {
  std::vector<std::function<void()>> waiters;
  {
    Shard& sh = shard_of(pj->topic);
    std::lock_guard lock(sh.mu);
    gate->open = true;
    waiters.swap(gate->waiters);
  }
  read_position(pj);
  for (auto& w : waiters) w();
}

// Step 3, any thread.
void Hub::read_position(const std::shared_ptr<PendingJoin>& pj) {
  if (pj->cancelled.load(std::memory_order_acquire)) return;  // left: nobody waits for it
  backend_.position(pj->topic, pj->recover, [this, pj](Position pos) {
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
// the member's presence entry, the epoch, and the presence state together
// with `presence_start`, the diff sequence it is current at, so the member
// gets every later diff and none before. A recovered body that does not
// decode (a history written by an older version) makes the join not
// recovered rather than recovered with a hole.
JoinResult Hub::finish_join(PendingJoin& pj, const Position& pos, std::uint64_t& presence_start) {
  Subscriber& sub = *pj.sub;
  JoinResult r;
  if (pos.ok) {
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
      if (t.epoch.empty()) t.epoch = pos.epoch;
      // Every member is tracked unless its credential may not appear (an
      // empty presence_ref then makes its leave untrack nothing); only
      // presence members receive presence traffic.
      if (pj.tracked) {
        sub.presence_ref = std::move(ref);
        t.presence.track(sub.agent_id, sub.presence_ref, std::move(meta));
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
  // has its own deadlines, and this wait only covers one that stopped.
  auto pos = pj->handoff->wait(options_.call_timeout);
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
    t.presence.untrack(sub.agent_id, sub.presence_ref);
    t.presence_dirty = true;
  }
  sub.topic_id = 0;
  if (t.members > 0) return false;
  // The last member: the node stops listening. Joiners still at the gate
  // cannot exist (they count as members).
  t.subscribed = false;
  t.gate.reset();
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
  auto r = handoff->wait(options_.call_timeout);
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

std::string Hub::presence_state(std::string_view topic) {
  Shard& sh = shard_of(topic);
  std::lock_guard lock(sh.mu);
  const Topic* t = find(sh, topic);
  return t ? t->presence.current_json() : "{}";
}

void Hub::tick() {
  for (Shard& sh : shards_) {
    std::lock_guard lock(sh.mu);
    for (auto it = sh.topics.begin(); it != sh.topics.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty) {
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
