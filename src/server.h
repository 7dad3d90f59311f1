// A server connection: connect, log in to PostgreSQL, and the server half of the data path.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "prepared.h"
#include "stats.h"
#include "stream.h"
#include "varcache.h"

namespace pgsluice {

class Pool;
struct LocalPool;
class Client;
class ScramClientSession;
class CancelConn;

// A server's state. Only Worker::set_state() changes it, and with it the list or count it
// belongs to (Connecting and Login: LocalPool::connecting; Idle: LocalPool::idle).
enum class ServerState : uint8_t {
  New,            // constructed, not connecting yet (on no list)
  Connecting,     // non-blocking connect in progress
  Login,          // startup sent; authenticating, reading ParameterStatus until ReadyForQuery
  Idle,           // logged in, clean (Server::clean), in LocalPool::idle
  Active,         // linked to client_
  Resetting,      // running server_reset_query after its client left
  BeingCanceled,  // released while cancel requests for it are in flight; not reusable yet
  Moving,         // being handed to another worker (on no list)
  Closed,         // closed; freed at the end of the loop turn (on no list)
};

// What to do with the answer to a request.
enum class ReqAction : uint8_t {
  Forward,  // the client's own request: its answer goes to the client
  Skip,     // injected by pgsluice (Parse, eviction Close): swallow its answer
  Fake,     // answered by pgsluice itself when it reaches the front (ParseComplete, CloseComplete)
};

// One request sent to a server whose answer is still due.
struct Request {
  uint8_t type = 0;  // frontend message type: 'Q','P','B','D','E','C','S','F'
  ReqAction action = ReqAction::Forward;
  uint64_t stmt = 0;         // P: the statement it prepares; C(Skip): the statement it evicts
  int32_t rename = -1;       // index in Server::renames_: show an error under the client's name
  int32_t client_name = -1;  // P/Q/C: index in Server::undos_ (the client's name it changed)
  int32_t tag = -1;          // Q(Fake): index in Server::renames_ of the CommandComplete tag;
                             // B/D: name_tag() of the client's statement name
  uint8_t swallow_c = 0;     // Q: CommandCompletes of statements pgsluice prepended
};

// What a client's Parse/PREPARE/Close changed in its name map: the name and what it mapped
// to before, undone (latest first) if PostgreSQL rejects or skips that request.
struct NameUndo {
  std::string name;
  std::shared_ptr<const StmtEntry> prev;  // null: the name was not mapped
};

// Side data of queued requests, referred to by index (Request::rename, client_name, and a
// Query's tag). Each entry belongs to the one request that refers to it: it is freed when
// that request is answered, so the log holds no more than the requests in flight. An index
// stays valid as long as its request is queued (entries before base_ are gone).
template <class T>
class RequestLog {
 public:
  // Adds an entry; returns its index (-1 in the unreachable case of 2^31 entries in flight:
  // the request then goes without it).
  int32_t add(T v) {
    size_t i = base_ + items_.size();
    if (i > static_cast<size_t>(INT32_MAX)) return -1;
    items_.push_back(Item{std::move(v), false});
    return static_cast<int32_t>(i);
  }
  const T& operator[](int32_t i) const { return items_[static_cast<size_t>(i) - base_].value; }
  bool empty() const { return head_ == items_.size(); }
  size_t size() const { return items_.size() - head_; }
  // The request that refers to entry i was answered: free it, and every answered entry
  // before the oldest unanswered one.
  void release(int32_t i) {
    size_t k = static_cast<size_t>(i);
    if (k < base_ + head_ || k - base_ >= items_.size()) return;  // freed already
    items_[k - base_].done = true;
    while (head_ < items_.size() && items_[head_].done) items_[head_++].value = T();
    if (head_ == items_.size()) {
      clear();  // nothing is referred to: indexes start again at 0
    } else if (head_ >= 64 && head_ * 2 >= items_.size()) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      base_ += head_;
      head_ = 0;
    }
  }
  void clear() {
    if (items_.capacity() > 1024)
      std::vector<Item>().swap(items_);
    else
      items_.clear();
    base_ = head_ = 0;
  }

 private:
  struct Item {
    T value;
    bool done;  // its request was answered
  };
  std::vector<Item> items_;  // items_[k] has index base_ + k
  size_t base_ = 0;
  size_t head_ = 0;  // items_[0, head_) are freed
};

// The requests sent to a server whose answers are still due, oldest first, with their side
// data (renames, undos). Answered requests are dropped as they go, so a client that
// pipelines without pause holds only what is in flight.
class RequestQueue {
 public:
  void push(uint8_t t) { push(Request{t, ReqAction::Forward, 0, -1, -1, -1, 0}); }
  void push(const Request& r) {
    q_.push_back(r);
    syncs_ += r.type == 'S';
    flushes_ += r.type == 'Q' || r.type == 'F';
  }
  bool empty() const { return head_ == q_.size(); }
  const Request& front() const { return q_[head_]; }
  Request& front() { return q_[head_]; }
  uint8_t front_type() const { return q_[head_].type; }
  // Drops the oldest request (answered) and the side data it refers to.
  void pop() {
    const Request& r = q_[head_];
    syncs_ -= r.type == 'S';
    flushes_ -= r.type == 'Q' || r.type == 'F';
    if (r.rename >= 0) renames.release(r.rename);
    if (r.client_name >= 0) undos.release(r.client_name);
    if (r.type == 'Q' && r.tag >= 0) renames.release(r.tag);  // B/D: a name_tag, not an index
    if (++head_ == q_.size()) {
      clear();  // nothing queued refers to any side data now
    } else if (head_ >= kCompactAt && head_ * 2 >= q_.size()) {
      // Amortised O(1): at least as many requests were popped as are moved.
      q_.erase(q_.begin(), q_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }
  // The front request no longer undoes its name change (it was undone already).
  void forget_undo() {
    Request& r = q_[head_];
    if (r.client_name >= 0) undos.release(r.client_name);
    r.client_name = -1;
  }
  size_t size() const { return q_.size() - head_; }
  // Queued Syncs, and queued simple Queries and FunctionCalls: each is answered (and
  // PostgreSQL flushes its output) without anything more from the client.
  size_t syncs() const { return syncs_; }
  size_t flushes() const { return flushes_; }
  const Request& at(size_t i) const { return q_[head_ + i]; }
  void clear() {
    clear_requests();
    renames.clear();
    undos.clear();
  }
  // True when the only Sync queued is the last entry (one segment in flight).
  bool single_segment() const {
    for (size_t i = head_; i < q_.size(); i++)
      if (q_[i].type == 'S') return i + 1 == q_.size();
    return false;
  }
  // Drops every 'S' after the front entry (Syncs the server swallows during COPY IN).
  void drop_syncs_after_front();

  RequestLog<std::pair<std::string, std::string>> renames;  // server name -> client name
  RequestLog<NameUndo> undos;  // the client's name changes of the requests in flight

 private:
  static constexpr size_t kCompactAt = 1024;
  void clear_requests() {
    if (q_.capacity() > 4 * kCompactAt)
      std::vector<Request>().swap(q_);  // a burst is over: give its memory back
    else
      q_.clear();
    head_ = 0;
    syncs_ = flushes_ = 0;
  }
  std::vector<Request> q_;
  size_t head_ = 0;
  size_t syncs_ = 0;
  size_t flushes_ = 0;
};

class Server final : public Conn {
 public:
  Server(Worker* w, Fd fd, Pool* pool, LocalPool* lp);
  ~Server() override;
  void on_readable() override;
  void on_writable() override;

  // Starts the login once the socket is connected.
  void start_login();
  // Parses what in_ holds: login messages, swallowed internal replies, or the data path.
  void process();
  void flush();
  // True when the linked client's transaction is over and the server can go back.
  bool can_release() const;
  // A client stops reading while this many of its requests are unanswered, if answers are
  // sure to come without more from it (answers_due): so a client that pipelines without
  // pause holds a bounded queue here, whatever the socket buffers hold.
  static constexpr size_t kMaxInFlight = 4096;
  bool answers_due() const {
    return !copy_ && (queue_.syncs() > 0 || (!skip_to_sync_ && queue_.flushes() > 0));
  }
  // Prepared-statement remapping (see prepared.h). All write to out_ and queue_ in order.
  // Makes sure e is prepared here, injecting a swallowed Parse (and evictions) if not.
  void ensure_prepared(const std::shared_ptr<const StmtEntry>& e, size_t max, PreparedStats& ps);
  // Evicts least recently used statements until one more fits under max.
  void make_room(size_t max, PreparedStats& ps);
  // Answers the Fake requests now at the front of the queue (in order).
  void emit_fakes();
  // A request of an earlier, unanswered segment changed the client's name `name`.
  bool name_unresolved(std::string_view name) const;
  // Records what a client's name mapped to before a Parse/PREPARE/Close changed it.
  // Each returns an index for one request's Request::client_name / rename / tag; the
  // entry lives until that request is answered (RequestQueue::pop).
  int add_undo(std::string_view name, std::shared_ptr<const StmtEntry> prev) {
    return queue_.undos.add(NameUndo{std::string(name), std::move(prev)});
  }
  int add_rename(std::string from, std::string to) {
    return queue_.renames.add(std::make_pair(std::move(from), std::move(to)));
  }
  // Undoes the bookkeeping of requests PostgreSQL skipped or rejected after an error.
  // `failed`: this request raised the error; otherwise PostgreSQL skipped it.
  void unwind(const Request& r, bool failed);
  void account_ready();
  // A request went to the server: start the query and transaction clocks if idle.
  void begin_request() {
    if (query_start_us_ == 0 || xact_start_us_ == 0) {
      uint64_t now = now_us();
      if (query_start_us_ == 0) query_start_us_ = now;
      if (xact_start_us_ == 0) xact_start_us_ = now;
    }
  }
  const std::vector<std::pair<std::string, std::string>>& login_params() const {
    return login_params_;
  }

  ServerState state() const { return state_; }
  // The one rule for "PostgreSQL is idle and clean": at a Sync boundary with nothing in
  // flight either way, no open transaction (explicit or implicit), not in COPY, not skipping
  // to a Sync after an error, no internal query pending. Only a clean server may be reused.
  bool clean() const;
  Pool* pool_;
  LocalPool* lp_;
  Client* client_ = nullptr;
  VarCache vars_;
  char tx_ = 'I';                // status byte of the last ReadyForQuery
  RequestQueue queue_;           // client requests awaiting answers
  int internal_ = 0;             // internal queries (SET, reset) whose ReadyForQuery is due
  uint64_t query_start_us_ = 0;  // first unanswered request (0: none)
  uint64_t xact_start_us_ = 0;   // first request of the open transaction (0: none)
  ServerStmts stmts_;            // named statements prepared on this server (remapping)
  std::unordered_map<uint64_t, std::shared_ptr<const StmtEntry>> evicting_;  // Close in flight
  // An extended-protocol request failed: PostgreSQL ignores every message up to the next
  // Sync (simple queries too), so none of them gets an answer or a fake one.
  bool skip_to_sync_ = false;
  // Unwinds queued requests from the front up to (not including) the next Sync, Query or
  // FunctionCall, latest first; `front_failed`: the front raised the error.
  void unwind_to_sync(bool front_failed);
  bool retry_pending_ = false;  // a 0A000 was swallowed; replay the segment at its ReadyForQuery
  bool retried_ = false;        // the current segment was replayed once already
  uint64_t retry_stmt_ = 0;
  uint64_t seg_out_ = 0;     // bytes sent to the client since the last ReadyForQuery
  uint64_t syncs_sent_ = 0;  // Syncs forwarded: numbers the extended-protocol segments
  bool unsynced_ = false;    // extended-protocol messages sent since the client's last Sync
  bool internal_failed_ = false;
  bool copy_ = false;  // PostgreSQL is in COPY IN/OUT/BOTH (from 'G'/'H'/'W' to its 'C' or 'E')
  uint64_t fwd_remaining_ = 0;  // bytes of a message still to pass to the client
  uint32_t backend_pid_ = 0;
  std::string backend_key_;
  int cancels_pending_ = 0;
  std::vector<CancelConn*> cancels_;
  double connect_time_ = 0;
  double idle_since_ = 0;  // when it last became idle
  size_t pos_ = 0;         // index in Worker::servers_
  uint64_t id_ = 0;        // process-wide id (SHOW SERVERS)
  uint32_t gen_ = 0;       // DbState::generation when connected; older means close_needed
  std::string login_error_;
  std::string login_sqlstate_;

 private:
  friend class Worker;  // set_state(), the one door for state changes
  ServerState state_ = ServerState::New;
  bool handle_login_message(uint8_t type, std::span<const uint8_t> body);
  bool handle_auth_request(std::span<const uint8_t> body);
  std::vector<std::pair<std::string, std::string>> login_params_;
  bool login_done_query_ = false;  // connect_query sent; its replies are swallowed
  std::unique_ptr<ScramClientSession> scram_;
};

}  // namespace pgsluice
