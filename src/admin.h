// The admin console: the virtual databases "pgbouncer" and "pgsluice". A sibling of the
// pooled session, chosen at login; it never touches a server and reads pools only
// through worker messages (gather.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgsluice {

class Client;

constexpr size_t kAdminMaxMessage = 64 * 1024;
// The version pgsluice reports; SHOW VERSION adds the PgBouncer release it matches.
constexpr const char* kPgsluiceVersion = "0.1.0";
constexpr const char* kPgBouncerCompat = "1.25.0";

bool is_admin_database(std::string_view db);
// User "pgbouncer" over the Unix socket from a process with our uid: in without a
// password, as admin (PgBouncer's admin_pre_login).
bool admin_trusted_peer(const Client* c);
// The client authenticated to a virtual database: check access, send the welcome.
void admin_login(Client* c);
// One whole message from a console client. Returns false when the caller must stop
// processing this client's input for now (closed, or waiting for a gathered answer).
bool admin_message(Client* c, uint8_t type, std::span<const uint8_t> body);

// A parsed console statement (PgBouncer's grammar: `WORD [WORD] [;]`,
// `SET key = word|'string'`; words are [0-9a-z_]+ or "quoted").
struct AdminStatement {
  bool is_set = false;
  std::string cmd;    // lower-cased (not for SET)
  std::string arg;    // as written, unquoted; empty when absent
  std::string arg2;   // a second word (DROP AUTH_CACHE user); empty when absent
  std::string key;    // SET: lower-cased
  std::string value;  // SET: unquoted
};
std::optional<AdminStatement> parse_admin_statement(std::string_view q);

// Every console command and SHOW subcommand, for SHOW HELP and the documentation test.
const std::vector<std::string>& admin_commands();
const std::vector<std::string>& admin_show_commands();

// True when a comma/space separated user list names `user` (admin_users, stats_users).
bool user_in_list(std::string_view list, std::string_view user);

}  // namespace pgsluice
