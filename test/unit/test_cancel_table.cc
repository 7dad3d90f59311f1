// The flat table of a worker's clients by cancel key pid (cancel_table.h).
#include "cancel_table.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <deque>
#include <random>
#include <unordered_map>

using namespace pgsluice;

namespace {

struct Item {
  uint32_t cancel_pid_ = 0;
};

// Pids as the workers make them: the low byte is the worker's index (here 3).
uint32_t pid_of(uint32_t r) {
  return (r & 0x7fffff00u) | 3u;
}

}  // namespace

TEST_CASE("cancel table: insert, find, erase") {
  CancelTable<Item> t;
  CHECK(t.find(pid_of(0x100)) == nullptr);
  Item a{pid_of(0x100)}, b{pid_of(0x200)}, c{pid_of(0x300)};
  t.insert(&a);
  t.insert(&b);
  t.insert(&c);
  CHECK(t.size() == 3);
  CHECK(t.slots() == CancelTable<Item>::kMinSlots);
  CHECK(t.find(a.cancel_pid_) == &a);
  CHECK(t.find(b.cancel_pid_) == &b);
  CHECK(t.find(c.cancel_pid_) == &c);
  CHECK_FALSE(t.contains(pid_of(0x400)));
  CHECK(t.erase(&b));
  CHECK_FALSE(t.erase(&b));
  CHECK(t.find(b.cancel_pid_) == nullptr);
  CHECK(t.find(a.cancel_pid_) == &a);
  CHECK(t.find(c.cancel_pid_) == &c);
  CHECK(t.size() == 2);
}

TEST_CASE("cancel table: erase removes only the item held under its pid") {
  CancelTable<Item> t;
  Item a{pid_of(0x100)};
  Item other{pid_of(0x100)};  // the same pid, never inserted
  t.insert(&a);
  CHECK_FALSE(t.erase(&other));
  CHECK(t.find(a.cancel_pid_) == &a);
  CancelTable<Item> empty;
  CHECK_FALSE(empty.erase(&a));
}

TEST_CASE("cancel table: collisions and tombstones keep the chains whole") {
  CancelTable<Item> t;
  // More items than the first table has slots: chains form, then it grows.
  std::deque<Item> items;
  for (uint32_t i = 1; i <= 13; i++) items.push_back(Item{pid_of(i << 8)});
  for (auto& it : items) t.insert(&it);
  CHECK(t.slots() == 32);  // 13 > 3/4 of 16
  // Erase every other one: the rest stay reachable through the tombstones.
  for (size_t i = 0; i < items.size(); i += 2) CHECK(t.erase(&items[i]));
  for (size_t i = 0; i < items.size(); i++)
    CHECK(t.find(items[i].cancel_pid_) == (i % 2 ? &items[i] : nullptr));
  // Inserting again reuses slots; all are found.
  for (size_t i = 0; i < items.size(); i += 2) t.insert(&items[i]);
  for (auto& it : items) CHECK(t.find(it.cancel_pid_) == &it);
  CHECK(t.size() == 13);
}

TEST_CASE("cancel table: a table of one chain (every pid in the same home slot)") {
  using Table = CancelTable<Item>;
  std::deque<Item> items;
  size_t home = Table::home_of(pid_of(1u << 8), Table::kMinSlots);
  for (uint32_t r = 1; items.size() < 10; r++)
    if (Table::home_of(pid_of(r << 8), Table::kMinSlots) == home)
      items.push_back(Item{pid_of(r << 8)});
  Table t;
  for (size_t i = 0; i < 8; i++) t.insert(&items[i]);  // 8 of 16 slots: no growth yet
  REQUIRE(t.slots() == Table::kMinSlots);
  for (size_t i = 0; i < 8; i++) CHECK(t.find(items[i].cancel_pid_) == &items[i]);
  CHECK(t.find(items[8].cancel_pid_) == nullptr);  // same home, walks the chain to its end
  // Erase from the middle of the chain, then the rest is still found.
  CHECK(t.erase(&items[4]));
  CHECK(t.erase(&items[0]));
  CHECK(t.tombstones() == 2);
  for (size_t i = 0; i < 8; i++)
    CHECK(t.find(items[i].cancel_pid_) == (i == 0 || i == 4 ? nullptr : &items[i]));
  // A new one of the same home takes the first tombstone; the chain is still whole.
  t.insert(&items[8]);
  CHECK(t.tombstones() == 1);
  CHECK(t.find(items[8].cancel_pid_) == &items[8]);
  for (size_t i = 1; i < 8; i++)
    CHECK(t.find(items[i].cancel_pid_) == (i == 4 ? nullptr : &items[i]));
  // Erasing the chain's last one leaves no tombstone.
  CHECK(t.erase(&items[7]));
  CHECK(t.tombstones() == 1);
}

TEST_CASE("cancel table: grows, shrinks, and churn leaves no tombstone build-up") {
  CancelTable<Item> t;
  std::deque<Item> items;
  std::mt19937 rng(13);
  std::unordered_map<uint32_t, Item*> ref;
  while (items.size() < 5000) {
    Item x{pid_of(rng())};
    if (ref.count(x.cancel_pid_)) continue;
    items.push_back(x);
    ref[x.cancel_pid_] = &items.back();
    t.insert(&items.back());
  }
  CHECK(t.size() == 5000);
  CHECK(t.slots() == 8192);  // at most 3/4 full
  for (auto& [pid, p] : ref) CHECK(t.find(pid) == p);
  // Churn: erase one, insert one, many times over; the tombstones are cleared without
  // the table doubling, and every lookup agrees with the reference map.
  for (int round = 0; round < 20000; round++) {
    auto it = ref.begin();
    std::advance(it, static_cast<long>(rng() % 16));
    Item* gone = it->second;
    REQUIRE(t.erase(gone));
    ref.erase(it);
    uint32_t pid;
    do pid = pid_of(rng());
    while (ref.count(pid));
    gone->cancel_pid_ = pid;
    t.insert(gone);
    ref[pid] = gone;
  }
  CHECK(t.size() == 5000);
  CHECK(t.slots() == 8192);
  CHECK(t.tombstones() * 4 <= t.slots());
  for (auto& [pid, p] : ref) REQUIRE(t.find(pid) == p);
  // Erase all but 100: it shrinks.
  size_t n = ref.size();
  for (auto it = ref.begin(); n > 100; n--) {
    REQUIRE(t.erase(it->second));
    it = ref.erase(it);
  }
  CHECK(t.size() == 100);
  CHECK(t.slots() <= 1024);
  for (auto& [pid, p] : ref) CHECK(t.find(pid) == p);
  for (auto& [pid, p] : ref) CHECK(t.erase(p));
  CHECK(t.size() == 0);
  CHECK(t.slots() == CancelTable<Item>::kMinSlots);
}
