// auth_ident_file: parsing and the map check (src/ident.*).
#include <doctest/doctest.h>

#include <string>

#include "ident.h"

using namespace pgsluice;  // NOLINT: test file

TEST_CASE("ident: names, all, quotes and comments") {
  IdentFile f = parse_ident(
      "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n"
      "test   pgbouncer.acme.org   someuser\n"
      "test   pgbouncer.acme.org   anotheruser   # trailing comment\n"
      "test2  \"bouncer\"          all\n"
      "test3  alice                \"all\"\n"
      "\n"
      "  \t\r\n"
      "test4  \"a \"\"quoted\"\" one\"  bob\r\n");
  CHECK(f.errors.empty());
  REQUIRE(f.entries.size() == 5);
  CHECK(f.entries[3].line == 5);
  CHECK(f.has_map("test2"));
  CHECK_FALSE(f.has_map("nosuch"));
  CHECK(ident_allows(f, "test", "pgbouncer.acme.org", "someuser"));
  CHECK(ident_allows(f, "test", "pgbouncer.acme.org", "anotheruser"));
  CHECK_FALSE(ident_allows(f, "test", "pgbouncer.acme.org", "third"));
  CHECK_FALSE(ident_allows(f, "test", "other.acme.org", "someuser"));
  CHECK(ident_allows(f, "test2", "bouncer", "anyone"));  // all
  CHECK_FALSE(ident_allows(f, "test2", "bouncer2", "anyone"));
  CHECK(ident_allows(f, "test3", "alice", "all"));  // a quoted all is a name
  CHECK_FALSE(ident_allows(f, "test3", "alice", "bob"));
  CHECK(ident_allows(f, "test4", "a \"quoted\" one", "bob"));
  CHECK_FALSE(ident_allows(f, "test", "pgbouncer.acme.org", "SOMEUSER"));  // case matters
  CHECK_FALSE(ident_allows(f, "Test", "pgbouncer.acme.org", "someuser"));
}

TEST_CASE("ident: regular expressions, with \\1 as PostgreSQL") {
  IdentFile f = parse_ident(
      "m  /^(.*)@example\\.com$  \\1\n"
      "m  /^admin-              postgres\n"
      "m  /x(y)?z               \\1\n"
      "m  \"/quoted\"            q\n");
  CHECK(f.errors.empty());
  CHECK(ident_allows(f, "m", "ann@example.com", "ann"));
  CHECK_FALSE(ident_allows(f, "m", "ann@example.com", "bob"));
  CHECK_FALSE(ident_allows(f, "m", "ann@example.com.evil", "ann"));
  CHECK(ident_allows(f, "m", "admin-7", "postgres"));
  CHECK_FALSE(ident_allows(f, "m", "xadmin-7", "postgres"));  // anchored by the file's ^
  CHECK(ident_allows(f, "m", "xyz", "y"));
  CHECK_FALSE(ident_allows(f, "m", "xz", ""));  // group 1 did not take part: no match
  CHECK(ident_allows(f, "m", "/quoted", "q"));  // quoted: a name, not a pattern
  CHECK_FALSE(ident_allows(f, "m", "quoted", "q"));
  // Names longer than kIdentMaxMatchedName never reach a regular expression.
  std::string longname(kIdentMaxMatchedName + 1, 'a');
  IdentFile any = parse_ident("m /^a*$ all\nm " + longname + " exact\n");
  CHECK(ident_allows(any, "m", std::string(kIdentMaxMatchedName, 'a'), "x"));
  CHECK_FALSE(ident_allows(any, "m", longname, "x"));
  CHECK(ident_allows(any, "m", longname, "exact"));  // plain names are compared, not matched
}

TEST_CASE("ident: ordinary patterns with groups, classes and quantifiers are taken") {
  IdentFile f = parse_ident(
      "m /^(.*)@example\\.com$ \\1\n"
      "m /^[a-z]+(-[0-9]{1,3})?$ postgres\n"
      "m /^(ops|dba)-[a-z]*$ admin\n"
      "m /^a\\++$ plus\n");
  CHECK(f.errors.empty());
  CHECK(ident_allows(f, "m", "web-12", "postgres"));
  CHECK(ident_allows(f, "m", "dba-x", "admin"));
  CHECK(ident_allows(f, "m", "a+++", "plus"));  // an escaped + is a character
}

TEST_CASE("ident: malformed lines are listed with their line numbers") {
  struct Row {
    const char* text;
    const char* error;
  };
  const Row rows[] = {
      {"m root\n", "expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME, got 2 fields"},
      {"m root postgres extra\n",
       "expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME, got 4 fields"},
      {"m \"root postgres\n", "unterminated quoted string"},
      {"m /(unclosed postgres\n", "invalid regular expression \"(unclosed\""},
      {"m root +group\n", "group (+) and regular-expression database user names are not supported"},
      {"m root /re\n", "group (+) and regular-expression database user names are not supported"},
      {"m root \\1\n", "\\1 in the database user name needs a regular expression"},
      {"m /a++ b\n",
       "regular expression \"a++\" repeats a repetition (like a++ or (a*)+): refused, it can "
       "take exponential time to match"},
      {"m /^(a*)+$ b\n",
       "regular expression \"^(a*)+$\" repeats a repetition (like a++ or (a*)+): refused, it "
       "can take exponential time to match"},
      {"m /(x|y+)*z b\n",
       "regular expression \"(x|y+)*z\" repeats a repetition (like a++ or (a*)+): refused, it "
       "can take exponential time to match"},
      {"m \"\" postgres\n", "empty field"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.text);
    IdentFile f = parse_ident(std::string("# first\nok a b\n") + row.text);
    REQUIRE(f.errors.size() == 1);
    CHECK(f.errors[0].line == 3);
    CHECK(f.errors[0].message == row.error);
    CHECK(f.entries.size() == 1);
  }
  IdentFile nul = parse_ident(std::string("m ro\0ot postgres\n", 17));
  REQUIRE(nul.errors.size() == 1);
  CHECK(nul.errors[0].message == "NUL byte in line");
  IdentFile longline = parse_ident("m " + std::string(kIdentMaxLineLength, 'a') + " b\n");
  REQUIRE(longline.errors.size() == 1);
  CHECK(longline.errors[0].message == "line too long");
  IdentFile longre = parse_ident("m /" + std::string(kIdentMaxPattern + 1, 'a') + " b\n");
  REQUIRE(longre.errors.size() == 1);
  CHECK(longre.errors[0].message == "regular expression too long");
}
