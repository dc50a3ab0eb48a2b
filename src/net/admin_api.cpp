// The admin API (protocol section 6, "Admin API") and the dashboard's
// static files. Every /api/admin route takes the admin's credential: an API
// key with the admin flag, or a token an admin key minted for its own agent.
// Answers that need the I/O threads' state complete asynchronously (see
// net/admin_backend.hpp); the rest answer at once.
#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "auth/authenticator.hpp"
#include "auth/key_store.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/parse.hpp"
#include "metrics/metrics.hpp"
#include "net/admin_backend.hpp"
#include "net/dashboard_assets.hpp"
#include "net/http_api.hpp"
#include "net/request_target.hpp"
#include "protocol/topic.hpp"
#include "pubsub/broker.hpp"

namespace synapse::net {
namespace json = boost::json;
using core::parse_u64;

namespace {

constexpr std::string_view admin_prefix = "/api/admin/";
constexpr std::size_t default_history_limit = 100;
constexpr std::size_t max_history_limit = 1000;

HttpResponse ok(const json::value& body) {
  HttpResponse r;
  r.body = json::serialize(body);
  // Admin answers are live state; nothing in between may keep them.
  r.headers.emplace_back("Cache-Control", "no-store");
  return r;
}

// The admin's principal, or the error response (401 without a valid
// credential, 403 for a valid one that is not the admin's).
std::optional<HttpResponse> require_admin(const HttpRequest& req, HttpContext& ctx) {
  const auto credential = auth::bearer(req.authorization);
  if (credential.empty()) return json_error(401, "unauthorized", "send Authorization: Bearer <admin api key or token>");
  auto r = auth::authenticate(credential, ctx.services.keys, ctx.services.jwt_secret, unix_s());
  if (!r.ok()) return json_error(401, r.failure == auth::AuthFailure::token_expired ? "token_expired" : "unauthorized",
                                 r.message);
  bool admin = false;
  if (r.principal.via_token) {
    // Tokens carry no admin flag: a token is the admin's when an admin key
    // minted it for that key's own agent.
    if (!r.principal.via_idp && !r.principal.key_id.empty()) {
      auto key = ctx.services.keys.find(r.principal.key_id);
      admin = key && key->admin && !key->revoked_at && key->agent_id == r.principal.agent_id;
    }
  } else {
    auto key = ctx.services.keys.find(r.principal.key_id);
    admin = key && key->admin;
  }
  if (!admin) return json_error(403, "forbidden", "the admin API needs an admin key (or a token it minted for itself)");
  return std::nullopt;
}

json::object summary_json(const pubsub::TopicSummary& s) {
  return {{"topic", s.name},
          {"members", s.members},
          {"presences", s.presences},
          {"last_offset", s.last_offset},
          {"history", s.history}};
}

json::object connection_json(const ConnectionView& v) {
  json::array topics;
  for (const auto& t : v.topics) topics.emplace_back(t);
  return {{"id", v.id},         {"peer", v.peer},         {"ip", v.ip},
          {"key_id", v.key_id}, {"agent_id", v.agent_id}, {"tenant", v.tenant},
          {"via_token", v.via_token}, {"opened_at_ms", v.opened_at_ms}, {"thread", v.thread},
          {"topics", std::move(topics)}};
}

json::object run_json(const metrics::RunRecord& r) {
  json::object o{{"id", r.id},
                 {"connection_id", r.connection_id},
                 {"topic", r.topic},
                 {"ref", r.ref},
                 {"agent_id", r.agent_id},
                 {"started_at_ms", r.started_at_ms}};
  if (r.ended_at_ms) {
    o["ended_at_ms"] = *r.ended_at_ms;
    o["duration_ms"] = *r.ended_at_ms - r.started_at_ms;
    o["outcome"] = r.outcome;
  } else {
    o["running_ms"] = unix_ms() - r.started_at_ms;
  }
  return o;
}

// A history entry as the client received it: its frame's event and payload.
json::object message_json(std::uint64_t offset, const wire::Message& m) {
  json::object o{{"offset", offset}};
  boost::system::error_code ec;
  json::value v = json::parse(m.payload(), ec);
  if (!ec && v.is_array() && v.as_array().size() == 5) {
    auto& a = v.as_array();
    o["event"] = a[3];
    o["payload"] = a[4];
  } else {
    o["raw"] = std::string(m.payload());
  }
  return o;
}

std::optional<json::object> body_object(const HttpRequest& req) {
  boost::system::error_code ec;
  json::parse_options opts;
  opts.max_depth = 16;
  json::value v = json::parse(req.body.empty() ? std::string_view("{}") : std::string_view(req.body), ec, {}, opts);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.as_object());
}

HttpResponse method_not_allowed(std::string_view allow) {
  auto r = json_error(405, "method_not_allowed", "use " + std::string(allow));
  r.headers.emplace_back("Allow", std::string(allow));
  return r;
}

// Node-local topic counts from the connections, for brokers that cannot
// list topics (cluster mode).
std::vector<pubsub::TopicSummary> topics_from_connections(const std::vector<ConnectionView>& conns) {
  std::map<std::string, pubsub::TopicSummary> by_name;
  for (const auto& c : conns) {
    for (const auto& t : c.topics) {
      auto& s = by_name[t];
      s.name = t;
      ++s.members;
    }
  }
  std::vector<pubsub::TopicSummary> out;
  for (auto& [_, s] : by_name) out.push_back(std::move(s));
  return out;
}

void admin(const HttpRequest& req, HttpContext& ctx, const RequestTarget& target, HttpDone done) {
  if (auto e = require_admin(req, ctx)) return done(std::move(*e));
  const std::string_view rest = std::string_view(target.path).substr(admin_prefix.size());
  auto& broker = ctx.services.broker;

  if (rest == "topics") {
    if (req.method != "GET") return done(method_not_allowed("GET"));
    if (auto list = broker.list_topics()) {
      json::array a;
      for (const auto& s : *list) a.push_back(summary_json(s));
      return done(ok(json::object{{"topics", std::move(a)}, {"scope", "node"}}));
    }
    if (!ctx.admin) return done(json_error(503, "unavailable", "introspection is not available"));
    ctx.admin->connections([done](std::vector<ConnectionView> conns) {
      json::array a;
      for (const auto& s : topics_from_connections(conns)) a.push_back(summary_json(s));
      done(ok(json::object{{"topics", std::move(a)}, {"scope", "node_members"}}));
    });
    return;
  }

  constexpr std::string_view topics_prefix = "topics/";
  if (rest.starts_with(topics_prefix)) {
    if (req.method != "GET") return done(method_not_allowed("GET"));
    std::string_view topic = rest.substr(topics_prefix.size());
    bool history = false;
    constexpr std::string_view history_suffix = "/history";
    if (topic.ends_with(history_suffix)) {
      topic.remove_suffix(history_suffix.size());
      history = true;
    }
    if (protocol::classify_topic(topic) != protocol::TopicKind::pubsub) {
      return done(json_error(400, "invalid_topic", "not a pub/sub topic name"));
    }
    std::uint64_t since = 0;
    std::size_t limit = history ? default_history_limit : 10;
    if (auto s = query_param(target, "since"); s && !parse_u64(*s, since)) {
      return done(json_error(400, "bad_request", "since must be a non-negative integer offset"));
    }
    if (auto l = query_param(target, "limit")) {
      std::uint64_t n = 0;
      if (!parse_u64(*l, n) || n < 1 || n > max_history_limit) {
        return done(json_error(400, "bad_request", "limit must be an integer from 1 to 1000"));
      }
      limit = static_cast<std::size_t>(n);
    }
    auto h = broker.inspect_topic(topic, since, limit);
    if (!h) {
      return done(json_error(501, "not_implemented",
                             "topic offsets and history are held in Redis in cluster mode; read them there"));
    }
    json::object body = summary_json(h->summary);
    body["epoch"] = h->epoch;
    json::array msgs;
    for (const auto& [off, m] : h->messages) msgs.push_back(message_json(off, m));
    if (history) {
      body["since"] = since;
      body["messages"] = std::move(msgs);
      return done(ok(body));
    }
    body["latest"] = std::move(msgs);  // the newest few, for a glance
    boost::system::error_code ec;
    body["presence"] = json::parse(broker.presence_state(topic), ec);
    if (ec) body["presence"] = json::object{};
    if (!ctx.admin) return done(ok(body));
    // The members on this node, from their connections.
    ctx.admin->connections([done, body = std::move(body), name = std::string(topic)](
                               std::vector<ConnectionView> conns) mutable {
      json::array members;
      for (const auto& c : conns) {
        for (const auto& t : c.topics) {
          if (t == name) {
            members.push_back(json::object{
                {"connection_id", c.id}, {"agent_id", c.agent_id}, {"key_id", c.key_id}, {"peer", c.peer}});
          }
        }
      }
      body["member_connections"] = std::move(members);
      done(ok(body));
    });
    return;
  }

  if (rest == "connections") {
    if (req.method != "GET") return done(method_not_allowed("GET"));
    if (!ctx.admin) return done(json_error(503, "unavailable", "introspection is not available"));
    std::string key(query_param(target, "key").value_or(""));
    std::string ip(query_param(target, "ip").value_or(""));
    ctx.admin->connections([done, key, ip](std::vector<ConnectionView> conns) {
      std::sort(conns.begin(), conns.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
      json::array a;
      for (const auto& c : conns) {
        if (!key.empty() && c.key_id != key) continue;
        if (!ip.empty() && c.ip != ip) continue;
        a.push_back(connection_json(c));
      }
      done(ok(json::object{{"connections", std::move(a)}}));
    });
    return;
  }

  if (rest == "runs") {
    if (req.method != "GET") return done(method_not_allowed("GET"));
    json::array running, recent;
    for (const auto& r : ctx.services.metrics.runs.running()) running.push_back(run_json(r));
    for (const auto& r : ctx.services.metrics.runs.recent()) recent.push_back(run_json(r));
    return done(ok(json::object{{"running", std::move(running)}, {"recent", std::move(recent)}}));
  }

  if (rest == "stats") {
    if (req.method != "GET") return done(method_not_allowed("GET"));
    return done(ok(admin_stats(ctx)));
  }

  if (rest == "disconnect" || rest == "unsubscribe") {
    if (req.method != "POST") return done(method_not_allowed("POST"));
    if (!ctx.admin) return done(json_error(503, "unavailable", "introspection is not available"));
    auto body = body_object(req);
    if (!body) return done(json_error(400, "invalid_payload", "the body must be a JSON object"));
    std::uint64_t conn = 0;
    if (const json::value* c = body->if_contains("connection_id")) {
      if (!c->is_int64() || c->as_int64() < 1) {
        return done(json_error(400, "invalid_payload", "connection_id must be a positive integer"));
      }
      conn = static_cast<std::uint64_t>(c->as_int64());
    }
    if (rest == "unsubscribe") {
      const json::value* t = body->if_contains("topic");
      if (!conn || !t || !t->is_string()) {
        return done(json_error(400, "invalid_payload", "give connection_id and topic"));
      }
      std::string topic(t->as_string());
      ctx.admin->unsubscribe(conn, topic, [done, conn, topic](bool left) {
        if (!left) return done(json_error(404, "not_found", "that connection has not joined that topic"));
        done(ok(json::object{{"connection_id", conn}, {"topic", topic}, {"unsubscribed", true}}));
      });
      return;
    }
    ConnectionMatch match;
    match.connection_id = conn;
    if (const json::value* k = body->if_contains("key_id")) {
      if (!k->is_string() || k->as_string().empty()) {
        return done(json_error(400, "invalid_payload", "key_id must be a non-empty string"));
      }
      match.key_id = std::string(k->as_string());
    }
    if (!conn && match.key_id.empty()) return done(json_error(400, "invalid_payload", "give connection_id or key_id"));
    ctx.admin->disconnect(std::move(match), [done](std::size_t n) {
      done(ok(json::object{{"disconnected", n}}));
    });
    return;
  }
  done(json_error(404, "not_found", "no such admin endpoint"));
}

HttpResponse dashboard(const HttpRequest& req, std::string_view path) {
  if (req.method != "GET" && req.method != "HEAD") return method_not_allowed("GET");
  const DashboardAsset* a = find_dashboard_asset(path);
  if (!a) return json_error(404, "not_found", "no such dashboard file");
  HttpResponse r;
  r.content_type = std::string(a->content_type);
  r.body = std::string(a->bytes);
  // The page holds no data (it asks the admin API, with the admin's
  // credential, for everything), and it may only run its own scripts.
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
                         "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  r.headers.emplace_back("Cache-Control", "no-cache");
  return r;
}

}  // namespace

json::object admin_stats(HttpContext& ctx) {
  const auto& m = ctx.services.metrics;
  auto v = [](const metrics::Counter& c) { return c.load(std::memory_order_relaxed); };
  json::object refusals;
  for (std::size_t i = 0; i < m.refusals.size(); ++i) {
    refusals[metrics::refusal_name(static_cast<metrics::Refusal>(i))] = v(m.refusals[i]);
  }
  json::object rate_limited{{"messages", v(m.rate_limited[0])}, {"queries", v(m.rate_limited[1])}};
  std::uint64_t slow = 0;
  for (std::size_t i = 0; i < metrics::tracked_close_codes.size(); ++i) {
    if (metrics::tracked_close_codes[i] == 4008) slow = v(m.closes[i]);
  }
  const auto p = metrics::read_process_stats();
  const auto b = ctx.services.broker.stats();
  auto hist = [](const metrics::Histogram& h) {
    return json::object{{"count", h.count()},
                        {"p50_us", h.quantile_us(0.5)},
                        {"p99_us", h.quantile_us(0.99)},
                        {"sum_us", h.sum_us()}};
  };
  return json::object{
      {"ts_ms", unix_ms()},
      {"connections_open", m.connections_open.load(std::memory_order_relaxed)},
      {"connections_total", v(m.connections_total)},
      {"frames_in_total", v(m.frames_in)},
      {"frames_out_total", v(m.frames_out)},
      {"publishes_total", v(m.publishes)},
      {"deliveries_total", v(m.deliveries)},
      {"joins_total", m.join_latency.count()},
      {"refusals", std::move(refusals)},
      {"rate_limited", std::move(rate_limited)},
      {"slow_consumer_closes_total", slow},
      {"runs_active", m.runs_active.load(std::memory_order_relaxed)},
      {"topics", b.topics},
      {"members", b.members},
      {"history_messages", b.history_messages},
      {"fanout_latency", hist(m.fanout_latency)},
      {"join_latency", hist(m.join_latency)},
      {"run_duration", hist(m.run_duration)},
      {"process", json::object{{"rss_bytes", p.rss_bytes},
                               {"open_fds", p.open_fds},
                               {"cpu_seconds", p.cpu_seconds},
                               {"threads", p.threads}}},
  };
}

void handle_http_async(const HttpRequest& req, HttpContext& ctx, HttpDone done) {
  RequestTarget target;
  if (parse_target(req.target, target)) {
    if (target.path.starts_with(admin_prefix)) {
      metrics::bump(ctx.services.metrics.http_requests);
      try {
        admin(req, ctx, target, done);
      } catch (const std::exception& e) {
        // Only the synchronous part can throw here (a store error while
        // checking the credential): nothing was answered yet.
        spdlog::error("admin {} {} failed: {}", req.method, target.path, e.what());
        done(json_error(503, "unavailable", "the server could not complete this request; retry later"));
      }
      return;
    }
    if (target.path == "/dashboard" || target.path.starts_with("/dashboard/")) {
      metrics::bump(ctx.services.metrics.http_requests);
      return done(dashboard(req, target.path));
    }
  }
  HttpResponse resp;
  try {
    if (handle_http_deferred(req, ctx, done)) return;
    resp = handle_http(req, ctx);
  } catch (const std::exception& e) {
    // A store error (SQLite) or any other failure ends this request only.
    spdlog::error("http {} {} failed: {}", req.method, req.target, e.what());
    resp = json_error(503, "unavailable", "the server could not complete this request; retry later");
  }
  done(std::move(resp));
}

}  // namespace synapse::net
