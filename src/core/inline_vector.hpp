// A vector whose first element lives inside the object: no heap block until
// a second element arrives, in the 24 bytes of a std::vector. For a list
// kept per connection that nearly always holds exactly one entry (the
// topics a session has joined): a std::vector's block for that one entry
// is a 32-byte malloc chunk in every idle connection.
//
// Only what its users need: push_back, erase, clear, indexing and
// iteration, with std::vector's meaning (growth and erase invalidate
// iterators and references past the point of change). Once it has moved to
// the heap it stays there until destroyed, as a vector keeps its capacity.
// Not copyable or movable: it lives in place in its owner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace synapse {

template <class T>
class InlineOneVector {
  // Growth moves the elements without a way back: only a move that cannot
  // throw keeps the strong guarantee std::vector gives.
  static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_move_assignable_v<T>);

 public:
  using value_type = T;
  using iterator = T*;
  using const_iterator = const T*;

  InlineOneVector() noexcept {}
  InlineOneVector(const InlineOneVector&) = delete;
  InlineOneVector& operator=(const InlineOneVector&) = delete;
  ~InlineOneVector() {
    clear();
    if (on_heap()) std::allocator<T>().deallocate(heap_, capacity_);
  }

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // True once a second element has been added: what tests of the layout ask.
  bool on_heap() const noexcept { return capacity_ > 1; }

  T* data() noexcept { return on_heap() ? heap_ : std::addressof(one_); }
  const T* data() const noexcept { return on_heap() ? heap_ : std::addressof(one_); }
  iterator begin() noexcept { return data(); }
  iterator end() noexcept { return data() + size_; }
  const_iterator begin() const noexcept { return data(); }
  const_iterator end() const noexcept { return data() + size_; }
  T& operator[](std::size_t i) noexcept { return data()[i]; }
  const T& operator[](std::size_t i) const noexcept { return data()[i]; }
  T& back() noexcept { return data()[size_ - 1]; }
  const T& back() const noexcept { return data()[size_ - 1]; }

  // Unlike std::vector's, `v` must not be an element of this vector: growth
  // moves the elements before `v` is read.
  void push_back(T&& v) {
    if (size_ == capacity_) grow();
    std::construct_at(data() + size_, std::move(v));
    ++size_;
  }

  // As std::vector::erase: the elements after `pos` move down by one.
  iterator erase(iterator pos) noexcept {
    T* const last = end() - 1;
    for (T* p = pos; p != last; ++p) *p = std::move(*(p + 1));
    std::destroy_at(last);
    --size_;
    return pos;
  }

  void clear() noexcept {
    std::destroy(begin(), end());
    size_ = 0;
  }

 private:
  // From the inline element to a heap block of twice the capacity. The
  // allocation comes first, so a bad_alloc leaves everything as it was.
  void grow() {
    if (capacity_ > UINT32_MAX / 2) throw std::length_error("InlineOneVector is full");
    const std::uint32_t cap = capacity_ * 2;
    T* fresh = std::allocator<T>().allocate(cap);
    T* old = data();
    for (std::uint32_t i = 0; i < size_; ++i) {
      std::construct_at(fresh + i, std::move(old[i]));
      std::destroy_at(old + i);
    }
    if (on_heap()) std::allocator<T>().deallocate(heap_, capacity_);
    // The inline element, if there was one, is destroyed above: the union's
    // storage is free for the pointer.
    heap_ = fresh;
    capacity_ = cap;
  }

  union {
    T one_;     // while capacity_ == 1 (alive while size_ == 1)
    T* heap_;   // once capacity_ > 1
  };
  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = 1;
};

}  // namespace synapse
