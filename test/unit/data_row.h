// Test helper: a DataRow message body built from text values, for the parsers of
// pgsluice's swallowed queries (the pinning check, the routines reading).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

namespace pgsluice::test {

// A DataRow body with these text values (nullptr: NULL).
inline std::string data_row(std::initializer_list<const char*> vals) {
  std::string b;
  auto u16 = [&](uint16_t v) { b += static_cast<char>(v >> 8), b += static_cast<char>(v & 255); };
  auto u32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((v >> s) & 255);
  };
  u16(static_cast<uint16_t>(vals.size()));
  for (const char* v : vals) {
    if (v == nullptr) {
      u32(0xffffffffu);
      continue;
    }
    u32(static_cast<uint32_t>(std::string(v).size()));
    b += v;
  }
  return b;
}

}  // namespace pgsluice::test
