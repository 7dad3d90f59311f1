// libFuzzer target: simple Query texts of idle clients in transaction and statement pooling,
// which parse_notify_cmd (notify_hub.cc) reads to answer LISTEN and UNLISTEN itself.
// Besides not crashing, what it accepts must be what the hub can LISTEN on again: a channel
// quoted back parses to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "notify_hub.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgsluice;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  text = text.substr(0, text.find('\0'));  // a Query's text is a C string
  NotifyCmd cmd = parse_notify_cmd(text);
  switch (cmd.kind) {
    case NotifyCmd::Kind::None:
    case NotifyCmd::Kind::UnlistenAll:
      check(cmd.channel.empty());
      break;
    case NotifyCmd::Kind::Listen:
    case NotifyCmd::Kind::Unlisten: {
      check(!cmd.channel.empty() && cmd.channel.size() <= 63);
      for (char c : cmd.channel) check(c != '\0' && static_cast<unsigned char>(c) < 0x80);
      NotifyCmd again = parse_notify_cmd("LISTEN " + quote_channel(cmd.channel));
      check(again.kind == NotifyCmd::Kind::Listen && again.channel == cmd.channel);
      break;
    }
  }
  return 0;
}
