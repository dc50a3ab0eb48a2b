// The plain HTTP endpoints (protocol section 6), free of any socket type:
// a request struct in, a response struct out.
#pragma once

#include <atomic>
#include <boost/json/object.hpp>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "metrics/metrics.hpp"

namespace synapse::config {
struct Config;
}
namespace synapse::channels {
struct Services;
class McpEndpoint;
}
namespace synapse::limits {
class ConnectionLimiter;
class AcceptGate;
}

namespace synapse::net {

class AdminBackend;
class TlsContext;

struct HttpContext {
  const config::Config& config;
  channels::Services& services;
  limits::ConnectionLimiter& limiter;
  const std::atomic<bool>& draining;
  // Gauges only the server knows (threads, queues), added to /metrics.
  std::function<std::vector<metrics::Sample>()> extra_samples;
  // In a cluster: whether the link to Redis is up (empty on a single node).
  std::function<bool()> backplane_up;
  // Open sockets counted from accept (set by main; null in unit tests).
  limits::AcceptGate* accept_gate = nullptr;
  // The I/O threads' connections, for the admin API (set by main; null in unit tests).
  AdminBackend* admin = nullptr;
  // POST/GET/DELETE /mcp (set by main when mcp_server.enabled; null: 404).
  channels::McpEndpoint* mcp = nullptr;
  // Set by main when server.tls_cert is: every socket of the listener is
  // served over TLS with the certificate it holds (null: plain).
  TlsContext* tls = nullptr;
  // /mcp answers streaming now (SSE): a drain waits for them too.
  std::atomic<std::int64_t> open_streams{0};
};

struct HttpRequest {
  std::string method;
  std::string target;
  std::string authorization;
  std::string body;
  std::optional<std::string> origin;  // for CORS on /api/token
  std::string host;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// {"error": code, "reason": text}
HttpResponse json_error(int status, std::string_view code, std::string_view reason);

HttpResponse handle_http(const HttpRequest& req, HttpContext& ctx);

// Every request goes through here (admin_api.cpp): the admin API and the
// dashboard's files, else handle_http. `done` is called exactly once, maybe
// later and on another thread (admin answers gathered from the I/O threads).
using HttpDone = std::function<void(HttpResponse)>;
void handle_http_async(const HttpRequest& req, HttpContext& ctx, HttpDone done);
// The routes whose answer waits on a remote broker (a cluster's Redis):
// POST /api/broadcast (answered when Redis confirms the publish) and GET
// /api/presence/<topic> (when the presence is read from Redis). Returns
// true when it took the request: `done` is then called exactly once, maybe
// later and on another thread (the link's); the calling thread never
// waits. False for any other request, and whenever the broker answers at
// once (a single node): handle_http answers those. May throw, before
// taking the request, like handle_http (a key store error).
bool handle_http_deferred(const HttpRequest& req, HttpContext& ctx, const HttpDone& done);
// The dashboard's live numbers (GET /api/admin/stats).
boost::json::object admin_stats(HttpContext& ctx);

}  // namespace synapse::net
