#include "channels/pubsub_channel.hpp"

#include <list>
#include <memory>
#include <string>

#include "auth/capabilities.hpp"
#include "channels/session.hpp"
#include "config/config.hpp"
#include "hooks/hooks.hpp"
#include "protocol/topic.hpp"
#include "pubsub/broker.hpp"

namespace synapse::channels {
namespace json = boost::json;
namespace reason = protocol::reason;

namespace {

class PubSubChannel final : public Channel, public pubsub::Subscriber {
 public:
  PubSubChannel(Session& session, const protocol::Envelope& join) : Channel(join), session_(session) {
    sink = &session.socket();
  }

  void handle_in(const protocol::Envelope& env) override {
    if (protocol::is_reserved_event(env.event)) {
      session_.reply_error(env, reason::reserved_event,
                           "phx_*, presence_* and events starting with _ cannot be published");
      return;
    }
    if (!protocol::valid_event_name(env.event)) {
      session_.reply_error(env, reason::invalid_payload, "event names are 1..64 bytes without control characters",
                           {{"event", "must be 1..64 bytes without control characters"}});
      return;
    }
    if (env.payload->contains("_meta")) {
      session_.reply_error(env, reason::invalid_payload, "_meta is added by the server",
                           {{"payload._meta", "must not be set by the publisher"}});
      return;
    }
    if (!auth::permitted(session_.principal(), auth::Capability::publish, topic())) {
      session_.reply_error(env, reason::forbidden, "this credential's publish capability does not cover this topic");
      return;
    }
    hooks::Hooks* hooks = session_.services().hooks;
    if (hooks && hooks->enabled(hooks::Hook::publish)) {
      // One hook call at a time per channel, in arrival order, so the
      // publishes of one client keep their order whatever the backend does.
      auto& waiting = hooked().waiting;
      waiting.push_back(protocol::encode_raw(env.join_ref, env.ref, env.topic, env.event, env.payload_raw));
      if (waiting.size() == 1) ask_publish_hook();
      return;
    }
    publish(env, env.payload_raw, env.payload->empty());
  }

  // Asks the publish hook about the oldest waiting publish; its answer comes
  // back on this connection's thread (on_publish_verdict).
  void ask_publish_hook() {
    protocol::Envelope env;
    std::string error;
    protocol::decode(hooked_->waiting.front(), env, error);
    const auto& p = session_.principal();
    std::string body = R"({"hook":"publish","agent_id":)";
    protocol::append_json_string(body, p.agent_id);
    body += R"(,"tenant":)";
    protocol::append_json_string(body, p.tenant);
    body += R"(,"key_id":)";
    protocol::append_json_string(body, p.key_id);
    body += R"(,"topic":)";
    protocol::append_json_string(body, topic());
    body += R"(,"event":)";
    protocol::append_json_string(body, env.event);
    body += R"(,"payload":)";
    body += env.payload_raw;
    body += R"(,"data":)";
    body += p.hook_data.empty() ? std::string("null") : p.hook_data;
    body += "}";
    session_.services().hooks->call(
        hooks::Hook::publish, std::move(body),
        [poster = session_.socket().poster(), alive = alive_handle(), this](hooks::Verdict v) {
          poster([alive, this, v = std::move(v)]() mutable {
            if (alive.lock()) on_publish_verdict(std::move(v));
          });
        });
  }

  void on_publish_verdict(hooks::Verdict v) {
    auto& waiting = hooked_->waiting;
    const std::string frame = std::move(waiting.front());
    waiting.pop_front();
    protocol::Envelope env;
    std::string error;
    if (joined_ && protocol::decode(frame, env, error)) {
      if (!v.allow) {
        session_.reply_error(env, reason::forbidden,
                             v.failed ? "the application's publish hook did not answer (" + v.reason +
                                            "); hooks.publish_failure is deny"
                                      : (v.reason.empty() ? "refused by the application" : v.reason));
      } else if (v.payload_json) {
        publish_rewritten(env, *v.payload_json);
      } else {
        publish(env, env.payload_raw, env.payload->empty());
      }
    }
    if (!waiting.empty()) ask_publish_hook();
  }

  // The backend's replacement payload obeys the client's rules (section 5).
  void publish_rewritten(const protocol::Envelope& env, const std::string& payload) {
    boost::system::error_code ec;
    json::parse_options opts;
    opts.max_depth = protocol::max_json_depth;
    json::value v = json::parse(payload, ec, {}, opts);
    if (ec || !v.is_object() || v.as_object().contains("_meta") || contains_nul(v) || !protocol::numbers_finite(v)) {
      session_.reply_error(env, reason::internal, "the application's publish hook returned an unusable payload");
      return;
    }
    publish(env, payload, v.as_object().empty());
  }

  void publish(const protocol::Envelope& env, std::string_view payload_raw, bool payload_empty) {
    auto& broker = session_.services().broker;
    if (!broker.publishes_async()) {
      const auto r = broker.publish(topic(), env.event, payload_raw, payload_empty,
                                    session_.principal().agent_id, session_.socket().id());
      session_.socket().send(wire::Message::text(encode_publish_reply(env.join_ref, env.ref, env.topic, r)));
      return;
    }
    // The reply is built where the broker finishes and sent on this
    // connection's thread, if the connection is still open by then.
    Socket* socket = &session_.socket();
    broker.publish_async(
        topic(), env.event, payload_raw, payload_empty, session_.principal().agent_id, socket->id(),
        [poster = socket->poster(), socket, join_ref = copy(env.join_ref), ref = copy(env.ref),
         topic = std::string(topic())](pubsub::PublishResult r) {
          wire::Message msg = wire::Message::text(encode_publish_reply(view(join_ref), view(ref), topic, r));
          poster([socket, msg = std::move(msg)]() mutable { socket->send(std::move(msg)); });
        });
  }

  // The broker's answer to a pending join, on this connection's thread.
  void on_joined(pubsub::JoinResult r, std::optional<std::string_view> ref) {
    pending_ = false;
    const bool ok = answer(std::move(r), ref);
    // The session may destroy this channel in the call (a refused join is
    // dropped): nothing may touch it afterwards.
    session_.join_done(*this, ok);
  }

  // Sends the join's reply, then its backlog and presence_state; false for a
  // refusal (sent as the error reply; the broker recorded nothing).
  // `ref`: the join's own ref (its reply's; later frames carry join_ref only).
  bool answer(pubsub::JoinResult r, std::optional<std::string_view> ref) {
    protocol::Envelope env;
    env.join_ref = join_ref();
    env.ref = ref;
    env.topic = topic();
    env.event = "phx_join";
    if (r.presence_full) {
      joined_ = false;
      session_.reply_error(env, reason::presence_full,
                           "this topic tracks the most presence it may (max_presence_bytes_per_topic)");
      return false;
    }
    if (r.unavailable) {
      joined_ = false;
      session_.reply_error(env, reason::unavailable, "Redis did not answer the join in time; join again");
      return false;
    }
    json::object response{{"offset", r.offset}, {"epoch", r.epoch}};
    if (recover_) response["recovered"] = r.recovered;
    session_.reply_ok(env, response);
    // The join's own output may exceed the slow-consumer bound by itself (a
    // full history, a large presence): send_initial keeps it apart from the
    // bound while it waits (protocol.md section 7).
    for (auto& msg : r.backlog) session_.socket().send_initial(std::move(msg));
    if (wants_presence_) {
      // Framed straight from the state text: one copy of a state that may be
      // megabytes, not two.
      std::string head = "[";
      if (const auto jr = join_ref()) {
        protocol::append_json_string(head, *jr);
      } else {
        head += "null";
      }
      head += ",null,";
      protocol::append_json_string(head, topic());
      head += ",\"presence_state\",";
      session_.socket().send_initial(wire::Message::text_parts({head, r.presence_state_json, "]"}));
    }
    return true;
  }

  static std::optional<std::string> copy(std::optional<std::string_view> v) {
    return v ? std::optional<std::string>(std::string(*v)) : std::nullopt;
  }
  static std::optional<std::string_view> view(const std::optional<std::string>& s) {
    return s ? std::optional<std::string_view>(*s) : std::nullopt;
  }

  // {"offset": N}; {"offset": 0, "local": true} when only this node's
  // members got it; the `unavailable` error when Redis never confirmed it.
  static std::string encode_publish_reply(std::optional<std::string_view> join_ref,
                                          std::optional<std::string_view> ref, std::string_view topic,
                                          const pubsub::PublishResult& r) {
    switch (r.reach) {
      case pubsub::PublishResult::Reach::all:
        return protocol::encode_reply(join_ref, ref, topic, true, json::object{{"offset", r.offset}});
      case pubsub::PublishResult::Reach::local:
        return protocol::encode_reply(join_ref, ref, topic, true, json::object{{"offset", 0}, {"local", true}});
      case pubsub::PublishResult::Reach::unknown:
        break;
    }
    return protocol::encode_reply(
        join_ref, ref, topic, false,
        protocol::error_response(reason::unavailable,
                                 "Redis did not confirm the publish; it may or may not have been delivered"));
  }

  void leave() override {
    if (joined_) {
      joined_ = false;
      session_.services().broker.leave(*this, topic());
    }
  }

  ~PubSubChannel() override { leave(); }

  bool join_pending() const override { return pending_; }

  // Joins through the broker, at once or later (joins_async). Returns false
  // when the join was refused at once: the refusal was sent, the channel is
  // not joined.
  bool start(const protocol::Envelope& env, const pubsub::JoinRequest& req) {
    auto& broker = session_.services().broker;
    wants_presence_ = req.presence;
    recover_ = req.recover.has_value();
    if (!broker.joins_async()) {
      pubsub::JoinResult r = broker.join(*this, req);
      joined_ = true;
      return answer(std::move(r), env.ref);
    }
    // The broker counts us from here on (leave() undoes it, or cancels the
    // join while it is pending). `this` outlives the callback: the broker
    // never calls it after leave(), which our destructor calls.
    joined_ = true;
    pending_ = true;
    starting_ = true;
    // The ref rides in the callback, held only while the join is pending.
    //
    // An answer given inside the call (a broker that never waits) is kept
    // in `early`, a local of this frame, and answered below as a
    // synchronous join. The callback reaches `early` only while starting_
    // is set, i.e. while this frame is live (start() runs once per channel),
    // so the channel keeps no field for it.
    std::optional<pubsub::JoinResult> early;
    broker.join_async(*this, req, [this, ref = copy(env.ref), early = &early](pubsub::JoinResult r) {
      if (starting_) {
        early->emplace(std::move(r));
        return;
      }
      on_joined(std::move(r), view(ref));
    });
    starting_ = false;
    if (early) {
      pending_ = false;
      return answer(std::move(*early), env.ref);
    }
    return true;
  }

 private:
  Session& session_;
  // The flags together, after the reference: no padding between them.
  bool joined_ = false;
  bool wants_presence_ = false;
  bool recover_ = false;
  bool pending_ = false;   // join_async has not answered yet
  bool starting_ = false;  // inside join_async

  std::weak_ptr<int> alive_handle() {
    auto& alive = hooked().alive;
    if (!alive) alive = std::make_shared<int>(0);
    return alive;
  }

  // The publish hook's state, made by the first publish that asks it: every
  // member of a topic has a channel, and most never publish through a hook.
  struct Hooked {
    // Publishes waiting for the publish hook, as frames (the oldest is
    // asked). A list, not a deque: an empty std::deque already holds a
    // 512-byte block and its map.
    std::list<std::string> waiting;
    // Hook answers find this channel through a weak handle: one that left
    // and was destroyed is simply not found.
    std::shared_ptr<int> alive;
  };
  Hooked& hooked() {
    if (!hooked_) hooked_ = std::make_unique<Hooked>();
    return *hooked_;
  }
  std::unique_ptr<Hooked> hooked_;
};

#if defined(__GLIBCXX__) && defined(__x86_64__)
// Every member of every topic has one: Channel 32 + Subscriber 64 + 24 B,
// a 128 B malloc chunk (tests/unit/memory_layout_test.cpp bounds the parts).
static_assert(sizeof(PubSubChannel) <= 120, "PubSubChannel outgrew its 128 B malloc chunk");
#endif

bool nul_in(std::string_view s) { return s.find('\0') != std::string_view::npos; }

}  // namespace

bool contains_nul(const json::value& v) {
  switch (v.kind()) {
    case json::kind::string:
      return nul_in(std::string_view(v.get_string().data(), v.get_string().size()));
    case json::kind::array:
      for (const auto& e : v.get_array()) {
        if (contains_nul(e)) return true;
      }
      return false;
    case json::kind::object:
      for (const auto& kv : v.get_object()) {
        if (nul_in(std::string_view(kv.key().data(), kv.key().size())) || contains_nul(kv.value())) return true;
      }
      return false;
    default:
      return false;
  }
}

bool pubsub_join_permitted(Session& session, const protocol::Envelope& env) {
  const auto& principal = session.principal();
  if (principal.has_topics) {
    bool allowed = false;
    for (const auto& pattern : principal.topics) allowed |= protocol::topic_matches(pattern, env.topic);
    if (!allowed) {
      session.reply_error(env, reason::forbidden, "the token's topics claim does not cover this topic");
      return false;
    }
  }
  using auth::Capability;
  if (!auth::permitted(principal, Capability::subscribe, env.topic)) {
    session.reply_error(env, reason::forbidden, "this credential's subscribe capability does not cover this topic");
    return false;
  }
  const json::object& p = *env.payload;
  const json::value* presence = p.if_contains("presence");
  const bool wants_presence = p.contains("meta") || (presence && presence->is_bool() && presence->get_bool());
  if (wants_presence && !auth::permitted(principal, Capability::presence, env.topic)) {
    session.reply_error(env, reason::forbidden,
                        "this credential's presence capability does not cover this topic (join without meta and "
                        "presence)");
    return false;
  }
  if (p.contains("recover") && !auth::permitted(principal, Capability::history, env.topic)) {
    session.reply_error(env, reason::forbidden,
                        "this credential's history capability does not cover this topic (join without recover)");
    return false;
  }
  return true;
}

std::unique_ptr<Channel> join_pubsub(Session& session, const protocol::Envelope& env) {
  const auto& cfg = session.services().config;
  const auto& principal = session.principal();
  if (!pubsub_join_permitted(session, env)) return nullptr;

  pubsub::JoinRequest req;
  req.topic = env.topic;
  req.thread = session.socket().thread_index();
  req.connection_id = session.socket().id();
  req.agent_id = principal.agent_id;
  // A credential that may not track itself here joins unlisted.
  req.tracked = auth::permitted(principal, auth::Capability::presence, env.topic);
  std::vector<protocol::FieldError> errors;
  const json::object& p = *env.payload;
  if (const json::value* meta = p.if_contains("meta")) {
    if (!meta->is_object()) {
      errors.push_back({"meta", "must be an object"});
    } else if (cfg.max_presence_meta_bytes > 0 &&
               static_cast<std::int64_t>(json::serialize(*meta).size()) > cfg.max_presence_meta_bytes) {
      errors.push_back({"meta", "must serialize to at most " + std::to_string(cfg.max_presence_meta_bytes) + " bytes"});
    } else if (contains_nul(*meta)) {
      errors.push_back({"meta", "must not contain NUL characters"});
    } else {
      req.meta = meta->get_object();
    }
  }
  if (const json::value* presence = p.if_contains("presence")) {
    if (!presence->is_bool()) {
      errors.push_back({"presence", "must be true or false"});
    } else {
      req.presence = presence->get_bool();
    }
  }
  if (const json::value* recover = p.if_contains("recover")) {
    const json::object* r = recover->if_object();
    const json::value* offset = r ? r->if_contains("offset") : nullptr;
    const json::value* epoch = r ? r->if_contains("epoch") : nullptr;
    if (!r) {
      errors.push_back({"recover", "must be an object {offset, epoch}"});
    } else {
      pubsub::Recover rec;
      if (!offset || !(offset->is_int64() || offset->is_uint64()) ||
          (offset->is_int64() && offset->get_int64() < 0)) {
        errors.push_back({"recover.offset", "must be a non-negative integer"});
      } else {
        rec.offset = offset->is_int64() ? static_cast<std::uint64_t>(offset->get_int64()) : offset->get_uint64();
      }
      if (!epoch || !epoch->is_string()) {
        errors.push_back({"recover.epoch", "must be a string"});
      } else {
        rec.epoch = std::string(epoch->get_string());
      }
      req.recover = std::move(rec);
    }
  }
  if (!errors.empty()) {
    session.reply_error(env, reason::invalid_payload, "the join payload is invalid", errors);
    return nullptr;
  }

  auto channel = std::make_unique<PubSubChannel>(session, env);
  if (!channel->start(env, req)) return nullptr;
  return channel;
}

}  // namespace synapse::channels
