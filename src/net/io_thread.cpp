#include "net/io_thread.hpp"

#include <unistd.h>

#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <spdlog/spdlog.h>
#include <string>

#include "net/ws_connection.hpp"

namespace synapse::net {

// The wait on the connection set, as an operation of Asio's own reactor
// rather than a posix::stream_descriptor::async_wait.
//
// Contract. The set's descriptor is registered with the reactor once
// (edge-triggered, as Asio registers every descriptor) and this one
// operation is started on it as a read: Asio calls perform() when the set
// may have something ready, perform() takes it with epoll_wait(timeout 0)
// into the thread's events_, and complete() dispatches that batch. Because
// the operation allows speculation, restarting it costs no system call:
// Asio runs perform() at once only while the descriptor may still be ready
// (perform() said "done" rather than "done_and_exhausted", i.e. the batch
// was full, or an edge came since), and otherwise queues it until the next
// edge. async_wait allows no speculation and so re-arms with
// epoll_ctl(EPOLL_CTL_MOD) every time, one system call more for every wake
// of the thread (a heartbeat's round trip was five calls, now four).
//
// This uses Asio's detail interface (boost/asio/detail/reactor.hpp), which
// is not public API: the stack pins Boost 1.81 (Debian 12), where the
// reactor is epoll_reactor with this start_op(); a Boost without it fails
// to compile here rather than misbehave.
//
// Lifetime: the operation is owned by the IoThread and outlives its
// io_context (set_wait_ is declared before ioc). Asio calls complete()
// with a null owner when it destroys queued operations at shutdown, and
// with operation_aborted when the descriptor is deregistered: both do
// nothing.
struct IoThread::SetWait : boost::asio::detail::reactor_op {
  SetWait(IoThread& t, boost::asio::detail::reactor& r)
      : reactor_op(boost::system::error_code(), &SetWait::perform_ready, &SetWait::complete), thread(t), reactor(r) {}

  static status perform_ready(reactor_op* base) {
    auto* self = static_cast<SetWait*>(base);
    bool exhausted = true;
    if (!self->thread.take_ready(exhausted)) return not_done;
    return exhausted ? done_and_exhausted : done;
  }

  static void complete(void* owner, boost::asio::detail::operation* base, const boost::system::error_code&,
                       std::size_t) {
    auto* self = static_cast<SetWait*>(base);
    if (!owner || self->ec_) return;  // destroyed with the io_context, or deregistered
    self->thread.dispatch_ready();
  }

  IoThread& thread;
  // Looked up once rather than at every wake (use_service() takes the
  // io_context's registry lock and walks its list of services).
  boost::asio::detail::reactor& reactor;
  boost::asio::detail::reactor::per_descriptor_data data = nullptr;
};

IoThread::IoThread(std::size_t i) : index(i), read_buffer(64 * 1024) {
  set_wait_ = std::make_unique<SetWait>(*this, boost::asio::use_service<boost::asio::detail::reactor>(ioc));
  poll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (poll_fd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
  if (int err = set_wait_->reactor.register_descriptor(poll_fd_, set_wait_->data); err != 0) {
    ::close(poll_fd_);
    throw std::runtime_error(std::string("registering the connection set: ") + std::strerror(err));
  }
  arm_poll();
}

IoThread::~IoThread() {
  // Deregistering hands a queued wait back to the io_context as aborted
  // (complete() then does nothing); closing the set ends its registration.
  set_wait_->reactor.deregister_descriptor(poll_fd_, set_wait_->data, true);
  ::close(poll_fd_);
  set_wait_->reactor.cleanup_descriptor_data(set_wait_->data);
}

bool IoThread::watch(int fd, Connection* c) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.ptr = c;
  return ::epoll_ctl(poll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void IoThread::forget(Connection* c) noexcept {
  // Closing the descriptor takes it out of the set; only events already
  // taken from it (being dispatched, or taken by a speculative perform()
  // whose completion has not run yet) may still name the connection.
  for (int i = dispatching_ + 1; i < batch_size_; ++i) {
    if (events_[i].data.ptr == c) events_[i].data.ptr = nullptr;
  }
}

void IoThread::arm_poll() {
  set_wait_->ec_ = {};
  set_wait_->reactor.start_op(boost::asio::detail::reactor::read_op, poll_fd_, set_wait_->data, set_wait_.get(),
                              /*is_continuation=*/true, /*allow_speculative=*/true);
}

bool IoThread::take_ready(bool& exhausted) noexcept {
  int n;
  do {
    n = ::epoll_wait(poll_fd_, events_, max_events, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  batch_size_ = n;
  dispatching_ = -1;
  exhausted = n < max_events;
  return true;
}

void IoThread::dispatch_ready() {
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
  // What the batch queued goes out now, before the wait is started again:
  // a posted flush would wait for Asio's next turn (a reactor poll, an
  // epoll_wait with timeout 0) on the way of every reply.
  if (!dirty.empty()) flush_dirty();
  // After a full batch the wait is performed at once (perform() said more
  // may be ready), but its completion is queued behind the handlers queued
  // meanwhile; otherwise it waits for the set's next edge.
  arm_poll();
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
