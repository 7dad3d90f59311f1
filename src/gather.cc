// Snapshots of every worker's clients, servers and pools, gathered by message passing.
#include "gather.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "client.h"
#include "pinning.h"
#include "pool.h"
#include "server.h"
#include "tls.h"
#include "worker.h"

namespace pgsluice {

double wall_of(double mono) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  double wall = static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
  return wall - (now_seconds() - mono);
}

namespace {

void local_of(int fd, std::string& host, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  host.clear();
  port = 0;
  if (fd < 0 || getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    port = ntohs(a->sin_port);
    host = buf;
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    port = ntohs(a->sin6_port);
    host = buf;
  } else {
    host = "unix";
  }
}

int unix_peer_pid(int fd) {
  ucred cr{};
  socklen_t len = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return 0;
  return static_cast<int>(cr.pid);
}

const char* client_state_name(const Client* c) {
  switch (c->state()) {
    case ClientState::Login:
    case ClientState::Waiting:
      return "waiting";
    case ClientState::Active:
      return "active";
    default:
      return "idle";  // an unlinked logged-in client shows as idle (PgBouncer 1.25)
  }
}

const char* server_state_name(const Server* s) {
  switch (s->state()) {
    case ServerState::New:
    case ServerState::Connecting:
    case ServerState::SslRequest:
    case ServerState::Tls:
    case ServerState::Login:
      return "new";
    case ServerState::Idle:
      return "idle";
    case ServerState::Active:
      return "active";
    case ServerState::Resetting:
      return "tested";
    case ServerState::BeingCanceled:
      return "being_canceled";
    case ServerState::Moving:
    case ServerState::Closed:
      break;
  }
  return "idle";
}

void fill_io(ConnRow& r, const Conn* c) {
  r.recv_pos = c->in_.wpos;
  r.pkt_pos = c->in_.rpos;
  r.pkt_avail = c->in_.size();
  r.send_pos = c->out_.rpos;
  r.send_avail = c->out_.size();
}

ConnRow client_row(Worker& w, Client* c, bool sockets, double now) {
  ConnRow r;
  r.user = c->user_.empty() ? "(nouser)" : c->user_;
  r.db = c->is_admin_ ? "pgbouncer" : (c->db_.empty() ? "(nodb)" : c->db_);
  r.state = client_state_name(c);
  r.addr = c->addr_.host;
  r.port = c->addr_.port;
  local_of(c->fd(), r.local_addr, r.local_port);
  r.connect_wall = wall_of(c->connect_time_);
  double req = c->request_time_ > 0 ? c->request_time_ : c->connect_time_;
  r.request_wall = wall_of(req);
  if ((c->state() == ClientState::Waiting || c->state() == ClientState::Login) &&
      c->wait_since_ > 0)
    r.wait_us = static_cast<uint64_t>(std::max(0.0, now - c->wait_since_) * 1e6);
  r.ptr = c;
  r.link = c->server_;
  r.remote_pid = c->is_unix_ ? unix_peer_pid(c->fd()) : 0;
  // The application_name the client was told (tracked for every client, varcache.h).
  if (int i = w.rt()->tracked->find("application_name"); i >= 0)
    r.app_name = std::string(c->vars_.get(static_cast<size_t>(i)));
  r.id = c->id_;
  r.prepared = c->stmts_.size();
  r.pinned = pin_reasons(c->pins_);
  r.worker = w.index();
  r.logging_in = c->logging_in();
  if (c->state() != ClientState::Tls) r.tls = tls_description(c->ssl());
  r.fd = c->fd();
  r.link_fd = c->server_ ? c->server_->fd() : 0;
  if (sockets) {
    fill_io(r, c);
    r.pkt_remain = c->fwd_remaining_;
  }
  return r;
}

ConnRow server_row(Worker& w, Server* s, bool sockets) {
  ConnRow r;
  r.is_server = true;
  r.user = s->pool_->user_name;
  r.db = s->pool_->db_name;
  r.state = server_state_name(s);
  r.addr = s->addr_.host;
  r.port = s->addr_.port;
  local_of(s->fd(), r.local_addr, r.local_port);
  r.connect_wall = wall_of(s->connect_time_);
  r.request_wall = wall_of(s->state() == ServerState::Idle ? s->idle_since_ : s->connect_time_);
  r.close_needed = w.stale(s);
  if (s->state() != ServerState::Tls) r.tls = tls_description(s->ssl());
  r.ptr = s;
  r.link = s->client_;
  r.remote_pid = static_cast<int>(s->backend_pid_);
  r.id = s->id_;
  r.prepared = s->stmts_.size();
  r.worker = w.index();
  r.fd = s->fd();
  r.link_fd = s->client_ ? s->client_->fd() : 0;
  if (sockets) {
    fill_io(r, s);
    r.pkt_remain = s->fwd_remaining_;
  }
  return r;
}

bool pool_less(const PoolRow& a, const PoolRow& b) {
  if (a.db != b.db) return a.db < b.db;
  if (a.user != b.user) return a.user < b.user;
  return a.uid < b.uid;
}

// The row of p in `rows`, named on first use.
PoolRow& row_of(std::map<Pool*, PoolRow>& rows, Pool* p) {
  PoolRow& r = rows[p];
  if (r.uid == 0) {
    r.uid = p->uid;
    r.db = p->db_name;
    r.user = p->user_name;
    r.mode = pool_mode_name(p->mode);
    r.host = current_host(*p);
  }
  return r;
}

}  // namespace

std::optional<std::string> current_host(const Pool& p) {
  const TargetHost* h = p.target()->current.load(std::memory_order_relaxed);
  if (h == nullptr) return std::nullopt;
  if (!h->host.empty() && h->host.front() == '/') return h->host;  // a Unix socket directory
  return h->host + ":" + std::to_string(h->port);
}

Snapshot snapshot_worker(Worker& w, unsigned parts) {
  Snapshot s;
  s.parts = 1;
  double now = now_seconds();
  std::map<Pool*, PoolRow> rows;
  for (const auto& [p, lp] : w.local_pools()) {
    if (p->retired()) continue;  // freed soon: its statistics are forgotten
    PoolRow& r = row_of(rows, p);
    r.stats = lp->stats;
    r.sv_idle = static_cast<int>(lp->idle.size());
    r.cl_waiting = static_cast<int>(lp->waiting.size());
    for (const Client* c : lp->waiting)
      if (c->wait_since_ > 0)
        r.maxwait_us = std::max(r.maxwait_us,
                                static_cast<uint64_t>(std::max(0.0, now - c->wait_since_) * 1e6));
  }
  for (Client* c : w.clients_) {
    if (c->dead_) continue;
    s.used_clients++;
    if (c->is_admin_) {
      if (!c->logging_in()) s.admin_clients++;
    } else if (c->logging_in()) {
      s.login_clients++;
    } else if ((c->state() == ClientState::Idle || c->state() == ClientState::Active) && c->pool_) {
      row_of(rows, c->pool_).cl_active++;
    }
    if (parts & (kSnapClients | kSnapSockets))
      s.clients.push_back(client_row(w, c, parts & kSnapSockets, now));
  }
  for (Server* sv : w.servers_) {
    if (sv->dead_) continue;
    s.used_servers++;
    PoolRow& r = row_of(rows, sv->pool_);
    switch (sv->state()) {
      case ServerState::Connecting:
      case ServerState::SslRequest:
      case ServerState::Tls:
      case ServerState::Login:
        r.sv_login++;
        break;
      case ServerState::Active:
        if (sv->hub_ == nullptr) r.sv_active++;  // a LISTEN hub is outside the pool's size
        break;
      case ServerState::Resetting:
        r.sv_tested++;
        break;
      case ServerState::BeingCanceled:
        r.sv_being_canceled++;
        break;
      case ServerState::Idle:
        break;  // counted from LocalPool::idle
      case ServerState::New:
      case ServerState::Moving:
      case ServerState::Closed:
        break;
    }
    r.sv_active_cancel += static_cast<int>(sv->cancels_.size());
    if (parts & (kSnapServers | kSnapSockets))
      s.servers.push_back(server_row(w, sv, parts & kSnapSockets));
  }
  s.free_blocks = w.bufs().cached_blocks();
  for (auto& [p, r] : rows) s.pools.push_back(std::move(r));
  std::sort(s.pools.begin(), s.pools.end(), pool_less);
  return s;
}

void merge_snapshot(Snapshot& into, Snapshot&& part) {
  for (PoolRow& r : part.pools) {
    auto it = std::find_if(into.pools.begin(), into.pools.end(),
                           [&](const PoolRow& x) { return x.uid == r.uid; });
    if (it == into.pools.end()) {
      into.pools.push_back(std::move(r));
      continue;
    }
    it->cl_active += r.cl_active;
    it->cl_waiting += r.cl_waiting;
    it->sv_active += r.sv_active;
    it->sv_active_cancel += r.sv_active_cancel;
    it->sv_being_canceled += r.sv_being_canceled;
    it->sv_idle += r.sv_idle;
    it->sv_used += r.sv_used;
    it->sv_tested += r.sv_tested;
    it->sv_login += r.sv_login;
    it->maxwait_us = std::max(it->maxwait_us, r.maxwait_us);
    it->stats.merge(r.stats);
  }
  std::sort(into.pools.begin(), into.pools.end(), pool_less);
  for (auto& c : part.clients) into.clients.push_back(std::move(c));
  for (auto& c : part.servers) into.servers.push_back(std::move(c));
  into.admin_clients += part.admin_clients;
  into.login_clients += part.login_clients;
  into.used_clients += part.used_clients;
  into.used_servers += part.used_servers;
  into.free_blocks += part.free_blocks;
  into.parts += part.parts;
}

std::map<std::string, PoolStats> stats_by_database(const Snapshot& s) {
  std::map<std::string, PoolStats> out;
  for (const PoolRow& r : s.pools) out[r.db].merge(r.stats);
  return out;
}

namespace {
struct AsyncGather {
  Snapshot merged;
  size_t left = 0;
  std::function<void(Snapshot&)> done;
};
}  // namespace

void gather_async(Worker& me, unsigned parts, std::function<void(Snapshot&)> done) {
  auto st = std::make_shared<AsyncGather>();
  st->left = me.rt()->workers.size();
  st->done = std::move(done);
  Worker* home = &me;
  for (auto& w : me.rt()->workers) {
    w->post_call([st, home, parts](Worker& self) {
      auto part = std::make_shared<Snapshot>(snapshot_worker(self, parts));
      home->post_call([st, part](Worker&) {
        merge_snapshot(st->merged, std::move(*part));
        if (--st->left == 0) st->done(st->merged);
      });
    });
  }
}

namespace {
// A gather answered on the main thread. Only the main thread touches its fields (the
// workers' parts arrive through post_main); workers only hold the shared_ptr.
struct MainGather {
  Snapshot merged;
  size_t left = 0;
  bool finished = false;
  event* timer = nullptr;
  std::shared_ptr<MainGather>* timer_ref = nullptr;  // the timer's hold on this gather
  std::function<void(Snapshot&, bool)> done;

  void finish(bool complete) {
    if (finished) return;
    finished = true;
    if (timer != nullptr) event_free(timer);
    timer = nullptr;
    delete timer_ref;  // the caller holds its own reference
    timer_ref = nullptr;
    auto fn = std::move(done);
    fn(merged, complete);
  }

  static void deadline_cb(evutil_socket_t, short, void* arg) {
    std::shared_ptr<MainGather> keep = *static_cast<std::shared_ptr<MainGather>*>(arg);
    keep->finish(false);
  }
};
}  // namespace

void gather_on_main(Runtime& rt, unsigned parts, double timeout_s,
                    std::function<void(Snapshot&, bool)> done) {
  auto st = std::make_shared<MainGather>();
  st->left = rt.workers.size();
  st->done = std::move(done);
  if (st->left == 0 || !rt.post_main) {
    st->finish(st->left == 0);
    return;
  }
  if (rt.main_base != nullptr) {
    st->timer_ref = new std::shared_ptr<MainGather>(st);
    st->timer = evtimer_new(rt.main_base, &MainGather::deadline_cb, st->timer_ref);
    if (st->timer != nullptr) {
      double whole = std::floor(timeout_s);
      timeval tv{static_cast<time_t>(whole), static_cast<suseconds_t>((timeout_s - whole) * 1e6)};
      evtimer_add(st->timer, &tv);
    }
  }
  Runtime* rtp = &rt;
  for (auto& w : rt.workers) {
    w->post_call([st, parts, rtp](Worker& self) {
      auto part = std::make_shared<Snapshot>(snapshot_worker(self, parts));
      rtp->post_main([st, part]() {
        if (st->finished) return;
        merge_snapshot(st->merged, std::move(*part));
        if (--st->left == 0) st->finish(true);
      });
    });
  }
}

namespace {
struct BlockingGather {
  std::mutex mu;
  std::condition_variable cv;
  Snapshot merged;
  size_t left = 0;
};
}  // namespace

Snapshot gather_blocking(Runtime& rt, unsigned parts, double timeout_s) {
  auto st = std::make_shared<BlockingGather>();
  st->left = rt.workers.size();
  for (auto& w : rt.workers) {
    w->post_call([st, parts](Worker& self) {
      Snapshot part = snapshot_worker(self, parts);
      std::lock_guard<std::mutex> g(st->mu);
      merge_snapshot(st->merged, std::move(part));
      st->left--;
      st->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> g(st->mu);
  st->cv.wait_for(g, std::chrono::duration<double>(timeout_s), [&] { return st->left == 0; });
  return st->merged;
}

void run_on_all_blocking(Runtime& rt, const std::function<void(Worker&)>& fn, double timeout_s) {
  auto st = std::make_shared<BlockingGather>();
  st->left = rt.workers.size();
  for (auto& w : rt.workers) {
    w->post_call([st, fn](Worker& self) {
      fn(self);
      std::lock_guard<std::mutex> g(st->mu);
      st->left--;
      st->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> g(st->mu);
  st->cv.wait_for(g, std::chrono::duration<double>(timeout_s), [&] { return st->left == 0; });
}

}  // namespace pgsluice
