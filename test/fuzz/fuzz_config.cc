// libFuzzer target: the pgbouncer.ini reader (parse_config_text) and the settings table.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // %include would read arbitrary files of the fuzzing host: not fed (unit-tested instead).
  for (size_t i = 0; i + 1 < text.size(); i++) {
    if (text[i] == '%' && (text[i + 1] == 'i' || text[i + 1] == 'I')) return 0;
  }
  pgsluice::Config c;
  pgsluice::Status st = pgsluice::parse_config_text(c, text, "fuzz.ini");
  (void)st;
  pgsluice::Config again;
  for (const pgsluice::SettingInfo& row : pgsluice::settings_table()) {
    std::optional<std::string> v = pgsluice::setting_value(c, row.name);
    if (!v) __builtin_trap();  // every row has a value
    // what SHOW CONFIG prints must be accepted again by SET
    if (!pgsluice::set_setting(again, row.name, *v).ok()) __builtin_trap();
  }
  (void)pgsluice::settings_needing_restart(pgsluice::Config(), c);
  (void)c.effective_workers();
  return 0;
}
