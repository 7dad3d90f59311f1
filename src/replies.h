// The reply bookkeeping of one server connection: the requests still owed an answer, what
// each answer belongs to, and what to do with it (forward, swallow, rewrite, replay,
// close). Pure: no sockets, no event loop, no globals; the fuzzer and unit tests drive it.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "prepared.h"

namespace pgsluice {

// What to do with the answer to a request.
enum class ReqAction : uint8_t {
  Forward,  // the client's own request: its answer goes to the client
  Skip,     // injected by pgsluice (Parse, eviction Close): swallow its answer
  Fake,     // answered by pgsluice itself when it reaches the front (ParseComplete, CloseComplete)
};

// RequestQueue::renames source of an error pgsluice raises itself in place of PostgreSQL's
// (42501, the rename's target is the message): see Client::remap.
inline const std::string kRefused = std::string("\x01refused");

// Request::tag of a client's unnamed Parse without cache_unnamed_statements (see
// Client::ensure_unnamed).
constexpr int32_t kUnnamedParse = -2;

// One request sent to a server whose answer is still due.
struct Request {
  uint8_t type = 0;  // frontend message type: 'Q','P','B','D','E','C','S','F'
  ReqAction action = ReqAction::Forward;
  uint64_t stmt = 0;    // P: the statement it prepares; C(Skip): the statement it evicts
  int32_t rename = -1;  // index in RequestQueue::renames: show an error under the client's name
  int32_t client_name = -1;  // P/Q/C: index in RequestQueue::undos (the client's name it changed)
  int32_t tag = -1;          // Q(Fake): index in RequestQueue::renames of the CommandComplete tag;
                             // B/D: name_tag() of the client's statement name
  uint8_t swallow_c = 0;     // Q: CommandCompletes of statements pgsluice prepended
  bool sess = false;         // Q/E/S: its answers go to the client's SessionState too
};

// What a client's Parse/PREPARE/Close changed in its name map: the name and what it mapped
// to before, undone (latest first) if PostgreSQL rejects or skips that request.
struct NameUndo {
  std::string name;
  std::shared_ptr<const StmtEntry> prev;  // null: the name was not mapped (unless `kept`)
  // The request left the name on the entry it had (an unnamed Parse of the same text
  // again): nothing to put back, and no copy of the entry's shared count to take and drop
  // in every transaction (that count is shared by every worker's clients of that text).
  bool kept = false;
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
  // Index i refers to an entry still held (for checks: the fuzzer).
  bool valid(int32_t i) const {
    return i >= 0 && static_cast<size_t>(i) >= base_ + head_ &&
           static_cast<size_t>(i) - base_ < items_.size();
  }
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
  // The request pushed last is followed by the client's SessionState (session_state.h).
  void flag_back() {
    if (head_ < q_.size()) q_.back().sess = true;
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

// The verdict on one server message received while linked to a client.
struct ReplyVerdict {
  enum class Kind : uint8_t {
    Forward,  // pass the message to the client unchanged
    Swallow,  // drop it (the answer to something pgsluice injected)
    Rewrite,  // send `rewritten` instead (an error renamed to the client's statement name)
    Replay,   // drop it, close `replay_stmt` and run the client's saved segment again
    Close,    // a protocol violation by the server: close it (`why`)
  };
  Kind kind = Kind::Forward;
  bool ready = false;   // a ReadyForQuery: the oldest query (and maybe transaction) ended
  int8_t copy_in = -1;  // the client's COPY IN state changes: 0 ended, 1 started (-1: no change)
  uint64_t replay_stmt = 0;
  std::string rewritten;
  const char* why = "";
};

class ReplyBook {
 public:
  // Which messages the book must see whole (their body): the ones it reads or may swallow.
  bool needs_whole(uint8_t type) const {
    return type == 'Z' || type == 'S' || type == 'C' || type == '1' || type == '3' ||
           (type == 'E' && !queue_.empty() &&
            (queue_.front().rename >= 0 || queue_.front().stmt != 0));
  }
  // Decides what to do with one message from PostgreSQL while a client is linked, and
  // updates the bookkeeping. `body` is the whole body when needs_whole(type), else empty.
  // `names` is the linked client's statement map (the undo log restores names in it);
  // `segment_saved`: the client kept a copy of its current segment (0A000 replay).
  ReplyVerdict on_reply(uint8_t type, std::span<const uint8_t> body, ClientStmts& names,
                        bool segment_saved);
  // Answers the Fake requests now at the front of the queue (in order) into `out`
  // (nothing when `names` is null: no client to answer).
  void take_fakes(std::string& out, ClientStmts* names);

  // A request of an earlier, unanswered segment changed the client's name `name`.
  bool name_unresolved(std::string_view name) const;
  // Records what a client's name mapped to before a Parse/PREPARE/Close changed it.
  // Each returns an index for one request's Request::client_name / rename / tag; the
  // entry lives until that request is answered (RequestQueue::pop).
  int add_undo(std::string_view name, std::shared_ptr<const StmtEntry> prev) {
    return queue_.undos.add(NameUndo{std::string(name), std::move(prev)});
  }
  // The same for a request that leaves `name` mapped as it is (NameUndo::kept).
  int add_undo_kept(std::string_view name) {
    return queue_.undos.add(NameUndo{std::string(name), nullptr, true});
  }
  int add_rename(std::string from, std::string to) {
    return queue_.renames.add(std::make_pair(std::move(from), std::move(to)));
  }
  // Undoes the bookkeeping of a request PostgreSQL skipped or rejected after an error.
  // `failed`: this request raised the error; otherwise PostgreSQL skipped it.
  void unwind(const Request& r, bool failed, ClientStmts* names);
  // Unwinds queued requests from the front up to (not including) the next Sync, Query or
  // FunctionCall, latest first; `front_failed`: the front raised the error.
  void unwind_to_sync(bool front_failed, ClientStmts* names);
  // The client ran (or is about to run) SQL that may have dropped, replaced or created
  // statements under pgsluice's names (sql_scan, a DEALLOCATE ALL / DISCARD ALL tag, a 26000
  // or 42P05 for a statement pgsluice knew): forget what this server holds, and from now on
  // precede every statement pgsluice prepares here with a Close (stale_), so a statement is
  // always prepared afresh from its own text before it is used again.
  void unverify() {
    stmts_.unverify_all();
    stale_ = true;
  }
  // Forgets everything owed (the server is reset or given back clean).
  void clear_requests() { queue_.clear(); }  // and its renames and undos

  char tx_ = 'I';       // status byte of the last ReadyForQuery
  RequestQueue queue_;  // client requests awaiting answers
  ServerStmts stmts_;   // named statements prepared on this server (remapping)
  std::unordered_map<uint64_t, std::shared_ptr<const StmtEntry>> evicting_;  // Close in flight
  // An extended-protocol request failed: PostgreSQL ignores every message up to the next
  // Sync (simple queries too), so none of them gets an answer or a fake one.
  bool skip_to_sync_ = false;
  bool retry_pending_ = false;  // a 0A000 was swallowed; replay the segment at its ReadyForQuery
  bool retried_ = false;        // the current segment was replayed once already
  uint64_t retry_stmt_ = 0;
  uint64_t seg_out_ = 0;     // bytes sent to the client since the last ReadyForQuery
  uint64_t syncs_sent_ = 0;  // Syncs forwarded: numbers the extended-protocol segments
  bool unsynced_ = false;    // extended-protocol messages sent since the client's last Sync
  bool copy_ = false;  // PostgreSQL is in COPY IN/OUT/BOTH (from 'G'/'H'/'W' to its 'C' or 'E')
  // Statements unknown to pgsluice may exist here under its names (see unverify()).
  bool stale_ = false;
  // Whose unnamed statement PostgreSQL holds here (without cache_unnamed_statements): the
  // client's id_ and its Client::unnamed_gen_ when it was parsed here; 0: unknown.
  uint64_t unnamed_client_ = 0;
  uint64_t unnamed_gen_ = 0;
  // Whose unnamed statement PostgreSQL now holds here (0: unknown, or none).
  void note_unnamed(uint64_t client, uint64_t gen) {
    unnamed_client_ = client;
    unnamed_gen_ = gen;
  }
  uint64_t pool_uid_ = 0;  // Pool::uid of the server's pool (statement acceptance is per pool)
};

// Rebuilds an ErrorResponse with the server-side statement name replaced in its message.
std::string rename_error(std::span<const uint8_t> body, std::string_view from, std::string_view to);

}  // namespace pgsluice
