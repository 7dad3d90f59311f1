// The admin console: the virtual databases "pgbouncer" and "pgsluice".
#include "admin.h"

#include "client.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

bool is_admin_database(std::string_view db) { return db == "pgbouncer" || db == "pgsluice"; }

void admin_login(Client* c) {
  std::string m;
  wire::auth_ok(m);
  wire::parameter_status(m, "server_version", "15.0/bouncer");
  wire::parameter_status(m, "client_encoding", "UTF8");
  wire::parameter_status(m, "standard_conforming_strings", "on");
  wire::backend_key_data(m, c->cancel_pid_,
                         std::string_view(reinterpret_cast<const char*>(c->cancel_key_.data()), 4));
  wire::ready_for_query(m, 'I');
  c->worker()->bufs().append(c->out_, m.data(), m.size());
  c->welcomed_ = true;
  c->state_ = ClientState::Idle;
  c->flush();
}

bool admin_message(Client* c, uint8_t type, std::span<const uint8_t>) {
  std::string m;
  if (type != 'Q') {
    c->queue_error(true, "08P01", "the admin console supports the simple query protocol only");
    c->flush();
    c->worker()->close_client(c, "extended protocol on admin console");
    return false;
  }
  wire::error_response(m, "ERROR", "0A000", "the admin console is not implemented yet");
  wire::ready_for_query(m, 'I');
  c->worker()->bufs().append(c->out_, m.data(), m.size());
  c->flush();
  return !c->dead_;
}

}  // namespace pgsluice
