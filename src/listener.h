// Accepting clients for one worker: its listening sockets, the accept loop with the client
// limit, the back-off when the process is out of file descriptors, and the round-robin
// hand-off of Unix-socket clients to the other workers.
#pragma once

#include <event2/event.h>
#include <event2/event_struct.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common.h"
#include "stream.h"

namespace pgsluice {

class Worker;
struct Config;

class Listener {
 public:
  // Client connections held beyond max_client_conn (every worker together): room for a
  // console login when every client slot is taken, and for over-limit clients to get
  // their 53300 after their startup packet. Past that a connection is refused at accept.
  static constexpr int kSpare = 16;
  // How long accepting pauses after accept() fails for want of resources (PgBouncer: 5 s).
  static constexpr int kBackoffSeconds = 5;
  // TCP_DEFER_ACCEPT when tcp_defer_accept is on (PgBouncer's fixed value).
  static constexpr int kDeferAcceptSeconds = 45;

  explicit Listener(Worker* w);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Opens the TCP sockets of listen_addr (SO_REUSEPORT, one set per worker) and, on
  // worker 0, the Unix socket; starts accepting.
  Status open(const Config& c);
  // SUSPEND: stop or restart accepting (the sockets stay open).
  void set_suspended(bool on);
  // Graceful shutdown: closes the TCP sockets; the Unix socket stays.
  void close_tcp();
  // The worker stops: accept nothing more.
  void stop();
  // tcp_defer_accept on the TCP listening sockets (TCP_DEFER_ACCEPT of 45 s when on, as
  // PgBouncer): set by open() and again when a reload changes the setting.
  void set_defer_accept(bool on);
  // The client TCP options (TCP_NODELAY, tcp_keepalive, tcp_keepidle/keepintvl/keepcnt,
  // tcp_user_timeout) on the TCP listening sockets, which every accepted client inherits
  // (tune_listening_socket): set by open() and again when a reload changes them.
  void set_client_options(const Config& c);

  // Most client connections held at once (0: no limit), for max_client_conn.
  static int hard_cap(const Config& c);

 private:
  struct Socket {
    int fd = -1;
    bool is_unix = false;
    struct event ev;
    Listener* owner = nullptr;
  };
  // Adds or removes the accept events to match suspended_/stopped_/backoff_.
  void update();
  void accept_on(Socket* s);
  // accept() failed for want of fds or memory: stop accepting for kBackoffSeconds.
  void back_off(int err);
  // Answers a connection over the client limit with 53300 and closes it.
  void refuse(int fd);
  static void accept_cb(evutil_socket_t fd, short, void* arg);
  static void resume_cb(evutil_socket_t, short, void* arg);

  Worker* w_;
  std::vector<std::unique_ptr<Socket>> socks_;
  bool armed_ = false;             // accept events are added
  bool suspended_ = false;         // SUSPEND
  bool stopped_ = false;           // the worker is stopping
  bool backoff_ = false;           // waiting out an accept() failure
  uint64_t refused_ = 0;           // connections refused since the last log line about it
  double last_refuse_log_ = -1e9;  // at most one such line every 10 s
  size_t next_unix_target_ = 0;
  int defer_accept_ = -1;  // TCP_DEFER_ACCEPT as last set (-1: not yet)
  // The client options as last set on the listening sockets (empty: not yet), and the
  // kernel's keepalive defaults read from the first TCP socket before any was set.
  std::optional<std::array<int, 5>> client_options_;
  TcpDefaults tcp_defaults_;
  struct event resume_ev_;
};

}  // namespace pgsluice
