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

// One value per tracked name; empty `set` flag means unknown.
class VarCache {
 public:
  VarCache() = default;
  explicit VarCache(size_t n) : vals_(n), set_(n, false) {}
  void resize(size_t n) {
    vals_.resize(n);
    set_.resize(n, false);
  }
  void set(size_t i, std::string_view v) {
    vals_[i] = v;
    set_[i] = true;
  }
  bool has(size_t i) const { return i < set_.size() && set_[i]; }
  const std::string& get(size_t i) const { return vals_[i]; }
  size_t size() const { return vals_.size(); }

 private:
  std::vector<std::string> vals_;
  std::vector<bool> set_;
};

// "SET a='x';SET b='y';" for every tracked value the client has that the server lacks
// (case-insensitive compare); empty when they already match.
std::string varcache_diff_sql(const TrackedNames& names, const VarCache& client,
                              const VarCache& server);

bool iequals(std::string_view a, std::string_view b);

}  // namespace pgsluice
