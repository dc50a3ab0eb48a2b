// Topic membership and fan-out across the I/O threads.
//
// The interface is what a channel needs; LocalBroker implements it in
// process, RedisBroker for several nodes sharing one Redis.
//
// Threads: join(), join_async() and leave() run on the member's I/O
// thread, and its sink is called on that same thread. publish() and
// presence_state() may be called from any thread.
//
// Blocking: a broker whose answers come from elsewhere (the Redis broker)
// says so with joins_async() / publishes_async() / presence_async(), and
// its callers then use the *_async forms, which never wait on the calling
// thread: no I/O thread ever waits on Redis. The synchronous forms stay for
// the in-process broker, where they are immediate, and for tests.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/message_sink.hpp"
#include "core/small_text.hpp"
#include "wire/message.hpp"

namespace synapse::pubsub {

// A topic member: where its messages go, and the broker's bookkeeping. The
// channel sets `sink`; the broker owns the other fields.
class Subscriber {
 public:
  // The member's connection. Deliveries go straight to it (one call per
  // subscriber on the fan-out path); it never re-enters the broker.
  MessageSink* sink = nullptr;
  // Neither the join's start offsets (messages and presence diffs at or
  // below them predate the join) nor the member's connection id (the
  // publisher's own connection is skipped) are kept here: the Fanout's
  // member slot, which the drain loop reads, holds them (LocalMember).
  std::uint64_t topic_id = 0;
  // 32-bit, and the flag beside them: every member of every topic has one,
  // and no thread count or per-thread member list comes near 2^32.
  std::uint32_t thread = 0;
  std::uint32_t slot = 0;           // index in the thread's member list
  std::uint32_t presence_slot = 0;  // index in the thread's presence member list
  bool receives_presence = false;
  // SmallText, not std::string (16 bytes less each): both are short (a
  // phx_ref is "<6 hex>-<counter>", an agent id usually a name), so they
  // live inside the object, and only join and leave read them.
  SmallText presence_ref;  // phx_ref of this member's meta; empty: not tracked
  SmallText agent_id;

 protected:
  ~Subscriber() = default;
};

struct Recover {
  std::uint64_t offset = 0;
  std::string epoch;
};

struct JoinRequest {
  std::string_view topic;
  std::size_t thread = 0;
  std::uint64_t connection_id = 0;
  std::string_view agent_id;
  bool presence = false;         // receives presence traffic
  // Appears in the topic's presence. False for a credential whose
  // `presence` capability does not cover the topic: it receives, but is
  // listed nowhere (protocol §9, channel capabilities).
  bool tracked = true;
  boost::json::object meta;      // presence meta
  std::optional<Recover> recover;
};

struct JoinResult {
  std::uint64_t offset = 0;  // latest offset at the join
  std::string epoch;
  bool recovered = false;
  std::vector<wire::Message> backlog;  // missed messages, in order
  std::string presence_state_json;     // when presence was asked for
  // Refused: the topic's presence is at its byte bound. Nothing was
  // recorded and no other field is set; the channel answers presence_full.
  bool presence_full = false;
  // Refused: the backplane (Redis) did not answer within its timeout. Nothing
  // was recorded and no other field is set; the channel answers unavailable.
  bool unavailable = false;
};

struct PublishResult {
  enum class Reach : std::uint8_t {
    all,      // numbered and delivered to every member (every node)
    local,    // the cluster backplane was down: this node's members only, no offset
    unknown,  // the backplane did not answer: it may or may not have been delivered
  };
  std::uint64_t offset = 0;  // 0 unless reach == all
  std::string epoch;
  Reach reach = Reach::all;
};

struct BrokerStats {
  std::size_t topics = 0;
  std::size_t members = 0;
  std::size_t history_messages = 0;
  std::size_t history_bytes = 0;
};

// For the admin API (protocol section 6): what a broker holds of a topic.
struct TopicSummary {
  std::string name;
  std::size_t members = 0;
  std::size_t presences = 0;  // members that asked for presence
  std::uint64_t last_offset = 0;
  std::size_t history = 0;  // messages held for recovery
};
struct TopicHistory {
  TopicSummary summary;
  std::string epoch;
  std::vector<std::pair<std::uint64_t, wire::Message>> messages;  // offset > since, oldest first
};

class Broker {
 public:
  virtual ~Broker() = default;

  virtual JoinResult join(Subscriber& sub, const JoinRequest& req) = 0;
  // The join of a broker whose join waits on something remote; only called
  // when joins_async() says so. Contract:
  //  - Called on req.thread; req's views need only last for the call.
  //  - The member counts from the call on: every message published after
  //    the join's offset is delivered to it exactly once, in order. Until
  //    `done` has run it receives nothing: what arrives meanwhile is held,
  //    and delivered (filtered by the result's offset, as a synchronous
  //    join's would be) right after `done` returns, on req.thread. So `done`
  //    sends the join reply, the backlog and presence_state first.
  //  - `done` runs at most once, on req.thread (posted: never before
  //    join_async returns, except in the default below), unless leave(sub)
  //    came first: a pending join is
  //    cancelled by leave(), and `done` is then never called (it is
  //    destroyed later, on any thread: it must not own anything that needs
  //    req.thread to die).
  //  - leave(sub) must be called before `sub` is destroyed, whether or not
  //    `done` ran (a result with `unavailable` or `presence_full` already
  //    undid the membership; leave() is then a no-op). After leave()
  //    returns the broker never touches `sub` again.
  //  - `done` may call leave(sub) (and destroy `sub` afterwards).
  // The default completes at once, inside the call, through join(): for
  // brokers that never wait.
  using JoinDone = std::function<void(JoinResult)>;
  virtual bool joins_async() const { return false; }
  virtual void join_async(Subscriber& sub, const JoinRequest& req, JoinDone done) { done(join(sub, req)); }
  virtual void leave(Subscriber& sub, std::string_view topic) = 0;
  // `payload_json` is the text of a JSON object without a "_meta" key (the
  // broker adds it); `payload_empty` says whether the object has no members.
  // `exclude_connection` (0 for none) does not receive the message.
  virtual PublishResult publish(std::string_view topic, std::string_view event,
                                std::string_view payload_json, bool payload_empty, std::string_view from,
                                std::uint64_t exclude_connection) = 0;
  // The same, for brokers whose publish waits on something remote: `done`
  // is called once, on any thread, and the caller is not blocked meanwhile.
  // Only called when publishes_async() says so.
  using PublishDone = std::function<void(PublishResult)>;
  virtual bool publishes_async() const { return false; }
  virtual void publish_async(std::string_view topic, std::string_view event, std::string_view payload_json,
                             bool payload_empty, std::string_view from, std::uint64_t exclude_connection,
                             PublishDone done) {
    done(publish(topic, event, payload_json, payload_empty, from, exclude_connection));
  }
  // The topic's presence (pending changes included), as JSON text.
  virtual std::string presence_state(std::string_view topic) = 0;
  // The same without waiting, for brokers that read it remotely (only
  // called when presence_async() says so): `done` runs once, on any thread,
  // with the state, or nullopt when it could not be read in time.
  using PresenceDone = std::function<void(std::optional<std::string>)>;
  virtual bool presence_async() const { return false; }
  virtual void presence_state_async(std::string_view topic, PresenceDone done) { done(presence_state(topic)); }
  // Periodic work: publish coalesced presence diffs, expire history, release
  // empty topics. Called every presence interval from one thread.
  virtual void tick() = 0;
  virtual BrokerStats stats() = 0;
  // Makes every message published so far durable, if this broker keeps
  // history on disk. Every socket write calls it first, so no client (the
  // publisher's ack or a subscriber's delivery) sees a message a crash could
  // take back. Any thread; cheap when nothing is pending.
  virtual void make_durable() noexcept {}
  // Admin introspection, any thread. A broker that cannot answer from this
  // node alone (the Redis broker) returns nullopt and the API says so.
  virtual std::optional<std::vector<TopicSummary>> list_topics() { return std::nullopt; }
  virtual std::optional<TopicHistory> inspect_topic(std::string_view /*topic*/, std::uint64_t /*since*/,
                                                    std::size_t /*limit*/) {
    return std::nullopt;
  }
};

}  // namespace synapse::pubsub
