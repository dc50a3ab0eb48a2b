#include "net/server.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <csignal>
#include <memory>
#include <spdlog/spdlog.h>

#include "auth/key_store.hpp"
#include "channels/services.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "limits/connection_limiter.hpp"
#include "net/http_session.hpp"
#include "net/ws_connection.hpp"
#include "pubsub/broker.hpp"
#include "wire/ws_frame.hpp"

namespace synapse::net {
namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {
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
      accept_retry_timer_(main_.ioc) {}

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
      // Out of descriptors: accepting again at once would spin. Wait a little.
      spdlog::warn("accept failed: {}", ec.message());
      accept_retry_timer_.expires_after(std::chrono::milliseconds(100));
      accept_retry_timer_.async_wait([this](const error_code& e) {
        if (!e) accept_next();
      });
      return;
    }
    const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    asio::post(target.ioc, [this, &target, id, peer = accept_peer_,
                            s = std::make_shared<tcp::socket>(std::move(socket))]() mutable {
      serve_http(target, std::move(*s), peer, http_, id);
    });
    accept_next();
  });
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
              (*cur)->close(wire::close_code::revoked, "credentials revoked");
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

void Server::begin_shutdown(int signal) {
  if (draining_.exchange(true)) return;
  spdlog::info("signal {}: draining (up to {} ms)", signal, http_.config.drain_timeout_ms);
  // The listener stays open while draining so that /health/ready can answer
  // 503 to a load balancer; new upgrades are refused with 503 (admission).
  for (std::size_t i = 0; i < threads_.size(); ++i) {
    IoThread& t = threads_[i];
    asio::post(t.ioc, [&t] {
      for (auto it = t.connections.begin(); it != t.connections.end();) {
        auto cur = it++;
        (*cur)->server_shutdown();
      }
    });
  }
  drain_started_ms_ = mono_ms();
  watch_drain();
}

void Server::watch_drain() {
  const auto open = http_.services.metrics.connections_open.load();
  const bool timed_out = mono_ms() - drain_started_ms_ >= http_.config.drain_timeout_ms;
  if (open <= 0 || timed_out) {
    if (open > 0) spdlog::warn("drain timeout with {} connections still open", open);
    stop_all();
    return;
  }
  drain_timer_.expires_after(std::chrono::milliseconds(25));
  drain_timer_.async_wait([this](const error_code& ec) {
    if (!ec) watch_drain();
  });
}

void Server::stop_all() {
  error_code ec;
  acceptor_.close(ec);
  for (std::size_t i = 0; i < threads_.size(); ++i) threads_[i].ioc.stop();
}

int Server::run() {
  signals_.async_wait([this](const error_code& ec, int sig) {
    if (!ec) begin_shutdown(sig);
  });
  accept_next();
  for (std::size_t i = 0; i < threads_.size(); ++i) start_sweep(threads_[i]);
  start_broker_tick();
  start_revocation_poll();
  start_housekeeping();

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (std::size_t i = 0; i < threads_.size(); ++i) guards.emplace_back(threads_[i].ioc.get_executor());
  for (std::size_t i = 1; i < threads_.size(); ++i) {
    IoThread& t = threads_[i];
    t.thread = std::thread([&t] { t.ioc.run(); });
  }
  main_.ioc.run();  // thread 0 is the calling thread
  for (std::size_t i = 1; i < threads_.size(); ++i) {
    if (threads_[i].thread.joinable()) threads_[i].thread.join();
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace synapse::net
