// libFuzzer target for the auth_ident_file parser and the map check.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ident.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Regular expressions cost what their patterns cost: keep the inputs small.
  if (size > 4096) return 0;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  pgsluice::IdentFile f = pgsluice::parse_ident(text);
  for (const pgsluice::IdentEntry& e : f.entries) {
    if (e.map.empty() || e.line <= 0) __builtin_trap();
    (void)pgsluice::ident_allows(f, e.map, e.system_user, e.db_user);
    (void)pgsluice::ident_allows(f, e.map, "root", "postgres");
  }
  return 0;
}
