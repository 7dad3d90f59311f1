// Tracked session parameters (client_encoding, DateStyle, ...): the values a client was
// told, and the SET that makes a server match them.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgsluice {

// The tracked names, fixed at start-up: the five PgBouncer always tracks, application_name,
// and track_extra_parameters.
class TrackedNames {
 public:
  explicit TrackedNames(std::string_view extra_csv = "IntervalStyle");
  // Index of a tracked name (case-insensitive), or -1.
  int find(std::string_view name) const;
  size_t size() const { return names_.size(); }
  const std::string& name(size_t i) const { return names_[i]; }

 private:
  std::vector<std::string> names_;
};

// One value per tracked name, or unknown. Kept in one string (per name: a byte 1 when the
// value is known, else 0, then the value and a NUL; values never hold a NUL, they come from
// the wire's C strings), so that a client or server carries one small allocation for all
// of them instead of a string object per name (ARCHITECTURE.md, memory per client).
class VarCache {
 public:
  VarCache() = default;
  explicit VarCache(size_t n) { resize(n); }
  // Keeps the values of the first n names; names added are unknown.
  void resize(size_t n);
  void set(size_t i, std::string_view v);
  bool has(size_t i) const { return i < n_ && data_[entry(i)] == 1; }
  // The value of name i (empty when unknown).
  std::string_view get(size_t i) const;
  size_t size() const { return n_; }
  // Gives back what the string reserved beyond its size (a client's values, once logged in:
  // ARCHITECTURE.md, memory per client).
  void shrink() { data_.shrink_to_fit(); }

 private:
  friend std::string varcache_diff_sql(const TrackedNames&, const VarCache&, const VarCache&);
  // Offset of name i's flag byte in data_.
  size_t entry(size_t i) const;
  std::string data_;
  size_t n_ = 0;
};

// "SET a='x';SET b='y';" for every tracked value the client has that the server lacks
// (case-insensitive compare); empty when they already match.
std::string varcache_diff_sql(const TrackedNames& names, const VarCache& client,
                              const VarCache& server);

bool iequals(std::string_view a, std::string_view b);

}  // namespace pgsluice
