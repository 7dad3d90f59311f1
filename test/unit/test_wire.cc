// Unit tests for the wire codec: startup packets, options, readers, builders.
#include <doctest/doctest.h>

#include "server.h"
#include "varcache.h"
#include "wire.h"

using namespace pgsluice;

namespace {
std::string startup(const std::vector<std::pair<std::string, std::string>>& p) {
  std::string s;
  wire::startup_message(s, p);
  return s;
}
std::span<const uint8_t> span_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
}  // namespace

TEST_CASE("startup message round trip") {
  std::string s = startup({{"user", "alice"}, {"database", "db"}, {"application_name", "x"}});
  auto r = wire::parse_startup(span_of(s));
  REQUIRE(r.ok());
  CHECK(r->kind == wire::StartupPacket::Kind::Startup);
  CHECK(r->version == wire::kProtocol30);
  REQUIRE(r->params.size() == 3);
  CHECK(*r->param("user") == "alice");
  CHECK(*r->param("database") == "db");
  CHECK(r->param("nope") == nullptr);
}

TEST_CASE("startup packet length and layout are checked") {
  std::string s = startup({{"user", "alice"}});
  SUBCASE("declared length differs from the bytes") {
    std::string t = s.substr(0, s.size() - 1);
    CHECK_FALSE(wire::parse_startup(span_of(t)).ok());
  }
  SUBCASE("missing terminator") {
    std::string t = s;
    t.pop_back();  // drop the final NUL, then fix the length
    wire::put_u32(reinterpret_cast<uint8_t*>(t.data()), static_cast<uint32_t>(t.size()));
    CHECK_FALSE(wire::parse_startup(span_of(t)).ok());
  }
  SUBCASE("value without terminator") {
    std::string t;
    wire::Writer w(t);
    w.begin_untyped().u32(wire::kProtocol30).cstr("user").bytes("bob").end();
    CHECK_FALSE(wire::parse_startup(span_of(t)).ok());
  }
  SUBCASE("too short and too long") {
    std::string tiny("\0\0\0\4", 4);
    CHECK_FALSE(wire::parse_startup(span_of(tiny)).ok());
    std::string big = startup({{"user", std::string(11000, 'a')}});
    CHECK_FALSE(wire::parse_startup(span_of(big)).ok());
  }
}

TEST_CASE("SSL, GSS and cancel requests") {
  std::string ssl;
  wire::Writer(ssl).begin_untyped().u32(wire::kSslCode).end();
  auto r = wire::parse_startup(span_of(ssl));
  REQUIRE(r.ok());
  CHECK(r->kind == wire::StartupPacket::Kind::Ssl);

  std::string gss;
  wire::Writer(gss).begin_untyped().u32(wire::kGssCode).end();
  CHECK(wire::parse_startup(span_of(gss))->kind == wire::StartupPacket::Kind::Gss);

  std::string c;
  wire::cancel_request(c, 1234, std::string("\1\2\3\4", 4));
  auto cr = wire::parse_startup(span_of(c));
  REQUIRE(cr.ok());
  CHECK(cr->kind == wire::StartupPacket::Kind::Cancel);
  CHECK(cr->cancel_pid == 1234);
  CHECK(cr->cancel_key == std::string("\1\2\3\4", 4));

  std::string bad;  // 3-byte key is invalid (4..256)
  wire::cancel_request(bad, 1, "abc");
  CHECK_FALSE(wire::parse_startup(span_of(bad)).ok());
  std::string ssl_extra;
  wire::Writer(ssl_extra).begin_untyped().u32(wire::kSslCode).u32(0).end();
  CHECK_FALSE(wire::parse_startup(span_of(ssl_extra)).ok());
}

TEST_CASE("options parsing follows the server's rules") {
  auto r = wire::parse_options("-c TimeZone=UTC --DateStyle=ISO -cextra_float_digits=3");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  CHECK((*r)[0] == std::make_pair(std::string("TimeZone"), std::string("UTC")));
  CHECK((*r)[1] == std::make_pair(std::string("DateStyle"), std::string("ISO")));
  CHECK((*r)[2].first == "extra_float_digits");
  auto esc = wire::parse_options("-c search_path=a\\ b");
  REQUIRE(esc.ok());
  CHECK((*esc)[0].second == "a b");
  auto dash = wire::parse_options("--statement-timeout=5");
  REQUIRE(dash.ok());
  CHECK((*dash)[0].first == "statement_timeout");
  CHECK_FALSE(wire::parse_options("-x").ok());
  CHECK_FALSE(wire::parse_options("-c").ok());
  CHECK_FALSE(wire::parse_options("-c novalue").ok());
}

TEST_CASE("reader never reads past the end") {
  const uint8_t b[] = {0, 0, 0, 7, 'h', 'i', 0, 1};
  wire::Reader r(b, sizeof b);
  uint32_t v = 0;
  REQUIRE(r.u32(v));
  CHECK(v == 7);
  std::string_view s;
  REQUIRE(r.cstr(s));
  CHECK(s == "hi");
  uint16_t u = 0;
  CHECK_FALSE(r.u16(u));  // only one byte left
  CHECK_FALSE(r.ok());
  uint8_t x = 0;
  CHECK_FALSE(r.u8(x));  // stays failed
  const uint8_t nonul[] = {'a', 'b'};
  wire::Reader r2(nonul, 2);
  CHECK_FALSE(r2.cstr(s));
}

TEST_CASE("error response builder and parser agree") {
  std::string m;
  wire::error_response(m, "FATAL", "28P01", "password authentication failed");
  REQUIRE(m[0] == 'E');
  CHECK(wire::get_u32(reinterpret_cast<const uint8_t*>(m.data() + 1)) == m.size() - 1);
  auto f = wire::parse_error({reinterpret_cast<const uint8_t*>(m.data() + 5), m.size() - 5});
  CHECK(f.severity == "FATAL");
  CHECK(f.sqlstate == "28P01");
  CHECK(f.message == "password authentication failed");
  // A field without a terminator ends parsing without reading past the body.
  const uint8_t bad[] = {'C', '2', '8'};
  auto g = wire::parse_error({bad, sizeof bad});
  CHECK(g.sqlstate.empty());
}

TEST_CASE("server login messages: auth requests, ParameterStatus, BackendKeyData") {
  auto body = [](const std::string& m) {  // a built message without its type and length
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.data() + 5), m.size() - 5);
  };
  const uint8_t salt[] = {1, 2, 3, 4};
  std::string m;
  wire::auth_request(m, 5, salt);
  wire::AuthRequest a;
  REQUIRE(wire::parse_auth_request(body(m), a));
  CHECK(a.code == 5);
  REQUIRE(a.salt.size() == 4);
  CHECK(a.salt[3] == 4);
  CHECK_FALSE(wire::parse_auth_request(body(m).first(6), a));  // md5 without its whole salt
  CHECK_FALSE(wire::parse_auth_request(body(m).first(3), a));  // not even a code
  m.clear();
  wire::auth_sasl(m, "SCRAM-SHA-256");
  REQUIRE(wire::parse_auth_request(body(m), a));
  CHECK(a.code == 10);
  CHECK(a.scram_sha_256);
  m.clear();
  wire::auth_sasl(m, "SCRAM-SHA-256-PLUS");
  REQUIRE(wire::parse_auth_request(body(m), a));
  CHECK_FALSE(a.scram_sha_256);
  const uint8_t cont[] = {0, 0, 0, 11, 'r', '=', 'x'};
  REQUIRE(wire::parse_auth_request(cont, a));
  CHECK(a.sasl_data == "r=x");

  m.clear();
  wire::parameter_status(m, "TimeZone", "UTC");
  std::string_view name, value;
  REQUIRE(wire::parse_parameter_status(body(m), name, value));
  CHECK(name == "TimeZone");
  CHECK(value == "UTC");
  CHECK_FALSE(wire::parse_parameter_status(body(m).first(body(m).size() - 1), name, value));

  uint32_t pid = 0;
  std::span<const uint8_t> key;
  const uint8_t k30[] = {0, 0, 1, 0, 9, 8, 7, 6};
  REQUIRE(wire::parse_backend_key(k30, pid, key));
  CHECK(pid == 256);
  CHECK(key.size() == 4);
  CHECK_FALSE(wire::parse_backend_key(std::span<const uint8_t>(k30).first(7), pid, key));
  std::vector<uint8_t> k32(4 + 256, 1), k_long(4 + 257, 1);
  CHECK(wire::parse_backend_key(k32, pid, key));  // protocol 3.2: up to 256 key bytes
  CHECK(key.size() == 256);
  CHECK_FALSE(wire::parse_backend_key(k_long, pid, key));
}

TEST_CASE("builders produce exact bytes") {
  std::string z;
  wire::ready_for_query(z, 'T');
  CHECK(z == std::string("Z\0\0\0\5T", 6));
  std::string k;
  wire::backend_key_data(k, 0x01020304, std::string("\xaa\xbb\xcc\xdd", 4));
  CHECK(k == std::string("K\0\0\0\14\1\2\3\4\xaa\xbb\xcc\xdd", 13));
  std::string q;
  wire::query(q, "select 1");
  CHECK(q == std::string("Q\0\0\0\15select 1\0", 14));
  std::string v;
  wire::negotiate_protocol_version(v, wire::kProtocol30, {"_pq_.x"});
  CHECK(v.size() == 1 + 4 + 4 + 4 + 7);
}

TEST_CASE("frontend message limits mirror the server") {
  CHECK(wire::frontend_limit('Q') == size_t{1} << 30);
  CHECK(wire::frontend_limit('S') == wire::kSmallMessageLimit);
  CHECK(wire::frontend_limit('X') == wire::kSmallMessageLimit);
  CHECK(wire::frontend_limit('Z') == 0);  // a backend type
  CHECK(wire::frontend_limit(0) == 0);
}

TEST_CASE("sql literal quoting") {
  CHECK(wire::sql_literal("a'b") == "'a''b'");
  CHECK(wire::sql_literal("") == "''");
}

TEST_CASE("varcache diff issues SET only for differing values") {
  TrackedNames names("IntervalStyle, search_path");
  CHECK(names.size() == 7);
  CHECK(names.find("timezone") == 2);
  CHECK(names.find("SEARCH_PATH") == 6);
  CHECK(names.find("work_mem") == -1);
  VarCache client(names.size()), server(names.size());
  client.set(2, "UTC");
  server.set(2, "utc");
  CHECK(varcache_diff_sql(names, client, server).empty());  // case-insensitive
  client.set(1, "ISO, MDY");
  server.set(1, "Postgres, DMY");
  client.set(4, "it's");
  CHECK(varcache_diff_sql(names, client, server) ==
        "SET DateStyle='ISO, MDY';SET application_name='it''s';");
}

TEST_CASE("VarCache keeps each value apart in its one string") {
  VarCache v(4);
  CHECK(v.size() == 4);
  for (size_t i = 0; i < 4; i++) CHECK_FALSE(v.has(i));
  CHECK_FALSE(v.has(4));
  v.set(2, "UTC");
  v.set(0, "");
  CHECK(v.has(0));
  CHECK(v.get(0).empty());
  CHECK_FALSE(v.has(1));
  CHECK(v.get(2) == "UTC");
  v.set(1, "a much longer value than the small string buffer");
  v.set(2, "Europe/Amsterdam");
  v.set(0, "x");
  CHECK(v.get(0) == "x");
  CHECK(v.get(1) == "a much longer value than the small string buffer");
  CHECK(v.get(2) == "Europe/Amsterdam");
  CHECK_FALSE(v.has(3));
  v.set(3, "last");
  v.set(1, "");
  CHECK(v.get(1).empty());
  CHECK(v.get(3) == "last");
  v.resize(6);
  CHECK(v.get(3) == "last");
  CHECK_FALSE(v.has(5));
  v.set(5, "five");
  v.resize(3);
  CHECK(v.size() == 3);
  CHECK_FALSE(v.has(3));
  CHECK(v.get(2) == "Europe/Amsterdam");
  v.resize(5);
  CHECK_FALSE(v.has(3));
  CHECK_FALSE(v.has(4));
}

#include "prepared.h"

TEST_CASE("SQL-level PREPARE/EXECUTE/DEALLOCATE lexer") {
  auto p = parse_sql_prepared("  PREPARE q(int, text) AS select $1 + 1, $2;  ");
  CHECK(p.kind == SqlPrepared::Kind::Prepare);
  CHECK(p.name == "q");
  CHECK(p.types == "(int, text)");
  CHECK(p.statement == "select $1 + 1, $2");
  auto q = parse_sql_prepared("prepare \"Mixed\" as select 1");
  CHECK(q.kind == SqlPrepared::Kind::Prepare);
  CHECK(q.name == "Mixed");
  CHECK(q.types.empty());
  auto e = parse_sql_prepared("EXECUTE Q (41, 'a;b')");
  CHECK(e.kind == SqlPrepared::Kind::Execute);
  CHECK(e.name == "q");
  CHECK(e.args == "(41, 'a;b')");
  CHECK(parse_sql_prepared("execute q").kind == SqlPrepared::Kind::Execute);
  CHECK(parse_sql_prepared("deallocate prepare q").kind == SqlPrepared::Kind::Deallocate);
  CHECK(parse_sql_prepared("DEALLOCATE ALL").kind == SqlPrepared::Kind::None);
  // Left alone: several statements, dollar quotes, comments, other commands.
  CHECK(parse_sql_prepared("prepare q as select 1; select 2").kind == SqlPrepared::Kind::None);
  CHECK(parse_sql_prepared("prepare q as select $$x$$").kind == SqlPrepared::Kind::None);
  CHECK(parse_sql_prepared("prepare q as select 1 -- c").kind == SqlPrepared::Kind::None);
  CHECK(parse_sql_prepared("explain execute q").kind == SqlPrepared::Kind::None);
  CHECK(parse_sql_prepared("execute q(1) x").kind == SqlPrepared::Kind::None);
  CHECK(sql_prepared_prefix("  exec", false) == -1);
  CHECK(sql_prepared_prefix("select 1", false) == 0);
  CHECK(sql_prepared_prefix("PREPARE x", false) == 1);
  CHECK(sql_prepared_prefix("exec", true) == 0);
  // The registry key keeps types and statement apart whatever bytes they hold (found by
  // fuzz_sql: a \x02 inside the types once moved text from the types into the statement).
  auto odd = parse_sql_prepared("PREPARE o (int\x02) AS SELECT 1");
  REQUIRE(odd.kind == SqlPrepared::Kind::Prepare);
  StmtEntry oe;
  oe.server_name = "PGSLUICE_9";
  oe.body = sql_stmt_key(odd.types, odd.statement);
  CHECK(is_sql_stmt(oe));
  CHECK(sql_prepare_text(oe) == "PREPARE \"PGSLUICE_9\" (int\x02) AS SELECT 1");
  oe.body = sql_stmt_key("", "SELECT 2");
  CHECK(sql_prepare_text(oe) == "PREPARE \"PGSLUICE_9\" AS SELECT 2");
  CHECK(sql_stmt_key("(a)", "b") != sql_stmt_key("", "(a)b"));
  oe.body = std::string("\x01(x)\x02SELECT 1\0\0\0", 17);  // a Parse body, never SQL-level
  CHECK_FALSE(is_sql_stmt(oe));
  CHECK(rename_in_message("prepared statement \"PGSLUICE_3\" does not exist", "PGSLUICE_3", "s1") ==
        "prepared statement \"s1\" does not exist");
}

TEST_CASE("statement namespace and the scan of client SQL for statement changes") {
  const std::string& ns = stmt_namespace();
  REQUIRE(ns.size() == 26);  // "PGSLUICE_" + 16 hex digits + "_"
  CHECK(ns.rfind("PGSLUICE_", 0) == 0);
  CHECK(ns.back() == '_');
  CHECK(ns.find_first_not_of("0123456789ABCDEF", 9) == 25);
  CHECK(stmt_server_name(12) == ns + "12");
  using S = SqlScan;
  CHECK(sql_scan("select 1") == 0);
  CHECK(sql_scan("select prepared_at, discarded, executed from t") == 0);
  CHECK(sql_scan("DEALLOCATE x") == S::kTouchesStmts);
  CHECK(sql_scan("/* a /* b */ c */deallocate prepare all") == S::kTouchesStmts);
  CHECK(sql_scan("select 1; Discard All") == S::kTouchesStmts);
  CHECK(sql_scan("select name from pg_prepared_statements") == S::kTouchesStmts);
  CHECK(sql_scan("select * from pg_catalog.pg_prepared_statement()") == S::kTouchesStmts);
  CHECK(sql_scan("DO $$BEGIN EXECUTE format('x'); END$$") == S::kTouchesStmts);
  CHECK(sql_scan("DO $$BEGIN PERFORM 1; END$$") == 0);  // nothing dynamic, nothing named
  std::string lower;
  for (char c : ns) lower.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
  CHECK(sql_scan("select '" + ns + "1'") == S::kNamesNamespace);
  CHECK(sql_scan("deallocate \"" + lower + "7\"") == (S::kNamesNamespace | S::kTouchesStmts));
  CHECK(sql_scan("select 'PGSLUICE_1'") == 0);  // another namespace: not ours
  // In pieces: a match across the boundary is found.
  std::string text = "select 1 /* padding padding padding padding */ -- \"" + ns + "9\" ex";
  text += "ecute";
  for (size_t cut = 1; cut < text.size(); cut++) {
    S scan;
    scan.feed(std::string_view(text).substr(0, cut));
    scan.feed(std::string_view(text).substr(cut));
    CHECK(scan.flags == (S::kNamesNamespace | S::kTouchesStmts));
  }
}

TEST_CASE("server_check_prepared: the check query and the SQL-level statements it unverifies") {
  auto proto = std::make_shared<StmtEntry>();
  proto->id = 3;
  proto->server_name = stmt_server_name(3);
  proto->body = std::string("select 1\0\0\0", 11);
  auto sql = std::make_shared<StmtEntry>();
  sql->id = 41;
  sql->server_name = stmt_server_name(41);
  sql->body = sql_stmt_key("", "SELECT 2");
  ServerStmts held;
  held.add(proto);
  std::string q = held.check_sql();
  // No SQL-level statement held: every from_sql row under pgsluice's names is suspect.
  CHECK(q.find("from_sql AND pg_catalog.starts_with(name, 'PGSLUICE_')") != std::string::npos);
  CHECK(q.find("array_position") == std::string::npos);
  held.add(sql);
  q = held.check_sql();
  // Its own SQL-level statement is left out (by number: the text never names the
  // namespace) and prepared again before its next use; the protocol-level one stays trusted.
  CHECK(q.find("'{41}'::pg_catalog.text[], pg_catalog.substr(name, 27)") != std::string::npos);
  CHECK(q.find(stmt_namespace()) == std::string::npos);
  CHECK(q.rfind("SELECT FROM pg_catalog.pg_prepared_statements WHERE ", 0) == 0);
  bool verified = true;
  CHECK(held.touch(41, &verified));
  CHECK(!verified);
  CHECK(held.touch(3, &verified));
  CHECK(verified);
}

namespace {
// sql_scan as first written (a byte at a time, every test at every byte): the table-driven
// scan must give the same flags on any text.
uint8_t sql_scan_reference(std::string_view s) {
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  auto ident = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           static_cast<unsigned char>(c) >= 0x80 || (c >= '0' && c <= '9') || c == '$';
  };
  auto word_at = [&](size_t i, std::string_view w) {
    if (s.size() - i < w.size()) return false;
    for (size_t k = 0; k < w.size(); k++)
      if (lower(s[i + k]) != w[k]) return false;
    return true;
  };
  const std::string& ns = stmt_namespace();
  uint8_t flags = 0;
  for (size_t i = 0; i < s.size(); i++) {
    char c = lower(s[i]);
    if (c == 'p') {
      if (word_at(i, "pg_prepared_statement")) flags |= SqlScan::kTouchesStmts;
      if (s.size() - i >= ns.size()) {
        bool same = true;
        for (size_t k = 0; k < ns.size() && same; k++) same = lower(s[i + k]) == lower(ns[k]);
        if (same) flags |= SqlScan::kNamesNamespace;
      }
    }
    if (c != 'p' && c != 'd' && c != 'e') continue;
    if (i > 0 && ident(s[i - 1])) continue;
    for (std::string_view w : {"prepare", "deallocate", "discard", "execute"}) {
      if (w[0] != c || !word_at(i, w)) continue;
      size_t end = i + w.size();
      if (end == s.size() || !ident(s[end])) flags |= SqlScan::kTouchesStmts;
    }
  }
  return flags;
}
}  // namespace

TEST_CASE("sql_scan gives the same flags as the byte-at-a-time reference") {
  const std::string ns = stmt_namespace();
  const std::string pieces[] = {"prepare",
                                "PREPARE",
                                "deallocate",
                                "Discard",
                                "execute",
                                "eXecute",
                                "pg_prepared_statement",
                                "PG_Prepared_Statements",
                                ns,
                                ns.substr(0, 20),
                                "pg",
                                "p",
                                "d",
                                "e",
                                "x",
                                "_",
                                "$",
                                "1",
                                " ",
                                "(",
                                "'",
                                "\"",
                                ";",
                                "\xc3\xa9",
                                "\x80",
                                "select"};
  uint64_t seed = 12345;
  auto next = [&]() {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<size_t>(seed >> 33);
  };
  size_t touched = 0, named = 0;
  for (int n = 0; n < 20000; n++) {
    std::string text;
    size_t parts = next() % 8;
    for (size_t k = 0; k < parts; k++) text += pieces[next() % std::size(pieces)];
    uint8_t want = sql_scan_reference(text);
    touched += (want & SqlScan::kTouchesStmts) != 0;
    named += (want & SqlScan::kNamesNamespace) != 0;
    CAPTURE(text);
    REQUIRE(sql_scan(text) == want);
  }
  CHECK(touched > 1000);  // the generator reaches both flags, and texts without them
  CHECK(named > 100);
  CHECK(touched < 19000);
}

TEST_CASE("sql_prepared_prefix resumes where the previous call left off") {
  // A query that trickles in: each call starts where the last one stopped, so the white
  // space before the first word is read once, and the answer is the same as from the start.
  std::string text(100000, ' ');
  size_t from = 0;
  CHECK(sql_prepared_prefix(std::string_view(text).substr(0, 50000), false, &from) == -1);
  CHECK(from == 50000);
  text += "PREP";
  CHECK(sql_prepared_prefix(text, false, &from) == -1);
  CHECK(from == 100000);  // the word is read again (at most 12 bytes)
  text += "ARE q AS SELECT 1";
  size_t again = from;
  CHECK(sql_prepared_prefix(text, false, &from) == 1);
  CHECK(sql_prepared_prefix(text, true) == 1);
  CHECK(sql_prepared_prefix("   select 1", true, &again) == 0);  // beyond the text: from 0
  size_t z = 0;
  CHECK(sql_prepared_prefix("  ", true, &z) == 0);  // complete, no word
}

TEST_CASE("backend_whole_limit: PostgreSQL's sizes, with margin for the variable ones") {
  CHECK(wire::backend_whole_limit('Z') == 5);
  CHECK(wire::backend_whole_limit('1') == 4);
  CHECK(wire::backend_whole_limit('2') == 4);
  CHECK(wire::backend_whole_limit('3') == 4);
  CHECK(wire::backend_whole_limit('K') == 264);
  // libpq takes at most 30000 bytes of these; PostgreSQL's own are far smaller.
  for (uint8_t t : {'S', 'C', 'R', 'v'}) {
    CHECK(wire::backend_whole_limit(t) > 30000);
    CHECK(wire::backend_whole_limit(t) <= 64 * 1024);
  }
  for (uint8_t t : {'E', 'N', 'T', 'D', 'A', 't'}) CHECK(wire::backend_whole_limit(t) == 1 << 20);
  // Every type has a limit, well under the 1 GB a streamed message may have.
  for (int t = 0; t < 256; t++) {
    size_t l = wire::backend_whole_limit(static_cast<uint8_t>(t));
    CHECK(l >= 4);
    CHECK(l <= 1 << 20);
  }
}

TEST_CASE("RequestQueue: answered requests and their side data are freed as they go") {
  RequestQueue q;
  // A long pipeline, answered as it goes: indexes stay valid for the requests still queued.
  std::vector<int> live;
  for (int i = 0; i < 100000; i++) {
    Request r{'P', ReqAction::Forward, 0, -1, -1, -1, 0};
    r.client_name = q.undos.add(NameUndo{"n" + std::to_string(i), nullptr});
    r.rename = q.renames.add({"s" + std::to_string(i), "c" + std::to_string(i)});
    q.push(r);
    q.push('S');
    if (i >= 10) {  // ten segments in flight
      const Request& f = q.front();
      CHECK(q.undos[f.client_name].name == "n" + std::to_string(i - 10));
      CHECK(q.renames[f.rename].second == "c" + std::to_string(i - 10));
      q.pop();
      CHECK(q.front_type() == 'S');
      q.pop();
    }
    CHECK(q.size() <= 22);
    CHECK(q.undos.size() <= 11);
    CHECK(q.renames.size() <= 11);
  }
  CHECK(q.syncs() == 10);
  while (!q.empty()) q.pop();
  CHECK(q.undos.empty());
  CHECK(q.renames.empty());
  CHECK(q.syncs() == 0);
  // A request that forgets its undo frees it too.
  Request r{'Q', ReqAction::Forward, 0, -1, q.undos.add(NameUndo{"x", nullptr}), -1, 0};
  q.push(r);
  CHECK(q.flushes() == 1);
  q.forget_undo();
  CHECK(q.front().client_name == -1);
  CHECK(q.undos.empty());
  q.pop();
  CHECK(q.flushes() == 0);
}
