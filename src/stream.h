// Socket I/O for one connection: non-blocking fd, libevent read/write events, and
// the in/out byte buffers, which come from the worker's block pool only while bytes are in flight.
#pragma once

#include <event2/event.h>
#include <event2/event_struct.h>

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
  // Reads what the socket has into in_ (up to the free space, at least one block).
  Io read_in(size_t* got);
  // Sends out_; arms the write event when the socket is full. Error on a dead peer.
  Io flush_out();

  Worker* worker() const { return worker_; }
  int fd() const { return fd_.get(); }

  Buf in_;
  Buf out_;
  PeerAddr addr_;
  bool dead_ = false;            // closed; waiting on the worker's deferred-free list
  bool suspend_exempt_ = false;  // keeps reading during SUSPEND (console clients)
  // SUSPEND: stop (or resume) reading without forgetting whether this connection wants to.
  void apply_suspend(bool suspended);

 protected:
  Worker* worker_;
  Fd fd_;
  struct event ev_read_;
  struct event ev_write_;
  bool attached_ = false;
  bool reading_ = false;
  bool writing_ = false;

 private:
  static void read_cb(evutil_socket_t, short, void* arg);
  static void write_cb(evutil_socket_t, short, void* arg);
};

// Socket helpers.
bool set_nonblocking(int fd);
void tune_tcp_socket(int fd, bool keepalive);
PeerAddr peer_of(int fd);

}  // namespace pgsluice
