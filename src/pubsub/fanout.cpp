#include "pubsub/fanout.hpp"
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
  slot_of(*list[i].sub) = i;
  list.pop_back();
}

}  // namespace

Fanout::Fanout(std::vector<Poster> threads, metrics::Metrics& metrics)
    : posters_(std::move(threads)), metrics_(metrics), tables_(posters_.size()) {
  inboxes_.reserve(posters_.size());
  for (std::size_t i = 0; i < posters_.size(); ++i) inboxes_.push_back(std::make_unique<Inbox>());
}

Fanout::~Fanout() = default;

void Fanout::add(Subscriber& sub, const JoinRequest& req, std::uint64_t topic_id, std::uint64_t start_offset,
                 std::uint64_t presence_start) {
  sub.connection_id = req.connection_id;
  sub.start_offset = start_offset;
  sub.topic_id = topic_id;
  sub.thread = req.thread;
  sub.receives_presence = req.presence;
  sub.agent_id = std::string(req.agent_id);
  sub.presence_start = presence_start;
  const bool presence = req.presence;
  LocalTopic& local = tables_[sub.thread].topics[sub.topic_id];
  sub.slot = local.members.size();
  local.members.push_back(LocalMember{sub.sink, &sub, sub.connection_id, sub.start_offset});
  if (presence) {
    sub.presence_slot = local.presence_members.size();
    local.presence_members.push_back(LocalMember{sub.sink, &sub, sub.connection_id, sub.presence_start});
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
        if (d.offset > start && d.exclude_connection != sub.connection_id) {
          batch.push_back(&d.msg);
          ++messages;
        }
        break;
      case DeliveryKind::presence:
        if (sub.receives_presence && d.offset > presence_start) batch.push_back(&d.msg);
        break;
    }
  }
  sub.start_offset = start;
  sub.presence_start = presence_start;
  LocalTopic& local = lt->second;
  if (sub.slot < local.members.size() && local.members[sub.slot].sub == &sub) {
    local.members[sub.slot].sink = sub.sink;
    local.members[sub.slot].start = start;
  }
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
  swap_remove(lt->second.members, sub, [](Subscriber& s) -> std::size_t& { return s.slot; });
  if (sub.receives_presence) {
    swap_remove(lt->second.presence_members, sub, [](Subscriber& s) -> std::size_t& { return s.presence_slot; });
  }
  if (lt->second.members.empty()) table.topics.erase(lt);
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

void Fanout::drain(std::size_t thread) {
  ThreadTable& table = tables_[thread];
  {
    Inbox& inbox = *inboxes_[thread];
    std::lock_guard lock(inbox.mu);
    std::swap(inbox.items, table.draining);
    inbox.scheduled = false;
  }
  // Deliveries come in runs for one topic (a burst queues many). Each member
  // gets its share of a run in one send_batch call, which writes it out at
  // once: one pass over the members, one syscall each.
  std::uint64_t delivered = 0;
  const auto& items = table.draining;
  for (std::size_t i = 0; i < items.size();) {
    std::size_t j = i + 1;
    while (j < items.size() && items[j].topic_id == items[i].topic_id && items[j].kind == items[i].kind) ++j;
    auto it = table.topics.find(items[i].topic_id);
    if (it != table.topics.end()) {
      const DeliveryKind kind = items[i].kind;
      if (kind == DeliveryKind::reset) {
        for (LocalMember& m : it->second.members) {
          if (m.sink) {
            m.start = 0;
          } else {
            hold(table, m, i, j);  // replayed in order by activate()
          }
        }
        i = j;
        continue;
      }
      const bool message = kind == DeliveryKind::message;
      for (const LocalMember& m : message ? it->second.members : it->second.presence_members) {
        if (!m.sink) {
          hold(table, m, i, j);
          continue;
        }
        table.batch.clear();
        for (std::size_t k = i; k < j; ++k) {
          const Delivery& d = items[k];
          if (d.offset <= m.start || (message && m.connection_id == d.exclude_connection)) continue;
          table.batch.push_back(&d.msg);
        }
        if (table.batch.empty()) continue;
        m.sink->send_batch(table.batch.data(), table.batch.size());
        if (message) delivered += table.batch.size();
      }
      // One observation per message per thread, once every local member has
      // it: three relaxed adds per message, not per delivery.
      if (message && !it->second.members.empty()) {
        const std::int64_t now_us = steady_us();
        for (std::size_t k = i; k < j; ++k) metrics_.fanout_latency.observe_us(now_us - items[k].queued_us);
      }
    }
    i = j;
  }
  table.draining.clear();
  if (delivered) metrics::bump(metrics_.deliveries, delivered);
}

}  // namespace synapse::pubsub
