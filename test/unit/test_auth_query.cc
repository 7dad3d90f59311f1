// Unit tests for auth_query.h (the lookup's messages and the reading of its replies) and
// auth_cache.h (answers, lookups in flight, staleness, negative entries, invalidation).
#include <doctest/doctest.h>

#include <span>
#include <string>
#include <vector>

#include "auth_cache.h"
#include "auth_query.h"
#include "wire.h"

namespace pgsluice {
namespace {

struct Msg {
  char type;
  std::string body;
};

std::vector<Msg> split(const std::string& s) {
  std::vector<Msg> out;
  size_t i = 0;
  while (i + 5 <= s.size()) {
    uint32_t len = wire::get_u32(reinterpret_cast<const uint8_t*>(s.data()) + i + 1);
    out.push_back({s[i], s.substr(i + 5, len - 4)});
    i += 1 + len;
  }
  CHECK(i == s.size());
  return out;
}

std::string msg(char type, const std::string& body) {
  std::string m(1, type);
  uint32_t len = static_cast<uint32_t>(body.size() + 4);
  m.push_back(static_cast<char>(len >> 24));
  m.push_back(static_cast<char>(len >> 16));
  m.push_back(static_cast<char>(len >> 8));
  m.push_back(static_cast<char>(len));
  return m + body;
}

std::string be32(int32_t v) {
  auto u = static_cast<uint32_t>(v);
  return {static_cast<char>(u >> 24), static_cast<char>(u >> 16), static_cast<char>(u >> 8),
          static_cast<char>(u)};
}

// A DataRow of text columns (nullptr: NULL).
std::string data_row(std::vector<const char*> cols) {
  std::string b{static_cast<char>(cols.size() >> 8), static_cast<char>(cols.size())};
  for (const char* c : cols) {
    if (c == nullptr) {
      b += be32(-1);
    } else {
      b += be32(static_cast<int32_t>(std::string(c).size()));
      b += c;
    }
  }
  return msg('D', b);
}

const std::string kBegin =
    msg('C', std::string("BEGIN\0", 6)) + msg('C', std::string("SET\0", 4)) + msg('Z', "T");
const std::string kCommit = msg('C', std::string("COMMIT\0", 7)) + msg('Z', "I");

LookupReply feed(const std::string& stream, const char* user = "alice") {
  LookupReply r(user);
  for (const Msg& m : split(stream))
    r.on_message(
        static_cast<uint8_t>(m.type),
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.body.data()), m.body.size()));
  return r;
}

std::string query_reply(const std::string& rows, const char* tag = "SELECT 1") {
  return kBegin + msg('1', "") + msg('2', "") + msg('T', std::string("\0\2", 2)) + rows +
         msg('C', std::string(tag) + '\0') + msg('Z', "T") + kCommit;
}

TEST_CASE("auth_query: the lookup runs in a transaction with a safe search_path, user as $1") {
  std::string user = "o'hara\"; DROP TABLE x; --";
  auto ms = split(lookup_messages("SELECT a, b FROM f($1)", user));
  REQUIRE(ms.size() == 7);
  CHECK(ms[0].type == 'Q');
  CHECK(ms[0].body == std::string(kLookupPrologue) + '\0');
  CHECK(ms[0].body.find("SET LOCAL search_path TO DEFAULT") != std::string::npos);
  CHECK(ms[1].type == 'P');
  CHECK(ms[1].body.find("SELECT a, b FROM f($1)") != std::string::npos);
  CHECK(ms[2].type == 'B');
  // The name travels as the parameter's bytes, never inside the SQL text.
  CHECK(ms[2].body.find(user) != std::string::npos);
  CHECK(ms[1].body.find(user) == std::string::npos);
  CHECK(ms[3].type == 'D');
  CHECK(ms[4].type == 'E');
  CHECK(ms[5].type == 'S');
  CHECK(ms[6].type == 'Q');
  CHECK(ms[6].body == std::string("COMMIT\0", 7));
}

TEST_CASE("auth_query: replies give found, not found, or failed") {
  auto found = feed(query_reply(data_row({"alice", "md5abc"})));
  CHECK(found.result() == LookupReply::Result::Found);
  CHECK(found.secret() == "md5abc");

  auto none = feed(query_reply("", "SELECT 0"));
  CHECK(none.result() == LookupReply::Result::NotFound);

  // PgBouncer's documented user_lookup() answers an unknown name with a row of NULLs.
  auto nulls = feed(query_reply(data_row({nullptr, nullptr})));
  CHECK(nulls.result() == LookupReply::Result::NotFound);

  // A NULL password (an expired one, with the default query): found, but no usable secret.
  auto expired = feed(query_reply(data_row({"alice", nullptr})));
  CHECK(expired.result() == LookupReply::Result::Found);
  CHECK(expired.secret().empty());

  auto two = feed(query_reply(data_row({"alice", "x"}) + data_row({"alice", "y"})));
  CHECK(two.result() == LookupReply::Result::Failed);

  auto three = feed(query_reply(data_row({"alice", "x", "z"})));
  CHECK(three.result() == LookupReply::Result::Failed);

  std::string err = kBegin + msg('E', std::string("SERROR\0C42883\0Mno function\0\0", 29)) +
                    msg('Z', "E") + msg('C', std::string("ROLLBACK\0", 9)) + msg('Z', "I");
  auto failed = feed(err);
  CHECK(failed.result() == LookupReply::Result::Failed);
  CHECK(failed.sqlstate() == "42883");
  CHECK(failed.why().find("no function") != std::string::npos);

  // Before the last ReadyForQuery: pending.
  auto partial = feed(kBegin + msg('1', "") + msg('2', "") + data_row({"alice", "md5abc"}));
  CHECK(partial.result() == LookupReply::Result::Pending);

  // Truncated or lying rows.
  auto bad = feed(query_reply(msg('D', std::string("\0\2\0\0\0\x09"
                                                   "ab",
                                                   8))));
  CHECK(bad.result() == LookupReply::Result::Failed);
  auto unexpected = feed(kBegin + msg('G', std::string("\0\0\0", 3)));
  CHECK(unexpected.result() == LookupReply::Result::Failed);
}

LookupScope scope(const char* db = "app") {
  return LookupScope{db, "authu", "SELECT 1"};
}

using K = AuthCache::Answer::Kind;

AuthCache::Outcome found(const char* secret) {
  AuthCache::Outcome o;
  o.kind = AuthCache::Outcome::Kind::Found;
  o.secret = secret;
  return o;
}

TEST_CASE("auth_cache: one lookup in flight per user; every waiting worker is told") {
  AuthCache c;
  CHECK(c.get(scope(), "alice", 0, 3600, 10).kind == K::Run);
  CHECK(c.get(scope(), "alice", 1, 3600, 10).kind == K::Wait);
  CHECK(c.get(scope(), "alice", 1, 3600, 10).kind == K::Wait);
  // Another scope (database) is another lookup.
  CHECK(c.get(scope("other"), "alice", 0, 3600, 10).kind == K::Run);
  auto told = c.complete(scope(), "alice", found("md5abc"));
  CHECK(told == std::vector<size_t>{0, 1});
  auto a = c.get(scope(), "alice", 1, 3600, 10);
  CHECK(a.kind == K::Found);
  CHECK(a.secret == "md5abc");
  CHECK_FALSE(a.refresh);
  auto rows = c.rows();
  REQUIRE(rows.size() == 1);  // the other scope has no result yet
  CHECK(rows[0].user == "alice");
  CHECK(rows[0].dbname == "app");
  CHECK(rows[0].source == "auth_query");
  CHECK(rows[0].hits == 1);
}

TEST_CASE("auth_cache: a stale entry is used and refreshed once in the background") {
  AuthCache c;
  CHECK(c.get(scope(), "alice", 0, 0, 10).kind == K::Run);
  c.complete(scope(), "alice", found("md5old"));
  auto a = c.get(scope(), "alice", 0, 0, 10);  // ttl 0: stale at once
  CHECK(a.kind == K::Found);
  CHECK(a.refresh);
  auto b = c.get(scope(), "alice", 1, 0, 10);
  CHECK(b.kind == K::Found);
  CHECK_FALSE(b.refresh);                                        // already being refreshed
  CHECK(c.complete(scope(), "alice", found("md5new")).empty());  // nobody waited
  CHECK(c.get(scope(), "alice", 0, 3600, 10).secret == "md5new");
}

TEST_CASE("auth_cache: not found is remembered for the negative ttl only") {
  AuthCache c;
  CHECK(c.get(scope(), "ghost", 0, 3600, 10).kind == K::Run);
  AuthCache::Outcome nf;
  nf.kind = AuthCache::Outcome::Kind::NotFound;
  c.complete(scope(), "ghost", nf);
  CHECK(c.get(scope(), "ghost", 0, 3600, 10).kind == K::NotFound);
  CHECK(c.get(scope(), "ghost", 0, 3600, 0).kind == K::Run);  // expired
  c.complete(scope(), "ghost", found("md5x"));                // created meanwhile
  CHECK(c.get(scope(), "ghost", 0, 3600, 10).kind == K::Found);
}

TEST_CASE("auth_cache: a failed lookup keeps what was cached; force and invalidation ask again") {
  AuthCache c;
  CHECK(c.get(scope(), "alice", 0, 3600, 10).kind == K::Run);
  AuthCache::Outcome fail;
  fail.sqlstate = "08006";
  c.complete(scope(), "alice", fail);
  CHECK(c.rows().empty());  // nothing was ever found: nothing kept
  CHECK(c.get(scope(), "alice", 0, 3600, 10).kind == K::Run);
  c.complete(scope(), "alice", found("md5a"));
  CHECK(c.get(scope(), "alice", 0, 3600, 10, true).kind == K::Run);  // force
  c.complete(scope(), "alice", fail);                                // outage
  CHECK(c.get(scope(), "alice", 0, 3600, 10).secret == "md5a");      // still served
  c.invalidate_user("alice");
  CHECK(c.get(scope(), "alice", 0, 3600, 10).kind == K::Run);
  c.complete(scope(), "alice", found("md5b"));
  CHECK(c.get(scope(), "alice", 0, 3600, 10).secret == "md5b");
}

TEST_CASE("auth_cache: DROP AUTH_CACHE forgets one user or all, never a lookup's waiters") {
  AuthCache c;
  for (const char* u : {"a", "b", "c"}) {
    CHECK(c.get(scope(), u, 0, 3600, 10).kind == K::Run);
    c.complete(scope(), u, found("md5x"));
  }
  CHECK(c.get(scope(), "d", 0, 3600, 10).kind == K::Run);  // in flight
  CHECK(c.drop("a") == 1);
  CHECK(c.rows().size() == 2);
  CHECK(c.get(scope(), "a", 0, 3600, 10).kind == K::Run);
  CHECK(c.drop("") == 2);
  CHECK(c.rows().empty());
  CHECK(c.complete(scope(), "d", found("md5d")) == std::vector<size_t>{0});
  for (const auto& r : c.rows()) CHECK(r.source != "");
}

}  // namespace
}  // namespace pgsluice
