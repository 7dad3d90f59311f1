// LISTEN/NOTIFY in transaction and statement pooling: a client's LISTEN, UNLISTEN and
// UNLISTEN * are answered by pgsluice, and one server connection per pool and worker (the
// hub) LISTENs on the union of its clients' channels and hands each notification to every
// client listening on its channel (ARCHITECTURE.md, "LISTEN/NOTIFY").
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <event2/event.h>

namespace pgsluice {

class Client;
class Server;
class Worker;
struct LocalPool;

// A simple Query's text as the hub sees it: exactly one LISTEN ch, UNLISTEN ch or
// UNLISTEN * (comments, white space and trailing semicolons allowed; the channel folded to
// lower case unless quoted, as PostgreSQL's lexer does). None: anything else, left to
// PostgreSQL (a channel that is not plain ASCII, longer than 63 bytes, a reserved word, an
// empty quoted name, a U& name, another statement).
struct NotifyCmd {
  enum class Kind : uint8_t { None, Listen, Unlisten, UnlistenAll };
  Kind kind = Kind::None;
  std::string channel;
};
NotifyCmd parse_notify_cmd(std::string_view sql);

// The channel as an SQL identifier (double-quoted).
std::string quote_channel(std::string_view ch);

// A listening client's part (Client::notify_): its channels, and the notifications held for
// it while it is in a transaction or waits for the hub to confirm its LISTEN.
struct NotifyClient {
  std::vector<std::string> channels;
  std::string pending;   // whole NotificationResponse messages not yet in the client's out_
  std::string awaiting;  // the channel whose LISTEN the hub has yet to confirm (empty: none)
};

// Bytes of notifications held for a client (NotifyClient::pending) before it is
// disconnected with 54000. They go to its output buffer while that holds less than
// kNotifyOutFull, else when it is empty again (notify_refill), so a client that does not
// read holds at most about both, whatever comes.
inline constexpr size_t kNotifyClientLimit = size_t{1} << 20;
inline constexpr size_t kNotifyOutFull = 64 * 1024;

// One pool's listening connection on one worker (LocalPool::hub). Only that worker's thread
// touches it.
class NotifyHub {
 public:
  NotifyHub(Worker* w, LocalPool* lp);
  ~NotifyHub();
  NotifyHub(const NotifyHub&) = delete;
  NotifyHub& operator=(const NotifyHub&) = delete;

  // A client's LISTEN ch: true when answered at once; false when it waits for the hub's own
  // LISTEN (the client stops reading until then).
  bool listen(Client* c, const std::string& ch);
  void unlisten(Client* c, const std::string& ch);
  void unlisten_all(Client* c);
  // The client leaves every channel (UNLISTEN *, or it closes).
  void leave_all(Client* c);

  // The hub's server (Worker::launch_server with this hub): made, logged in, a
  // ReadyForQuery of its own queries, a NotificationResponse, closed.
  void adopt(Server* s) { server_ = s; }
  void logged_in(Server* s);
  void ready(Server* s);
  void notification(std::span<const uint8_t> body);
  void closed(Server* s, bool was_up);

  size_t channel_count() const { return chans_.size(); }

 private:
  struct Chan {
    std::vector<Client*> clients;  // in the order they LISTENed
    std::vector<Client*> waiters;  // their LISTEN is answered when the hub's is confirmed
    bool confirmed = false;        // the hub's LISTEN on it has completed
    uint64_t listen_op = 0;        // the query whose LISTEN confirms it (Op::serial)
  };
  struct Op {
    uint64_t serial;
    std::vector<std::string> confirms;  // the channels its LISTENs confirm
  };
  void open();
  void send(const std::string& sql, std::vector<std::string> confirms);
  void drop(Client* c, const std::string& ch);
  void answer(Client* c, std::string_view tag);
  void deliver(Client* c, const std::string& msg, std::vector<Client*>& over);
  // Reopens (or, after a failed login, answers the waiting LISTENs with an error) from the
  // loop in `seconds`.
  void arm(double seconds);
  void retry();
  static void retry_cb(evutil_socket_t, short, void* arg);

  Worker* w_;
  LocalPool* lp_;
  Server* server_ = nullptr;  // the listening connection (null: none)
  bool up_ = false;           // logged in and listening
  std::map<std::string, Chan> chans_;
  // One entry per query the hub sent and whose ReadyForQuery is due.
  std::vector<Op> ops_;
  uint64_t next_op_ = 1;
  bool login_failed_ = false;
  event* retry_ev_ = nullptr;
};

// The client doors (Client::forward_pass, Worker::close_client, Server::process).
// A message of an idle client: 1 answered here (or awaited), 0 not for the hub, -1 wait
// (more bytes, or the hub's confirmation).
int notify_message(Client* c, uint8_t type, size_t len);
// The client is closing: it leaves every channel.
void notify_client_gone(Client* c);
// Held notifications of an idle client go to its output buffer if it has room (after a
// delivery; Client::on_writable when its output was sent).
void notify_refill(Client* c);
// A ReadyForQuery went to the linked client: held notifications follow it when its
// transaction is over.
void notify_after_ready(Client* c, char tx);

}  // namespace pgsluice
