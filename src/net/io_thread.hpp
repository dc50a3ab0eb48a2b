// One I/O thread: an io_context run by exactly one thread, and the state of
// the connections that live on it. Nothing here is locked: only this thread
// touches it; other threads reach it by posting to `ioc`.
#pragma once

#include <sys/epoll.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <list>
#include <memory>
#include <thread>
#include <vector>

#include "auth/principal_pool.hpp"
#include "core/poster.hpp"

namespace synapse::net {

class Connection;

struct IoThread {
  explicit IoThread(std::size_t i);
  ~IoThread();

  boost::asio::io_context ioc{1};
  std::size_t index;
  // Every read lands here first, so an idle connection owns no read buffer.
  std::vector<char> read_buffer;
  std::list<std::shared_ptr<Connection>> connections;
  // Connections with output waiting; flushed together after the current
  // batch of handlers, so messages queued in that batch share one write.
  std::vector<std::shared_ptr<Connection>> dirty;
  std::vector<std::shared_ptr<Connection>> flushing;
  bool flush_posted = false;
  boost::asio::steady_timer sweep_timer{ioc};
  // The principals of this thread's connections, one copy per credential.
  auth::PrincipalPool principals;
  std::thread thread;

  void mark_dirty(std::shared_ptr<Connection> c);
  void flush_dirty();
  Poster poster();

  // WebSocket connections after the upgrade are watched here, not by Asio's
  // reactor: each descriptor is added once to this thread's own epoll set,
  // edge-triggered for input and output, and nothing is registered or
  // allocated per wait. Asio waits on the set's descriptor and hands the
  // ready connections to Connection::on_ready. An idle connection so costs
  // no pending operation (about 240 bytes in Asio) and no reactor state
  // (168 bytes), and a wait costs no epoll_ctl.
  // False (errno set) when the descriptor could not be added.
  bool watch(int fd, Connection* c);
  // Before `c` is destroyed: the rest of the batch being dispatched forgets it.
  void forget(Connection* c) noexcept;

 private:
  void arm_poll();
  void dispatch_ready();

  static constexpr int max_events = 256;
  int poll_fd_ = -1;
  boost::asio::posix::stream_descriptor poll_wait_{ioc};
  epoll_event events_[max_events];
  int dispatching_ = -1;  // index in events_ being handled; -1 outside a batch
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
