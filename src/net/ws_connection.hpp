// A WebSocket connection after the upgrade. Framing is our own (wire/), so
// that everything queued for a client leaves in one gather write: Beast's
// stream writes one message per call and its control frames on its own.
//
// Lifetime: shared_ptr, held by its IoThread's list until finalize() and by
// any pending wait. All of its state is touched only on its I/O thread.
//
// Reads are readiness-based: wait until readable, then recv into the thread's
// shared buffer until EAGAIN. Only a frame split across reads is copied into
// the connection, so idle connections hold no read buffer. Readiness comes
// from the thread's own epoll set (IoThread::watch), not from Asio: the
// socket leaves Asio's reactor once upgraded.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "auth/principal.hpp"
#include "channels/session.hpp"
#include "channels/socket.hpp"
#include "limits/accept_gate.hpp"
#include "limits/connection_limiter.hpp"
#include "net/admin_backend.hpp"
#include "net/io_thread.hpp"
#include "net/outbound_queue.hpp"
#include "net/peer_address.hpp"
#include "net/tls.hpp"
#include "wire/ws_frame.hpp"

namespace synapse::net {

struct ConnectionInfo {
  std::uint64_t id = 0;
  PeerAddress peer;  // for logs and the admin API
  std::shared_ptr<const auth::Principal> principal;  // shared by the credential's connections (IoThread::principals)
  limits::Permit permit;
  limits::SocketPermit socket_permit;  // from accept; held until the socket closes
  bool deflate = false;  // permessage-deflate was negotiated in the upgrade
  TlsPtr tls;  // the session's TLS, when the listener serves TLS (moved into the connection)
};

// The upgraded socket's descriptor, closed with it. Not an Asio socket: the
// connection's thread watches it (IoThread::watch).
class WsSocket {
 public:
  WsSocket() = default;
  explicit WsSocket(int fd) noexcept : fd_(fd) {}
  WsSocket(const WsSocket&) = delete;
  WsSocket& operator=(const WsSocket&) = delete;
  ~WsSocket() { close(); }
  int native_handle() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  void close() noexcept;

 private:
  int fd_ = -1;
};

class Connection final : public std::enable_shared_from_this<Connection>,
                         public channels::Socket,
                         private wire::FrameSink {
 public:
  // Serves with its thread's services (IoThread::services).
  Connection(IoThread& thread, boost::asio::ip::tcp::socket socket, ConnectionInfo info);
  ~Connection();

  // Takes ownership; `early` holds bytes read past the upgrade request.
  // `principal` is the session's (info.principal, which the constructor
  // leaves where it is).
  void start(std::shared_ptr<const auth::Principal> principal, std::string early);

  // channels::Socket (MessageSink)
  void send(wire::Message msg) override;
  void send_batch(const wire::Message* const* msgs, std::size_t n) override;
  void send_initial(wire::Message msg) override;
  void close(std::uint16_t code, std::string_view reason) override;
  std::uint64_t id() const override { return id_; }
  std::size_t thread_index() const override { return thread_.index; }
  Poster poster() override;
  void after(std::int64_t delay_ms, Task task) override;

  // Called by the I/O thread for connections marked dirty.
  void flush();
  // Called by the I/O thread when the socket became readable or writable
  // (epoll events, edge-triggered).
  void on_ready(std::uint32_t events);
  void tick(std::int64_t now_mono_ms, std::int64_t now_unix_ms);
  void server_shutdown();
  // The credential's key id (for revocation); empty once the connection ended.
  std::string_view key_id() const;
  // For the admin API (defined in admin_backend.cpp).
  ConnectionView view() const;
  bool admin_unsubscribe(std::string_view topic);

  // Its entry in the thread's list (IoThread::connections).
  ConnectionLink in_thread;

 private:
  enum class State : std::uint8_t { open, closing, closed };

  // wire::FrameSink
  void on_message(wire::Opcode op, std::string_view payload) override;
  void on_ping(std::string_view payload) override;
  void on_pong(std::string_view payload) override;
  void on_close(std::uint16_t code, std::string_view reason) override;
  void on_violation(std::uint16_t code, std::string_view why) override;

  void read_some();
  void arm_read();
  void arm_write();
  void process(char* data, std::size_t n);
  // Writes what is queued until done or EAGAIN. Never finalizes from inside
  // (a failure or a finished close handshake ends the connection later), so
  // it is safe wherever the caller iterates lists a teardown would change.
  void write_out();
  // write_out() over TLS (tls_connection.cpp): encrypts the queue in
  // batches and sends the records; true once everything has left.
  bool write_out_tls();
  bool enqueue(wire::Message msg);
  void end_later(std::string why);
  void begin_close(std::uint16_t code, std::string_view reason);
  void teardown_session();
  // The connection is gone without a close handshake (reset, EOF, error).
  void abort(std::string_view why);
  // The one place a connection ends: counts, log line, permit, socket.
  void finalize();
  void schedule_flush();

  IoThread& thread_;
  WsSocket socket_;
  // The flags share the descriptor's 16 bytes (no padding between them).
  State state_ = State::open;
  bool read_armed_ = false;   // waiting for input (the next EPOLLIN edge reads)
  bool write_armed_ = false;  // a write met EAGAIN: the next EPOLLOUT edge flushes
  bool flush_pending_ = false;
  bool close_queued_ = false;   // our close frame is in the queue
  bool close_sent_ = false;     // ... and has been written
  bool peer_closed_ = false;    // the client's close frame arrived
  bool session_closed_ = false;
  bool deflate_ = false;  // permessage-deflate: data frames leave compressed (Message::deflated)
  bool has_session_ = false;  // session_ lives (start() to finalize())
  std::uint16_t close_code_ = wire::close_code::abnormal;
  // What the connection keeps of its ConnectionInfo (the principal goes to
  // the session, the TLS session to tls_, deflate to deflate_).
  std::uint64_t id_;
  PeerAddress peer_;  // 23 bytes; the padding after it is the only padding left
  limits::Permit permit_;
  limits::SocketPermit socket_permit_;
  // The services and configuration, its thread's (no copy per connection).
  channels::Services& services() const noexcept { return *thread_.services; }
  const config::Config& config() const noexcept { return *thread_.config; }
  wire::FrameReader reader_;
  OutboundQueue out_;
  // From the configuration, read when needed rather than kept in every
  // connection: outbound_queue_bytes (0 = unlimited), and the exempt bytes
  // of join output (send_initial).
  std::size_t queue_limit() const noexcept;
  std::size_t initial_allowance() const noexcept;
  // The session, made in start() and ended in finalize() (or with the
  // connection). Kept in place with its flag among the flags above, not in
  // a std::optional, whose flag took 8 bytes of padding of every connection.
  union {
    channels::Session session_;
  };
  channels::Session* session() noexcept { return has_session_ ? &session_ : nullptr; }
  const channels::Session* session() const noexcept { return has_session_ ? &session_ : nullptr; }
  // As std::optional::reset: the flag drops before the session's destructor runs.
  void end_session() noexcept {
    if (!has_session_) return;
    has_session_ = false;
    std::destroy_at(&session_);
  }
  TlsPtr tls_;  // null: plain, the path that pays nothing for TLS

  // Made when the connection starts closing: the reason, for the close log
  // line, and since when (the close handshake's bound). Null while open, so
  // an open connection keeps neither.
  struct Closing {
    std::string reason;
    std::int64_t since_ms = 0;
  };
  std::unique_ptr<Closing> closing_;
  // Starts the closing state's record (begin_close, on_close), or only
  // notes the reason (abort, which closes at once).
  void set_closing(std::string_view reason, std::int64_t since_ms) {
    closing_ = std::make_unique<Closing>(Closing{std::string(reason), since_ms});
  }
  std::int64_t opened_ms_ = 0;
  std::int64_t last_rx_ms_ = 0;
};

}  // namespace synapse::net
