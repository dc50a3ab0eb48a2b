#include "net/io_thread.hpp"

#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <spdlog/spdlog.h>
#include <string>

#include "net/ws_connection.hpp"

namespace synapse::net {

IoThread::IoThread(std::size_t i) : index(i), read_buffer(64 * 1024) {
  poll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (poll_fd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
  poll_wait_.assign(poll_fd_);
  arm_poll();
}

// The stream_descriptor closes the epoll descriptor.
IoThread::~IoThread() = default;

bool IoThread::watch(int fd, Connection* c) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.ptr = c;
  return ::epoll_ctl(poll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void IoThread::forget(Connection* c) noexcept {
  // Closing the descriptor takes it out of the set; only events already
  // returned by epoll_wait may still name the connection.
  for (int i = dispatching_ + 1; dispatching_ >= 0 && i < batch_size_; ++i) {
    if (events_[i].data.ptr == c) events_[i].data.ptr = nullptr;
  }
}

void IoThread::arm_poll() {
  poll_wait_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
    if (!ec) dispatch_ready();
  });
}

void IoThread::dispatch_ready() {
  int n;
  do {
    n = ::epoll_wait(poll_fd_, events_, max_events, 0);
  } while (n < 0 && errno == EINTR);
  batch_size_ = n > 0 ? n : 0;
  for (dispatching_ = 0; dispatching_ < batch_size_; ++dispatching_) {
    auto* c = static_cast<Connection*>(events_[dispatching_].data.ptr);
    if (!c) continue;
    // As run_guarded does for Asio's handlers: a throw ends what that
    // connection was doing, not the batch (nor the wait on the set).
    try {
      c->on_ready(events_[dispatching_].events);
    } catch (const std::exception& e) {
      spdlog::error("a handler threw and was dropped: {}", e.what());
    } catch (...) {
      spdlog::error("a handler threw a non-standard exception and was dropped");
    }
  }
  dispatching_ = -1;
  batch_size_ = 0;
  // What the batch queued goes out now, before the wait is armed again:
  // a posted flush would first cost Asio a reactor poll (epoll_wait with
  // timeout 0) and the re-arm's epoll_ctl, both on the way of every reply.
  if (!dirty.empty()) flush_dirty();
  if (n == max_events) {
    // Perhaps more are ready: take them after the handlers queued meanwhile.
    boost::asio::post(ioc, [this] { dispatch_ready(); });
  } else {
    arm_poll();
  }
}

void IoThread::mark_dirty(std::shared_ptr<Connection> c) {
  dirty.push_back(std::move(c));
  // Inside a batch of ready connections, dispatch_ready flushes when the
  // batch ends; elsewhere (posted work, timers) a flush is posted.
  if (!flush_posted && dispatching_ < 0) {
    flush_posted = true;
    boost::asio::post(ioc, [this] { flush_dirty(); });
  }
}

void IoThread::flush_dirty() {
  flush_posted = false;
  // Two vectors swapped back and forth keep their capacity: no allocation
  // from one flush to the next.
  flushing.swap(dirty);
  for (auto& c : flushing) c->flush();
  flushing.clear();
}

Poster IoThread::poster() {
  return [this](Task t) { boost::asio::post(ioc, std::move(t)); };
}

IoThreads::IoThreads(std::size_t n) {
  threads_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) threads_.push_back(std::make_unique<IoThread>(i));
}

std::vector<Poster> IoThreads::posters() {
  std::vector<Poster> out;
  out.reserve(threads_.size());
  for (auto& t : threads_) out.push_back(t->poster());
  return out;
}

}  // namespace synapse::net
