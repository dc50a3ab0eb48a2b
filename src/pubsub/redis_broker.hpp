// The broker of a cluster: a RedisBackend (offsets, epochs, history,
// presence and transport in a Redis shared by every node) behind the Hub
// (membership, fan-out, join gating, ordering and gaps, framing, presence
// tracking), exactly as LocalBroker puts a LocalBackend behind it. See
// redis_backend.hpp and hub.hpp for how, on which threads and under which
// locks. One object so that main.cpp and the tests build a cluster node's
// broker in one line and wire the link's handlers to it; it adds nothing
// to either part.
#pragma once

#include "pubsub/hub.hpp"
#include "pubsub/redis_backend.hpp"

namespace synapse::pubsub {

// The backend's options (node, prefix, history, heartbeat, deadlines) and the Hub's presence bound.
struct RedisBrokerOptions : RedisBackendOptions {
  // Bytes of presence metas one topic may track, every node's entries
  // counted; a join past it is refused (presence_full). 0 = no bound.
  std::size_t max_presence_bytes_per_topic = 8u << 20;
};

class RedisBroker final : public Broker {
 public:
  RedisBroker(const RedisBrokerOptions& o, redis::Link& link, std::vector<Poster> threads, metrics::Metrics& metrics)
      : backend_(static_cast<const RedisBackendOptions&>(o), link, metrics),
        hub_(hub_options(o), backend_, std::move(threads), metrics) {}

  // The link's handlers (on the link's thread).
  void on_message(const std::string& channel, const std::string& payload) { backend_.on_message(channel, payload); }
  void on_up() { backend_.on_up(); }
  void on_down() { backend_.on_down(); }
  void set_reregister_hook(std::function<void()> hook) { backend_.set_reregister_hook(std::move(hook)); }
  bool register_node() { return backend_.register_node(); }

  JoinResult join(Subscriber& sub, const JoinRequest& req) override { return hub_.join(sub, req); }
  bool joins_async() const override { return hub_.joins_async(); }
  void join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) override {
    hub_.join_async(sub, req, std::move(done));
  }
  void leave(Subscriber& sub, std::string_view topic) override { hub_.leave(sub, topic); }
  PublishResult publish(std::string_view topic, std::string_view event, std::string_view payload_json,
                        bool payload_empty, std::string_view from, std::uint64_t exclude_connection) override {
    return hub_.publish(topic, event, payload_json, payload_empty, from, exclude_connection);
  }
  bool publishes_async() const override { return hub_.publishes_async(); }
  void publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                     bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                     PublishDone done) override {
    hub_.publish_async(topic, event, payload_json, payload_empty, from, exclude_connection, std::move(done));
  }
  std::string presence_state(std::string_view topic) override { return hub_.presence_state(topic); }
  bool presence_async() const override { return hub_.presence_async(); }
  void presence_state_async(std::string_view topic, PresenceDone done) override {
    hub_.presence_state_async(topic, std::move(done));
  }
  void tick() override { hub_.tick(); }
  BrokerStats stats() override { return hub_.stats(); }

 private:
  static HubOptions hub_options(const RedisBrokerOptions& o) {
    HubOptions h;
    h.max_presence_bytes_per_topic = o.max_presence_bytes_per_topic;
    h.call_timeout = o.call_timeout;
    h.presence_ref_prefix = o.node_id;  // unique per process across the cluster
    return h;
  }

  RedisBackend backend_;  // before hub_: the Hub attaches to it and goes first
  Hub hub_;
};

}  // namespace synapse::pubsub
