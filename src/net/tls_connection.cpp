// Connection::write_out() over TLS (the rest of Connection is in
// ws_connection.cpp; a plain connection never comes here).
//
// The queue is the same: framed, shared messages (compressed ones too),
// bounded by outbound_queue_bytes. Instead of one gather sendmsg(), up to
// 64 KiB of the waiting frames is gathered into one SSL_write (four full
// records), and the records leave in non-blocking send()s; the next batch is
// encrypted only once the previous one has left. So the ciphertext a
// connection holds beyond its queue is one batch at most, and a client that
// stops reading still fills its queue and is closed with 4008 at the same
// bound as over plain TCP.
#include "net/ws_connection.hpp"

#include <cerrno>
#include <cstring>

#include "metrics/metrics.hpp"

namespace synapse::net {
namespace {
constexpr std::size_t tls_batch_bytes = 64 * 1024;
constexpr std::size_t tls_batch_iov = 512;  // as the plain path's max_iov
}  // namespace

bool Connection::write_out_tls() {
  const int fd = socket_.native_handle();
  auto& m = services().metrics;
  iovec iov[tls_batch_iov];
  for (;;) {
    std::uint64_t bytes = 0, calls = 0;
    const int sent = tls_->flush(fd, bytes, calls);
    if (calls > 0) {
      metrics::bump(m.write_syscalls, calls);
      metrics::bump(m.bytes_out, bytes);
    }
    if (sent == 0) {
      arm_write();
      return false;
    }
    if (sent < 0) {
      end_later(std::strerror(errno));
      return false;
    }
    if (!out_.empty()) {
      const std::size_t n = out_.gather(iov, tls_batch_iov);
      const std::size_t taken = tls_->encrypt(iov, n, tls_batch_bytes);
      if (taken == 0) {
        end_later("TLS: " + tls_->error());
        return false;
      }
      metrics::bump(m.frames_out, out_.consume(taken));
      continue;
    }
    // Our close frame has left: the close_notify follows it, then
    // write_out() half-closes the socket as for a plain connection.
    if (close_queued_ && !tls_->close_notify_queued() && tls_->handshake_done()) {
      tls_->close_notify();
      if (tls_->has_output()) continue;
    }
    return true;
  }
}

}  // namespace synapse::net
