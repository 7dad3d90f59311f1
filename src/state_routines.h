// Routines that may make session state pgsluice cannot follow: the functions and
// procedures of a database whose bodies call set_config, SET, take a session advisory lock,
// create a temporary table, LISTEN, ... (directly or through another routine), and the
// relations whose triggers, views, column defaults, constraints or policies run one. Read
// from the catalog by one query on a server of the pool (Worker::scan_routines); a client's
// text that calls one, or names such a relation, counts as that routine's body
// (scan_pins). Pure; immutable once built (published by the pool, read by every worker).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "session_state.h"

namespace pgsluice {

class StateRoutines {
 public:
  // The catalog query; its rows are read by add_row.
  static std::string_view query();
  // The probe: one row of the same form holding only the catalogs' fingerprint.
  static std::string_view probe_query();
  // Largest answer read (bytes of rows): more is not read; such a reading is not complete()
  // and its database's calls stay unknown (RoutineReadings::unknown), as before any reading.
  static constexpr size_t kMaxBytes = 32u << 20;

  // One DataRow of the query's answer; false when not understood (the answer is not used).
  bool add_row(std::span<const uint8_t> row);
  // After the last row: which routines make state, through what they call, and which
  // relations run one.
  void finish();

  // What calling the routine `word` (lower case), or naming the relation `word`, may make;
  // null when nothing.
  const PinScan* find(std::string_view word) const;
  // Whether some such name appears in `text` (any case): a cheap test before reading it.
  bool mentioned(std::string_view text) const;
  bool empty() const { return words_.empty(); }
  size_t size() const { return words_.size(); }
  bool complete() const { return complete_; }
  // The catalogs' fingerprint in the reading's snapshot (empty when the answer had none).
  const std::string& fingerprint() const { return fingerprint_; }
  // A probe (probe_query) rather than a reading: set by the one who sends it.
  bool probe = false;
  // The same names making the same state (a new scan that changed nothing is not published).
  bool same(const StateRoutines& o) const;

 private:
  struct Routine {
    uint32_t oid = 0;
    std::string name;
    PinScan scan;                    // its own body
    bool makes = false;              // it, or something it calls, makes state
    std::vector<std::string> calls;  // names it calls (body), lower case
  };
  std::vector<Routine> routines_;
  std::vector<std::pair<uint32_t, std::string>> calls_;      // caller oid, callee name
  std::vector<std::pair<uint32_t, std::string>> relations_;  // routine oid, relation name
  std::unordered_map<std::string, PinScan> words_;
  std::string fingerprint_;
  size_t bytes_ = 0;
  bool complete_ = true;
};

// A database's readings of its routines, shared by its pools (DbState::routines): read by
// one query on a server of one of them (Worker::scan_routines) at the first use, kPeriod
// later, and after a client's CREATE/ALTER/DROP of a routine, trigger, view, ... (changed).
// A published set lives as long as the database's state (a reading equal to the last is
// not published), so readers need no reference count.
class RoutineReadings {
 public:
  static constexpr double kPeriod = 60;
  // Between readings, a probe of the catalogs' fingerprint this often (seconds): a routine
  // changed by a connection that is not pgsluice's is seen within this, not kPeriod.
  static constexpr double kProbePeriod = 5;
  // Null until the first reading ended.
  const StateRoutines* current() const { return current_.load(std::memory_order_acquire); }
  // Not known now: never read, or a routine may have changed since the last reading (until
  // the reading that change asked for ends, a text with a call counts as one that may make
  // state).
  // A catalog larger than StateRoutines::kMaxBytes stays unknown (partial_): a routine not
  // read is not taken as making nothing.
  bool unknown() const {
    return changed_.load(std::memory_order_relaxed) || rereading_.load(std::memory_order_relaxed) ||
           partial_.load(std::memory_order_relaxed) || current() == nullptr;
  }
  void changed() { changed_.store(true, std::memory_order_relaxed); }
  // A client sent a text that calls something: readings are needed (a database whose
  // clients never call a routine is never read).
  void needed() {
    if (!needed_.load(std::memory_order_relaxed)) needed_.store(true, std::memory_order_relaxed);
  }
  bool due(double now) const;
  // Takes the next reading when one is due and none runs (true: the caller sends the query).
  bool take(double now);
  // The reading's end: r (null: it failed; the last set stays) published unless unchanged.
  void done(std::unique_ptr<StateRoutines> r, double now);
  // Takes a probe when one is due (a reading with a fingerprint exists, none runs, no change
  // pending, kProbePeriod since the last reading or probe); true: the caller sends it.
  bool take_probe(double now);
  // The probe's end: its fingerprint (empty: it failed); another than the last reading's
  // marks the routines changed (unknown until the reading that follows ends).
  void probed(std::string_view fingerprint, double now);

 private:
  std::atomic<const StateRoutines*> current_{nullptr};
  std::mutex mu_;
  std::vector<std::unique_ptr<StateRoutines>> kept_;  // every set published (mu_)
  std::atomic<bool> changed_{false};
  std::atomic<bool> needed_{false};
  std::atomic<bool> reading_{false};
  std::atomic<bool> rereading_{false};    // the reading running was asked for by a change
  std::atomic<bool> partial_{false};      // the last reading was cut at kMaxBytes
  std::atomic<double> at_{-1e18};         // when the last reading ended
  std::atomic<double> probed_at_{-1e18};  // when the last probe ended
  std::atomic<bool> printed_{false};      // fingerprint_ is known
  std::string fingerprint_;               // of the last reading (mu_)
};

}  // namespace pgsluice
