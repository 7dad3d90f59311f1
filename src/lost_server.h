// A server lost while linked to a client in transaction or statement pooling: what the
// server side reports, and the pure pieces of the client's answer (the emulated aborted
// transaction block lives in Client, lost_server.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgsluice {

// What a server that closed (EOF, a send or read error, a FATAL from PostgreSQL) leaves its
// linked client owing, as the server's bookkeeping saw it (Worker::server_lost).
struct LostServer {
  std::string error;      // PostgreSQL's ErrorResponse made ERROR (empty: none came; 08006)
  char tx = 'I';          // status of the last ReadyForQuery the client was sent
  size_t cycles = 0;      // Queries, FunctionCalls and Syncs sent and still unanswered
  bool tail = false;      // extended messages sent after the last of them (their Sync to come)
  bool answered = false;  // PostgreSQL already answered the first of them with an error
};

// The statement a Query or Parse text is, as far as an aborted transaction block cares
// (PostgreSQL's IsTransactionExitStmt and what it then does).
enum class TxExit : uint8_t {
  Other,        // anything else: 25P02 in an aborted block
  Empty,        // no statement at all (only blanks, comments, semicolons)
  End,          // ROLLBACK, ABORT, COMMIT, END [WORK|TRANSACTION] [AND NO CHAIN],
                // PREPARE TRANSACTION 'gid': the block ends, tag "ROLLBACK"
  Chain,        // the same with AND CHAIN: a new block would begin (refused after a loss)
  ToSavepoint,  // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name: 3B001 after a loss
};

// What a client keeps after its server was lost (Client::lost_), until the messages it
// owes are done and its emulated block has ended.
struct LostState {
  std::string error;        // ErrorResponse owed to the next request (idle in a block)
  char tx = 0;              // 0: no block; 'E': aborted block; 'I': rolled back, until the Sync
  bool skip = false;        // skipping to a Sync after an error (extended protocol)
  bool copy = false;        // dropping the client's COPY data
  bool portal_set = false;  // `portal` was bound to an exit statement
  uint64_t drop = 0;        // bytes of the current message still to drop
  // Without remapping: the statements prepared meanwhile (name, text), a few at most.
  std::vector<std::pair<std::string, std::string>> names;
  std::string portal;
  TxExit portal_kind = TxExit::Other;
  std::string portal_savepoint;
  bool done() const { return tx == 0 && !skip && !copy && error.empty() && drop == 0; }
};

// Classifies one SQL text (a whole simple Query or a Parse's text). `savepoint` receives the
// savepoint's name (case-folded as PostgreSQL does) for ToSavepoint. Only one statement is
// recognised: a text with more after the first statement is Other.
TxExit classify_tx_exit(std::string_view sql, std::string* savepoint = nullptr);

// PostgreSQL's ErrorResponse body with its severity (fields S and V) made ERROR: a whole
// 'E' message to send to the client.
std::string error_as_error(std::span<const uint8_t> body);

// True when an ErrorResponse body's severity is FATAL or PANIC (the session ends).
bool error_is_fatal(std::span<const uint8_t> body);

}  // namespace pgsluice
