// One connection to Redis on an Asio io_context: commands go out in RESP,
// replies are parsed by hiredis's reader. Replies to commands are matched to
// callbacks in order; on a subscriber connection (push mode) every reply,
// subscribe confirmations included, goes to one push handler instead.
//
// hiredis 0.14 has no Asio adapter and its async context keeps its own
// table of subscriptions, which loses messages when a channel is
// unsubscribed and subscribed again before the first confirmation arrives.
// Owning the socket and using only the reader avoids both.
//
// Threads: every call, and every callback, on the io_context's one thread.
#pragma once

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "redis/reply.hpp"
#include "redis/url.hpp"

struct redisReader;

namespace synapse::redis {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using Callback = std::function<void(Reply)>;

  // `on_push` set: push mode (a subscriber connection). `on_close` runs once
  // when an open connection fails or is closed, with the reason.
  Connection(boost::asio::io_context& ioc, Callback on_push, std::function<void(const std::string&)> on_close);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Resolves, connects, names the connection (CLIENT SETNAME, so operators
  // can tell nodes apart in CLIENT LIST) and selects `url.db`; `done` gets
  // "" or the reason.
  void connect(const Url& url, const std::string& name, std::chrono::milliseconds timeout,
               std::function<void(const std::string&)> done);
  // Queues a command. `cb` (may be empty) gets its reply, or a `lost` reply
  // if the connection fails first. Not open: `not_connected` at once.
  void send(const std::vector<std::string>& args, Callback cb);
  void close(const std::string& why);
  bool is_open() const noexcept { return open_; }

 private:
  void read_loop();
  void flush();
  void fail(const std::string& why);

  boost::asio::io_context& ioc_;
  boost::asio::ip::tcp::socket socket_;
  boost::asio::steady_timer timer_;
  Callback on_push_;
  std::function<void(const std::string&)> on_close_;
  redisReader* reader_ = nullptr;
  std::deque<Callback> pending_;
  std::string out_;      // queued while a write is in flight
  std::string writing_;  // the write in flight
  bool write_in_flight_ = false;
  bool open_ = false;
  bool closed_ = false;
  std::array<char, 16 * 1024> buf_{};
};

// Appends one command in RESP (an array of bulk strings) to `out`.
void append_command(std::string& out, const std::vector<std::string>& args);

}  // namespace synapse::redis
