#include "hooks/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <array>
#include <thread>

namespace synapse::hooks {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::optional<HttpUrl> parse_http_url(std::string_view url, std::string* why) {
  auto fail = [&](const char* text) -> std::optional<HttpUrl> {
    if (why) *why = text;
    return std::nullopt;
  };
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme)) return fail("only http:// URLs are supported");
  url.remove_prefix(scheme.size());
  HttpUrl u;
  const auto slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  u.target = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  if (authority.empty() || authority.find('@') != std::string_view::npos) return fail("a host is required (no user info)");
  const auto colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(']') == std::string_view::npos) {
    u.port = std::string(authority.substr(colon + 1));
    authority = authority.substr(0, colon);
    if (u.port.empty() || u.port.size() > 5 || u.port.find_first_not_of("0123456789") != std::string::npos) {
      return fail("the port must be a number");
    }
  }
  u.host = std::string(authority);
  if (u.host.empty()) return fail("a host is required");
  for (char c : u.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return fail("the path holds a space or control character");
  }
  return u;
}

namespace {

// One request: resolve, connect, write, read, each under the one deadline
// that tcp_stream enforces. Ends by calling `done` exactly once.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(asio::io_context& ioc, ClientRequest req, HttpClient::Done done)
      : resolver_(ioc), stream_(ioc), req_(std::move(req)), done_(std::move(done)) {}

  void run() {
    deadline_ = std::chrono::steady_clock::now() + req_.timeout;
    request_.method_string(req_.method);
    request_.target(req_.url.target);
    request_.version(11);
    request_.set(http::field::host, req_.url.host + ":" + req_.url.port);
    request_.set(http::field::user_agent, "synapse");
    request_.set(http::field::connection, "close");
    for (const auto& [k, v] : req_.headers) request_.set(k, v);
    if (!req_.body.empty() || req_.method == "POST") {
      request_.set(http::field::content_type, req_.content_type);
      request_.body() = req_.body;
    }
    request_.prepare_payload();
    parser_.body_limit(req_.max_body_bytes);
    parser_.header_limit(16 * 1024);
    // The resolver has no timeout of its own; a timer cancels it.
    timer_ = std::make_unique<asio::steady_timer>(stream_.get_executor(), deadline_);
    timer_->async_wait([weak = weak_from_this()](const error_code& ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        self->timed_out_ = true;
        self->resolver_.cancel();
        self->stream_.cancel();
      }
    });
    resolver_.async_resolve(req_.url.host, req_.url.port,
                            [self = shared_from_this()](const error_code& ec, tcp::resolver::results_type r) {
                              self->on_resolve(ec, std::move(r));
                            });
  }

 private:
  std::chrono::nanoseconds left() const {
    return std::max<std::chrono::nanoseconds>(std::chrono::milliseconds(1), deadline_ - std::chrono::steady_clock::now());
  }

  void on_resolve(const error_code& ec, tcp::resolver::results_type results) {
    if (ec) return fail(ec, "cannot resolve " + req_.url.host);
    stream_.expires_after(left());
    stream_.async_connect(results, [self = shared_from_this()](const error_code& e, const tcp::endpoint&) {
      if (e) return self->fail(e, "cannot connect");
      self->stream_.socket().set_option(tcp::no_delay(true));
      self->stream_.expires_after(self->left());
      http::async_write(self->stream_, self->request_, [self](const error_code& e2, std::size_t) {
        if (e2) return self->fail(e2, "cannot send the request");
        self->stream_.expires_after(self->left());
        http::async_read(self->stream_, self->buffer_, self->parser_, [self](const error_code& e3, std::size_t) {
          if (e3) return self->fail(e3, "no valid response");
          ClientResponse r;
          r.ok = true;
          r.status = static_cast<int>(self->parser_.get().result_int());
          r.body = std::move(self->parser_.get().body());
          self->finish(std::move(r));
        });
      });
    });
  }

  void fail(const error_code& ec, const std::string& what) {
    ClientResponse r;
    r.timed_out = timed_out_ || ec == beast::error::timeout;
    r.error = r.timed_out ? "timeout after " + std::to_string(req_.timeout.count()) + " ms" : what + ": " + ec.message();
    finish(std::move(r));
  }

  void finish(ClientResponse r) {
    if (!done_) return;
    if (timer_) timer_->cancel();
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(r));
  }

  tcp::resolver resolver_;
  beast::tcp_stream stream_;
  std::unique_ptr<asio::steady_timer> timer_;
  ClientRequest req_;
  HttpClient::Done done_;
  std::chrono::steady_clock::time_point deadline_;
  http::request<http::string_body> request_;
  beast::flat_buffer buffer_;
  http::response_parser<http::string_body> parser_;
  bool timed_out_ = false;
};

// One streaming exchange. Contract: everything runs on the client's thread;
// end() is the only way out and runs once (the `ended_` flag), closing the
// socket so that every pending operation completes with an error that its
// handler then ignores. One timer covers each phase in turn (connect_timeout
// over resolve + connect + send, idle_timeout over each wait for bytes) and
// another the whole exchange; a timer's wait carries the generation it was
// armed for, so a wait that fired just as it was re-armed does nothing.
class StreamExchange : public std::enable_shared_from_this<StreamExchange> {
 public:
  StreamExchange(asio::io_context& ioc, StreamRequest req, StreamCallbacks cb)
      : resolver_(ioc), socket_(ioc), phase_timer_(ioc), total_timer_(ioc), req_(std::move(req)), cb_(std::move(cb)) {}

  void run() {
    if (ended_) return;
    request_.method_string(req_.method);
    request_.target(req_.url.target);
    request_.version(11);
    request_.set(http::field::host, req_.url.host + ":" + req_.url.port);
    request_.set(http::field::user_agent, "synapse");
    request_.set(http::field::connection, "close");
    for (const auto& [k, v] : req_.headers) request_.set(k, v);
    if (!req_.body.empty() || req_.method == "POST") {
      request_.set(http::field::content_type, req_.content_type);
      request_.body() = req_.body;
    }
    request_.prepare_payload();
    parser_.body_limit(req_.max_body_bytes);
    parser_.header_limit(16 * 1024);
    total_timer_.expires_after(req_.total_timeout);
    total_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
      if (ec) return;
      if (auto self = weak.lock()) self->end(StreamEnd::Why::timeout, "no complete answer within the total timeout");
    });
    arm(req_.connect_timeout, "cannot connect within the connect timeout");
    resolver_.async_resolve(req_.url.host, req_.url.port,
                            [self = shared_from_this()](const error_code& ec, tcp::resolver::results_type r) {
                              self->on_resolve(ec, std::move(r));
                            });
  }

  // On the client's thread.
  void cancel() { end(StreamEnd::Why::cancelled, "cancelled"); }

 private:
  void arm(std::chrono::milliseconds d, const char* what) {
    const std::uint64_t gen = ++phase_gen_;
    phase_timer_.expires_after(d);
    phase_timer_.async_wait([weak = weak_from_this(), gen, what](const error_code& ec) {
      if (ec) return;
      auto self = weak.lock();
      if (self && self->phase_gen_ == gen) self->end(StreamEnd::Why::timeout, what);
    });
  }

  void on_resolve(const error_code& ec, const tcp::resolver::results_type& results) {
    if (ended_) return;
    if (ec) return end(StreamEnd::Why::connect, "cannot resolve " + req_.url.host + ": " + ec.message());
    asio::async_connect(socket_, results, [self = shared_from_this()](const error_code& e, const tcp::endpoint&) {
      if (self->ended_) return;
      if (e) return self->end(StreamEnd::Why::connect, "cannot connect: " + e.message());
      error_code ignored;
      self->socket_.set_option(tcp::no_delay(true), ignored);
      http::async_write(self->socket_, self->request_, [self](const error_code& e2, std::size_t) {
        if (self->ended_) return;
        if (e2) return self->end(StreamEnd::Why::connect, "cannot send the request: " + e2.message());
        self->arm(self->req_.idle_timeout, "no answer within the idle timeout");
        http::async_read_header(self->socket_, self->buffer_, self->parser_,
                                [self](const error_code& e3, std::size_t) { self->on_header(e3); });
      });
    });
  }

  void on_header(const error_code& ec) {
    if (ended_) return;
    if (ec) return end(StreamEnd::Why::bad_response, "no valid response: " + ec.message());
    const int status = static_cast<int>(parser_.get().result_int());
    std::string type(parser_.get()[http::field::content_type]);
    if (cb_.headers && !cb_.headers(status, std::move(type))) return cancel();
    read_body();
  }

  void read_body() {
    if (ended_) return;
    if (parser_.is_done()) return end(StreamEnd::Why::complete, {});
    parser_.get().body().data = chunk_.data();
    parser_.get().body().size = chunk_.size();
    parser_.get().body().more = true;
    arm(req_.idle_timeout, "the answer went silent past the idle timeout");
    http::async_read_some(socket_, buffer_, parser_,
                          [self = shared_from_this()](const error_code& ec, std::size_t) { self->on_body(ec); });
  }

  void on_body(error_code ec) {
    if (ended_) return;
    if (ec == http::error::need_buffer) ec = {};
    const std::size_t n = chunk_.size() - parser_.get().body().size;
    if (n > 0 && cb_.data && !cb_.data(std::string_view(chunk_.data(), n))) return cancel();
    if (ended_) return;  // a callback may have cancelled through a handle
    if (ec == http::error::body_limit) return end(StreamEnd::Why::too_large, "the answer is larger than the limit");
    if (ec) return end(StreamEnd::Why::bad_response, "the answer broke off: " + ec.message());
    read_body();
  }

  void end(StreamEnd::Why why, std::string error) {
    if (ended_) return;
    ended_ = true;
    ++phase_gen_;
    phase_timer_.cancel();
    total_timer_.cancel();
    resolver_.cancel();
    error_code ignored;
    if (socket_.is_open()) {
      socket_.shutdown(tcp::socket::shutdown_both, ignored);
      socket_.close(ignored);
    }
    auto done = std::move(cb_.end);
    cb_ = {};
    if (done) done(StreamEnd{why, std::move(error)});
  }

  tcp::resolver resolver_;
  tcp::socket socket_;
  asio::steady_timer phase_timer_;
  asio::steady_timer total_timer_;
  StreamRequest req_;
  StreamCallbacks cb_;
  http::request<http::string_body> request_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  std::array<char, 16384> chunk_{};
  std::uint64_t phase_gen_ = 0;
  bool ended_ = false;
};

}  // namespace

struct HttpClient::Impl {
  asio::io_context ioc{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(ioc);
  std::thread thread;
};

namespace {

class StreamHandleImpl final : public StreamHandle {
 public:
  StreamHandleImpl(std::shared_ptr<HttpClient::Impl> impl, std::weak_ptr<StreamExchange> ex)
      : impl_(std::move(impl)), ex_(std::move(ex)) {}
  void cancel() override {
    asio::post(impl_->ioc, [ex = ex_] {
      if (auto e = ex.lock()) e->cancel();
    });
  }

 private:
  std::shared_ptr<HttpClient::Impl> impl_;
  std::weak_ptr<StreamExchange> ex_;
};

}  // namespace

HttpClient::HttpClient() : impl_(std::make_shared<Impl>()) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->ioc.run(); });
}

HttpClient::~HttpClient() {
  impl_->work.reset();
  impl_->ioc.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void HttpClient::request(ClientRequest req, Done done) {
  asio::post(impl_->ioc, [this, req = std::move(req), done = std::move(done)]() mutable {
    std::make_shared<Exchange>(impl_->ioc, std::move(req), std::move(done))->run();
  });
}

std::shared_ptr<StreamHandle> HttpClient::stream(StreamRequest req, StreamCallbacks callbacks) {
  // Made here so that the handle can name it at once; it starts on the
  // client's thread, before any cancel() posted after this returns.
  auto ex = std::make_shared<StreamExchange>(impl_->ioc, std::move(req), std::move(callbacks));
  asio::post(impl_->ioc, [ex] { ex->run(); });
  return std::make_shared<StreamHandleImpl>(impl_, ex);
}

}  // namespace synapse::hooks
