// libFuzzer target: connection strings of [databases], [users] and [peers] (connstr.h).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "connstr.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view s(reinterpret_cast<const char*>(data), size);
  pgsluice::Result<pgsluice::ConnstrPairs> pairs = pgsluice::parse_connstr(s);
  if (pairs.ok()) {
    for (const auto& [key, value] : *pairs) {
      if (key.empty() || value.empty()) __builtin_trap();  // the parser promises neither
    }
  }
  std::vector<std::string> warnings;
  pgsluice::DatabaseDef d;
  (void)pgsluice::apply_database_connstr(d, s, &warnings);
  pgsluice::UserDef u;
  (void)pgsluice::apply_user_connstr(u, s, &warnings);
  pgsluice::PeerDef p;
  (void)pgsluice::apply_peer_connstr(p, s, nullptr);
  return 0;
}
