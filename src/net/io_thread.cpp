#include "net/io_thread.hpp"

#include <boost/asio/post.hpp>

#include "net/ws_connection.hpp"

namespace synapse::net {

IoThread::IoThread(std::size_t i) : index(i), read_buffer(64 * 1024) {}

void IoThread::mark_dirty(std::shared_ptr<Connection> c) {
  dirty.push_back(std::move(c));
  if (!flush_posted) {
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
