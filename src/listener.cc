// Accepting clients for one worker: listening sockets, the accept loop and its limits,
// the back-off at the fd limit, and the Unix-socket hand-off to the other workers.
#include "listener.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <string>

#include "config.h"
#include "log.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {

int listen_socket(const sockaddr* sa, socklen_t len, int backlog, bool reuseport,
                  std::string* err) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = strerror(errno);
    return -1;
  }
  int one = 1;
  if (sa->sa_family != AF_UNIX) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  if (bind(fd, sa, len) != 0 || ::listen(fd, backlog) != 0) {
    *err = strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// accept() errors that only concern the connection being accepted (accept(2), Linux
// notes): the listening socket is fine, try the next one.
bool transient_accept_error(int e) {
  switch (e) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM:  // refused by a firewall rule
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

}  // namespace

Listener::Listener(Worker* w) : w_(w) {
  event_assign(&resume_ev_, w_->base(), -1, 0, &Listener::resume_cb, this);
}

Listener::~Listener() {
  event_del(&resume_ev_);
  for (auto& s : socks_) {
    event_del(&s->ev);
    ::close(s->fd);
  }
}

int Listener::hard_cap(const Config& c) {
  if (c.max_client_conn <= 0) return 0;
  return c.max_client_conn > INT_MAX - kSpare ? INT_MAX : c.max_client_conn + kSpare;
}

Status Listener::open(const Config& c) {
  auto add = [&](int fd, bool is_unix) {
    auto s = std::make_unique<Socket>();
    s->fd = fd;
    s->is_unix = is_unix;
    s->owner = this;
    event_assign(&s->ev, w_->base(), fd, EV_READ | EV_PERSIST, &Listener::accept_cb, s.get());
    socks_.push_back(std::move(s));
  };
  // The Unix socket first: once a TCP port answers, the Unix socket is ready too.
  if (w_->index() == 0 && !c.unix_socket_dir.empty()) {
    std::string path = c.unix_socket_dir + "/.s.PGSQL." + std::to_string(c.listen_port);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (path.size() >= sizeof un.sun_path)
      return Status::error("unix socket path too long: " + path);
    std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
    ::unlink(path.c_str());
    std::string err;
    int fd =
        listen_socket(reinterpret_cast<sockaddr*>(&un), sizeof un, c.listen_backlog, false, &err);
    if (fd < 0) return Status::error("could not listen on " + path + ": " + err);
    chmod(path.c_str(), static_cast<mode_t>(c.unix_socket_mode));
    add(fd, true);
  }
  std::string addrs = c.listen_addr;
  size_t i = 0;
  while (!addrs.empty() && i <= addrs.size()) {
    size_t j = addrs.find(',', i);
    if (j == std::string::npos) j = addrs.size();
    std::string a = addrs.substr(i, j - i);
    a.erase(0, a.find_first_not_of(" \t"));
    a.erase(a.find_last_not_of(" \t") + 1);
    i = j + 1;
    if (a.empty()) continue;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    hints.ai_family = AF_UNSPEC;
    addrinfo* res = nullptr;
    std::string port = std::to_string(c.listen_port);
    int rc = getaddrinfo(a == "*" ? nullptr : a.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) return Status::error("listen_addr " + a + ": " + gai_strerror(rc));
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      std::string err;
      int fd = listen_socket(ai->ai_addr, ai->ai_addrlen, c.listen_backlog, true, &err);
      if (fd < 0) {
        freeaddrinfo(res);
        return Status::error("could not listen on " + a + ":" + port + ": " + err);
      }
      add(fd, false);
    }
    freeaddrinfo(res);
  }
  for (auto& s : socks_)
    if (!s->is_unix) {
      tcp_defaults_ = read_tcp_defaults(s->fd);
      break;
    }
  set_defer_accept(c.tcp_defer_accept);
  set_client_options(c);
  update();
  return Status();
}

void Listener::set_client_options(const Config& c) {
  const std::array<int, 5> want = {c.tcp_keepalive ? 1 : 0, c.tcp_keepidle, c.tcp_keepintvl,
                                   c.tcp_keepcnt, c.tcp_user_timeout};
  if (client_options_ == want) return;
  client_options_ = want;
  for (auto& s : socks_)
    if (!s->is_unix) tune_listening_socket(s->fd, c, tcp_defaults_);
}

void Listener::set_defer_accept(bool on) {
  int v = on ? kDeferAcceptSeconds : 0;
  if (v == defer_accept_) return;
  defer_accept_ = v;
  for (auto& s : socks_)
    if (!s->is_unix && setsockopt(s->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &v, sizeof v) != 0)
      LOG_WARN("setsockopt(TCP_DEFER_ACCEPT = %d) failed: %s", v, strerror(errno));
}

void Listener::update() {
  bool want = !suspended_ && !stopped_ && !backoff_;
  if (want == armed_) return;
  armed_ = want;
  for (auto& s : socks_) {
    if (want)
      event_add(&s->ev, nullptr);
    else
      event_del(&s->ev);
  }
}

void Listener::set_suspended(bool on) {
  suspended_ = on;
  update();
}

void Listener::stop() {
  stopped_ = true;
  update();
}

void Listener::close_tcp() {
  for (auto it = socks_.begin(); it != socks_.end();) {
    if ((*it)->is_unix) {
      ++it;
      continue;
    }
    event_del(&(*it)->ev);
    ::close((*it)->fd);
    it = socks_.erase(it);
  }
}

void Listener::accept_cb(evutil_socket_t, short, void* arg) {
  auto* s = static_cast<Socket*>(arg);
  s->owner->accept_on(s);
}

void Listener::accept_on(Socket* s) {
  Runtime* rt = w_->rt();
  const int cap = hard_cap(w_->cfg());
  const size_t nworkers = rt->workers.size();
  for (int i = 0; i < 64; i++) {
    // A TCP client's address comes with it (no getpeername later).
    sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(s->fd, s->is_unix ? nullptr : reinterpret_cast<sockaddr*>(&peer),
                     s->is_unix ? nullptr : &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (transient_accept_error(e)) continue;
      back_off(e);  // EMFILE, ENFILE, ENOBUFS, ENOMEM, or something unknown
      return;
    }
    // Every client connection counts from accept to close (PgBouncer's count), so the
    // count cannot leak whatever way the client goes. The cap bounds what a flood of
    // connections that never log in can hold.
    int n = rt->clients.fetch_add(1) + 1;
    if (cap > 0 && n > cap) {
      rt->clients.fetch_sub(1);
      refuse(fd);
      continue;
    }
    if (s->is_unix && nworkers > 1) {
      size_t target = next_unix_target_++ % nworkers;
      if (target != w_->index()) {
        rt->workers[target]->post(
            InboxMsg{InboxMsg::Kind::NewClient, fd, true, nullptr, nullptr, 0, {}, {}});
        continue;
      }
    }
    w_->new_client(fd, s->is_unix, s->is_unix ? nullptr : &peer);
  }
}

void Listener::back_off(int err) {
  LOG_ERROR("accept() failed: %s; not accepting new connections for %d s", strerror(err),
            kBackoffSeconds);
  backoff_ = true;
  update();
  timeval tv{kBackoffSeconds, 0};
  event_add(&resume_ev_, &tv);
}

void Listener::resume_cb(evutil_socket_t, short, void* arg) {
  auto* l = static_cast<Listener*>(arg);
  l->backoff_ = false;
  l->update();
}

void Listener::refuse(int fd) {
  double now = now_seconds();
  refused_++;
  if (now - last_refuse_log_ >= 10) {
    LOG_WARN("no more connections allowed (max_client_conn %d + %d spare): %llu refused",
             w_->cfg().max_client_conn, kSpare, static_cast<unsigned long long>(refused_));
    refused_ = 0;
    last_refuse_log_ = now;
  }
  // Read what the client has sent already (its startup packet, usually), so that the
  // close below sends a FIN after the error and not a reset that could discard it.
  char junk[4096];
  for (int k = 0; k < 4 && ::recv(fd, junk, sizeof junk, MSG_DONTWAIT) > 0; k++) {
  }
  static const std::string err = [] {
    std::string m;
    wire::error_response(m, "FATAL", "53300", "no more connections allowed (max_client_conn)");
    return m;
  }();
  ssize_t r = ::send(fd, err.data(), err.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)r;
  ::close(fd);
}

}  // namespace pgsluice
