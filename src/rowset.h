// Result sets for the console: RowDescription, DataRow and CommandComplete with the
// column types PgBouncer's pktbuf emits (text, int4, int8). Pure; no sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgsluice {

// PostgreSQL type OIDs used by the console.
enum class ColType : uint32_t { Text = 25, Int4 = 23, Int8 = 20, Bytea = 17, Numeric = 1700 };

// PgBouncer's type letters: 's' and 'T' (timestamp as text) text, 'i' int4, 'q' int8,
// 'b' bytea.
std::vector<ColType> col_types(std::string_view letters);

class RowSet {
 public:
  // `letters` as PgBouncer's tupdesc; names in the same order.
  RowSet(std::string_view letters, std::vector<std::string> names);
  // One row; nullopt is SQL NULL. The count must match the columns.
  void row(const std::vector<std::optional<std::string>>& values);
  size_t rows() const { return rows_; }
  size_t columns() const { return types_.size(); }
  // RowDescription + DataRows + CommandComplete("SHOW").
  void finish(std::string& out, std::string_view tag = "SHOW") const;

 private:
  std::vector<ColType> types_;
  std::vector<std::string> names_;
  std::string data_;
  size_t rows_ = 0;
};

// Number and timestamp cells.
std::string cell(long long v);
std::string cell_u(uint64_t v);
// "YYYY-MM-DD HH:MM:SS UTC" of a Unix time (PgBouncer's format_time_s), or "" when <= 0.
std::string cell_time(double unix_seconds);
std::string cell_ptr(const void* p);  // "0x..." or "" for null

void command_complete(std::string& out, std::string_view tag);

}  // namespace pgsluice
