// The janitor: every timeout and the server health check, on each worker's maintenance timer.
#include <errno.h>
#include <sys/socket.h>

#include "log.h"
#include "target.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {

// A [users] override (-1: not set) replaces the global value; 0 there turns it off.
double per_user(const Config& cf, const std::string& user, double UserDef::*field, double global) {
  auto it = cf.users.find(user);
  if (it != cf.users.end() && it->second.*field >= 0) return it->second.*field;
  return global;
}

// query_wait_timeout: the user's, else the database's, else the global value (PgBouncer).
double wait_limit(const Config& cf, const Client* c) {
  double v = cf.query_wait_timeout;
  if (const DatabaseDef* d = cf.database(c->db_); d != nullptr && d->query_wait_timeout >= 0)
    v = d->query_wait_timeout;
  return per_user(cf, c->user_, &UserDef::query_wait_timeout, v);
}

}  // namespace

void Worker::janitor_cb(evutil_socket_t, short, void* arg) {
  static_cast<Worker*>(arg)->janitor();
}

void Worker::janitor() {
  cfg_ = rt_->config();  // adopt a reloaded snapshot at a loop turn
  double now = now_seconds();
  const Config& cf = *cfg_;
  reap_pools(now);  // first: a quiescent point (pool_idle.cc)
  // Servers: connect/login timeout, idle timeout, lifetime.
  std::vector<Server*> expired;
  for (Server* s : servers_) {
    bool logging_in = server_logging_in(s->state());
    if (logging_in && cf.server_connect_timeout > 0 &&
        now - s->connect_time_ > cf.server_connect_timeout)
      expired.push_back(s);
    else if (s->state() == ServerState::Idle &&
             ((cf.server_idle_timeout > 0 && now - s->idle_since_ > cf.server_idle_timeout &&
               s->pool_->server_count() > min_pool_size(s->pool_)) ||  // min_pool_size stays
              (cf.server_lifetime > 0 && now - s->connect_time_ > cf.server_lifetime)))
      expired.push_back(s);
    else if (s->hub_ != nullptr && s->state() == ServerState::Active &&
             (stale(s) || paused(s->pool_)))
      expired.push_back(s);  // a LISTEN/NOTIFY hub follows RELOAD, RECONNECT and PAUSE
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
  tend_pools();  // min_pool_size, server_fast_close (pool_limits.cc)
  for (auto& [p, lp] : pools_) {
    if (!lp->lookups.empty()) {
      // A lookup nobody can serve ends: its logins get an error instead of waiting for ever.
      double limit = cf.client_login_timeout > 0 ? cf.client_login_timeout : 60.0;
      fail_lookups(lp.get(), "08P01", "auth_query could not run: no server connection",
                   now - limit);
    }
    if (lp->waiting.empty() && lp->lookups.empty()) continue;
    serve_waiters(p, lp.get());
    waiter_timeouts(lp.get(), now);
  }
  linked_timeouts(now);
  idle_client_timeouts(now);
  cancel_timeouts(now);
  suspend_timeouts(now);
}

// Clients waiting for a server: query_wait_notify (a NOTICE, once per wait), query_timeout
// (counted from the request) and query_wait_timeout (from the start of the wait).
void Worker::waiter_timeouts(LocalPool* lp, double now) {
  const Config& cf = *cfg_;
  std::vector<std::pair<Client*, const char*>> late;
  for (Client* c : lp->waiting) {
    if (cf.query_wait_notify > 0 && !c->wait_notified_ && c->welcomed_ &&
        c->state() == ClientState::Waiting && now - c->wait_since_ > cf.query_wait_notify) {
      c->wait_notified_ = true;
      std::string m;
      wire::notice_response(
          m, "No server connection available in postgres backend, client being queued");
      bufs().append(c->out_, m.data(), m.size());
      c->flush();
    }
    double wl = wait_limit(cf, c);
    double since = c->request_time_ > 0 ? c->request_time_ : c->wait_since_;
    if (cf.query_timeout > 0 && now - since > cf.query_timeout)
      late.emplace_back(c, "query_timeout");
    else if (wl > 0 && now - c->wait_since_ > wl)
      late.emplace_back(c, "query_wait_timeout");
  }
  for (auto& [c, why] : late) fail_client(c, "08P01", why, why);
}

// Clients linked to a server (PgBouncer's active servers that are not ready): query_timeout
// counts from the oldest unanswered request, idle_transaction_timeout from the last
// ReadyForQuery of an open transaction, transaction_timeout from the transaction's first
// request. The client gets FATAL 08P01 with PgBouncer's reason; its server, not clean, is
// closed by close_client (never returned to the pool).
void Worker::linked_timeouts(double now) {
  const Config& cf = *cfg_;
  std::vector<std::pair<Client*, const char*>> doomed;
  for (Server* s : servers_) {
    Client* c = s->client_;
    if (s->state() != ServerState::Active || c == nullptr || c->dead_ || s->clean()) continue;
    double qt = per_user(cf, c->user_, &UserDef::query_timeout, cf.query_timeout);
    double it =
        per_user(cf, c->user_, &UserDef::idle_transaction_timeout, cf.idle_transaction_timeout);
    double tt = per_user(cf, c->user_, &UserDef::transaction_timeout, cf.transaction_timeout);
    if (qt <= 0 && it <= 0 && tt <= 0) continue;
    double nowus = now * 1e6;
    double q_age =
        s->query_start_us_ != 0 ? (nowus - static_cast<double>(s->query_start_us_)) / 1e6 : 0;
    double x_age =
        s->xact_start_us_ != 0 ? (nowus - static_cast<double>(s->xact_start_us_)) / 1e6 : 0;
    bool idle_tx = s->query_start_us_ == 0 && s->tx_ != 'I' && s->ready_at_ > 0;
    if (qt > 0 && q_age > qt)
      doomed.emplace_back(c, "query timeout");
    else if (it > 0 && idle_tx && now - s->ready_at_ > it)
      doomed.emplace_back(c, "idle transaction timeout");
    else if (tt > 0 && x_age > tt)
      doomed.emplace_back(c, "transaction timeout");
  }
  for (auto& [c, why] : doomed) {
    if (Server* s = c->server_) {
      if (cf.log_disconnections)
        LOG_INFO("S-%p: %s/%s closing because: %s", static_cast<void*>(s),
                 s->pool_->db_name.c_str(), s->pool_->user_name.c_str(), why);
      if (s->query_start_us_ != 0) cancel_backend(s);  // else PostgreSQL runs it to its end
    }
    fail_client(c, "08P01", why, why);
  }
}

void Worker::cancel_backend(Server* s) {
  if (s->backend_key_.empty()) return;
  Dial d = dial(s->peer_, s->peer_len_, *cfg_);
  if (d.fd < 0) return;
  auto* cc = new CancelConn(this, Fd(d.fd), s);
  cc->target_ = nullptr;
  cc->orphan_ = true;
  cc->started_ = now_seconds();
  cancel_conns_.push_back(cc);
  cc->attach(this);
  if (d.err == 0)
    cc->want_write(true);
  else
    close_cancel(cc);
}

// client_idle_timeout: a logged-in client without a server whose last request (or login) is
// older than the limit. The console is exempt, as PgBouncer's admin pool.
void Worker::idle_client_timeouts(double now) {
  const Config& cf = *cfg_;
  std::vector<Client*> idle;
  for (Client* c : clients_) {
    if (c->state() != ClientState::Idle || c->is_admin_ || c->dead_) continue;
    double lim = per_user(cf, c->user_, &UserDef::client_idle_timeout, cf.client_idle_timeout);
    if (lim <= 0) continue;
    double since = c->request_time_ > 0 ? c->request_time_ : c->connect_time_;
    if (now - since > lim) idle.push_back(c);
  }
  for (Client* c : idle) fail_client(c, "08P01", "client_idle_timeout", "client_idle_timeout");
}

// cancel_wait_timeout: a cancel request that PostgreSQL has not answered (closed) in time is
// given up. PostgreSQL may still act on it later, so its target, if already released
// (BeingCanceled), is closed instead of going back to the pool.
void Worker::cancel_timeouts(double now) {
  if (cfg_->cancel_wait_timeout <= 0) return;
  std::vector<CancelConn*> late;
  for (CancelConn* cc : cancel_conns_)
    if (!cc->dead_ && now - cc->started_ > cfg_->cancel_wait_timeout) late.push_back(cc);
  for (CancelConn* cc : late) {
    Server* s = cc->target_;
    LOG_WARN("cancel request gave up: cancel_wait_timeout");
    // First: close_cancel would give a BeingCanceled target back to the pool.
    if (s != nullptr && !s->dead_ && s->state() == ServerState::BeingCanceled)
      close_server(s, "cancel_wait_timeout");  // clears cc->target_
    close_cancel(cc);
  }
}

// suspend_timeout: once SUSPEND has lasted that long, clients and servers that still hold
// unsent or unprocessed bytes, and clients still logging in, are closed (PgBouncer).
void Worker::suspend_timeouts(double now) {
  if (!suspended_ || suspend_forced_ || cfg_->suspend_timeout <= 0 ||
      now - suspend_since_ < cfg_->suspend_timeout)
    return;
  suspend_forced_ = true;
  std::vector<Client*> cs;
  for (Client* c : clients_)
    if (!c->is_admin_ && !c->dead_ &&
        (c->logging_in() || !c->in_.empty() || !c->out_.empty() || c->fwd_remaining_ > 0))
      cs.push_back(c);
  for (Client* c : cs) fail_client(c, "08P01", "suspend_timeout", "suspend_timeout");
  std::vector<Server*> ss;
  for (Server* s : servers_)
    if (!s->dead_ && (!s->in_.empty() || !s->out_.empty() || s->fwd_remaining_ > 0))
      ss.push_back(s);
  for (Server* s : ss) close_server(s, "suspend_timeout");
}

// server_check_query after server_check_delay, then a routines reading or probe when due
// (state_routines.h), then server_check_prepared: starts a check of
// s before c may use it; true when started (s is Resetting until PostgreSQL answers, then
// idle again, or closed when the check failed; the client waits meanwhile).
bool Worker::check_server(Server* s, const Client* c) {
  const std::string& q = cfg_->server_check_query;
  // A server that just logged in or passed a check is not checked again before its next
  // client (with server_check_delay 0 every reuse would check anew, for ever).
  double delay = cfg_->server_check_delay;
  if (!q.empty() && !(s->fresh_ && delay <= 0) && now_seconds() - s->ready_at_ > delay) {
    s->send_internal_query(q == "<empty>" ? std::string_view() : std::string_view(q));
    s->health_check_ = true;
    rt_->server_checks.fetch_add(1, std::memory_order_relaxed);
    set_state(s, ServerState::Resetting);
    s->flush();
    return true;
  }
  // After the health check: a reading or probe makes the server look recently used.
  if (scan_routines(s)) return true;
  return check_prepared(s, c);
}

bool Worker::scan_routines(Server* s) {
  Pool* p = s->pool_;
  if (p->mode.load(std::memory_order_relaxed) == PoolMode::Session) return false;
  if (p->state == nullptr) return false;
  RoutineReadings& rr = p->state->routines;
  const double now = now_seconds();
  bool probe = false;
  if (!rr.take(now)) {
    if (!rr.take_probe(now)) return false;
    probe = true;  // a reading exists: is it still true? (a change made elsewhere)
  }
  s->routines_ = std::make_unique<StateRoutines>();
  s->routines_->probe = probe;
  s->routines_bad_ = false;
  s->send_internal_query(probe ? StateRoutines::probe_query() : StateRoutines::query());
  set_state(s, ServerState::Resetting);
  s->flush();
  return true;
}

void Worker::routines_scanned(Server* s) {
  std::unique_ptr<StateRoutines> r = std::move(s->routines_);
  if (r == nullptr) return;
  const bool failed = s->dead_ || s->internal_failed_ || s->routines_bad_;
  if (r->probe) {
    if (failed)
      LOG_DEBUG("S-%p: %s/%s: probing the routines' catalogs failed", static_cast<void*>(s),
                s->pool_->db_name.c_str(), s->pool_->user_name.c_str());
    s->pool_->state->routines.probed(failed ? std::string_view() : r->fingerprint(), now_seconds());
    return;
  }
  if (failed) {
    LOG_WARN(
        "S-%p: %s/%s: reading which routines make session state failed; the last "
        "reading stays",
        static_cast<void*>(s), s->pool_->db_name.c_str(), s->pool_->user_name.c_str());
    rt_->routine_reading_failures.fetch_add(1, std::memory_order_relaxed);
    s->pool_->state->routines.done(nullptr, now_seconds());
    return;
  }
  r->finish();
  if (!r->complete())
    LOG_WARN(
        "S-%p: %s/%s: the routines' catalog is larger than pgsluice reads (%zu MiB); "
        "every text that calls something counts as one that may change session state",
        static_cast<void*>(s), s->pool_->db_name.c_str(), s->pool_->user_name.c_str(),
        StateRoutines::kMaxBytes >> 20);
  LOG_DEBUG("S-%p: %s/%s: %zu routines and relations make session state", static_cast<void*>(s),
            s->pool_->db_name.c_str(), s->pool_->user_name.c_str(), r->size());
  s->pool_->state->routines.done(std::move(r), now_seconds());
  rt_->routine_readings.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace pgsluice
