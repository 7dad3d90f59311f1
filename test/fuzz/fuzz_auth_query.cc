// libFuzzer target: LookupReply, the reader of PostgreSQL's replies to auth_query. The input
// is a stream of backend messages (type, Int32 length, body), as a server could send them.
#include <cstddef>
#include <cstdint>
#include <span>

#include "auth_query.h"
#include "wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pgsluice::LookupReply reply("alice");
  size_t i = 0;
  while (size - i >= pgsluice::wire::kHeaderLen) {
    uint8_t type = data[i];
    uint32_t len = pgsluice::wire::get_u32(data + i + 1);
    if (len < 4 || len - 4 > size - i - pgsluice::wire::kHeaderLen) break;
    reply.on_message(type,
                     std::span<const uint8_t>(data + i + pgsluice::wire::kHeaderLen, len - 4));
    i += 1 + len;
    auto r = reply.result();
    // Found carries a bounded secret; Failed says why.
    if (r == pgsluice::LookupReply::Result::Found &&
        reply.secret().size() > pgsluice::kMaxLookupSecret)
      __builtin_trap();
    if (r == pgsluice::LookupReply::Result::Failed && reply.why().empty()) __builtin_trap();
  }
  return 0;
}
