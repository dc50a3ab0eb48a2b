#include "net/outbound_queue.hpp"

namespace synapse::net {
namespace {
constexpr std::size_t initial_slots = 8;  // a power of two, as every capacity
constexpr std::size_t kept_slots = 64;    // ring kept when the queue empties
}  // namespace

void OutboundQueue::grow() {
  const std::size_t cap = ring_.empty() ? initial_slots : ring_.size() * 2;
  std::vector<wire::Message> bigger(cap);
  for (std::size_t i = 0; i < count_; ++i) bigger[i] = std::move(ring_[slot(i)]);
  ring_.swap(bigger);
  head_ = 0;
}

void OutboundQueue::push(wire::Message msg) {
  if (count_ == ring_.size()) grow();
  bytes_ += msg.size();
  ring_[slot(count_)] = std::move(msg);
  ++count_;
}

std::size_t OutboundQueue::gather(iovec* iov, std::size_t max) const noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < count_ && n < max; ++i) {
    const wire::Message& m = ring_[slot(i)];
    const std::size_t skip = i == 0 ? head_sent_ : 0;
    iov[n].iov_base = const_cast<char*>(m.data() + skip);
    iov[n].iov_len = m.size() - skip;
    ++n;
  }
  return n;
}

std::size_t OutboundQueue::consume(std::size_t n) noexcept {
  std::size_t done = 0;
  bytes_ -= n;
  while (n > 0 && count_ > 0) {
    wire::Message& m = ring_[head_];
    const std::size_t left = m.size() - head_sent_;
    if (n < left) {
      head_sent_ += n;
      break;
    }
    n -= left;
    m = wire::Message();
    head_sent_ = 0;
    head_ = (head_ + 1) & (ring_.size() - 1);
    --count_;
    ++done;
  }
  if (count_ == 0) {
    head_ = 0;
    if (ring_.size() > kept_slots) std::vector<wire::Message>().swap(ring_);
  }
  return done;
}

void OutboundQueue::drop_unsent() noexcept {
  if (count_ == 0) return;
  if (head_sent_ == 0) {
    clear();
    return;
  }
  for (std::size_t i = 1; i < count_; ++i) {
    wire::Message& m = ring_[slot(i)];
    bytes_ -= m.size();
    m = wire::Message();
  }
  count_ = 1;
}

void OutboundQueue::clear() noexcept {
  std::vector<wire::Message>().swap(ring_);
  head_ = count_ = bytes_ = head_sent_ = 0;
}

}  // namespace synapse::net
