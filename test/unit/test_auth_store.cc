// auth_cache_file: the SQLite store of auth_query's verifiers (src/auth_store.*), on real files.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "auth_store.h"
#include "log.h"

using namespace pgsluice;  // NOLINT: test file

namespace {

const std::string kMd5 = "md5" + std::string(32, 'a');
const std::string kScram =
    "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";

// A fresh directory under /tmp, removed with everything in it.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/pgsluice-auth-store-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

// Log lines go to a file in the directory while the test runs (and not to stderr).
struct LogToFile {
  std::string path;
  explicit LogToFile(const TempDir& d) : path(d.file("log")) {
    LogSettings s;
    s.logfile = path;
    s.quiet = true;
    log_configure(s);
  }
  ~LogToFile() {
    LogSettings s;
    s.quiet = false;
    log_configure(s);
  }
  std::string text() const {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& bytes, mode_t mode = 0600) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::fchmod(fd, mode);
  ::close(fd);
}

mode_t mode_of(const std::string& path) {
  struct stat st;
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

StoredSecret row(std::string scope, std::string user, std::string secret, int64_t at = 1000) {
  StoredSecret s;
  s.scope = std::move(scope);
  s.user = std::move(user);
  s.secret = std::move(secret);
  s.fetched_at = at;
  return s;
}

std::vector<StoredSecret> sorted(std::vector<StoredSecret> v) {
  std::sort(v.begin(), v.end(), [](const StoredSecret& a, const StoredSecret& b) {
    return std::tie(a.scope, a.user) < std::tie(b.scope, b.user);
  });
  return v;
}

std::unique_ptr<AuthStore> open_ok(const std::string& path) {
  std::string err;
  auto s = AuthStore::open(path, &err);
  INFO(err);
  REQUIRE(s != nullptr);
  CHECK(err.empty());
  return s;
}

// Runs SQL on a separate connection, as another process would.
void exec_other(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* msg = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
  INFO((msg != nullptr ? msg : ""));
  CHECK(rc == SQLITE_OK);
  sqlite3_free(msg);
  sqlite3_close(db);
}

}  // namespace

TEST_CASE("auth_store: rows survive a reopen, with any bytes in scope and user") {
  TempDir d;
  const std::string path = d.file("cache.db");
  const std::string odd_scope = std::string("db1\x01\xff") + "/auth_user/SELECT $1";
  {
    auto s = open_ok(path);
    CHECK(s->path() == path);
    CHECK(s->load().empty());
    s->start();
    s->put(row("db1", "alice", kMd5, 1700000000));
    s->put(row(odd_scope,
               "b\xc3\xb6"
               "b",
               kScram, -5));
    s->put(row("db1", "nopass", "", 42));
    CHECK(s->sync());
  }
  auto s = open_ok(path);
  auto rows = sorted(s->load());
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].scope == "db1");
  CHECK(rows[0].user == "alice");
  CHECK(rows[0].secret == kMd5);
  CHECK(rows[0].fetched_at == 1700000000);
  CHECK(rows[1].user == "nopass");
  CHECK(rows[1].secret.empty());
  CHECK(rows[1].fetched_at == 42);
  CHECK(rows[2].scope == odd_scope);
  CHECK(rows[2].user ==
        "b\xc3\xb6"
        "b");
  CHECK(rows[2].secret == kScram);
  CHECK(rows[2].fetched_at == -5);
}

TEST_CASE("auth_store: put replaces the row of the same scope and user") {
  TempDir d;
  const std::string path = d.file("cache.db");
  {
    auto s = open_ok(path);
    s->start();
    s->put(row("db1", "alice", kMd5, 1));
    s->put(row("db2", "alice", kMd5, 2));
    CHECK(s->sync());
    s->put(row("db1", "alice", kScram, 3));
    CHECK(s->sync());
  }
  auto rows = sorted(open_ok(path)->load());
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].scope == "db1");
  CHECK(rows[0].secret == kScram);
  CHECK(rows[0].fetched_at == 3);
  CHECK(rows[1].scope == "db2");
  CHECK(rows[1].secret == kMd5);
}

TEST_CASE("auth_store: erase, erase_user and erase_all") {
  TempDir d;
  const std::string path = d.file("cache.db");
  auto s = open_ok(path);
  s->start();
  for (const char* scope : {"a", "b", "c"}) {
    for (const char* user : {"u1", "u2", "u3"}) s->put(row(scope, user, kMd5));
  }
  s->erase("a", "u1");
  s->erase("a", "nobody");  // nothing to erase is not an error
  s->erase_user("u2");
  CHECK(s->sync());
  s.reset();
  s = open_ok(path);
  auto rows = sorted(s->load());
  REQUIRE(rows.size() == 5);
  CHECK(rows[0].scope == "a");
  CHECK(rows[0].user == "u3");
  CHECK(rows[1].user == "u1");  // b/u1
  for (const auto& r : rows) CHECK(r.user != "u2");
  s->start();
  s->erase_all();
  s->put(row("z", "after", kMd5));  // queued after erase_all: kept
  CHECK(s->sync());
  s.reset();
  rows = open_ok(path)->load();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].user == "after");
}

TEST_CASE("auth_store: many puts from several threads, one sync, all written") {
  TempDir d;
  const std::string path = d.file("cache.db");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  auto s = open_ok(path);
  s->start();
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        s->put(row("scope" + std::to_string(t), "user" + std::to_string(i), kMd5, i));
      }
    });
  }
  for (auto& t : threads) t.join();
  auto queued = std::chrono::steady_clock::now();
  CHECK(s->sync());
  auto done = std::chrono::steady_clock::now();
  MESSAGE("queued " << kThreads * kPerThread << " puts in "
                    << std::chrono::duration_cast<std::chrono::milliseconds>(queued - t0).count()
                    << " ms, written "
                    << std::chrono::duration_cast<std::chrono::milliseconds>(done - queued).count()
                    << " ms later");
  s.reset();
  CHECK(open_ok(path)->load().size() == kThreads * kPerThread);
}

TEST_CASE("auth_store: sync before start writes on the caller's thread") {
  TempDir d;
  const std::string path = d.file("cache.db");
  auto s = open_ok(path);
  s->put(row("db", "u", kMd5));
  CHECK(s->sync());
  CHECK(s->load().size() == 1);
}

TEST_CASE("auth_store: the destructor writes what is queued") {
  TempDir d;
  const std::string path = d.file("cache.db");
  {
    auto s = open_ok(path);
    s->start();
    for (int i = 0; i < 1000; ++i) s->put(row("db", "u" + std::to_string(i), kMd5));
  }
  {
    auto s = open_ok(path);  // never started
    s->put(row("db", "unstarted", kMd5));
  }
  CHECK(open_ok(path)->load().size() == 1001);
}

TEST_CASE("auth_store: plain-text passwords and rows out of bounds are never written") {
  TempDir d;
  const std::string path = d.file("cache.db");
  {
    auto s = open_ok(path);
    s->start();
    s->put(row("db", "plain", "hunter2"));
    s->put(row("db", "", kMd5));
    s->put(row("db", std::string(kAuthStoreMaxUser + 1, 'u'), kMd5));
    s->put(row(std::string(kAuthStoreMaxScope + 1, 's'), "u", kMd5));
    s->put(row("db", "long", "SCRAM-SHA-256$" + std::string(kAuthStoreMaxSecret, 'x')));
    s->put(row("db", std::string("nu\0l", 4), kMd5));
    s->put(row("db", std::string(kAuthStoreMaxUser, 'u'), kMd5));  // at the bound: kept
    CHECK(s->sync());
  }
  auto rows = open_ok(path)->load();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].user.size() == kAuthStoreMaxUser);
  CHECK(read_all(path).find("hunter2") == std::string::npos);
}

TEST_CASE("auth_store: load skips invalid rows with one warning") {
  TempDir d;
  const std::string path = d.file("cache.db");
  open_ok(path).reset();  // creates the schema
  exec_other(path, "INSERT INTO secrets VALUES (x'6462', x'676f6f64', CAST('" + kMd5 +
                       "' AS BLOB), 7);"
                       "INSERT INTO secrets VALUES (x'6462', x'', x'', 7);"
                       "INSERT INTO secrets VALUES (x'6462', 'plain', 'hunter2', 7);"
                       "INSERT INTO secrets VALUES (x'6462', 'badtime', '', 'soon');"
                       "INSERT INTO secrets VALUES (x'6462', 42, '', 7);"
                       "INSERT INTO secrets VALUES (x'6462', zeroblob(300), '', 7);");
  LogToFile log(d);
  auto rows = open_ok(path)->load();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].user == "good");
  CHECK(rows[0].secret == kMd5);
  std::string text = log.text();
  CHECK(text.find("skipped 5 invalid rows") != std::string::npos);
  CHECK(text.find("hunter2") == std::string::npos);
}

TEST_CASE("auth_store: the file and its -wal and -shm are 0600, even with umask 0") {
  TempDir d;
  const std::string path = d.file("cache.db");
  mode_t old = ::umask(0);
  auto s = open_ok(path);
  s->start();
  s->put(row("db", "u", kMd5));
  CHECK(s->sync());
  ::umask(old);
  REQUIRE(exists(path + "-wal"));
  REQUIRE(exists(path + "-shm"));
  CHECK(mode_of(path) == 0600);
  CHECK(mode_of(path + "-wal") == 0600);
  CHECK(mode_of(path + "-shm") == 0600);
}

TEST_CASE("auth_store: a file with mode 0644 is set to 0600, with a warning") {
  TempDir d;
  const std::string path = d.file("cache.db");
  write_all(path, "", 0644);
  REQUIRE(mode_of(path) == 0644);
  LogToFile log(d);
  auto s = open_ok(path);
  CHECK(mode_of(path) == 0600);
  CHECK(log.text().find("had mode 0644, set to 0600") != std::string::npos);
}

TEST_CASE("auth_store: journal_mode is WAL, seen from another connection") {
  TempDir d;
  const std::string path = d.file("cache.db");
  auto s = open_ok(path);
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_CASE("auth_store: a symbolic link is refused and its target left alone") {
  TempDir d;
  const std::string target = d.file("target");
  const std::string path = d.file("cache.db");
  write_all(target, "precious", 0644);
  REQUIRE(::symlink(target.c_str(), path.c_str()) == 0);
  std::string err;
  CHECK(AuthStore::open(path, &err) == nullptr);
  CHECK(err.find("symbolic link") != std::string::npos);
  CHECK(read_all(target) == "precious");
  CHECK(mode_of(target) == 0644);
  CHECK_FALSE(exists(path + ".corrupt"));

  // A dangling link is not followed to create its target either.
  const std::string dangling = d.file("dangling.db");
  REQUIRE(::symlink(d.file("nowhere").c_str(), dangling.c_str()) == 0);
  CHECK(AuthStore::open(dangling, &err) == nullptr);
  CHECK_FALSE(err.empty());
  CHECK_FALSE(exists(d.file("nowhere")));

  // Nor is a link left where SQLite keeps its write-ahead log.
  const std::string other = d.file("other.db");
  REQUIRE(::symlink(target.c_str(), (other + "-wal").c_str()) == 0);
  CHECK(AuthStore::open(other, &err) == nullptr);
  CHECK(err.find("not a regular file") != std::string::npos);
  CHECK(read_all(target) == "precious");

  // SQLite's SQLITE_OPEN_NOFOLLOW also refuses a link to a directory on the path.
  REQUIRE(::mkdir(d.file("real").c_str(), 0700) == 0);
  REQUIRE(::symlink(d.file("real").c_str(), d.file("linkdir").c_str()) == 0);
  CHECK(AuthStore::open(d.file("linkdir") + "/cache.db", &err) == nullptr);
  CHECK(err.find("a directory on the path is a symbolic link") != std::string::npos);
  open_ok(d.file("real") + "/cache.db");
}

TEST_CASE("auth_store: a file owned by another user is refused") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to give a file to another user");
    return;
  }
  TempDir d;
  const std::string path = d.file("cache.db");
  write_all(path, "", 0600);
  REQUIRE(::chown(path.c_str(), 65534, 65534) == 0);
  std::string err;
  CHECK(AuthStore::open(path, &err) == nullptr);
  CHECK(err.find("not owned by") != std::string::npos);
  CHECK(read_all(path).empty());
  CHECK_FALSE(exists(path + ".corrupt"));
}

TEST_CASE("auth_store: a file of random bytes is moved aside and replaced") {
  TempDir d;
  const std::string path = d.file("cache.db");
  std::string junk;
  for (int i = 0; i < 8192; ++i) junk.push_back(static_cast<char>((i * 7919 + 13) & 0xff));
  write_all(path, junk);
  write_all(path + ".corrupt", "an older one");
  write_all(path + "-wal", "a leftover log that must not be replayed");
  LogToFile log(d);
  std::string err;
  auto s = AuthStore::open(path, &err);
  INFO(err);
  REQUIRE(s != nullptr);
  CHECK(read_all(path + ".corrupt") == junk);
  // SQLite itself may have dropped the leftover log when it closed the bad file; either way it
  // is no longer next to the new one.
  CHECK(read_all(path + "-wal").find("leftover") == std::string::npos);
  CHECK(s->load().empty());
  s->start();
  s->put(row("db", "u", kMd5));
  CHECK(s->sync());
  s.reset();
  CHECK(open_ok(path)->load().size() == 1);
  std::string text = log.text();
  CHECK(text.find("WARNING") != std::string::npos);
  CHECK(text.find(path + ": ") != std::string::npos);
  CHECK(text.find("moved aside to " + path + ".corrupt") != std::string::npos);
}

TEST_CASE("auth_store: a SQLite file of another schema or version is moved aside") {
  TempDir d;
  SUBCASE("another table") {
    const std::string path = d.file("cache.db");
    exec_other(path, "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1);");
    auto s = open_ok(path);
    CHECK(exists(path + ".corrupt"));
    CHECK(s->load().empty());
    s->put(row("db", "u", kMd5));
    CHECK(s->sync());
  }
  SUBCASE("a table named secrets with other columns") {
    const std::string path = d.file("cache.db");
    exec_other(path, "CREATE TABLE secrets (a INTEGER); PRAGMA user_version = 1;");
    auto s = open_ok(path);
    CHECK(exists(path + ".corrupt"));
    s->put(row("db", "u", kMd5));
    CHECK(s->sync());
  }
  SUBCASE("an unknown user_version") {
    const std::string path = d.file("cache.db");
    open_ok(path).reset();
    exec_other(path, "PRAGMA user_version = 99;");
    auto s = open_ok(path);
    CHECK(exists(path + ".corrupt"));
    CHECK(s->load().empty());
  }
  SUBCASE("a truncated database") {
    const std::string path = d.file("cache.db");
    {
      auto s = open_ok(path);
      for (int i = 0; i < 2000; ++i) s->put(row("db", "user" + std::to_string(i), kScram));
      CHECK(s->sync());
    }
    std::string bytes = read_all(path);
    REQUIRE(bytes.size() > 8192);
    // Page 2 onwards overwritten: the header still says SQLite, the b-tree is garbage.
    std::fill(bytes.begin() + 4096, bytes.end(), '\x5a');
    write_all(path, bytes);
    auto s = open_ok(path);
    CHECK(exists(path + ".corrupt"));
    CHECK(s->load().empty());
  }
}

TEST_CASE("auth_store: a file that cannot be created gives nullptr and a reason") {
  TempDir d;
  std::string err;
  write_all(d.file("plainfile"), "x");
  CHECK(AuthStore::open(d.file("plainfile") + "/cache.db", &err) == nullptr);
  CHECK(err.find("cannot open") != std::string::npos);
  err.clear();
  CHECK(AuthStore::open("/proc/self/pgsluice-cache.db", &err) == nullptr);
  CHECK_FALSE(err.empty());
  err.clear();
  CHECK(AuthStore::open(d.path, &err) == nullptr);  // a directory
  CHECK_FALSE(err.empty());
  err.clear();
  CHECK(AuthStore::open("", &err) == nullptr);
  CHECK_FALSE(err.empty());
}

TEST_CASE("auth_store: a failed write is logged without the secret and reported by sync") {
  TempDir d;
  const std::string path = d.file("cache.db");
  LogToFile log(d);
  auto s = open_ok(path);
  s->start();
  // Another connection holds the write lock longer than the busy timeout.
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &other) == SQLITE_OK);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  s->put(row("db", "u", kMd5));
  CHECK_FALSE(s->sync());
  sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  s->put(row("db", "u2", kScram));
  CHECK_FALSE(s->sync());  // "a write failed since open"
  s.reset();
  auto rows = open_ok(path)->load();
  REQUIRE(rows.size() == 1);  // the second batch went through
  CHECK(rows[0].user == "u2");
  std::string text = log.text();
  CHECK(text.find("writing 1 changes failed") != std::string::npos);
  CHECK(text.find("writing works again") != std::string::npos);
  CHECK(text.find(kMd5) == std::string::npos);
  CHECK(text.find(kScram) == std::string::npos);
}
