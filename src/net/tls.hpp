// TLS for the listener (`wss://`, and HTTPS for the plain endpoints on the
// same port), with OpenSSL 3 driven directly rather than through Asio's
// ssl::stream. This header includes nothing of OpenSSL.
//
// Why not asio::ssl::stream: the WebSocket write path (ws_connection.cpp) is
// direct non-blocking syscalls, one gather write of a subscriber's whole
// backlog. ssl::stream writes one buffer per operation, offers no way to
// hand its SSL object from the HTTP phase to that path, and its synchronous
// calls on a non-blocking socket lose bytes on EAGAIN. Driven directly, one
// SSL object serves both phases: records are read straight from the socket
// (a socket BIO with read-ahead), and written into the session's own buffer
// (a BIO of ours), which the connection sends with the same non-blocking
// send()s and the same readiness waits as a plain connection. A plain
// connection carries a null pointer and pays one predictable branch per
// read and per flush, never a virtual call.
//
// Threads: a TlsContext is shared by every I/O thread (new sessions take
// the current certificate under a mutex; reload() swaps it, and sessions
// made before keep the one they started with). A TlsSession belongs to one
// connection and is touched only on that connection's thread.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

struct ssl_st;
struct ssl_ctx_st;

namespace synapse::net {

class TlsSession;
struct TlsSessionDeleter {
  void operator()(TlsSession* s) const noexcept;
};
// What a connection holds: null for a plain connection.
using TlsPtr = std::unique_ptr<TlsSession, TlsSessionDeleter>;

class TlsContext {
 public:
  // Loads the certificate chain and the private key (PEM files); throws
  // std::runtime_error naming the file and the reason when either cannot be
  // read or parsed, the key is encrypted, or the key does not match the
  // certificate.
  TlsContext(std::string cert_path, std::string key_path);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Re-reads both files (SIGHUP). On success new sessions get the new
  // certificate; on failure the current one stays. Logs either way.
  bool reload();
  // A server session over the connected, non-blocking socket `fd`; null
  // (and logged) only when OpenSSL cannot allocate one.
  TlsPtr session(int fd);
  // "subject=... serial=... not_after=..." of the certificate served now.
  std::string describe() const;

  // Counters for /metrics.
  std::atomic<std::uint64_t> handshakes{0};
  std::atomic<std::uint64_t> handshake_failures{0};
  std::atomic<std::uint64_t> reloads{0};
  std::atomic<std::uint64_t> reload_failures{0};
  // The served certificate's notAfter, in Unix seconds.
  std::atomic<std::int64_t> not_after_unix{0};

 private:
  ssl_ctx_st* build() const;  // throws
  std::string cert_path_;
  std::string key_path_;
  mutable std::mutex mu_;
  ssl_ctx_st* ctx_ = nullptr;  // guarded by mu_
};

class TlsSession final {
 public:
  TlsSession(ssl_st* ssl, int fd, TlsContext& ctx);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // recv(2) semantics, plaintext: fills `buf` until it is full or the
  // socket would block, so a short read means the socket is drained (the
  // caller's edge-triggered reasoning holds). > 0 bytes; 0 at the peer's
  // close_notify or EOF; -1 with errno EAGAIN (nothing yet), or another
  // errno for a failure (EPROTO for a TLS error, see error()). The
  // handshake, if not finished, advances here. `fd` must be the session's
  // socket, still open (the socket's current handle is passed so a closed
  // descriptor is never read).
  ssize_t read(int fd, char* buf, std::size_t n);
  // Encrypts up to `max` plaintext bytes from the iovecs into the pending
  // output; returns how many were taken (0: a TLS failure, see error()).
  std::size_t encrypt(const iovec* iov, std::size_t n, std::size_t max);
  // Sends the pending output. 1: all sent; 0: the socket would block (wait
  // until writable, call again); -1: failed (errno). Adds to `bytes` and
  // `calls` what was sent and how many send()s it took.
  int flush(int fd, std::uint64_t& bytes, std::uint64_t& calls);
  bool has_output() const noexcept { return out_off_ < out_.size(); }
  // Queues our close_notify alert (once); flush() sends it.
  void close_notify();
  bool close_notify_queued() const noexcept { return notify_queued_; }
  bool handshake_done() const noexcept { return handshake_done_; }
  // The handshake failed because the client spoke plain HTTP.
  bool plaintext_http() const noexcept { return plaintext_http_; }
  // Forgets unsent output (an alert nobody will understand).
  void discard_output();
  // The last TLS failure, for logs.
  const std::string& error() const noexcept { return error_; }

 private:
  friend struct TlsBio;
  void note_failure(int ssl_error);
  void check_handshake();

  ssl_st* ssl_;
  int fd_;
  TlsContext& ctx_;
  std::string out_;  // ciphertext waiting for the socket, from out_off_
  std::size_t out_off_ = 0;
  std::string error_;
  bool handshake_done_ = false;
  bool notify_queued_ = false;
  bool failed_ = false;
  bool eof_ = false;
  bool plaintext_http_ = false;
  int sticky_errno_ = 0;  // a failure already seen, returned by every later read
};

}  // namespace synapse::net
