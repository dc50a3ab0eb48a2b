#include "net/http_session.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <optional>
#include <spdlog/spdlog.h>

#include "auth/crypto.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "net/admission.hpp"
#include "net/http_api.hpp"
#include "net/io_thread.hpp"
#include "net/ws_connection.hpp"

namespace synapse::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t max_header_bytes = 16 * 1024;
constexpr std::size_t max_body_bytes = 1 << 20;
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
  HttpSession(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx, std::uint64_t id)
      : thread_(thread),
        socket_(std::move(socket)),
        ctx_(ctx),
        id_(id),
        timer_(thread.ioc),
        peer_ip_(peer.address().to_string()),
        peer_(peer_ip_ + ":" + std::to_string(peer.port())) {}

  void start() { read_request(); }

 private:
  void arm_timeout() {
    const auto ms = ctx_.config.handshake_timeout_ms;
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
    parser_.emplace();
    parser_->header_limit(max_header_bytes);
    parser_->body_limit(max_body_bytes);
    arm_timeout();
    http::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](const error_code& ec, std::size_t) {
      self->on_request(ec);
    });
  }

  void on_request(const error_code& ec) {
    if (ec) {
      if (ec == http::error::header_limit) {
        respond(json_error(431, "header_too_large", "request line and headers exceed 16 KiB"), false);
        return;
      }
      if (ec == http::error::body_limit) {
        respond(json_error(413, "payload_too_large", "request body exceeds 1 MiB"), false);
        return;
      }
      // A parse error (not a closed or timed-out socket) deserves an answer.
      if (ec != http::error::end_of_stream && ec != http::error::partial_message &&
          ec.category() == http::make_error_code(http::error::bad_method).category()) {
        ctx_.services.metrics.count_refusal(metrics::Refusal::bad_request);
        respond(json_error(400, "bad_request", "malformed HTTP request"), false);
        return;
      }
      shutdown();
      return;
    }
    auto& req = parser_->get();
    const bool upgrade = req.method() == http::verb::get && header_has_token(req[http::field::upgrade], "websocket") &&
                         header_has_token(req[http::field::connection], "upgrade");
    if (upgrade) {
      handle_upgrade();
      return;
    }
    HttpRequest r;
    r.method = std::string(req.method_string());
    r.target = std::string(req.target());
    r.authorization = std::string(req[http::field::authorization]);
    r.body = std::move(req.body());
    HttpResponse resp = handle_http(r, ctx_);
    respond(std::move(resp), req.keep_alive());
  }

  void handle_upgrade() {
    auto& req = parser_->get();
    auto& m = ctx_.services.metrics;
    if (req[http::field::sec_websocket_version] != "13") {
      HttpResponse r = json_error(426, "unsupported_websocket_version", "Sec-WebSocket-Version must be 13");
      r.headers.emplace_back("Sec-WebSocket-Version", "13");
      m.count_refusal(metrics::Refusal::bad_request);
      respond(std::move(r), false);
      return;
    }
    const std::string key(req[http::field::sec_websocket_key]);
    if (key.size() != 24) {
      m.count_refusal(metrics::Refusal::bad_request);
      respond(json_error(400, "bad_request", "missing or malformed Sec-WebSocket-Key"), false);
      return;
    }
    UpgradeRequest u;
    u.target = std::string(req.target());
    u.authorization = std::string(req[http::field::authorization]);
    if (auto it = req.find(http::field::origin); it != req.end()) u.origin = std::string(it->value());
    u.host = std::string(req[http::field::host]);
    u.peer_ip = peer_ip_;
    AdmissionOutcome outcome = admit_upgrade(u, ctx_);
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
        "\r\n\r\n");
    // Bytes the client sent after the request (its first frames) go along.
    std::string early(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    auto info = std::make_shared<ConnectionInfo>();
    info->id = id_;
    info->peer = peer_;
    info->principal = std::move(outcome.principal);
    info->permit = std::move(outcome.permit);
    timer_.cancel();
    asio::async_write(socket_, asio::buffer(*response),
                      [self = shared_from_this(), response, info, early = std::move(early)](
                          const error_code& ec, std::size_t) mutable {
                        if (ec) return;  // the permit is released with `info`
                        auto conn = std::make_shared<Connection>(self->thread_, std::move(self->socket_),
                                                                 std::move(*info), self->ctx_.services);
                        self->thread_.connections.push_front(conn);
                        conn->self_in_thread = self->thread_.connections.begin();
                        conn->start(std::move(early));
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

  void shutdown() {
    timer_.cancel();
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    socket_.close(ec);
  }

  IoThread& thread_;
  tcp::socket socket_;
  HttpContext& ctx_;
  std::uint64_t id_;
  asio::steady_timer timer_;
  // Unbounded here: the parser's header and body limits bound what it holds.
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string peer_ip_;
  std::string peer_;
  bool served_any_ = false;
};

}  // namespace

void serve_http(IoThread& thread, tcp::socket socket, const tcp::endpoint& peer, HttpContext& ctx,
                std::uint64_t conn_id) {
  std::make_shared<HttpSession>(thread, std::move(socket), peer, ctx, conn_id)->start();
}

}  // namespace synapse::net
