#include "net/outbound_queue.hpp"

#include <algorithm>

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

void OutboundQueue::push(wire::Message msg, bool exempt) {
  if (count_ == ring_.size()) grow();
  const std::size_t n = msg.size();
  if (exempt && n > 0) exempt_.emplace_back(pushed_, pushed_ + n);
  pushed_ += n;
  bytes_ += n;
  ring_[slot(count_)] = std::move(msg);
  ++count_;
}

std::size_t OutboundQueue::exempt_bytes() const noexcept {
  std::size_t n = 0;
  for (const auto& [begin, end] : exempt_) n += static_cast<std::size_t>(end - std::max(begin, consumed_));
  return n;
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
  consumed_ += n;
  if (!exempt_.empty()) {
    // Ranges are in stream order; drop those written out completely.
    std::size_t gone = 0;
    while (gone < exempt_.size() && exempt_[gone].second <= consumed_) ++gone;
    exempt_.erase(exempt_.begin(), exempt_.begin() + static_cast<std::ptrdiff_t>(gone));
  }
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
  // Only the head's bytes remain in the stream.
  pushed_ = consumed_ + bytes_;
  std::erase_if(exempt_, [&](const auto& r) { return r.first >= pushed_; });
  for (auto& r : exempt_) r.second = std::min(r.second, pushed_);
}

void OutboundQueue::clear() noexcept {
  std::vector<wire::Message>().swap(ring_);
  head_ = count_ = bytes_ = head_sent_ = 0;
  pushed_ = consumed_ = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>>().swap(exempt_);
}

}  // namespace synapse::net
