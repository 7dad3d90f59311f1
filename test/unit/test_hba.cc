// Unit tests for the auth_hba_file parser and matcher (hba.h).
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <map>
#include <string>
#include <vector>

#include "hba.h"

namespace pgsluice {

namespace {

// A loader over an in-memory set of files that records what was asked for.
struct FakeFiles {
  std::map<std::string, std::string> files;
  std::vector<std::string> asked;
  HbaLoader loader() {
    return [this](const std::string& path) -> std::optional<std::string> {
      asked.push_back(path);
      auto it = files.find(path);
      if (it == files.end()) return std::nullopt;
      return it->second;
    };
  }
};

HbaFile parse(std::string_view text, FakeFiles* files = nullptr) {
  static FakeFiles none;
  return parse_hba(text, "/etc/pgsluice/hba.conf", (files ? files : &none)->loader());
}

HbaRequest local(std::string_view db, std::string_view user) {
  HbaRequest r;
  r.unix_socket = true;
  r.database = db;
  r.user = user;
  return r;
}

HbaRequest tcp(const char* ip, std::string_view db, std::string_view user, bool tls = false) {
  HbaRequest r;
  r.tls = tls;
  r.database = db;
  r.user = user;
  if (inet_pton(AF_INET, ip, r.addr.data()) == 1) {
    r.ipv6 = false;
  } else {
    REQUIRE(inet_pton(AF_INET6, ip, r.addr.data()) == 1);
    r.ipv6 = true;
  }
  return r;
}

HbaRequest repl(const char* ip, std::string_view user, bool tls = false) {
  HbaRequest r = tcp(ip, "ignored", user, tls);
  r.physical_replication = true;
  return r;
}

int matched_line(const HbaFile& hba, const HbaRequest& req) {
  const HbaRule* rule = match_hba(hba, req);
  return rule == nullptr ? 0 : rule->line;
}

std::string errors_text(const HbaFile& hba) {
  std::string s;
  for (const HbaProblem& p : hba.errors) s += std::to_string(p.line) + ": " + p.message + "\n";
  return s;
}

}  // namespace

TEST_CASE("hba: table of connections against one rules file") {
  FakeFiles files;
  files.files["/etc/pgsluice/staff"] = "carol, dave\n# comment line\n\nerin \"frank smith\"\n";
  const std::string text =
      "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"                                // 1
      "local   all         postgres                         peer map=admins\n"   // 2
      "local   sameuser    all                              md5\n"               // 3
      "local   all         all                              reject\n"            // 4
      "hostssl \"all\"       alice     10.0.0.0/8             cert map=certs\n"  // 5
      "host    all         bob       10.1.0.0 255.255.0.0   trust\n"             // 6
      "host    app,\"Ops DB\" @staff 192.168.1.0/24         scram-sha-256\n"     // 7
      "hostnossl all       all       192.168.1.0/24         password\n"          // 8
      "host    all         banned    all                    reject\n"            // 9
      "host    replication repl      10.0.0.0/8             md5\n"               // 10
      "host    all         all       2001:db8::/32          scram-sha-256\n"     // 11
      "host    all         all       ::1/128                trust\n"             // 12
      "host    all         all       127.0.0.1/32           trust\n"             // 13
      "host    all         all       ::ffff:10.0.0.0/104    md5\n"               // 14
      "hostssl all         all       0.0.0.0/0              scram-sha-256\n";    // 15
  HbaFile hba = parse(text, &files);
  REQUIRE_MESSAGE(hba.errors.empty(), errors_text(hba));
  CHECK(hba.warnings.empty());
  REQUIRE(hba.rules.size() == 14);

  struct Case {
    HbaRequest req;
    int line;  // 0: no match
  };
  const Case cases[] = {
      // Unix socket: local lines only, in order.
      {local("x", "postgres"), 2},
      {local("carol", "carol"), 3},  // sameuser
      {local("x", "carol"), 4},
      {local("all", "alice"), 4},
      // "all" quoted is a database named all.
      {tcp("10.2.3.4", "all", "alice", true), 5},
      {tcp("10.2.3.4", "app", "alice", true), 15},
      {tcp("10.2.3.4", "app", "alice", false), 0},
      {tcp("11.2.3.4", "all", "alice", true), 15},
      // address plus separate netmask
      {tcp("10.1.200.1", "x", "bob"), 6},
      {tcp("10.1.200.1", "x", "bob", true), 6},
      {tcp("10.2.0.1", "x", "bob"), 0},
      {tcp("10.2.0.1", "x", "bob", true), 15},
      // name lists, quoted names with spaces, @file names
      {tcp("192.168.1.7", "app", "carol"), 7},
      {tcp("192.168.1.7", "Ops DB", "frank smith", true), 7},
      {tcp("192.168.1.7", "app", "erin"), 7},
      {tcp("192.168.1.7", "app", "frank"), 8},
      {tcp("192.168.1.7", "ops db", "carol"), 8},  // names are case-sensitive
      {tcp("192.168.1.7", "other", "carol"), 8},
      {tcp("192.168.1.7", "other", "carol", true), 15},
      {tcp("192.168.2.1", "x", "banned", true), 9},
      {tcp("192.168.1.7", "x", "banned", true), 9},
      // physical replication: only the replication keyword
      {repl("10.5.5.5", "repl"), 10},
      {repl("10.5.5.5", "alice", true), 0},
      {repl("10.5.5.5", "bob"), 0},
      {tcp("10.5.5.5", "replication", "repl"), 0},
      // IPv6
      {tcp("2001:db8::5", "x", "y"), 11},
      {tcp("2001:db8:ffff:ffff::1", "x", "y"), 11},
      {tcp("2001:db9::", "x", "y"), 0},
      {tcp("::1", "x", "y"), 12},
      {tcp("::2", "x", "y"), 0},
      {tcp("127.0.0.1", "x", "y"), 13},
      {tcp("127.0.0.2", "x", "y"), 0},
      // IPv4-mapped IPv6 peers match IPv6 rules only, and IPv4 peers IPv4 rules only.
      {tcp("::ffff:10.1.2.3", "x", "y"), 14},
      {tcp("10.1.2.3", "x", "y"), 0},
      {tcp("::ffff:127.0.0.1", "x", "y"), 0},
      {tcp("::ffff:192.168.1.7", "app", "carol"), 0},
      {tcp("::ffff:10.1.2.3", "x", "y", true), 14},
      // 0.0.0.0/0 is IPv4 only
      {tcp("2001:db9::", "x", "y", true), 0},
      {tcp("203.0.113.9", "x", "y", true), 15},
  };
  int n = 0;
  for (const Case& c : cases) {
    CAPTURE(n);
    CHECK(matched_line(hba, c.req) == c.line);
    n++;
  }
  // The rule carries the method and the map= option.
  const HbaRule* r = match_hba(hba, local("x", "postgres"));
  REQUIRE(r != nullptr);
  CHECK(r->method == HbaMethod::Peer);
  CHECK(r->map == "admins");
  r = match_hba(hba, tcp("10.2.3.4", "all", "alice", true));
  REQUIRE(r != nullptr);
  CHECK(r->method == HbaMethod::Cert);
  CHECK(r->map == "certs");
  CHECK(match_hba(hba, tcp("127.0.0.1", "x", "y"))->map.empty());
  CHECK(files.asked == std::vector<std::string>{"/etc/pgsluice/staff"});
}

TEST_CASE("hba: first matching line wins, even a reject before a trust") {
  HbaFile hba = parse(
      "host all all 10.0.0.5/32 reject\n"
      "host all all 10.0.0.0/24 trust\n"
      "host all all 10.0.0.0/24 reject\n");
  REQUIRE(hba.rules.size() == 3);
  CHECK(match_hba(hba, tcp("10.0.0.5", "d", "u"))->method == HbaMethod::Reject);
  CHECK(match_hba(hba, tcp("10.0.0.6", "d", "u"))->method == HbaMethod::Trust);
  CHECK(match_hba(hba, tcp("10.0.0.6", "d", "u"))->line == 2);
  CHECK(match_hba(hba, tcp("10.0.1.6", "d", "u")) == nullptr);
  CHECK(match_hba(hba, local("d", "u")) == nullptr);
  CHECK(match_hba(HbaFile{}, tcp("10.0.0.6", "d", "u")) == nullptr);
}

TEST_CASE("hba: every method keyword, and the names it prints as") {
  const char* names[] = {"trust", "reject", "password", "md5", "scram-sha-256", "cert", "peer"};
  for (const char* name : names) {
    CAPTURE(name);
    HbaFile hba = parse(std::string("host all all all ") + name + "\n");
    REQUIRE_MESSAGE(hba.rules.size() == 1, errors_text(hba));
    CHECK(hba_method_name(hba.rules[0].method) == name);
    CHECK(hba.rules[0].address.kind == HbaAddress::Kind::All);
  }
  HbaFile hba = parse("local all all trust\nhostssl all all all md5\nhostnossl all all all md5\n");
  REQUIRE(hba.rules.size() == 3);
  CHECK(hba.rules[0].type == HbaConnType::Local);
  CHECK(hba.rules[0].address.kind == HbaAddress::Kind::Unix);
  CHECK(hba.rules[1].type == HbaConnType::HostSsl);
  CHECK(hba.rules[2].type == HbaConnType::HostNoSsl);
  // map= is kept on any method (PgBouncer documents it for cert and peer).
  hba = parse("local all all peer map=m1\nhostssl all all all cert map=\"\"x\n");
  CHECK(hba.rules.size() == 1);
  CHECK(hba.rules[0].map == "m1");
  CHECK(hba.error_count == 1);  // `map=` ends at the quote, so the map name is empty
}

TEST_CASE("hba: hostssl, hostnossl and host against TLS and plain connections") {
  HbaFile hba = parse(
      "hostssl all s all trust\n"
      "hostnossl all n all trust\n"
      "host all h all trust\n"
      "local all l trust\n");
  REQUIRE(hba.rules.size() == 4);
  for (bool tls : {false, true}) {
    CAPTURE(tls);
    CHECK(matched_line(hba, tcp("10.0.0.1", "d", "s", tls)) == (tls ? 1 : 0));
    CHECK(matched_line(hba, tcp("10.0.0.1", "d", "n", tls)) == (tls ? 0 : 2));
    CHECK(matched_line(hba, tcp("::1", "d", "h", tls)) == 3);
    CHECK(matched_line(hba, tcp("::1", "d", "l", tls)) == 0);
  }
  CHECK(matched_line(hba, local("d", "l")) == 4);
  CHECK(matched_line(hba, local("d", "h")) == 0);
  CHECK(matched_line(hba, local("d", "s")) == 0);  // the Unix socket is never hostssl
}

TEST_CASE("hba: masks /0, /32, /128, boundaries and separate netmasks") {
  HbaFile hba = parse(
      "host all v4all 0.0.0.0/0 trust\n"
      "host all v6all ::/0 trust\n"
      "host all one4 192.0.2.7/32 trust\n"
      "host all one6 2001:db8::7/128 trust\n"
      "host all nine 10.0.0.0/9 trust\n"
      "host all v6b 2001:db8:8000::/33 trust\n"
      "host all sep4 10.0.0.1 255.0.0.255 trust\n"
      "host all sep6 fe80:: ffff:ffff:ffff:ffff:: trust\n"
      "host all odd 10.0.0.0/31 trust\n"
      "host all odd6 2001:db8::/127 trust\n");
  REQUIRE_MESSAGE(hba.rules.size() == 10, errors_text(hba));
  CHECK(hba.warnings.empty());
  CHECK(matched_line(hba, tcp("0.0.0.0", "d", "v4all")) == 1);
  CHECK(matched_line(hba, tcp("255.255.255.255", "d", "v4all")) == 1);
  CHECK(matched_line(hba, tcp("::1", "d", "v4all")) == 0);
  CHECK(matched_line(hba, tcp("ffff::1", "d", "v6all")) == 2);
  CHECK(matched_line(hba, tcp("1.2.3.4", "d", "v6all")) == 0);
  CHECK(matched_line(hba, tcp("192.0.2.7", "d", "one4")) == 3);
  CHECK(matched_line(hba, tcp("192.0.2.6", "d", "one4")) == 0);
  CHECK(matched_line(hba, tcp("192.0.2.8", "d", "one4")) == 0);
  CHECK(matched_line(hba, tcp("2001:db8::7", "d", "one6")) == 4);
  CHECK(matched_line(hba, tcp("2001:db8::6", "d", "one6")) == 0);
  CHECK(matched_line(hba, tcp("2001:db8::7:0", "d", "one6")) == 0);
  CHECK(matched_line(hba, tcp("10.127.255.255", "d", "nine")) == 5);
  CHECK(matched_line(hba, tcp("10.128.0.0", "d", "nine")) == 0);
  CHECK(matched_line(hba, tcp("2001:db8:ffff::1", "d", "v6b")) == 6);
  CHECK(matched_line(hba, tcp("2001:db8:7fff::1", "d", "v6b")) == 0);
  // A non-contiguous separate mask: first and last byte compared.
  CHECK(matched_line(hba, tcp("10.200.100.1", "d", "sep4")) == 7);
  CHECK(matched_line(hba, tcp("10.200.100.2", "d", "sep4")) == 0);
  CHECK(matched_line(hba, tcp("11.200.100.1", "d", "sep4")) == 0);
  CHECK(matched_line(hba, tcp("fe80::1234:5678", "d", "sep6")) == 8);
  CHECK(matched_line(hba, tcp("fe81::1", "d", "sep6")) == 0);
  CHECK(matched_line(hba, tcp("10.0.0.1", "d", "odd")) == 9);
  CHECK(matched_line(hba, tcp("10.0.0.2", "d", "odd")) == 0);
  CHECK(matched_line(hba, tcp("2001:db8::1", "d", "odd6")) == 10);
  CHECK(matched_line(hba, tcp("2001:db8::2", "d", "odd6")) == 0);
}

TEST_CASE("hba: address bits outside the mask: kept with a warning, never matches") {
  // PgBouncer's behaviour (PostgreSQL would match 10.0.0.0/8 here).
  HbaFile hba = parse("host all all 10.1.2.3/8 reject\nhost all all all trust\n");
  CHECK(hba.errors.empty());
  REQUIRE(hba.rules.size() == 2);
  REQUIRE(hba.warnings.size() == 1);
  CHECK(hba.warnings[0].line == 1);
  CHECK(hba.warnings[0].message.find("10.1.2.3") != std::string::npos);
  CHECK(matched_line(hba, tcp("10.1.2.3", "d", "u")) == 2);
  CHECK(matched_line(hba, tcp("10.0.0.0", "d", "u")) == 2);
}

TEST_CASE("hba: quoted keywords are names; keyword quirks of PgBouncer") {
  HbaFile hba = parse(
      "host \"sameuser\" \"all\" all trust\n"          // 1: database sameuser, user all
      "host \"replication\" u all trust\n"             // 2: database named replication
      "host \"@notafile\" \"+notagroup\" all trust\n"  // 3: plain names
      "host d1 sameuser all md5\n"                     // 4: user == database (PgBouncer)
      "host all replication all md5\n"                 // 5: matches no user (PgBouncer)
      "host \"a\"\"b\" \"\" all password\n");          // 6: a"b and the empty name
  REQUIRE_MESSAGE(hba.rules.size() == 6, errors_text(hba));
  CHECK(matched_line(hba, tcp("1.1.1.1", "sameuser", "all")) == 1);
  CHECK(matched_line(hba, tcp("1.1.1.1", "x", "x")) == 0);
  CHECK(matched_line(hba, tcp("1.1.1.1", "sameuser", "bob")) == 0);
  CHECK(matched_line(hba, tcp("1.1.1.1", "replication", "u")) == 2);
  CHECK(matched_line(hba, repl("1.1.1.1", "u")) == 0);
  CHECK(matched_line(hba, tcp("1.1.1.1", "@notafile", "+notagroup")) == 3);
  CHECK(matched_line(hba, tcp("1.1.1.1", "d1", "d1")) == 4);
  CHECK(matched_line(hba, tcp("1.1.1.1", "d1", "d2")) == 0);
  CHECK(matched_line(hba, tcp("1.1.1.1", "d2", "replication")) == 0);
  CHECK(matched_line(hba, tcp("1.1.1.1", "a\"b", "")) == 6);
  // Unquoted keywords in a list, duplicates and spacing around commas.
  hba = parse("host  a , b,all ,\"c\"   u1,u2 , u1  all trust # trailing comment\n");
  REQUIRE_MESSAGE(hba.rules.size() == 1, errors_text(hba));
  CHECK(hba.rules[0].databases.all);
  CHECK(hba.rules[0].databases.names.size() == 3);
  CHECK(hba.rules[0].users.names.size() == 2);
  CHECK(matched_line(hba, tcp("1.1.1.1", "zz", "u2")) == 1);
  CHECK(matched_line(hba, tcp("1.1.1.1", "zz", "u3")) == 0);
}

TEST_CASE("hba: comments, blank lines, CRLF, tabs and line numbers") {
  HbaFile hba = parse(
      "\n"
      "   # indented comment\n"
      "\t\r\n"
      "local\tall\tall\ttrust\r\n"
      "host all all \"127.0.0.1/32\" trust\n"  // quoted address: error on line 5
      "host all all ::1/128 trust#no space before comment\n"
      "local all all reject");  // no final newline
  REQUIRE(hba.rules.size() == 3);
  CHECK(hba.rules[0].line == 4);
  CHECK(hba.rules[1].line == 6);
  CHECK(hba.rules[2].line == 7);
  REQUIRE(hba.errors.size() == 1);
  CHECK(hba.errors[0].line == 5);
  CHECK(parse("").rules.empty());
  CHECK(parse("\n\n# only comments\n").errors.empty());
}

TEST_CASE("hba: every error path names its line, and the other lines are kept") {
  struct Case {
    const char* line;
    const char* reason;  // substring of the message
  };
  const Case cases[] = {
      {"hostgssenc all all all trust", "unknown connection type"},
      {"hostnogssenc all all all trust", "unknown connection type"},
      {"include other.conf", "unknown connection type"},
      {"HOST all all all trust", "unknown connection type"},
      {"\"host\" all all all trust", "unknown connection type"},
      {", all all all trust", "unknown connection type"},
      {"host", "expected a database name, found end of line"},
      {"host all", "expected a user name, found end of line"},
      {"host all,", "expected a database name"},
      {"host all,,x all all trust", "expected a database name, found ','"},
      {"host all all", "expected an address, found end of line"},
      {"host all all all", "expected an authentication method, found end of line"},
      {"host samerole all all trust", "samerole is not supported"},
      {"host samegroup all all trust", "samegroup is not supported"},
      {"host all +admins all trust", "group names (+admins) are not supported"},
      {"host all all samehost trust", "samehost is not supported"},
      {"host all all samenet trust", "samenet is not supported"},
      {"host all all db.example.com trust", "host names are not supported"},
      {"host all all .example.com trust", "host names are not supported"},
      {"host all all 10.0.0.0/33 trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0/ trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0/+8 trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0/-1 trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0/0008 trust", "invalid CIDR mask"},
      {"host all all ::/129 trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0/8/8 trust", "invalid CIDR mask"},
      {"host all all 10.0.0.0 trust", "invalid netmask \"trust\""},
      {"host all all 10.0.0.0", "expected a netmask"},
      {"host all all 10.0.0.0 ffff:: trust", "invalid netmask"},
      {"host all all ::1 255.255.255.255 trust", "invalid netmask"},
      {"host all all 256.0.0.1/32 trust", "invalid IP address"},
      {"host all all all ident", "unsupported authentication method \"ident\""},
      {"host all all all ldap ldapserver=x", "unsupported authentication method \"ldap\""},
      {"host all all all gss", "unsupported authentication method"},
      {"host all all all pam", "unsupported authentication method"},
      {"host all all all TRUST", "unsupported authentication method"},
      {"host all all all \"trust\"", "expected an authentication method, found quoted"},
      {"local all all 127.0.0.1/32 trust", "unsupported authentication method"},
      {"host all all all trust map=", "empty map= option"},
      {"host all all all trust clientcert=verify-full", "unsupported option"},
      {"host all all all cert map=a map=b", "unsupported option \"map=b\""},
      {"host all all all trust extra", "unsupported option"},
      {"host all all all trust \"open", "unsupported option an unterminated quoted string"},
      {"host \"db all all trust", "an unterminated quoted string"},
      {"host all @missing.txt all trust", "could not read @file \"/etc/pgsluice/missing.txt\""},
      {"host all @ all trust", "empty @file name"},
      // No line continuation (PgBouncer has none): the backslash is a token of its own.
      {"host all all all \\", "unsupported authentication method \"\\\""},
      {"host all all all trust\\", "unsupported authentication method \"trust\\\""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.line);
    std::string text = "local all all trust\n" + std::string(c.line) + "\nhost all all all md5\n";
    HbaFile hba = parse(text);
    REQUIRE(hba.errors.size() == 1);
    CHECK(hba.error_count == 1);
    CHECK(hba.errors[0].line == 2);
    CHECK_MESSAGE(hba.errors[0].message.find(c.reason) != std::string::npos, hba.errors[0].message);
    REQUIRE(hba.rules.size() == 2);
    CHECK(hba.rules[0].line == 1);
    CHECK(hba.rules[1].line == 3);
  }
  // A NUL byte inside a line (the table's string literal stops at the NUL).
  HbaFile hba = parse(std::string("host all all all trust\0 reject\n", 31));
  REQUIRE(hba.errors.size() == 1);
  CHECK(hba.errors[0].message == "NUL byte in line");
  CHECK(hba.rules.empty());
  // A line continued with a backslash gives two errors, as in PgBouncer.
  hba = parse("host all all all \\\n  trust\n");
  CHECK(hba.error_count == 2);
  CHECK(hba.rules.empty());
}

TEST_CASE("hba: a skipped reject line is visible to the caller") {
  HbaFile hba = parse(
      "host all +blocked all reject\n"
      "host all all all trust\n");
  REQUIRE(hba.error_count == 1);
  // The file as PgBouncer would load it lets everyone in; the caller is expected to refuse it.
  CHECK(matched_line(hba, tcp("10.0.0.1", "d", "blocked")) == 2);
}

TEST_CASE("hba: @file names, relative paths, nesting, keywords and errors inside") {
  FakeFiles files;
  files.files["/etc/pgsluice/dbs.txt"] = "sales,  hr\n\"Big Db\" @sub/more.txt\n";
  files.files["/etc/pgsluice/sub/more.txt"] = "# nested, relative to sub/\n@deeper.txt\n";
  files.files["/etc/pgsluice/sub/deeper.txt"] = "deep\n";
  files.files["/abs/users.txt"] = "ann\nbea,cid\n";
  files.files["/etc/pgsluice/everyone.txt"] = "all\n";
  files.files["/etc/pgsluice/samers.txt"] = "sameuser\n";
  files.files["/etc/pgsluice/bad.txt"] = "ok\n+grp\n";
  files.files["/etc/pgsluice/self.txt"] = "x, @self.txt\n";
  files.files["/etc/pgsluice/empty.txt"] = "";
  HbaFile hba = parse(
      "host @dbs.txt @/abs/users.txt all md5\n"            // 1
      "host @samers.txt @everyone.txt 10.0.0.0/8 trust\n"  // 2
      "host all @bad.txt all trust\n"                      // 3: error
      "host all @self.txt all trust\n"                     // 4: error (loop)
      "host all @empty.txt,zed all password\n",            // 5
      &files);
  CHECK(hba.error_count == 2);
  REQUIRE(hba.errors.size() == 2);
  CHECK(hba.errors[0].line == 3);
  CHECK(hba.errors[0].message.find("@file \"/etc/pgsluice/bad.txt\" line 2") != std::string::npos);
  CHECK(hba.errors[0].message.find("+grp") != std::string::npos);
  CHECK(hba.errors[1].line == 4);
  CHECK(hba.errors[1].message.find("nesting deeper than 10") != std::string::npos);
  REQUIRE(hba.rules.size() == 3);
  const HbaRule& r1 = hba.rules[0];
  CHECK(r1.databases.names == std::set<std::string, std::less<>>{"sales", "hr", "Big Db", "deep"});
  CHECK(r1.users.names == std::set<std::string, std::less<>>{"ann", "bea", "cid"});
  CHECK(matched_line(hba, tcp("1.2.3.4", "Big Db", "cid")) == 1);
  CHECK(matched_line(hba, tcp("1.2.3.4", "deep", "ann")) == 1);
  CHECK(matched_line(hba, tcp("1.2.3.4", "nested", "ann")) == 0);
  // Keywords inside @files keep their meaning.
  CHECK(matched_line(hba, tcp("10.2.3.4", "u9", "u9")) == 2);
  CHECK(matched_line(hba, tcp("10.2.3.4", "d9", "u9")) == 0);
  CHECK(matched_line(hba, tcp("1.2.3.4", "any", "zed")) == 5);
  // A file name without a directory resolves against nothing.
  FakeFiles plain;
  plain.files["users.txt"] = "u\n";
  HbaFile p = parse_hba("local all @users.txt trust\n", "hba.conf", plain.loader());
  CHECK(p.errors.empty());
  CHECK(plain.asked == std::vector<std::string>{"users.txt"});
  // No loader at all: every @file is unreadable.
  p = parse_hba("local all @users.txt trust\n", "hba.conf", HbaLoader{});
  CHECK(p.error_count == 1);
}

TEST_CASE("hba: bounds on line length, rules, problems and bytes read") {
  std::string long_line = "local all " + std::string(kHbaMaxLineLength, 'u') + " trust\n";
  HbaFile hba = parse(long_line + "local all all trust\n");
  REQUIRE(hba.errors.size() == 1);
  CHECK(hba.errors[0].message.find("line longer than") != std::string::npos);
  CHECK(hba.rules.size() == 1);

  std::string many;
  for (size_t i = 0; i < kHbaMaxRules + 5; i++) many += "local all all trust\n";
  hba = parse(many);
  CHECK(hba.rules.size() == kHbaMaxRules);
  REQUIRE(hba.errors.size() == 1);
  CHECK(hba.errors[0].line == static_cast<int>(kHbaMaxRules) + 1);

  std::string bad;
  for (int i = 0; i < 150; i++) bad += "nonsense\n";
  hba = parse(bad);
  CHECK(hba.errors.size() == kHbaMaxProblems);
  CHECK(hba.error_count == 150);

  FakeFiles files;
  files.files["/etc/pgsluice/big.txt"] = std::string(kHbaMaxTotalBytes, 'a');
  hba = parse("local all @big.txt trust\nlocal all all trust\n", &files);
  REQUIRE(hba.errors.size() == 1);
  CHECK(hba.errors[0].message.find("larger than") != std::string::npos);
  CHECK(hba.rules.size() == 1);

  // A file that names itself twice per line stops at the nesting limit, not exponentially.
  files.files["/etc/pgsluice/fan.txt"] = "@fan.txt @fan.txt\n";
  files.asked.clear();
  hba = parse("local all @fan.txt trust\n", &files);
  CHECK(hba.error_count == 1);
  CHECK(files.asked.size() == static_cast<size_t>(kHbaMaxIncludeDepth));
}

TEST_CASE("hba: PostgreSQL's no-match message") {
  CHECK(hba_no_match_message(tcp("10.0.0.1", "app", "alice", true)) ==
        "no pg_hba.conf entry for host \"10.0.0.1\", user \"alice\", database \"app\", SSL "
        "encryption");
  CHECK(hba_no_match_message(tcp("::1", "app", "alice")) ==
        "no pg_hba.conf entry for host \"::1\", user \"alice\", database \"app\", no encryption");
  CHECK(hba_no_match_message(tcp("::ffff:10.1.2.3", "d", "u")) ==
        "no pg_hba.conf entry for host \"::ffff:10.1.2.3\", user \"u\", database \"d\", no "
        "encryption");
  CHECK(hba_no_match_message(local("d", "u")) ==
        "no pg_hba.conf entry for host \"[local]\", user \"u\", database \"d\", no encryption");
  CHECK(hba_no_match_message(repl("192.0.2.1", "r", true)) ==
        "no pg_hba.conf entry for replication connection from host \"192.0.2.1\", user \"r\", SSL "
        "encryption");
  CHECK(kHbaNoMatchSqlstate == "28000");
}

}  // namespace pgsluice
