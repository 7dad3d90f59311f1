// The auth cache: what auth_query found, shared by every worker, with the lookups in flight.
// Entries live in memory (one mutex, short critical sections) and, with auth_cache_file, in
// an SQLite file written by auth_store.h's own thread: a worker never waits on disk.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pgsluice {

class AuthStore;

// Which auth_query looks a user up: the database it runs in, as whom, and the query itself.
struct LookupScope {
  std::string dbname;     // the [databases] name whose pool runs the query
  std::string auth_user;  // who runs it
  std::string query;      // auth_query, $1 = the user name
  // One string naming the scope (cache keys, the file's scope column).
  std::string key() const;
};

class AuthCache {
 public:
  AuthCache();
  ~AuthCache();

  // Opens (or with an empty path closes) the cache file and loads its entries as source
  // "cache" (main thread: at start, and at RELOAD when auth_cache_file changed). A file that
  // cannot be used is logged; the cache goes on in memory.
  void open_file(const std::string& path);
  const std::string& file_path() const { return path_; }

  // What a login gets when it asks for a user's secret.
  struct Answer {
    enum class Kind : uint8_t {
      Found,     // `secret` (cached; `stale`: a background refresh was started by this caller)
      NotFound,  // auth_query found no such user (recently: negative entry)
      Run,       // nobody is looking it up: the caller runs auth_query, then complete()
      Wait,      // a lookup is in flight: the caller's worker is told (complete's result)
    };
    Kind kind = Kind::Run;
    std::string secret;
    bool refresh = false;  // Found, stale: the caller runs a background lookup, then complete()
  };
  // The one key of a (scope, user) lookup: the cache's, and the one waiting logins are
  // listed under (Worker::auth_waiters_).
  static std::string entry_key(const std::string& scope_key, const std::string& user);
  // The answer for (scope, user) now. `force`: a cached secret is not good enough (a proof
  // failed against it): Run or Wait. Thread-safe.
  Answer get(const LookupScope& scope, const std::string& user, size_t worker, double ttl,
             double negative_ttl, bool force = false);

  // How a lookup ended.
  struct Outcome {
    enum class Kind : uint8_t { Found, NotFound, Failed };
    Kind kind = Kind::Failed;
    std::string secret;    // Found
    std::string sqlstate;  // Failed: what the waiting logins get
    std::string message;
  };
  // Records a lookup's outcome (Failed keeps what was cached: an outage does not forget
  // anyone) and returns the workers whose logins wait for it. Thread-safe.
  std::vector<size_t> complete(const LookupScope& scope, const std::string& user,
                               const Outcome& out);

  // A server login with this user's pass-through keys was refused (28P01): its cached
  // verifiers are out of date; the next login looks it up again.
  void invalidate_user(const std::string& user);
  // DROP AUTH_CACHE [user]: forgets entries (of one user, or all) in memory and in the file.
  // Lookups in flight still complete. Returns how many were dropped.
  size_t drop(const std::string& user);

  // One row of SHOW AUTH_CACHE (never the secret).
  struct Row {
    std::string user;
    std::string dbname;
    std::string source;  // auth_query, cache, not_found
    double age = 0;      // seconds since PostgreSQL returned it
    uint64_t hits = 0;
  };
  std::vector<Row> rows() const;
  // Waits until the file has what was recorded so far (tests, shutdown). False on a write
  // error or without a file.
  bool sync();

 private:
  struct Entry {
    std::string dbname;
    std::string auth_user;
    std::string query;
    std::string user;
    std::string secret;
    double fetched = 0;  // wall-clock seconds when PostgreSQL returned it (0: none yet)
    uint64_t hits = 0;
    bool found = false;         // has a result: positive (found) or negative
    bool has_result = false;    // fetched at least once (else only a lookup in flight)
    bool from_file = false;     // loaded from the file, not fetched since
    bool in_flight = false;     // a lookup runs
    bool must_refresh = false;  // invalidated: a cached secret is not good enough
    std::vector<size_t> waiters;
  };
  void sweep_negatives(double now, double negative_ttl);

  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  size_t inserts_since_sweep_ = 0;
  std::string path_;
  std::unique_ptr<AuthStore> store_;
};

// Wall-clock seconds (auth cache ages survive restarts, so they are not monotonic).
double wall_seconds();

}  // namespace pgsluice
