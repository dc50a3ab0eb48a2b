#include "net/ws_connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "config/config.hpp"
#include "core/clock.hpp"
#include "metrics/metrics.hpp"
#include "pubsub/broker.hpp"
#include "protocol/close_codes.hpp"

namespace synapse::net {
namespace asio = boost::asio;
using boost::system::error_code;

namespace {
// How long a closing connection waits for the peer's close frame or EOF.
constexpr std::int64_t close_wait_ms = 2000;
// Gather writes take at most this many messages per syscall.
constexpr std::size_t max_iov = 512;
// Reads per wakeup before yielding the thread to other connections.
constexpr int max_reads_per_wakeup = 16;
}  // namespace

namespace {
// Takes the descriptor out of Asio (its reactor forgets it: one epoll_ctl
// DEL) for the thread's own epoll set. Asio has made it non-blocking while
// serving the upgrade; only if not, it is done here.
int take_descriptor(asio::ip::tcp::socket& socket) {
  const bool non_blocking = socket.native_non_blocking();
  error_code ec;
  const int fd = socket.release(ec);
  if (ec || fd < 0) return -1;
  if (!non_blocking) {
    int on = 1;
    ::ioctl(fd, FIONBIO, &on);
  }
  return fd;
}
}  // namespace

void WsSocket::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Connection::Connection(IoThread& thread, asio::ip::tcp::socket socket, ConnectionInfo info)
    : thread_(thread),
      socket_(take_descriptor(socket)),
      deflate_(info.deflate),
      id_(info.id),
      peer_(info.peer),
      permit_(std::move(info.permit)),
      socket_permit_(std::move(info.socket_permit)),
      reader_(static_cast<std::size_t>(thread.config->max_message_bytes), wire::Role::server) {
  if (deflate_) reader_.enable_deflate();
  tls_ = std::move(info.tls);
}

std::size_t Connection::queue_limit() const noexcept {
  return static_cast<std::size_t>(config().outbound_queue_bytes);
}

// The most one join can produce: a full history and a full presence, plus
// framing. A client joining several such topics at once counts the rest
// against the bound as usual.
std::size_t Connection::initial_allowance() const noexcept {
  return static_cast<std::size_t>(config().history_max_bytes_per_topic +
                                  config().max_presence_bytes_per_topic) +
         (64u << 10);
}

// A session still alive (the connection never finalized) ends first: as a
// member it ended after closing_ and tls_, now with every member still whole.
Connection::~Connection() { end_session(); }

void Connection::start(std::shared_ptr<const auth::Principal> principal, std::string early) {
  opened_ms_ = last_rx_ms_ = mono_ms();
  // Reads and writes below are direct non-blocking syscalls (the
  // descriptor is non-blocking, see take_descriptor). TCP_NODELAY came from
  // the listener.
  services().metrics.connections_open.fetch_add(1, std::memory_order_relaxed);
  metrics::bump(services().metrics.connections_total);
  // Guarded: the peer's text is made only for a line that is written.
  if (spdlog::should_log(spdlog::level::info)) {
    spdlog::info("conn {} opened peer={} agent={} thread={}", id_, peer_.to_string(), principal->agent_id,
                 thread_.index);
  }
  std::construct_at(&session_, *this, services(), std::move(principal));
  has_session_ = true;
  if (!socket_.is_open() || !thread_.watch(socket_.native_handle(), this)) {
    abort(socket_.is_open() ? std::strerror(errno) : "the socket could not be taken from the upgrade");
    return;
  }
  if (!early.empty()) process(early.data(), early.size());
  read_some();
}

void Connection::on_ready(std::uint32_t events) {
  if (state_ == State::closed) return;
  auto self = shared_from_this();
  // An error or hang-up wakes both sides: the read or write that follows
  // meets it and ends the connection.
  const bool failed = (events & (EPOLLERR | EPOLLHUP)) != 0;
  if (write_armed_ && (failed || (events & EPOLLOUT))) {
    write_armed_ = false;
    flush();
  }
  if (read_armed_ && state_ != State::closed && (failed || (events & EPOLLIN))) {
    read_armed_ = false;
    read_some();
  }
}

std::string_view Connection::key_id() const {
  const channels::Session* s = session();
  return s ? std::string_view(s->principal().key_id) : std::string_view();
}

// --- output -----------------------------------------------------------------

// False (and the connection closing with 4008) when the queue is over its bound.
bool Connection::enqueue(wire::Message msg) {
  // The compressed variant is shared by every subscriber of the message:
  // computed by the first, a reference for the rest.
  if (deflate_) {
    msg = msg.deflated(static_cast<std::size_t>(config().deflate_threshold_bytes),
                       static_cast<int>(config().deflate_level));
  }
  if (const std::size_t limit = queue_limit(); limit > 0 && out_.counted_bytes() + msg.size() > limit) {
    begin_close(protocol::close_code::slow_consumer, "slow consumer: outbound queue over limit");
    return false;
  }
  out_.push(std::move(msg));
  return true;
}

void Connection::send(wire::Message msg) {
  if (state_ != State::open) return;
  if (enqueue(std::move(msg))) schedule_flush();
}

void Connection::send_batch(const wire::Message* const* msgs, std::size_t n) {
  if (state_ != State::open) return;
  for (std::size_t i = 0; i < n; ++i) {
    if (!enqueue(*msgs[i])) return;
  }
  if (!write_armed_) write_out();
}

void Connection::send_initial(wire::Message msg) {
  if (state_ != State::open) return;
  if (queue_limit() == 0 || out_.exempt_bytes() + msg.size() > initial_allowance()) {
    send(std::move(msg));
    return;
  }
  if (deflate_) {
    msg = msg.deflated(static_cast<std::size_t>(config().deflate_threshold_bytes),
                       static_cast<int>(config().deflate_level));
  }
  out_.push(std::move(msg), true);
  schedule_flush();
}

void Connection::schedule_flush() {
  if (flush_pending_ || write_armed_ || state_ == State::closed) return;
  flush_pending_ = true;
  thread_.mark_dirty(shared_from_this());
}

void Connection::flush() {
  flush_pending_ = false;
  write_out();
}

void Connection::end_later(std::string why) {
  asio::post(thread_.ioc, [self = shared_from_this(), why = std::move(why)] { self->abort(why); });
}

void Connection::write_out() {
  if (state_ == State::closed || write_armed_) return;
  // What this connection is about to read must survive a crash first (a
  // no-op unless history is kept on disk; see Broker::make_durable).
  services().broker.make_durable();
  if (tls_ && !write_out_tls()) return;  // with TLS, the queue is empty past this point
  const int fd = socket_.native_handle();
  iovec iov[max_iov];
  while (!out_.empty()) {
    // One frame waiting (a paced fan-out's usual case) leaves by send():
    // the kernel then imports no msghdr and no iovec array.
    const std::size_t parts = out_.gather(iov, max_iov);
    ssize_t n;
    if (parts == 1) {
      n = ::send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = parts;
      n = ::sendmsg(fd, &mh, MSG_NOSIGNAL);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        arm_write();
        return;
      }
      end_later(std::strerror(errno));
      return;
    }
    auto& m = services().metrics;
    metrics::bump(m.write_syscalls);
    metrics::bump(m.bytes_out, static_cast<std::uint64_t>(n));
    metrics::bump(m.frames_out, out_.consume(static_cast<std::size_t>(n)));
  }
  if (close_queued_ && !close_sent_) {
    close_sent_ = true;
    // Our close frame is out: half-close so the client sees EOF after it,
    // then wait for its close frame (or EOF) before releasing the socket.
    ::shutdown(fd, SHUT_WR);
    if (peer_closed_) {
      asio::post(thread_.ioc, [self = shared_from_this()] { self->finalize(); });
    }
  }
}

// The descriptor is in the thread's epoll set for output since start(): a
// write that met EAGAIN only waits for the next EPOLLOUT edge.
void Connection::arm_write() { write_armed_ = true; }

// --- input ------------------------------------------------------------------

// As arm_write: input edges arrive whatever is armed; an armed connection
// reads on the next one. Every read drains the socket (or yields with a
// read posted), so no edge is missed while unarmed.
void Connection::arm_read() {
  if (state_ == State::closed) return;
  read_armed_ = true;
}

// Reads until the socket is drained before waiting again: the reactor is
// edge-triggered, so readiness that is not drained would not be reported a
// second time.
//
// TLS connections take the same epoll path, not Asio's: TlsSession::read
// keeps calling SSL_read until its buffer is full or SSL_read wants more
// from the socket, and with read-ahead that happens only once the records
// OpenSSL buffered (SSL_pending and any partial record) are used up and the
// socket itself answered EAGAIN. So "drained" means the same thing for both,
// and a record buffered inside OpenSSL never waits for an edge that will not
// come. (A full buffer or the read budget loops or re-posts the read, as for
// plain.) Its writes go to our own buffer BIO, so SSL_read never blocks on
// the socket for output.
void Connection::read_some() {
  auto self = shared_from_this();
  const int fd = socket_.native_handle();
  auto& buf = thread_.read_buffer;
  for (int round = 0; state_ != State::closed; ++round) {
    if (round == max_reads_per_wakeup) {
      asio::post(thread_.ioc, [self] { self->read_some(); });
      return;
    }
    const ssize_t n = tls_ ? tls_->read(fd, buf.data(), buf.size()) : ::recv(fd, buf.data(), buf.size(), 0);
    if (n > 0) {
      last_rx_ms_ = mono_ms();
      process(buf.data(), static_cast<std::size_t>(n));
      // A short read took everything the socket held, so the recv that
      // would answer EAGAIN can be skipped: data arriving after it raises a
      // new edge, which the wait armed below (before this thread returns to
      // the reactor) will see. Not over TLS: the session may have met an
      // EOF or an error behind the data, which only the next read returns.
      if (static_cast<std::size_t>(n) < buf.size() && !tls_) break;
      continue;
    }
    if (n == 0) {
      if (state_ == State::open) {
        abort("connection closed by peer without a close frame");
      } else {
        finalize();
      }
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    abort(std::strerror(errno));
    return;
  }
  if (state_ == State::closed) return;
  if (tls_ && tls_->has_output()) schedule_flush();  // a TLS reply the read produced (key update)
  arm_read();
}

void Connection::process(char* data, std::size_t n) {
  metrics::bump(services().metrics.bytes_in, n);
  if (reader_.finished()) return;  // after a close or violation, input is ignored
  reader_.feed(data, n, *this);
}

void Connection::on_message(wire::Opcode op, std::string_view payload) {
  if (state_ != State::open) return;
  metrics::bump(services().metrics.frames_in);
  if (op == wire::Opcode::binary) {
    session()->on_malformed("binary frames are not part of the protocol; send JSON text frames");
  } else {
    session()->on_text(payload);
  }
}

void Connection::on_ping(std::string_view payload) {
  if (state_ == State::open) send(wire::Message::pong(payload));
}

void Connection::on_pong(std::string_view) {}

void Connection::on_close(std::uint16_t code, std::string_view reason) {
  peer_closed_ = true;
  if (state_ == State::open) {
    // The client closes: echo its code, leave every topic, then let the
    // flush finish the handshake.
    state_ = State::closing;
    close_code_ = code;
    set_closing(reason, mono_ms());
    teardown_session();
    // Replies to the frames that came before the close are already queued
    // and leave ahead of our close frame (RFC 6455 section 5.5.1: the
    // endpoint may send data until it sends its close). Nothing is queued
    // after it: the session is gone.
    out_.push(wire::Message::close(code == wire::close_code::no_status ? wire::close_code::normal : code, ""));
    close_queued_ = true;
    schedule_flush();
  } else if (state_ == State::closing && close_sent_) {
    finalize();
  }
}

void Connection::on_violation(std::uint16_t code, std::string_view why) { begin_close(code, why); }

// --- closing ----------------------------------------------------------------

void Connection::close(std::uint16_t code, std::string_view reason) { begin_close(code, reason); }

void Connection::begin_close(std::uint16_t code, std::string_view reason) {
  if (state_ != State::open) return;
  state_ = State::closing;
  close_code_ = code;
  set_closing(reason, mono_ms());
  // A slow consumer's backlog is dropped at once: that is the memory the
  // limit protects. A partly written head stays, so the close frame never
  // follows half a frame.
  if (code == protocol::close_code::slow_consumer) out_.drop_unsent();
  out_.push(wire::Message::close(code, reason));
  close_queued_ = true;
  // The caller may be a channel handler: tear channels down from a fresh stack.
  asio::post(thread_.ioc, [self = shared_from_this()] { self->teardown_session(); });
  schedule_flush();
}

void Connection::teardown_session() {
  if (session_closed_ || !has_session_) return;
  session_closed_ = true;
  session_.close_channels();
}

void Connection::abort(std::string_view why) {
  if (state_ == State::closed) return;
  if (state_ == State::open) {
    close_code_ = wire::close_code::abnormal;
    set_closing(why, 0);
  }
  finalize();
}

void Connection::finalize() {
  if (state_ == State::closed) return;
  auto self = shared_from_this();  // the thread's list may hold the last reference
  state_ = State::closed;
  teardown_session();
  // The close line's fields, made only when the line is written.
  const bool log_close = spdlog::should_log(spdlog::level::info);
  const std::string agent = log_close && has_session_ ? session_.principal().agent_id : std::string();
  end_session();
  out_.clear();
  permit_.release();
  services().metrics.connections_open.fetch_sub(1, std::memory_order_relaxed);
  services().metrics.count_close(close_code_);
  if (log_close) {
    spdlog::info("conn {} closed code={} reason=\"{}\" duration_ms={} peer={} agent={}", id_, close_code_,
                 closing_ ? std::string_view(closing_->reason) : std::string_view(), mono_ms() - opened_ms_,
                 peer_.to_string(), agent);
  }
  thread_.forget(this);
  socket_.close();
  thread_.connections.erase(in_thread);
}

void Connection::tick(std::int64_t now_mono_ms, std::int64_t now_unix_ms) {
  if (state_ == State::open) {
    const auto idle = config().idle_timeout_ms;
    if (idle > 0 && now_mono_ms - last_rx_ms_ >= idle) {
      begin_close(protocol::close_code::idle_timeout, "idle timeout");
      return;
    }
    out_.release_if_idle();
    session()->on_tick(now_unix_ms);
  } else if (state_ == State::closing && closing_ && now_mono_ms - closing_->since_ms >= close_wait_ms) {
    finalize();
  }
}

void Connection::server_shutdown() {
  if (state_ != State::open) return;
  session()->shutdown();
  begin_close(wire::close_code::going_away, "server shutting down");
}

Poster Connection::poster() {
  return [weak = weak_from_this(), ioc = &thread_.ioc](Task task) {
    asio::post(*ioc, [weak, task = std::move(task)] {
      if (auto c = weak.lock(); c && c->state_ == State::open) task();
    });
  };
}

void Connection::after(std::int64_t delay_ms, Task task) {
  auto timer = std::make_shared<asio::steady_timer>(thread_.ioc, std::chrono::milliseconds(delay_ms));
  timer->async_wait([weak = weak_from_this(), timer, task = std::move(task)](const error_code& ec) {
    if (ec) return;
    if (auto c = weak.lock(); c && c->state_ == State::open) task();
  });
}

}  // namespace synapse::net
