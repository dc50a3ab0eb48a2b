// The node's link to Redis: a command connection and a subscriber
// connection on a thread of their own, reconnected with backoff when either
// drops. The link remembers which channels are wanted and subscribes them
// again after a reconnect; only then does it report itself up.
//
// Threads: the link's thread runs every callback (on_message, on_up,
// command callbacks, deadlines). Every public function may be called from
// any thread. The blocking forms, call() and the two-argument subscribe(),
// wait on their caller's thread: never on the link's own thread, and never
// on an I/O thread (which would stall every connection on it); they are for
// startup and the command line. Everything else uses the forms that take a
// callback (and a timeout, run as a timer on the link's thread).
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "redis/reply.hpp"
#include "redis/url.hpp"

namespace synapse::redis {

class Connection;

struct LinkHandlers {
  std::function<void(const std::string& channel, const std::string& payload)> on_message;
  // After every (re)connection, once the wanted channels are subscribed.
  std::function<void()> on_up;
  // When an up link is lost (before any reconnect attempt). Nothing more
  // arrives on the subscriber connection until the next on_up, and what was
  // in flight on it is gone: the owner reads it from its history then.
  std::function<void()> on_down;
};

class Link {
 public:
  // `name` names the connections in Redis (<name>:cmd and <name>:sub).
  Link(Url url, std::string name);
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Lua scripts loaded on every (re)connection before anything else is
  // sent, so EVALSHA finds them even right after Redis restarted. Call
  // before start().
  void preload(std::string lua) { scripts_.push_back(std::move(lua)); }
  // Loads them again (after NOSCRIPT: someone flushed Redis's script cache).
  void reload_scripts();
  // Handlers must be set before start().
  void set_handlers(LinkHandlers h) { handlers_ = std::move(h); }
  // Starts the thread and connects; blocks up to `timeout`. Returns "" when
  // connected, else the reason (the link is then stopped).
  std::string start(std::chrono::milliseconds timeout);
  void stop();

  bool up() const noexcept { return up_.load(std::memory_order_acquire); }
  const Url& url() const noexcept { return url_; }

  // Sends a command; `cb` (may be empty) runs on the link's thread.
  void command(std::vector<std::string> args, std::function<void(Reply)> cb);
  // The same with a deadline: `cb` runs on the link's thread exactly once,
  // with the reply, or with a `lost` reply when none came within `timeout`
  // (the command may still run in Redis; its late reply is dropped), or
  // `not_connected` when the link is down.
  void command(std::vector<std::string> args, std::function<void(Reply)> cb, std::chrono::milliseconds timeout);
  // Sends a command and waits for its reply. Down: `not_connected` at once.
  Reply call(std::vector<std::string> args, std::chrono::milliseconds timeout);
  // Adds `channel` to the wanted set; `cb(confirmed)` runs on the link's
  // thread exactly once: true when Redis confirmed the subscription, false
  // when the link is down or no confirmation came within `timeout`. The
  // channel stays wanted either way and is subscribed on every reconnect.
  void subscribe(const std::string& channel, std::chrono::milliseconds timeout, std::function<void(bool)> cb);
  // The same, waiting for the answer (startup only: see Threads above).
  bool subscribe(const std::string& channel, std::chrono::milliseconds timeout);
  void unsubscribe(const std::string& channel);
  // Runs `task` on the link's thread.
  void post(std::function<void()> task);

  std::uint64_t reconnects() const noexcept { return reconnects_.load(std::memory_order_relaxed); }

 private:
  // A callback with a deadline, on the link's thread: finish() runs it once.
  template <class T>
  struct Deadline;
  using Waiter = Deadline<bool>;

  void connect_both(std::function<void(const std::string&)> done);
  void went_down(const std::string& why);
  void schedule_reconnect();
  void on_push(Reply r);
  // A `subscribe` confirmation on the subscriber connection.
  void confirmed(const std::string& channel);
  // The subscriber connection is gone: every waiter hears false.
  void fail_waiters();
  // Pings both connections every second; one that has not answered for a
  // while is dead even if TCP has not noticed (a hung or partitioned Redis).
  //
  // Contract: the link is declared down only for a ping that Redis had a
  // fair chance to answer, i.e. one whose deadline passed while this
  // process was running. A tick that fires much later than it was armed for
  // means this process (or its thread) did not run meanwhile (SIGSTOP, a
  // VM or container freeze, a debugger): the replies may be sitting unread
  // in the sockets, so the clocks start again from now and the ping is
  // sent again; Redis is judged on that one. The messages already queued
  // in the subscriber socket are then read, not dropped with a reconnect.
  void watch();

  Url url_;
  std::string name_;
  LinkHandlers handlers_;
  boost::asio::io_context ioc_;
  boost::asio::steady_timer retry_timer_;
  boost::asio::steady_timer watchdog_;
  std::chrono::steady_clock::time_point cmd_answered_, sub_answered_;
  std::uint64_t pauses_ = 0;  // ticks that came late (the process was paused); link thread
  std::thread thread_;
  std::shared_ptr<Connection> cmd_;
  std::shared_ptr<Connection> sub_;
  std::atomic<bool> up_{false};
  std::atomic<std::uint64_t> reconnects_{0};
  bool stopping_ = false;
  bool resubscribing_ = false;
  std::chrono::milliseconds backoff_{100};
  std::function<void(const std::string&)> pending_up_;  // completes a connect once resubscribed
  std::set<std::string> wanted_;
  std::vector<std::string> scripts_;
  // Per channel, on the current subscriber connection: SUBSCRIBEs sent by
  // subscribe() and confirmations seen, and who waits for which (by the
  // number of its SUBSCRIBE). An entry lives while confirmations are owed.
  struct Subscription {
    std::uint64_t sent = 0;
    std::uint64_t confirmed = 0;
    std::vector<std::pair<std::uint64_t, std::shared_ptr<Waiter>>> waiters;
  };
  std::unordered_map<std::string, Subscription> subs_;
};

}  // namespace synapse::redis
