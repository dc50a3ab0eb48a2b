#include "channels/session.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

#include "auth/jwks.hpp"
#include "auth/jwt.hpp"
#include "auth/key_store.hpp"
#include "hooks/hooks.hpp"
#include "channels/channel_registry.hpp"
#include "channels/rates.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "protocol/topic.hpp"
#include "wire/ws_frame.hpp"
#include "protocol/close_codes.hpp"

namespace synapse::channels {
namespace json = boost::json;
namespace reason = protocol::reason;

namespace {

// The rates of a session's two buckets, derived from the configuration
// and the credential on every take instead of kept in every session (a
// bucket keeps only its state, limits::BucketState). Both inputs are
// fixed for the session's life: the configuration is, and a token refresh
// copies the principal with its rate fields (unlimited, worker, rates)
// unchanged. The cost is a few branches and one division per rate-limited
// client message, beside the clock read it already takes.
limits::Rate message_rate(const config::Config& cfg, const auth::Principal& p) noexcept {
  if (p.unlimited) return {};
  if (p.worker) {
    // An agent worker streams many frames for many clients: its own budget.
    return limits::Rate::per_minute(p.rates.msgs_per_min >= 0 ? p.rates.msgs_per_min : cfg.worker_msgs_per_min,
                                    p.rates.burst >= 0 ? p.rates.burst : cfg.worker_burst);
  }
  return limits::Rate::per_minute(p.rates.msgs_per_min >= 0 ? p.rates.msgs_per_min : cfg.messages_per_min,
                                  p.rates.burst >= 0 ? p.rates.burst : cfg.message_burst);
}

// A worker has no query bucket (it does not query); others spend at
// channels::query_rate.
limits::Rate session_query_rate(const config::Config& cfg, const auth::Principal& p) noexcept {
  if (p.worker) return {};
  return query_rate(cfg, p);
}

}  // namespace

Session::Session(Socket& socket, Services& services, std::shared_ptr<const auth::Principal> principal)
    : socket_(socket),
      services_(services),
      principal_(std::move(principal)) {
  // A token with little time left hears so at once, not at the first tick.
  on_tick(unix_ms());
}

Session::~Session() { close_channels(); }

void Session::push(std::string_view topic, std::optional<std::string_view> join_ref, std::string_view event,
                   const json::object& payload) {
  socket_.send(wire::Message::text(protocol::encode_push(join_ref, topic, event, payload)));
}

void Session::reply_ok(const protocol::Envelope& env, const json::object& response) {
  spdlog::debug("conn={} topic={} event={} ref={} handled: ok", socket_.id(), env.topic, env.event,
                env.ref.value_or(""));
  socket_.send(wire::Message::text(protocol::encode_reply(env.join_ref, env.ref, env.topic, true, response)));
}

void Session::reply_error(const protocol::Envelope& env, const json::object& response) {
  if (spdlog::should_log(spdlog::level::debug)) {
    const json::value* why = response.if_contains("reason");
    spdlog::debug("conn={} topic={} event={} ref={} handled: error {}", socket_.id(), env.topic, env.event,
                  env.ref.value_or(""), why && why->is_string() ? std::string_view(why->get_string()) : "");
  }
  socket_.send(wire::Message::text(protocol::encode_reply(env.join_ref, env.ref, env.topic, false, response)));
}

void Session::reply_error(const protocol::Envelope& env, std::string_view why, std::string_view message,
                          const std::vector<protocol::FieldError>& errors) {
  reply_error(env, protocol::error_response(why, message, errors));
}

void Session::on_malformed(std::string_view why) {
  metrics::bump(services_.metrics.malformed_frames);
  const auto& cfg = services_.config;
  const std::int64_t now = mono_ms();
  if (cfg.malformed_limit > 0) {
    // A sliding window: forget what fell out of it, then count this one.
    auto& malformed_at = rare().malformed_at;
    std::erase_if(malformed_at, [&](std::int64_t t) { return now - t >= cfg.malformed_window_ms; });
    malformed_at.push_back(now);
    if (static_cast<std::int64_t>(malformed_at.size()) > cfg.malformed_limit) {
      socket_.close(wire::close_code::policy_violation, "too many malformed frames");
      return;
    }
  }
  push("phoenix", std::nullopt, "phx_error",
       json::object{{"reason", reason::malformed_frame}, {"message", why}});
}

void Session::on_text(std::string_view text) {
  if (closed_) return;
  if (on_flat(text)) return;
  protocol::Envelope env;
  std::string error;
  if (!protocol::decode(text, env, error)) {
    spdlog::debug("conn={} frame of {} bytes malformed: {}", socket_.id(), text.size(), error);
    on_malformed(error);
    return;
  }
  spdlog::debug("conn={} frame topic={} event={} ref={} join_ref={} ({} bytes)", socket_.id(), env.topic, env.event,
                env.ref.value_or(""), env.join_ref.value_or(""), text.size());
  // Oversized envelope fields are refused before anything is stored or
  // echoed (protocol.md section 9): the reply carries null (or "phoenix")
  // in their place. Such a frame is never a heartbeat, so it is rate limited.
  const std::vector<protocol::FieldError> too_long = protocol::oversized_fields(env);
  if (!too_long.empty()) protocol::drop_oversized(env);
  const bool heartbeat = too_long.empty() && env.topic == "phoenix" && env.event == "heartbeat";
  if (heartbeat) {
    reply_ok(env, {});
    return;
  }
  if (auto take = messages_.take(message_rate(services_.config, *principal_), limits::Clock::now()); !take.ok) {
    metrics::bump(services_.metrics.rate_limited[static_cast<std::size_t>(metrics::RateBucket::messages)]);
    json::object r = protocol::error_response(reason::rate_limited, "message rate limit exceeded");
    r["retry_after_ms"] = take.retry_after_ms;
    reply_error(env, r);
    return;
  }
  if (!too_long.empty()) {
    // A topic too long is an invalid topic name (section 5), whatever else.
    bool topic = false;
    for (const auto& e : too_long) topic |= e.field == "topic";
    reply_error(env, topic ? reason::invalid_topic : reason::invalid_payload,
                "join_ref and ref are at most 64 bytes, topics 255, events 64", too_long);
    return;
  }
  if (env.topic == "phoenix") {
    try {
      handle_phoenix(env);
    } catch (const std::exception& e) {
      // A refresh reads the key store; its failure answers this message only.
      spdlog::error("conn {} {} on phoenix failed: {}", socket_.id(), env.event, e.what());
      reply_error(env, reason::internal, "the server could not handle this message");
    }
    return;
  }
  if (env.event == "phx_join") {
    const auto started = std::chrono::steady_clock::now();
    handle_join(env);
    // A join that waits for its broker is measured when it completes (join_done).
    if (joined_.empty() || !joined_.back().pending || joined_.back().channel->topic() != env.topic) {
      services_.metrics.join_latency.observe_us(
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count());
    }
    return;
  }
  const auto index = find(env.topic);
  if (!index) {
    reply_error(env, reason::unmatched_topic, "join the topic first");
    return;
  }
  const auto current_join_ref = joined_[*index].channel->join_ref();
  if (env.join_ref && current_join_ref && *env.join_ref != *current_join_ref) {
    // A message of an earlier join of this topic (the client rejoined since):
    // as Phoenix does, it is not handed to the channel, a phx_leave included
    // (it must not end the current join), and is answered as an unmatched
    // topic. A message without join_ref is taken as the current join's.
    spdlog::debug("conn={} topic={} event={} stale join_ref {} (current {}): dropped", socket_.id(), env.topic,
                  env.event, *env.join_ref, *current_join_ref);
    reply_error(env, reason::unmatched_topic, "stale join_ref: the topic was joined again since");
    return;
  }
  if (env.event == "phx_leave") {
    handle_leave(env, *index);
    return;
  }
  if (joined_[*index].pending) {
    // The join has not been answered yet: the event waits for it, in order,
    // as if the join had completed at once.
    if (joined_[*index].pending->waiting.size() >= max_waiting_frames) {
      reply_error(env, reason::unmatched_topic, "the join of this topic is not complete yet; wait for its reply");
      return;
    }
    joined_[*index].pending->waiting.push_back(
        protocol::encode_raw(env.join_ref, env.ref, env.topic, env.event, env.payload_raw));
    return;
  }
  try {
    joined_[*index].channel->handle_in(env);
  } catch (const std::exception& e) {
    crash(*index, &env, e.what());
  }
}

// The fast path of on_text for the frames decode_flat() reads that are a
// heartbeat, or that the joined channel takes flat (an agent worker's
// tokens). Every check on_text makes before it answers a heartbeat or hands
// a frame to a channel either passes here, or the frame goes the full way
// (false) before anything was done with it; only the reply (a heartbeat's:
// no rate limit, as on_text) or the rate limit and the channel act.
//
// Heartbeats come from every client, and a heartbeat round trip is what
// the latency benchmark measures: the full decode's JSON tree was most of
// the user-space time of one. A session without a flat channel tries the
// flat decode only on a short frame that names "heartbeat" (one search of
// at most max_flat_heartbeat_bytes), so its other frames are not parsed
// twice.
bool Session::any_flat_channel() const {
  for (const auto& j : joined_) {
    if (j.channel->takes_any_flat()) return true;
  }
  return false;
}

bool Session::on_flat(std::string_view text) {
  // Two 64-byte refs, the topic and event, the brackets and quotes, and a
  // small payload: a longer frame is no heartbeat a client sends.
  constexpr std::size_t max_flat_heartbeat_bytes = 256;
  const bool flat_channel = any_flat_channel();
  if (!flat_channel &&
      (text.size() > max_flat_heartbeat_bytes || text.find("\"heartbeat\"") == std::string_view::npos)) {
    return false;
  }
  protocol::FlatFrame f;
  if (!protocol::decode_flat(text, f)) return false;
  if ((f.join_ref && f.join_ref->size() > protocol::max_ref_bytes) ||
      (f.ref && f.ref->size() > protocol::max_ref_bytes) || f.topic.size() > protocol::max_envelope_topic_bytes ||
      f.event.size() > protocol::max_envelope_event_bytes) {
    return false;
  }
  // The envelope of a frame this path takes (no JSON tree: payload is null,
  // payload_raw set), and its debug line, as on_text logs a frame.
  auto taken = [&] {
    protocol::Envelope env;
    env.join_ref = f.join_ref;
    env.ref = f.ref;
    env.topic = f.topic;
    env.event = f.event;
    env.payload_raw = f.payload_raw;
    if (spdlog::should_log(spdlog::level::debug)) {
      spdlog::debug("conn={} frame topic={} event={} ref={} join_ref={} ({} bytes, flat)", socket_.id(), env.topic,
                    env.event, env.ref.value_or(""), env.join_ref.value_or(""), text.size());
    }
    return env;
  };
  if (f.topic == "phoenix") {
    if (f.event != "heartbeat") return false;
    reply_ok(taken(), {});
    return true;
  }
  if (!flat_channel || f.event == "phx_join" || f.event == "phx_leave") return false;
  const auto index = find(f.topic);
  if (!index) return false;
  const auto current_join_ref = joined_[*index].channel->join_ref();
  if (f.join_ref && current_join_ref && *f.join_ref != *current_join_ref) return false;
  if (!joined_[*index].channel->takes_flat(f.event)) return false;
  const protocol::Envelope env = taken();
  if (auto take = messages_.take(message_rate(services_.config, *principal_), limits::Clock::now()); !take.ok) {
    metrics::bump(services_.metrics.rate_limited[static_cast<std::size_t>(metrics::RateBucket::messages)]);
    json::object r = protocol::error_response(reason::rate_limited, "message rate limit exceeded");
    r["retry_after_ms"] = take.retry_after_ms;
    reply_error(env, r);
    return true;
  }
  try {
    joined_[*index].channel->handle_flat(env, f);
  } catch (const std::exception& e) {
    crash(*index, &env, e.what());
  }
  return true;
}

void Session::handle_phoenix(const protocol::Envelope& env) {
  if (env.event == "refresh") {
    handle_refresh(env);
  } else if (env.event == "phx_join") {
    reply_error(env, reason::invalid_topic, "the phoenix topic needs no join");
  } else {
    reply_error(env, reason::unknown_event, "the phoenix topic takes heartbeat and refresh");
  }
}

void Session::handle_refresh(const protocol::Envelope& env) {
  const auto& cfg = services_.config;
  if (!principal_->via_token) {
    reply_error(env, reason::invalid_payload, "this connection is authenticated by API key; it has nothing to refresh");
    return;
  }
  const std::int64_t now = unix_s();
  const json::value* token = env.payload->if_contains("token");
  if (token) {
    if (!token->is_string()) {
      reply_error(env, reason::invalid_payload, "token must be a string", {{"token", "must be a string"}});
      return;
    }
    const std::string_view text(token->as_string().data(), token->as_string().size());
    // Identity-provider tokens refresh too; an unknown kid is refused here
    // (the next upgrade's refresh of the key set may find it).
    const auth::IdentityProvider* idp = services_.idp;
    std::shared_ptr<const auth::KeySet> set = idp ? idp->keys.current() : nullptr;
    const auth::KeySet no_keys;
    auto r = auth::verify_token(text, services_.jwt_secret, idp ? (set ? set.get() : &no_keys) : nullptr,
                                idp ? idp->options : auth::IdpOptions{}, now);
    if (r.status == auth::JwtStatus::unknown_key && idp) idp->keys.refresh_for_unknown([] {});
    if (r.status != auth::JwtStatus::ok) {
      reply_error(env, r.status == auth::JwtStatus::expired ? reason::token_expired : reason::unauthorized,
                  auth::describe(r.status));
      return;
    }
    if (r.claims.sub != principal_->agent_id) {
      reply_error(env, reason::forbidden, "the new token names another sub");
      return;
    }
    if ((r.claims.role == "worker") != principal_->worker) {
      reply_error(env, reason::forbidden, "the new token has another role");
      return;
    }
    if (!r.claims.key_id.empty()) {
      auto key = services_.keys.find(r.claims.key_id);
      if (!key || key->revoked_at) {
        reply_error(env, reason::unauthorized, "the key that minted this token is revoked");
        return;
      }
    }
    auto renewed = std::make_shared<auth::Principal>(*principal_);  // the old one may be shared
    renewed->token_exp = r.claims.exp;
    renewed->has_topics = r.claims.has_topics;
    renewed->topics = std::move(r.claims.topics);
    renewed->token_caps = std::move(r.claims.caps);
    renewed->via_idp = r.claims.from_idp;
    principal_ = std::move(renewed);
    token_warned_ = false;
    reply_ok(env, json::object{{"expires_at", principal_->token_exp}});
    return;
  }
  if (!env.payload->empty()) {
    reply_error(env, reason::invalid_payload, "refresh takes {\"token\": ...} or {}", {{"token", "expected"}});
    return;
  }
  if (!cfg.self_refresh) {
    reply_error(env, reason::refresh_not_allowed, "self refresh is disabled on this server");
    return;
  }
  if (principal_->via_idp) {
    // The identity provider decides how long its sessions last.
    reply_error(env, reason::refresh_not_allowed, "identity-provider tokens are refreshed with a new token from it");
    return;
  }
  auth::TokenClaims c;
  c.sub = principal_->agent_id;
  c.iat = now;
  c.exp = now + cfg.token_default_ttl_s;
  c.has_topics = principal_->has_topics;
  c.topics = principal_->topics;
  c.caps = principal_->token_caps;
  c.tenant = principal_->tenant;
  c.key_id = principal_->key_id;
  if (principal_->worker) c.role = "worker";
  auto renewed = std::make_shared<auth::Principal>(*principal_);
  renewed->token_exp = c.exp;
  principal_ = std::move(renewed);
  token_warned_ = false;
  reply_ok(env, json::object{{"token", auth::sign_jwt(c, services_.jwt_secret)}, {"expires_at", c.exp}});
}

std::optional<std::size_t> Session::find(std::string_view topic) const {
  for (std::size_t i = 0; i < joined_.size(); ++i) {
    if (joined_[i].channel->topic() == topic) return i;
  }
  return std::nullopt;
}

void Session::remove(std::size_t index) {
  joined_.erase(joined_.begin() + static_cast<std::ptrdiff_t>(index));
}

void Session::handle_join(const protocol::Envelope& env, bool hook_passed) {
  const auto kind = protocol::classify_topic(env.topic);
  if (kind == protocol::TopicKind::invalid) {
    reply_error(env, reason::invalid_topic,
                "topics are namespace:name, at most 255 bytes of letters, digits and _-.:@");
    return;
  }
  const ChannelKind* channel_kind = services_.channels ? services_.channels->match(env.topic) : nullptr;
  if (!channel_kind) {
    reply_error(env, reason::invalid_topic, "no channel serves this topic");
    return;
  }
  if (channel_kind->hook_precheck && !hook_passed && services_.hooks && services_.hooks->enabled(hooks::Hook::join)) {
    // Our own rules first: the application is not asked about a join they refuse.
    if (channel_kind->hook_precheck(*this, env)) ask_join_hook(env);
    return;
  }
  if (auto existing = find(env.topic)) {
    // As Phoenix does: a second join of a topic closes the first (a pending
    // one is cancelled and never answered).
    Joined old = std::move(joined_[*existing]);
    remove(*existing);
    try {
      old.channel->leave();
    } catch (const std::exception& e) {
      spdlog::warn("conn {} leaving {} on rejoin threw: {}", socket_.id(), old.channel->topic(), e.what());
    }
    abandon(old, "the topic was joined again");
    const std::optional<std::string_view> ref = old.channel->join_ref();
    socket_.send(wire::Message::text(protocol::encode_raw(ref, ref, old.channel->topic(), "phx_close", "{}")));
  }
  const auto& cfg = services_.config;
  if (cfg.max_topics > 0 && static_cast<std::int64_t>(joined_.size()) >= cfg.max_topics) {
    reply_error(env, reason::too_many_topics, "this connection has joined the most topics allowed");
    return;
  }
  std::unique_ptr<Channel> channel;
  try {
    channel = channel_kind->join(*this, env);
  } catch (const std::exception& e) {
    metrics::bump(services_.metrics.channel_crashes);
    spdlog::error("conn {} join of {} threw: {}", socket_.id(), env.topic, e.what());
    reply_error(env, reason::internal, "the join failed on the server");
    return;
  }
  if (!channel) return;  // the join code replied with the error
  Joined j;
  if (channel->join_pending()) {
    j.pending = std::make_unique<Joined::Pending>();
    j.pending->started_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::steady_clock::now().time_since_epoch())
                                .count();
  }
  j.channel = std::move(channel);
  joined_.push_back(std::move(j));
}

void Session::abandon(Joined& j, std::string_view why) {
  if (!j.pending) return;
  auto waiting = std::move(j.pending->waiting);
  j.pending->waiting.clear();
  for (const auto& frame : waiting) {
    protocol::Envelope env;
    std::string error;
    if (protocol::decode(frame, env, error)) reply_error(env, reason::unmatched_topic, why);
  }
}

void Session::join_done(Channel& channel, bool ok) {
  std::optional<std::size_t> index;
  for (std::size_t i = 0; i < joined_.size(); ++i) {
    if (joined_[i].channel.get() == &channel) index = i;
  }
  if (!index || !joined_[*index].pending) return;
  const std::int64_t now_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  services_.metrics.join_latency.observe_us(now_us - joined_[*index].pending->started_us);
  if (!ok) {
    Joined j = std::move(joined_[*index]);
    remove(*index);
    abandon(j, "the join of this topic failed");
    return;  // the channel goes with `j`; its leave is a no-op
  }
  auto waiting = std::move(joined_[*index].pending->waiting);
  joined_[*index].pending.reset();
  for (const auto& frame : waiting) {
    protocol::Envelope env;
    std::string error;
    if (!protocol::decode(frame, env, error)) continue;
    // A crash of an earlier event closed the channel: the rest is stale.
    const auto i = find(env.topic);
    if (!i || joined_[*i].channel.get() != &channel || closed_) return;
    try {
      channel.handle_in(env);
    } catch (const std::exception& e) {
      crash(*i, &env, e.what());
      return;
    }
  }
}

Session::Rare& Session::rare() {
  if (!rare_) rare_ = std::make_unique<Rare>();
  return *rare_;
}

std::weak_ptr<int> Session::alive_handle() {
  auto& alive = rare().alive;
  if (!alive) alive = std::make_shared<int>(0);
  return alive;
}

void Session::ask_join_hook(const protocol::Envelope& env) {
  // The frame is kept as text and decoded again when the answer comes: the
  // envelope's views point into a buffer that is gone by then.
  std::string frame = protocol::encode_raw(env.join_ref, env.ref, env.topic, env.event, env.payload_raw);
  std::string body = R"({"hook":"join","agent_id":)";
  protocol::append_json_string(body, principal_->agent_id);
  body += R"(,"tenant":)";
  protocol::append_json_string(body, principal_->tenant);
  body += R"(,"key_id":)";
  protocol::append_json_string(body, principal_->key_id);
  body += R"(,"topic":)";
  protocol::append_json_string(body, env.topic);
  body += R"(,"payload":)";
  body += env.payload_raw;
  body += R"(,"data":)";
  body += principal_->hook_data.empty() ? std::string("null") : principal_->hook_data;
  body += "}";
  services_.hooks->call(hooks::Hook::join, std::move(body),
                        [poster = socket_.poster(), alive = alive_handle(), this,
                         frame = std::move(frame)](hooks::Verdict v) {
                          poster([alive, this, frame, v = std::move(v)] {
                            if (!alive.lock() || closed_) return;
                            protocol::Envelope again;
                            std::string error;
                            if (!protocol::decode(frame, again, error)) return;
                            if (!v.allow) {
                              reply_error(again, reason::forbidden,
                                          v.failed ? "the application's join hook did not answer (" + v.reason +
                                                         "); hooks.join_failure is deny"
                                                   : (v.reason.empty() ? "refused by the application" : v.reason));
                              return;
                            }
                            handle_join(again, true);
                          });
                        });
}

void Session::handle_leave(const protocol::Envelope& env, std::size_t index) {
  Joined j = std::move(joined_[index]);
  remove(index);
  try {
    j.channel->leave();  // a pending join is cancelled, never answered
  } catch (const std::exception& e) {
    spdlog::warn("conn {} leave of {} threw: {}", socket_.id(), j.channel->topic(), e.what());
  }
  abandon(j, "the topic was left before its join completed");
  reply_ok(env, {});
}

void Session::crash(std::size_t index, const protocol::Envelope* env, std::string_view what) {
  metrics::bump(services_.metrics.channel_crashes);
  Joined j = std::move(joined_[index]);
  remove(index);
  spdlog::error("conn {} channel {} crashed: {}", socket_.id(), j.channel->topic(), what);
  try {
    j.channel->leave();
  } catch (const std::exception& e) {
    spdlog::error("conn {} channel {} threw again while leaving: {}", socket_.id(), j.channel->topic(), e.what());
  }
  if (env) reply_error(*env, reason::internal, "the channel crashed and was closed; rejoin it");
  // Phoenix tells the client its channel died with phx_error, ref = join_ref;
  // the official client then rejoins by itself.
  const std::optional<std::string_view> ref = j.channel->join_ref();
  socket_.send(wire::Message::text(protocol::encode_raw(ref, ref, j.channel->topic(), "phx_error", "{}")));
}

bool Session::take_query_token(const protocol::Envelope& env) {
  const limits::Rate rate = session_query_rate(services_.config, *principal_);
  if (rate.unlimited()) return true;  // no bucket to make
  const auto take = rare().queries.take(rate, limits::Clock::now());
  if (take.ok) return true;
  metrics::bump(services_.metrics.rate_limited[static_cast<std::size_t>(metrics::RateBucket::queries)]);
  json::object r = protocol::error_response(reason::rate_limited, "query rate limit exceeded");
  r["retry_after_ms"] = take.retry_after_ms;
  if (const json::value* ref = env.payload->if_contains("ref"); ref && ref->is_string()) r["ref"] = *ref;
  reply_error(env, r);
  return false;
}

void Session::on_tick(std::int64_t now_ms) {
  if (!principal_->via_token || closed_) return;
  const std::int64_t exp_ms = principal_->token_exp * 1000;
  if (now_ms >= exp_ms) {
    socket_.close(protocol::close_code::token_expired, "token expired");
    return;
  }
  const std::int64_t warn_ms = services_.config.token_warning_s * 1000;
  if (!token_warned_ && now_ms >= exp_ms - warn_ms) {
    token_warned_ = true;
    push("phoenix", std::nullopt, "token_expiring", json::object{{"expires_in_ms", exp_ms - now_ms}});
  }
}

std::vector<std::string> Session::topics() const {
  std::vector<std::string> out;
  out.reserve(joined_.size());
  for (const auto& j : joined_) out.emplace_back(j.channel->topic());
  return out;
}

bool Session::unsubscribe(std::string_view topic) {
  const auto index = find(topic);
  if (!index) return false;
  Joined j = std::move(joined_[*index]);
  remove(*index);
  try {
    j.channel->leave();
  } catch (const std::exception& e) {
    spdlog::warn("conn {} server-side leave of {} threw: {}", socket_.id(), j.channel->topic(), e.what());
  }
  abandon(j, "the topic was unsubscribed by an admin");
  // The client hears it as Phoenix's phx_close on the topic (join_ref as ref),
  // which the official client takes as the channel closed by the server.
  const std::optional<std::string_view> ref = j.channel->join_ref();
  socket_.send(wire::Message::text(protocol::encode_raw(ref, ref, j.channel->topic(), "phx_close", "{}")));
  spdlog::info("conn={} topic={} unsubscribed by an admin", socket_.id(), j.channel->topic());
  return true;
}

void Session::shutdown() {
  for (auto& j : joined_) {
    try {
      j.channel->shutdown();
    } catch (const std::exception& e) {
      spdlog::warn("conn {} channel {} shutdown threw: {}", socket_.id(), j.channel->topic(), e.what());
    }
  }
}

void Session::close_channels() {
  if (closed_) return;
  closed_ = true;
  for (auto& j : joined_) {
    try {
      j.channel->leave();
    } catch (const std::exception& e) {
      spdlog::warn("conn {} channel {} leave threw: {}", socket_.id(), j.channel->topic(), e.what());
    }
  }
  joined_.clear();
}

}  // namespace synapse::channels
