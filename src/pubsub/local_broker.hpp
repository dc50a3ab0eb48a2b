// The in-process broker: a LocalBackend (offsets, epochs, history in memory
// or on disk) behind the Hub (membership, fan-out, framing, join gating,
// presence). See hub.hpp and local_backend.hpp for how and under which locks.
// One object so that main.cpp and the tests build a single-node broker in
// one line; it adds nothing to either part.
#pragma once

#include "pubsub/hub.hpp"
#include "pubsub/local_backend.hpp"

namespace synapse::pubsub {

struct BrokerOptions {
  std::size_t history_size = 100;
  std::int64_t history_ttl_ms = 300'000;  // 0 = forever
  // Byte bounds of the history (body bytes), oldest dropped first. 0 = no bound.
  std::size_t history_max_bytes_per_topic = 4u << 20;
  std::size_t history_max_bytes = 256u << 20;  // all topics together
  // Bytes of presence metas one topic may track; a join past it is refused
  // (presence_full). 0 = no bound.
  std::size_t max_presence_bytes_per_topic = 8u << 20;
  // An empty topic keeps its epoch and offset this long (LocalBackendOptions).
  std::int64_t empty_topic_grace_ms = 30'000;
  // `history_store = "disk"`; not owned; null = history in memory only.
  HistoryLog* log = nullptr;
};

class LocalBroker final : public Broker {
 public:
  LocalBroker(const BrokerOptions& o, std::vector<Poster> threads, metrics::Metrics& metrics)
      : backend_(LocalBackendOptions{o.history_size, o.history_ttl_ms, o.history_max_bytes_per_topic,
                                     o.history_max_bytes, o.empty_topic_grace_ms, o.log},
                 metrics),
        hub_(hub_options(o), backend_, std::move(threads), metrics) {}

  JoinResult join(Subscriber& sub, const JoinRequest& req) override { return hub_.join(sub, req); }
  void leave(Subscriber& sub, std::string_view topic) override { hub_.leave(sub, topic); }
  PublishResult publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection) override {
    return hub_.publish(topic, event, payload_json, payload_empty, from, exclude_connection);
  }
  std::string presence_state(std::string_view topic) override { return hub_.presence_state(topic); }
  void tick() override { hub_.tick(); }
  BrokerStats stats() override { return hub_.stats(); }
  void make_durable() noexcept override { hub_.make_durable(); }
  std::optional<std::vector<TopicSummary>> list_topics() override { return hub_.list_topics(); }
  std::optional<TopicHistory> inspect_topic(std::string_view topic, std::uint64_t since, std::size_t limit) override {
    return hub_.inspect_topic(topic, since, limit);
  }

 private:
  static HubOptions hub_options(const BrokerOptions& o) {
    HubOptions h;
    h.max_presence_bytes_per_topic = o.max_presence_bytes_per_topic;
    return h;
  }

  LocalBackend backend_;  // before hub_: the Hub attaches to it and goes first
  Hub hub_;
};

}  // namespace synapse::pubsub
