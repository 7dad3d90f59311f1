// Result sets for the console: RowDescription, DataRow and CommandComplete.
#include "rowset.h"

#include <cstdio>
#include <ctime>

#include "wire.h"

namespace pgsluice {

std::vector<ColType> col_types(std::string_view letters) {
  std::vector<ColType> t;
  for (char ch : letters) {
    switch (ch) {
      case 'i':
        t.push_back(ColType::Int4);
        break;
      case 'q':
        t.push_back(ColType::Int8);
        break;
      case 'b':
        t.push_back(ColType::Bytea);
        break;
      case 'N':  // PgBouncer sends its statistics as numeric
        t.push_back(ColType::Numeric);
        break;
      default:
        t.push_back(ColType::Text);
        break;
    }
  }
  return t;
}

RowSet::RowSet(std::string_view letters, std::vector<std::string> names)
    : types_(col_types(letters)), names_(std::move(names)) {
  names_.resize(types_.size());
}

void RowSet::row(const std::vector<std::optional<std::string>>& values) {
  wire::Writer w(data_);
  w.begin('D').i16(static_cast<int16_t>(types_.size()));
  for (size_t i = 0; i < types_.size(); i++) {
    const std::optional<std::string>* v = i < values.size() ? &values[i] : nullptr;
    if (v == nullptr || !v->has_value()) {
      w.i32(-1);
    } else {
      w.i32(static_cast<int32_t>((*v)->size())).bytes(**v);
    }
  }
  w.end();
  rows_++;
}

void RowSet::finish(std::string& out, std::string_view tag) const {
  wire::Writer w(out);
  w.begin('T').i16(static_cast<int16_t>(types_.size()));
  for (size_t i = 0; i < types_.size(); i++) {
    int16_t len = types_[i] == ColType::Int4 ? 4 : types_[i] == ColType::Int8 ? 8 : -1;
    w.cstr(names_[i]).i32(0).i16(0).u32(static_cast<uint32_t>(types_[i])).i16(len).i32(-1).i16(0);
  }
  w.end();
  out += data_;
  command_complete(out, tag);
}

void command_complete(std::string& out, std::string_view tag) {
  wire::Writer(out).begin('C').cstr(tag).end();
}

std::string cell(long long v) {
  return std::to_string(v);
}
std::string cell_u(uint64_t v) {
  return std::to_string(v);
}

std::string cell_time(double t) {
  if (t <= 0) return "";
  time_t s = static_cast<time_t>(t);
  struct tm tm;
  gmtime_r(&s, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string cell_ptr(const void* p) {
  if (p == nullptr) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

}  // namespace pgsluice
