// The wire-level trace: switched on at run time from the console (SET trace = ...) for
// one client, one database or every client; logs each message's direction, type, length
// and the time since the previous one. Never message contents.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgsluice {

class Client;

// What SET trace selects: mode 0 off, 1 one client id, 2 one database, 3 all clients.
struct TraceTarget {
  int mode = 0;
  uint64_t client_id = 0;
  std::string db;
};
// Parses "off", "all", "client <id>" / "client:<id>" / "client=<id>", "db <name>"
// (also "database"). Pure.
bool parse_trace_target(std::string_view v, TraceTarget& out);

// One trace line for a message of `len` bytes (type byte included) of client `c`;
// `to_server` gives the direction. Called only when c->trace_ is set.
void trace_message(Client* c, bool to_server, uint8_t type, size_t len);

}  // namespace pgsluice
