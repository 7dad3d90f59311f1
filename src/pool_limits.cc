// Pool limits on a worker: client counts per database and user (max_db_client_connections,
// max_user_client_connections), the reserve pool, min_pool_size and server_fast_close.
#include <algorithm>
#include <vector>

#include "client.h"
#include "listener.h"
#include "log.h"
#include "server.h"
#include "worker.h"

namespace pgsluice {

namespace {

const UserDef* user_def(const Config& cf, const std::string& user) {
  auto it = cf.users.find(user);
  return it == cf.users.end() ? nullptr : &it->second;
}

}  // namespace

// PgBouncer counts a client in set_pool(), before its password; here the count starts once
// the client authenticated (the pool is only found then), so strangers cannot fill a limit.
// Every counter is incremented first and compared after, so two workers admitting at once
// never both pass the last place.
bool Worker::count_client(Client* c) {
  Pool* p = c->pool_;
  if (c->limits_counted_ || c->is_admin_ || p == nullptr) return true;
  c->limits_counted_ = true;  // also: c owns the hold Registry::get took for it
  p->clients.fetch_add(1);
  int in_db = p->db_clients != nullptr ? p->db_clients->fetch_add(1) + 1 : 0;
  c->user_clients_ = c->user_ == p->user_name && p->user_clients != nullptr
                         ? p->user_clients
                         : rt_->registry->user_client_counter(c->user_);
  int of_user = c->user_clients_->fetch_add(1) + 1;
  const Config& cf = *cfg_;
  // A database's or user's own value when positive, else the global one (as PgBouncer).
  const DatabaseDef* d = cf.database(c->db_);
  int db_max = d && d->max_db_client_connections > 0 ? d->max_db_client_connections
                                                     : cf.max_db_client_connections;
  if (db_max > 0 && in_db > db_max) {
    fail_client(c, "08P01", "client connections exceeded (max_db_client_connections)",
                "max_db_client_connections");
    return false;
  }
  const UserDef* u = user_def(cf, c->user_);
  int user_max = u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                         : cf.max_user_client_connections;
  if (user_max > 0 && of_user > user_max) {
    fail_client(c, "08P01", "client connections exceeded (max_user_client_connections)",
                "max_user_client_connections");
    return false;
  }
  return true;
}

void Worker::uncount_client(Client* c) {
  if (!c->limits_counted_) return;
  c->limits_counted_ = false;
  c->pool_->clients.fetch_sub(1);
  if (c->pool_->db_clients != nullptr) c->pool_->db_clients->fetch_sub(1);
  if (c->user_clients_ != nullptr) c->user_clients_->fetch_sub(1);
  c->user_clients_ = nullptr;
  c->pool_->unhold();  // last: the pool may be retired from now on (pool_idle_timeout)
}

// PgBouncer's launch_new_connection(): once the pool is full and has logged in before, a
// client that waited reserve_pool_timeout may have one of reserve_pool_size more servers
// (the pool's user's value, else the database's, else the global one). Here the waiter is
// the first one no connecting server will serve, so one reserve server opens per such
// waiter, and max_db_connections/max_user_connections still hold.
bool Worker::reserve_extra(Pool* p, LocalPool* lp) {
  const Config& cf = *cfg_;
  size_t next = static_cast<size_t>(std::max(lp->connecting, 0));
  if (cf.reserve_pool_timeout <= 0 || p->pool_size <= 0 || lp->waiting.size() <= next ||
      !p->welcome_ready())
    return false;
  // Cheapest test first: this runs whenever waiters are served.
  Client* c = lp->waiting[next];
  if (now_seconds() - c->wait_since_ < cf.reserve_pool_timeout) return false;
  const UserDef* u = user_def(cf, p->user_name);
  const DatabaseDef* d = cf.database(p->db_name);
  int extra = cf.reserve_pool_size;
  if (u && u->reserve_pool_size >= 0)
    extra = u->reserve_pool_size;
  else if (d && d->reserve_pool_size >= 0)
    extra = d->reserve_pool_size;
  if (extra <= 0 || !may_connect(p) || !p->try_reserve_within(p->pool_size + extra)) return false;
  LOG_WARN("C-%p: %s/%s@%s:%d taking connection from reserve_pool", static_cast<void*>(c),
           c->db_.c_str(), c->user_.c_str(), c->addr_.host.c_str(), c->addr_.port);
  return true;
}

int Worker::min_pool_size(const Pool* p) const {
  const Config& cf = *cfg_;
  const DatabaseDef* d = cf.database(p->db_name);
  if (d == nullptr) return 0;  // removed by a reload
  int want = d->min_pool_size >= 0 ? d->min_pool_size : cf.min_pool_size;
  if (p->pool_size > 0) want = std::min(want, p->pool_size.load(std::memory_order_relaxed));
  if (want <= 0 || (p->clients.load() == 0 && d->user.empty())) return 0;
  return want;
}

void Worker::tend_pools() {
  const Config& cf = *cfg_;
  listener_->set_defer_accept(cf.tcp_defer_accept);
  listener_->set_client_options(cf);
  if (stopping_ || rt_->shutdown_mode.load(std::memory_order_relaxed) != 0) return;

  // server_fast_close: in session mode a server RECONNECT (or a changed server_tls_*) wants
  // gone closes as soon as its client is between transactions, and so does that client, so
  // that it notices (PgBouncer's janitor). Other modes release servers at each transaction.
  if (cf.server_fast_close) {
    std::vector<Server*> doomed;
    for (Server* s : servers_) {
      Client* c = s->client_;
      if (s->state() == ServerState::Active && c != nullptr &&
          s->pool_->mode == PoolMode::Session && stale(s) && s->clean() && c->fwd_remaining_ == 0 &&
          !c->copy_in_)
        doomed.push_back(s);
    }
    for (Server* s : doomed) {
      if (s->dead_) continue;
      Client* c = s->client_;
      unlink(c, s);
      close_server(s, "database configuration changed");
      if (c != nullptr && !c->dead_)
        fail_client(c, "08P01", "database configuration changed", "server_fast_close");
    }
  }

  // min_pool_size. Pools of a forced user exist before their first client (worker 0 makes
  // them); each pool is kept filled by one worker (its uid modulo the workers), whose new
  // servers go idle there and are handed over like any other.
  std::string err, sqlstate;
  if (index_ == 0)
    for (const auto& [name, def] : cf.databases)
      if (!def.user.empty() && (def.min_pool_size >= 0 ? def.min_pool_size : cf.min_pool_size) > 0)
        if (Pool* p = rt_->registry->get(cf, name, def.user, &err, &sqlstate))
          Registry::release_held({p});  // not a use
  size_t n = rt_->workers.size();
  for (Pool* p : rt_->registry->pools()) {
    if (n == 0 || p->uid % n != index_) continue;
    int want = min_pool_size(p);
    if (want <= 0 || p->server_count() >= want) continue;
    if (paused(p) || p->target()->addr_state() != AddrState::Ready || !may_connect(p)) continue;
    LocalPool* lp = local_pool(p);
    for (int i = 0; i < want && p->try_reserve_within(want); i++) launch_server(lp);
  }
}

}  // namespace pgsluice
