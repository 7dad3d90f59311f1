// auth_query on the wire: the messages that run it, and the reading of PostgreSQL's replies.
// Pure: no sockets, no pools (the worker side is auth_lookup.cc).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "auth_cache.h"

namespace pgsluice {

// The longest secret auth_query may return (PgBouncer: 65535-byte passwords); longer is
// taken as a failed lookup.
constexpr size_t kMaxLookupSecret = 65535;

// The messages that look `user` up with `query` (its $1 is the user name, sent as a
// parameter, never spliced into SQL). Three ReadyForQuery come back:
//   Q  kLookupPrologue                                          -> ... Z 'T'
//   P/B/D/E/S  the query, in that transaction                   -> ... Z 'T' (or 'E')
//   Q  COMMIT                                                    -> ... Z 'I'
// The prologue opens a transaction whose search_path is auth_user's default (the role's,
// the database's or the server's, never what a session on this server SET: a client of
// auth_user's own pool may have set anything) with pg_catalog first and pg_temp last.
// So nothing a user created can shadow pg_authid, pg_shadow or an operator the query
// uses (CVE-2025-12819's class), a function the query names without a schema is still
// found where auth_user's default path finds it (PgBouncer's documented user_search()
// in public), and the server leaves as it came.
extern const char* const kLookupPrologue;
constexpr int kLookupReadyCount = 3;
std::string lookup_messages(std::string_view query, std::string_view user);

// A lookup waiting for a server of its pool (LocalPool::lookups).
struct LookupJob {
  LookupScope scope;
  std::string user;
  double since = 0;  // monotonic seconds when it was asked for
};

// PostgreSQL's replies to lookup_messages(), one message at a time.
class LookupReply {
 public:
  enum class Result : uint8_t {
    Pending,   // more to come
    Found,     // a row: secret() (empty: the user has no usable password; NULL is empty)
    NotFound,  // no row
    Failed,    // an error, or replies that are not a two-column answer: why()
  };
  explicit LookupReply(std::string_view user) : user_(user) {}
  // One message (type and body) of the replies, in order; ReadyForQuery included.
  void on_message(uint8_t type, std::span<const uint8_t> body);
  // After the last ReadyForQuery (or earlier: Failed stays Failed).
  Result result() const;
  const std::string& secret() const { return secret_; }
  const std::string& why() const { return why_; }
  // The lookup's SQLSTATE when PostgreSQL refused it (empty otherwise).
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  void fail(std::string why);
  std::string user_;
  std::string secret_;
  std::string why_;
  std::string sqlstate_;
  int ready_ = 0;
  int rows_ = 0;
  bool failed_ = false;
};

// A lookup running on a server (Server::lookup_): the job and its replies so far.
struct LookupRun {
  explicit LookupRun(LookupJob j) : job(std::move(j)), reply(job.user) {}
  LookupJob job;
  LookupReply reply;
};

}  // namespace pgsluice
