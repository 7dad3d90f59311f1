// The admin console: the virtual databases "pgbouncer" and "pgsluice". A sibling of the
// pooled session, chosen at login; it never touches a server and reads pools only
// through worker messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace pgsluice {

class Client;

constexpr size_t kAdminMaxMessage = 64 * 1024;

bool is_admin_database(std::string_view db);
// The client authenticated to a virtual database: check access, send the welcome.
void admin_login(Client* c);
// One whole message from a console client. Returns false when the client was closed.
bool admin_message(Client* c, uint8_t type, std::span<const uint8_t> body);

}  // namespace pgsluice
