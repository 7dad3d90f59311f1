// auth_query on a worker: a lookup waits for a server of its pool (auth_dbname or the
// client's database, as auth_user), runs there as an internal query while the server is
// Resetting, and its outcome goes to the auth cache and to every waiting login. The
// client's side is Client::ask_auth_cache / lookup_answered; the wire is auth_query.h.
#include "log.h"
#include "worker.h"

namespace pgsluice {

void Worker::run_lookup(const LookupScope& scope, const std::string& user) {
  LookupJob job{scope, user, now_seconds()};
  std::string err, sqlstate;
  Pool* p = rt_->registry->get(*cfg_, scope.dbname, scope.auth_user, &err, &sqlstate);
  if (p == nullptr) {
    LOG_WARN("auth_query for database %s cannot run: %s", scope.dbname.c_str(), err.c_str());
    AuthCache::Outcome out;
    out.sqlstate = "08P01";
    out.message = "authentication lookup failed: " + err;
    finish_lookup(job, out);
    return;
  }
  LocalPool* lp = local_pool(p);
  if (!may_connect(p) && lp->idle.empty() && lp->connecting == 0) {
    p->unhold();
    // Its servers have just failed to log in (an outage): an error now, not after a wait.
    AuthCache::Outcome out;
    out.sqlstate = "08006";
    out.message =
        "authentication lookup failed: server login has been failing (server_login_retry)";
    finish_lookup(job, out);
    return;
  }
  lp->lookups.push_back(std::move(job));  // holds the pool (get's hold) until it leaves lookups
  // Published as a waiter, so that a worker holding an idle server of this pool hands it
  // over (release_idle, kick) when this one cannot open another.
  p->waiting_on(index_).fetch_add(1);
  serve_later(lp);  // from the end of this loop turn, as every hand-out
}

void Worker::serve_lookups(LocalPool* lp) {
  while (!lp->lookups.empty()) {
    Server* s = take_idle(lp);
    if (s == nullptr) return;
    auto run = std::make_unique<LookupRun>(std::move(lp->lookups.front()));
    lp->lookups.pop_front();
    lp->pool->waiting_on(index_).fetch_sub(1);
    lp->pool->unhold();  // s holds the pool now
    LOG_DEBUG("S-%p: %s/%s running auth_query", static_cast<void*>(s), s->pool_->db_name.c_str(),
              s->pool_->user_name.c_str());
    s->send_lookup(std::move(run));
    set_state(s, ServerState::Resetting);
    s->flush();  // may close s: lookup_done then reports the failure
  }
}

void Worker::lookup_done(Server* s) {
  std::unique_ptr<LookupRun> run = std::move(s->lookup_);
  AuthCache::Outcome out;
  switch (run->reply.result()) {
    case LookupReply::Result::Found:
      out.kind = AuthCache::Outcome::Kind::Found;
      out.secret = run->reply.secret();
      break;
    case LookupReply::Result::NotFound:
      out.kind = AuthCache::Outcome::Kind::NotFound;
      break;
    case LookupReply::Result::Failed:
      LOG_WARN("S-%p: %s/%s %s", static_cast<void*>(s), s->pool_->db_name.c_str(),
               s->pool_->user_name.c_str(), run->reply.why().c_str());
      out.sqlstate = "08P01";
      out.message = "authentication lookup failed";
      break;
    case LookupReply::Result::Pending:  // the server closed before the last reply
      out.sqlstate = "08006";
      out.message = "authentication lookup failed: server connection lost";
      break;
  }
  if (out.kind != AuthCache::Outcome::Kind::Failed && (s->tx_ != 'I' || s->internal_failed_)) {
    // Replies that end in a transaction still open are not an answer to trust.
    out = AuthCache::Outcome{};
    out.sqlstate = "08P01";
    out.message = "authentication lookup failed";
  }
  finish_lookup(run->job, out);
}

void Worker::finish_lookup(const LookupJob& job, const AuthCache::Outcome& out) {
  std::vector<size_t> workers = rt_->auth_cache->complete(job.scope, job.user, out);
  if (workers.empty()) return;
  std::string key = AuthCache::entry_key(job.scope.key(), job.user);
  // Every worker is told at its next loop turn (this one too): no login goes on from the
  // stack of a server's reply.
  for (size_t w : workers) {
    if (w >= rt_->workers.size()) continue;
    rt_->workers[w]->post_call([key, out](Worker& wk) { wk.wake_auth_waiters(key, out); });
  }
}

void Worker::wake_auth_waiters(const std::string& key, const AuthCache::Outcome& out) {
  auto it = auth_waiters_.find(key);
  if (it == auth_waiters_.end()) return;
  std::vector<Client*> waiting = std::move(it->second);
  auth_waiters_.erase(it);
  // Each leaves AuthWait in lookup_answered (set_state finds no list to erase it from).
  for (Client* c : waiting) {
    if (c->dead_) continue;
    c->lookup_answered(out);
  }
}

void Worker::fail_lookups(LocalPool* lp, std::string_view sqlstate, std::string_view msg,
                          double older_than) {
  std::vector<LookupJob> doomed;
  for (auto it = lp->lookups.begin(); it != lp->lookups.end();) {
    if (older_than < 0 || it->since < older_than) {
      doomed.push_back(std::move(*it));
      it = lp->lookups.erase(it);
      lp->pool->waiting_on(index_).fetch_sub(1);
      lp->pool->unhold();
    } else {
      ++it;
    }
  }
  for (const LookupJob& job : doomed) {
    LOG_WARN("auth_query for user %s in database %s failed: %s", job.user.c_str(),
             job.scope.dbname.c_str(), std::string(msg).c_str());
    AuthCache::Outcome out;
    out.sqlstate = sqlstate.empty() ? "08006" : std::string(sqlstate);
    out.message = "authentication lookup failed: " + std::string(msg);
    finish_lookup(job, out);
  }
}

}  // namespace pgsluice
