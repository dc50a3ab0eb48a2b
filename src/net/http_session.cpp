#include "net/http_session.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <array>
#include <optional>
#include <string_view>
#include <spdlog/spdlog.h>

#include "auth/crypto.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "net/admission.hpp"
#include "net/http_api.hpp"
#include "net/io_thread.hpp"
#include "net/request_parser.hpp"
#include "net/request_target.hpp"
#include "net/ws_connection.hpp"
#include "wire/deflate.hpp"

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

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx, std::uint64_t id,
              limits::SocketPermit permit)
      : thread_(thread),
        socket_(std::move(socket)),
        ctx_(ctx),
        id_(id),
        socket_permit_(std::move(permit)),
        timer_(thread.ioc),
        peer_ip_(peer.address().to_string()),
        peer_(peer_ip_ + ":" + std::to_string(peer.port())) {}

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
  static bool upgrade_path(std::string_view target) {
    RequestTarget t;
    return parse_target(target, t) && t.path == websocket_path;
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
    admit_upgrade(
        u, ctx_, [self = shared_from_this()](Task t) { asio::post(self->thread_.ioc, std::move(t)); },
        [self = shared_from_this(), key, extensions = std::move(extensions)](AdmissionOutcome outcome) {
          self->on_admitted(key, extensions, std::move(outcome));
        });
  }

  void on_admitted(const std::string& key, const std::string& extensions, AdmissionOutcome outcome) {
    auto& m = ctx_.services.metrics;
    if (!outcome.ok) {
      m.count_refusal(outcome.refusal_reason);
      spdlog::info("refused peer={} status={} {}", peer_, outcome.refusal.status, outcome.refusal.body);
      respond(std::move(outcome.refusal), false);
      return;
    }

    const auto digest = auth::sha1(key + std::string(ws_guid));
    auto response = std::make_shared<std::string>(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " +
        auth::base64_encode(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size())) +
        (extensions.empty() ? std::string() : "\r\nSec-WebSocket-Extensions: " + extensions) + "\r\n\r\n");
    // Bytes the client sent after the request (its first frames) go along.
    std::string early(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    auto info = std::make_shared<ConnectionInfo>();
    info->id = id_;
    info->peer = peer_;
    info->principal = std::move(outcome.principal);
    info->permit = std::move(outcome.permit);
    info->socket_permit = std::move(socket_permit_);
    info->deflate = !extensions.empty();
    timer_.cancel();
    asio::async_write(socket_, asio::buffer(*response),
                      [self = shared_from_this(), response, info, early = std::move(early)](
                          const error_code& ec, std::size_t) mutable {
                        if (ec) return;  // the permit is released with `info`
                        const bool revoked = revoked_since_admission(info->principal, self->ctx_.services.keys);
                        auto conn = std::make_shared<Connection>(self->thread_, std::move(self->socket_),
                                                                 std::move(*info), self->ctx_.services);
                        self->thread_.connections.push_front(conn);
                        conn->self_in_thread = self->thread_.connections.begin();
                        conn->start(std::move(early));
                        // Registered first, checked second: a revocation the
                        // check misses was committed after it, so the poll
                        // that sees it posts its close to this thread after
                        // this handler, and finds the connection listed.
                        if (revoked) conn->close(wire::close_code::revoked, "credentials revoked");
                      });
  }

  void respond(HttpResponse r, bool keep_alive) {
    served_any_ = true;
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    res->set(http::field::server, "synapse");
    res->set(http::field::content_type, r.content_type);
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
  tcp::socket socket_;
  HttpContext& ctx_;
  std::uint64_t id_;
  limits::SocketPermit socket_permit_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_{max_buffered_bytes};
  std::optional<RequestParser> parser_;
  std::string peer_ip_;
  std::string peer_;
  bool served_any_ = false;
};

}  // namespace

void serve_http(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx,
                std::uint64_t conn_id, limits::SocketPermit permit) {
  std::make_shared<HttpSession>(thread, std::move(socket), peer, ctx, conn_id, std::move(permit))->start();
}

}  // namespace synapse::net
