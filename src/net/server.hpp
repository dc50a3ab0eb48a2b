// The listener and the server's periodic work: accepting onto the I/O
// threads, per-thread sweeps (timeouts, token expiry), the broker's tick,
// revocation polling, graceful shutdown on SIGINT/SIGTERM, and the TLS
// certificate's reload on SIGHUP (when TLS is on).
#pragma once

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <set>
#include <string>

#include "net/http_api.hpp"
#include "net/io_thread.hpp"

namespace synapse::net {

class Server {
 public:
  Server(IoThreads& threads, HttpContext& http, std::atomic<bool>& draining);
  ~Server();

  // Binds and listens; throws std::system_error when the address is taken.
  void listen(const std::string& address, std::uint16_t port);
  std::uint16_t port() const;
  // Runs every I/O thread until shutdown has drained; returns the exit code.
  int run();

 private:
  void accept_next();
  // Answers a socket the accept gate refused, without reading from it.
  void refuse_at_accept(boost::asio::ip::tcp::socket& socket, int verdict);
  // Out of descriptors: frees the spare, takes one pending connection off
  // the backlog and closes it, takes the spare back.
  void shed_one();
  void start_sweep(IoThread& t);
  void start_broker_tick();
  void start_revocation_poll();
  void start_housekeeping();
  void wait_signal();
  void begin_shutdown(int signal);
  void watch_runs();
  void close_connections();
  void watch_close();
  void stop_all();

  IoThreads& threads_;
  HttpContext& http_;
  std::atomic<bool>& draining_;
  IoThread& main_;  // thread 0: acceptor, signals, timers
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::ip::tcp::endpoint accept_peer_;  // filled by each accept
  boost::asio::signal_set signals_;
  boost::asio::steady_timer broker_timer_;
  boost::asio::steady_timer revocation_timer_;
  boost::asio::steady_timer housekeeping_timer_;
  boost::asio::steady_timer drain_timer_;
  boost::asio::steady_timer accept_retry_timer_;
  std::size_t next_thread_ = 0;
  std::atomic<std::uint64_t> next_id_{1};
  std::set<std::string> revoked_;
  int spare_fd_ = -1;  // kept open to be given up when accept() hits EMFILE
  std::int64_t refused_since_log_ = 0;
  std::int64_t refusal_logged_ms_ = 0;
  std::int64_t drain_started_ms_ = 0;
  std::int64_t closing_started_ms_ = 0;
};

}  // namespace synapse::net
