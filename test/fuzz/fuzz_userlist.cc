// libFuzzer target: the auth_file reader (parse_userlist).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "userlist.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  pgsluice::Userlist ul;
  std::vector<std::string> warnings;
  pgsluice::Status st = pgsluice::parse_userlist(text, ul, &warnings, "fuzz.txt");
  (void)st;
  for (const auto& [user, secret] : ul.secrets) {
    if (user.empty()) __builtin_trap();  // empty names are skipped
    const std::string* found = ul.find(user);
    if (found == nullptr || *found != secret) __builtin_trap();
  }
  return 0;
}
