#include "redis/link.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <spdlog/spdlog.h>

#include "core/handoff.hpp"
#include "redis/connection.hpp"

namespace synapse::redis {
namespace asio = boost::asio;

namespace {
constexpr auto connect_timeout = std::chrono::milliseconds(2000);
constexpr auto max_backoff = std::chrono::milliseconds(2000);
constexpr auto watch_interval = std::chrono::milliseconds(1000);
constexpr auto answer_deadline = std::chrono::milliseconds(3500);
// A watchdog tick later than this was not run on time: the process was
// paused. Small enough that a pause it lets through (at most ~1.5 s, with
// the 1 s tick) cannot by itself push an answer past answer_deadline.
constexpr auto pause_tolerance = std::chrono::milliseconds(500);

// Replies handed from the link's thread to a blocked caller.
using core::Handoff;
}  // namespace

template <class T>
struct Link::Deadline {
  Deadline(asio::io_context& ioc, std::function<void(T)> f) : timer(ioc), cb(std::move(f)) {}
  asio::steady_timer timer;
  std::function<void(T)> cb;

  // Link thread. The first of the answer and the deadline wins.
  void finish(T v) {
    if (!cb) return;
    auto f = std::move(cb);
    cb = nullptr;
    timer.cancel();
    f(std::move(v));
  }
  template <class Fail>
  void arm(std::chrono::milliseconds timeout, Fail fail) {
    timer.expires_after(timeout);
    // The handler holds the deadline until it fires or is cancelled.
    timer.async_wait([self = this, fail = std::move(fail)](const boost::system::error_code& ec) mutable {
      if (!ec) self->finish(fail());
    });
  }
};

Link::Link(Url url, std::string name)
    : url_(std::move(url)), name_(std::move(name)), retry_timer_(ioc_), watchdog_(ioc_) {}

void Link::watch() {
  const auto due = std::chrono::steady_clock::now() + watch_interval;
  watchdog_.expires_at(due);
  watchdog_.async_wait([this, due](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    if (up_.load(std::memory_order_acquire) && cmd_ && sub_) {
      const auto now = std::chrono::steady_clock::now();
      const auto late = now - due;
      if (late > pause_tolerance) {
        // We were not running, so neither were our pings nor our reads: a
        // stale local clock, not an unanswered ping. Judge Redis afresh.
        ++pauses_;
        spdlog::warn("the Redis link's thread did not run for {} ms (process paused?); not counting that "
                     "against Redis, pinging again",
                     std::chrono::duration_cast<std::chrono::milliseconds>(late + watch_interval).count());
        cmd_answered_ = sub_answered_ = now;
      } else if (now - cmd_answered_ > answer_deadline || now - sub_answered_ > answer_deadline) {
        went_down("Redis stopped answering");
        watch();
        return;
      }
      cmd_->send({"PING"}, [this, c = cmd_](Reply r) {
        if (r.ok() && c == cmd_) cmd_answered_ = std::chrono::steady_clock::now();
      });
      sub_->send({"PING", "watch"}, {});
    }
    watch();
  });
}

Link::~Link() { stop(); }

std::string Link::start(std::chrono::milliseconds timeout) {
  auto result = std::make_shared<Handoff<std::string>>();
  thread_ = std::thread([this] {
    auto guard = asio::make_work_guard(ioc_);
    ioc_.run();
  });
  post([this, result] {
    connect_both([this, result](const std::string& err) {
      if (err.empty()) {
        cmd_answered_ = sub_answered_ = std::chrono::steady_clock::now();
        up_.store(true, std::memory_order_release);
        backoff_ = std::chrono::milliseconds(100);
        watch();
        if (handlers_.on_up) handlers_.on_up();
      }
      result->set(err);
    });
  });
  auto err = result->wait(timeout);
  if (!err || !err->empty()) {
    stop();
    return err ? *err : "timed out";
  }
  return "";
}

void Link::stop() {
  if (!thread_.joinable()) return;
  post([this] {
    stopping_ = true;
    up_.store(false, std::memory_order_release);
    retry_timer_.cancel();
    watchdog_.cancel();
    if (cmd_) cmd_->close("stopping");
    if (sub_) sub_->close("stopping");
    fail_waiters();
    ioc_.stop();
  });
  thread_.join();
}

void Link::post(std::function<void()> task) { asio::post(ioc_, std::move(task)); }

void Link::reload_scripts() {
  post([this] {
    if (!cmd_ || !up_.load(std::memory_order_acquire)) return;
    for (const auto& lua : scripts_) cmd_->send({"SCRIPT", "LOAD", lua}, {});
  });
}

void Link::connect_both(std::function<void(const std::string&)> done) {
  auto on_close = [this](const std::string& why) {
    if (!stopping_) went_down(why);
  };
  cmd_ = std::make_shared<Connection>(ioc_, Connection::Callback{}, on_close);
  sub_ = std::make_shared<Connection>(ioc_, [this](Reply r) { on_push(std::move(r)); }, on_close);
  auto cmd = cmd_;
  cmd_->connect(url_, name_ + ":cmd", connect_timeout, [this, cmd, done](const std::string& err) {
    if (!err.empty()) return done(err);
    if (cmd != cmd_) return done("superseded");
    for (const auto& lua : scripts_) cmd_->send({"SCRIPT", "LOAD", lua}, {});
    auto sub = sub_;
    sub_->connect(url_, name_ + ":sub", connect_timeout, [this, sub, done](const std::string& err2) {
      if (!err2.empty()) {
        cmd_->close("subscriber connection failed");
        return done(err2);
      }
      if (sub != sub_) return done("superseded");
      if (wanted_.empty()) return done("");
      // Confirmations come back in order; a PING after the SUBSCRIBE answers
      // once all of them are in.
      std::vector<std::string> args{"SUBSCRIBE"};
      args.insert(args.end(), wanted_.begin(), wanted_.end());
      resubscribing_ = true;
      sub_->send(args, {});
      sub_->send({"PING", "resubscribed"}, {});
      // on_push sees the pong and calls done through the stored callback.
      pending_up_ = std::move(done);
    });
  });
}

void Link::on_push(Reply r) {
  // Anything from the subscriber connection proves it alive (a PING answers
  // "pong" once subscribed, its argument before).
  sub_answered_ = std::chrono::steady_clock::now();
  if (r.type != Reply::Type::array || r.elements.empty()) return;
  const std::string& kind = r.elements[0].str;
  if (kind == "message" && r.elements.size() == 3) {
    if (handlers_.on_message) handlers_.on_message(r.elements[1].str, r.elements[2].str);
  } else if (kind == "subscribe" && r.elements.size() >= 2) {
    confirmed(r.elements[1].str);
  } else if (kind == "pong" && resubscribing_ && r.elements.size() >= 2 && r.elements[1].str == "resubscribed") {
    resubscribing_ = false;
    if (pending_up_) {
      auto done = std::move(pending_up_);
      pending_up_ = nullptr;
      done("");
    }
  }
}

void Link::confirmed(const std::string& channel) {
  auto it = subs_.find(channel);
  if (it == subs_.end()) return;  // a resubscription's, or nobody waits
  Subscription& s = it->second;
  ++s.confirmed;
  // Confirmations come in the order the SUBSCRIBEs went out: this one
  // answers the waiters of every SUBSCRIBE up to it, not a later one (sent
  // after an UNSUBSCRIBE whose own confirmation has not come yet).
  std::vector<std::shared_ptr<Waiter>> done;
  std::erase_if(s.waiters, [&](const auto& w) {
    if (w.first > s.confirmed) return false;
    done.push_back(w.second);
    return true;
  });
  if (s.confirmed >= s.sent && s.waiters.empty()) subs_.erase(it);
  for (auto& w : done) w->finish(true);
}

void Link::fail_waiters() {
  auto subs = std::move(subs_);
  subs_.clear();
  for (auto& [channel, s] : subs) {
    for (auto& [seq, w] : s.waiters) w->finish(false);
  }
}

void Link::went_down(const std::string& why) {
  const bool was_up = up_.exchange(false, std::memory_order_acq_rel);
  if (cmd_) cmd_->close("link down");
  if (sub_) sub_->close("link down");
  resubscribing_ = false;
  pending_up_ = nullptr;
  fail_waiters();
  if (was_up) {
    spdlog::error("lost the connection to Redis at {}: {}; local delivery continues, reconnecting", url_.text(), why);
    if (handlers_.on_down) handlers_.on_down();
    schedule_reconnect();
  }
}

void Link::schedule_reconnect() {
  if (stopping_) return;
  // Full jitter, so that nodes restarted together do not reconnect in step.
  static thread_local std::minstd_rand rng{std::random_device{}()};
  const auto wait = std::chrono::milliseconds(
      std::uniform_int_distribution<std::int64_t>(backoff_.count() / 2, backoff_.count())(rng));
  backoff_ = std::min(backoff_ * 2, max_backoff);
  retry_timer_.expires_after(wait);
  retry_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    connect_both([this](const std::string& err) {
      if (stopping_) return;
      if (!err.empty()) {
        spdlog::warn("cannot reconnect to Redis at {}: {}", url_.text(), err);
        if (cmd_) cmd_->close("retry");
        if (sub_) sub_->close("retry");
        schedule_reconnect();
        return;
      }
      if (!cmd_ || !sub_ || !cmd_->is_open() || !sub_->is_open()) {
        schedule_reconnect();
        return;
      }
      reconnects_.fetch_add(1, std::memory_order_relaxed);
      backoff_ = std::chrono::milliseconds(100);
      cmd_answered_ = sub_answered_ = std::chrono::steady_clock::now();
      up_.store(true, std::memory_order_release);
      spdlog::info("reconnected to Redis at {}; {} channels subscribed again", url_.text(), wanted_.size());
      if (handlers_.on_up) handlers_.on_up();
    });
  });
}

void Link::command(std::vector<std::string> args, std::function<void(Reply)> cb) {
  post([this, args = std::move(args), cb = std::move(cb)]() mutable {
    if (!cmd_ || !up_.load(std::memory_order_acquire)) {
      if (cb) cb(Reply::failure(Reply::Type::not_connected, "not connected to Redis"));
      return;
    }
    cmd_->send(args, std::move(cb));
  });
}

void Link::command(std::vector<std::string> args, std::function<void(Reply)> cb, std::chrono::milliseconds timeout) {
  post([this, args = std::move(args), cb = std::move(cb), timeout]() mutable {
    if (!cmd_ || !up_.load(std::memory_order_acquire)) {
      cb(Reply::failure(Reply::Type::not_connected, "not connected to Redis"));
      return;
    }
    auto d = std::make_shared<Deadline<Reply>>(ioc_, std::move(cb));
    d->arm(timeout, [d] { return Reply::failure(Reply::Type::lost, "Redis did not answer in time"); });
    cmd_->send(args, [d](Reply r) { d->finish(std::move(r)); });
  });
}

Reply Link::call(std::vector<std::string> args, std::chrono::milliseconds timeout) {
  if (!up()) return Reply::failure(Reply::Type::not_connected, "not connected to Redis");
  auto h = std::make_shared<Handoff<Reply>>();
  command(std::move(args), [h](Reply r) { h->set(std::move(r)); });
  auto r = h->wait(timeout);
  if (!r) return Reply::failure(Reply::Type::lost, "Redis did not answer in time");
  return std::move(*r);
}

void Link::subscribe(const std::string& channel, std::chrono::milliseconds timeout, std::function<void(bool)> cb) {
  post([this, channel, timeout, cb = std::move(cb)]() mutable {
    wanted_.insert(channel);
    if (!sub_ || !up_.load(std::memory_order_acquire) || resubscribing_) {
      // Down, or the resubscription in flight does not include it yet: the
      // next on_up covers it.
      cb(false);
      return;
    }
    auto w = std::make_shared<Waiter>(ioc_, std::move(cb));
    w->arm(timeout, [w] { return false; });
    Subscription& s = subs_[channel];
    s.waiters.emplace_back(++s.sent, w);
    sub_->send({"SUBSCRIBE", channel}, {});
  });
}

bool Link::subscribe(const std::string& channel, std::chrono::milliseconds timeout) {
  auto h = std::make_shared<Handoff<bool>>();
  subscribe(channel, timeout, [h](bool ok) { h->set(ok); });
  // The link's own deadline answers first; this one only guards a link
  // that was stopped meanwhile.
  auto ok = h->wait(timeout + std::chrono::milliseconds(100));
  return ok && *ok;
}

void Link::unsubscribe(const std::string& channel) {
  post([this, channel] {
    wanted_.erase(channel);
    if (sub_ && up_.load(std::memory_order_acquire)) sub_->send({"UNSUBSCRIBE", channel}, {});
  });
}

}  // namespace synapse::redis
