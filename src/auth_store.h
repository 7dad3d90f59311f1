// auth_cache_file: the SQLite file that keeps auth_query's verifiers across restarts, and its
// writer thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

struct sqlite3;
struct sqlite3_stmt;

namespace pgsluice {

// One cached verifier. `scope` says which auth_query found it (opaque; any bytes but NUL).
struct StoredSecret {
  std::string scope;
  std::string user;
  std::string secret;      // as auth_query returned it (md5..., SCRAM-SHA-256$..., or empty)
  int64_t fetched_at = 0;  // unix seconds (wall clock) when PostgreSQL returned it
};

// Bounds of a row; a row outside them is neither written nor loaded.
inline constexpr size_t kAuthStoreMaxUser = 256;
inline constexpr size_t kAuthStoreMaxSecret = 8192;
inline constexpr size_t kAuthStoreMaxScope = 8192;
// PRAGMA user_version of the file's schema.
inline constexpr int kAuthStoreSchemaVersion = 1;

// True if `s` may be stored: non-empty user, sizes within the bounds above, no NUL in scope or
// user, and a secret that is empty, an md5 verifier or a SCRAM verifier (never a plain-text
// password).
bool auth_store_row_ok(const StoredSecret& s);

class AuthStore {
 public:
  // Opens or creates the file at `path` safely (O_NOFOLLOW, a regular file owned by this user,
  // mode 0600) and prepares the schema. Caller's thread. nullptr with *err set when the file
  // cannot be used at all. A file that exists but is not a valid cache (corrupt, not SQLite,
  // wrong schema) is logged, moved aside to `path + ".corrupt"` and replaced by a new one.
  static std::unique_ptr<AuthStore> open(const std::string& path, std::string* err);
  ~AuthStore();  // writes what is queued, stops the writer thread, closes the database
  AuthStore(const AuthStore&) = delete;
  AuthStore& operator=(const AuthStore&) = delete;

  // Every valid row, for loading the memory cache at start. Caller's thread; before start().
  std::vector<StoredSecret> load();
  // Starts the writer thread. After this only that thread touches SQLite.
  void start();
  // Thread-safe, never blocks on disk: a mutex, a queue, a wake-up of the writer.
  void put(StoredSecret s);  // insert or replace (scope, user)
  void erase(const std::string& scope, const std::string& user);
  void erase_user(const std::string& user);  // every scope
  void erase_all();
  // Blocks until everything queued before the call is written. False if a write failed since
  // open (the error was logged). Before start(), writes the queue on the caller's thread.
  bool sync();
  const std::string& path() const { return path_; }

 private:
  struct DbClose {
    void operator()(sqlite3* db) const;
  };
  struct StmtFinalize {
    void operator()(sqlite3_stmt* st) const;
  };
  using Db = std::unique_ptr<sqlite3, DbClose>;
  using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalize>;

  enum class OpKind : uint8_t { Put, Erase, EraseUser, EraseAll };
  struct Op {
    OpKind kind;
    StoredSecret row;  // Put: all of it; Erase: scope and user; EraseUser: user
  };

  enum class OpenOutcome : uint8_t { Ok, Corrupt, Unusable };

  AuthStore() = default;
  // One attempt at opening `path_`: Corrupt means "move it aside and try again".
  OpenOutcome open_once(std::string* err);
  OpenOutcome prepare_schema(std::string* err);
  void close_db();
  void enqueue(Op op);
  void writer_main();
  // Writes `ops` in one transaction. False (logged) on failure. Writer or caller thread.
  bool write_batch(const std::vector<Op>& ops);
  bool exec_op(const Op& op);
  bool prepare_writes();

  std::string path_;
  Fd fd_;  // our own descriptor of the file, kept open until after SQLite closes it
  Db db_;
  Stmt put_st_, erase_st_, erase_user_st_, erase_all_st_;

  std::mutex io_mu_;              // one user of the connection at a time (load, a batch, close)
  std::mutex mu_;                 // the queue and the counters below
  std::condition_variable wake_;  // writer: something queued, or stop
  std::condition_variable done_;  // sync(): a batch was written
  std::vector<Op> queue_;
  uint64_t queued_seq_ = 0;   // ops ever queued
  uint64_t written_seq_ = 0;  // ops ever written (or failed) by a finished batch
  bool stop_ = false;
  bool failed_ = false;  // a write failed since open
  bool started_ = false;
  bool failing_ = false;  // the last batch failed (so a run of failures logs once)
  std::thread writer_;
};

}  // namespace pgsluice
