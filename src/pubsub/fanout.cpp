#include "pubsub/fanout.hpp"

#include <algorithm>
#include <chrono>

#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"

namespace synapse::pubsub {

namespace {

// Removes `sub` from `list` in O(1) by moving the last member into its place.
template <class Member, class SlotOf>
void swap_remove(std::vector<Member>& list, Subscriber& sub, SlotOf slot_of) {
  const std::size_t i = slot_of(sub);
  if (i >= list.size() || list[i].sub != &sub) return;
  list[i] = list.back();
  slot_of(*list[i].sub) = static_cast<std::uint32_t>(i);
  list.pop_back();
}

// swap_remove for the list a drain is handing a run out to, members
// [0, *served) having had their share: the served part stays in front, so no
// unserved member is moved behind the cursor (it would miss the run) and no
// served one in front of it (it would get the run twice).
template <class Member, class SlotOf>
void remove_behind_cursor(std::vector<Member>& list, Subscriber& sub, SlotOf slot_of, std::size_t& served) {
  const std::size_t i = slot_of(sub);
  if (i >= list.size() || list[i].sub != &sub) return;
  if (i >= served) {
    swap_remove(list, sub, slot_of);
    return;
  }
  const std::size_t last_served = served - 1;
  const std::size_t last = list.size() - 1;
  if (i != last_served) {
    list[i] = list[last_served];
    slot_of(*list[i].sub) = static_cast<std::uint32_t>(i);
  }
  if (last_served != last) {
    list[last_served] = list[last];
    slot_of(*list[last_served].sub) = static_cast<std::uint32_t>(last_served);
  }
  list.pop_back();
  --served;
}

}  // namespace

Fanout::Fanout(std::vector<Poster> threads, metrics::Metrics& metrics, std::size_t slice_sends)
    : posters_(std::move(threads)), metrics_(metrics), slice_sends_(std::max<std::size_t>(1, slice_sends)),
      tables_(posters_.size()) {
  inboxes_.reserve(posters_.size());
  for (std::size_t i = 0; i < posters_.size(); ++i) inboxes_.push_back(std::make_unique<Inbox>());
}

Fanout::~Fanout() = default;

void Fanout::add(Subscriber& sub, const JoinRequest& req, std::uint64_t topic_id, std::uint64_t start_offset,
                 std::uint64_t presence_start) {
  sub.topic_id = topic_id;
  sub.thread = static_cast<std::uint32_t>(req.thread);
  sub.receives_presence = req.presence;
  sub.agent_id = req.agent_id;
  const bool presence = req.presence;
  LocalTopic& local = tables_[sub.thread].topics[sub.topic_id];
  sub.slot = static_cast<std::uint32_t>(local.members.size());
  local.members.push_back(LocalMember{sub.sink, &sub, req.connection_id, start_offset});
  if (presence) {
    sub.presence_slot = static_cast<std::uint32_t>(local.presence_members.size());
    local.presence_members.push_back(LocalMember{sub.sink, &sub, req.connection_id, presence_start});
  }
}

void Fanout::add_pending(Subscriber& sub, const JoinRequest& req, std::uint64_t topic_id) {
  add(sub, req, topic_id, 0, 0);
  LocalTopic& local = tables_[sub.thread].topics[topic_id];
  local.members[sub.slot].sink = nullptr;
  if (sub.receives_presence) local.presence_members[sub.presence_slot].sink = nullptr;
  tables_[sub.thread].held[&sub];
}

void Fanout::hold(ThreadTable& table, const LocalMember& m, std::size_t from, std::size_t to) {
  auto& held = table.held[m.sub];
  for (std::size_t k = from; k < to; ++k) held.push_back(table.draining[k]);
}

void Fanout::activate(Subscriber& sub, std::uint64_t start_offset, std::uint64_t presence_start) {
  ThreadTable& table = tables_[sub.thread];
  auto lt = table.topics.find(sub.topic_id);
  if (lt == table.topics.end()) return;
  std::vector<Delivery> held;
  if (auto h = table.held.find(&sub); h != table.held.end()) {
    held = std::move(h->second);
    table.held.erase(h);
  }
  // The member's slot holds its connection id (the Subscriber keeps no
  // copy). A member is in its topic's list from add_pending() until
  // remove(), so the slot is there; were it not, the member would receive
  // no live message either, and gets none of the held ones.
  LocalTopic& local = lt->second;
  if (sub.slot >= local.members.size() || local.members[sub.slot].sub != &sub) return;
  LocalMember& member = local.members[sub.slot];
  // The same filters as drain(), over what came while the join was pending.
  std::uint64_t start = start_offset;
  std::vector<const wire::Message*> batch;
  batch.reserve(held.size());
  std::uint64_t messages = 0;
  for (const Delivery& d : held) {
    if (d.topic_id != sub.topic_id) continue;
    switch (d.kind) {
      case DeliveryKind::reset:
        start = 0;
        break;
      case DeliveryKind::message:
        if (d.offset > start && d.exclude_connection != member.connection_id) {
          batch.push_back(&d.msg);
          ++messages;
        }
        break;
      case DeliveryKind::presence:
        if (sub.receives_presence && d.offset > presence_start) batch.push_back(&d.msg);
        break;
    }
  }
  member.sink = sub.sink;
  member.start = start;
  if (sub.receives_presence && sub.presence_slot < local.presence_members.size() &&
      local.presence_members[sub.presence_slot].sub == &sub) {
    local.presence_members[sub.presence_slot].sink = sub.sink;
    local.presence_members[sub.presence_slot].start = presence_start;
  }
  if (batch.empty()) return;
  sub.sink->send_batch(batch.data(), batch.size());
  if (messages) metrics::bump(metrics_.deliveries, messages);
}

void Fanout::remove(Subscriber& sub) {
  ThreadTable& table = tables_[sub.thread];
  table.held.erase(&sub);
  auto lt = table.topics.find(sub.topic_id);
  if (lt == table.topics.end()) return;
  const auto slot = [](Subscriber& s) -> std::uint32_t& { return s.slot; };
  const auto presence_slot = [](Subscriber& s) -> std::uint32_t& { return s.presence_slot; };
  // Between two slices of a drain, the list being handed a run keeps its
  // served members in front (remove_behind_cursor).
  const bool mid_run = table.in_round && table.run_topic == sub.topic_id && table.run < table.run_end;
  if (mid_run && table.run_kind == DeliveryKind::message) {
    remove_behind_cursor(lt->second.members, sub, slot, table.next_member);
  } else {
    swap_remove(lt->second.members, sub, slot);
  }
  if (sub.receives_presence) {
    if (mid_run && table.run_kind == DeliveryKind::presence) {
      remove_behind_cursor(lt->second.presence_members, sub, presence_slot, table.next_member);
    } else {
      swap_remove(lt->second.presence_members, sub, presence_slot);
    }
  }
  if (lt->second.members.empty()) {
    table.topics.erase(lt);
    // A member joining again makes a new list: every one in it is unserved.
    if (mid_run) table.next_member = 0;
  }
}

namespace {
std::int64_t steady_us() noexcept {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

void Fanout::queue(const std::vector<std::uint32_t>& counts, const Delivery& d) {
  const std::int64_t now_us = steady_us();
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    Inbox& inbox = *inboxes_[i];
    bool post = false;
    {
      std::lock_guard lock(inbox.mu);
      inbox.items.push_back(d);
      inbox.items.back().queued_us = now_us;
      if (!inbox.scheduled) {
        inbox.scheduled = true;
        post = true;
      }
    }
    if (post) posters_[i]([this, i] { drain(i); });
  }
}

void Fanout::flush_presence(std::uint64_t topic_id, std::string_view topic, presence::PresenceTracker& tracker,
                            std::uint64_t& seq, const std::vector<std::uint32_t>& presence_per_thread) {
  auto diff = tracker.flush();
  if (!diff) return;
  ++seq;
  bool any = false;
  for (auto c : presence_per_thread) any |= c != 0;
  if (!any) return;
  wire::Message msg =
      wire::Message::text(protocol::encode_raw(std::nullopt, std::nullopt, topic, "presence_diff", *diff));
  metrics::bump(metrics_.presence_diffs);
  queue(presence_per_thread, Delivery{topic_id, seq, 0, std::move(msg), DeliveryKind::presence});
}

// drain / resume / work: one batch of deliveries handed out in slices.
//
// drain() is the task queue() posts when a thread's inbox gets its first
// item. It takes the inbox (take_inbox) and starts a round; if a round is
// already in progress (the thread is between two slices), it only notes
// that it came (`deferred`): the round takes the inbox again when it ends.
// work() hands each run of the batch (consecutive deliveries of one topic
// and kind) to the run's members in list order, one send_batch per member,
// and returns after slice_sends_ calls with a resume() posted: the thread's
// other handlers run in between. A round ends when the batch is handed out;
// if a drain came meanwhile, the next round starts at once.
//
// resume() first lets the run grow (extend_run): when the run is the last of
// the batch and of messages, the inbox's leading messages of the same topic
// (copies; they stay queued) are appended to it, so the members not served
// yet get them in this pass. A member handed such messages moves its start
// to the last one's offset, and the next round, which hands out the queued
// originals, skips them for it by the usual start filter. Only numbered
// messages qualify (an unnumbered one could not be told apart), and only at
// the batch's end, so no member sees a later delivery of one topic before an
// earlier one of another that is still in the batch.
//
// Members removed between slices keep the served ones in front (remove());
// members added go to the end and get the rest of the run through their
// filters, as they would have from the next drain. A member whose join is
// pending is held the run's own part [run, run_end_own), never the copies:
// it is held the originals from the next round.
void Fanout::drain(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  if (table.in_round) {
    table.deferred = true;
    return;
  }
  if (!take_inbox(thread)) return;
  work(thread);
}

void Fanout::resume(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  table.resume_posted = false;
  if (!table.in_round) return;
  extend_run(thread);
  work(thread);
}

bool Fanout::take_inbox(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  table.draining.clear();
  {
    Inbox& inbox = *inboxes_[thread];
    std::lock_guard lock(inbox.mu);
    std::swap(inbox.items, table.draining);
    inbox.scheduled = false;
  }
  table.copied = 0;
  table.run = 0;
  table.in_round = !table.draining.empty();
  if (table.in_round) start_run(table);
  return table.in_round;
}

void Fanout::start_run(ThreadTable& table) {
  const auto& items = table.draining;
  std::size_t j = table.run + 1;
  while (j < items.size() && items[j].topic_id == items[table.run].topic_id &&
         items[j].kind == items[table.run].kind) {
    ++j;
  }
  table.run_end = table.run_end_own = j;
  table.run_topic = items[table.run].topic_id;
  table.run_kind = items[table.run].kind;
  table.next_member = 0;
}

void Fanout::extend_run(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  if (table.run_kind != DeliveryKind::message || table.run >= table.run_end ||
      table.run_end != table.draining.size()) {
    return;
  }
  Inbox& inbox = *inboxes_[thread];
  std::lock_guard lock(inbox.mu);
  std::size_t k = table.copied;
  for (; k < inbox.items.size(); ++k) {
    const Delivery& d = inbox.items[k];
    if (d.topic_id != table.run_topic || d.kind != DeliveryKind::message || d.offset == unnumbered) break;
    table.draining.push_back(d);
    table.draining.back().queued_us = 0;  // observed once, when the original is handed out
  }
  table.copied = k;
  table.run_end = table.draining.size();
}

void Fanout::work(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  std::uint64_t delivered = 0;
  std::size_t sends = 0;
  for (;;) {
    if (table.run >= table.draining.size()) {  // the round is over
      table.in_round = false;
      table.draining.clear();
      if (!table.deferred) break;  // else the drain queue() posted is still to run
      table.deferred = false;
      if (!take_inbox(thread)) break;
      continue;
    }
    const auto& items = table.draining;
    const std::size_t i = table.run;
    auto it = table.topics.find(table.run_topic);
    if (it != table.topics.end()) {
      const DeliveryKind kind = table.run_kind;
      if (kind == DeliveryKind::reset) {
        for (LocalMember& m : it->second.members) {
          if (m.sink) {
            m.start = 0;
          } else {
            hold(table, m, i, table.run_end_own);  // replayed in order by activate()
          }
        }
      } else {
        const bool message = kind == DeliveryKind::message;
        auto& list = message ? it->second.members : it->second.presence_members;
        const std::size_t j = table.run_end;
        const bool extended = j > table.run_end_own;
        while (table.next_member < list.size()) {
          if (sends >= slice_sends_) {
            if (delivered) metrics::bump(metrics_.deliveries, delivered);
            if (!table.resume_posted) {
              table.resume_posted = true;
              posters_[thread]([this, thread] { resume(thread); });
            }
            return;
          }
          LocalMember& m = list[table.next_member++];
          if (!m.sink) {
            hold(table, m, i, table.run_end_own);
            continue;
          }
          table.batch.clear();
          for (std::size_t k = i; k < j; ++k) {
            const Delivery& d = items[k];
            if (d.offset <= m.start || (message && m.connection_id == d.exclude_connection)) continue;
            table.batch.push_back(&d.msg);
          }
          // The copies it gets now come again, as originals, in the next round.
          if (extended) m.start = std::max(m.start, items[j - 1].offset);
          if (table.batch.empty()) continue;
          m.sink->send_batch(table.batch.data(), table.batch.size());
          ++sends;
          if (message) delivered += table.batch.size();
        }
        // One observation per message per thread, once every local member
        // has it: three relaxed adds per message, not per delivery.
        if (message && !list.empty()) {
          const std::int64_t now_us = steady_us();
          for (std::size_t k = i; k < table.run_end_own; ++k) {
            if (items[k].queued_us != 0) metrics_.fanout_latency.observe_us(now_us - items[k].queued_us);
          }
        }
      }
    }
    table.run = table.run_end;
    if (table.run < table.draining.size()) start_run(table);
  }
  if (delivered) metrics::bump(metrics_.deliveries, delivered);
}

}  // namespace synapse::pubsub
