// One I/O thread: an io_context run by exactly one thread, and the state of
// the connections that live on it. Nothing here is locked: only this thread
// touches it; other threads reach it by posting to `ioc`.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <list>
#include <memory>
#include <thread>
#include <vector>

#include "core/poster.hpp"

namespace synapse::net {

class Connection;

struct IoThread {
  explicit IoThread(std::size_t i);

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
  std::thread thread;

  void mark_dirty(std::shared_ptr<Connection> c);
  void flush_dirty();
  Poster poster();
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
