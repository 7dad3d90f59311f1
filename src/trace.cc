// The wire-level trace: one log line per message of a traced client, no contents.
#include "trace.h"

#include <cinttypes>
#include <cstdio>

#include "client.h"
#include "log.h"
#include "stats.h"

namespace pgsluice {

bool parse_trace_target(std::string_view v, TraceTarget& out) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  v = trim(v);
  auto lower_eq = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++) {
      char x = a[i];
      if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
      if (x != b[i]) return false;
    }
    return true;
  };
  if (lower_eq(v, "off") || lower_eq(v, "none") || lower_eq(v, "0")) {
    out = TraceTarget{};
    return true;
  }
  if (lower_eq(v, "all") || lower_eq(v, "on")) {
    out = TraceTarget{3, 0, {}};
    return true;
  }
  size_t sep = v.find_first_of(" :=");
  if (sep == std::string_view::npos) return false;
  std::string_view kind = v.substr(0, sep), rest = trim(v.substr(sep + 1));
  if (rest.empty()) return false;
  if (lower_eq(kind, "client")) {
    uint64_t id = 0;
    for (char ch : rest) {
      if (ch < '0' || ch > '9' || id > UINT64_MAX / 10 - 10) return false;
      id = id * 10 + static_cast<uint64_t>(ch - '0');
    }
    out = TraceTarget{1, id, {}};
    return true;
  }
  if (lower_eq(kind, "db") || lower_eq(kind, "database")) {
    out = TraceTarget{2, 0, std::string(rest)};
    return true;
  }
  return false;
}

void trace_message(Client* c, bool to_server, uint8_t type, size_t len) {
  uint64_t now = now_us();
  uint64_t since = c->trace_last_us_ == 0 ? 0 : now - c->trace_last_us_;
  c->trace_last_us_ = now;
  char t[8];
  if (type >= 0x20 && type < 0x7f)
    std::snprintf(t, sizeof t, "'%c'", type);
  else
    std::snprintf(t, sizeof t, "0x%02x", type);
  LOG_INFO("C-%p: %s/%s@%s:%d trace id=%" PRIu64 " %s %s len=%zu +%" PRIu64 "us",
           static_cast<void*>(c), c->db_.c_str(), c->user_.c_str(), c->addr_.host.c_str(),
           c->addr_.port, c->id_, to_server ? "C->S" : "S->C", t, len, since);
}

}  // namespace pgsluice
