// One worker thread: its event loop, inbox, local pools, and the moves of clients and
// servers between pool lists (acquire, release, close).
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include <algorithm>
#include <cstring>

#include "client.h"
#include "listener.h"
#include "log.h"
#include "password.h"
#include "server.h"
#include "tls.h"
#include "wire.h"

namespace pgsluice {

uint64_t now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

double now_seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ---------------------------------------------------------------- CancelConn

CancelConn::CancelConn(Worker* w, Fd fd, Server* target)
    : Conn(w, std::move(fd)),
      target_(target),
      pid_(target->backend_pid_),
      key_(target->backend_key_) {}
CancelConn::~CancelConn() = default;

void CancelConn::on_writable() {
  if (!connected_) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (target_ == nullptr && !orphan_)) {
      worker_->close_cancel(this);
      return;
    }
    connected_ = true;
    std::string m;
    wire::cancel_request(m, pid_, key_);
    worker_->bufs().append(out_, m.data(), m.size());
  }
  Io r = flush_out();
  if (r == Io::Error) {
    worker_->close_cancel(this);
    return;
  }
  if (r == Io::Ok) want_read(true);  // PostgreSQL closes the connection when done
}

void CancelConn::on_readable() {
  size_t got = 0;
  Io r = read_in(&got);
  in_.rpos = in_.wpos;
  if (r == Io::Eof || r == Io::Error) worker_->close_cancel(this);
}

// ---------------------------------------------------------------- Worker

Worker::Worker(Runtime* rt, size_t index) : rt_(rt), index_(index) {
  event_config* ec = event_config_new();
  event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);  // only this thread touches the base
  base_ = event_base_new_with_config(ec);
  event_config_free(ec);
  event_base_priority_init(base_, 2);
  cfg_ = rt->config();
  inbox_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  event_assign(&inbox_ev_, base_, inbox_fd_, EV_READ | EV_PERSIST, &Worker::inbox_cb, this);
  event_add(&inbox_ev_, nullptr);
  event_assign(&free_ev_, base_, -1, 0, &Worker::free_cb, this);
  event_priority_set(&free_ev_, 1);  // after every other callback of the loop turn
  event_assign(&serve_ev_, base_, -1, 0, &Worker::serve_cb, this);
  event_priority_set(&serve_ev_, 1);  // after the callbacks already active this turn
  event_assign(&flush_ev_, base_, -1, 0, &Worker::flush_cb, this);
  event_priority_set(&flush_ev_, 1);  // when no socket event of this turn is left
  event_assign(&log_ev_, base_, -1, 0, &Worker::log_cb, this);
  event_priority_set(&log_ev_, 1);  // the turn's log lines, in one write
  event_assign(&janitor_ev_, base_, -1, EV_PERSIST, &Worker::janitor_cb, this);
  timeval period{0, 333333};  // three times a second, as PgBouncer's full maintenance
  event_add(&janitor_ev_, &period);
  listener_ = std::make_unique<Listener>(this);
  // A host name resolved off the loops: every worker serves the pool's waiters then.
  if (rt->registry)
    rt->registry->set_on_resolved([rt](Pool* p) {
      for (auto& w : rt->workers)
        w->post(InboxMsg{InboxMsg::Kind::Kick, -1, false, nullptr, p, 0, {}, {}});
    });
}

Worker::~Worker() {
  if (rt_->registry) rt_->registry->stop_resolver();  // it posts to rt_->workers
  free_dead();
  for (auto& [p, lp] : pools_) lp->hub.reset();  // their timers, before the loop goes
  listener_.reset();
  event_del(&inbox_ev_);
  event_del(&janitor_ev_);
  event_del(&free_ev_);
  event_del(&flush_ev_);
  event_del(&log_ev_);
  event_del(&serve_ev_);
  if (inbox_fd_ >= 0) ::close(inbox_fd_);
  if (base_) event_base_free(base_);
}

Status Worker::listen() {
  return listener_->open(*cfg_);
}

void Worker::start() {
  thread_ = std::thread([this] { run(); });
}
void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::run() {
  log_batch_begin(&Worker::log_arm, this);
  event_base_dispatch(base_);
  free_dead();
  log_batch_end();
}

void Worker::log_arm(void* arg) {
  event_active(&static_cast<Worker*>(arg)->log_ev_, EV_TIMEOUT, 0);
}

void Worker::log_cb(evutil_socket_t, short, void*) {
  log_batch_flush();
}

// The eventfd is written only when the inbox was empty: the loop drains the whole inbox
// after each wake-up (drain_inbox swaps it out under the lock), so a message pushed onto a
// non-empty inbox is taken by the drain that the first message's write brings. The write is
// made under the lock, so no message waits on another poster's pending write. Under load,
// kicks and hand-overs come in bursts; this saves a write(2) for all but the first.
void Worker::post(InboxMsg m) {
  std::lock_guard<std::mutex> g(inbox_mu_);
  bool was_empty = inbox_.empty();
  inbox_.push_back(std::move(m));
  if (!was_empty) return;
  uint64_t one = 1;
  ssize_t r = ::write(inbox_fd_, &one, sizeof one);
  (void)r;
}

void Worker::post_call(std::function<void(Worker&)> fn) {
  InboxMsg m{InboxMsg::Kind::Call, -1, false, nullptr, nullptr, 0, {}, {}};
  m.call = std::move(fn);
  post(std::move(m));
}

void Worker::inbox_cb(evutil_socket_t fd, short, void* arg) {
  uint64_t v;
  ssize_t r = ::read(fd, &v, sizeof v);
  (void)r;
  static_cast<Worker*>(arg)->drain_inbox();
}

void Worker::drain_inbox() {
  std::vector<InboxMsg> msgs;
  {
    std::lock_guard<std::mutex> g(inbox_mu_);
    msgs.swap(inbox_);
  }
  for (auto& m : msgs) {
    switch (m.kind) {
      case InboxMsg::Kind::NewClient:
        new_client(m.fd, m.is_unix);
        break;
      case InboxMsg::Kind::Server:
        adopt_server(m.server, m.pool);
        break;
      case InboxMsg::Kind::Kick: {
        // Found by address alone: a kick may outlive its pool (pool_idle_timeout), and a
        // worker without a LocalPool holds neither waiters nor idle servers of it.
        auto it = pools_.find(m.pool);
        if (it == pools_.end()) break;
        LocalPool* lp = it->second.get();
        Pool* p = lp->pool;
        if (paused(p)) break;
        serve_waiters(p, lp);
        if (lp->waiting.empty() && lp->lookups.empty() && !lp->idle.empty() && m.fd >= 0 &&
            static_cast<size_t>(m.fd) != index_ && p->waiting_on(static_cast<size_t>(m.fd)) > 0)
          hand_over(lp->idle.back(), static_cast<size_t>(m.fd));
        break;
      }
      case InboxMsg::Kind::Cancel:
        handle_cancel(m.cancel_pid, m.cancel_key);
        break;
      case InboxMsg::Kind::Call:
        if (m.call) m.call(*this);
        break;
      case InboxMsg::Kind::Stop: {
        stopping_ = true;
        listener_->stop();
        std::vector<Client*> all = clients_;
        for (Client* c : all) close_client(c, "shutdown");
        std::vector<Server*> servers = servers_;
        for (Server* s : servers) close_server(s, "shutdown");
        // Cancels still in flight; those whose server closed have no other owner.
        std::vector<CancelConn*> cancels = cancel_conns_;
        for (CancelConn* cc : cancels) close_cancel(cc);
        free_dead();
        event_base_loopbreak(base_);
        break;
      }
    }
  }
}

void Worker::new_client(int fd, bool is_unix, const sockaddr_storage* peer) {
  if (stopping_) {
    ::close(fd);
    rt_->clients--;
    return;
  }
  // accept4() made it non-blocking (no fcntl), and it has the listening socket's options
  // (Listener::set_client_options): only the socket buffers, when set, are its own.
  if (!is_unix) tune_accepted_socket(fd, *cfg_);
  auto* c = new Client(this, Fd(fd), is_unix, peer);
  c->counted_ = true;  // counted by the listener; close_client gives it back
  c->connect_time_ = now_seconds();
  c->id_ = rt_->next_id.fetch_add(1, std::memory_order_relaxed);
  c->pos_ = clients_.size();
  clients_.push_back(c);
  c->attach(this);
  c->want_read(true);
  // With TCP_DEFER_ACCEPT the kernel hands over a connection once its first bytes (the
  // startup packet or SSLRequest) are there: read them now rather than one epoll_wait
  // later (one loop pass, a wake-up, less per login).
  if (!is_unix && cfg_->tcp_defer_accept) {
    c->on_readable();
    after_callback();
  }
}

LocalPool* Worker::local_pool(Pool* p) {
  auto it = pools_.find(p);
  if (it != pools_.end()) return it->second.get();
  auto lp = std::make_unique<LocalPool>();
  lp->pool = p;
  LocalPool* raw = lp.get();
  pools_.emplace(p, std::move(lp));
  return raw;
}

bool Worker::launch_server(LocalPool* lp, NotifyHub* hub) {
  Pool* p = lp->pool;
  auto unreserve = [&] {
    if (hub == nullptr) p->unreserve();  // a hub's server holds no slot
  };
  Target* t = p->target();
  double now = now_seconds();
  // DNS answers older than their TTL are asked for again (the current address serves
  // meanwhile); a failure that expired makes the waiters wait for the new answer.
  bool relooking = rt_->registry->refresh(p, *t, *cfg_, now);
  AddrState as = t->addr_state();
  if (as == AddrState::Pending) {  // waiters stay queued; the resolver kicks every worker
    unreserve();
    return false;
  }
  if (as == AddrState::Failed) {
    unreserve();
    if (relooking) return false;
    std::vector<Client*> w(lp->waiting.begin(), lp->waiting.end());
    for (Client* c : w) {
      fail_client(c, "08006", t->resolve_error(), "server address");
    }
    return false;
  }
  const TargetHost* left = nullptr;
  const AddrRecord* rec = nullptr;
  TargetHost* h = t->pick(now, &left, &rec);
  if (h == nullptr) {  // every host is held (may_connect said so)
    unreserve();
    return false;
  }
  if (left != nullptr)
    LOG_WARN("pool %s/%s: moving to host %s:%d: %s:%d %s", p->db_name.c_str(), p->user_name.c_str(),
             h->host.c_str(), h->port, left->host.c_str(), left->port,
             host_down_name(left->down.load(std::memory_order_relaxed)));
  sockaddr_storage peer{};
  socklen_t peer_len = h->next_addr(*rec, &peer);
  Dial d = dial(peer, peer_len, *cfg_);
  if (d.fd < 0) {
    unreserve();
    LOG_ERROR("socket() failed: %s", strerror(d.err));
    return false;
  }
  auto* s = new Server(this, Fd(d.fd), p, lp);
  if (hub != nullptr) {
    s->hub_ = hub;
    hub->adopt(s);
  }
  s->set_target(t, h);  // made for t: RELOAD may publish another meanwhile
  s->addr_rec_ = rec;   // and this answer of its name: one without peer closes it (stale)
  s->peer_ = peer;
  s->peer_len_ = peer_len;
  s->id_ = rt_->next_id.fetch_add(1, std::memory_order_relaxed);
  s->gen_ = p->state->generation.load(std::memory_order_relaxed);
  if (cfg_->tls) s->tls_ctx_ = cfg_->tls->server;
  track_server(s);
  set_state(s, ServerState::Connecting);
  s->attach(this);
  if (d.done) {
    s->start_login();
  } else if (d.err == 0) {
    s->want_write(true);
  } else {
    server_login_failed(s, "08006", std::string("could not connect to server: ") + strerror(d.err),
                        true);
  }
  return true;
}

// ---------------------------------------------------------------- the state doors

namespace {
bool in_waiting_list(ClientState st) {
  return st == ClientState::Login || st == ClientState::Waiting;
}
bool logging_in(ServerState st) {
  return server_logging_in(st);
}

// Removes x from a list, looking at the usual end first (O(1) on the common paths).
template <typename L, typename T>
bool erase_from(L& list, T* x, bool front_first) {
  if (list.empty()) return false;
  if (front_first && list.front() == x) {
    if constexpr (requires { list.pop_front(); })
      list.pop_front();  // a deque's erase(begin()) is the general, slower path
    else
      list.erase(list.begin());
    return true;
  }
  if (!front_first && list.back() == x) {
    list.pop_back();
    return true;
  }
  auto it = std::find(list.begin(), list.end(), x);
  if (it == list.end()) return false;
  list.erase(it);
  return true;
}
}  // namespace

void Worker::set_state(Client* c, ClientState to) {
  ClientState from = c->state_;
  if (from == to) return;
  LocalPool* lp = c->lp_;
  if (in_waiting_list(from) && lp != nullptr && erase_from(lp->waiting, c, true))
    lp->pool->waiting_on(index_).fetch_sub(1);
  if (from == ClientState::AuthWait) {
    auto it = auth_waiters_.find(c->lookup_key());
    if (it != auth_waiters_.end()) {
      erase_from(it->second, c, true);
      if (it->second.empty()) auth_waiters_.erase(it);
    }
  }
  c->state_ = to;
  if (to == ClientState::AuthWait) auth_waiters_[c->lookup_key()].push_back(c);
  if (in_waiting_list(to) && lp != nullptr) {
    c->wait_since_ = now_seconds();
    c->wait_notified_ = false;
    lp->waiting.push_back(c);
    lp->pool->waiting_on(index_).fetch_add(1);  // seq_cst: published before we look at idle_on
  }
}

void Worker::set_state(Server* s, ServerState to) {
  ServerState from = s->state_;
  if (from == to) return;
  LocalPool* lp = s->lp_;
  if (from == ServerState::Idle && erase_from(lp->idle, s, false))
    lp->pool->idle_on(index_).fetch_sub(1);
  bool counted = s->hub_ == nullptr;  // a hub's server serves no waiter
  if (counted && logging_in(from) && !logging_in(to)) lp->connecting--;
  if (counted && !logging_in(from) && logging_in(to)) lp->connecting++;
  s->state_ = to;
  if (to == ServerState::Idle) {
    s->idle_since_ = now_seconds();
    lp->idle.push_back(s);
    lp->pool->idle_on(index_).fetch_add(1);  // seq_cst: published before we look at waiting_on
  }
}

void Worker::link(Client* c, Server* s) {
  apply_trace(c);
  s->lp_->stats.server_assignment_count++;
  c->server_ = s;
  s->client_ = c;
  s->check_client_ = c->id_;
  s->fresh_ = false;
  set_state(s, ServerState::Active);
  bool was_login = c->state_ == ClientState::Login;
  set_state(c, ClientState::Active);
  if (was_login) c->send_welcome();
  // One swallowed query brings the server to the client: its session settings
  // (session_state.h; reset first when the server's are unknown) and tracked parameters.
  std::string pre, post;
  settings_diff_sql(c->sess_ ? &c->sess_->settings() : nullptr, s->sess_.get(), s->sess_unknown_,
                    pre, post, &s->target_->connect_settings);
  std::string sql =
      pre + varcache_diff_sql(*rt_->tracked, c->vars_, s->sess_unknown_ ? VarCache() : s->vars_) +
      post;
  note_server_settings(c, s);
  if (!sql.empty()) s->send_internal_query(sql);
}

// The server now has the client's session settings (at link, and again when they part).
void Worker::note_server_settings(Client* c, Server* s) {
  s->sess_unknown_ = false;
  if (c->sess_ != nullptr && c->sess_->take_lost()) {
    s->sess_unknown_ = true;  // the next link resets it
  } else if (c->sess_ == nullptr || c->sess_->settings().empty()) {
    s->sess_.reset();
  } else if (s->sess_ == nullptr) {
    s->sess_ = std::make_unique<SessionSettings>(c->sess_->settings());
  } else {
    *s->sess_ = c->sess_->settings();
  }
}

void Worker::unlink(Client* c, Server* s) {
  if (c != nullptr && s != nullptr && c->server_ == s && s->client_ == c) {
    if (c->sess_ != nullptr) {
      c->sess_->unlinked();
      note_server_settings(c, s);
    }
    if (c->settings_dirty_) {  // settings pgsluice cannot name (pinning.h): reset it first
      s->sess_unknown_ = true;
      c->settings_dirty_ = false;
    }
    if (c->catalog_changed_) {  // committed or rolled back by now (state_routines.h)
      if (s->pool_->state != nullptr) s->pool_->state->routines.changed();
      c->catalog_changed_ = false;
    }
  }
  if (c != nullptr && c->server_ == s) c->server_ = nullptr;
  if (s != nullptr && s->client_ == c) s->client_ = nullptr;
  if (c != nullptr && c->state_ == ClientState::Active) set_state(c, ClientState::Idle);
}

bool Worker::acquire(Client* c) {
  LocalPool* lp = c->lp_;
  Pool* p = lp->pool;
  c->request_time_ = now_seconds();
  bool hold = paused(p);
  bool checking = false;               // c waits for the check of an idle server
  if (!hold && lp->waiting.empty()) {  // else: first come, first served
    if (cfg_->server_check_prepared &&
        (p->state == nullptr || !p->state->routines.due(c->request_time_))) {
      if (Server* s = idle_unchecked(lp, c)) {
        link(c, s);
        return true;
      }
    }
    if (Server* s = take_idle(lp)) {
      if (!check_server(s, c)) {
        link(c, s);
        return true;
      }
      checking = true;  // c waits: the check gives s back, or its failure connects anew
    }
  }
  // Not welcomed yet: it also waits for the pool's parameters. Reading stays on (no
  // epoll_ctl); see Client::on_readable.
  set_state(c, c->welcomed_ ? ClientState::Waiting : ClientState::Login);
  if (hold || checking) return false;  // RESUME serves it (sweep); or the check's end
  // Its host name is still being resolved: the resolver's kick serves it.
  if (p->target()->addr_state() == AddrState::Pending) return false;
  while (lp->waiting.size() + lp->lookups.size() > static_cast<size_t>(lp->connecting) &&
         may_connect(p) && p->try_reserve())
    if (!launch_server(lp)) break;
  if (lp->waiting.size() + lp->lookups.size() > static_cast<size_t>(lp->connecting)) kick(p);
  return false;
}

// Asks every other worker that holds an idle server of p to send one here.
void Worker::kick(Pool* p) {
  for (size_t v = 0; v < rt_->workers.size(); v++)
    if (v != index_ && p->idle_on(v).load() > 0)
      rt_->workers[v]->post(
          InboxMsg{InboxMsg::Kind::Kick, static_cast<int>(index_), false, nullptr, p, 0, {}, {}});
}

void Worker::link_waiter(Client* c, Server* s) {
  if (c->wait_since_ > 0) {
    double waited = now_seconds() - c->wait_since_;
    auto us = static_cast<uint64_t>(waited > 0 ? waited * 1e6 : 0);
    s->lp_->stats.wait_time_us += us;
    s->lp_->stats.wait_hist.add(us);
    c->wait_since_ = 0;
  }
  link(c, s);
  c->flush();
  if (c->dead_) return;
  c->want_read(true);
  c->process();
  if (!s->dead_ && s->client_ == c) {
    s->flush();
    if (!s->dead_ && s->can_release()) release(s);
  }
}

void Worker::release(Server* s) {
  Client* c = s->client_;
  unlink(c, s);
  if (c != nullptr && c->notify_ != nullptr) notify_refill(c);  // notifications held for it
  release_idle(s);
  // The client may already have sent the next request.
  if (c != nullptr && !c->dead_ && !c->in_.empty()) c->process();
}

// The one door back into the pool. A server that is not clean is closed, whoever asked.
// Waiters are linked from the end of the loop turn (serve_later), never from this stack,
// so no call chain runs from one client's reply into another client's request.
void Worker::release_idle(Server* s) {
  if (s->dead_) return;
  // A pinned client's server carries state the next client must not see (pinning.h).
  const bool pinned = s->client_ != nullptr && s->client_->pins_ != 0;
  if (s->client_ != nullptr) {
    if (pinned) s->client_->set_pins(0);
    unlink(s->client_, s);
  }
  if (!s->clean() || pinned) {
    close_server(s, pinned ? "released while pinned" : "server not clean at release");
    return;
  }
  if (s->listened_) {  // no client may get another's notifications (notify_hub.h)
    close_server(s, "server still listening at release");
    return;
  }
  s->clear_requests();
  if (s->cancels_pending_ > 0) {
    set_state(s, ServerState::BeingCanceled);
    return;
  }
  if (stopping_) {
    close_server(s, "shutdown");
    return;
  }
  LocalPool* lp = s->lp_;
  Pool* p = lp->pool;
  if (paused(p) || stale(s)) {  // PAUSE disconnects released servers; RECONNECT renews them
    close_server(s, paused(p) ? "pause" : "reconnect");
    return;
  }
  set_state(s, ServerState::Idle);
  if (!lp->waiting.empty() || !lp->lookups.empty()) {
    serve_later(lp);
    return;
  }
  for (size_t v = 0; v < rt_->workers.size(); v++) {
    if (v == index_ || p->waiting_on(v).load() <= 0) continue;
    hand_over(s, v);
    break;
  }
}

void Worker::serve_later(LocalPool* lp) {
  if (lp->serve_queued) return;
  lp->serve_queued = true;
  serveq_.push_back(lp);
  event_active(&serve_ev_, EV_TIMEOUT, 0);
}

void Worker::serve_cb(evutil_socket_t, short, void* arg) {
  static_cast<Worker*>(arg)->serve_queued();
}

// One pass over the pools queued so far; a pool queued again meanwhile waits for the next
// serve_cb (or flush_cb). The list keeps its capacity (no allocation per pass).
void Worker::serve_queued() {
  if (serveq_.empty()) return;
  serving_.swap(serveq_);
  for (LocalPool* lp : serving_) {
    lp->serve_queued = false;
    serve_waiters(lp->pool, lp);
  }
  serving_.clear();
}

void Worker::adopt_server(Server* s, Pool* p) {
  track_server(s);
  s->lp_ = local_pool(p);
  s->attach(this);
  s->want_read(true);
  release_idle(s);
}

void Worker::server_login_done(Server* s) {
  // target_session_attrs: a server of the wrong kind is closed and its host held for
  // server_check_delay, so new servers go to the others (a failover's new primary), and the
  // host is asked again that long after (a standby promoted meanwhile is found then).
  std::string why;
  double now = now_seconds();
  if (!s->target_->accepts(s->login_params(), s->target_->usable(now, s->thost_), &why)) {
    double hold = std::max(cfg_->server_check_delay, 1.0);
    LOG_WARN("S-%p: %s/%s@%s:%d does not suit target_session_attrs: %s; skipped for %.0f s",
             static_cast<void*>(s), s->pool_->db_name.c_str(), s->pool_->user_name.c_str(),
             s->addr_.host.c_str(), s->addr_.port, why.c_str(), hold);
    s->thost_->hold(now + hold, HostDown::WrongRole);
    close_server(s, "target_session_attrs");
    return;
  }
  s->ready_at_ = now_seconds();
  s->fresh_ = true;
  s->pool_->set_welcome(s->login_params());
  s->pool_->set_login_failed_at(0);
  s->thost_->serving();
  note_current_host(s);
  if (cfg_->log_connections)
    LOG_INFO("S-%p: %s/%s@%s:%d new connection to server", static_cast<void*>(s),
             s->pool_->db_name.c_str(), s->pool_->user_name.c_str(), s->addr_.host.c_str(),
             s->addr_.port);
  if (s->hub_ != nullptr) {  // the listening connection: never in the pool
    set_state(s, ServerState::Active);
    s->hub_->logged_in(s);
    return;
  }
  release_idle(s);
}

// The pool's current host is the one its last server logged in to. When that moves off a
// host that is held (unreachable, or no longer the kind target_session_attrs asks for), the
// pool has failed over: counted and logged with the reason, once per move.
void Worker::note_current_host(Server* s) {
  const TargetHost* was = s->target_->current.exchange(s->thost_, std::memory_order_relaxed);
  if (was == nullptr || was == s->thost_) return;
  HostDown why = was->down.load(std::memory_order_relaxed);
  if (why == HostDown::No) return;  // round-robin between healthy hosts
  rt_->failovers.fetch_add(1, std::memory_order_relaxed);
  LOG_WARN("pool %s/%s: now on host %s:%d (was %s:%d, which %s)", s->pool_->db_name.c_str(),
           s->pool_->user_name.c_str(), s->thost_->host.c_str(), s->thost_->port, was->host.c_str(),
           was->port, host_down_name(why));
}

bool Worker::may_connect(const Pool* p) const {
  double t = p->login_failed_at();
  double now = now_seconds();
  if (t != 0 && now - t < cfg_->server_login_retry) return false;
  // No address yet (or none at all): launch_server says so. Else some host must be tryable.
  const Target* tg = p->target();
  return tg->addr_state() != AddrState::Ready || tg->usable(now);
}

void Worker::server_login_failed(Server* s, std::string_view sqlstate, std::string_view msg,
                                 bool unreachable) {
  LocalPool* lp = s->lp_;
  LOG_WARN("S-%p: %s/%s@%s:%d server login failed: %s", static_cast<void*>(s),
           s->pool_->db_name.c_str(), s->pool_->user_name.c_str(), s->addr_.host.c_str(),
           s->addr_.port, std::string(msg).c_str());
  if (s->hub_ != nullptr) {  // no waiter depends on it; NotifyHub::closed retries
    close_server(s, "login failed");
    return;
  }
  // A host that cannot be reached is skipped for server_login_retry while the target's
  // other hosts serve; a refused login (any host would refuse it) holds the whole pool.
  if (unreachable)
    s->thost_->hold(now_seconds() + cfg_->server_login_retry, HostDown::Unreachable);
  else
    s->pool_->set_login_failed_at(now_seconds());
  size_t others = static_cast<size_t>(lp->connecting - 1);
  if (!unreachable) {
    // Clients waiting for this pool fail fast with the server's error, as PgBouncer does.
    std::vector<Client*> w(lp->waiting.begin(), lp->waiting.end());
    size_t keep = others;  // clients that other connecting servers can still serve
    for (Client* c : w) {
      if (keep > 0) {
        keep--;
        continue;
      }
      fail_client(c, sqlstate, msg, "server login failed");
    }
  }
  // A login waiting for a secret gets a clear error at once: it cannot ride the outage out.
  if (others == 0 && !lp->lookups.empty()) fail_lookups(lp, sqlstate, msg);
  // Refused with pass-through keys (no secret of ours): the verifier they were proven
  // against is out of date (a password change); the next login asks PostgreSQL again.
  if (sqlstate == "28P01" && s->pool_->config_secret().empty() && rt_->auth_cache != nullptr)
    rt_->auth_cache->invalidate_user(s->pool_->user_name);
  close_server(s, "login failed");
}

void Worker::fail_client(Client* c, std::string_view sqlstate, std::string_view msg,
                         std::string_view reason) {
  if (c->dead_) return;
  c->queue_error(true, sqlstate, msg);
  close_client(c, reason);  // sends what out_ holds before the socket goes
}

void Worker::close_client(Client* c, std::string_view reason) {
  if (c->dead_) return;
  if (cfg_->log_disconnections && c->state() != ClientState::Startup &&
      c->state() != ClientState::Tls)  // a failed handshake was logged with its reason
    LOG_INFO("C-%p: %s/%s@%s:%d closing because: %s", static_cast<void*>(c), c->db_.c_str(),
             c->user_.c_str(), c->addr_.host.c_str(), c->addr_.port, std::string(reason).c_str());
  c->dead_ = true;
  const uint8_t pinned = c->pins_;
  c->set_pins(0);
  if (Server* s = c->server_) {
    // Half a message of this client in the server's buffer: PostgreSQL waits for the rest.
    bool clean = s->state() == ServerState::Active && s->clean() && c->fwd_remaining_ == 0;
    unlink(c, s);
    const std::string& reset = cfg_->server_reset_query;
    bool want_reset =
        !reset.empty() && (s->pool_->mode == PoolMode::Session || cfg_->server_reset_query_always);
    if (!clean) {
      close_server(s, "client disconnect while server was not ready");
    } else if (pinned != 0 && s->pool_->mode != PoolMode::Session) {
      close_server(s, "client left while pinned");  // its locks, temp tables, ... go with it
    } else if (want_reset) {
      if (s->pool_->mode != PoolMode::Session) s->sess_unknown_ = true;  // whatever it resets
      s->send_internal_query(reset);
      set_state(s, ServerState::Resetting);
      s->flush();
    } else {
      release_idle(s);
    }
  }
  if (c->notify_ != nullptr) notify_client_gone(c);
  set_state(c, ClientState::Closed);
  uncount_client(c);
  unregister_cancel_key(c);
  if (c->counted_) {
    rt_->clients--;
    c->counted_ = false;
  }
  if (!c->out_.empty()) c->flush_out();  // best effort: the error the client is owed
  // Remove from clients_ (swap with the last).
  if (c->pos_ < clients_.size() && clients_[c->pos_] == c) {
    Client* last = clients_.back();
    clients_[c->pos_] = last;
    last->pos_ = c->pos_;
    clients_.pop_back();
  }
  defer_free(c);
}

void Worker::close_server(Server* s, std::string_view reason) {
  if (s->dead_) return;
  LOG_DEBUG("S-%p: %s/%s closing because: %s", static_cast<void*>(s), s->pool_->db_name.c_str(),
            s->pool_->user_name.c_str(), std::string(reason).c_str());
  s->dead_ = true;
  if (s->health_check_) {
    rt_->server_checks_failed.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("S-%p: %s/%s server_check_query failed: %s", static_cast<void*>(s),
             s->pool_->db_name.c_str(), s->pool_->user_name.c_str(), std::string(reason).c_str());
  }
  if (s->lookup_ != nullptr) lookup_done(s);
  if (s->routines_ != nullptr) routines_scanned(s);  // closed before its end: the last stays
  LocalPool* lp = s->lp_;
  Pool* p = s->pool_;
  bool say_goodbye = s->state() == ServerState::Idle || s->state() == ServerState::Active;
  NotifyHub* hub = s->hub_;
  bool hub_up = hub != nullptr && s->state() == ServerState::Active;
  set_state(s, ServerState::Closed);
  for (CancelConn* cc : s->cancels_) cc->target_ = nullptr;
  s->cancels_.clear();
  if (Client* c = s->client_) {
    unlink(c, s);
    fail_client(c, "08006", "server conn crashed?", "server connection closed");
  }
  if (say_goodbye) {
    std::string m;
    wire::terminate(m);
    if (s->tls()) {  // inside the TLS stream, once, without waiting
      if (s->out_.empty()) {
        bufs().append(s->out_, m.data(), m.size());
        (void)s->flush_out();
      }
    } else {
      ssize_t r = ::send(s->fd(), m.data(), m.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)r;
    }
  }
  if (hub == nullptr) p->unreserve();
  untrack_server(s);
  defer_free(s);
  if (hub != nullptr) {
    s->hub_ = nullptr;
    hub->closed(s, hub_up);
  }
  // A slot is free: serve waiters here, or tell another worker.
  if (!stopping_ && !paused(p)) {
    while (lp->waiting.size() + lp->lookups.size() > static_cast<size_t>(lp->connecting) &&
           may_connect(p) && p->try_reserve())
      if (!launch_server(lp)) break;
    for (size_t v = 0; v < rt_->workers.size(); v++)
      if (v != index_ && p->waiting_on(v).load() > 0)
        rt_->workers[v]->post(InboxMsg{InboxMsg::Kind::Kick, -1, false, nullptr, p, 0, {}, {}});
  }
}

void Worker::server_lost(Server* s, std::string_view reason) {
  if (s->dead_) return;
  Client* c = s->client_;
  if (c == nullptr || c->dead_ || s->state() != ServerState::Active) {
    close_server(s, reason);
    return;
  }
  if (s->fwd_remaining_ > 0) {
    // The client's stream is cut mid-message: nothing more can be framed for it.
    unlink(c, s);
    close_client(c, "server connection lost mid-message");
    close_server(s, reason);
    return;
  }
  if (s->pool_->mode == PoolMode::Session) {
    // The client's session was this server's: it gets PostgreSQL's error, or 08006, and is
    // closed.
    unlink(c, s);
    if (s->fatal_.empty()) {
      fail_client(c, "08006", "server conn crashed?", "server connection closed");
    } else {
      bufs().append(c->out_, s->fatal_.data(), s->fatal_.size());
      close_client(c, "server connection closed");
    }
    close_server(s, reason);
    return;
  }
  c->set_pins(0);  // what pinned it died with that server (its FATAL tells the client)
  LostServer l;
  if (!s->fatal_.empty())
    l.error = error_as_error(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(s->fatal_.data()) + wire::kHeaderLen,
        s->fatal_.size() - wire::kHeaderLen));
  l.tx = s->tx_;
  // Cycles owed an answer: each Sync, and each Query/FunctionCall PostgreSQL would not
  // have ignored (those sent while it skips to a Sync after an error get nothing).
  bool skipping = s->skip_to_sync_;
  for (size_t i = 0; i < s->queue_.size(); i++) {
    uint8_t t = s->queue_.at(i).type;
    if (t == 'S') {
      l.cycles++;
      skipping = false;
    } else if ((t == 'Q' || t == 'F') && !skipping) {
      l.cycles++;
    }
  }
  l.tail = s->unsynced_;
  l.answered = s->skip_to_sync_;
  unlink(c, s);
  close_server(s, reason);  // its slot is free, waiters are served
  c->server_lost(l);
}

void Worker::close_cancel(CancelConn* cc) {
  if (cc->dead_) return;
  cc->dead_ = true;
  auto live = std::find(cancel_conns_.begin(), cancel_conns_.end(), cc);
  if (live != cancel_conns_.end()) {
    *live = cancel_conns_.back();
    cancel_conns_.pop_back();
  }
  if (Server* s = cc->target_) {
    auto it = std::find(s->cancels_.begin(), s->cancels_.end(), cc);
    if (it != s->cancels_.end()) s->cancels_.erase(it);
    s->cancels_pending_--;
    if (s->cancels_pending_ == 0 && s->state() == ServerState::BeingCanceled) release_idle(s);
  }
  defer_free(cc);
}

void Worker::defer_free(Conn* c) {
  c->dead_ = true;
  c->detach();
  dead_.push_back(c);
  event_active(&free_ev_, EV_TIMEOUT, 0);
}

void Worker::queue_flush(Client* c) {
  if (c->flush_queued_) return;
  c->flush_queued_ = true;
  flushq_.push_back(c);
  if (flushq_.size() == 1) {
    flush_age_ = 0;
    event_active(&flush_ev_, EV_TIMEOUT, 0);
  }
  if (flushq_.size() >= kFlushAfter) flush_age_ = kFlushAfter;  // sent after this callback
}

// Waiters are served first, when serve_ev_ has not run yet this turn: their requests reach
// PostgreSQL before the replies wake the clients, as when a released server went straight
// to the next waiter.
void Worker::flush_cb(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  w->serve_queued();
  w->flush_queued();
}

void Worker::flush_queued() {
  while (!flushq_.empty()) {
    flushing_.swap(flushq_);
    for (Client* c : flushing_) {
      c->flush_queued_ = false;
      if (!c->dead_) c->send_now();  // may close c (deferred free) or queue other clients
    }
    flushing_.clear();
  }
  // The turn's log lines go with its replies: under a load that keeps socket events coming,
  // log_ev_ (priority 1) may wait, but this runs at least every kFlushAfter callbacks.
  log_batch_flush();
}

void Worker::hand_over(Server* s, size_t to) {
  set_state(s, ServerState::Moving);
  s->detach();
  untrack_server(s);
  handoff_.emplace_back(s, to);
  event_active(&free_ev_, EV_TIMEOUT, 0);
}

void Worker::free_cb(evutil_socket_t, short, void* arg) {
  static_cast<Worker*>(arg)->free_dead();
}

void Worker::free_dead() {
  flush_queued();
  std::vector<std::pair<Server*, size_t>> out;
  out.swap(handoff_);
  for (auto& [s, to] : out)
    rt_->workers[to]->post(InboxMsg{InboxMsg::Kind::Server, -1, false, s, s->pool_, 0, {}, {}});
  std::vector<Conn*> d;
  d.swap(dead_);
  for (Conn* c : d) delete c;
}

void Worker::track_server(Server* s) {
  s->pos_ = servers_.size();
  servers_.push_back(s);
}

void Worker::untrack_server(Server* s) {
  if (s->pos_ < servers_.size() && servers_[s->pos_] == s) {
    Server* last = servers_.back();
    servers_[s->pos_] = last;
    last->pos_ = s->pos_;
    servers_.pop_back();
  }
}

// ---------------------------------------------------------------- cancel keys

void Worker::register_cancel_key(Client* c) {
  for (;;) {
    uint32_t r = 0;
    random_bytes(reinterpret_cast<uint8_t*>(&r), sizeof r);
    // Low byte: the owning worker, so any worker can route a cancel. Sign bit clear.
    uint32_t pid = ((r & 0x7fffff00u) | static_cast<uint32_t>(index_ & 0xff));
    if (pid == static_cast<uint32_t>(index_) || cancel_keys_.contains(pid)) continue;
    c->cancel_pid_ = pid;
    random_bytes(c->cancel_key_.data(), c->cancel_key_.size());
    cancel_keys_.insert(c);
    return;
  }
}

void Worker::unregister_cancel_key(Client* c) {
  if (c->cancel_pid_ == 0) return;
  cancel_keys_.erase(c);
  c->cancel_pid_ = 0;
}

void Worker::handle_cancel(uint32_t pid, const std::string& key) {
  size_t owner = pid & 0xff;
  if (owner != index_) {
    if (owner < rt_->workers.size())
      rt_->workers[owner]->post(
          InboxMsg{InboxMsg::Kind::Cancel, -1, false, nullptr, nullptr, pid, key, {}});
    return;
  }
  Client* c = cancel_keys_.find(pid);
  if (c == nullptr) {
    LOG_DEBUG("cancel request for unknown key ignored");
    return;
  }
  if (key.size() != 4 ||
      !constant_time_eq(
          key, std::string_view(reinterpret_cast<const char*>(c->cancel_key_.data()), 4))) {
    LOG_DEBUG("cancel request with a wrong key ignored");
    return;
  }
  Server* s = c->server_;
  if (s == nullptr || s->state() != ServerState::Active) {
    LOG_DEBUG("C-%p: cancel request for idle client ignored", static_cast<void*>(c));
    return;
  }
  if (s->internal_ > 0) {
    LOG_DEBUG("S-%p: ignoring cancel request for server that is setting vars",
              static_cast<void*>(s));
    return;
  }
  Dial d = dial(s->peer_, s->peer_len_, *cfg_);  // where this server is, whatever came since
  if (d.fd < 0) return;
  auto* cc = new CancelConn(this, Fd(d.fd), s);
  cc->started_ = now_seconds();
  cancel_conns_.push_back(cc);
  cc->attach(this);
  s->cancels_.push_back(cc);
  s->cancels_pending_++;
  if (d.err == 0)
    cc->want_write(true);
  else
    close_cancel(cc);
}

// ---------------------------------------------------------------- operator commands

bool Worker::stale(const Server* s) const {
  // A new server_tls_* context (settings or file bytes changed) renews every server, as
  // PgBouncer's tls_change_requires_reconnect: old, maybe weaker TLS does not linger.
  const TlsContext* now = cfg_->tls ? cfg_->tls->server.get() : nullptr;
  // RELOAD gave the pool a new target: servers of the old one go (idle now, busy at release).
  // Its host name now resolves elsewhere: new servers go there, this one closes too.
  return s->gen_ != s->pool_->state->generation.load(std::memory_order_relaxed) ||
         s->target_->gen != s->pool_->target_gen() || s->tls_ctx_.get() != now ||
         s->thost_->moved_away(s->addr_rec_, s->peer_);
}

// Links waiting clients to idle servers, connects new ones, or asks other workers.
void Worker::serve_waiters(Pool* p, LocalPool* lp) {
  if (paused(p)) return;
  if (p->target()->addr_state() == AddrState::Pending) return;  // resolver kicks when done
  if (!lp->lookups.empty()) serve_lookups(lp);  // logins waiting for a secret come first
  size_t checks = 0;  // server_check_prepared: at most one check started per waiter
  while (!lp->waiting.empty()) {
    Server* s = cfg_->server_check_prepared ? idle_unchecked(lp, lp->waiting.front()) : nullptr;
    if (s == nullptr) s = take_idle(lp);
    if (s == nullptr) break;
    if (check_server(s, lp->waiting.front())) {
      if (++checks >= lp->waiting.size()) break;
      continue;
    }
    link_waiter(lp->waiting.front(), s);
  }
  // Waiters whose server is being checked wait for it, not for a new one.
  while (lp->waiting.size() + lp->lookups.size() > static_cast<size_t>(lp->connecting) + checks &&
         may_connect(p) && p->try_reserve())
    if (!launch_server(lp)) break;
  while (reserve_extra(p, lp)) {
    int before = lp->connecting;
    if (!launch_server(lp) || lp->connecting <= before) break;  // try at the next tick
  }
  if (lp->waiting.size() + lp->lookups.size() > static_cast<size_t>(lp->connecting) + checks)
    kick(p);
}

// The most recently idle server (server_round_robin: the longest idle), after closing any
// that is no longer clean: PostgreSQL sent part of a message to it while idle (an
// asynchronous FATAL split across reads).
Server* Worker::take_idle(LocalPool* lp) {
  bool fifo = cfg_->server_round_robin;
  auto next = [lp, fifo] { return fifo ? lp->idle.front() : lp->idle.back(); };
  while (!lp->idle.empty() && (!next()->clean() || stale(next())))
    close_server(next(), next()->clean() ? "reconnect" : "idle server not clean");
  return lp->idle.empty() ? nullptr : next();
}

// server_check_prepared. pgsluice prepares its statements through Parse messages, and a
// client's Parse names are remapped, so a statement under pgsluice's names that was prepared
// by SQL can only come from server-side code some client ran (a function that reads the
// names in pg_prepared_statements and replaces one through dynamic SQL, which pgsluice cannot
// see in the text that calls it). Before s serves a client other than the one it served
// last, while it holds statements, PostgreSQL is asked whether there is such a statement
// (ServerStmts::check_sql): an internal query while s is Resetting and the client waits. If
// there is (its tag, read by Server::process), or the query fails, the server is closed:
// the waiters get another. Off: one branch on a loaded flag per hand-off.
bool Worker::check_prepared(Server* s, const Client* c) {
  if (!cfg_->server_check_prepared || s->check_client_ == 0 || s->check_client_ == c->id_ ||
      s->stmts_.size() == 0)
    return false;
  s->send_prepared_check();
  set_state(s, ServerState::Resetting);
  s->flush();
  return true;
}

Server* Worker::idle_unchecked(LocalPool* lp, const Client* c) {
  for (auto it = lp->idle.rbegin(); it != lp->idle.rend(); ++it) {
    Server* s = *it;
    if ((s->check_client_ == 0 || s->check_client_ == c->id_ || s->stmts_.size() == 0) &&
        s->clean())
      return s;
  }
  return nullptr;
}

void Worker::sweep(const std::string& kill_db) {
  if (!kill_db.empty()) {
    std::vector<Client*> doomed;
    for (Client* c : clients_)
      if (!c->is_admin_ && c->pool_ != nullptr && (kill_db == "*" || c->pool_->db_name == kill_db))
        doomed.push_back(c);
    for (Client* c : doomed) {
      if (c->dead_) continue;
      fail_client(c, "08P01", "database removed", "database killed");  // PgBouncer kill_pool()
    }
    std::vector<Server*> servers;
    for (Server* s : servers_)
      if (kill_db == "*" || s->pool_->db_name == kill_db) servers.push_back(s);
    for (Server* s : servers) close_server(s, "database killed");
  }
  for (auto& [p, lp] : pools_) {
    bool hold = paused(p);
    std::vector<Server*> gone;
    for (Server* s : lp->idle)
      if (hold || stale(s)) gone.push_back(s);
    for (Server* s : gone) close_server(s, hold ? "pause" : "reconnect");
    if (!hold && !lp->waiting.empty()) serve_waiters(p, lp.get());
  }
}

Client* Worker::find_client(uint64_t id) {
  for (Client* c : clients_)
    if (c->id_ == id && !c->dead_) return c;
  return nullptr;
}

void Worker::stop_listening_tcp() {
  listener_->close_tcp();
}

void Worker::set_trace(int mode, uint64_t client_id, const std::string& db) {
  trace_mode_ = mode;
  trace_client_ = client_id;
  trace_db_ = db;
  for (Client* c : clients_) {
    c->trace_ = false;
    apply_trace(c);
  }
}

void Worker::apply_trace_slow(Client* c) {
  switch (trace_mode_) {
    case 1:
      c->trace_ = c->id_ == trace_client_;
      break;
    case 2:
      c->trace_ = c->db_ == trace_db_ && !c->is_admin_;
      break;
    case 3:
      c->trace_ = !c->is_admin_;
      break;
    default:
      c->trace_ = false;
      break;
  }
}

void Worker::set_suspended(bool on) {
  if (on == suspended_) return;
  suspended_ = on;
  suspend_since_ = now_seconds();
  suspend_forced_ = false;
  listener_->set_suspended(on);
  for (Client* c : clients_) c->apply_suspend(on);
  for (Server* s : servers_) s->apply_suspend(on);
  if (on) return;
  // Bytes that arrived just before the suspension are processed now.
  std::vector<Server*> servers = servers_;
  for (Server* s : servers)
    if (!s->dead_ && !s->in_.empty()) s->process();
  std::vector<Client*> clients = clients_;
  for (Client* c : clients)
    if (!c->dead_ && !c->in_.empty()) c->process();
}

}  // namespace pgsluice
