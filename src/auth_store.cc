// auth_cache_file: the SQLite file that keeps auth_query's verifiers across restarts, and its
// writer thread.
#include "auth_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "log.h"
#include "password.h"

namespace pgsluice {

namespace {

constexpr int kBusyTimeoutMs = 300;

// The one table. Its text is compared with sqlite_master's on open: anything else is not ours.
constexpr const char* kCreateTable =
    "CREATE TABLE secrets (scope BLOB NOT NULL, user_name BLOB NOT NULL, secret BLOB NOT NULL, "
    "fetched_at INTEGER NOT NULL, PRIMARY KEY (scope, user_name)) WITHOUT ROWID";

// Files SQLite keeps next to the database; a leftover one is replayed into the database.
constexpr const char* kCompanions[] = {"-wal", "-shm", "-journal"};

bool is_corruption(int rc) {
  int primary = rc & 0xff;
  return primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT;
}

std::string errno_text(int e) {
  return std::strerror(e);
}

std::string db_error(sqlite3* db, int rc) {
  std::string msg = sqlite3_errstr(rc);
  if (db != nullptr) {
    const char* m = sqlite3_errmsg(db);
    if (m != nullptr && msg != m) msg += std::string(": ") + m;
  }
  return msg;
}

// Runs a statement that returns at most one row and keeps its first column as text.
int query_one(sqlite3* db, const char* sql, std::string* out) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(raw);
  if (rc == SQLITE_ROW) {
    const unsigned char* t = sqlite3_column_text(raw, 0);
    int n = sqlite3_column_bytes(raw, 0);
    if (out != nullptr) {
      out->assign(t != nullptr ? reinterpret_cast<const char*>(t) : "",
                  n > 0 ? static_cast<size_t>(n) : 0);
    }
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    if (out != nullptr) out->clear();
    rc = SQLITE_OK;
  }
  sqlite3_finalize(raw);
  return rc;
}

// A companion file left by an earlier run must be ours too: SQLite would open and replay it.
bool check_companion(const std::string& name, std::string* err) {
  struct stat st;
  if (::lstat(name.c_str(), &st) != 0) {
    if (errno == ENOENT) return true;
    *err = "auth_cache_file: cannot check " + name + ": " + errno_text(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *err = "auth_cache_file: " + name + " is not a regular file (refused)";
    return false;
  }
  if (st.st_uid != ::geteuid()) {
    *err = "auth_cache_file: " + name + " is not owned by the user pgsluice runs as (uid " +
           std::to_string(::geteuid()) + ", file uid " + std::to_string(st.st_uid) + ")";
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    Fd f(::open(name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (!f.valid() || ::fchmod(f.get(), 0600) != 0) {
      *err = "auth_cache_file: cannot set mode 0600 on " + name + ": " + errno_text(errno);
      return false;
    }
    LOG_WARN("auth_cache_file %s: had mode %04o, set to 0600", name.c_str(),
             static_cast<unsigned>(st.st_mode & 07777));
  }
  return true;
}

void bind_bytes(sqlite3_stmt* st, int idx, const std::string& s) {
  sqlite3_bind_blob(st, idx, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

// A BLOB or TEXT column as bytes; false for any other type.
bool column_bytes(sqlite3_stmt* st, int col, size_t max, std::string* out) {
  int type = sqlite3_column_type(st, col);
  if (type != SQLITE_BLOB && type != SQLITE_TEXT) return false;
  const void* p = sqlite3_column_blob(st, col);
  int n = sqlite3_column_bytes(st, col);
  if (n < 0 || static_cast<size_t>(n) > max) return false;
  out->assign(p != nullptr ? static_cast<const char*>(p) : "", static_cast<size_t>(n));
  return true;
}

}  // namespace

bool auth_store_row_ok(const StoredSecret& s) {
  if (s.user.empty() || s.user.size() > kAuthStoreMaxUser) return false;
  if (s.scope.size() > kAuthStoreMaxScope || s.secret.size() > kAuthStoreMaxSecret) return false;
  if (s.user.find('\0') != std::string::npos || s.scope.find('\0') != std::string::npos) {
    return false;
  }
  return s.secret.empty() || secret_kind(s.secret) != SecretKind::Plain;
}

void AuthStore::DbClose::operator()(sqlite3* db) const {
  sqlite3_close_v2(db);
}
void AuthStore::StmtFinalize::operator()(sqlite3_stmt* st) const {
  sqlite3_finalize(st);
}

std::unique_ptr<AuthStore> AuthStore::open(const std::string& path, std::string* err) {
  err->clear();
  if (path.empty()) {
    *err = "auth_cache_file: empty path";
    return nullptr;
  }
  std::unique_ptr<AuthStore> store(new AuthStore());
  store->path_ = path;
  OpenOutcome out = store->open_once(err);
  if (out == OpenOutcome::Corrupt) {
    // Not a cache we can read: keep it for inspection and start anew.
    std::string why = *err;
    err->clear();
    store->close_db();
    const std::string aside = path + ".corrupt";
    if (::rename(path.c_str(), aside.c_str()) != 0) {
      *err = "auth_cache_file " + path + ": " + why + "; cannot move it to " + aside + ": " +
             errno_text(errno);
      return nullptr;
    }
    for (const char* suffix : kCompanions) {
      std::string from = path + suffix;
      std::string to = aside + suffix;
      if (::rename(from.c_str(), to.c_str()) != 0 && errno != ENOENT) {
        ::unlink(from.c_str());
      }
    }
    LOG_WARN("auth_cache_file %s: %s; moved aside to %s and created anew", path.c_str(),
             why.c_str(), aside.c_str());
    out = store->open_once(err);
    if (out == OpenOutcome::Corrupt) {
      *err = "auth_cache_file " + path + ": a new file is not usable either: " + *err;
      return nullptr;
    }
  }
  if (out != OpenOutcome::Ok) return nullptr;
  return store;
}

void AuthStore::close_db() {
  put_st_.reset();
  erase_st_.reset();
  erase_user_st_.reset();
  erase_all_st_.reset();
  db_.reset();
  fd_.reset();
}

AuthStore::OpenOutcome AuthStore::open_once(std::string* err) {
  const char* p = path_.c_str();
  int fd = ::open(p, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == ELOOP) {
      *err = "auth_cache_file " + path_ + ": is a symbolic link (refused)";
    } else {
      *err = "auth_cache_file " + path_ + ": cannot open: " + errno_text(errno);
    }
    return OpenOutcome::Unusable;
  }
  fd_.reset(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *err = "auth_cache_file " + path_ + ": fstat: " + errno_text(errno);
    return OpenOutcome::Unusable;
  }
  if (!S_ISREG(st.st_mode)) {
    *err = "auth_cache_file " + path_ + ": not a regular file (refused)";
    return OpenOutcome::Unusable;
  }
  if (st.st_uid != ::geteuid()) {
    *err = "auth_cache_file " + path_ + ": not owned by the user pgsluice runs as (uid " +
           std::to_string(::geteuid()) + ", file uid " + std::to_string(st.st_uid) + ")";
    return OpenOutcome::Unusable;
  }
  if ((st.st_mode & 077) != 0) {
    if (::fchmod(fd, 0600) != 0) {
      *err = "auth_cache_file " + path_ + ": cannot set mode 0600: " + errno_text(errno);
      return OpenOutcome::Unusable;
    }
    LOG_WARN("auth_cache_file %s: had mode %04o, set to 0600", p,
             static_cast<unsigned>(st.st_mode & 07777));
  }
  for (const char* suffix : kCompanions) {
    if (!check_companion(path_ + suffix, err)) return OpenOutcome::Unusable;
  }

  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(
      p, &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) {
    if (raw != nullptr && sqlite3_extended_errcode(raw) == SQLITE_CANTOPEN_SYMLINK) {
      // SQLITE_OPEN_NOFOLLOW refuses a link anywhere on the path, not only the last name.
      *err = "auth_cache_file " + path_ +
             ": a directory on the path is a symbolic link (refused; give the real path)";
    } else {
      *err = "auth_cache_file " + path_ + ": " + db_error(raw, rc);
    }
    return OpenOutcome::Unusable;
  }
  sqlite3_extended_result_codes(raw, 1);
  // The file SQLite opened must be the one checked above.
  struct stat now;
  if (::lstat(p, &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
    *err = "auth_cache_file " + path_ + ": the file changed while being opened (refused)";
    return OpenOutcome::Unusable;
  }
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);

  std::string answer;
  rc = query_one(raw, "PRAGMA quick_check", &answer);
  if (rc != SQLITE_OK) {
    *err = "quick_check: " + db_error(raw, rc);
    return is_corruption(rc) ? OpenOutcome::Corrupt : OpenOutcome::Unusable;
  }
  if (answer != "ok") {
    *err = "quick_check failed";
    return OpenOutcome::Corrupt;
  }
  rc = query_one(raw, "PRAGMA journal_mode=WAL", &answer);
  if (rc != SQLITE_OK) {
    *err = "journal_mode=WAL: " + db_error(raw, rc);
    if (is_corruption(rc)) return OpenOutcome::Corrupt;
    *err = "auth_cache_file " + path_ + ": " + *err;
    return OpenOutcome::Unusable;
  }
  if (answer != "wal") {
    *err = "auth_cache_file " + path_ + ": journal_mode=WAL refused (" + answer + ")";
    return OpenOutcome::Unusable;
  }
  rc = sqlite3_exec(raw, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    *err = "auth_cache_file " + path_ + ": synchronous=NORMAL: " + db_error(raw, rc);
    return OpenOutcome::Unusable;
  }
  OpenOutcome out = prepare_schema(err);
  if (out != OpenOutcome::Ok) return out;
  if (!prepare_writes()) {
    *err = "auth_cache_file " + path_ + ": " + db_error(raw, sqlite3_errcode(raw));
    return OpenOutcome::Unusable;
  }
  return OpenOutcome::Ok;
}

AuthStore::OpenOutcome AuthStore::prepare_schema(std::string* err) {
  sqlite3* db = db_.get();
  std::string version;
  int rc = query_one(db, "PRAGMA user_version", &version);
  std::string table;
  if (rc == SQLITE_OK) {
    rc = query_one(db, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'secrets'",
                   &table);
  }
  std::string others;
  if (rc == SQLITE_OK) {
    rc = query_one(db, "SELECT count(*) FROM sqlite_master", &others);
  }
  if (rc != SQLITE_OK) {
    *err = "reading the schema: " + db_error(db, rc);
    if (is_corruption(rc)) return OpenOutcome::Corrupt;
    *err = "auth_cache_file " + path_ + ": " + *err;
    return OpenOutcome::Unusable;
  }
  if (version == "0" && others == "0") {
    // A new file: create the table and stamp the version in one transaction.
    std::string sql = std::string("BEGIN IMMEDIATE; ") + kCreateTable +
                      "; PRAGMA user_version = " + std::to_string(kAuthStoreSchemaVersion) +
                      "; COMMIT";
    rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      *err = "auth_cache_file " + path_ + ": creating the table: " + db_error(db, rc);
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return is_corruption(rc) ? OpenOutcome::Corrupt : OpenOutcome::Unusable;
    }
    return OpenOutcome::Ok;
  }
  if (version == "0") {
    *err = "not an auth cache (tables of another schema)";
    return OpenOutcome::Corrupt;
  }
  if (version != std::to_string(kAuthStoreSchemaVersion)) {
    *err = "unknown schema version " + version;
    return OpenOutcome::Corrupt;
  }
  if (table != kCreateTable) {
    *err = "not the expected table";
    return OpenOutcome::Corrupt;
  }
  return OpenOutcome::Ok;
}

bool AuthStore::prepare_writes() {
  struct Want {
    Stmt* st;
    const char* sql;
  } wants[] = {
      {&put_st_,
       "INSERT OR REPLACE INTO secrets (scope, user_name, secret, fetched_at) VALUES (?, ?, ?, ?)"},
      {&erase_st_, "DELETE FROM secrets WHERE scope = ? AND user_name = ?"},
      {&erase_user_st_, "DELETE FROM secrets WHERE user_name = ?"},
      {&erase_all_st_, "DELETE FROM secrets"},
  };
  for (const Want& w : wants) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db_.get(), w.sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) !=
        SQLITE_OK) {
      return false;
    }
    w.st->reset(raw);
  }
  return true;
}

AuthStore::~AuthStore() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (writer_.joinable()) {
    writer_.join();
  } else if (db_) {
    (void)sync();
  }
  std::lock_guard<std::mutex> io(io_mu_);
  close_db();
}

std::vector<StoredSecret> AuthStore::load() {
  std::vector<StoredSecret> rows;
  std::lock_guard<std::mutex> io(io_mu_);
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db_.get(), "SELECT scope, user_name, secret, fetched_at FROM secrets",
                              -1, &raw, nullptr);
  if (rc != SQLITE_OK) {
    LOG_WARN("auth_cache_file %s: reading failed: %s", path_.c_str(),
             db_error(db_.get(), rc).c_str());
    return rows;
  }
  Stmt st(raw);
  size_t bad = 0;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
    StoredSecret s;
    bool ok = column_bytes(raw, 0, kAuthStoreMaxScope, &s.scope) &&
              column_bytes(raw, 1, kAuthStoreMaxUser, &s.user) &&
              column_bytes(raw, 2, kAuthStoreMaxSecret, &s.secret) &&
              sqlite3_column_type(raw, 3) == SQLITE_INTEGER;
    if (ok) s.fetched_at = sqlite3_column_int64(raw, 3);
    if (ok && auth_store_row_ok(s)) {
      rows.push_back(std::move(s));
    } else {
      ++bad;
    }
  }
  if (rc != SQLITE_DONE) {
    LOG_WARN("auth_cache_file %s: reading stopped after %zu rows: %s", path_.c_str(),
             rows.size() + bad, db_error(db_.get(), rc).c_str());
  }
  if (bad > 0) {
    LOG_WARN("auth_cache_file %s: skipped %zu invalid rows", path_.c_str(), bad);
  }
  return rows;
}

void AuthStore::start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (started_) return;
  started_ = true;
  writer_ = std::thread([this] { writer_main(); });
}

void AuthStore::enqueue(Op op) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(op));
    ++queued_seq_;
  }
  wake_.notify_one();
}

void AuthStore::put(StoredSecret s) {
  if (!auth_store_row_ok(s)) {
    // Never written: a plain-text password, or out of bounds. The value is not logged.
    LOG_DEBUG("auth_cache_file %s: a row was not stored (not a verifier, or too long)",
              path_.c_str());
    return;
  }
  enqueue(Op{OpKind::Put, std::move(s)});
}

void AuthStore::erase(const std::string& scope, const std::string& user) {
  Op op{OpKind::Erase, {}};
  op.row.scope = scope;
  op.row.user = user;
  enqueue(std::move(op));
}

void AuthStore::erase_user(const std::string& user) {
  Op op{OpKind::EraseUser, {}};
  op.row.user = user;
  enqueue(std::move(op));
}

void AuthStore::erase_all() {
  enqueue(Op{OpKind::EraseAll, {}});
}

bool AuthStore::sync() {
  std::unique_lock<std::mutex> lk(mu_);
  if (!started_) {
    // No writer thread: write here.
    std::vector<Op> batch;
    batch.swap(queue_);
    uint64_t upto = queued_seq_;
    lk.unlock();
    bool ok = batch.empty() || write_batch(batch);
    lk.lock();
    if (!ok) failed_ = true;
    if (upto > written_seq_) written_seq_ = upto;
    return !failed_;
  }
  uint64_t target = queued_seq_;
  wake_.notify_one();
  done_.wait(lk, [&] { return written_seq_ >= target; });
  return !failed_;
}

void AuthStore::writer_main() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    wake_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) break;  // stop_, and nothing left to write
    std::vector<Op> batch;
    batch.swap(queue_);
    uint64_t upto = queued_seq_;
    lk.unlock();
    bool ok = write_batch(batch);
    lk.lock();
    if (!ok) failed_ = true;
    written_seq_ = upto;
    done_.notify_all();
  }
}

bool AuthStore::exec_op(const Op& op) {
  sqlite3_stmt* st = nullptr;
  switch (op.kind) {
    case OpKind::Put:
      st = put_st_.get();
      bind_bytes(st, 1, op.row.scope);
      bind_bytes(st, 2, op.row.user);
      bind_bytes(st, 3, op.row.secret);
      sqlite3_bind_int64(st, 4, op.row.fetched_at);
      break;
    case OpKind::Erase:
      st = erase_st_.get();
      bind_bytes(st, 1, op.row.scope);
      bind_bytes(st, 2, op.row.user);
      break;
    case OpKind::EraseUser:
      st = erase_user_st_.get();
      bind_bytes(st, 1, op.row.user);
      break;
    case OpKind::EraseAll:
      st = erase_all_st_.get();
      break;
  }
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE;
}

bool AuthStore::write_batch(const std::vector<Op>& ops) {
  std::lock_guard<std::mutex> io(io_mu_);
  sqlite3* db = db_.get();
  if (db == nullptr) return false;
  int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  bool ok = rc == SQLITE_OK;
  for (size_t i = 0; ok && i < ops.size(); ++i) ok = exec_op(ops[i]);
  if (ok) {
    rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    ok = rc == SQLITE_OK;
  }
  if (!ok) {
    // The message names the failure (SQLite's text holds no row values), never a secret.
    std::string why = db_error(db, sqlite3_extended_errcode(db));
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    if (!failing_) {
      LOG_WARN("auth_cache_file %s: writing %zu changes failed: %s (the cache goes on in memory)",
               path_.c_str(), ops.size(), why.c_str());
    } else {
      LOG_DEBUG("auth_cache_file %s: writing %zu changes failed again: %s", path_.c_str(),
                ops.size(), why.c_str());
    }
    failing_ = true;
    return false;
  }
  if (failing_) {
    LOG_INFO("auth_cache_file %s: writing works again", path_.c_str());
    failing_ = false;
  }
  return true;
}

}  // namespace pgsluice
