// Session settings a client makes with SET and RESET (search_path, statement_timeout, role,
// ...): the lexer that finds them in SQL text, PostgreSQL's transaction rules that decide
// which of them persist, and the SQL that brings a server's settings to a client's. Pure.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgsluice {

class TrackedNames;
class StateRoutines;

// What one SQL statement does to session settings or to the transaction.
enum class StmtKind : uint8_t {
  Other,          // nothing pgsluice follows
  Set,            // SET [SESSION] name TO value; ROLE, SESSION AUTHORIZATION, SCHEMA, TIME ZONE
  Reset,          // RESET name; SET name TO DEFAULT; SET ROLE NONE; ...
  ResetAll,       // RESET ALL (role and session_authorization stay, as in PostgreSQL)
  DiscardAll,     // DISCARD ALL (RESET ALL and SET SESSION AUTHORIZATION DEFAULT)
  Local,          // SET LOCAL, SET TRANSACTION, SET CONSTRAINTS: gone at the transaction's end
  Unknown,        // changes settings in a way not followed (SET SESSION CHARACTERISTICS ...)
  Begin,          // BEGIN, START TRANSACTION
  Commit,         // COMMIT, END, PREPARE TRANSACTION
  Rollback,       // ROLLBACK, ABORT
  CommitChain,    // COMMIT AND CHAIN: a new transaction begins at once
  RollbackChain,  // ROLLBACK AND CHAIN
  Savepoint,      // SAVEPOINT name
  Release,        // RELEASE [SAVEPOINT] name
  RollbackTo,     // ROLLBACK TO [SAVEPOINT] name
};

struct SessionStmt {
  StmtKind kind = StmtKind::Other;
  // Set/Reset: the parameter's name in lower case (GUC names are case-insensitive);
  // Savepoint/Release/RollbackTo: the savepoint's name (folded as PostgreSQL folds it).
  std::string key;
  // Set: the statement that makes the setting again, with the client's own value text
  // (comments dropped); Reset: the statement that resets it.
  std::string sql;
};

// Set, Reset, ResetAll, DiscardAll or Unknown: the statement changes session settings.
inline bool changes_settings(StmtKind k) {
  return k == StmtKind::Set || k == StmtKind::Reset || k == StmtKind::ResetAll ||
         k == StmtKind::DiscardAll || k == StmtKind::Unknown;
}

// Whether `text` holds `needle` (given in lower case) in any case; an empty needle never.
bool contains_ci(std::string_view text, std::string_view needle);

// Splits `text` (a simple Query's or a Parse's SQL) into statements as PostgreSQL does
// (';' outside quotes, dollar quotes and comments; empty statements dropped) and tells
// what each does. `out` null: only the answer is wanted, nothing is allocated. Returns true
// when some statement changes session settings (changes_settings). `scs`: the client's
// standard_conforming_strings (off: a backslash escapes in '...').
bool lex_session_sql(std::string_view text, bool scs, std::vector<SessionStmt>* out);

// Session state pgsluice cannot follow (pinning.h): what a text may create, and whether
// it may release some. Reasons are bits (PinReason).
enum PinReason : uint8_t {
  kPinAdvisoryLock = 1,       // pg_advisory_lock[_shared], pg_try_advisory_lock[_shared]
  kPinTempTable = 2,          // CREATE TEMP TABLE/VIEW/SEQUENCE, SELECT ... INTO TEMP
  kPinHoldCursor = 4,         // DECLARE ... WITH HOLD
  kPinListen = 8,             // LISTEN
  kPinUntrackedSetting = 16,  // set_config(...), DO blocks
  kPinPrepare = 32,           // SQL PREPARE (only asked for when remapping is off)
  // A text pgsluice did not read (over 64 KiB) or could not judge (a call while the pool's
  // routines are not known): pinned until the check right after it tells what it left.
  kPinUnread = 64,
};
struct PinScan {
  uint8_t pins = 0;  // PinReason bits
  // kReleaseAny: a statement that may release some state (pg_advisory_unlock*, DROP,
  // DISCARD, CLOSE, UNLISTEN, RESET, DEALLOCATE; pg_try_advisory_lock*, set_config and
  // DO, whose effect the check right after tells); kReleaseTxEnd: COMMIT/ROLLBACK/END/ABORT
  // (a temporary table ON COMMIT DROP, or created in a transaction rolled back).
  uint8_t releases = 0;
  // kPinUntrackedSetting's details. `names`: the settings a set_config(name, ..., false)
  // with a literal name, or a DO block's SET, may have changed (lower case): the check reads
  // their values back and the client follows them from then on. `opaque`: a setting whose
  // name the text does not tell (a computed set_config name, dynamic SQL in a DO block):
  // the client stays pinned until its RESET ALL or DISCARD ALL. `dirty`: the server must be
  // reset (RESET ALL) before another client uses it (a DO block, an opaque setting).
  bool opaque = false;
  bool dirty = false;
  std::vector<std::string> names;
  // CREATE/ALTER/DROP of a function, procedure, trigger, view, rule, policy, table or
  // extension: which routines make state may have changed (StateRoutines, state_routines.h).
  bool catalog = false;
};
// Adds what `from` makes to `into` (names beyond kPinMaxNames make it opaque).
void pin_merge(PinScan& into, const PinScan& from);
inline constexpr uint8_t kReleaseAny = 1;
inline constexpr uint8_t kReleaseTxEnd = 2;
inline constexpr size_t kPinMaxNames = 16;  // more names in one client's check: opaque
// Reads `text` (a Query's or Parse's SQL) for the statements above, outside quotes, dollar
// quotes and comments. `sql_prepare`: SQL PREPARE pins too. Allocates only for names.
// `routines`: the pool's routines that may make state (null: none known); a call of one,
// or a statement naming a relation whose trigger, view, default or policy runs one, counts
// as its body.
PinScan scan_pins(std::string_view text, bool scs, bool sql_prepare,
                  const StateRoutines* routines = nullptr);
// The names a text calls (a word or quoted name before '(', lower case, each once), at most
// kMaxCallNames; *many when there were more.
inline constexpr size_t kMaxCallNames = 32;
void call_names(std::string_view text, bool scs, std::vector<std::string>& out, bool* many);
// A routine's body (PL/pgSQL or SQL: a DO block's, a function's): what it may make. `calls`
// receives the names (lower case) of what it calls.
void scan_routine_body(std::string_view body, PinScan& r, const StateRoutines* routines,
                       std::vector<std::string>* calls);
// The statement that gives the setting `key` the value `value` as set_config does (a
// value read back from PostgreSQL: any text, quoted whatever standard_conforming_strings).
std::string set_config_statement(std::string_view key, std::string_view value);

// A set of session settings: name -> the statement that makes it. Absent: the default.
class SessionSettings {
 public:
  struct Entry {
    std::string key;
    std::string sql;
  };
  // Applies a Set/Reset/ResetAll/DiscardAll.
  void apply(const SessionStmt& s);
  const Entry* find(std::string_view key) const;
  bool empty() const { return entries_.empty(); }
  const std::vector<Entry>& entries() const { return entries_; }
  bool operator==(const SessionSettings& o) const;

 private:
  void erase(std::string_view key);
  std::vector<Entry> entries_;
};

// "RESET \"key\"": the statement that resets the parameter `key` (quoted as an identifier).
std::string reset_statement(std::string_view key);

// The statements that make a server whose settings are `server` (null: none; `unknown`:
// not known, so everything is reset first) have the client's (null: none), each followed
// by ';'; empty when they already match. `reset_prefix` receives what must run before the
// reported parameters' SETs (varcache.h), `sql` what runs after them. `base`: the
// settings every server starts with (connect_query's SETs, Target::connect_settings);
// `client` and `server` hold what differs from it, and a setting taken away goes back to
// base's value rather than to PostgreSQL's default.
void settings_diff_sql(const SessionSettings* client, const SessionSettings* server, bool unknown,
                       std::string& reset_prefix, std::string& sql,
                       const SessionSettings* base = nullptr);

// What the console shows of a setting (SHOW CLIENT_STATE): its value as the client wrote
// it for names on a list of harmless ones (search_path, timeouts, role, ...), "(hidden)"
// for any other, whose value may be a secret (a custom setting holding a key or token).
std::string shown_setting(const SessionSettings::Entry& e);

// Whether `name` is left to the reported-parameter tracking (varcache.h): a tracked name
// that PostgreSQL reports with ParameterStatus.
bool reported_and_tracked(const TrackedNames* tracked, std::string_view name);

// One client's session settings, followed through its transactions. The client tells it
// what it sends (note_*), its server what comes back (on_reply); it applies PostgreSQL's
// rules: changes in a transaction block persist at COMMIT and vanish at ROLLBACK (or
// ROLLBACK TO an earlier savepoint), SET LOCAL never persists, an error in an implicit
// transaction (a multi-statement query, an extended-protocol segment) undoes all of it.
// Allocated at a client's first statement that changes settings.
class SessionState {
 public:
  explicit SessionState(const TrackedNames* tracked, bool in_block)
      : tracked_(tracked), in_block_(in_block) {}

  // A Parse of statement `name` with text `text`; Bind of `portal` from `stmt`; Close.
  void note_parse(std::string_view name, const std::vector<SessionStmt>& stmts);
  void note_bind(std::string_view portal, std::string_view stmt);
  void note_close(uint8_t kind, std::string_view name);
  // Whether a Query/Execute/Sync sent now must be followed (note_unit, and its request
  // marked so its answers come back here): true while anything is pending or open.
  bool busy() const;
  // A simple Query with its statements; an Execute of `portal` (null: its name was not
  // read); a Sync. Their answers come back through on_reply in the same order.
  void note_query(std::vector<SessionStmt> stmts, bool lexed);
  // note_execute returns false when the Execute need not be followed.
  bool note_execute(const std::string_view* portal);
  void note_sync();
  // A message from PostgreSQL ('C', 'E', 'I', 's', 'Z'; body read for 'C' and 'Z').
  // `front`: the type of the followed request it answers (0: an unfollowed one).
  void on_reply(uint8_t type, std::span<const uint8_t> body, uint8_t front);

  // The client parted from its server. Anything still in flight died with that server's
  // session (a server not clean at release is closed; PostgreSQL rolls its transaction
  // back), so an open transaction's changes are dropped.
  void unlinked();

  const SessionSettings& settings() const { return committed_; }
  // The setting `key` has `sql`'s value on the server now (read back by the pinning check
  // between transactions); empty `sql`: the setting does not exist there.
  void adopt(const std::string& key, std::string sql);
  // RESET ALL / DISCARD ALL committed so far (an opaque pin ends at the next one).
  uint64_t resets() const { return resets_; }
  // The settings could not be followed exactly (a statement whose effect is unknown):
  // the server must be reset before another client uses it. Cleared by take_lost().
  bool take_lost() {
    bool l = lost_;
    lost_ = false;
    return l;
  }
  bool lost() const { return lost_; }
  uint64_t changes() const { return changes_; }  // settings committed so far (console)

 private:
  struct Unit {
    uint8_t type;  // 'Q', 'E' or 'S'
    bool lexed = true;
    std::vector<SessionStmt> stmts;
    size_t next = 0;  // Q: statements completed so far
  };
  // A statement completed (its CommandComplete, with `tag`).
  void completed(const SessionStmt& s, std::string_view tag);
  void change(const SessionStmt& s);
  void error();
  void end_unit(char status);
  void commit(const SessionStmt& s);
  void commit_tx();
  void rollback_tx();
  void mark_lost(const char* why);
  const SessionStmt* stmt_of(std::string_view portal) const;

  const TrackedNames* tracked_;
  SessionSettings committed_;
  bool in_block_ = false;
  bool aborted_ = false;
  std::vector<SessionStmt> implicit_;  // changes of the open implicit transaction
  std::vector<SessionStmt> journal_;   // changes of the open transaction block
  std::vector<std::pair<std::string, size_t>> savepoints_;  // name, journal_ size then
  std::deque<Unit> units_;
  // Prepared statements and portals whose statement is not Other.
  std::vector<std::pair<std::string, SessionStmt>> stmts_;
  std::vector<std::pair<std::string, SessionStmt>> portals_;
  bool lost_ = false;
  uint64_t changes_ = 0;
  uint64_t resets_ = 0;
};

}  // namespace pgsluice
