// Synapse as an MCP server: the protocol side of the MCP Streamable HTTP
// transport (protocol revision 2025-06-18) on /mcp (docs/mcp.md).
//
// Why here, in channels/: like the cortex channel, this is a protocol
// adapter in front of the services (auth, cortex tools, runs, limits). It
// speaks JSON-RPC 2.0 instead of Phoenix frames and knows nothing of
// sockets: the network layer (net/http_session.cpp) parses HTTP, checks the
// Origin, and hands each request here with an McpExchange through which the
// answer leaves, either whole or as a Server-Sent Events stream.
//
// Threads. handle() runs on the I/O thread of the HTTP connection that
// carried the request, and every use of that request's exchange stays on it:
// tool progress and outcomes, reported from workers or an MCP child's thread,
// reach it through the run's fan-out and the connection's Poster. The
// session table is shared by every I/O thread (the requests of one session
// may come on different connections): one mutex guards it and every
// session's fields, held only for map and field operations, never while a
// run is finished or a tool started.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/poster.hpp"

namespace synapse::channels {

struct Services;

// What the endpoint reads of an HTTP request to /mcp.
struct McpHttpRequest {
  std::string method;  // POST, GET, DELETE, ...
  std::string authorization;
  std::string accept;
  std::string content_type;
  std::optional<std::string> session_id;        // Mcp-Session-Id
  std::optional<std::string> protocol_version;  // MCP-Protocol-Version
  std::string body;
  std::uint64_t conn_id = 0;  // the HTTP connection, for logs and the admin API's runs
};

using McpHeaders = std::vector<std::pair<std::string, std::string>>;

struct McpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  McpHeaders headers;
};

// One HTTP exchange, implemented by the network layer; used only on its
// connection's thread. Exactly one of: reply() once, or open_stream() then
// any number of send_event() and one end_stream().
class McpExchange {
 public:
  virtual ~McpExchange() = default;
  virtual void reply(McpReply r) = 0;
  // 200 with Content-Type text/event-stream (and `headers`), kept open.
  virtual void open_stream(McpHeaders headers) = 0;
  // One SSE `message` event whose data is `json` (one line).
  virtual void send_event(std::string json) = 0;
  // The last event was sent: the response ends (the connection is kept).
  virtual void end_stream() = 0;
  // Bytes of this stream not yet written to the socket (a slow reader).
  virtual std::size_t queued_bytes() const = 0;

  // Set by the endpoint while a stream is open; run by the network layer,
  // on this thread, when the client goes away before end_stream().
  std::function<void()> on_disconnect;
  // Set by the endpoint on a long-lived stream; run by the network layer,
  // on this thread, about once a second while the stream is open.
  std::function<void()> on_tick;
};

class McpEndpoint {
 public:
  explicit McpEndpoint(Services& services);
  ~McpEndpoint();
  McpEndpoint(const McpEndpoint&) = delete;
  McpEndpoint& operator=(const McpEndpoint&) = delete;

  // Answers one request (see the class comment for threads). `post` runs a
  // task on the calling thread later.
  void handle(const McpHttpRequest& req, const std::shared_ptr<McpExchange>& ex, Poster post);
  // Sessions open now (metrics, tests).
  std::size_t session_count() const;
  // Server shutdown (any thread): every call in flight ends as interrupted
  // with reason server_shutdown, which its stream answers before closing;
  // GET streams end.
  void shutdown();

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace synapse::channels
