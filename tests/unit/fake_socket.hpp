// Test doubles for what a channel sees of its connection (channels/socket.hpp)
// and of its I/O thread (core/poster.hpp):
//
//  - TaskQueue: a thread that runs only when the test says so. Its poster()
//    may be called from any thread (workers, the run registry's timer);
//    the tasks run on the test's thread in run_pending() / run_until(),
//    which is what "posted to the connection's thread" means in a test.
//  - FakeSocket: records every frame sent (as text and as the shared
//    wire::Message), every close, and every after() timer, and posts to its
//    TaskQueue. Once closed (close() or drop_posts()) later posts are
//    dropped, as the real connection does.
//  - RecordingSink: a bare MessageSink for the fan-out path (no connection).
//  - TempDir: a directory removed with its contents at the end of a test.
#pragma once

#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "channels/socket.hpp"
#include "core/message_sink.hpp"
#include "core/poster.hpp"
#include "wire/message.hpp"

namespace synapse::fakes {

class TaskQueue {
 public:
  TaskQueue() = default;
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  // Safe from any thread; the poster keeps the queue's state alive, so a
  // worker that posts after the test ended posts into nothing.
  Poster poster() {
    return [s = state_](Task t) {
      {
        std::lock_guard lock(s->mu);
        if (s->closed) return;
        s->tasks.push_back(std::move(t));
        ++s->posted;
      }
      s->cv.notify_all();
    };
  }
  // Runs the oldest queued task, if any; returns whether one ran.
  bool run_one() {
    Task t;
    {
      std::lock_guard lock(state_->mu);
      if (state_->tasks.empty()) return false;
      t = std::move(state_->tasks.front());
      state_->tasks.pop_front();
    }
    t();
    return true;
  }
  // Runs every task queued, and those they queue, on this thread; returns
  // how many ran.
  std::size_t run_pending() {
    std::size_t n = 0;
    while (run_one()) ++n;
    return n;
  }
  // Runs tasks as they arrive until `done()` holds or `timeout` passes;
  // returns done(). `done()` is checked after every batch and at least
  // every millisecond (it may depend on other threads, not only on tasks).
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      run_pending();
      if (done()) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::unique_lock lock(state_->mu);
      state_->cv.wait_for(lock, std::chrono::milliseconds(1), [&] { return !state_->tasks.empty(); });
    }
  }
  std::size_t pending() const {
    std::lock_guard lock(state_->mu);
    return state_->tasks.size();
  }
  // Tasks ever accepted (dropped ones not counted).
  std::size_t posted() const {
    std::lock_guard lock(state_->mu);
    return state_->posted;
  }
  // From now on posts are dropped (the connection closed); queued ones too.
  void close() {
    std::lock_guard lock(state_->mu);
    state_->closed = true;
    state_->tasks.clear();
  }

 private:
  struct State {
    mutable std::mutex mu;
    std::condition_variable cv;
    std::deque<Task> tasks;
    std::size_t posted = 0;
    bool closed = false;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

// Every message handed to it, in order, with the calls that carried them.
class RecordingSink final : public MessageSink {
 public:
  void send(wire::Message msg) override {
    messages.push_back(std::move(msg));
    calls.push_back(1);
  }
  void send_batch(const wire::Message* const* msgs, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) messages.push_back(*msgs[i]);
    calls.push_back(n);
    if (on_batch) on_batch();
  }
  std::vector<std::string> payloads() const {
    std::vector<std::string> out;
    for (const auto& m : messages) out.emplace_back(m.payload());
    return out;
  }
  // Each message parsed as a Phoenix V2 frame [join_ref, ref, topic, event, payload].
  std::vector<boost::json::array> frames() const {
    std::vector<boost::json::array> out;
    for (const auto& m : messages) out.push_back(boost::json::parse(m.payload()).as_array());
    return out;
  }
  std::vector<wire::Message> messages;
  std::vector<std::size_t> calls;  // messages per send / send_batch call
  std::function<void()> on_batch;  // runs after each send_batch (tests of re-entrancy)
};

class FakeSocket final : public channels::Socket {
 public:
  struct Close {
    std::uint16_t code;
    std::string reason;
  };
  struct Timer {
    std::int64_t delay_ms;
    Task task;
  };

  explicit FakeSocket(std::uint64_t id = 1, std::size_t thread = 0) : id_(id), thread_(thread) {}

  void send(wire::Message msg) override { record(std::move(msg), false); }
  void send_batch(const wire::Message* const* msgs, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) record(*msgs[i], false);
  }
  void send_initial(wire::Message msg) override { record(std::move(msg), true); }
  void close(std::uint16_t code, std::string_view reason) override {
    closes.push_back(Close{code, std::string(reason)});
  }
  std::uint64_t id() const override { return id_; }
  std::size_t thread_index() const override { return thread_; }
  Poster poster() override { return queue.poster(); }
  void after(std::int64_t delay_ms, Task task) override { timers.push_back(Timer{delay_ms, std::move(task)}); }

  // Every frame sent so far, decoded ([join_ref, ref, topic, event, payload]).
  std::vector<boost::json::array> frames() const {
    std::vector<boost::json::array> out;
    for (const auto& m : sent) out.push_back(boost::json::parse(m.payload()).as_array());
    return out;
  }
  // The frames sent since the last take(), decoded; they are forgotten.
  std::vector<boost::json::array> take() {
    std::vector<boost::json::array> out;
    for (std::size_t i = taken_; i < sent.size(); ++i) {
      out.push_back(boost::json::parse(sent[i].payload()).as_array());
    }
    taken_ = sent.size();
    return out;
  }
  std::size_t initial_count() const {
    std::size_t n = 0;
    for (bool b : initial) n += b;
    return n;
  }

  TaskQueue queue;
  std::vector<wire::Message> sent;
  std::vector<bool> initial;  // per sent message: through send_initial
  std::vector<Close> closes;
  std::vector<Timer> timers;

 private:
  void record(wire::Message msg, bool init) {
    sent.push_back(std::move(msg));
    initial.push_back(init);
  }
  std::uint64_t id_;
  std::size_t thread_;
  std::size_t taken_ = 0;
};

struct TempDir {
  explicit TempDir(std::string_view tag) {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("synapse-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(std::string_view name) const { return (path / name).string(); }
  std::filesystem::path path;
};

// Helpers on decoded frames.
inline std::string_view event_of(const boost::json::array& f) { return f.at(3).as_string(); }
inline std::string_view topic_of(const boost::json::array& f) { return f.at(2).as_string(); }
inline const boost::json::object& payload_of(const boost::json::array& f) { return f.at(4).as_object(); }
// A phx_reply's status ("ok" / "error") and response.
inline std::string_view reply_status(const boost::json::array& f) { return payload_of(f).at("status").as_string(); }
inline const boost::json::object& reply_response(const boost::json::array& f) {
  return payload_of(f).at("response").as_object();
}
inline std::string_view reply_reason(const boost::json::array& f) {
  return reply_response(f).at("reason").as_string();
}

}  // namespace synapse::fakes
