// A worker's clients by cancel key pid: a flat open-addressing table of pointers (8 bytes a
// slot), where a node-based map cost about 48 bytes a client (ARCHITECTURE.md, memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace pgsluice {

// Holds T* keyed by the T's own `cancel_pid_` (a uint32_t, never 0), read through the
// pointer, so a slot is one pointer. Linear probing; an erased slot becomes a tombstone
// until the next rehash. At 3/4 use, counting tombstones, it is rehashed: to the smallest
// size that holds the live entries at 5/8 load at most (so churn at a steady count clears
// the tombstones without doubling the table); it shrinks when fewer than 1/8 are live.
// Only the bodies of the table's functions read a T, so T may be incomplete where the
// table is declared (worker.h).
template <class T>
class CancelTable {
 public:
  static constexpr size_t kMinSlots = 16;

  T* find(uint32_t pid) const {
    if (slots_ == nullptr) return nullptr;
    for (size_t i = home(pid);; i = (i + 1) & (cap_ - 1)) {
      T* t = slots_[i];
      if (t == nullptr) return nullptr;
      if (t != tomb() && t->cancel_pid_ == pid) return t;
    }
  }
  bool contains(uint32_t pid) const { return find(pid) != nullptr; }

  // Adds t under t->cancel_pid_, which the table must not hold yet.
  void insert(T* t) {
    if ((live_ + tombs_ + 1) * 4 > cap_ * 3) rehash(live_ + 1);
    size_t i = home(t->cancel_pid_);
    while (slots_[i] != nullptr && slots_[i] != tomb()) i = (i + 1) & (cap_ - 1);
    if (slots_[i] == tomb()) tombs_--;
    slots_[i] = t;
    live_++;
  }

  // Removes t if it is the one held under its pid; false otherwise.
  bool erase(const T* t) {
    if (slots_ == nullptr) return false;
    for (size_t i = home(t->cancel_pid_);; i = (i + 1) & (cap_ - 1)) {
      T* s = slots_[i];
      if (s == nullptr) return false;
      if (s == t) {
        // A tombstone only where a probe may need to walk past: before an empty slot, none.
        if (slots_[(i + 1) & (cap_ - 1)] == nullptr) {
          slots_[i] = nullptr;
        } else {
          slots_[i] = tomb();
          tombs_++;
        }
        live_--;
        if (cap_ > kMinSlots && live_ * 8 < cap_) rehash(live_);
        return true;
      }
    }
  }

  // The first slot tried for pid in a table of `slots` slots (tests make collisions with it).
  // Fibonacci hashing: the pid's low byte is the worker's index, the same for all.
  static size_t home_of(uint32_t pid, size_t slots) {
    return static_cast<size_t>((static_cast<uint64_t>(pid) * 0x9E3779B97F4A7C15ull) >> 32) &
           (slots - 1);
  }

  size_t size() const { return live_; }
  size_t slots() const { return cap_; }
  size_t tombstones() const { return tombs_; }

 private:
  std::unique_ptr<T*[]> slots_;
  size_t cap_ = 0;  // a power of two (or 0 before the first insert)
  size_t live_ = 0;
  size_t tombs_ = 0;

  // Never a T's address (misaligned).
  static T* tomb() { return reinterpret_cast<T*>(static_cast<uintptr_t>(1)); }
  size_t home(uint32_t pid) const { return home_of(pid, cap_); }
  // Moves the live entries to a table of the smallest size that holds n at 5/8 load.
  void rehash(size_t n) {
    size_t cap = kMinSlots;
    while (cap * 5 < n * 8) cap *= 2;
    std::unique_ptr<T*[]> old = std::move(slots_);
    size_t old_cap = cap_;
    slots_ = std::make_unique<T*[]>(cap);  // value-initialised: all null
    cap_ = cap;
    tombs_ = 0;
    for (size_t j = 0; j < old_cap; j++) {
      T* t = old[j];
      if (t == nullptr || t == tomb()) continue;
      size_t i = home(t->cancel_pid_);
      while (slots_[i] != nullptr) i = (i + 1) & (cap_ - 1);
      slots_[i] = t;
    }
  }
};

}  // namespace pgsluice
