// A small asynchronous HTTP/1.1 client (plain http://) on a thread of its
// own, for the identity provider's JWKS, the backend hooks and the streaming
// HTTP agent backends (cortex/http_backend.*). No caller ever waits on the
// network: request() and stream() return at once and their callbacks run on
// the client's thread when the answer, an error or the timeout comes, so a
// caller on an I/O thread posts the result back to itself.
//
// Beast and Asio stay inside http_client.cpp; this header has no socket type.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace synapse::hooks {

struct HttpUrl {
  std::string host;
  std::string port = "80";
  std::string target = "/";
};
// http://HOST[:PORT][/PATH]; nullopt (with `why`) for anything else, https included.
std::optional<HttpUrl> parse_http_url(std::string_view url, std::string* why = nullptr);

struct ClientRequest {
  std::string method = "GET";
  HttpUrl url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string content_type = "application/json";
  std::chrono::milliseconds timeout{2000};
  std::size_t max_body_bytes = 1 << 20;
};

struct ClientResponse {
  bool ok = false;  // a complete response arrived (any status)
  int status = 0;
  std::string body;
  std::string error;  // when !ok: "timeout", "connection refused", ...
  bool timed_out = false;
};

// A request whose response body is handed over as it arrives (chunked
// transfer coding decoded, or Content-Length, or read to the close), for an
// answer that streams: NDJSON or server-sent events.
struct StreamRequest {
  std::string method = "POST";
  HttpUrl url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string content_type = "application/json";
  std::chrono::milliseconds connect_timeout{2000};  // resolve + connect + send
  std::chrono::milliseconds idle_timeout{30000};    // longest silence while reading
  std::chrono::milliseconds total_timeout{300000};  // the whole exchange
  std::size_t max_body_bytes = 8 << 20;             // body bytes, after chunk decoding
};

struct StreamEnd {
  enum class Why {
    complete,     // the whole response arrived
    cancelled,    // StreamHandle::cancel() or a callback said stop
    connect,      // could not resolve, connect or send (`error` says which)
    timeout,      // connect, idle or total timeout (`error` says which)
    too_large,    // more than max_body_bytes
    bad_response  // not HTTP, or the connection broke mid-response
  };
  Why why = Why::complete;
  std::string error;
};

// Callbacks of a stream, all on the client's thread. `headers` runs once
// (status and Content-Type) before any `data`; returning false from either
// stops the exchange (then `end` says cancelled). `end` runs exactly once,
// last, also when the connection never came up (then without `headers`).
struct StreamCallbacks {
  std::function<bool(int status, std::string content_type)> headers;
  std::function<bool(std::string_view bytes)> data;
  std::function<void(StreamEnd)> end;
};

// Cancels a stream from any thread: the connection is closed on the
// client's thread (the peer sees it close) and `end` runs with `cancelled`,
// unless the stream had already ended. Never blocks; safe after the client
// is gone.
class StreamHandle {
 public:
  virtual ~StreamHandle() = default;
  virtual void cancel() = 0;
};

class HttpClient {
 public:
  HttpClient();
  ~HttpClient();  // stops the thread; requests still running end with an error first
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  using Done = std::function<void(ClientResponse)>;
  // Safe from any thread. `done` runs exactly once, on the client's thread.
  void request(ClientRequest req, Done done);
  // Safe from any thread; the exchange starts on the client's thread.
  std::shared_ptr<StreamHandle> stream(StreamRequest req, StreamCallbacks callbacks);

  struct Impl;  // opaque (defined in the .cpp, where the stream handles use it too)

 private:
  // Shared with the stream handles, so that a late cancel() after the client
  // stopped posts into a stopped io_context instead of a destroyed one.
  std::shared_ptr<Impl> impl_;
};

}  // namespace synapse::hooks
