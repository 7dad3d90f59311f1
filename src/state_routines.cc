// Routines that may make session state: the catalog query, its rows, and the closure over
// what each routine calls.
#include "state_routines.h"

#include <algorithm>

#include "wire.h"

namespace pgsluice {

namespace {

// What changes when a routine, trigger, view, default, constraint or policy is created,
// replaced or dropped, by anyone (a direct connection, a migration tool): each catalog's
// row count and the sum of its rows' xmin (a row written anew has a new xmin).
#define PGSLUICE_CATALOG_PRINT(cat)                                            \
  "(SELECT count(*)::text || '.' || coalesce(sum(xmin::text::int8), 0)::text " \
  "FROM pg_catalog." cat ")"
#define PGSLUICE_FINGERPRINT \
  PGSLUICE_CATALOG_PRINT("pg_proc") " || '/' || " PGSLUICE_CATALOG_PRINT("pg_trigger")      \
  " || '/' || " PGSLUICE_CATALOG_PRINT("pg_rewrite") " || '/' || " PGSLUICE_CATALOG_PRINT( \
      "pg_attrdef") " || '/' || " PGSLUICE_CATALOG_PRINT("pg_constraint") " || '/' || "     \
      PGSLUICE_CATALOG_PRINT("pg_policy")

constexpr const char* kProbe = "SELECT 'v', 0::int8, " PGSLUICE_FINGERPRINT ", '', NULL::text";

// Bodies over this size are not fetched: such a routine counts as making state.
constexpr const char* kQuery =
    "SELECT 'f', p.oid::int8, lower(p.proname::text), l.lanname::text, "
    "CASE WHEN l.lanname IN ('sql', 'plpgsql') AND length(p.prosrc) <= 262144 "
    "THEN p.prosrc END "
    "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang "
    "WHERE p.pronamespace <> 'pg_catalog'::regnamespace AND "
    "p.pronamespace <> 'information_schema'::regnamespace AND l.lanname <> 'c' AND "
    "l.lanname <> 'internal' "
    "UNION ALL "
    // A routine another one depends on (SQL-standard bodies, BEGIN ATOMIC): by name.
    "SELECT 'c', d.objid::int8, lower(q.proname::text), '', NULL "
    "FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc q ON q.oid = d.refobjid "
    "WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND "
    "d.refclassid = 'pg_catalog.pg_proc'::regclass "
    "UNION ALL "
    // A relation whose view, trigger, column default, constraint or policy uses a routine.
    "SELECT 'r', d.refobjid::int8, lower(c.relname::text), '', NULL "
    "FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = CASE d.classid "
    "WHEN 'pg_catalog.pg_rewrite'::regclass THEN "
    "(SELECT ev_class FROM pg_catalog.pg_rewrite WHERE oid = d.objid) "
    "WHEN 'pg_catalog.pg_trigger'::regclass THEN "
    "(SELECT tgrelid FROM pg_catalog.pg_trigger WHERE oid = d.objid) "
    "WHEN 'pg_catalog.pg_attrdef'::regclass THEN "
    "(SELECT adrelid FROM pg_catalog.pg_attrdef WHERE oid = d.objid) "
    "WHEN 'pg_catalog.pg_constraint'::regclass THEN "
    "(SELECT conrelid FROM pg_catalog.pg_constraint WHERE oid = d.objid) "
    "WHEN 'pg_catalog.pg_policy'::regclass THEN "
    "(SELECT polrelid FROM pg_catalog.pg_policy WHERE oid = d.objid) END "
    "WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid >= 16384 "
    "UNION ALL "
    // The catalogs' fingerprint in the same snapshot, for the probes (RoutineReadings).
    "SELECT 'v', 0, " PGSLUICE_FINGERPRINT ", '', NULL";

#undef PGSLUICE_FINGERPRINT
#undef PGSLUICE_CATALOG_PRINT

bool same_scan(const PinScan& a, const PinScan& b) {
  return a.pins == b.pins && a.releases == b.releases && a.opaque == b.opaque &&
         a.dirty == b.dirty && a.names == b.names;
}

bool matters(const PinScan& s) {
  return s.pins != 0 || s.releases != 0 || s.opaque || s.dirty || !s.names.empty();
}

// A routine that makes state is run as a DO block would be: checked right after, and its
// server reset before another client uses it (the settings it names are read back).
void as_state_maker(PinScan& s) {
  if (s.pins == 0 && !s.opaque && s.names.empty()) return;  // releases only
  if (s.opaque || !s.names.empty() || (s.pins & kPinUntrackedSetting) != 0) {
    s.pins |= kPinUntrackedSetting;
    s.dirty = true;
  }
  s.releases |= kReleaseAny;
}

}  // namespace

std::string_view StateRoutines::query() {
  return kQuery;
}

std::string_view StateRoutines::probe_query() {
  return kProbe;
}

bool StateRoutines::add_row(std::span<const uint8_t> row) {
  if (!complete_ || bytes_ + row.size() > kMaxBytes) {  // nothing after the cut either
    complete_ = false;
    return true;  // what was read still counts
  }
  bytes_ += row.size();
  wire::Reader r(row.data(), row.size());
  uint16_t n = 0;
  if (!r.u16(n) || n != 5) return false;
  std::string_view col[5];
  bool null[5] = {};
  for (int i = 0; i < 5; i++) {
    uint32_t len = 0;
    if (!r.u32(len)) return false;
    if (len == 0xffffffffu) {
      null[i] = true;
      continue;
    }
    std::span<const uint8_t> v;
    if (!r.bytes(len, v)) return false;
    col[i] = std::string_view(reinterpret_cast<const char*>(v.data()), v.size());
  }
  if (null[0] || null[1] || null[2] || col[0].size() != 1) return false;
  uint32_t oid = 0;
  for (char ch : col[1]) {
    if (ch < '0' || ch > '9' || oid > 400000000u) return false;
    oid = oid * 10 + static_cast<uint32_t>(ch - '0');
  }
  switch (col[0][0]) {
    case 'f': {
      Routine rt;
      rt.oid = oid;
      rt.name.assign(col[2]);
      if (null[4]) {
        // Another language (PL/Python, PL/Perl, ...) or a body too long to fetch: it may
        // do anything a DO block may.
        rt.scan.pins = kPinUntrackedSetting;
        rt.scan.releases = kReleaseAny;
        rt.scan.dirty = true;
      } else {
        scan_routine_body(col[4], rt.scan, nullptr, &rt.calls);
        std::sort(rt.calls.begin(), rt.calls.end());
        rt.calls.erase(std::unique(rt.calls.begin(), rt.calls.end()), rt.calls.end());
      }
      routines_.push_back(std::move(rt));
      return true;
    }
    case 'c':
      calls_.emplace_back(oid, std::string(col[2]));
      return true;
    case 'r':
      relations_.emplace_back(oid, std::string(col[2]));
      return true;
    case 'v':
      fingerprint_.assign(col[2]);
      return true;
    default:
      return false;
  }
}

void StateRoutines::finish() {
  std::unordered_map<uint32_t, size_t> by_oid;
  for (size_t i = 0; i < routines_.size(); i++) by_oid.emplace(routines_[i].oid, i);
  // 'c' rows: the callee's name joins the caller's calls.
  for (auto& [caller, name] : calls_)
    if (auto it = by_oid.find(caller); it != by_oid.end())
      routines_[it->second].calls.push_back(std::move(name));
  calls_.clear();
  calls_.shrink_to_fit();
  // A call of a built-in that makes state (a SQL-standard body's dependency on set_config or
  // pg_advisory_lock): as if the body called it with unknown arguments.
  for (auto& rt : routines_)
    for (const auto& c : rt.calls)
      if (c == "set_config" || c.rfind("pg_advisory", 0) == 0 || c.rfind("pg_try_advisory", 0) == 0)
        scan_routine_body(c + "()", rt.scan, nullptr, nullptr);
  for (auto& rt : routines_) as_state_maker(rt.scan);
  // What a routine calls it makes too, until nothing changes (a name stands for every
  // overload: one that makes state makes the name count).
  words_.clear();
  for (const auto& rt : routines_)
    if (matters(rt.scan)) pin_merge(words_[rt.name], rt.scan);
  for (size_t round = 0; round <= routines_.size(); round++) {
    bool changed = false;
    for (auto& rt : routines_) {
      PinScan before = rt.scan;
      for (const auto& c : rt.calls) {
        auto it = words_.find(c);
        if (it != words_.end() && c != rt.name) pin_merge(rt.scan, it->second);
      }
      if (same_scan(before, rt.scan)) continue;
      as_state_maker(rt.scan);
      pin_merge(words_[rt.name], rt.scan);
      changed = true;
    }
    if (!changed) break;
  }
  for (auto& rt : routines_) rt.makes = matters(rt.scan);
  // Relations that run one.
  for (const auto& [oid, rel] : relations_)
    if (auto it = by_oid.find(oid); it != by_oid.end() && routines_[it->second].makes)
      pin_merge(words_[rel], routines_[it->second].scan);
  routines_.clear();
  routines_.shrink_to_fit();
  relations_.clear();
  relations_.shrink_to_fit();
}

const PinScan* StateRoutines::find(std::string_view word) const {
  if (words_.empty()) return nullptr;
  auto it = words_.find(std::string(word));
  return it == words_.end() ? nullptr : &it->second;
}

bool StateRoutines::mentioned(std::string_view text) const {
  if (words_.size() > 64) return !words_.empty();  // every text is read whole then
  for (const auto& [w, s] : words_)
    if (contains_ci(text, w)) return true;
  return false;
}

bool StateRoutines::same(const StateRoutines& o) const {
  if (words_.size() != o.words_.size()) return false;
  for (const auto& [w, s] : words_) {
    auto it = o.words_.find(w);
    if (it == o.words_.end() || !same_scan(s, it->second)) return false;
  }
  return true;
}

bool RoutineReadings::due(double now) const {
  return needed_.load(std::memory_order_relaxed) && !reading_.load(std::memory_order_relaxed) &&
         (changed_.load(std::memory_order_relaxed) ||
          now - at_.load(std::memory_order_relaxed) >= kPeriod);
}

bool RoutineReadings::take_probe(double now) {
  if (!needed_.load(std::memory_order_relaxed) || changed_.load(std::memory_order_relaxed) ||
      !printed_.load(std::memory_order_relaxed) || reading_.load(std::memory_order_relaxed) ||
      now - at_.load(std::memory_order_relaxed) < kProbePeriod ||
      now - probed_at_.load(std::memory_order_relaxed) < kProbePeriod)
    return false;
  bool no = false;
  if (!reading_.compare_exchange_strong(no, true)) return false;
  return true;
}

void RoutineReadings::probed(std::string_view fingerprint, double now) {
  {
    std::lock_guard<std::mutex> g(mu_);
    // Another fingerprint: something changed outside pgsluice's sight; read again.
    if (!fingerprint.empty() && fingerprint != fingerprint_)
      changed_.store(true, std::memory_order_relaxed);
  }
  probed_at_.store(now, std::memory_order_relaxed);
  reading_.store(false, std::memory_order_release);
}

bool RoutineReadings::take(double now) {
  if (!due(now)) return false;
  bool no = false;
  if (!reading_.compare_exchange_strong(no, true)) return false;
  // Unknown until this reading ends when a change asked for it; a change from now on: again.
  if (changed_.exchange(false, std::memory_order_relaxed))
    rereading_.store(true, std::memory_order_relaxed);
  return true;
}

void RoutineReadings::done(std::unique_ptr<StateRoutines> r, double now) {
  at_.store(now, std::memory_order_relaxed);
  if (r != nullptr) partial_.store(!r->complete(), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> g(mu_);
    const StateRoutines* cur = current_.load(std::memory_order_relaxed);
    if (r == nullptr && cur == nullptr) {
      // Failed before any set was read: an empty one, so that texts are not all held as
      // unknown until the next reading (the failure is logged and counted).
      r = std::make_unique<StateRoutines>();
      r->finish();
    }
    if (r != nullptr) {
      fingerprint_ = r->fingerprint();  // also when the set is the same as before
      printed_.store(!fingerprint_.empty(), std::memory_order_relaxed);
    }
    if (r != nullptr && (cur == nullptr || !cur->same(*r))) {
      current_.store(r.get(), std::memory_order_release);
      kept_.push_back(std::move(r));
    }
  }
  rereading_.store(false, std::memory_order_relaxed);
  reading_.store(false, std::memory_order_release);
}

}  // namespace pgsluice
