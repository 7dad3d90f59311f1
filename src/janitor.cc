// The janitor: each worker's 1 s timer that enforces the timeouts (login, idle, lifetime,
// query_wait_timeout) and retries waiting clients. Worker member functions.
#include "log.h"
#include "worker.h"

namespace pgsluice {

void Worker::janitor_cb(evutil_socket_t, short, void* arg) {
  static_cast<Worker*>(arg)->janitor();
}

void Worker::janitor() {
  cfg_ = rt_->config();  // adopt a reloaded snapshot at a loop turn
  double now = now_seconds();
  const Config& cf = *cfg_;
  // Servers: connect/login timeout, idle timeout, lifetime.
  std::vector<Server*> expired;
  for (Server* s : servers_) {
    bool logging_in = server_logging_in(s->state());
    if (logging_in && cf.server_connect_timeout > 0 &&
        now - s->connect_time_ > cf.server_connect_timeout)
      expired.push_back(s);
    else if (s->state() == ServerState::Idle &&
             ((cf.server_idle_timeout > 0 && now - s->idle_since_ > cf.server_idle_timeout) ||
              (cf.server_lifetime > 0 && now - s->connect_time_ > cf.server_lifetime)))
      expired.push_back(s);
  }
  for (Server* s : expired) {
    if (s->dead_) continue;
    if (server_logging_in(s->state()))
      server_login_failed(s, "08006", "server_connect_timeout", true);
    else
      close_server(s, "server idle timeout or lifetime");
  }
  // Clients that never finish logging in.
  if (cf.client_login_timeout > 0) {
    std::vector<Client*> slow;
    for (Client* cl : clients_)
      if (cl->logging_in() && now - cl->connect_time_ > cf.client_login_timeout) slow.push_back(cl);
    for (Client* cl : slow) {
      if (cl->dead_) continue;
      if (cl->state() == ClientState::Auth || cl->state() == ClientState::AuthWait)
        fail_client(cl, "08P01", "client_login_timeout", "client_login_timeout");
      else
        close_client(cl, "client_login_timeout");
    }
  }
  sweep();
  for (auto& [p, lp] : pools_) {
    if (!lp->lookups.empty()) {
      // A lookup nobody can serve ends: its logins get an error instead of waiting for ever.
      double limit = cf.client_login_timeout > 0 ? cf.client_login_timeout : 60.0;
      fail_lookups(lp.get(), "08P01", "auth_query could not run: no server connection",
                   now - limit);
    }
    if (lp->waiting.empty() && lp->lookups.empty()) continue;
    serve_waiters(p, lp.get());
    if (cfg_->query_wait_timeout > 0) {
      std::vector<Client*> late;
      for (Client* c : lp->waiting)
        if (now - c->wait_since_ > cfg_->query_wait_timeout) late.push_back(c);
      for (Client* c : late) {
        fail_client(c, "08P01", "query_wait_timeout", "query_wait_timeout");
      }
    }
  }
}

}  // namespace pgsluice
