// The socket of an HTTP session (http_session.cpp, its only user): a TCP
// socket, read and written through a TlsSession when the listener serves
// TLS. It is an AsyncReadStream and AsyncWriteStream for Beast's HTTP
// reader and writer; a plain stream forwards each call to the socket.
//
// The TLS operations are readiness waits on the socket plus the session's
// non-blocking steps (tls.hpp), so the TLS handshake happens inside the
// first read, under the session's request timeout, and a socket closed by
// that timeout ends a handshake like any read. A session whose handshake
// fails because the client sent plain HTTP gets a one-line plain-HTTP 400
// before the close.
#pragma once

#include <sys/uio.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <cstddef>
#include <utility>

#include "net/tls.hpp"

namespace synapse::net {

class HttpStream {
 public:
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;
  using executor_type = tcp::socket::executor_type;

  // `tls` null: plain. Otherwise the session is made here; if it cannot be,
  // the socket is closed (every operation then fails), never served plain.
  HttpStream(tcp::socket socket, TlsContext* tls);

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  tcp::socket& socket() noexcept { return socket_; }
  TlsSession* tls() const noexcept { return tls_.get(); }
  // For the WebSocket connection after the upgrade.
  TlsPtr release_tls() noexcept { return std::move(tls_); }

  void close(error_code& ec) { socket_.close(ec); }
  void cancel(error_code& ec) { socket_.cancel(ec); }
  // TLS: our close_notify first (if the socket takes it now).
  void shutdown(tcp::socket::shutdown_type what, error_code& ec);

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto&& h, const MutableBuffers& b) {
          if (!tls_) {
            socket_.async_read_some(b, std::move(h));
            return;
          }
          boost::asio::mutable_buffer first;
          for (auto it = boost::asio::buffer_sequence_begin(b); it != boost::asio::buffer_sequence_end(b); ++it) {
            first = boost::asio::mutable_buffer(*it);
            if (first.size() > 0) break;
          }
          tls_read(first, std::move(h));
        },
        handler, buffers);
  }

  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto&& h, const ConstBuffers& b) {
          if (!tls_) {
            socket_.async_write_some(b, std::move(h));
            return;
          }
          // The plaintext is taken (encrypted) now; the operation completes
          // once its records have left.
          iovec iov[max_iov];
          std::size_t n = 0;
          for (auto it = boost::asio::buffer_sequence_begin(b); it != boost::asio::buffer_sequence_end(b) && n < max_iov;
               ++it) {
            const boost::asio::const_buffer cb(*it);
            if (cb.size() > 0) iov[n++] = iovec{const_cast<void*>(cb.data()), cb.size()};
          }
          error_code ec;
          const std::size_t taken = encrypt(iov, n, ec);
          if (ec || taken == 0) return complete(std::move(h), ec, 0);
          tls_flush(taken, std::move(h));
        },
        handler, buffers);
  }

 private:
  enum class Step { done, want_read, want_write };
  static constexpr std::size_t max_iov = 16;

  Step read_step(void* data, std::size_t size, std::size_t& got, error_code& ec);
  Step flush_step(error_code& ec);
  std::size_t encrypt(const iovec* iov, std::size_t n, error_code& ec);

  template <class Handler>
  void complete(Handler&& h, error_code ec, std::size_t n) {
    boost::asio::post(socket_.get_executor(), boost::beast::bind_front_handler(std::move(h), ec, n));
  }

  template <class Handler>
  void tls_read(boost::asio::mutable_buffer buf, Handler&& h) {
    std::size_t got = 0;
    error_code ec;
    const Step step = read_step(buf.data(), buf.size(), got, ec);
    if (step == Step::done) return complete(std::move(h), ec, got);
    socket_.async_wait(step == Step::want_read ? tcp::socket::wait_read : tcp::socket::wait_write,
                       [this, buf, h = std::move(h)](const error_code& e) mutable {
                         if (e) return complete(std::move(h), e, 0);
                         tls_read(buf, std::move(h));
                       });
  }

  template <class Handler>
  void tls_flush(std::size_t taken, Handler&& h) {
    error_code ec;
    if (flush_step(ec) == Step::done) return complete(std::move(h), ec, ec ? 0 : taken);
    socket_.async_wait(tcp::socket::wait_write, [this, taken, h = std::move(h)](const error_code& e) mutable {
      if (e) return complete(std::move(h), e, 0);
      tls_flush(taken, std::move(h));
    });
  }

  tcp::socket socket_;
  TlsPtr tls_;
};

}  // namespace synapse::net
