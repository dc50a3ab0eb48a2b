#include "net/http_api.hpp"

#include <boost/json.hpp>

#include "auth/authenticator.hpp"
#include "auth/capabilities.hpp"
#include "auth/jwt.hpp"
#include "auth/key_store.hpp"
#include "channels/mcp_endpoint.hpp"
#include "channels/pubsub_channel.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "limits/connection_limiter.hpp"
#include "pubsub/broker.hpp"
#include "net/admission.hpp"
#include "net/request_target.hpp"
#include "protocol/envelope.hpp"
#include "protocol/topic.hpp"
#include "pubsub/broker.hpp"

namespace synapse::net {
namespace json = boost::json;

HttpResponse json_error(int status, std::string_view code, std::string_view reason) {
  HttpResponse r;
  r.status = status;
  r.body = json::serialize(json::object{{"error", code}, {"reason", reason}});
  return r;
}

namespace {

HttpResponse json_ok(const json::object& body, int status = 200) {
  HttpResponse r;
  r.status = status;
  r.body = json::serialize(body);
  return r;
}

HttpResponse health(HttpContext& ctx, std::string_view path) {
  const bool draining = ctx.draining.load();
  const bool clustered = static_cast<bool>(ctx.backplane_up);
  const bool redis_up = !clustered || ctx.backplane_up();
  if (path == "/health/live") return json_ok({{"status", "ok"}});
  if (path == "/health/ready") {
    if (draining) return json_ok({{"status", "draining"}}, 503);
    // Without Redis a node serves its own members only: a load balancer
    // should send new clients elsewhere.
    if (!redis_up) return json_ok({{"status", "redis_down"}}, 503);
    // Without its key store a node can admit nobody new.
    if (!ctx.services.keys.probe()) return json_ok({{"status", "store_unavailable"}}, 503);
    return json_ok({{"status", "ready"}});
  }
  json::object body{{"status", draining ? "draining" : "ok"},
                    {"store", ctx.services.keys.healthy() ? "ok" : "unavailable"},
                    {"connections", ctx.services.metrics.connections_open.load()},
                    {"version", "0.1.0"}};
  if (clustered) body["redis"] = redis_up ? "up" : "down";
  return json_ok(body);
}

HttpResponse metrics_page(const HttpRequest& req, HttpContext& ctx) {
  const auto& token = ctx.config.metrics_token;
  if (!token.empty() && auth::bearer(req.authorization) != token) {
    return json_error(401, "unauthorized", "metrics require the configured bearer token");
  }
  std::vector<metrics::Sample> extra = ctx.extra_samples ? ctx.extra_samples() : std::vector<metrics::Sample>{};
  const auto counts = ctx.limiter.counts();
  extra.push_back({"synapse_limiter_ip_connections", "Connections counted against per-IP limits",
                   static_cast<double>(counts.ip_connections)});
  extra.push_back({"synapse_limiter_key_connections", "Connections counted against per-key limits",
                   static_cast<double>(counts.key_connections)});
  extra.push_back({"synapse_limiter_tracked_ips", "IPs with limiter state", static_cast<double>(counts.tracked_ips)});
  const auto b = ctx.services.broker.stats();
  extra.push_back({"synapse_topic_members", "Pub/sub memberships", static_cast<double>(b.members)});
  extra.push_back({"synapse_history_messages", "Messages held for recovery", static_cast<double>(b.history_messages)});
  extra.push_back({"synapse_history_bytes", "Bytes of messages held for recovery", static_cast<double>(b.history_bytes)});
  if (ctx.mcp) {
    extra.push_back({"synapse_mcp_sessions", "MCP sessions open on /mcp", static_cast<double>(ctx.mcp->session_count())});
    extra.push_back({"synapse_mcp_streams", "/mcp answers streaming now (tool calls in flight)",
                     static_cast<double>(ctx.open_streams.load())});
  }
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = metrics::render_prometheus(ctx.services.metrics, extra);
  return r;
}

// The API key of an HTTP API request, or the error response.
std::optional<HttpResponse> require_key(const HttpRequest& req, HttpContext& ctx, auth::Principal& out) {
  const auto credential = auth::bearer(req.authorization);
  if (credential.empty()) return json_error(401, "unauthorized", "send Authorization: Bearer <api key>");
  auto r = auth::authenticate_key(credential, ctx.services.keys);
  if (!r.ok()) return json_error(401, "unauthorized", r.message);
  out = std::move(r.principal);
  return std::nullopt;
}

std::optional<json::object> parse_body(const HttpRequest& req, HttpResponse& err) {
  json::parse_options opts;
  opts.max_depth = 64;
  boost::system::error_code ec;
  json::value v = json::parse(req.body.empty() ? std::string_view("{}") : std::string_view(req.body), ec, {}, opts);
  if (ec || !v.is_object()) {
    err = json_error(400, "invalid_payload", "the body must be a JSON object");
    return std::nullopt;
  }
  if (!protocol::numbers_finite(v)) {
    err = json_error(400, "invalid_payload", "a number in the body is too large for a double");
    return std::nullopt;
  }
  return std::move(v.as_object());
}

HttpResponse mint_token(const HttpRequest& req, HttpContext& ctx) {
  auth::Principal key;
  if (auto e = require_key(req, ctx, key)) return *e;
  HttpResponse err;
  auto body = parse_body(req, err);
  if (!body) return err;
  std::string agent = key.agent_id;
  if (const json::value* a = body->if_contains("agent_id")) {
    if (!a->is_string() || a->as_string().empty() || a->as_string().size() > 255) {
      return json_error(400, "invalid_payload", "agent_id must be a non-empty string of at most 255 bytes");
    }
    agent = std::string(a->as_string());
  }
  if (agent.find('\0') != std::string::npos) return json_error(400, "invalid_payload", "agent_id must not contain NUL");
  if (agent != key.agent_id && !key.admin) {
    return json_error(403, "forbidden", "only an admin key may mint tokens for another agent");
  }
  std::int64_t ttl = ctx.config.token_default_ttl_s;
  if (const json::value* t = body->if_contains("ttl_s")) {
    if (!t->is_int64() || t->as_int64() < 1 || t->as_int64() > ctx.config.token_max_ttl_s) {
      return json_error(400, "invalid_payload",
                        "ttl_s must be an integer from 1 to " + std::to_string(ctx.config.token_max_ttl_s));
    }
    ttl = t->as_int64();
  }
  auth::TokenClaims c;
  if (const json::value* topics = body->if_contains("topics")) {
    const json::array* arr = topics->if_array();
    if (!arr) return json_error(400, "invalid_payload", "topics must be an array of topic patterns");
    c.has_topics = true;
    for (const auto& t : *arr) {
      if (!t.is_string() || t.as_string().empty() || t.as_string().size() > 255) {
        return json_error(400, "invalid_payload", "topics must be an array of topic patterns");
      }
      c.topics.emplace_back(t.as_string());
    }
  }
  if (const json::value* caps = body->if_contains("caps")) {
    std::string why;
    c.caps = auth::parse_capabilities(*caps, &why);
    if (!c.caps) return json_error(400, "invalid_payload", why);
  }
  const std::int64_t now = unix_s();
  c.sub = agent;
  c.iat = now;
  c.exp = now + ttl;
  c.tenant = key.tenant;
  c.key_id = key.key_id;
  if (key.worker) c.role = "worker";  // a worker key's tokens serve agents too
  return json_ok({{"token", auth::sign_jwt(c, ctx.services.jwt_secret)}, {"expires_at", c.exp}});
}

// What POST /api/broadcast publishes, once the request is checked.
struct Broadcast {
  std::string topic, event, payload_json;
  bool payload_empty = true;
  std::string from;
};

// Checks a broadcast request: the refusal, or nullopt with `out` filled.
std::optional<HttpResponse> check_broadcast(const HttpRequest& req, HttpContext& ctx, Broadcast& out) {
  auth::Principal key;
  if (auto e = require_key(req, ctx, key)) return *e;
  if (!key.publish && !key.admin) return json_error(403, "forbidden", "this API key has no publish rights");
  HttpResponse err;
  auto body = parse_body(req, err);
  if (!body) return err;
  const json::value* topic = body->if_contains("topic");
  const json::value* event = body->if_contains("event");
  const json::value* payload = body->if_contains("payload");
  if (!topic || !topic->is_string()) return json_error(400, "invalid_payload", "topic must be a string");
  const std::string_view t(topic->as_string().data(), topic->as_string().size());
  if (protocol::classify_topic(t) != protocol::TopicKind::pubsub) {
    return json_error(400, "invalid_topic", "topic must be a pub/sub topic name (namespace:name)");
  }
  if (!auth::permitted(key, auth::Capability::publish, t)) {
    return json_error(403, "forbidden", "this API key's publish capability does not cover this topic");
  }
  if (!event || !event->is_string()) return json_error(400, "invalid_payload", "event must be a string");
  const std::string_view e(event->as_string().data(), event->as_string().size());
  if (protocol::is_reserved_event(e)) return json_error(400, "reserved_event", "reserved event name");
  if (!protocol::valid_event_name(e)) return json_error(400, "invalid_payload", "event must be 1..64 bytes");
  json::object empty;
  const json::object* p = &empty;
  if (payload) {
    if (!payload->is_object()) return json_error(400, "invalid_payload", "payload must be an object");
    p = &payload->as_object();
  }
  if (p->contains("_meta")) return json_error(400, "invalid_payload", "_meta is added by the server");
  out.topic = std::string(t);
  out.event = std::string(e);
  out.payload_json = json::serialize(*p);
  out.payload_empty = p->empty();
  out.from = std::move(key.agent_id);
  return std::nullopt;
}

HttpResponse broadcast_answer(const pubsub::PublishResult& r) {
  if (r.reach == pubsub::PublishResult::Reach::unknown) {
    return json_error(503, "unavailable", "Redis did not confirm the publish; it may or may not have been delivered");
  }
  if (r.reach == pubsub::PublishResult::Reach::local) return json_ok({{"offset", 0}, {"local", true}});
  return json_ok({{"offset", r.offset}, {"epoch", r.epoch}});
}

HttpResponse broadcast(const HttpRequest& req, HttpContext& ctx) {
  Broadcast b;
  if (auto e = check_broadcast(req, ctx, b)) return *e;
  const auto r = ctx.services.broker.publish(b.topic, b.event, b.payload_json, b.payload_empty, b.from, 0);
  ctx.services.broker.make_durable();  // before the 200 says it was published
  return broadcast_answer(r);
}

// Checks a presence request: the refusal, or nullopt.
std::optional<HttpResponse> check_presence(const HttpRequest& req, HttpContext& ctx, std::string_view topic) {
  auth::Principal key;
  if (auto e = require_key(req, ctx, key)) return *e;
  if (protocol::classify_topic(topic) != protocol::TopicKind::pubsub) {
    return json_error(400, "invalid_topic", "not a pub/sub topic name");
  }
  // Reading who is on a topic is what a subscriber of it may do.
  if (!auth::permitted(key, auth::Capability::subscribe, topic)) {
    return json_error(403, "forbidden", "this API key's subscribe capability does not cover this topic");
  }
  return std::nullopt;
}

HttpResponse presence_answer(std::string_view topic, std::string_view state) {
  HttpResponse r;
  r.body = "{\"topic\":";
  protocol::append_json_string(r.body, topic);
  r.body += ",\"presence\":";
  r.body += state;
  r.body += "}";
  return r;
}

HttpResponse presence(const HttpRequest& req, HttpContext& ctx, std::string_view topic) {
  if (auto e = check_presence(req, ctx, topic)) return *e;
  return presence_answer(topic, ctx.services.broker.presence_state(topic));
}

constexpr std::string_view presence_prefix = "/api/presence/";

// CORS for POST /api/token (protocol.md section 9): an allowed Origin gets
// its preflight answered and Access-Control-Allow-Origin on the answer;
// any other Origin gets the refusal that names the option to change.
std::optional<HttpResponse> cors_refusal(const HttpRequest& req, HttpContext& ctx) {
  if (!req.origin || origin_allowed(*req.origin, req.host, ctx.config.allowed_origins)) return std::nullopt;
  return json_error(403, "forbidden_origin", origin_refusal(*req.origin, ctx.config.allowed_origins.empty()));
}

void add_cors(const HttpRequest& req, HttpResponse& r) {
  if (!req.origin) return;
  r.headers.emplace_back("Access-Control-Allow-Origin", *req.origin);
  r.headers.emplace_back("Vary", "Origin");
}

HttpResponse token_preflight(const HttpRequest& req, HttpContext& ctx) {
  if (auto e = cors_refusal(req, ctx)) return *e;
  HttpResponse r;
  r.status = 204;
  add_cors(req, r);
  r.headers.emplace_back("Access-Control-Allow-Methods", "POST, OPTIONS");
  r.headers.emplace_back("Access-Control-Allow-Headers", "Authorization, Content-Type");
  r.headers.emplace_back("Access-Control-Max-Age", "600");
  r.headers.emplace_back("Allow", "POST, OPTIONS");
  return r;
}

}  // namespace

HttpResponse handle_http(const HttpRequest& req, HttpContext& ctx) {
  metrics::bump(ctx.services.metrics.http_requests);
  RequestTarget target;
  if (!parse_target(req.target, target)) return json_error(400, "bad_request", "malformed request target");
  const std::string& path = target.path;
  auto only = [&](std::string_view method) -> std::optional<HttpResponse> {
    if (req.method == method) return std::nullopt;
    auto r = json_error(405, "method_not_allowed", "use " + std::string(method));
    r.headers.emplace_back("Allow", std::string(method));
    return r;
  };
  if (path == "/health" || path == "/health/live" || path == "/health/ready") {
    if (auto e = only("GET")) return *e;
    return health(ctx, path);
  }
  if (path == "/metrics") {
    if (auto e = only("GET")) return *e;
    return metrics_page(req, ctx);
  }
  if (path == "/api/token") {
    if (req.method == "OPTIONS") return token_preflight(req, ctx);
    if (auto e = only("POST")) return *e;
    if (auto e = cors_refusal(req, ctx)) return *e;
    HttpResponse r = mint_token(req, ctx);
    add_cors(req, r);
    return r;
  }
  if (path == "/api/broadcast") {
    if (auto e = only("POST")) return *e;
    return broadcast(req, ctx);
  }
  if (path.starts_with(presence_prefix)) {
    if (auto e = only("GET")) return *e;
    return presence(req, ctx, std::string_view(path).substr(presence_prefix.size()));
  }
  if (path == "/cortex/websocket") {
    return json_error(426, "upgrade_required", "this endpoint speaks WebSocket only");
  }
  return json_error(404, "not_found", "no such endpoint");
}

bool handle_http_deferred(const HttpRequest& req, HttpContext& ctx, const HttpDone& done) {
  auto& broker = ctx.services.broker;
  if (!broker.publishes_async() && !broker.presence_async()) return false;
  RequestTarget target;
  if (!parse_target(req.target, target)) return false;
  const std::string& path = target.path;
  if (path == "/api/broadcast" && req.method == "POST" && broker.publishes_async()) {
    metrics::bump(ctx.services.metrics.http_requests);
    Broadcast b;
    if (auto e = check_broadcast(req, ctx, b)) {
      done(std::move(*e));
      return true;
    }
    // Answered when Redis confirms (or the link gives up on it); `done`
    // takes the answer back to the request's thread.
    broker.publish_async(b.topic, b.event, b.payload_json, b.payload_empty, b.from, 0,
                         [&ctx, done](pubsub::PublishResult r) {
                           ctx.services.broker.make_durable();
                           done(broadcast_answer(r));
                         });
    return true;
  }
  if (path.starts_with(presence_prefix) && req.method == "GET" && broker.presence_async()) {
    metrics::bump(ctx.services.metrics.http_requests);
    const std::string topic = path.substr(presence_prefix.size());
    if (auto e = check_presence(req, ctx, topic)) {
      done(std::move(*e));
      return true;
    }
    broker.presence_state_async(topic, [topic, done](std::optional<std::string> state) {
      if (!state) {
        done(json_error(503, "unavailable", "Redis did not answer with the topic's presence in time; retry"));
        return;
      }
      done(presence_answer(topic, *state));
    });
    return true;
  }
  return false;
}

}  // namespace synapse::net
