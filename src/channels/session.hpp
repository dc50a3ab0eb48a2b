// One connection's protocol state: decodes client frames, applies the rate
// limits, routes each topic to its channel, and answers the `phoenix` topic
// (heartbeat, token refresh). Owned by the network connection and used only
// on its thread.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/principal.hpp"
#include "channels/channel.hpp"
#include "channels/services.hpp"
#include "channels/socket.hpp"
#include "core/inline_vector.hpp"
#include "limits/rate_limiter.hpp"
#include "protocol/errors.hpp"

namespace synapse::channels {

class Session {
 public:
  // `principal` may be shared with other connections of the same
  // credential (auth::PrincipalPool); a refresh replaces this session's.
  Session(Socket& socket, Services& services, std::shared_ptr<const auth::Principal> principal);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // A complete text message from the client.
  void on_text(std::string_view text);
  // A message that cannot be a frame (binary, invalid UTF-8).
  void on_malformed(std::string_view why);
  // Called a few times a second: token expiry.
  void on_tick(std::int64_t now_ms);
  // Server shutdown: channels send their final events.
  void shutdown();
  // Every close path ends here; leaves every topic. Idempotent.
  void close_channels();
  // The topics joined, for the admin API.
  std::vector<std::string> topics() const;
  // Server-side unsubscribe (admin API): leaves `topic` and tells the client
  // with phx_close. False when the topic is not joined.
  bool unsubscribe(std::string_view topic);

  const auth::Principal& principal() const noexcept { return *principal_; }
  Socket& socket() noexcept { return socket_; }
  Services& services() noexcept { return services_; }

  // Replies to a client message.
  void reply_ok(const protocol::Envelope& env, const boost::json::object& response);
  void reply_error(const protocol::Envelope& env, std::string_view reason, std::string_view message = {},
                   const std::vector<protocol::FieldError>& errors = {});
  void reply_error(const protocol::Envelope& env, const boost::json::object& response);
  void push(std::string_view topic, std::optional<std::string_view> join_ref, std::string_view event,
            const boost::json::object& payload);
  // The query bucket, spent by queries and tools (after the message bucket).
  bool take_query_token(const protocol::Envelope& env);
  // A channel whose join was pending (Channel::join_pending) has answered
  // it, on this thread. `ok`: joined; the client events that waited for it
  // are handled now, in order. Otherwise the refusal was sent and the
  // channel is dropped (destroyed in this call: the caller must not touch
  // it afterwards) and the events that waited are answered unmatched_topic.
  void join_done(Channel& channel, bool ok);

 private:
  // The topic and join_ref are the channel's (Channel::topic, join_ref):
  // kept once, not here and in the channel.
  struct Joined {
    std::unique_ptr<Channel> channel;
    // While the join is pending: when it started, and the client's events
    // for the topic that wait for it, as frames. Null once joined: every
    // member's entry would otherwise carry these 40 bytes for nothing.
    struct Pending {
      std::int64_t started_us = 0;
      std::vector<std::string> waiting;
    };
    std::unique_ptr<Pending> pending;
  };
  // What a pending join holds at most; more is refused.
  static constexpr std::size_t max_waiting_frames = 64;
  // Answers the events a pending join held when it will not complete.
  void abandon(Joined& j, std::string_view why);

  // The frames a channel takes without a JSON tree; false: not one of them.
  // Whether a joined channel takes flat frames (derived, joins are few).
  bool any_flat_channel() const;
  bool on_flat(std::string_view text);
  void handle_phoenix(const protocol::Envelope& env);
  void handle_refresh(const protocol::Envelope& env);
  // `hook_passed`: the join hook already allowed it (handle_join asks it
  // first when one is configured, and comes back here with its answer).
  void handle_join(const protocol::Envelope& env, bool hook_passed = false);
  void ask_join_hook(const protocol::Envelope& env);
  void handle_leave(const protocol::Envelope& env, std::size_t index);
  void crash(std::size_t index, const protocol::Envelope* env, std::string_view what);
  std::optional<std::size_t> find(std::string_view topic) const;
  void remove(std::size_t index);

  Socket& socket_;
  Services& services_;
  std::shared_ptr<const auth::Principal> principal_;
  // The message bucket's state (protocol section 7); its rate, like the
  // query bucket's, is derived from the configuration and the principal on
  // each take (session.cpp), not kept here. The query bucket is in Rare.
  limits::BucketState messages_;
  // The topics joined, in order of joining. Nearly every connection joins
  // one: its entry is kept inside the session rather than in a heap block.
  InlineOneVector<Joined> joined_;
  bool token_warned_ = false;
  bool closed_ = false;
  std::weak_ptr<int> alive_handle();
  // What most sessions never use, made on first use: a pointer that is null
  // in an idle session instead of 40 bytes in every one.
  struct Rare {
    std::vector<std::int64_t> malformed_at;  // ms; only misbehaving clients grow it
    // Hook answers find this session through a weak handle (it dies with
    // it); made by the first hook call.
    std::shared_ptr<int> alive;
    // The query bucket, spent only by queries and tools, which most
    // sessions never send. Made full by the first limited query, as it was
    // full when it was made with the session.
    limits::BucketState queries;
  };
  Rare& rare();
  std::unique_ptr<Rare> rare_;
};

}  // namespace synapse::channels
