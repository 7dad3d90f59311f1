// Named prepared statements in transaction and statement pooling: the pooler-wide
// statement registry, each client's name map, and each server's LRU of what it holds.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common.h"

namespace pgsluice {

// One distinct statement: a Parse body without its name (query text, parameter types).
// Shared by every client that prepared the same thing; freed when nobody maps it.
struct StmtEntry {
  uint64_t id = 0;
  std::string server_name;  // stmt_server_name(id): its name on every server
  std::string body;         // Parse body after the statement name
  // Its query text may prepare or drop statements when run (sql_scan): running it makes
  // the server's statement set unverified (Server::unverify).
  bool touches_stmts = false;
  // PostgreSQL has accepted a Parse of it in pool `pool_uid` (Pool::uid): a client of that
  // pool that prepares the same text can be answered without a server
  // (Client::answer_parses). Per pool: a text valid in one database or for one role need
  // not be in another.
  void accept(uint64_t pool_uid) const;
  bool accepted(uint64_t pool_uid) const;

 private:
  mutable std::mutex mu_;
  mutable std::vector<uint64_t> accepted_;  // pool uids, a few at most
};

// The namespace of pgsluice's server-side statement names: "PGSLUICE_<16 random hex>_",
// drawn once per process, so that no client can guess a name (it can still read the names
// of the session it shares in pg_prepared_statements: see Server::unverify).
const std::string& stmt_namespace();
// The server-side name of statement `id`: stmt_namespace() + id.
std::string stmt_server_name(uint64_t id);

// The pooler-wide registry: one entry per distinct body, looked up at Parse time only.
class StmtRegistry {
 public:
  std::shared_ptr<const StmtEntry> get(std::string_view body);
  // The live entry for body, or null; never creates one.
  std::shared_ptr<const StmtEntry> find(std::string_view body);
  size_t size();  // live entries (for tests and stats)

 private:
  std::mutex mu_;
  uint64_t next_id_ = 0;
  std::unordered_map<std::string, std::weak_ptr<const StmtEntry>> by_body_;
};

StmtRegistry& stmt_registry();

// A client's statement names. Lives as long as the client; survives server changes.
class ClientStmts {
 public:
  const std::shared_ptr<const StmtEntry>* find(std::string_view name) const;
  void set(std::string_view name, std::shared_ptr<const StmtEntry> e);
  bool erase(std::string_view name);
  void clear() { map_.reset(); }
  size_t size() const { return map_ ? map_->size() : 0; }
  // The entry `id` under a client name whose name_tag() is `tag` (error path only: a scan).
  const StmtEntry* find_by_id(uint64_t id, int32_t tag, std::string_view* name) const;

 private:
  using Map =
      std::unordered_map<std::string, std::shared_ptr<const StmtEntry>, NameHash, std::equal_to<>>;
  // Allocated at the first statement: a client that names none (most idle clients) carries
  // one pointer instead of an empty map (ARCHITECTURE.md, memory per connection).
  std::unique_ptr<Map> map_;

 public:
  // Without cache_unnamed_statements: the client has an unnamed statement of its own
  // (its text in Client::Remap::unnamed_body), which PostgreSQL keeps across a Sync. After map_,
  // so that a Client's flags that follow fill the rest of the word.
  bool has_unnamed = false;
};

// A 31-bit fingerprint of a client's statement name, kept in a request instead of a copy
// of the name (see Server::process, error renaming).
inline int32_t name_tag(std::string_view name) {
  return static_cast<int32_t>(std::hash<std::string_view>{}(name)&0x7fffffff);
}

// The statements one server connection has prepared, most recently used first.
// Entries are added when the Parse is sent (so a pipeline does not send it twice) and
// removed again if PostgreSQL rejects or skips that Parse.
class ServerStmts {
 public:
  bool contains(uint64_t id) const { return index_.count(id) != 0; }
  // Marks id as used now; returns false if the server does not hold it. *verified: it was
  // prepared by pgsluice since the last unverify_all(), so its text is known to be ours.
  bool touch(uint64_t id, bool* verified = nullptr);
  // Adds e (a Parse of it is being sent: verified from now on).
  void add(std::shared_ptr<const StmtEntry> e);
  void remove(uint64_t id);
  // Some SQL may have dropped or replaced any statement here: each must be prepared again
  // (Close + Parse) before its next use, and is still counted (and evicted) meanwhile.
  void unverify_all() { epoch_++; }
  void unverify(uint64_t id) {
    auto it = index_.find(id);
    if (it != index_.end()) it->second.epoch = 0;
  }
  // A Parse for id was sent in segment `sync` (count of Syncs sent) and is not confirmed.
  void set_pending(uint64_t id, uint64_t sync) { pending_[id] = sync; }
  // PostgreSQL acknowledged the Parse of id, on a server of pool `pool_uid`.
  void confirm(uint64_t id, uint64_t pool_uid) {
    pending_.erase(id);
    auto it = index_.find(id);
    if (it == index_.end()) return;
    confirmed_.insert(id);
    (*it->second.it)->accept(pool_uid);
  }
  // PostgreSQL acknowledged a Parse of id on this server at some point.
  bool confirmed(uint64_t id) const { return confirmed_.count(id) != 0; }
  void drop_pending(uint64_t id) { pending_.erase(id); }
  // Unconfirmed, and sent before a Sync that precedes the current segment: if that Parse
  // failed, PostgreSQL skipped nothing for it in later segments, so it cannot be trusted.
  bool unconfirmed_before(uint64_t id, uint64_t sync) const {
    auto it = pending_.find(id);
    return it != pending_.end() && it->second != sync;
  }
  // server_check_prepared (Worker::check_prepared): marks the SQL-level statements held here
  // unverified (they are prepared again before their next use) and returns the query, for
  // PostgreSQL, that finds a row ("SELECT 1") when any other statement under pgsluice's
  // names was prepared by SQL. The text names no statement and not the namespace.
  std::string check_sql();
  // The least recently used entry, to evict when full.
  std::shared_ptr<const StmtEntry> lru() const;
  size_t size() const { return index_.size(); }
  void clear() {
    lru_.clear();
    index_.clear();
    pending_.clear();
    confirmed_.clear();
  }

 private:
  using List = std::list<std::shared_ptr<const StmtEntry>>;
  struct Slot {
    List::iterator it;
    uint64_t epoch;  // epoch_ when pgsluice last prepared it here (0: never trusted)
  };
  List lru_;  // front: most recent
  std::unordered_map<uint64_t, Slot> index_;
  std::unordered_map<uint64_t, uint64_t> pending_;  // id -> segment of its unconfirmed Parse
  std::unordered_set<uint64_t> confirmed_;
  uint64_t epoch_ = 1;
};

// Per-worker counters of the remapping (shown by the console).
struct PreparedStats {
  uint64_t client_parses = 0;  // named Parse messages from clients
  uint64_t server_parses = 0;  // Parse messages pgsluice sent (forwarded or injected)
  uint64_t hits = 0;           // a client's Parse/Bind/Describe found the statement ready
  uint64_t evictions = 0;      // Close sent to make room
  uint64_t replays = 0;        // segments replayed after 0A000 (cached plan changed)
};

// Replaces the first quoted occurrence of `from` with `to` in an error message, so a
// server-side name reads as the client's own ("prepared statement \"x\" ...").
std::string rename_in_message(std::string_view msg, std::string_view from, std::string_view to);

}  // namespace pgsluice

namespace pgsluice {

// What a client's query text may do to pgsluice's statements, from a scan of its bytes
// (comments, quotes and dollar quotes included: nothing is skipped). A text that names
// stmt_namespace() is refused; one that contains PREPARE, DEALLOCATE, DISCARD or EXECUTE as
// a word, or pg_prepared_statement, may drop, replace or read server-side statements (at top
// level, in a DO block, through dynamic SQL) and makes the server's statement set
// unverified. Case-insensitive. A text arriving in pieces is fed piece by piece.
struct SqlScan {
  enum : uint8_t { kNamesNamespace = 1, kTouchesStmts = 2 };
  void feed(std::string_view piece);
  void reset() {
    flags = 0;
    tail_.clear();
  }

 private:
  std::string tail_;  // the end of the previous piece (a match may span two pieces)

 public:
  uint8_t flags = 0;  // after tail_: fields that follow a SqlScan may fill the rest of its word
};
uint8_t sql_scan(std::string_view text);

// SQL-level PREPARE / EXECUTE / DEALLOCATE in a simple Query, found by a small lexer
// (no SQL parser): only a single statement that starts with one of the three keywords.
struct SqlPrepared {
  enum class Kind : uint8_t { None, Prepare, Execute, Deallocate };
  Kind kind = Kind::None;
  std::string name;       // folded to lower case unless it was double-quoted
  std::string types;      // PREPARE: "(int, text)" or empty
  std::string statement;  // PREPARE: the text after AS
  std::string args;       // EXECUTE: "(1, 'x')" or empty
};

// What the start of a query is, from the first bytes: -1 when more bytes are needed to
// tell, 0 when it is not PREPARE/EXECUTE/DEALLOCATE, 1 when it may be.
// `resume` (optional, in and out): where to start, and on -1 where the next call over a
// longer `text` (the same bytes and more) may start, so a query that trickles in is
// scanned once.
int sql_prepared_prefix(std::string_view text, bool complete, size_t* resume = nullptr);
// Parses a whole query; Kind::None when it is not one statement of the three kinds.
SqlPrepared parse_sql_prepared(std::string_view text);

// Registry key of an SQL-level statement (never a valid Parse body: it starts with \x01).
std::string sql_stmt_key(std::string_view types, std::string_view statement);
bool is_sql_stmt(const StmtEntry& e);
// "PREPARE \"PGSLUICE_<id>\" (types) AS statement" for an SQL-level entry.
std::string sql_prepare_text(const StmtEntry& e);

}  // namespace pgsluice
