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

}  // namespace

struct HttpClient::Impl {
  asio::io_context ioc{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(ioc);
  std::thread thread;
};

HttpClient::HttpClient() : impl_(std::make_unique<Impl>()) {
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

}  // namespace synapse::hooks
