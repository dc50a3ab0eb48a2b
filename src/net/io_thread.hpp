// One I/O thread: an io_context run by exactly one thread, and the state of
// the connections that live on it. Nothing here is locked: only this thread
// touches it; other threads reach it by posting to `ioc`.
#pragma once

#include <sys/epoll.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <thread>
#include <vector>

#include "auth/principal_pool.hpp"
#include "core/poster.hpp"

namespace synapse::channels {
struct Services;
}
namespace synapse::config {
struct Config;
}

namespace synapse::net {

class Connection;

// A connection's links in its thread's list (a member of the Connection):
// listing a connection allocates nothing (a std::list node was 32 bytes
// more, and a malloc chunk, per connection).
struct ConnectionLink {
  ConnectionLink* prev = nullptr;
  ConnectionLink* next = nullptr;
  std::shared_ptr<Connection> owner;  // the list's reference, while listed
};

// The thread's connections, newest first; each listed one is owned by its
// link. Erasing one never invalidates an iterator to another, so a loop may
// step past the current entry first and let it erase itself (as with
// std::list).
class ConnectionList {
 public:
  class iterator {
   public:
    explicit iterator(ConnectionLink* l = nullptr) noexcept : l_(l) {}
    const std::shared_ptr<Connection>& operator*() const noexcept { return l_->owner; }
    iterator& operator++() noexcept {
      l_ = l_->next;
      return *this;
    }
    iterator operator++(int) noexcept {
      iterator was = *this;
      l_ = l_->next;
      return was;
    }
    bool operator==(const iterator& o) const noexcept { return l_ == o.l_; }

   private:
    ConnectionLink* l_;
  };

  ConnectionList() = default;
  ConnectionList(const ConnectionList&) = delete;
  ConnectionList& operator=(const ConnectionList&) = delete;
  ~ConnectionList() { clear(); }

  // `link` is c's own (Connection::in_thread); not listed yet.
  void push_front(ConnectionLink& link, std::shared_ptr<Connection> c) noexcept {
    link.owner = std::move(c);
    link.prev = nullptr;
    link.next = head_;
    if (head_) head_->prev = &link;
    head_ = &link;
  }
  // Unlists and drops the list's reference; the caller holds its own if the
  // connection must outlive the call. A link not listed is left alone.
  void erase(ConnectionLink& link) noexcept {
    if (!link.owner) return;
    if (link.prev) {
      link.prev->next = link.next;
    } else {
      head_ = link.next;
    }
    if (link.next) link.next->prev = link.prev;
    link.prev = link.next = nullptr;
    auto owner = std::move(link.owner);
  }
  void clear() noexcept {
    while (head_) erase(*head_);
  }
  iterator begin() const noexcept { return iterator(head_); }
  iterator end() const noexcept { return iterator(); }

 private:
  ConnectionLink* head_ = nullptr;
};

struct IoThread {
  explicit IoThread(std::size_t i);
  ~IoThread();

 private:
  // The wait on the connection set, an operation of Asio's reactor (see
  // watch() and io_thread.cpp). Declared before `ioc` so that it outlives
  // the io_context, which may still hold it in a queue when it shuts down.
  struct SetWait;
  std::unique_ptr<SetWait> set_wait_;

 public:
  boost::asio::io_context ioc{1};
  std::size_t index;
  // Every read lands here first, so an idle connection owns no read buffer.
  std::vector<char> read_buffer;
  ConnectionList connections;
  // Connections with output waiting; flushed together after the current
  // batch of handlers, so messages queued in that batch share one write:
  // at the end of a batch of ready connections (dispatch_ready), or by a
  // posted flush_dirty for what other handlers queue.
  std::vector<std::shared_ptr<Connection>> dirty;
  std::vector<std::shared_ptr<Connection>> flushing;
  bool flush_posted = false;
  boost::asio::steady_timer sweep_timer{ioc};
  // The principals of this thread's connections, one copy per credential.
  auth::PrincipalPool principals;
  // The services this thread's connections serve with, the server's (set
  // by net::Server before it accepts): a pointer per thread rather than a
  // reference in every connection. `config` is services->config, kept
  // beside it so that a connection reads its bounds (queue limit, deflate
  // settings) through as many pointers as when it held the services itself.
  channels::Services* services = nullptr;
  const config::Config* config = nullptr;
  std::thread thread;

  void mark_dirty(std::shared_ptr<Connection> c);
  void flush_dirty();
  Poster poster();

  // WebSocket connections after the upgrade are watched here, not by Asio's
  // reactor: each descriptor is added once to this thread's own epoll set,
  // edge-triggered for input and output, and nothing is registered or
  // allocated per wait. Asio's reactor watches the set's descriptor and
  // hands the ready connections to Connection::on_ready. An idle
  // connection so costs no pending operation (about 240 bytes in Asio) and
  // no reactor state (168 bytes), and a wait costs no epoll_ctl.
  // False (errno set) when the descriptor could not be added.
  bool watch(int fd, Connection* c);
  // Before `c` is destroyed: the rest of the batch being dispatched forgets it.
  void forget(Connection* c) noexcept;

 private:
  void arm_poll();
  // Takes what the set has ready into events_ (epoll_wait, timeout 0);
  // false when nothing is. `exhausted`: fewer than max_events came.
  bool take_ready(bool& exhausted) noexcept;
  void dispatch_ready();

  static constexpr int max_events = 256;
  int poll_fd_ = -1;
  epoll_event events_[max_events];
  // events_[0, batch_size_) were taken from the set and are not all handled
  // yet; dispatching_ is the one being handled (-1 before the first).
  int dispatching_ = -1;
  int batch_size_ = 0;
};

class IoThreads {
 public:
  explicit IoThreads(std::size_t n);
  std::size_t size() const noexcept { return threads_.size(); }
  IoThread& operator[](std::size_t i) { return *threads_[i]; }
  std::vector<Poster> posters();

 private:
  std::vector<std::unique_ptr<IoThread>> threads_;
};

}  // namespace synapse::net
