#include "net/outbound_queue.hpp"

#include <algorithm>

namespace synapse::net {
namespace {
constexpr std::uint32_t initial_slots = 8;  // a power of two, as every capacity
constexpr std::uint32_t kept_slots = 64;    // ring kept when the queue empties
}  // namespace

void OutboundQueue::grow() {
  if (capacity_ == 0) {
    ring_ = &one_;
    capacity_ = 1;
    head_ = 0;
    return;
  }
  const std::uint32_t cap = capacity_ == 1 ? initial_slots : capacity_ * 2;
  auto* bigger = new wire::Message[cap];
  for (std::size_t i = 0; i < count_; ++i) bigger[i] = std::move(ring_[slot(i)]);
  if (capacity_ > 1) delete[] ring_;
  ring_ = bigger;
  capacity_ = cap;
  head_ = 0;
}

void OutboundQueue::free_ring() noexcept {
  if (capacity_ > 1) delete[] ring_;
  one_ = wire::Message();
  ring_ = nullptr;
  capacity_ = 0;
  head_ = 0;
}

void OutboundQueue::push(wire::Message msg, bool exempt) {
  if (count_ == capacity_) grow();
  const std::size_t n = msg.size();
  if (exempt && n > 0) {
    if (!exempt_) exempt_ = std::make_unique<Exempt>();
    const std::uint64_t end = exempt_->consumed + bytes_;  // the stream's end, in the record's positions
    exempt_->ranges.emplace_back(end, end + n);
  }
  bytes_ += n;
  pushed_recently_ = true;
  ring_[slot(count_)] = std::move(msg);
  ++count_;
}

std::size_t OutboundQueue::exempt_bytes() const noexcept {
  std::size_t n = 0;
  if (!exempt_) return n;
  for (const auto& [begin, end] : exempt_->ranges) n += static_cast<std::size_t>(end - std::max(begin, exempt_->consumed));
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
  if (exempt_) {
    exempt_->consumed += n;
    // Ranges are in stream order; drop those written out completely.
    auto& ranges = exempt_->ranges;
    std::size_t gone = 0;
    while (gone < ranges.size() && ranges[gone].second <= exempt_->consumed) ++gone;
    ranges.erase(ranges.begin(), ranges.begin() + static_cast<std::ptrdiff_t>(gone));
    if (ranges.empty()) exempt_.reset();
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
    head_ = (head_ + 1) & (capacity_ - 1);
    --count_;
    ++done;
  }
  if (count_ == 0) {
    head_ = 0;
    if (capacity_ > kept_slots) free_ring();
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
  if (exempt_) {
    const std::uint64_t end = exempt_->consumed + bytes_;
    auto& ranges = exempt_->ranges;
    std::erase_if(ranges, [&](const auto& r) { return r.first >= end; });
    for (auto& r : ranges) r.second = std::min(r.second, end);
    if (ranges.empty()) exempt_.reset();
  }
}

void OutboundQueue::release_if_idle() noexcept {
  if (count_ == 0 && !pushed_recently_ && capacity_ > 1) free_ring();
  pushed_recently_ = false;
}

void OutboundQueue::clear() noexcept {
  free_ring();
  count_ = 0;
  bytes_ = head_sent_ = 0;
  exempt_.reset();
}

}  // namespace synapse::net
