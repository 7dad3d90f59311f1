// Socket I/O for one connection: non-blocking fd, libevent read/write events, and buffers.
#include "stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>

#include "config.h"
#include "log.h"
#include "tls.h"
#include "worker.h"

namespace pgsluice {
namespace {

// The BIO under every TLS session: our own socket calls (MSG_NOSIGNAL, no SIGPIPE), with
// the bytes read before TLS started (a direct-TLS ClientHello) served first.
struct SockBio {
  int fd = -1;
  std::string early;
  size_t early_pos = 0;
};

int sock_bio_read(BIO* b, char* out, size_t len, size_t* got) {
  auto* sb = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  *got = 0;
  if (len == 0) return 1;
  if (sb->early_pos < sb->early.size()) {
    size_t n = std::min(len, sb->early.size() - sb->early_pos);
    std::memcpy(out, sb->early.data() + sb->early_pos, n);
    sb->early_pos += n;
    if (sb->early_pos == sb->early.size()) std::string().swap(sb->early), sb->early_pos = 0;
    *got = n;
    return 1;
  }
  for (;;) {
    ssize_t n = ::recv(sb->fd, out, len, 0);
    if (n > 0) {
      *got = static_cast<size_t>(n);
      return 1;
    }
    if (n == 0) return 0;  // EOF: no retry flag
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
    return 0;
  }
}

int sock_bio_write(BIO* b, const char* in, size_t len, size_t* put) {
  auto* sb = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  *put = 0;
  for (;;) {
    ssize_t n = ::send(sb->fd, in, len, MSG_NOSIGNAL);
    if (n >= 0) {
      *put = static_cast<size_t>(n);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
    return 0;
  }
}

long sock_bio_ctrl(BIO*, int cmd, long, void*) {
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int sock_bio_destroy(BIO* b) {
  delete static_cast<SockBio*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  return 1;
}

BIO_METHOD* sock_bio_method() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pgsluice socket");
    if (bm == nullptr) std::abort();
    BIO_meth_set_read_ex(bm, sock_bio_read);
    BIO_meth_set_write_ex(bm, sock_bio_write);
    BIO_meth_set_ctrl(bm, sock_bio_ctrl);
    BIO_meth_set_destroy(bm, sock_bio_destroy);
    return bm;
  }();
  return m;
}

bool is_ip_literal(std::string_view host) {
  std::string h(host);
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, h.c_str(), &a4) == 1 || inet_pton(AF_INET6, h.c_str(), &a6) == 1;
}

}  // namespace

BufPool::~BufPool() {
  for (auto* p : free_) std::free(p);
}

void BufPool::reserve(Buf& b, size_t n) {
  if (b.data == nullptr) {
    if (n <= kBlock) {
      if (!free_.empty()) {
        b.data = free_.back();
        free_.pop_back();
      } else {
        b.data = static_cast<uint8_t*>(std::malloc(kBlock));
      }
      b.cap = kBlock;
    } else {
      b.cap = (n + kBlock - 1) / kBlock * kBlock;
      b.data = static_cast<uint8_t*>(std::malloc(b.cap));
    }
    if (b.data == nullptr) std::abort();  // out of memory is fatal
    b.rpos = b.wpos = 0;
    return;
  }
  if (b.cap - b.wpos >= n) return;
  size_t used = b.size();
  if (b.cap - used >= n) {  // compact
    if (used) std::memmove(b.data, b.data + b.rpos, used);
    b.rpos = 0;
    b.wpos = used;
    return;
  }
  size_t ncap = b.cap * 2;
  while (ncap - used < n) ncap *= 2;
  auto* nd = static_cast<uint8_t*>(std::malloc(ncap));
  if (nd == nullptr) std::abort();
  if (used) std::memcpy(nd, b.data + b.rpos, used);
  if (b.cap == kBlock)
    free_.push_back(b.data);
  else
    std::free(b.data);
  b.data = nd;
  b.cap = ncap;
  b.rpos = 0;
  b.wpos = used;
}

void BufPool::release_if_empty(Buf& b) {
  if (b.data == nullptr || !b.empty()) return;
  if (b.cap == kBlock && free_.size() < 1024)
    free_.push_back(b.data);
  else
    std::free(b.data);
  b = Buf{};
}

void BufPool::append(Buf& b, const void* p, size_t n) {
  if (n == 0) return;
  reserve(b, n);
  std::memcpy(b.data + b.wpos, p, n);
  b.wpos += n;
}

Conn::Conn(Worker* w, Fd fd) : worker_(w), fd_(std::move(fd)) {}

Conn::~Conn() {
  detach();
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (worker_) {
    in_.rpos = in_.wpos;
    out_.rpos = out_.wpos;
    worker_->bufs().release_if_empty(in_);
    worker_->bufs().release_if_empty(out_);
  }
}

void Conn::attach(Worker* w) {
  detach();
  worker_ = w;
  attached_ = true;
  rearm();
  wake_if_tls_pending();
}

void Conn::detach() {
  if (!attached_) return;
  if (armed_ != 0) event_del(&ev_);
  armed_ = 0;
  attached_ = false;
}

void Conn::rearm() {
  if (!attached_) return;
  short want = 0;
  if (reading_ && (suspend_exempt_ || !worker_->suspended())) want |= EV_READ;
  if (writing_) want |= EV_WRITE;
  if (want == armed_) return;
  // libevent changes an event's mask only by assigning it again, which must not be done
  // while it is added: deleted first (two epoll_ctl calls where two events took one; the
  // mask changes only when a socket fills or a connection changes phase).
  if (armed_ != 0) event_del(&ev_);
  armed_ = want;
  if (want == 0) return;
  event_assign(&ev_, worker_->base(), fd_.get(), static_cast<short>(want | EV_PERSIST),
               &Conn::io_cb, this);
  event_add(&ev_, nullptr);
}

void Conn::want_read(bool on) {
  if (on == reading_) return;
  reading_ = on;
  rearm();  // during SUSPEND the wish is recorded; RESUME adds it (apply_suspend)
  if (on) wake_if_tls_pending();
}

void Conn::wake_if_tls_pending() {
  if (ssl_ != nullptr && attached_ && (armed_ & EV_READ) != 0 && !dead_ && SSL_pending(ssl_) > 0)
    event_active(&ev_, EV_READ, 0);
}

void Conn::apply_suspend(bool suspended) {
  rearm();
  if (!suspended) wake_if_tls_pending();
}

void Conn::want_write(bool on) {
  if (on == writing_) return;
  writing_ = on;
  rearm();
}

Conn::Io Conn::read_in(size_t* got) {
  *got = 0;
  worker_->bufs().reserve(in_, 1);
  if (in_.wpos == in_.cap) return Io::WouldBlock;
  if (ssl_ != nullptr) {
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(ssl_, in_.data + in_.wpos, in_.cap - in_.wpos, &n) == 1) {
      in_.wpos += n;
      *got = n;
      return Io::Ok;
    }
    switch (SSL_get_error(ssl_, 0)) {
      case SSL_ERROR_WANT_READ:
        worker_->bufs().release_if_empty(in_);
        return Io::WouldBlock;
      case SSL_ERROR_WANT_WRITE:
        read_needs_write_ = true;
        want_write(true);
        worker_->bufs().release_if_empty(in_);
        return Io::WouldBlock;
      case SSL_ERROR_ZERO_RETURN:
        return Io::Eof;
      case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return errno == 0 ? Io::Eof : Io::Error;
      default:
        ERR_clear_error();
        return Io::Error;
    }
  }
  for (;;) {
    ssize_t n = ::recv(fd_.get(), in_.data + in_.wpos, in_.cap - in_.wpos, 0);
    if (n > 0) {
      in_.wpos += static_cast<size_t>(n);
      *got = static_cast<size_t>(n);
      return Io::Ok;
    }
    if (n == 0) return Io::Eof;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      worker_->bufs().release_if_empty(in_);
      return Io::WouldBlock;
    }
    return Io::Error;
  }
}

Conn::Io Conn::flush_out() {
  while (!out_.empty()) {
    if (ssl_ != nullptr) {
      size_t n = 0;
      ERR_clear_error();
      if (SSL_write_ex(ssl_, out_.data + out_.rpos, out_.size(), &n) == 1) {
        out_.rpos += n;
        continue;
      }
      switch (SSL_get_error(ssl_, 0)) {
        case SSL_ERROR_WANT_WRITE:
          want_write(true);
          return Io::WouldBlock;
        case SSL_ERROR_WANT_READ:
          write_needs_read_ = true;
          want_read(true);
          return Io::WouldBlock;
        default:
          ERR_clear_error();
          return Io::Error;
      }
    }
    ssize_t n = ::send(fd_.get(), out_.data + out_.rpos, out_.size(), MSG_NOSIGNAL);
    if (n > 0) {
      out_.rpos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      want_write(true);
      return Io::WouldBlock;
    }
    return Io::Error;
  }
  worker_->bufs().release_if_empty(out_);
  if (!read_needs_write_) want_write(false);
  return Io::Ok;
}

bool Conn::start_tls(SSL_CTX* ctx, bool accept, std::string_view early, std::string_view host,
                     bool verify_name) {
  if (ssl_ != nullptr || ctx == nullptr) return false;
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return false;
  BIO* bio = BIO_new(sock_bio_method());
  if (bio == nullptr) {
    SSL_free(ssl);
    return false;
  }
  auto* sb = new SockBio;
  sb->fd = fd_.get();
  sb->early.assign(early.data(), early.size());
  BIO_set_data(bio, sb);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl, bio, bio);
  if (accept) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    std::string h(host);
    bool ip = !h.empty() && is_ip_literal(h);
    if (!h.empty() && !ip && h[0] != '/') SSL_set_tlsext_host_name(ssl, h.c_str());
    if (verify_name && !h.empty()) {
      X509_VERIFY_PARAM* vp = SSL_get0_param(ssl);
      int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, h.c_str()) : SSL_set1_host(ssl, h.c_str());
      if (ok != 1) {
        ERR_clear_error();
        SSL_free(ssl);
        return false;
      }
      if (!ip) X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
  }
  ssl_ = ssl;
  return true;
}

Conn::Io Conn::tls_handshake(std::string* why) {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    want_write(!out_.empty());
    return Io::Ok;
  }
  switch (SSL_get_error(ssl_, r)) {
    case SSL_ERROR_WANT_READ:
      want_write(false);
      want_read(true);
      return Io::WouldBlock;
    case SSL_ERROR_WANT_WRITE:
      want_write(true);
      return Io::WouldBlock;
    case SSL_ERROR_ZERO_RETURN:
      *why = "peer closed the connection during the TLS handshake";
      return Io::Eof;
    case SSL_ERROR_SYSCALL: {
      int e = errno;
      std::string q = tls_error_text("");
      if (!q.empty())
        *why = q;
      else if (e == 0)
        *why = "peer closed the connection during the TLS handshake";
      else
        *why = std::string("socket error in the TLS handshake: ") + std::strerror(e);
      return e == 0 && q.empty() ? Io::Eof : Io::Error;
    }
    default: {
      long vr = SSL_get_verify_result(ssl_);
      if (vr != X509_V_OK) {
        *why = std::string("certificate verify failed: ") + X509_verify_cert_error_string(vr);
        ERR_clear_error();
      } else {
        *why = tls_error_text("TLS handshake failed");
      }
      return Io::Error;
    }
  }
}

void Conn::io_cb(evutil_socket_t, short what, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  Worker* w = c->worker_;  // c may be handed to another worker by its callback
  // Still this worker's, still attached, not closed: a callback may have changed any of it.
  auto mine = [c, w] { return !c->dead_ && c->worker_ == w && c->attached_; };
  if ((what & EV_WRITE) != 0) {
    if (c->read_needs_write_ && mine()) {
      c->read_needs_write_ = false;
      c->want_write(false);
      c->on_readable();
    }
    if (mine()) c->on_writable();
  }
  if ((what & EV_READ) != 0) {
    if (c->write_needs_read_ && mine()) {
      c->write_needs_read_ = false;
      c->on_writable();
    }
    if (mine() && c->reading_) c->on_readable();
    if (c->ssl_ != nullptr && c->worker_ == w) c->wake_if_tls_pending();
    w->after_callback();
  }
}

bool set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

namespace {
void set_tcp_option(int fd, int level, int opt, int v, const char* name) {
  if (setsockopt(fd, level, opt, &v, sizeof v) != 0)
    LOG_WARN("setsockopt(%s = %d) failed: %s", name, v, strerror(errno));
}
int get_tcp_option(int fd, int opt) {
  int v = 0;
  socklen_t len = sizeof v;
  return getsockopt(fd, IPPROTO_TCP, opt, &v, &len) == 0 ? v : 0;
}
}  // namespace

TcpDefaults read_tcp_defaults(int fd) {
  return TcpDefaults{get_tcp_option(fd, TCP_KEEPIDLE), get_tcp_option(fd, TCP_KEEPINTVL),
                     get_tcp_option(fd, TCP_KEEPCNT)};
}

namespace {
// TCP_NODELAY, SO_KEEPALIVE, the keepalive timings and TCP_USER_TIMEOUT. `d` null: a fresh
// socket, where a setting of 0 leaves the kernel's value alone; otherwise a socket set
// before (a listening socket at a reload), where 0 puts back d's value.
void set_tcp_options(int fd, const Config& c, const TcpDefaults* d) {
  set_tcp_option(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  set_tcp_option(fd, SOL_SOCKET, SO_KEEPALIVE, c.tcp_keepalive ? 1 : 0, "SO_KEEPALIVE");
  // 0 is not a value these take: a default that could not be read is left alone.
  const TcpDefaults none;
  const TcpDefaults& k = d != nullptr ? *d : none;
  int idle = c.tcp_keepidle > 0 ? c.tcp_keepidle : k.keepidle;
  int intvl = c.tcp_keepintvl > 0 ? c.tcp_keepintvl : k.keepintvl;
  int cnt = c.tcp_keepcnt > 0 ? c.tcp_keepcnt : k.keepcnt;
  if (idle > 0) set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle, "TCP_KEEPIDLE");
  if (intvl > 0) set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, intvl, "TCP_KEEPINTVL");
  if (cnt > 0) set_tcp_option(fd, IPPROTO_TCP, TCP_KEEPCNT, cnt, "TCP_KEEPCNT");
  if (c.tcp_user_timeout > 0 || d != nullptr)
    set_tcp_option(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, std::max(c.tcp_user_timeout, 0),
                   "TCP_USER_TIMEOUT");
}
}  // namespace

void tune_listening_socket(int fd, const Config& c, const TcpDefaults& d) {
  set_tcp_options(fd, c, &d);
}

void tune_accepted_socket(int fd, const Config& c) {
  if (c.tcp_socket_buffer > 0) {
    set_tcp_option(fd, SOL_SOCKET, SO_SNDBUF, c.tcp_socket_buffer, "SO_SNDBUF");
    set_tcp_option(fd, SOL_SOCKET, SO_RCVBUF, c.tcp_socket_buffer, "SO_RCVBUF");
  }
}

void tune_tcp_socket(int fd, const Config& c) {
  set_tcp_options(fd, c, nullptr);
  tune_accepted_socket(fd, c);  // the socket buffers
}

std::string unix_peer_user(int fd) {
  ucred cr{};
  socklen_t len = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return {};
  long bufsize = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(bufsize > 0 ? static_cast<size_t>(bufsize) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(cr.uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return {};
  return found->pw_name;
}

PeerAddr peer_of(int fd) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return peer_from(ss);
}

PeerAddr peer_from(const sockaddr_storage& ss) {
  PeerAddr a;
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    auto* s = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    a.host = buf;
    a.port = ntohs(s->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* s = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    a.host = buf;
    a.port = ntohs(s->sin6_port);
  } else {
    a.host = "unix";
  }
  return a;
}

}  // namespace pgsluice
