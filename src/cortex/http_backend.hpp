// A streaming HTTP agent backend (`backend = "http"`, docs/protocol.md
// section 10 "HTTP backends"): each run is one POST of the worker
// protocol's `run` payload to the route's URL; the answer streams back as
// NDJSON or server-sent events, one worker event a line, and each is applied
// to the run as a worker's would be (apply_agent_event). There is no back
// channel: `call_tool` is not available to an HTTP backend.
//
// Threads. start() runs on an I/O thread and only hands the request to the
// HTTP client (hooks::HttpClient, its own thread); every callback of the
// exchange, and so every event applied to the run, runs on the client's
// thread. Interrupt and timeout end the run elsewhere (Run::finish), which
// fires the run's cancel token; its hook only posts the close to the
// client's thread, and the backend sees its connection close.
//
// Bounds. A line (an NDJSON line, or an SSE event's data) longer than
// max_line_bytes, a response body past max_response_bytes, more malformed
// events than bad_event_budget, silence past idle_timeout, a non-2xx status,
// a connection that cannot be made and an answer that ends without a
// terminal event each end the run with `error` `agent_unavailable`.
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cortex/agent_backend.hpp"
#include "hooks/http_client.hpp"

namespace synapse::cortex {

// Splits a streamed answer into worker events: pure, so that it is tested on
// its own. NDJSON: one JSON object per line (LF or CRLF; blank lines are
// heartbeats). SSE: `data:` lines gathered until a blank line; lines
// starting with ':' are comments (heartbeats); `event:` names the event when
// the data's object has no "event" of its own; `id:` and `retry:` are
// ignored; CR, LF and CRLF all end a line.
class AgentStreamParser {
 public:
  enum class Format { ndjson, sse };
  // The format a Content-Type names: SSE for text/event-stream, else NDJSON.
  static Format format_for(std::string_view content_type);

  AgentStreamParser(Format format, std::size_t max_line_bytes) : format_(format), max_line_(max_line_bytes) {}

  using OnEvent = std::function<void(boost::json::object)>;
  using OnBad = std::function<void(std::string why)>;
  // Feeds the next bytes of the body. `on_event` gets each complete object,
  // `on_bad` each line or event that is not one. Returns false, and takes
  // nothing more, once a line exceeds the bound.
  bool feed(std::string_view bytes, const OnEvent& on_event, const OnBad& on_bad);
  // The body ended: an NDJSON line without its newline still counts; an SSE
  // event without its closing blank line is dropped, as the SSE spec says.
  void finish(const OnEvent& on_event, const OnBad& on_bad);
  bool overflowed() const noexcept { return overflowed_; }

 private:
  void line(std::string_view l, const OnEvent& on_event, const OnBad& on_bad);
  void dispatch_sse(const OnEvent& on_event, const OnBad& on_bad);
  void object(std::string_view text, const OnEvent& on_event, const OnBad& on_bad);

  Format format_;
  std::size_t max_line_;
  std::string partial_;   // the current line so far
  bool after_cr_ = false;  // SSE: the last byte fed was a CR (a LF next belongs to it)
  std::string data_;      // SSE: the current event's data lines
  bool has_data_ = false;
  std::string event_name_;  // SSE: the current event's `event:` field
  bool overflowed_ = false;
};

struct HttpBackendOptions {
  std::string url;  // http://HOST[:PORT][/PATH]
  std::vector<std::pair<std::string, std::string>> headers;  // sent with every POST
  // When set (main passes `hooks.secret`): each POST carries
  // `X-Synapse-Signature: sha256=<hex HMAC-SHA256 of the body>`, as the hooks do,
  // so the backend can tell Synapse's requests from anyone else's.
  std::string secret;
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds idle_timeout{30000};
  std::size_t max_line_bytes = 256 * 1024;
  std::size_t max_response_bytes = 8 << 20;
  int bad_event_budget = 3;  // malformed events skipped; one more ends the run
};

class HttpBackend final : public AgentBackend {
 public:
  // Throws std::invalid_argument when options.url is not an http:// URL
  // (main checks routes at start, so a bad one never serves).
  HttpBackend(hooks::HttpClient& client, HttpBackendOptions options);
  // With an HTTP client (a thread) of its own: what main makes per route, so
  // that one slow agent backend never delays the hooks' or another route's.
  explicit HttpBackend(HttpBackendOptions options);
  Start start(const AgentRequest& req, const RunPtr& run) override;
  const HttpBackendOptions& options() const noexcept { return options_; }

 private:
  std::unique_ptr<hooks::HttpClient> own_client_;  // declared first: destroyed last
  hooks::HttpClient& client_;
  HttpBackendOptions options_;
  hooks::HttpUrl url_;
};

}  // namespace synapse::cortex
