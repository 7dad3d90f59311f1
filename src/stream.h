// Socket I/O for one connection: non-blocking fd, libevent read/write events, and
// the in/out byte buffers, which come from the worker's block pool only while bytes are in flight.
#pragma once

#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/types.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "common.h"

namespace pgsluice {

class Worker;

// A byte queue: [rpos, wpos) holds data. Memory is a pool block of kBlock bytes or,
// for a message that needs more, a larger heap block.
struct Buf {
  uint8_t* data = nullptr;
  size_t cap = 0;
  size_t rpos = 0;
  size_t wpos = 0;
  size_t size() const { return wpos - rpos; }
  bool empty() const { return wpos == rpos; }
  const uint8_t* begin() const { return data + rpos; }
};

// Per-worker free list of fixed-size blocks, so an idle connection holds no buffer.
class BufPool {
 public:
  static constexpr size_t kBlock = 16384;
  ~BufPool();
  // Makes room for `n` more bytes at the end of b (compacting or growing it).
  void reserve(Buf& b, size_t n);
  // Returns b's memory when it is empty.
  void release_if_empty(Buf& b);
  void append(Buf& b, const void* p, size_t n);
  size_t cached_blocks() const { return free_.size(); }

 private:
  std::vector<uint8_t*> free_;
};

// Where the other end of a connection is, for logs and SHOW commands.
struct PeerAddr {
  std::string host;  // "unix" for a Unix socket
  int port = 0;
};

// The base of client, server and cancel connections: an fd registered with one worker's
// event_base. Subclasses implement on_readable/on_writable.
class Conn {
 public:
  Conn(Worker* w, Fd fd);
  virtual ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  virtual void on_readable() = 0;
  virtual void on_writable() = 0;

  // Registers the events on the current worker's base (again, after a hand-over).
  void attach(Worker* w);
  // Removes the events from the base (before a hand-over or a close).
  void detach();
  void want_read(bool on);
  void want_write(bool on);

  enum class Io : uint8_t { Ok, WouldBlock, Eof, Error };
  // Reads what the connection has into in_ (up to the free space, at least one block):
  // from the socket, or decrypted by TLS once start_tls() was called.
  Io read_in(size_t* got);
  // Sends out_ (encrypted under TLS); arms the write event when the socket is full. Error
  // on a dead peer.
  Io flush_out();

  // ---- the TLS transport: every byte of a TLS connection goes through these ----
  // Starts a TLS session on this connection with ctx (its own reference): as the TLS
  // server (accept) or client. `early` are bytes already read from the socket that belong
  // to the handshake (a direct-TLS ClientHello); OpenSSL reads them before the socket.
  // For a connecting side, `host` (may be empty) is sent as SNI when it is a name, and
  // checked against the server's certificate when verify_name is set. False when
  // OpenSSL cannot make the session (out of memory or a bad host string).
  bool start_tls(SSL_CTX* ctx, bool accept, std::string_view early, std::string_view host,
                 bool verify_name);
  // Advances the handshake without blocking: Ok once it is complete, WouldBlock with the
  // read or write event armed as OpenSSL asks (call again from on_readable/on_writable),
  // Eof if the peer went away, Error with the reason in *why (never a secret).
  Io tls_handshake(std::string* why);
  bool tls() const { return ssl_ != nullptr; }
  SSL* ssl() const { return ssl_; }

  Worker* worker() const { return worker_; }
  int fd() const { return fd_.get(); }

  Buf in_;
  Buf out_;
  PeerAddr addr_;
  // SUSPEND: stop (or resume) reading without forgetting whether this connection wants to.
  void apply_suspend(bool suspended);

  // The fields are ordered by size, the small ones last, so that the object has no holes
  // and a Client's own small fields fill the end of this one (ARCHITECTURE.md, memory per
  // client).
 protected:
  Worker* worker_;
  // One event for the fd, added with EV_READ and/or EV_WRITE as wanted (rearm): one
  // struct event per connection instead of one per direction (ARCHITECTURE.md, memory).
  struct event ev_;
  SSL* ssl_ = nullptr;  // owned (SSL_free in the destructor); null for plain connections
  Fd fd_;
  short armed_ = 0;  // the mask ev_ is added with; 0 when it is not added
  bool attached_ = false;
  bool reading_ = false;
  bool writing_ = false;
  // TLS: a read that OpenSSL could only finish by writing (or the reverse) is retried
  // from the other event.
  bool read_needs_write_ = false;
  bool write_needs_read_ = false;

 public:
  bool dead_ = false;            // closed; waiting on the worker's deferred-free list
  bool suspend_exempt_ = false;  // keeps reading during SUSPEND (console clients)

 private:
  static void io_cb(evutil_socket_t, short what, void* arg);
  // Adds ev_ again when the wanted mask (reading_ unless suspended, writing_) changed.
  void rearm();
  // Decrypted bytes waiting inside OpenSSL get no socket event: schedule the read event.
  void wake_if_tls_pending();
};

// Socket helpers.
bool set_nonblocking(int fd);
struct Config;
// The TCP options of a server socket (PgBouncer's tune_socket): TCP_NODELAY, tcp_keepalive
// (on or off), tcp_keepidle/tcp_keepintvl/tcp_keepcnt and tcp_user_timeout when set, and
// tcp_socket_buffer. A refused option is logged, not fatal. A client socket gets the same
// from its listening socket (tune_listening_socket, tune_accepted_socket).
void tune_tcp_socket(int fd, const Config& c);
// A listening socket's keepalive settings before pgsluice set any (the kernel's defaults:
// net.ipv4.tcp_keepalive_*), to go back to when a reload sets them to 0 again.
struct TcpDefaults {
  int keepidle = 0;
  int keepintvl = 0;
  int keepcnt = 0;
};
TcpDefaults read_tcp_defaults(int fd);
// The client options of tune_tcp_socket on a TCP listening socket, except the socket
// buffers: Linux copies TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT and
// TCP_USER_TIMEOUT from the listening socket to each socket accept() returns, so an
// accepted client needs no setsockopt of its own (tune_accepted_socket). A setting of 0
// puts `d`'s value back.
void tune_listening_socket(int fd, const Config& c, const TcpDefaults& d);
// What a client socket accept() returned needs beyond what it inherited: the socket
// buffers when tcp_socket_buffer is set (usually nothing: no system call).
void tune_accepted_socket(int fd, const Config& c);
PeerAddr peer_of(int fd);
// The same from an address accept() returned (no system call).
PeerAddr peer_from(const sockaddr_storage& ss);
// The OS user name of a Unix socket's peer (SO_PEERCRED and the password database); empty
// when it cannot be told. May consult NSS (a blocking lookup when that is remote).
std::string unix_peer_user(int fd);

}  // namespace pgsluice
