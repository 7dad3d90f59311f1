// libFuzzer target: startup-phase packets, options strings and error bodies from the network.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgsluice;
  std::span<const uint8_t> in(data, size);
  auto sp = wire::parse_startup(in);
  if (sp.ok())
    for (const auto& [k, v] : sp->params)
      if (k == "options") (void)wire::parse_options(v);
  (void)wire::parse_options(std::string_view(reinterpret_cast<const char*>(data), size));
  (void)wire::parse_error(in);
  // Walk the input as a stream of typed messages, as the data path frames it.
  size_t pos = 0;
  while (size - pos >= wire::kHeaderLen) {
    size_t len = wire::get_u32(data + pos + 1);
    if (len < 4 || len > size - pos - 1) break;
    (void)wire::frontend_limit(data[pos]);
    pos += len + 1;
  }
  return 0;
}
