// Tracked session parameters: the values a client was told, and the SET that restores them.
#include "varcache.h"

#include <algorithm>

#include "wire.h"

namespace pgsluice {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

TrackedNames::TrackedNames(std::string_view extra_csv) {
  names_ = {"client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings",
            "application_name"};
  size_t i = 0;
  while (i <= extra_csv.size()) {
    size_t j = extra_csv.find(',', i);
    if (j == std::string_view::npos) j = extra_csv.size();
    std::string_view w = extra_csv.substr(i, j - i);
    while (!w.empty() && (w.front() == ' ' || w.front() == '\t')) w.remove_prefix(1);
    while (!w.empty() && (w.back() == ' ' || w.back() == '\t')) w.remove_suffix(1);
    if (!w.empty() && find(w) < 0) names_.emplace_back(w);
    i = j + 1;
  }
}

int TrackedNames::find(std::string_view name) const {
  for (size_t i = 0; i < names_.size(); i++)
    if (iequals(names_[i], name)) return static_cast<int>(i);
  return -1;
}

size_t VarCache::entry(size_t i) const {
  size_t at = 0;
  for (; i > 0; i--) at = data_.find('\0', at + 1) + 1;
  return at;
}

void VarCache::resize(size_t n) {
  if (n < n_) {
    data_.resize(entry(n));
  } else {
    for (size_t i = n_; i < n; i++) data_.append(2, '\0');
  }
  n_ = n;
}

void VarCache::set(size_t i, std::string_view v) {
  size_t at = entry(i);
  size_t end = data_.find('\0', at + 1);
  data_[at] = 1;
  data_.replace(at + 1, end - at - 1, v.substr(0, v.find('\0')));
}

std::string_view VarCache::get(size_t i) const {
  if (!has(i)) return {};
  size_t at = entry(i) + 1;
  return std::string_view(data_).substr(at, data_.find('\0', at) - at);
}

std::string varcache_diff_sql(const TrackedNames& names, const VarCache& client,
                              const VarCache& server) {
  // Runs on every link of a client to a server: one pass over both strings, entry by entry,
  // instead of a lookup from the start per name.
  std::string sql;
  const std::string& cd = client.data_;
  const std::string& sd = server.data_;
  size_t ca = 0, sa = 0;
  const size_t n = std::min(names.size(), client.size());
  for (size_t i = 0; i < n; i++) {
    size_t cend = cd.find('\0', ca + 1);
    bool s_known = false;
    std::string_view sv;
    size_t send = std::string::npos;
    if (i < server.size()) {
      send = sd.find('\0', sa + 1);
      s_known = sd[sa] == 1;
      sv = std::string_view(sd).substr(sa + 1, send - sa - 1);
    }
    if (cd[ca] == 1) {
      std::string_view cv = std::string_view(cd).substr(ca + 1, cend - ca - 1);
      if (!s_known || !iequals(cv, sv)) {
        sql += "SET ";
        sql += names.name(i);
        sql += '=';
        sql += wire::sql_literal(cv);
        sql += ';';
      }
    }
    ca = cend + 1;
    if (send != std::string::npos) sa = send + 1;
  }
  return sql;
}

}  // namespace pgsluice
