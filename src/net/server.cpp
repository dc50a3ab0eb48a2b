#include "net/server.hpp"

#include "channels/mcp_endpoint.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <csignal>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <memory>
#include <spdlog/spdlog.h>

#include "auth/key_store.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "cortex/runs.hpp"
#include "limits/accept_gate.hpp"
#include "limits/connection_limiter.hpp"
#include "net/http_session.hpp"
#include "net/peer_address.hpp"
#include "net/tls.hpp"
#include "net/ws_connection.hpp"
#include "pubsub/broker.hpp"
#include "wire/ws_frame.hpp"
#include "protocol/close_codes.hpp"

namespace synapse::net {
namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

// Runs `ioc` until it is stopped. A handler that throws ends only what it
// was doing (its operation's state, and with it that request's socket, is
// destroyed as the exception unwinds); the thread logs it and goes on
// serving every other connection. Asio allows run() again after a throw.
void run_guarded(asio::io_context& ioc) {
  for (;;) {
    try {
      ioc.run();
      return;
    } catch (const std::exception& e) {
      spdlog::error("a handler threw and was dropped: {}", e.what());
    } catch (...) {
      spdlog::error("a handler threw a non-standard exception and was dropped");
    }
  }
}

constexpr auto sweep_interval = std::chrono::milliseconds(250);
constexpr auto housekeeping_interval = std::chrono::seconds(10);
}  // namespace

Server::Server(IoThreads& threads, HttpContext& http, std::atomic<bool>& draining)
    : threads_(threads),
      http_(http),
      draining_(draining),
      main_(threads[0]),
      acceptor_(main_.ioc),
      signals_(main_.ioc, SIGINT, SIGTERM),
      broker_timer_(main_.ioc),
      revocation_timer_(main_.ioc),
      housekeeping_timer_(main_.ioc),
      drain_timer_(main_.ioc),
      accept_retry_timer_(main_.ioc) {
  // Every connection reaches the services through its thread (IoThread::services).
  for (std::size_t i = 0; i < threads_.size(); ++i) {
    threads_[i].services = &http_.services;
    threads_[i].config = &http_.services.config;
  }
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Before "listening on" is printed: a SIGHUP from then on reloads.
  if (http_.tls) signals_.add(SIGHUP);
}

Server::~Server() {
  if (spare_fd_ >= 0) ::close(spare_fd_);
}

void Server::listen(const std::string& address, std::uint16_t port) {
  tcp::endpoint ep(asio::ip::make_address(address), port);
  acceptor_.open(ep.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which
  // saves a setsockopt per connection.
  acceptor_.set_option(tcp::no_delay(true));
  acceptor_.bind(ep);
  acceptor_.listen(asio::socket_base::max_listen_connections);
}

std::uint16_t Server::port() const { return acceptor_.local_endpoint().port(); }

void Server::accept_next() {
  IoThread& target = threads_[next_thread_++ % threads_.size()];
  // accept() fills in the peer's address, so no getpeername() later.
  acceptor_.async_accept(target.ioc, accept_peer_, [this, &target](const error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Out of descriptors: the backlog would keep the acceptor readable and
      // accepting again at once would spin, so one pending connection is shed
      // with the spare descriptor, then the acceptor waits a little.
      spdlog::warn("accept failed: {}", ec.message());
      if (ec == asio::error::no_descriptors || ec.value() == ENFILE) shed_one();
      accept_retry_timer_.expires_after(std::chrono::milliseconds(100));
      accept_retry_timer_.async_wait([this](const error_code& e) {
        if (!e) accept_next();
      });
      return;
    }
    limits::SocketPermit permit;
    if (http_.accept_gate) {
      const auto verdict = http_.accept_gate->admit(PeerAddress(accept_peer_).ip(), permit);
      if (verdict != limits::AcceptVerdict::ok) {
        refuse_at_accept(socket, static_cast<int>(verdict));
        accept_next();
        return;
      }
    }
    const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    asio::post(target.ioc, [this, &target, id, peer = accept_peer_, permit = std::move(permit),
                            s = std::make_shared<tcp::socket>(std::move(socket))]() mutable {
      serve_http(target, std::move(*s), peer, http_, id, std::move(permit));
    });
    accept_next();
  });
}

void Server::refuse_at_accept(tcp::socket& socket, int verdict) {
  using limits::AcceptVerdict;
  const bool per_ip = verdict == static_cast<int>(AcceptVerdict::per_ip_full);
  // A fresh socket's send buffer takes these few bytes at once; nothing is
  // read, so the refusal costs the descriptor for microseconds only.
  auto canned = [](std::string_view status, std::string_view body) {
    return "HTTP/1.1 " + std::string(status) +
           "\r\nServer: synapse\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           "Connection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  };
  static const std::string too_many = canned(
      "429 Too Many Requests",
      R"({"error":"too_many_connections","reason":"too many open connections from this address"})");
  static const std::string overloaded =
      canned("503 Service Unavailable", R"({"error":"overloaded","reason":"the server is out of connections"})");
  const std::string_view response = per_ip ? too_many : overloaded;
  error_code ec;
  socket.non_blocking(true, ec);
  // A TLS client could not read a plain answer: it only sees the close.
  if (!http_.tls) socket.write_some(asio::buffer(response.data(), response.size()), ec);
  socket.shutdown(tcp::socket::shutdown_send, ec);
  socket.close(ec);
  http_.services.metrics.count_refusal(per_ip ? metrics::Refusal::too_many_connections
                                              : metrics::Refusal::overloaded);
  // One line per second at most: a flood must not become a log flood.
  ++refused_since_log_;
  const std::int64_t now = mono_ms();
  if (now - refusal_logged_ms_ >= 1000) {
    spdlog::info("refused {} connections at accept (last peer={} {})", refused_since_log_,
                 accept_peer_.address().to_string(), per_ip ? "per-address limit" : "descriptor reserve");
    refused_since_log_ = 0;
    refusal_logged_ms_ = now;
  }
}

void Server::shed_one() {
  if (spare_fd_ < 0) return;
  ::close(spare_fd_);
  const int fd = ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0) ::close(fd);
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void Server::start_sweep(IoThread& t) {
  t.sweep_timer.expires_after(sweep_interval);
  t.sweep_timer.async_wait([this, &t](const error_code& ec) {
    if (ec) return;
    const std::int64_t mono = mono_ms();
    const std::int64_t now = unix_ms();
    for (auto it = t.connections.begin(); it != t.connections.end();) {
      auto cur = it++;
      (*cur)->tick(mono, now);  // may remove *cur, never another entry
    }
    start_sweep(t);
  });
}

void Server::start_broker_tick() {
  broker_timer_.expires_after(std::chrono::milliseconds(http_.config.presence_interval_ms));
  broker_timer_.async_wait([this](const error_code& ec) {
    if (ec) return;
    http_.services.broker.tick();
    start_broker_tick();
  });
}

void Server::start_revocation_poll() {
  revocation_timer_.expires_after(std::chrono::milliseconds(http_.config.revocation_poll_ms));
  revocation_timer_.async_wait([this](const error_code& ec) {
    if (ec) return;
    std::set<std::string> now_revoked;
    try {
      for (auto& id : http_.services.keys.revoked_ids()) now_revoked.insert(std::move(id));
    } catch (const std::exception& e) {
      spdlog::warn("revocation poll failed: {}", e.what());
      start_revocation_poll();
      return;
    }
    std::set<std::string> fresh;
    for (const auto& id : now_revoked) {
      if (!revoked_.count(id)) fresh.insert(id);
    }
    revoked_ = std::move(now_revoked);
    if (!fresh.empty()) {
      http_.services.keys.evict(std::vector<std::string>(fresh.begin(), fresh.end()));
      auto ids = std::make_shared<const std::set<std::string>>(std::move(fresh));
      for (std::size_t i = 0; i < threads_.size(); ++i) {
        IoThread& t = threads_[i];
        asio::post(t.ioc, [&t, ids] {
          for (auto it = t.connections.begin(); it != t.connections.end();) {
            auto cur = it++;
            const std::string_view key = (*cur)->key_id();
            if (!key.empty() && ids->count(std::string(key))) {
              (*cur)->close(protocol::close_code::revoked, "credentials revoked");
            }
          }
        });
      }
    }
    start_revocation_poll();
  });
}

void Server::start_housekeeping() {
  housekeeping_timer_.expires_after(housekeeping_interval);
  housekeeping_timer_.async_wait([this](const error_code& ec) {
    if (ec) return;
    http_.limiter.sweep();
    start_housekeeping();
  });
}

// The drain, in three steps (docs/deployment.md "Draining"):
//  1. at once: not ready (/health/ready 503), upgrades refused with 503
//     `draining`, no new query or tool on the connections already open;
//  2. running queries and tools finish, for up to server.drain_timeout_ms:
//     their events (the `result` too) reach the clients following them;
//  3. every connection still open is closed with 1001, after the runs it
//     follows are ended with `interrupted {reason: "server_shutdown"}`
//     (sent ahead of the close frame); the process stops once they are gone
//     or after the close handshake's bound.
// Everything here runs on thread 0; connections are only touched on their
// own threads, through posts.
void Server::begin_shutdown(int signal) {
  if (draining_.exchange(true)) return;
  const std::size_t running = http_.services.runs ? http_.services.runs->running_count() : 0;
  spdlog::info("signal {}: draining; {} runs may finish within {} ms", signal, running,
               http_.config.drain_timeout_ms);
  drain_started_ms_ = mono_ms();
  watch_runs();
}

void Server::watch_runs() {
  const std::size_t running = http_.services.runs ? http_.services.runs->running_count() : 0;
  const bool timed_out = mono_ms() - drain_started_ms_ >= http_.config.drain_timeout_ms;
  if (running == 0 || timed_out) {
    if (running > 0) spdlog::warn("drain timeout: interrupting {} runs still running", running);
    close_connections();
    return;
  }
  drain_timer_.expires_after(std::chrono::milliseconds(25));
  drain_timer_.async_wait([this](const error_code& ec) {
    if (!ec) watch_runs();
  });
}

void Server::close_connections() {
  // A run that ended before this point posted its terminal event to its
  // followers' threads before running_count() saw it end (the run's status
  // and its fan-out change under one lock), and each thread runs its posts
  // in order: the event leaves ahead of the close frame queued here.
  for (std::size_t i = 0; i < threads_.size(); ++i) {
    IoThread& t = threads_[i];
    asio::post(t.ioc, [&t] {
      for (auto it = t.connections.begin(); it != t.connections.end();) {
        auto cur = it++;
        (*cur)->server_shutdown();
      }
    });
  }
  // Runs nobody follows end too, with the reason in their log.
  if (http_.services.runs) http_.services.runs->shutdown();
  // MCP calls still in flight end now as interrupted (server_shutdown):
  // their streams carry that answer and close, and the close waits for them.
  if (http_.mcp) http_.mcp->shutdown();
  closing_started_ms_ = mono_ms();
  watch_close();
}

void Server::watch_close() {
  // A client that never answers our close frame is let go by its thread's
  // sweep after the close wait (2 s); this bound only backs that up.
  constexpr std::int64_t close_bound_ms = 3000;
  const auto open = http_.services.metrics.connections_open.load() + http_.open_streams.load();
  if (open <= 0 || mono_ms() - closing_started_ms_ >= close_bound_ms) {
    if (open > 0) spdlog::warn("{} connections still open after the close handshake's bound", open);
    stop_all();
    return;
  }
  drain_timer_.expires_after(std::chrono::milliseconds(25));
  drain_timer_.async_wait([this](const error_code& ec) {
    if (!ec) watch_close();
  });
}

void Server::stop_all() {
  error_code ec;
  acceptor_.close(ec);
  for (std::size_t i = 0; i < threads_.size(); ++i) threads_[i].ioc.stop();
}

// SIGHUP (registered only when TLS is on; otherwise it keeps its default)
// re-reads the certificate and key for the connections accepted from now
// on; those open keep theirs. SIGINT and SIGTERM drain.
void Server::wait_signal() {
  signals_.async_wait([this](const error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      if (http_.tls) http_.tls->reload();
    } else {
      begin_shutdown(sig);
    }
    wait_signal();
  });
}

int Server::run() {
  wait_signal();
  accept_next();
  for (std::size_t i = 0; i < threads_.size(); ++i) start_sweep(threads_[i]);
  start_broker_tick();
  start_revocation_poll();
  start_housekeeping();

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (std::size_t i = 0; i < threads_.size(); ++i) guards.emplace_back(threads_[i].ioc.get_executor());
  for (std::size_t i = 1; i < threads_.size(); ++i) {
    IoThread& t = threads_[i];
    t.thread = std::thread([&t] { run_guarded(t.ioc); });
  }
  run_guarded(main_.ioc);  // thread 0 is the calling thread
  for (std::size_t i = 1; i < threads_.size(); ++i) {
    if (threads_[i].thread.joinable()) threads_[i].thread.join();
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace synapse::net
