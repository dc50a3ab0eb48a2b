#include "channels/mcp_endpoint.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>

#include "auth/authenticator.hpp"
#include "core/crypto.hpp"
#include "auth/jwks.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/agent_hub.hpp"
#include "cortex/arg_schema.hpp"
#include "cortex/cortex.hpp"
#include "cortex/runs.hpp"
#include "channels/rates.hpp"
#include "limits/rate_limiter.hpp"
#include "metrics/metrics.hpp"
#include "protocol/envelope.hpp"

namespace synapse::channels {
namespace json = boost::json;

namespace {

constexpr std::string_view latest_version = "2025-06-18";
// Revisions whose Streamable HTTP rules match what is served here.
constexpr std::array<std::string_view, 2> supported_versions = {"2025-06-18", "2025-03-26"};

// JSON-RPC 2.0 and MCP error codes.
constexpr int parse_error = -32700;
constexpr int invalid_request = -32600;
constexpr int method_not_found = -32601;
constexpr int invalid_params = -32602;
constexpr int internal_error = -32603;
// Server-defined (-32000..-32099): a limit refused the call (data.reason
// says which), and the session is unknown (the code the MCP SDKs use).
constexpr int limit_refused = -32000;
constexpr int session_not_found = -32001;
// Progress notifications are skipped while this much of a call's stream
// waits for a slow reader: progress is a level, the next one says it all,
// and a tool that reports fast must not grow the queue without bound.
constexpr std::size_t max_queued_progress_bytes = 256 * 1024;

bool supported(std::string_view v) {
  return std::find(supported_versions.begin(), supported_versions.end(), v) != supported_versions.end();
}

// Whether an Accept header lists `type` (or a wildcard covering it).
// Parameters (;q=...) are ignored: a client that lists a type accepts it.
bool accepts(std::string_view accept, std::string_view type) {
  const std::string_view major = type.substr(0, type.find('/'));
  while (!accept.empty()) {
    const auto comma = accept.find(',');
    std::string_view item = accept.substr(0, comma);
    item = item.substr(0, item.find(';'));
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    auto ieq = [](std::string_view a, std::string_view b) {
      return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
             });
    };
    if (item == "*/*" || ieq(item, type)) return true;
    if (item.size() == major.size() + 2 && ieq(item.substr(0, major.size()), major) &&
        item.substr(major.size()) == "/*") {
      return true;
    }
    if (comma == std::string_view::npos) break;
    accept.remove_prefix(comma + 1);
  }
  return false;
}

json::object rpc_error_object(const json::value& id, int code, std::string_view message,
                              std::optional<json::value> data = std::nullopt) {
  json::object err{{"code", code}, {"message", message}};
  if (data) err["data"] = std::move(*data);
  return json::object{{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(err)}};
}

McpReply http_error(int status, int code, std::string_view message, const json::value& id = nullptr) {
  McpReply r;
  r.status = status;
  r.body = json::serialize(rpc_error_object(id, code, message));
  return r;
}

McpReply rpc_result(const json::value& id, json::value result) {
  McpReply r;
  r.body = json::serialize(json::object{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
  return r;
}

McpReply rpc_error(const json::value& id, int code, std::string_view message,
                   std::optional<json::value> data = std::nullopt) {
  McpReply r;
  r.body = json::serialize(rpc_error_object(id, code, message, std::move(data)));
  return r;
}

// A tool's result as an MCP CallToolResult. A result that already is one
// (an MCP server's tool bridged through the registry returns its content
// items as given), or a bare array of content items, passes through; any
// other value is one text item holding its JSON, plus structuredContent
// when it is an object.
bool content_items(const json::array& items) {
  return !items.empty() && std::all_of(items.begin(), items.end(), [](const json::value& v) {
    return v.is_object() && v.get_object().contains("type") && v.get_object().at("type").is_string();
  });
}

json::object tool_result(json::value data) {
  // A bare list of content items (what an MCP tool answered) is its content.
  if (auto* a = data.if_array(); a && content_items(*a)) return json::object{{"content", std::move(*a)}};
  if (auto* o = data.if_object()) {
    if (const auto* c = o->if_contains("content"); c && c->is_array()) {
      if (content_items(c->get_array())) {
        json::object out{{"content", *c}};
        if (const auto* s = o->if_contains("structuredContent"); s && s->is_object()) out["structuredContent"] = *s;
        if (const auto* e = o->if_contains("isError"); e && e->is_bool()) out["isError"] = *e;
        return out;
      }
    }
  }
  json::object out{{"content", json::array{json::object{{"type", "text"}, {"text", json::serialize(data)}}}}};
  if (data.is_object()) out["structuredContent"] = std::move(data);
  return out;
}

json::object error_result(std::string_view text) {
  return json::object{{"content", json::array{json::object{{"type", "text"}, {"text", text}}}}, {"isError", true}};
}

// A progress number as a client expects to see it: 3, not 3E0 (Boost.JSON
// prints every double with an exponent).
json::value plain_number(const json::value& v) {
  if (v.is_double()) {
    const double d = v.get_double();
    if (d == static_cast<double>(static_cast<std::int64_t>(d)) && d > -9.0e15 && d < 9.0e15) {
      return static_cast<std::int64_t>(d);
    }
  }
  return v;
}

struct Owner {
  std::string tenant, agent_id, key_id;
  bool operator==(const Owner&) const = default;
};

}  // namespace

// One tools/call in flight. Created and answered on the thread of the
// exchange that carried it; `ex` is touched only there. The rest is fixed
// at creation, except `client_cancelled` (set by whichever thread took the
// client's notifications/cancelled, before it finishes the run).
struct McpCall {
  std::string session_id;
  std::string key;  // the request id, serialized: the session's index
  json::value id;
  std::optional<json::value> progress_token;
  cortex::RunPtr run;
  std::weak_ptr<McpExchange> ex;
  std::atomic<bool> client_cancelled{false};
};
using McpCallPtr = std::shared_ptr<McpCall>;

struct McpSession {
  std::string id;
  Owner owner;
  std::string protocol_version;
  std::int64_t opened_ms = 0;
  std::int64_t last_active_ms = 0;
  bool initialized = false;
  limits::TokenBucket queries;                 // the caller's query rate, as a connection's
  std::map<std::string, McpCallPtr> calls;     // by serialized request id
  // The session's GET stream (server-to-client messages), when open: the
  // exchange is used only through `listener_post`, on its own thread.
  std::weak_ptr<McpExchange> listener;
  Poster listener_post;
  bool listening = false;
  // The tool list this session's client last heard of (a signature; see
  // tools_signature): a change sends notifications/tools/list_changed.
  std::uint64_t tools_sig = 0;
};
using McpSessionPtr = std::shared_ptr<McpSession>;

struct McpEndpoint::State : std::enable_shared_from_this<McpEndpoint::State> {
  explicit State(Services& s) : services(s) {}

  Services& services;
  mutable std::mutex mu;  // sessions, and every field of every session
  std::map<std::string, McpSessionPtr, std::less<>> sessions;

  const config::Config& cfg() const { return services.config; }

  bool expired_locked(const McpSession& s, std::int64_t now) const {
    return s.calls.empty() && !s.listening && now - s.last_active_ms > cfg().mcp_session_idle_s * 1000;
  }

  // A hash of what tools/list answers a caller now. The registry's part
  // (built-in, MCP servers: it changes when an MCP server's list changes,
  // and availability when it goes down or comes back) is the same for every
  // caller and recomputed at most once a second for every listener
  // together; the agent workers' part (their declared tools come and go with
  // them) is the caller's own and read from the hub each time.
  std::mutex sig_mu;
  std::int64_t sig_at_ms = -1'000'000;
  std::uint64_t registry_sig = 0;
  static std::uint64_t fnv(std::string_view text, std::uint64_t h = 1469598103934665603ull) {
    for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;  // FNV-1a
    return h;
  }
  std::uint64_t tools_signature(const Owner& who) {
    std::uint64_t h = 0;
    {
      std::lock_guard lock(sig_mu);
      const std::int64_t now = mono_ms();
      if (now - sig_at_ms >= 1000) {
        registry_sig = fnv(json::serialize(registry_tools()));
        sig_at_ms = now;
      }
      h = registry_sig;
    }
    return fnv(json::serialize(worker_tools(who)), h);
  }
  void open_listener(const McpSessionPtr& s, const std::shared_ptr<McpExchange>& ex, const Poster& post);
  void tick_listener(const McpSessionPtr& s);
  // Ends a session's GET stream, on its thread (from any thread).
  void close_listener_locked(McpSession& s);

  void purge_locked(std::int64_t now) {
    std::erase_if(sessions, [&](const auto& kv) {
      if (!expired_locked(*kv.second, now)) return false;
      spdlog::info("mcp session {} expired (idle for {} s)", kv.first.substr(0, 8), cfg().mcp_session_idle_s);
      return true;
    });
  }

  // The caller's live session, or null (unknown, expired, or another
  // caller's: all three are "not found" to the client).
  McpSessionPtr find(std::string_view id, const Owner& owner) {
    std::lock_guard lock(mu);
    auto it = sessions.find(id);
    if (it == sessions.end()) return nullptr;
    const std::int64_t now = unix_ms();
    if (expired_locked(*it->second, now)) {
      sessions.erase(it);
      return nullptr;
    }
    if (!(it->second->owner == owner)) return nullptr;
    it->second->last_active_ms = now;
    return it->second;
  }

  // Removes a finished or abandoned call from its session's index.
  void forget(const McpCall& call) {
    std::lock_guard lock(mu);
    auto it = sessions.find(call.session_id);
    if (it == sessions.end()) return;
    auto c = it->second->calls.find(call.key);
    if (c != it->second->calls.end() && c->second.get() == &call) it->second->calls.erase(c);
    it->second->last_active_ms = unix_ms();
  }

  void handle(const McpHttpRequest& req, const std::shared_ptr<McpExchange>& ex, Poster post, bool jwks_refreshed);
  void handle_post(const McpHttpRequest& req, const auth::Principal& who, const std::shared_ptr<McpExchange>& ex,
                   const Poster& post);
  void initialize(const json::object& msg, const auth::Principal& who, const std::shared_ptr<McpExchange>& ex);
  void notification(const std::string& method, const json::object& msg, McpSession& session);
  void call_tool(const json::value& id, const json::object& params, const auth::Principal& who,
                 const McpSessionPtr& session, const std::shared_ptr<McpExchange>& ex, const Poster& post,
                 std::uint64_t conn_id);
  void on_event(const McpCallPtr& call, const cortex::RunEventPtr& ev);
  void watch_disconnect(const std::shared_ptr<McpExchange>& ex, const McpCallPtr& call);
  void end_session(const McpSessionPtr& s, std::string_view why);
  // tools/list for a caller: the registry's tools, then its agent's workers'.
  json::array list_tools(const Owner& who) const;
  json::array registry_tools() const;
  json::array worker_tools(const Owner& who) const;
  cortex::Run::OnEnd count_start();
  void record_start(const auth::Principal& who, std::uint64_t conn, const cortex::Run& run);
};

namespace {

Owner owner_of(const auth::Principal& p) { return Owner{p.tenant, p.agent_id, p.key_id}; }


McpHeaders session_header(const std::string& id) { return McpHeaders{{"Mcp-Session-Id", id}}; }

}  // namespace

McpEndpoint::McpEndpoint(Services& services) : state_(std::make_shared<State>(services)) {}

McpEndpoint::~McpEndpoint() = default;

std::size_t McpEndpoint::session_count() const {
  std::lock_guard lock(state_->mu);
  return state_->sessions.size();
}

void McpEndpoint::shutdown() {
  std::vector<McpCallPtr> calls;
  {
    std::lock_guard lock(state_->mu);
    for (const auto& [id, s] : state_->sessions) {
      for (const auto& [k, c] : s->calls) calls.push_back(c);
      state_->close_listener_locked(*s);
    }
  }
  for (const auto& c : calls) c->run->finish(cortex::RunEnd::interrupted, json::object{{"reason", "server_shutdown"}});
}

void McpEndpoint::handle(const McpHttpRequest& req, const std::shared_ptr<McpExchange>& ex, Poster post) {
  state_->handle(req, ex, std::move(post), false);
}

// Contract: every request is authenticated on its own (the session is bound
// to the credential's tenant, agent and key, and a revoked key is refused at
// its next request), then routed by HTTP method. It answers through `ex`
// exactly once, except for a token signed with a key the identity
// provider's set does not hold yet: then the set is refreshed (never on this
// thread) and the request judged again through `post`, once.
void McpEndpoint::State::handle(const McpHttpRequest& req, const std::shared_ptr<McpExchange>& ex, Poster post,
                                bool jwks_refreshed) {
  if (!jwks_refreshed) metrics::bump(services.metrics.http_requests);
  const std::string_view credential = auth::bearer(req.authorization);
  auto unauthorized = [&](std::string_view why) {
    McpReply r = http_error(401, invalid_request, why);
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"synapse\"");
    ex->reply(std::move(r));
  };
  if (credential.empty()) return unauthorized("send Authorization: Bearer <api key or token>");
  auth::AuthResult auth;
  try {
    auth = auth::authenticate(credential, services.keys, services.jwt_secret, services.idp, unix_s());
  } catch (const std::exception& e) {
    spdlog::error("mcp: key store failed: {}", e.what());
    McpReply r = http_error(503, internal_error, "the key store is unavailable; retry later");
    r.headers.emplace_back("Retry-After", "1");
    return ex->reply(std::move(r));
  }
  if (auth.unknown_kid && services.idp && !jwks_refreshed) {
    services.idp->keys.refresh_for_unknown([self = shared_from_this(), req, ex, post]() {
      post([self, req, ex, post] { self->handle(req, ex, post, true); });
    });
    return;
  }
  if (!auth.ok()) return unauthorized(auth.message);
  const auth::Principal& who = auth.principal;
  if (who.worker) {
    // A worker credential serves its agent on agent: topics and calls tools
    // only for the runs it is given (docs/protocol.md section 10), never as a client.
    return ex->reply(http_error(403, invalid_request, "a worker credential cannot act as an MCP client"));
  }

  if (req.method == "POST") return handle_post(req, who, ex, post);
  if (req.method == "GET" || req.method == "DELETE") {
    if (!req.session_id) return ex->reply(http_error(400, invalid_request, "send the Mcp-Session-Id header"));
    McpSessionPtr s = find(*req.session_id, owner_of(who));
    if (!s) return ex->reply(http_error(404, session_not_found, "Session not found"));
    if (req.method == "DELETE") {
      end_session(s, "deleted by the client");
      McpReply r;
      r.status = 204;
      return ex->reply(std::move(r));
    }
    if (!accepts(req.accept, "text/event-stream")) {
      return ex->reply(http_error(406, invalid_request, "a GET must accept text/event-stream"));
    }
    return open_listener(s, ex, post);
  }
  McpReply r = http_error(405, invalid_request, "use POST (JSON-RPC), GET or DELETE");
  r.headers.emplace_back("Allow", "GET, POST, DELETE");
  ex->reply(std::move(r));
}

// The GET stream: one per session (a second is 409, as the SDKs' own
// servers answer), kept open with nothing on it but
// notifications/tools/list_changed when the tool list changes, checked once
// a second by the network layer's tick. It ends with the session (DELETE),
// at shutdown, or when the client closes it.
void McpEndpoint::State::open_listener(const McpSessionPtr& s, const std::shared_ptr<McpExchange>& ex,
                                       const Poster& post) {
  {
    std::lock_guard lock(mu);
    if (s->listening) {
      McpReply r = http_error(409, invalid_request, "this session already has its GET stream open");
      r.headers = session_header(s->id);
      return ex->reply(std::move(r));
    }
    s->listening = true;
    s->listener = ex;
    s->listener_post = post;
  }
  ex->open_stream(session_header(s->id));
  std::weak_ptr<McpExchange> weak_ex = ex;
  ex->on_disconnect = [weak = weak_from_this(), s, weak_ex] {
    auto self = weak.lock();
    if (!self) return;
    std::lock_guard lock(self->mu);
    if (s->listener.lock() == weak_ex.lock()) {
      s->listening = false;
      s->listener.reset();
      s->listener_post = nullptr;
      s->last_active_ms = unix_ms();
    }
  };
  ex->on_tick = [weak = weak_from_this(), s] {
    if (auto self = weak.lock()) self->tick_listener(s);
  };
}

void McpEndpoint::State::tick_listener(const McpSessionPtr& s) {
  const std::uint64_t now_sig = tools_signature(s->owner);
  std::shared_ptr<McpExchange> ex;
  {
    std::lock_guard lock(mu);
    if (s->tools_sig == now_sig) return;
    s->tools_sig = now_sig;
    ex = s->listener.lock();
  }
  if (ex) ex->send_event(R"({"jsonrpc":"2.0","method":"notifications/tools/list_changed"})");
}

void McpEndpoint::State::close_listener_locked(McpSession& s) {
  if (!s.listening) return;
  s.listening = false;
  if (auto post = std::move(s.listener_post)) {
    post([weak_ex = s.listener] {
      if (auto ex = weak_ex.lock()) {
        ex->on_disconnect = nullptr;
        ex->on_tick = nullptr;
        ex->end_stream();
      }
    });
  }
  s.listener.reset();
  s.listener_post = nullptr;
}

void McpEndpoint::State::end_session(const McpSessionPtr& s, std::string_view why) {
  std::vector<McpCallPtr> calls;
  {
    std::lock_guard lock(mu);
    sessions.erase(s->id);
    close_listener_locked(*s);
    for (auto& [k, c] : s->calls) calls.push_back(c);
    s->calls.clear();
  }
  // Outside the lock: finishing a run fans its end out (to the calls' own
  // exchanges, which then end their streams without an answer).
  for (auto& c : calls) {
    c->client_cancelled = true;
    c->run->finish(cortex::RunEnd::interrupted, json::object{{"reason", "session_ended"}});
  }
  spdlog::info("mcp session {} ended: {}", s->id.substr(0, 8), why);
}

// One JSON-RPC message per POST (2025-06-18 removed batches). Order of the
// checks: Accept and Content-Type, then the JSON, then the session (every
// message but initialize needs one), then the message kind.
void McpEndpoint::State::handle_post(const McpHttpRequest& req, const auth::Principal& who,
                                     const std::shared_ptr<McpExchange>& ex, const Poster& post) {
  if (!accepts(req.accept, "application/json") || !accepts(req.accept, "text/event-stream")) {
    return ex->reply(http_error(406, invalid_request,
                                "the Accept header must list both application/json and text/event-stream"));
  }
  if (!req.content_type.empty() && !accepts(req.content_type, "application/json")) {
    return ex->reply(http_error(415, invalid_request, "the body must be Content-Type: application/json"));
  }
  json::parse_options opts;
  opts.max_depth = 64;
  boost::system::error_code ec;
  json::value v = json::parse(req.body, ec, {}, opts);
  if (ec) return ex->reply(http_error(400, parse_error, "Parse error: the body is not JSON"));
  if (v.is_array()) {
    return ex->reply(http_error(400, invalid_request,
                                "Invalid Request: batches are not supported (protocol 2025-06-18 removed them); "
                                "send one message per POST"));
  }
  if (!v.is_object()) return ex->reply(http_error(400, invalid_request, "Invalid Request: not a JSON-RPC message"));
  if (!protocol::numbers_finite(v)) {
    return ex->reply(http_error(400, parse_error, "Parse error: a number is too large for a double"));
  }
  const json::object& msg = v.get_object();
  json::value id = nullptr;
  const json::value* idv = msg.if_contains("id");
  if (idv) {
    const bool ok = idv->is_string() || idv->is_int64() || idv->is_uint64();
    if (!ok) return ex->reply(http_error(400, invalid_request, "Invalid Request: id must be a string or an integer"));
    id = *idv;
  }
  const json::value* jv = msg.if_contains("jsonrpc");
  if (!jv || !jv->is_string() || jv->get_string() != "2.0") {
    return ex->reply(http_error(400, invalid_request, "Invalid Request: jsonrpc must be \"2.0\"", id));
  }
  const json::value* mv = msg.if_contains("method");
  const bool is_response = !mv && idv && (msg.contains("result") || msg.contains("error"));
  if (!is_response && (!mv || !mv->is_string())) {
    return ex->reply(http_error(400, invalid_request, "Invalid Request: method must be a string", id));
  }
  const std::string method = mv ? std::string(mv->get_string()) : std::string();
  if (const json::value* p = msg.if_contains("params"); p && !p->is_object()) {
    return ex->reply(http_error(400, invalid_request, "Invalid Request: params must be an object", id));
  }
  if (req.protocol_version && !supported(*req.protocol_version)) {
    return ex->reply(http_error(400, invalid_request,
                                fmt::format("unsupported MCP-Protocol-Version {}; this server speaks {}",
                                            *req.protocol_version, latest_version),
                                id));
  }

  if (method == "initialize") {
    if (!idv) return ex->reply(http_error(400, invalid_request, "initialize is a request: give it an id"));
    if (req.session_id) {
      return ex->reply(http_error(400, invalid_request,
                                  "initialize opens a new session: send it without Mcp-Session-Id", id));
    }
    return initialize(msg, who, ex);
  }
  if (!req.session_id) {
    return ex->reply(http_error(400, invalid_request, "send the Mcp-Session-Id header that initialize returned", id));
  }
  McpSessionPtr session = find(*req.session_id, owner_of(who));
  if (!session) return ex->reply(http_error(404, session_not_found, "Session not found", id));

  if (is_response || !idv) {
    // A notification, or an answer to a request of ours (we send none):
    // accepted, nothing to say.
    if (!is_response) notification(method, msg, *session);
    McpReply r;
    r.status = 202;
    r.content_type.clear();
    r.headers = session_header(session->id);
    return ex->reply(std::move(r));
  }

  static const json::object no_params;
  const json::object& params = msg.contains("params") ? msg.at("params").get_object() : no_params;
  McpReply r;
  if (method == "ping") {
    r = rpc_result(id, json::object{});
  } else if (method == "tools/list") {
    r = rpc_result(id, json::object{{"tools", list_tools(owner_of(who))}});
  } else if (method == "tools/call") {
    return call_tool(id, params, who, session, ex, post, req.conn_id);
  } else {
    r = rpc_error(id, method_not_found, "Method not found: " + method);
  }
  r.headers = session_header(session->id);
  ex->reply(std::move(r));
}

void McpEndpoint::State::initialize(const json::object& msg, const auth::Principal& who,
                                    const std::shared_ptr<McpExchange>& ex) {
  const json::value& id = msg.at("id");
  std::string version(latest_version);
  if (const json::value* p = msg.if_contains("params")) {
    if (const json::value* pv = p->get_object().if_contains("protocolVersion"); pv && pv->is_string()) {
      // The client's revision when it is one of ours; else ours, and the
      // client decides whether it can speak it.
      if (supported(pv->get_string())) version = std::string(pv->get_string());
    }
  }
  auto s = std::make_shared<McpSession>();
  s->id = core::hex_encode(core::random_bytes(16));
  s->owner = owner_of(who);
  s->protocol_version = version;
  s->opened_ms = s->last_active_ms = unix_ms();
  s->queries = limits::TokenBucket(query_rate(cfg(), who));
  s->tools_sig = tools_signature(s->owner);  // the list this initialize's client is about to read
  {
    std::lock_guard lock(mu);
    purge_locked(s->opened_ms);
    const auto max_total = cfg().mcp_max_sessions;
    if (max_total > 0 && static_cast<std::int64_t>(sessions.size()) >= max_total) {
      McpReply r = http_error(503, limit_refused, "this server holds the most MCP sessions it allows; retry later", id);
      r.headers.emplace_back("Retry-After", "5");
      return ex->reply(std::move(r));
    }
    const auto max_key = cfg().mcp_max_sessions_per_key;
    if (max_key > 0 && !who.unlimited) {
      // Counted per key, as connections are (net/admission.cpp limit_key): a
      // token counts against the key that minted it; one with no key behind
      // it (an identity provider's) by its tenant and subject.
      auto same_budget = [&](const Owner& o) {
        if (!s->owner.key_id.empty()) return o.key_id == s->owner.key_id;
        return o.key_id.empty() && o.tenant == s->owner.tenant && o.agent_id == s->owner.agent_id;
      };
      const auto n = std::count_if(sessions.begin(), sessions.end(),
                                   [&](const auto& kv) { return same_budget(kv.second->owner); });
      if (n >= max_key) {
        McpReply r = http_error(
            429, limit_refused,
            fmt::format("this key already holds {} MCP sessions (mcp_server.max_sessions_per_key); DELETE one or "
                        "let one expire",
                        n),
            id);
        r.headers.emplace_back("Retry-After", "5");
        return ex->reply(std::move(r));
      }
    }
    sessions.emplace(s->id, s);
  }
  spdlog::info("mcp session {} opened by key={} agent={} (protocol {})", s->id.substr(0, 8), who.key_id,
               who.agent_id, version);
  json::object result{
      {"protocolVersion", version},
      {"capabilities", json::object{{"tools", json::object{{"listChanged", true}}}}},
      {"serverInfo", json::object{{"name", "synapse"}, {"title", "Synapse"}, {"version", "0.1.0"}}},
      {"instructions",
       "Synapse's tools for this agent: memory.* (store, search, forget, stats of this tenant's memories) and "
       "every other tool this server provides. Progress is streamed when the request carries "
       "_meta.progressToken; notifications/cancelled stops a call."}};
  McpReply r = rpc_result(id, std::move(result));
  r.headers = session_header(s->id);
  ex->reply(std::move(r));
}

void McpEndpoint::State::notification(const std::string& method, const json::object& msg, McpSession& session) {
  if (method == "notifications/initialized") {
    std::lock_guard lock(mu);
    session.initialized = true;
    return;
  }
  if (method != "notifications/cancelled") return;  // others (progress, roots...) need nothing from us
  const json::value* p = msg.if_contains("params");
  const json::value* rid = p ? p->get_object().if_contains("requestId") : nullptr;
  if (!rid) return;
  std::string why = "client";
  if (const json::value* r = p->get_object().if_contains("reason"); r && r->is_string() && r->get_string().size() <= 256) {
    why = std::string(r->get_string());
  }
  McpCallPtr call;
  {
    std::lock_guard lock(mu);
    auto it = session.calls.find(json::serialize(*rid));
    if (it == session.calls.end()) return;  // already answered, or never ours: ignored, as the spec says
    call = it->second;
  }
  // The run ends as interrupted; the call's stream then closes without a
  // response (the receiver of a cancellation sends none).
  spdlog::info("mcp session {} call {} (run {}) cancelled by the client ({})", session.id.substr(0, 8), call->key,
               call->run->id(), why);
  call->client_cancelled = true;
  call->run->finish(cortex::RunEnd::interrupted, json::object{{"reason", why}});
}

namespace {

// One `tools` event entry as an MCP Tool.
json::object mcp_tool(const json::object& o) {
  json::object schema = o.at("input_schema").is_object() ? o.at("input_schema").get_object() : json::object{};
  if (!schema.contains("type")) schema["type"] = "object";
  return json::object{{"name", o.at("name")}, {"description", o.at("description")}, {"inputSchema", std::move(schema)}};
}

}  // namespace

json::array McpEndpoint::State::registry_tools() const {
  json::array out;
  for (const auto& t : services.cortex.describe_tools()) {
    const auto& o = t.get_object();
    if (!o.at("available").as_bool()) continue;  // an MCP server restarting: its tools come back with it
    if (o.at("name").as_string() == cortex::debug_crash_tool) continue;  // crashes a WebSocket channel only
    out.push_back(mcp_tool(o));
  }
  return out;
}

json::array McpEndpoint::State::worker_tools(const Owner& who) const {
  json::array out;
  if (!services.hub) return out;
  for (const auto& t : services.hub->describe_tools(who.tenant, who.agent_id)) out.push_back(mcp_tool(t.get_object()));
  return out;
}

json::array McpEndpoint::State::list_tools(const Owner& who) const {
  json::array out = registry_tools();
  for (auto& t : worker_tools(who)) out.push_back(std::move(t));
  return out;
}

// Metrics of a run's start and end, as the cortex channel counts them; the
// end is counted by the run itself, on whichever thread decides it.
cortex::Run::OnEnd McpEndpoint::State::count_start() {
  auto& m = services.metrics;
  m.runs_active.fetch_add(1, std::memory_order_relaxed);
  return [&m](const cortex::Run& r, cortex::RunEnd o) {
    m.run_duration.observe_us((mono_ms() - r.started_mono_ms()) * 1000);
    m.runs_active.fetch_sub(1, std::memory_order_relaxed);
    metrics::RunEnd e = metrics::RunEnd::cancelled;
    switch (o) {
      case cortex::RunEnd::result: e = metrics::RunEnd::result; break;
      case cortex::RunEnd::error: e = metrics::RunEnd::error; break;
      case cortex::RunEnd::interrupted: e = metrics::RunEnd::interrupted; break;
      case cortex::RunEnd::timeout: e = metrics::RunEnd::timeout; break;
      case cortex::RunEnd::cancelled: e = metrics::RunEnd::cancelled; break;
    }
    metrics::bump(m.runs_ended[static_cast<std::size_t>(e)]);
    m.runs.ended(r.id(), metrics::run_end_name(e), unix_ms());
  };
}

void McpEndpoint::State::record_start(const auth::Principal& who, std::uint64_t conn, const cortex::Run& run) {
  metrics::RunRecord rec;
  rec.id = run.id();
  rec.connection_id = conn;
  rec.topic = "mcp";
  rec.ref = run.ref();
  rec.agent_id = who.agent_id;
  rec.started_at_ms = unix_ms();
  services.metrics.runs.started(std::move(rec));
}

// Contract: a tools/call is checked (name, arguments against the tool's
// schema, then the limits a `tool` event passes: the session's running
// calls against limits.max_running, the caller's query rate), becomes a run
// in the node's RunRegistry (so the admin API and `runs` see it, and its
// timeout is cortex.default_timeout_ms), and is started through the tool
// seam. The answer is an SSE stream: a notifications/progress per progress
// event when the request gave _meta.progressToken, then the response, then
// the stream ends. A refusal before the start is a plain JSON answer.
void McpEndpoint::State::call_tool(const json::value& id, const json::object& params, const auth::Principal& who,
                                   const McpSessionPtr& session, const std::shared_ptr<McpExchange>& ex,
                                   const Poster& post, std::uint64_t conn_id) {
  auto answer = [&](McpReply r) {
    r.headers = session_header(session->id);
    ex->reply(std::move(r));
  };
  const json::value* nv = params.if_contains("name");
  if (!nv || !nv->is_string()) return answer(rpc_error(id, invalid_params, "Invalid params: name must be a string"));
  const std::string name(nv->get_string());
  json::object args;
  if (const json::value* av = params.if_contains("arguments"); av && !av->is_null()) {
    if (!av->is_object()) return answer(rpc_error(id, invalid_params, "Invalid params: arguments must be an object"));
    args = av->get_object();
  }
  std::optional<json::value> token;
  if (const json::value* meta = params.if_contains("_meta"); meta && meta->is_object()) {
    if (const json::value* t = meta->get_object().if_contains("progressToken"); t && (t->is_string() || t->is_number())) {
      token = *t;
    }
  }
  // A registry tool (built-in, MCP server), else one a worker of the
  // caller's agent declared (it goes to such a worker, as a `tool` event's).
  const std::shared_ptr<const cortex::Tool> tool =
      name == cortex::debug_crash_tool ? nullptr : services.cortex.find_tool(name);
  std::optional<cortex::ToolSpec> worker_spec;
  if (!tool && services.hub) worker_spec = services.hub->find_worker_tool(who.tenant, who.agent_id, name);
  if (!tool && !worker_spec) return answer(rpc_error(id, invalid_params, "Unknown tool: " + name));
  const json::object& schema = tool ? tool->spec().input_schema : worker_spec->input_schema;
  if (auto errors = cortex::check_args(schema, args); !errors.empty()) {
    json::array list;
    for (const auto& e : errors) {
      // The checker names fields as the `tool` event's payload has them (args.x).
      std::string field = e.field.starts_with("args") ? "arguments" + e.field.substr(4) : e.field;
      list.push_back(json::object{{"field", std::move(field)}, {"message", e.message}});
    }
    return answer(rpc_error(id, invalid_params, "Invalid params: the arguments do not match the tool's inputSchema",
                            json::object{{"errors", std::move(list)}}));
  }
  const std::string key = json::serialize(id);
  {
    std::lock_guard lock(mu);
    if (session->calls.contains(key)) {
      return answer(rpc_error(id, invalid_request, "Invalid Request: a call with this id is still running"));
    }
    const auto max_running = cfg().max_running;
    if (max_running > 0 && static_cast<std::int64_t>(session->calls.size()) >= max_running) {
      return answer(rpc_error(id, limit_refused,
                              fmt::format("at most {} tool calls run at once per session", max_running),
                              json::object{{"reason", "too_many_running"}}));
    }
    const auto take = session->queries.take(limits::Clock::now());
    if (!take.ok) {
      metrics::bump(services.metrics.rate_limited[static_cast<std::size_t>(metrics::RateBucket::queries)]);
      return answer(rpc_error(id, limit_refused, "query rate limit exceeded",
                              json::object{{"reason", "rate_limited"}, {"retry_after_ms", take.retry_after_ms}}));
    }
  }

  cortex::RunRegistry& registry = *services.runs;
  auto run = registry.start("mcp-" + key, "tool", name, who.tenant, who.agent_id, cfg().default_timeout_ms,
                            count_start());
  record_start(who, conn_id, *run);
  auto call = std::make_shared<McpCall>();
  call->session_id = session->id;
  call->key = key;
  call->id = id;
  call->progress_token = token;
  call->run = run;
  call->ex = ex;
  {
    std::lock_guard lock(mu);
    session->calls.emplace(key, call);
  }
  // Every event of the run comes back to this exchange's thread, in order.
  auto attached = run->attach(std::uint64_t{0}, [post, weak = weak_from_this(), call](const cortex::RunEventPtr& ev) {
    post([weak, call, ev] {
      if (auto self = weak.lock()) self->on_event(call, ev);
    });
  });
  // Nothing ran yet, but a timeout could have fired in between: its event
  // is in the backlog, handed over here, behind the stream's opening.
  for (const auto& ev : attached.events) {
    post([weak = weak_from_this(), call, ev] {
      if (auto self = weak.lock()) self->on_event(call, ev);
    });
  }

  if (!tool) {
    cortex::AgentRequest req;
    req.kind = "tool";
    req.tool = name;
    req.args = std::move(args);
    req.caller = cortex::Caller{who.tenant, who.agent_id, who.key_id};
    req.deadline_ms = unix_ms() + cfg().default_timeout_ms;
    ex->open_stream(session_header(session->id));
    watch_disconnect(ex, call);
    if (services.hub->start(req, run) != cortex::AgentBackend::Start::accepted) {
      // No worker free: the run ends at once (an isError result), never a silent wait.
      run->finish(cortex::RunEnd::error,
                  json::object{{"reason", "agent_unavailable"},
                               {"message", "no agent worker of " + who.agent_id + " is free to take this call"}});
    }
    return;
  }
  cortex::ToolCall tc;
  tc.args = std::move(args);
  tc.caller = cortex::Caller{who.tenant, who.agent_id, who.key_id};
  tc.cancel = run->cancel();
  tc.callbacks.progress = [run](double progress, double total, std::string message) {
    json::object update{{"progress", progress}};
    if (total >= 0) update["total"] = total;
    if (!message.empty()) update["message"] = std::move(message);
    run->emit("progress", std::move(update));
  };
  tc.callbacks.done = [run](cortex::ToolOutcome out) {
    using K = cortex::ToolOutcome::Kind;
    if (out.kind == K::result) {
      run->finish(cortex::RunEnd::result, json::object{{"data", std::move(out.data)}});
      return;
    }
    const char* why = out.kind == K::tool_error    ? "tool_error"
                      : out.kind == K::unavailable ? "tool_unavailable"
                                                   : "internal";
    run->finish(cortex::RunEnd::error, json::object{{"reason", why}, {"message", std::move(out.message)}});
  };
  cortex::Admit admit;
  {
    cortex::TokenScope tokens([run](std::string_view delta) { run->emit_token(delta); });
    admit = tool->start(std::move(tc)).admit;
  }
  if (admit != cortex::Admit::accepted) {
    // Refused by the provider's queue: for the client no run existed.
    call->ex.reset();
    forget(*call);
    run->finish(cortex::RunEnd::cancelled, json::object{{"reason", "overloaded"}});
    registry.discard(run->id());
    return answer(rpc_error(id, limit_refused, "the server's run queue is full; retry later",
                            json::object{{"reason", "overloaded"}, {"retry_after_ms", 1000}}));
  }
  ex->open_stream(session_header(session->id));
  watch_disconnect(ex, call);
  spdlog::debug("mcp session {} call {} started run {} ({})", session->id.substr(0, 8), key, run->id(), name);
}

// A client that goes away takes its call with it: without resumable streams
// nobody could receive the answer any more (docs/mcp.md).
void McpEndpoint::State::watch_disconnect(const std::shared_ptr<McpExchange>& ex, const McpCallPtr& call) {
  ex->on_disconnect = [weak = weak_from_this(), call] {
    call->ex.reset();
    if (auto self = weak.lock()) self->forget(*call);
    call->run->finish(cortex::RunEnd::interrupted, json::object{{"reason", "client_disconnected"}});
  };
}

void McpEndpoint::State::on_event(const McpCallPtr& call, const cortex::RunEventPtr& ev) {
  auto ex = call->ex.lock();
  if (!ex) return;
  if (!ev->terminal) {
    if (ev->event != "progress" || !call->progress_token) return;
    if (ex->queued_bytes() > max_queued_progress_bytes) return;
    boost::system::error_code ec;
    json::value p = json::parse(ev->payload, ec);
    if (ec || !p.is_object()) return;
    json::object params{{"progressToken", *call->progress_token},
                        {"progress", plain_number(p.get_object()["progress"])}};
    if (const auto* t = p.get_object().if_contains("total")) params["total"] = plain_number(*t);
    if (const auto* m = p.get_object().if_contains("message")) params["message"] = *m;
    ex->send_event(json::serialize(
        json::object{{"jsonrpc", "2.0"}, {"method", "notifications/progress"}, {"params", std::move(params)}}));
    return;
  }
  call->ex.reset();
  ex->on_disconnect = nullptr;
  forget(*call);
  boost::system::error_code ec;
  json::value pv = json::parse(ev->payload, ec);
  json::object p = !ec && pv.is_object() ? std::move(pv.get_object()) : json::object{};
  auto text = [&](std::string_view k) {
    const json::value* v = p.if_contains(k);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
  };
  std::optional<json::object> response;
  if (ev->event == "result") {
    response = json::object{{"jsonrpc", "2.0"}, {"id", call->id}, {"result", tool_result(std::move(p["data"]))}};
  } else if (ev->event == "error") {
    const std::string why = text("reason");
    const std::string message = text("message");
    if (why == "internal") {
      response = rpc_error_object(call->id, internal_error, "Internal error: " + message);
    } else {
      // tool_error, tool_unavailable, timeout: the tool's failure, for the model to read.
      response = json::object{{"jsonrpc", "2.0"},
                              {"id", call->id},
                              {"result", error_result(why == "tool_error" ? message : why + ": " + message)}};
    }
  } else if (!call->client_cancelled) {
    // Interrupted by someone else (an interrupt over the WebSocket, the
    // server shutting down): the client still waits for an answer.
    response = json::object{{"jsonrpc", "2.0"}, {"id", call->id}, {"result", error_result("interrupted: " + text("reason"))}};
  }
  if (response) ex->send_event(json::serialize(*response));
  ex->end_stream();
}

}  // namespace synapse::channels
