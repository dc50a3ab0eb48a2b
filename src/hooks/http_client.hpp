// A small asynchronous HTTP/1.1 client (plain http://) on a thread of its
// own, for the identity provider's JWKS and the backend hooks. No caller
// ever waits on the network: request() returns at once and `done` runs on
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

class HttpClient {
 public:
  HttpClient();
  ~HttpClient();  // stops the thread; requests still running end with an error first
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  using Done = std::function<void(ClientResponse)>;
  // Safe from any thread. `done` runs exactly once, on the client's thread.
  void request(ClientRequest req, Done done);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace synapse::hooks
