#include "net/http_session.hpp"

#include <sys/socket.h>

#include <cerrno>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <array>
#include <cstdio>
#include <cstring>
#include <list>
#include <optional>
#include <string_view>
#include <spdlog/spdlog.h>

#include "core/crypto.hpp"
#include "channels/mcp_endpoint.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "net/admission.hpp"
#include "net/http_api.hpp"
#include "net/http_stream.hpp"
#include "net/io_thread.hpp"
#include "net/request_parser.hpp"
#include "net/request_target.hpp"
#include "net/ws_connection.hpp"
#include "wire/deflate.hpp"
#include "protocol/close_codes.hpp"

namespace synapse::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t max_header_bytes = 16 * 1024;
constexpr std::size_t max_body_bytes = 1 << 20;
constexpr std::size_t max_trailer_bytes = 4 * 1024;
constexpr std::int64_t pressure_handshake_timeout_ms = 1000;
// What the read buffer may hold at once: a request's head (16 KiB) or a
// chunked body's trailer section must fit; body bytes pass through it. A
// bounded buffer is what stops a trailer that never ends.
constexpr std::size_t max_buffered_bytes = 64 * 1024;
// The one path that upgrades (protocol section 1); phoenix.js appends
// "/websocket" to the endpoint the application gives it ("/cortex").
constexpr std::string_view websocket_path = "/cortex/websocket";
constexpr std::string_view ws_guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
// The MCP Streamable HTTP endpoint (docs/mcp.md).
constexpr std::string_view mcp_path = "/mcp";
// An SSE answer with nothing to say for this long gets a comment line, so
// that clients and proxies with read timeouts keep it.
constexpr std::int64_t sse_keepalive_ms = 15'000;
constexpr std::chrono::seconds sse_tick{1};
// What a client may pipeline behind a request while its SSE answer streams.
constexpr std::size_t max_pipelined_bytes = 16 * 1024;

bool header_has_token(std::string_view value, std::string_view token) {
  // Comma-separated, case-insensitive tokens (Connection: keep-alive, Upgrade).
  while (!value.empty()) {
    auto comma = value.find(',');
    auto item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (beast::iequals(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

class HttpSession;

// The MCP endpoint's view of one request on this connection. It holds the
// session strongly until a stream opens (the answer may come after an
// asynchronous step: a JWKS refresh), weakly afterwards, when the session
// holds it instead (so the session can report a disconnect to it).
class McpHttpExchange final : public channels::McpExchange, public std::enable_shared_from_this<McpHttpExchange> {
 public:
  explicit McpHttpExchange(std::shared_ptr<HttpSession> s) : strong_(s), weak_(s) {}
  void reply(channels::McpReply r) override;
  void open_stream(channels::McpHeaders headers) override;
  void send_event(std::string json) override;
  void end_stream() override;
  std::size_t queued_bytes() const override;

 private:
  std::shared_ptr<HttpSession> strong_;
  std::weak_ptr<HttpSession> weak_;
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx, std::uint64_t id,
              limits::SocketPermit permit)
      : thread_(thread),
        socket_(std::move(socket), ctx.tls),
        ctx_(ctx),
        id_(id),
        socket_permit_(std::move(permit)),
        timer_(thread.ioc),
        peer_ip_(PeerAddress(peer).ip()),
        peer_(peer_ip_ + ":" + std::to_string(peer.port())),
        peer_address_(peer) {}

  void start() { read_request(); }

 private:
  void arm_timeout() {
    auto ms = ctx_.config.handshake_timeout_ms;
    if (ctx_.accept_gate && ctx_.accept_gate->under_pressure()) {
      // Half the descriptors are taken: sockets that send nothing go sooner.
      ms = ms <= 0 ? pressure_handshake_timeout_ms : std::min(ms, pressure_handshake_timeout_ms);
    }
    if (ms <= 0) return;
    timer_.expires_after(std::chrono::milliseconds(ms));
    timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        if (!self->served_any_) {
          self->ctx_.services.metrics.count_refusal(metrics::Refusal::handshake_timeout);
          spdlog::info("refused peer={} handshake timeout", self->peer_);
        }
        error_code ignored;
        self->socket_.close(ignored);
      }
    });
  }

  void read_request() {
    parser_.emplace(max_header_bytes, max_body_bytes, max_trailer_bytes);
    arm_timeout();
    http::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](const error_code& ec, std::size_t) {
      self->on_request(ec);
    });
  }

  // Every way a read can fail ends here with an answer and a close, never
  // an exception: the parser reports our own refusals (trailers,
  // transfer codings) and Beast's limits as error codes.
  void on_request(const error_code& ec) {
    if (ec) {
      using R = RequestParser::Refusal;
      auto& m = ctx_.services.metrics;
      switch (parser_->refusal()) {
        case R::trailer_too_large:
          m.count_refusal(metrics::Refusal::bad_request);
          respond(json_error(431, "header_too_large", "the chunked body's trailer fields exceed 4 KiB"), false);
          return;
        case R::transfer_coding:
          m.count_refusal(metrics::Refusal::bad_request);
          respond(json_error(501, "not_implemented", "the only Transfer-Encoding accepted is chunked"), false);
          return;
        case R::length_and_encoding:
          m.count_refusal(metrics::Refusal::bad_request);
          respond(json_error(400, "bad_request", "Content-Length and Transfer-Encoding together"), false);
          return;
        case R::none:
          break;
      }
      if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
        m.count_refusal(metrics::Refusal::bad_request);
        respond(json_error(431, "header_too_large", "request line and headers exceed 16 KiB"), false);
        return;
      }
      if (ec == http::error::body_limit) {
        m.count_refusal(metrics::Refusal::bad_request);
        respond(json_error(413, "payload_too_large", "request body exceeds 1 MiB"), false);
        return;
      }
      // A parse error (not a closed or timed-out socket) deserves an answer.
      if (ec != http::error::end_of_stream && ec != http::error::partial_message &&
          ec.category() == http::make_error_code(http::error::bad_method).category()) {
        m.count_refusal(metrics::Refusal::bad_request);
        respond(json_error(400, "bad_request", "malformed HTTP request"), false);
        return;
      }
      if (const auto* tls = socket_.tls(); tls && !tls->handshake_done() && !tls->error().empty()) {
        spdlog::info("refused peer={} TLS handshake failed: {}", peer_, tls->error());
      }
      shutdown();
      return;
    }
    auto& req = *parser_;
    const bool upgrade = req.method() == http::verb::get &&
                         header_has_token(req.header(http::field::upgrade), "websocket") &&
                         header_has_token(req.header(http::field::connection), "upgrade") &&
                         upgrade_path(req.target());
    if (upgrade) {
      handle_upgrade();
      return;
    }
    if (ctx_.mcp && on_path(req.target(), mcp_path)) {
      handle_mcp();
      return;
    }
    HttpRequest r;
    r.method = req.method_string();
    r.target = req.target();
    r.authorization = std::string(req.header(http::field::authorization));
    if (req.has_header(http::field::origin)) r.origin = std::string(req.header(http::field::origin));
    r.host = std::string(req.header(http::field::host));
    r.body = std::move(req.body());
    // The answer may come later from another thread (admin answers are
    // gathered from every I/O thread): it is posted back to this one.
    // handle_http_async catches a handler's exception itself.
    handle_http_async(r, ctx_, [self = shared_from_this(), keep_alive = req.keep_alive()](HttpResponse resp) {
      asio::post(self->thread_.ioc, [self, keep_alive, resp = std::move(resp)]() mutable {
        self->respond(std::move(resp), keep_alive);
      });
    });
  }

  // Only the WebSocket path upgrades; an upgrade header on any other target
  // is answered as the plain route would answer it (404, 405, 200...).
  static bool upgrade_path(std::string_view target) { return on_path(target, websocket_path); }

  static bool on_path(std::string_view target, std::string_view path) { return target_path_is(target, path); }

 public:
  // --- /mcp: the transport side (channels/mcp_endpoint.hpp is the protocol) ---

  // The Origin is checked here, as for the WebSocket upgrade (a browser page
  // of another site must not drive a local MCP server: DNS rebinding); an
  // allowed Origin gets CORS headers on every answer and its preflight
  // answered. The rest is the endpoint's.
  void handle_mcp() {
    auto& req = *parser_;
    mcp_keep_alive_ = req.keep_alive();
    mcp_chunked_ = req.version() >= 11;
    mcp_origin_.reset();
    if (req.has_header(http::field::origin)) {
      const std::string origin(req.header(http::field::origin));
      if (!origin_allowed(origin, req.header(http::field::host), ctx_.config.allowed_origins)) {
        metrics::bump(ctx_.services.metrics.http_requests);
        spdlog::info("refused peer={} /mcp: {}", peer_, origin_refusal(origin, ctx_.config.allowed_origins.empty()));
        respond(json_error(403, "forbidden_origin", origin_refusal(origin, ctx_.config.allowed_origins.empty())),
                mcp_keep_alive_);
        return;
      }
      mcp_origin_ = origin;
    }
    if (ctx_.draining.load() && req.method() != http::verb::delete_) {
      metrics::bump(ctx_.services.metrics.http_requests);
      HttpResponse r = json_error(503, "draining", "the server is shutting down");
      r.headers.emplace_back("Retry-After", "5");
      respond(std::move(r), false);
      return;
    }
    if (req.method() == http::verb::options) {
      metrics::bump(ctx_.services.metrics.http_requests);
      HttpResponse r;
      r.status = 204;
      r.content_type.clear();
      r.headers.emplace_back("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      r.headers.emplace_back("Access-Control-Allow-Headers",
                             "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID");
      r.headers.emplace_back("Access-Control-Max-Age", "600");
      r.headers.emplace_back("Allow", "GET, POST, DELETE, OPTIONS");
      add_mcp_cors(r.headers);
      respond(std::move(r), mcp_keep_alive_);
      return;
    }
    channels::McpHttpRequest m;
    m.method = req.method_string();
    m.authorization = std::string(req.header(http::field::authorization));
    m.accept = std::string(req.header(http::field::accept));
    m.content_type = std::string(req.header(http::field::content_type));
    if (req.has_extra_header("mcp-session-id")) m.session_id = std::string(req.extra_header("mcp-session-id"));
    if (req.has_extra_header("mcp-protocol-version")) {
      m.protocol_version = std::string(req.extra_header("mcp-protocol-version"));
    }
    m.body = std::move(req.body());
    m.conn_id = id_;
    auto ex = std::make_shared<McpHttpExchange>(shared_from_this());
    ctx_.mcp->handle(m, ex, thread_.poster());
  }

  void add_mcp_cors(std::vector<std::pair<std::string, std::string>>& headers) const {
    if (!mcp_origin_) return;
    headers.emplace_back("Access-Control-Allow-Origin", *mcp_origin_);
    headers.emplace_back("Access-Control-Expose-Headers", "Mcp-Session-Id");
    headers.emplace_back("Vary", "Origin");
  }

  void mcp_reply(channels::McpReply m) {
    HttpResponse r;
    r.status = m.status;
    r.content_type = std::move(m.content_type);
    r.body = std::move(m.body);
    r.headers = std::move(m.headers);
    add_mcp_cors(r.headers);
    respond(std::move(r), mcp_keep_alive_);
  }

  // Contract of an SSE answer: the head goes out with chunked encoding (so
  // the connection outlives the answer), each event as one chunk, in order
  // through one write queue; the end is the empty chunk, after which the
  // connection reads its next request as after any answer. While it
  // streams the socket is read too: a client that closes or resets ends
  // the answer and the endpoint hears it (on_disconnect), and bytes it
  // pipelines (at most 16 KiB) wait in the read buffer for their turn.
  void sse_open(channels::McpHeaders headers, std::shared_ptr<channels::McpExchange> ex) {
    served_any_ = true;
    timer_.cancel();  // the request timeout does not apply to a long answer
    sse_ = Sse::open;
    ctx_.open_streams.fetch_add(1);
    sse_ex_ = std::move(ex);
    add_mcp_cors(headers);
    std::string head =
        "HTTP/1.1 200 OK\r\nServer: synapse\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    // HTTP/1.0 has no chunked encoding: the answer ends with the connection.
    if (mcp_chunked_) head += "Transfer-Encoding: chunked\r\n";
    for (const auto& [k, v] : headers) head += k + ": " + v + "\r\n";
    if (!mcp_chunked_ || !mcp_keep_alive_ || ctx_.draining.load()) {
      mcp_keep_alive_ = false;
      head += "Connection: close\r\n";
    }
    head += "\r\n";
    sse_queue(std::move(head));
    sse_read();
    sse_arm_keepalive();
  }

  void sse_event(std::string json) {
    if (sse_ != Sse::open) return;
    sse_chunk("event: message\ndata: " + json + "\n\n");
  }

  std::size_t sse_queued() const { return sse_queued_; }

  void sse_end() {
    if (sse_ != Sse::open) return;
    sse_ = Sse::ending;
    if (mcp_chunked_) {
      sse_queue("0\r\n\r\n");
    } else if (!sse_writing_) {
      sse_finished();
    }
  }

 private:
  enum class Sse { none, open, ending, ended, failed };

  void sse_chunk(const std::string& data) {
    if (!mcp_chunked_) return sse_queue(data);
    char size[20];
    const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    std::string chunk(size, static_cast<std::size_t>(n));
    chunk += data;
    chunk += "\r\n";
    sse_queue(std::move(chunk));
  }

  void sse_queue(std::string bytes) {
    sse_queued_ += bytes.size();
    sse_last_write_ms_ = mono_ms();
    sse_out_.push_back(std::move(bytes));
    if (!sse_writing_) sse_write_next();
  }

  void sse_write_next() {
    if (sse_out_.empty()) {
      sse_writing_ = false;
      if (sse_ == Sse::ending) sse_finished();
      return;
    }
    sse_writing_ = true;
    asio::async_write(socket_, asio::buffer(sse_out_.front()), [self = shared_from_this()](const error_code& ec,
                                                                                             std::size_t) {
      if (ec) return self->sse_fail();
      self->sse_queued_ -= self->sse_out_.front().size();
      self->sse_out_.pop_front();
      self->sse_write_next();
    });
  }

  // Once a second while a stream is open: the endpoint's tick (a GET
  // stream looks for a changed tool list), and a comment line after 15 s
  // without a write.
  void sse_arm_keepalive() {
    timer_.expires_after(sse_tick);
    timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->sse_ != Sse::open) return;
      if (self->sse_ex_ && self->sse_ex_->on_tick) {
        auto tick = self->sse_ex_->on_tick;  // a copy: the tick may clear it
        tick();
      }
      if (self->sse_ != Sse::open) return;
      if (self->sse_out_.empty() && mono_ms() - self->sse_last_write_ms_ >= sse_keepalive_ms) {
        self->sse_chunk(": keepalive\n\n");
      }
      self->sse_arm_keepalive();
    });
  }

  void sse_read() {
    sse_reading_ = true;
    auto scratch = std::make_shared<std::array<char, 4096>>();
    socket_.async_read_some(asio::buffer(*scratch), [self = shared_from_this(), scratch](const error_code& ec,
                                                                                         std::size_t n) {
      self->sse_reading_ = false;
      if (self->sse_ == Sse::ended) {
        // Stopped by sse_finished (ec is operation_aborted), or data that
        // raced it: keep the data, then serve the next request.
        if (!ec) self->keep_pipelined(scratch->data(), n);
        self->after_sse();
        return;
      }
      if (self->sse_ == Sse::failed) return;
      if (ec) return self->sse_fail();
      if (!self->keep_pipelined(scratch->data(), n)) return self->sse_fail();
      if (self->buffer_.size() < max_pipelined_bytes) self->sse_read();
    });
  }

  bool keep_pipelined(const char* data, std::size_t n) {
    if (buffer_.size() + n > max_pipelined_bytes) return false;
    auto dst = buffer_.prepare(n);
    std::memcpy(dst.data(), data, n);
    buffer_.commit(n);
    return true;
  }

  // The last chunk is written: the exchange is over.
  void sse_finished() {
    sse_ = Sse::ended;
    timer_.cancel();
    sse_ex_.reset();
    if (sse_reading_) {
      error_code ignored;
      socket_.cancel(ignored);  // the read's handler goes on (after_sse)
      return;
    }
    after_sse();
  }

  void after_sse() {
    sse_ = Sse::none;
    ctx_.open_streams.fetch_sub(1);
    if (mcp_keep_alive_ && !ctx_.draining.load()) {
      read_request();
    } else {
      shutdown();
    }
  }

  // The client went away (or a write failed) before the answer ended.
  void sse_fail() {
    if (sse_ == Sse::failed || sse_ == Sse::none) return;
    const bool was_open = sse_ == Sse::open || sse_ == Sse::ending;
    if (sse_ != Sse::ended) ctx_.open_streams.fetch_sub(1);  // ended: after_sse counts it
    sse_ = Sse::failed;
    timer_.cancel();
    auto ex = std::move(sse_ex_);  // sse_out_ stays: a write may still refer to its front
    if (was_open && ex && ex->on_disconnect) {
      auto notify = std::move(ex->on_disconnect);
      ex->on_disconnect = nullptr;
      notify();
    }
    error_code ignored;
    socket_.close(ignored);
  }

  void handle_upgrade() {
    auto& req = *parser_;
    auto& m = ctx_.services.metrics;
    if (req.header(http::field::sec_websocket_version) != "13") {
      HttpResponse r = json_error(426, "unsupported_websocket_version", "Sec-WebSocket-Version must be 13");
      r.headers.emplace_back("Sec-WebSocket-Version", "13");
      m.count_refusal(metrics::Refusal::bad_request);
      respond(std::move(r), false);
      return;
    }
    const std::string key(req.header(http::field::sec_websocket_key));
    if (key.size() != 24) {
      m.count_refusal(metrics::Refusal::bad_request);
      respond(json_error(400, "bad_request", "missing or malformed Sec-WebSocket-Key"), false);
      return;
    }
    UpgradeRequest u;
    u.target = req.target();
    u.authorization = std::string(req.header(http::field::authorization));
    if (req.has_header(http::field::origin)) u.origin = std::string(req.header(http::field::origin));
    u.host = std::string(req.header(http::field::host));
    u.peer_ip = peer_ip_;
    // permessage-deflate, when enabled and offered (wire/deflate.hpp).
    std::string extensions;
    if (ctx_.config.permessage_deflate) {
      extensions = wire::negotiate_permessage_deflate(req.header_list(http::field::sec_websocket_extensions));
    }
    // Admission may wait on the JWKS or the connect hook (never on this
    // thread): it continues in on_admitted, posted back here.
    admitting_now_ = true;  // on_admitted called from inside admit_upgrade: judged in this handler
    admit_upgrade(
        u, ctx_, [self = shared_from_this()](Task t) { asio::post(self->thread_.ioc, std::move(t)); },
        [self = shared_from_this(), key, extensions = std::move(extensions)](AdmissionOutcome outcome) {
          self->on_admitted(key, extensions, std::move(outcome));
        });
    admitting_now_ = false;
  }

  void on_admitted(const std::string& key, const std::string& extensions, AdmissionOutcome outcome) {
    auto& m = ctx_.services.metrics;
    if (!outcome.ok) {
      m.count_refusal(outcome.refusal_reason);
      spdlog::info("refused peer={} status={} {}", peer_, outcome.refusal.status, outcome.refusal.body);
      respond(std::move(outcome.refusal), false);
      return;
    }

    const auto digest = core::sha1(key + std::string(ws_guid));
    std::string response =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " +
        core::base64_encode(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size())) +
        (extensions.empty() ? std::string() : "\r\nSec-WebSocket-Extensions: " + extensions) + "\r\n\r\n";
    // Bytes the client sent after the request (its first frames) go along.
    std::string early(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    ConnectionInfo info;
    info.id = id_;
    info.peer = peer_address_;
    info.principal = thread_.principals.share(std::move(outcome.principal));
    info.permit = std::move(outcome.permit);
    info.socket_permit = std::move(socket_permit_);
    info.deflate = !extensions.empty();
    timer_.cancel();
    std::size_t sent = 0;
    if (admitting_now_ && !socket_.tls() && socket_.socket().native_non_blocking()) {
      // The usual case: admission judged the credential in this very
      // handler (no hook, no key-set refresh), and a fresh socket's send
      // buffer takes the 101 at once. The connection is then listed in this
      // same handler as the check, so a revocation the check missed was
      // committed after it and the poll that sees it posts its close behind
      // this handler: no second look at the key store is needed. Not for
      // TLS: its 101 is a record the session encrypts (async_write below).
      const ssize_t n = ::send(socket_.socket().native_handle(), response.data(), response.size(), MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(response.size())) {
        become_websocket(std::move(info), std::move(early), false);
        return;
      }
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        error_code ignored;
        socket_.close(ignored);  // the permits go with `info`
        return;
      }
      if (n > 0) sent = static_cast<std::size_t>(n);
    }
    auto pending = std::make_shared<std::string>(std::move(response));
    auto held = std::make_shared<ConnectionInfo>(std::move(info));
    asio::async_write(socket_, asio::buffer(pending->data() + sent, pending->size() - sent),
                      [self = shared_from_this(), pending, held, early = std::move(early)](
                          const error_code& ec, std::size_t) mutable {
                        if (ec) return;  // the permit is released with `held`
                        // Registered first, checked second: a revocation the
                        // check misses was committed after it, so the poll
                        // that sees it posts its close to this thread after
                        // this handler, and finds the connection listed.
                        const bool revoked = revoked_since_admission(held->principal, self->ctx_.services.keys);
                        self->become_websocket(std::move(*held), std::move(early), revoked);
                      });
  }

  // The 101 has left: the socket becomes a WebSocket connection of this thread.
  void become_websocket(ConnectionInfo info, std::string early, bool revoked) {
    info.tls = socket_.release_tls();
    auto principal = std::move(info.principal);
    auto conn = std::make_shared<Connection>(thread_, std::move(socket_.socket()), std::move(info));
    thread_.connections.push_front(conn->in_thread, conn);
    conn->start(std::move(principal), std::move(early));
    if (revoked) conn->close(protocol::close_code::revoked, "credentials revoked");
  }

  void respond(HttpResponse r, bool keep_alive) {
    served_any_ = true;
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    res->set(http::field::server, "synapse");
    if (!r.content_type.empty()) res->set(http::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res->set(k, v);
    res->body() = std::move(r.body);
    res->keep_alive(keep_alive && !ctx_.draining.load());
    res->prepare_payload();
    http::async_write(socket_, *res, [self = shared_from_this(), res](const error_code& ec, std::size_t) {
      if (ec || !res->keep_alive()) {
        self->shutdown();
        return;
      }
      self->read_request();
    });
  }

  // Ends the connection after our last response. Unread request bytes (a
  // refused body) would make close() send a reset that can destroy the
  // response before the client reads it, so the socket is half-closed and
  // drained for a moment first: a bounded wait, at most `drain_bytes`.
  void shutdown() {
    timer_.cancel();
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) {
      socket_.close(ec);
      return;
    }
    timer_.expires_after(std::chrono::milliseconds(500));
    timer_.async_wait([weak = weak_from_this()](const error_code& e) {
      if (e) return;
      if (auto self = weak.lock()) {
        error_code ignored;
        self->socket_.close(ignored);
      }
    });
    drain(0);
  }

  void drain(std::size_t drained) {
    constexpr std::size_t drain_bytes = 256 * 1024;
    auto scratch = std::make_shared<std::array<char, 4096>>();
    socket_.async_read_some(asio::buffer(*scratch), [self = shared_from_this(), scratch, drained](
                                                        const error_code& ec, std::size_t n) {
      if (ec || drained + n > drain_bytes) {
        self->timer_.cancel();
        error_code ignored;
        self->socket_.close(ignored);
        return;
      }
      self->drain(drained + n);
    });
  }

  IoThread& thread_;
  HttpStream socket_;  // TLS when the listener serves it
  HttpContext& ctx_;
  std::uint64_t id_;
  limits::SocketPermit socket_permit_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_{max_buffered_bytes};
  std::optional<RequestParser> parser_;
  std::string peer_ip_;
  std::string peer_;
  PeerAddress peer_address_;  // what the connection keeps
  bool served_any_ = false;
  bool admitting_now_ = false;  // inside handle_upgrade's call of admit_upgrade
  // /mcp
  bool mcp_keep_alive_ = true;
  bool mcp_chunked_ = true;  // an HTTP/1.1 request: SSE answers use chunked encoding
  std::optional<std::string> mcp_origin_;  // an allowed Origin: CORS headers on the answer
  Sse sse_ = Sse::none;
  std::shared_ptr<channels::McpExchange> sse_ex_;  // held while its stream is open
  std::list<std::string> sse_out_;  // not a deque: an empty one allocates 576 bytes, per upgrade
  std::size_t sse_queued_ = 0;  // bytes in sse_out_
  std::int64_t sse_last_write_ms_ = 0;
  bool sse_writing_ = false;
  bool sse_reading_ = false;
};

void McpHttpExchange::reply(channels::McpReply r) {
  auto s = weak_.lock();
  strong_.reset();
  if (s) s->mcp_reply(std::move(r));
}

void McpHttpExchange::open_stream(channels::McpHeaders headers) {
  auto s = weak_.lock();
  if (!s) return;
  s->sse_open(std::move(headers), std::static_pointer_cast<channels::McpExchange>(shared_from_this()));
  strong_.reset();
}

void McpHttpExchange::send_event(std::string json) {
  if (auto s = weak_.lock()) s->sse_event(std::move(json));
}

void McpHttpExchange::end_stream() {
  if (auto s = weak_.lock()) s->sse_end();
}

std::size_t McpHttpExchange::queued_bytes() const {
  auto s = weak_.lock();
  return s ? s->sse_queued() : 0;
}

}  // namespace

void serve_http(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx,
                std::uint64_t conn_id, limits::SocketPermit permit) {
  std::make_shared<HttpSession>(thread, std::move(socket), peer, ctx, conn_id, std::move(permit))->start();
}

}  // namespace synapse::net
