#include "net/http_stream.hpp"

#include <sys/socket.h>

#include <boost/system/errc.hpp>
#include <cerrno>
#include <string>

namespace synapse::net {
namespace {

using error_code = boost::system::error_code;

error_code from_errno(int e) {
  if (e == EPROTO) return boost::system::errc::make_error_code(boost::system::errc::protocol_error);
  return error_code(e, boost::system::system_category());
}

// What a plain-HTTP client gets from the TLS port (as nginx does): enough
// to tell the user which scheme to use.
const std::string& plain_http_answer() {
  static const std::string body =
      R"({"error":"tls_required","reason":"this port speaks TLS: use https:// or wss://"})"
      "\n";
  static const std::string answer =
      "HTTP/1.1 400 Bad Request\r\nServer: synapse\r\nContent-Type: application/json\r\nConnection: close\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  return answer;
}

}  // namespace

HttpStream::HttpStream(tcp::socket socket, TlsContext* tls) : socket_(std::move(socket)) {
  if (!tls) return;
  error_code ec;
  // The session reads and writes the descriptor itself: it must not block.
  socket_.native_non_blocking(true, ec);
  if (!ec) tls_ = tls->session(socket_.native_handle());
  if (!tls_) socket_.close(ec);
}

void HttpStream::shutdown(tcp::socket::shutdown_type what, error_code& ec) {
  if (tls_ && tls_->handshake_done() && what != tcp::socket::shutdown_receive) {
    tls_->close_notify();
    std::uint64_t bytes = 0, calls = 0;
    tls_->flush(socket_.native_handle(), bytes, calls);  // best effort: the TCP close follows either way
  }
  socket_.shutdown(what, ec);
}

HttpStream::Step HttpStream::read_step(void* data, std::size_t size, std::size_t& got, error_code& ec) {
  const int fd = socket_.native_handle();
  if (size == 0) return Step::done;
  const ssize_t r = tls_->read(fd, static_cast<char*>(data), size);
  const int err = errno;
  if (r > 0) {
    got = static_cast<std::size_t>(r);
    // Handshake output that came with the data (session tickets) leaves
    // now if the socket takes it, else ahead of the next write.
    if (tls_->has_output()) {
      std::uint64_t bytes = 0, calls = 0;
      tls_->flush(fd, bytes, calls);
    }
    return Step::done;
  }
  if (r == 0) {
    ec = boost::asio::error::eof;
    return Step::done;
  }
  if (err == EAGAIN) {
    // The handshake's own messages go out before we wait for the client.
    if (tls_->has_output()) {
      error_code fe;
      const Step s = flush_step(fe);
      if (fe) {
        ec = fe;
        return Step::done;
      }
      if (s == Step::want_write) return Step::want_write;
    }
    return Step::want_read;
  }
  if (tls_->plaintext_http()) {
    // Best effort, like the refusals at accept: a fresh socket's buffer takes it.
    tls_->discard_output();
    const std::string& answer = plain_http_answer();
    ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
  } else if (tls_->has_output()) {
    std::uint64_t bytes = 0, calls = 0;
    tls_->flush(fd, bytes, calls);  // the alert, if it fits
  }
  ec = from_errno(err);
  return Step::done;
}

HttpStream::Step HttpStream::flush_step(error_code& ec) {
  std::uint64_t bytes = 0, calls = 0;
  const int r = tls_->flush(socket_.native_handle(), bytes, calls);
  if (r == 0) return Step::want_write;
  if (r < 0) ec = from_errno(errno);
  return Step::done;
}

std::size_t HttpStream::encrypt(const iovec* iov, std::size_t n, error_code& ec) {
  if (n == 0) return 0;
  if (socket_.native_handle() < 0) {
    ec = boost::asio::error::bad_descriptor;
    return 0;
  }
  const std::size_t taken = tls_->encrypt(iov, n, 64 * 1024);
  if (taken == 0) ec = from_errno(EPROTO);
  return taken;
}

}  // namespace synapse::net
