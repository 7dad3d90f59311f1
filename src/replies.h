// The reply bookkeeping of one server connection: the requests still owed an answer, what
// each answer belongs to, and what to do with it (forward, swallow, rewrite, replay,
// close). Pure: no sockets, no event loop, no globals; the fuzzer and unit tests drive it.
#pragma once

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

// ReplyBook::renames_ source of an error pgsluice raises itself in place of PostgreSQL's
// (42501, the rename's target is the message): see Client::remap.
inline const std::string kRefused = std::string("\x01refused");

// Request::tag of a client's unnamed Parse without cache_unnamed_statements (see
// Client::ensure_unnamed).
constexpr int32_t kUnnamedParse = -2;

// One request sent to a server whose answer is still due.
struct Request {
  uint8_t type = 0;  // frontend message type: 'Q','P','B','D','E','C','S','F'
  ReqAction action = ReqAction::Forward;
  uint64_t stmt = 0;         // P: the statement it prepares; C(Skip): the statement it evicts
  int32_t rename = -1;       // index in ReplyBook::renames_: show an error under the client's name
  int32_t client_name = -1;  // P/Q/C: index in ReplyBook::undos_ (the client's name it changed)
  int32_t tag = -1;          // Q(Fake): index in ReplyBook::renames_ of the CommandComplete tag;
                             // B/D: name_tag() of the client's statement name
  uint8_t swallow_c = 0;     // Q: CommandCompletes of statements pgsluice prepended
};

// The requests sent to a server whose answers are still due, oldest first.
class RequestQueue {
 public:
  void push(uint8_t t) { q_.push_back(Request{t, ReqAction::Forward, 0, -1, -1, -1, 0}); }
  void push(const Request& r) { q_.push_back(r); }
  bool empty() const { return head_ == q_.size(); }
  const Request& front() const { return q_[head_]; }
  Request& front() { return q_[head_]; }
  uint8_t front_type() const { return q_[head_].type; }
  void pop() {
    if (++head_ == q_.size()) {
      q_.clear();
      head_ = 0;
    }
  }
  size_t size() const { return q_.size() - head_; }
  const Request& at(size_t i) const { return q_[head_ + i]; }
  void clear() {
    q_.clear();
    head_ = 0;
  }
  // True when the only Sync queued is the last entry (one segment in flight).
  bool single_segment() const {
    for (size_t i = head_; i < q_.size(); i++)
      if (q_[i].type == 'S') return i + 1 == q_.size();
    return false;
  }
  // Drops every 'S' after the front entry (Syncs the server swallows during COPY IN).
  void drop_syncs_after_front();

 private:
  std::vector<Request> q_;
  size_t head_ = 0;
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
  int add_undo(std::string_view name, std::shared_ptr<const StmtEntry> prev) {
    undos_.push_back(NameUndo{std::string(name), std::move(prev)});
    return static_cast<int>(undos_.size() - 1);
  }
  int add_rename(std::string from, std::string to) {
    renames_.emplace_back(std::move(from), std::move(to));
    return static_cast<int>(renames_.size() - 1);
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
  void clear_requests() {
    queue_.clear();
    renames_.clear();
    undos_.clear();
  }

  char tx_ = 'I';       // status byte of the last ReadyForQuery
  RequestQueue queue_;  // client requests awaiting answers
  ServerStmts stmts_;   // named statements prepared on this server (remapping)
  std::unordered_map<uint64_t, std::shared_ptr<const StmtEntry>> evicting_;  // Close in flight
  std::vector<std::pair<std::string, std::string>> renames_;  // server name -> client name
  // The client's name changes of the requests in flight, undone (latest first) for the
  // requests PostgreSQL rejected or skipped.
  struct NameUndo {
    std::string name;
    std::shared_ptr<const StmtEntry> prev;  // null: the name was not mapped
  };
  std::vector<NameUndo> undos_;
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
  uint64_t pool_uid_ = 0;  // Pool::uid of the server's pool (statement acceptance is per pool)
};

// Rebuilds an ErrorResponse with the server-side statement name replaced in its message.
std::string rename_error(std::span<const uint8_t> body, std::string_view from, std::string_view to);

}  // namespace pgsluice
