#include "pubsub/local_broker.hpp"

#include "auth/crypto.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"

namespace synapse::pubsub {
namespace json = boost::json;

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

std::string new_epoch() { return auth::hex_encode(auth::random_bytes(8)); }

}  // namespace

LocalBroker::LocalBroker(BrokerOptions options, std::vector<Poster> threads, metrics::Metrics& metrics)
    : options_(options), posters_(std::move(threads)), metrics_(metrics), tables_(posters_.size()) {
  inboxes_.reserve(posters_.size());
  for (std::size_t i = 0; i < posters_.size(); ++i) inboxes_.push_back(std::make_unique<Inbox>());
  ref_prefix_ = auth::hex_encode(auth::random_bytes(3));
}

LocalBroker::~LocalBroker() = default;

LocalBroker::Shard& LocalBroker::shard_for(std::string_view topic) {
  return shards_[std::hash<std::string_view>{}(topic) % shards_.size()];
}

LocalBroker::Topic& LocalBroker::get_or_create(Shard& shard, std::string_view name) {
  auto it = shard.topics.find(std::string(name));
  if (it != shard.topics.end()) return *it->second;
  auto t = std::make_unique<Topic>();
  t->id = next_topic_id_.fetch_add(1, std::memory_order_relaxed);
  t->name = std::string(name);
  t->epoch = new_epoch();
  t->members_per_thread.assign(posters_.size(), 0);
  t->presence_per_thread.assign(posters_.size(), 0);
  t->empty_since_ms = mono_ms();
  metrics_.topics.fetch_add(1, std::memory_order_relaxed);
  return *shard.topics.emplace(t->name, std::move(t)).first->second;
}

void LocalBroker::expire_history(Topic& t, std::int64_t now_ms) {
  if (options_.history_ttl_ms <= 0) return;
  while (!t.history.empty() && now_ms - t.history.front().at_ms > options_.history_ttl_ms) {
    t.history.pop_front();
  }
  if (t.history.empty()) t.history.shrink_to_fit();
}

void LocalBroker::mark_if_empty(Topic& t, std::int64_t now_ms) {
  if (t.members == 0 && t.empty_since_ms < 0) t.empty_since_ms = now_ms;
}

JoinResult LocalBroker::join(Subscriber& sub, const JoinRequest& req) {
  JoinResult r;
  const std::int64_t now = mono_ms();
  Shard& shard = shard_for(req.topic);
  std::lock_guard lock(shard.mu);
  Topic& t = get_or_create(shard, req.topic);
  expire_history(t, now);

  sub.connection_id = req.connection_id;
  sub.start_offset = t.last_offset;
  sub.topic_id = t.id;
  sub.thread = req.thread;
  sub.receives_presence = req.presence;
  sub.agent_id = std::string(req.agent_id);
  sub.presence_start = t.presence_seq;
  LocalTopic& local = tables_[req.thread].topics[t.id];
  sub.slot = local.members.size();
  local.members.push_back(LocalMember{sub.sink, &sub, sub.connection_id, sub.start_offset});
  ++t.members_per_thread[req.thread];
  if (req.presence) {
    sub.presence_slot = local.presence_members.size();
    local.presence_members.push_back(LocalMember{sub.sink, &sub, sub.connection_id, sub.presence_start});
    ++t.presence_per_thread[req.thread];
  }
  ++t.members;
  t.empty_since_ms = -1;

  r.offset = t.last_offset;
  r.epoch = t.epoch;
  if (req.recover && req.recover->epoch == t.epoch && req.recover->offset <= t.last_offset) {
    const std::uint64_t first = t.history.empty() ? t.last_offset + 1 : t.history.front().offset;
    if (req.recover->offset + 1 >= first) {
      r.recovered = true;
      for (const auto& h : t.history) {
        if (h.offset > req.recover->offset) r.backlog.push_back(h.msg);
      }
    }
  }

  // Every member is tracked; only presence members receive presence traffic.
  sub.presence_ref = ref_prefix_ + "-" + std::to_string(next_presence_ref_.fetch_add(1, std::memory_order_relaxed));
  json::object meta = req.meta;
  meta["phx_ref"] = sub.presence_ref;
  meta["online_at"] = unix_ms();
  t.presence.track(sub.agent_id, sub.presence_ref, json::serialize(meta));
  t.presence_dirty = true;
  if (req.presence) r.presence_state_json = t.presence.state_for_joiner();
  return r;
}

void LocalBroker::leave(Subscriber& sub, std::string_view topic) {
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end() || it->second->id != sub.topic_id) return;
  Topic& t = *it->second;
  ThreadTable& table = tables_[sub.thread];
  auto lt = table.topics.find(t.id);
  if (lt != table.topics.end()) {
    swap_remove(lt->second.members, sub, [](Subscriber& s) -> std::size_t& { return s.slot; });
    if (sub.receives_presence) {
      swap_remove(lt->second.presence_members, sub, [](Subscriber& s) -> std::size_t& { return s.presence_slot; });
      --t.presence_per_thread[sub.thread];
    }
    if (lt->second.members.empty()) table.topics.erase(lt);
  }
  --t.members_per_thread[sub.thread];
  --t.members;
  t.presence.untrack(sub.agent_id, sub.presence_ref);
  t.presence_dirty = true;
  mark_if_empty(t, mono_ms());
  sub.topic_id = 0;
}

void LocalBroker::fan_out(const Topic& t, Delivery d) {
  const auto& counts = d.kind == Kind::message ? t.members_per_thread : t.presence_per_thread;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    Inbox& inbox = *inboxes_[i];
    bool post = false;
    {
      std::lock_guard lock(inbox.mu);
      inbox.items.push_back(d);
      if (!inbox.scheduled) {
        inbox.scheduled = true;
        post = true;
      }
    }
    if (post) posters_[i]([this, i] { drain(i); });
  }
}

void LocalBroker::drain(std::size_t thread) {
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
      const bool message = items[i].kind == Kind::message;
      for (const LocalMember& m : message ? it->second.members : it->second.presence_members) {
        table.batch.clear();
        for (std::size_t k = i; k < j; ++k) {
          const Delivery& d = items[k];
          // A message at or below `start` predates the join (it is in the
          // recovered history, or was not asked for); a diff at or below it
          // is already in the member's presence_state.
          if (d.offset <= m.start || (message && m.connection_id == d.exclude_connection)) continue;
          table.batch.push_back(&d.msg);
        }
        if (table.batch.empty()) continue;
        m.sink->send_batch(table.batch.data(), table.batch.size());
        if (message) delivered += table.batch.size();
      }
    }
    i = j;
  }
  table.draining.clear();
  if (delivered) metrics::bump(metrics_.deliveries, delivered);
}

PublishResult LocalBroker::publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                                   bool payload_empty, std::string_view from, std::uint64_t exclude_connection) {
  // Everything but the offset and epoch is built before taking the lock: the
  // client's own payload bytes, with _meta spliced in before the closing brace.
  const auto close = payload_json.rfind('}');
  std::string head = "[null,null,";
  head.reserve(64 + topic.size() + event.size() + payload_json.size() + from.size());
  protocol::append_json_string(head, topic);
  head.push_back(',');
  protocol::append_json_string(head, event);
  head.push_back(',');
  head.append(payload_json.substr(0, close == std::string_view::npos ? 0 : close));
  head += payload_empty ? "\"_meta\":{\"from\":" : ",\"_meta\":{\"from\":";
  protocol::append_json_string(head, from);
  head += ",\"ts\":";
  head += std::to_string(unix_ms());
  head += ",\"epoch\":\"";

  PublishResult r;
  const std::int64_t now = mono_ms();
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  Topic& t = get_or_create(shard, topic);
  const std::uint64_t offset = ++t.last_offset;
  const std::string tail = "\",\"offset\":" + std::to_string(offset) + "}}]";
  wire::Message msg = wire::Message::text_parts({head, t.epoch, tail});
  if (options_.history_size > 0) {
    t.history.push_back(HistoryEntry{offset, now, msg});
    while (t.history.size() > options_.history_size) t.history.pop_front();
  }
  if (t.members > 0) fan_out(t, Delivery{t.id, offset, exclude_connection, std::move(msg), Kind::message});
  metrics::bump(metrics_.publishes);
  r.offset = offset;
  r.epoch = t.epoch;
  return r;
}

std::string LocalBroker::presence_state(std::string_view topic) {
  Shard& shard = shard_for(topic);
  std::lock_guard lock(shard.mu);
  auto it = shard.topics.find(std::string(topic));
  if (it == shard.topics.end()) return "{}";
  return it->second->presence.current_json();
}

void LocalBroker::tick() {
  const std::int64_t now = mono_ms();
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (auto it = shard.topics.begin(); it != shard.topics.end();) {
      Topic& t = *it->second;
      if (t.presence_dirty) {
        t.presence_dirty = false;
        if (auto diff = t.presence.flush()) {
          const std::uint64_t seq = ++t.presence_seq;
          bool any = false;
          for (auto c : t.presence_per_thread) any |= c != 0;
          if (any) {
            wire::Message msg = wire::Message::text(
                protocol::encode_raw(std::nullopt, std::nullopt, t.name, "presence_diff", *diff));
            metrics::bump(metrics_.presence_diffs);
            fan_out(t, Delivery{t.id, seq, 0, std::move(msg), Kind::presence});
          }
        }
      }
      expire_history(t, now);
      const bool idle = t.members == 0 && t.history.empty() && t.presence.empty();
      if (idle && t.empty_since_ms >= 0 && now - t.empty_since_ms >= options_.empty_topic_grace_ms) {
        it = shard.topics.erase(it);
        metrics_.topics.fetch_sub(1, std::memory_order_relaxed);
      } else {
        ++it;
      }
    }
  }
}

BrokerStats LocalBroker::stats() {
  BrokerStats s;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    s.topics += shard.topics.size();
    for (const auto& [name, t] : shard.topics) {
      s.members += t->members;
      s.history_messages += t->history.size();
      for (const auto& h : t->history) s.history_bytes += h.msg.size();
    }
  }
  return s;
}

}  // namespace synapse::pubsub
