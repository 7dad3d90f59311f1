// libFuzzer target: startup-phase packets, options strings, error bodies and the server's
// login messages (auth request, ParameterStatus, BackendKeyData) from the network.
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
  // Server messages read at login and on the data path.
  wire::AuthRequest auth;
  if (wire::parse_auth_request(in, auth) && auth.code == 5 && auth.salt.size() != 4)
    __builtin_trap();
  std::string_view name, value;
  (void)wire::parse_parameter_status(in, name, value);
  uint32_t pid = 0;
  std::span<const uint8_t> key;
  if (wire::parse_backend_key(in, pid, key) && (key.size() < 4 || key.size() > 256))
    __builtin_trap();
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
