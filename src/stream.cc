// Socket I/O for one connection: non-blocking fd, libevent read/write events, and buffers.
#include "stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>

#include "log.h"
#include "worker.h"

namespace pgsluice {

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
  event_assign(&ev_read_, w->base(), fd_.get(), EV_READ | EV_PERSIST, &Conn::read_cb, this);
  event_assign(&ev_write_, w->base(), fd_.get(), EV_WRITE | EV_PERSIST, &Conn::write_cb, this);
  attached_ = true;
  bool r = reading_, wr = writing_;
  reading_ = writing_ = false;
  want_read(r);
  want_write(wr);
}

void Conn::detach() {
  if (!attached_) return;
  if (reading_) event_del(&ev_read_);
  if (writing_) event_del(&ev_write_);
  attached_ = false;
}

void Conn::want_read(bool on) {
  if (!attached_) {
    reading_ = on;
    return;
  }
  if (on == reading_) return;
  reading_ = on;
  if (worker_->suspended() && !suspend_exempt_) return;  // recorded; RESUME re-arms it
  if (on)
    event_add(&ev_read_, nullptr);
  else
    event_del(&ev_read_);
}

void Conn::apply_suspend(bool suspended) {
  if (!attached_ || !reading_ || suspend_exempt_) return;
  if (suspended)
    event_del(&ev_read_);
  else
    event_add(&ev_read_, nullptr);
}

void Conn::want_write(bool on) {
  if (!attached_) {
    writing_ = on;
    return;
  }
  if (on == writing_) return;
  writing_ = on;
  if (on)
    event_add(&ev_write_, nullptr);
  else
    event_del(&ev_write_);
}

Conn::Io Conn::read_in(size_t* got) {
  *got = 0;
  worker_->bufs().reserve(in_, 1);
  if (in_.wpos == in_.cap) return Io::WouldBlock;
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
  want_write(false);
  return Io::Ok;
}

void Conn::read_cb(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  Worker* w = c->worker_;  // c may be handed to another worker by its callback
  if (!c->dead_) c->on_readable();
  w->after_callback();
}

void Conn::write_cb(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (!c->dead_) c->on_writable();
}

bool set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

void tune_tcp_socket(int fd, bool keepalive) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (keepalive) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

PeerAddr peer_of(int fd) {
  PeerAddr a;
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return a;
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    a.host = buf;
    a.port = ntohs(s->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    a.host = buf;
    a.port = ntohs(s->sin6_port);
  } else {
    a.host = "unix";
  }
  return a;
}

}  // namespace pgsluice
