// LISTEN/NOTIFY hub: which simple queries pgsluice answers itself (parse_notify_cmd).
#include "notify_hub.h"

#include <doctest/doctest.h>

using namespace pgsluice;

namespace {

using K = NotifyCmd::Kind;

K kind(std::string_view sql) {
  return parse_notify_cmd(sql).kind;
}
std::string chan(std::string_view sql) {
  return parse_notify_cmd(sql).channel;
}

}  // namespace

TEST_SUITE("notify_hub") {
  TEST_CASE("LISTEN, UNLISTEN and UNLISTEN * alone") {
    CHECK(kind("LISTEN ch") == K::Listen);
    CHECK(chan("LISTEN ch") == "ch");
    CHECK(chan("listen Ch_1$") == "ch_1$");  // unquoted: folded
    CHECK(chan("LISTEN \"Ch\"") == "Ch");    // quoted: kept
    CHECK(chan("LISTEN\"a\"\"b\"") == "a\"b");
    CHECK(kind("UNLISTEN ch") == K::Unlisten);
    CHECK(chan("unlisten CH;") == "ch");
    CHECK(kind("UNLISTEN *") == K::UnlistenAll);
    CHECK(kind("  unlisten\n*  ;; ; ") == K::UnlistenAll);
    CHECK(kind("/* a /* nested */ comment */ LISTEN -- x\n ch -- end") == K::Listen);
    CHECK(chan("LISTEN/**/ch") == "ch");
    CHECK(chan("LISTEN \"select\"") == "select");
    CHECK(chan("LISTEN name") == "name");  // an unreserved keyword is a ColId
    CHECK(chan(std::string("LISTEN ") + std::string(63, 'x')) == std::string(63, 'x'));
  }

  TEST_CASE("anything else is left to PostgreSQL") {
    CHECK(kind("") == K::None);
    CHECK(kind("LISTEN") == K::None);
    CHECK(kind("LISTEN *") == K::None);
    CHECK(kind("LISTEN a b") == K::None);
    CHECK(kind("LISTEN a; LISTEN b") == K::None);
    CHECK(kind("LISTEN a; SELECT 1") == K::None);
    CHECK(kind("SELECT 1; LISTEN a") == K::None);
    CHECK(kind("LISTENa") == K::None);
    CHECK(kind("LISTEN \"\"") == K::None);       // zero-length delimited identifier
    CHECK(kind("LISTEN \"ab") == K::None);       // unterminated
    CHECK(kind("LISTEN a /* open") == K::None);  // unterminated comment
    CHECK(kind("LISTEN select") == K::None);     // reserved
    CHECK(kind("LISTEN user") == K::None);       // reserved
    CHECK(kind("LISTEN U&\"a\"") == K::None);    // Unicode escapes
    CHECK(kind("LISTEN a.b") == K::None);
    CHECK(kind("LISTEN 'a'") == K::None);
    CHECK(kind("LISTEN 1a") == K::None);
    CHECK(kind("LISTEN \xc3\xa9t\xc3\xa9") == K::None);  // not ASCII (client_encoding)
    CHECK(kind(std::string("LISTEN ") + std::string(64, 'x')) == K::None);  // truncated
    CHECK(kind("NOTIFY a") == K::None);
    CHECK(kind("BEGIN; LISTEN a; COMMIT") == K::None);
    CHECK(kind("UNLISTEN * *") == K::None);
  }

  TEST_CASE("quote_channel") {
    CHECK(quote_channel("a") == "\"a\"");
    CHECK(quote_channel("A\"b") == "\"A\"\"b\"");
  }
}
