// Session settings: the SET/RESET lexer, PostgreSQL's transaction rules, the restoring SQL.
#include "session_state.h"

#include <doctest/doctest.h>

#include "varcache.h"

using namespace pgsluice;

namespace {

std::vector<SessionStmt> lex(std::string_view sql, bool scs = true) {
  std::vector<SessionStmt> v;
  bool changes = lex_session_sql(sql, scs, &v);
  bool any = false;
  for (const auto& s : v) any = any || changes_settings(s.kind);
  CHECK(changes == any);
  CHECK(lex_session_sql(sql, scs, nullptr) == changes);
  return v;
}

std::span<const uint8_t> bytes(std::string_view s) {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// Feeds a CommandComplete with `tag` for the followed request of type `front`.
void cc(SessionState& st, std::string_view tag, uint8_t front = 'Q') {
  std::string b(tag);
  b.push_back('\0');
  st.on_reply('C', bytes(b), front);
}
void rfq(SessionState& st, char status, uint8_t front = 'Q') {
  std::string b(1, status);
  st.on_reply('Z', bytes(b), front);
}
void err(SessionState& st, uint8_t front = 'Q') {
  st.on_reply('E', {}, front);
}

// Runs a simple query whose statements all succeed; `status` is the ReadyForQuery byte.
void run(SessionState& st, std::string_view sql, char status, std::vector<std::string> tags) {
  std::vector<SessionStmt> v;
  lex_session_sql(sql, true, &v);
  st.note_query(v, true);
  for (const auto& t : tags) cc(st, t);
  rfq(st, status);
}

std::string value(const SessionState& st, std::string_view key) {
  const auto* e = st.settings().find(key);
  return e == nullptr ? "<default>" : e->sql;
}

}  // namespace

TEST_CASE("session lexer: SET forms") {
  auto v = lex("SET search_path = pg_catalog, public");
  REQUIRE(v.size() == 1);
  CHECK(v[0].kind == StmtKind::Set);
  CHECK(v[0].key == "search_path");
  CHECK(v[0].sql == "SET search_path TO pg_catalog, public");

  v = lex("set SESSION Statement_Timeout to '1234ms' -- a comment");
  REQUIRE(v.size() == 1);
  CHECK(v[0].key == "statement_timeout");
  CHECK(v[0].sql == "SET Statement_Timeout TO '1234ms'");

  v = lex("SET search_path TO 'a', /* x */ \"B\"");
  CHECK(v[0].sql == "SET search_path TO 'a', \"B\"");

  v = lex("SET myapp.tenant = 'x;y'; SELECT 1");
  REQUIRE(v.size() == 2);
  CHECK(v[0].key == "myapp.tenant");
  CHECK(v[0].sql == "SET myapp.tenant TO 'x;y'");
  CHECK(v[1].kind == StmtKind::Other);

  v = lex("SET work_mem TO DEFAULT");
  CHECK(v[0].kind == StmtKind::Reset);
  CHECK(v[0].sql == "RESET work_mem");
  v = lex("SET ROLE alice");
  CHECK(v[0].kind == StmtKind::Set);
  CHECK(v[0].key == "role");
  CHECK(v[0].sql == "SET ROLE alice");
  v = lex("SET ROLE NONE");
  CHECK(v[0].kind == StmtKind::Reset);
  v = lex("SET SESSION AUTHORIZATION 'bob'");
  CHECK(v[0].key == "session_authorization");
  CHECK(v[0].sql == "SET SESSION AUTHORIZATION 'bob'");
  v = lex("SET SESSION AUTHORIZATION DEFAULT");
  CHECK(v[0].kind == StmtKind::Reset);
  v = lex("SET SCHEMA 'x'");
  CHECK(v[0].key == "search_path");
  CHECK(v[0].sql == "SET SCHEMA 'x'");
  v = lex("SET TIME ZONE LOCAL");
  CHECK(v[0].kind == StmtKind::Reset);
  CHECK(v[0].key == "timezone");
  v = lex("SET LOCAL search_path = x");
  CHECK(v[0].kind == StmtKind::Local);
  v = lex("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
  CHECK(v[0].kind == StmtKind::Local);
  v = lex("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
  CHECK(v[0].kind == StmtKind::Set);
  CHECK(v[0].sql == "SET default_transaction_read_only TO 'on'");
  v = lex("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ");
  CHECK(v[0].key == "default_transaction_isolation");
  CHECK(v[0].sql == "SET default_transaction_isolation TO 'repeatable read'");
  v = lex("SET SESSION CHARACTERISTICS AS TRANSACTION NOT DEFERRABLE");
  CHECK(v[0].sql == "SET default_transaction_deferrable TO 'off'");
  v = lex("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, DEFERRABLE");
  CHECK(v[0].kind == StmtKind::Unknown);
  v = lex("SET x");  // a syntax error: PostgreSQL refuses it
  CHECK(v[0].kind == StmtKind::Other);
}

TEST_CASE("session lexer: RESET, DISCARD, transactions") {
  auto v = lex("RESET ALL; reset search_path; RESET ROLE; DISCARD ALL; DISCARD PLANS");
  REQUIRE(v.size() == 5);
  CHECK(v[0].kind == StmtKind::ResetAll);
  CHECK(v[1].kind == StmtKind::Reset);
  CHECK(v[1].sql == "RESET search_path");
  CHECK(v[2].kind == StmtKind::Reset);
  CHECK(v[2].key == "role");
  CHECK(v[3].kind == StmtKind::DiscardAll);
  CHECK(v[4].kind == StmtKind::Other);

  v =
      lex("BEGIN; START TRANSACTION; COMMIT; END; ROLLBACK; ABORT WORK; COMMIT AND CHAIN; "
          "ROLLBACK AND NO CHAIN; SAVEPOINT a; RELEASE SAVEPOINT \"A\"; ROLLBACK TO b; "
          "ROLLBACK TRANSACTION TO SAVEPOINT c; PREPARE TRANSACTION 'x'; COMMIT PREPARED 'x'; "
          "PREPARE p AS SELECT 1");
  REQUIRE(v.size() == 15);
  CHECK(v[0].kind == StmtKind::Begin);
  CHECK(v[1].kind == StmtKind::Begin);
  CHECK(v[2].kind == StmtKind::Commit);
  CHECK(v[3].kind == StmtKind::Commit);
  CHECK(v[4].kind == StmtKind::Rollback);
  CHECK(v[5].kind == StmtKind::Rollback);
  CHECK(v[6].kind == StmtKind::CommitChain);
  CHECK(v[7].kind == StmtKind::Rollback);
  CHECK(v[8].kind == StmtKind::Savepoint);
  CHECK(v[8].key == "a");
  CHECK(v[9].kind == StmtKind::Release);
  CHECK(v[9].key == "A");
  CHECK(v[10].kind == StmtKind::RollbackTo);
  CHECK(v[10].key == "b");
  CHECK(v[11].kind == StmtKind::RollbackTo);
  CHECK(v[11].key == "c");
  CHECK(v[12].kind == StmtKind::Commit);
  CHECK(v[13].kind == StmtKind::Other);
  CHECK(v[14].kind == StmtKind::Other);
}

TEST_CASE("session lexer: quotes, comments and statement boundaries") {
  // Nothing inside strings, identifiers, dollar quotes or comments starts a statement.
  CHECK(lex("SELECT 'a; SET x = 1'").size() == 1);
  CHECK_FALSE(lex_session_sql("SELECT 'a; SET x = 1'", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT \"a; SET x = 1\"", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT $$a; SET x = 1$$", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT $t$a; $$ SET x = 1$t$", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT 1 -- ; SET x = 1", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT 1 /* /* ; */ SET x = 1 */", true, nullptr));
  CHECK_FALSE(lex_session_sql("SELECT E'\\'; SET x = 1'", true, nullptr));
  // standard_conforming_strings off: a backslash escapes in a plain string too.
  CHECK_FALSE(lex_session_sql("SELECT '\\'; SET x = 1'", false, nullptr));
  CHECK(lex_session_sql("SELECT '\\'; SET x = 1", true, nullptr));
  // $1 is a parameter, not a dollar quote.
  CHECK(lex_session_sql("SELECT $1; SET x = 1", true, nullptr));
  CHECK(lex_session_sql("UPDATE t SET a = 1; /* c */ SET x = 1", true, nullptr));
  CHECK_FALSE(lex_session_sql("UPDATE t SET a = 1", true, nullptr));
  // A backslash in a plain string is written E'...' so that it means the same under either
  // standard_conforming_strings when it is sent again.
  CHECK(lex("SET a.b = 'x\\y'")[0].sql == "SET a.b TO E'x\\\\y'");
  CHECK(lex("SET a.b = 'x\\';y'", false)[0].sql == "SET a.b TO E'x\\';y'");
  CHECK(lex("SET a.b = E'x\\y'")[0].sql == "SET a.b TO E'x\\y'");
  auto v = lex(";; SELECT 1;;  ; SET x=1;");
  REQUIRE(v.size() == 2);
  CHECK(v[1].sql == "SET x TO 1");
  CHECK(lex("").empty());
  CHECK(lex("  -- only a comment").empty());
}

TEST_CASE("session state: PostgreSQL's transaction rules") {
  TrackedNames tracked;
  SessionState st(&tracked, false);

  SUBCASE("a SET outside a block persists; SET LOCAL never does") {
    run(st, "SET search_path = a", 'I', {"SET"});
    CHECK(value(st, "search_path") == "SET search_path TO a");
    run(st, "BEGIN", 'T', {"BEGIN"});
    run(st, "SET LOCAL search_path = b", 'T', {"SET"});
    run(st, "COMMIT", 'I', {"COMMIT"});
    CHECK(value(st, "search_path") == "SET search_path TO a");
  }
  SUBCASE("rollback undoes, commit keeps") {
    run(st, "BEGIN; SET search_path = a", 'T', {"BEGIN", "SET"});
    run(st, "ROLLBACK", 'I', {"ROLLBACK"});
    CHECK(st.settings().empty());
    run(st, "BEGIN", 'T', {"BEGIN"});
    run(st, "SET search_path = b", 'T', {"SET"});
    run(st, "COMMIT", 'I', {"COMMIT"});
    CHECK(value(st, "search_path") == "SET search_path TO b");
  }
  SUBCASE("a failed transaction's COMMIT rolls back") {
    run(st, "BEGIN; SET statement_timeout = 5", 'T', {"BEGIN", "SET"});
    st.note_query(lex("SELECT 1/0"), true);
    err(st);
    rfq(st, 'E');
    run(st, "COMMIT", 'I', {"ROLLBACK"});
    CHECK(st.settings().empty());
  }
  SUBCASE("an error in an implicit transaction undoes its earlier statements") {
    st.note_query(lex("SET search_path = a; SELECT 1/0; SET work_mem = '1MB'"), true);
    cc(st, "SET");
    err(st);
    rfq(st, 'I');
    CHECK(st.settings().empty());
    // After a COMMIT inside the query, what came before it stays.
    st.note_query(lex("SET search_path = a; COMMIT; SET work_mem = '1MB'; SELECT 1/0"), true);
    cc(st, "SET");
    cc(st, "COMMIT");
    cc(st, "SET");
    err(st);
    rfq(st, 'I');
    CHECK(value(st, "search_path") == "SET search_path TO a");
    CHECK(value(st, "work_mem") == "<default>");
    CHECK_FALSE(st.lost());
  }
  SUBCASE("savepoints") {
    run(st, "BEGIN; SET a.x = 1; SAVEPOINT s; SET a.y = 2", 'T',
        {"BEGIN", "SET", "SAVEPOINT", "SET"});
    run(st, "ROLLBACK TO SAVEPOINT s; SET a.z = 3; RELEASE s", 'T', {"ROLLBACK", "SET", "RELEASE"});
    run(st, "COMMIT", 'I', {"COMMIT"});
    CHECK(value(st, "a.x") == "SET a.x TO 1");
    CHECK(value(st, "a.y") == "<default>");
    CHECK(value(st, "a.z") == "SET a.z TO 3");
    CHECK_FALSE(st.lost());
  }
  SUBCASE("RESET ALL keeps the role; DISCARD ALL does not; a new session user resets it") {
    run(st, "SET ROLE r; SET search_path = a", 'I', {"SET", "SET"});
    run(st, "RESET ALL", 'I', {"RESET"});
    CHECK(value(st, "role") == "SET ROLE r");
    CHECK(value(st, "search_path") == "<default>");
    run(st, "DISCARD ALL", 'I', {"DISCARD ALL"});
    CHECK(st.settings().empty());
    run(st, "SET ROLE r; SET SESSION AUTHORIZATION u", 'I', {"SET", "SET"});
    CHECK(value(st, "role") == "<default>");
    CHECK(value(st, "session_authorization") == "SET SESSION AUTHORIZATION u");
  }
  SUBCASE("reported parameters are left to ParameterStatus") {
    run(st, "SET application_name = 'x'; SET TIME ZONE 'UTC'", 'I', {"SET", "SET"});
    CHECK(st.settings().empty());
  }
  SUBCASE("extended protocol: a SET statement executed, then the segment fails") {
    st.note_parse("", lex("SET search_path = a"));
    st.note_bind("", "");
    std::string_view portal;
    CHECK(st.note_execute(&portal));
    st.note_sync();
    cc(st, "SET", 'E');
    rfq(st, 'I', 'S');
    CHECK(value(st, "search_path") == "SET search_path TO a");
    st.note_parse("s2", lex("SET search_path = b"));
    st.note_bind("", "s2");
    CHECK(st.note_execute(&portal));
    CHECK(st.note_execute(&portal));
    st.note_sync();
    cc(st, "SET", 'E');
    err(st, 'E');
    rfq(st, 'I', 'S');
    CHECK(value(st, "search_path") == "SET search_path TO a");
    CHECK_FALSE(st.lost());
    // A portal of another statement is not followed when nothing is pending.
    st.note_parse("", lex("SELECT 1"));
    st.note_bind("", "");
    CHECK_FALSE(st.note_execute(&portal));
  }
  SUBCASE("what is not read exactly is flagged") {
    run(st, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY DEFERRABLE", 'I', {"SET"});
    CHECK(st.take_lost());
    CHECK_FALSE(st.lost());
    run(st, "BEGIN; SET a.b = 1", 'T', {"BEGIN", "SET"});
    rfq(st, 'I', 0);  // the block ended in something not followed
    CHECK(st.take_lost());
  }
}

TEST_CASE("session settings: the restoring SQL") {
  SessionSettings c, s;
  std::string pre, sql;
  settings_diff_sql(nullptr, nullptr, false, pre, sql);
  CHECK(pre.empty());
  CHECK(sql.empty());
  c.apply(SessionStmt{StmtKind::Set, "search_path", "SET search_path TO a"});
  c.apply(SessionStmt{StmtKind::Set, "role", "SET ROLE r"});
  settings_diff_sql(&c, nullptr, false, pre, sql);
  CHECK(sql == "SET ROLE r;SET search_path TO a;");
  sql.clear();
  settings_diff_sql(&c, &c, false, pre, sql);
  CHECK(sql.empty());
  s.apply(SessionStmt{StmtKind::Set, "statement_timeout", "SET statement_timeout TO 5"});
  s.apply(SessionStmt{StmtKind::Set, "role", "SET ROLE r"});
  settings_diff_sql(&c, &s, false, pre, sql);
  CHECK(sql == "RESET \"statement_timeout\";SET search_path TO a;");
  sql.clear();
  settings_diff_sql(nullptr, &s, false, pre, sql);
  CHECK(sql == "RESET ROLE;RESET \"statement_timeout\";");
  sql.clear();
  settings_diff_sql(nullptr, &s, true, pre, sql);
  CHECK(pre == "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;");
  CHECK(sql.empty());
}

TEST_CASE("session settings: the console shows values only for harmless names") {
  using E = SessionSettings::Entry;
  CHECK(shown_setting(E{"search_path", "SET search_path TO a, b"}) == "a, b");
  CHECK(shown_setting(E{"statement_timeout", "SET Statement_Timeout TO '5s'"}) == "'5s'");
  CHECK(shown_setting(E{"role", "SET ROLE alice"}) == "alice");
  CHECK(shown_setting(E{"search_path", "SET SCHEMA 'x'"}) == "'x'");
  CHECK(shown_setting(E{"enable_seqscan", "SET enable_seqscan TO off"}) == "off");
  CHECK(shown_setting(E{"myapp.api_key", "SET myapp.api_key TO 'hunter2'"}) == "(hidden)");
  CHECK(shown_setting(E{"pgcrypto.key", "SET pgcrypto.key TO 'k'"}) == "(hidden)");
}

TEST_CASE("scan_pins: statements that pin, and what does not") {
  auto pins = [](std::string_view sql, bool prep = false) {
    return scan_pins(sql, true, prep).pins;
  };
  auto rel = [](std::string_view sql) { return scan_pins(sql, true, false).releases; };
  CHECK(pins("SELECT pg_advisory_lock(1)") == kPinAdvisoryLock);
  CHECK(pins("select PG_CATALOG.pg_advisory_lock_shared (1, 2)") == kPinAdvisoryLock);
  CHECK(pins("SELECT x FROM t WHERE pg_try_advisory_lock(id)") == kPinAdvisoryLock);
  CHECK(rel("SELECT pg_try_advisory_lock(1)") == kReleaseAny);  // the check tells
  CHECK(pins("SELECT pg_advisory_xact_lock(1)") == 0);
  CHECK(pins("SELECT pg_try_advisory_xact_lock(1)") == 0);
  CHECK(pins("SELECT 'pg_advisory_lock(1)'") == 0);
  CHECK(pins("SELECT $q$ pg_advisory_lock(1) $q$, \"pg_advisory_lock\"") == 0);
  CHECK(pins("SELECT 1 /* pg_advisory_lock(1) */ -- set_config(\n") == 0);
  CHECK(pins("SELECT E'\\' pg_advisory_lock(1)'") == 0);
  CHECK(pins("CREATE TEMP TABLE x(a int)") == kPinTempTable);
  CHECK(pins("create local temporary view v as select 1") == kPinTempTable);
  CHECK(pins("CREATE OR REPLACE TEMP VIEW v AS SELECT 1") == kPinTempTable);
  CHECK(pins("CREATE TEMPORARY SEQUENCE s") == kPinTempTable);
  CHECK(pins("SELECT 1 INTO TEMP t") == kPinTempTable);
  CHECK(pins("CREATE TABLE temp(a int)") == 0);
  CHECK(pins("CREATE TABLE x(temperature int)") == 0);
  CHECK(pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1") == kPinHoldCursor);
  CHECK(pins("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1") == 0);
  CHECK(pins("DECLARE c CURSOR FOR SELECT 1") == 0);
  CHECK(pins("LISTEN ch") == kPinListen);
  CHECK(pins("SELECT set_config('a.b', 'c', false)") == kPinUntrackedSetting);
  CHECK(pins("DO $$BEGIN PERFORM 1; END$$") == kPinUntrackedSetting);
  CHECK(pins("do 'begin end'") == kPinUntrackedSetting);
  CHECK(pins("PREPARE p AS SELECT 1", true) == kPinPrepare);
  CHECK(pins("PREPARE p AS SELECT 1", false) == 0);
  CHECK(pins("PREPARE TRANSACTION 'x'", true) == 0);
  CHECK(pins("SELECT 1; LISTEN a; SELECT pg_advisory_lock(2)") == (kPinListen | kPinAdvisoryLock));
  CHECK(pins("SELECT 1") == 0);
  CHECK(pins("INSERT INTO t VALUES (1)") == 0);
  CHECK(rel("SELECT pg_advisory_unlock(1)") == kReleaseAny);
  CHECK(rel("SELECT pg_advisory_unlock_all()") == kReleaseAny);
  CHECK(rel("DROP TABLE x") == kReleaseAny);
  CHECK(rel("UNLISTEN *") == kReleaseAny);
  CHECK(rel("CLOSE c") == kReleaseAny);
  CHECK(rel("DISCARD ALL") == kReleaseAny);
  CHECK(rel("COMMIT") == kReleaseTxEnd);
  CHECK(rel("SELECT 1") == 0);
  CHECK(rel("SELECT 'DROP TABLE x'") == 0);
}

TEST_CASE("scan_pins: set_config and DO name the settings the check reads back") {
  auto scan = [](std::string_view sql) { return scan_pins(sql, true, false); };
  using V = std::vector<std::string>;
  // A local set_config ends with its transaction: nothing to pin or read.
  for (auto local :
       {"true", "TRUE", "'t'", "'on'", "'yes'", "'1'", "'tru'", "true::bool", "' true '"}) {
    PinScan r = scan(std::string("SELECT set_config('app.tenant', $1, ") + local + ")");
    CHECK_MESSAGE(r.pins == 0, local);
    CHECK(r.names.empty());
  }
  // Not local (false, a parameter, an expression): the name is read back.
  for (auto is_local : {"false", "'f'", "$3", "x > 1", "'off'"}) {
    PinScan r = scan(std::string("SELECT set_config('App.Tenant', $1, ") + is_local + ")");
    CHECK(r.pins == kPinUntrackedSetting);
    CHECK(r.releases == kReleaseAny);
    CHECK(r.names == V{"app.tenant"});
    CHECK(!r.opaque);
    CHECK(!r.dirty);
  }
  PinScan two = scan(
      "SELECT pg_catalog.set_config('a.x'::text, '1', false), set_config($q$b.y$q$, v, false), "
      "set_config('a.x', '2', false) FROM t");
  CHECK(two.names == V{"a.x", "b.y"});
  CHECK(!two.opaque);
  // A name the text does not tell: opaque, and the server is reset after.
  for (auto call :
       {"SELECT set_config($1, $2, false)", "SELECT set_config(n, 'v', false) FROM t",
        "SELECT set_config('a' || 'b', 'v', false)", "SELECT set_config('a b', 'v', false)",
        "SELECT set_config(E'a\\\\.b', 'v', false)",
        "SELECT set_config('a', set_config('b', 'c', true), false)",
        "SELECT set_config('a', 'b'"}) {
    PinScan r = scan(call);
    CHECK_MESSAGE(r.opaque, call);
    CHECK(r.dirty);
    CHECK(r.pins == kPinUntrackedSetting);
  }
  // More names than one check reads: opaque.
  std::string many = "SELECT ";
  for (int i = 0; i < 17; i++)
    many += (i ? ", " : "") + std::string("set_config('a.n") + std::to_string(i) + "', '1', false)";
  PinScan m = scan(many);
  CHECK(m.names.size() == kPinMaxNames);
  CHECK(m.opaque);
  // In a string or a quoted identifier: nothing.
  CHECK(scan("SELECT 'set_config(''a'', ''b'', false)'").pins == 0);
  CHECK(scan("SELECT \"set_config\"('a', 'b', false)").pins == 0);

  // DO: always dirty (the check cannot see custom settings); its body's SETs and set_config
  // calls are named; dynamic SQL that sets, RESET ALL, another language: opaque.
  PinScan d = scan(
      "DO $$DECLARE v text := 'x'; BEGIN SET app.a = 'x'; PERFORM set_config('app.b', v, false); "
      "PERFORM set_config('app.c', v, true); IF true THEN RESET app.d; END IF; SET LOCAL app.e = "
      "1; UPDATE t SET f = 1; INSERT INTO t VALUES (1) ON CONFLICT DO UPDATE SET g = 2; END$$");
  CHECK(d.pins == kPinUntrackedSetting);
  CHECK(d.dirty);
  CHECK(!d.opaque);
  CHECK(d.names == V{"app.a", "app.b", "app.d"});
  CHECK(scan("DO $$BEGIN PERFORM 1; END$$").names.empty());
  CHECK(!scan("DO $$BEGIN PERFORM 1; END$$").opaque);
  CHECK(!scan("DO $$BEGIN EXECUTE 'DEALLOCATE ' || quote_ident(n); END$$").opaque);
  CHECK(!scan("DO LANGUAGE plpgsql 'BEGIN SET app.a = ''x''; END'").opaque);
  CHECK(scan("DO LANGUAGE plpgsql 'BEGIN SET app.a = ''x''; END'").names == V{"app.a"});
  for (auto body :
       {"DO $$BEGIN EXECUTE 'SET app.a = 1'; END$$",
        "DO $$BEGIN EXECUTE format(' set %I = %L', n, v); END$$",
        "DO $$BEGIN EXECUTE 'select set_config(' || n || ')'; END$$", "DO $$BEGIN RESET ALL; END$$",
        "DO $$BEGIN PERFORM set_config(n, v, false); END$$",
        "DO $x$ BEGIN SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, "
        "DEFERRABLE; END $x$",
        "DO LANGUAGE plperl $$ spi_exec_query('SET app.a = 1') $$",
        "DO E'BEGIN SET a.b = \\'x\\'; END'"}) {
    PinScan r = scan(body);
    CHECK_MESSAGE(r.opaque, body);
    CHECK(r.dirty);
  }
}

TEST_CASE("set_config_statement quotes any value") {
  CHECK(set_config_statement("app.tenant", "b") ==
        "SELECT pg_catalog.set_config('app.tenant', 'b', false)");
  CHECK(set_config_statement("app.t", "it's") ==
        "SELECT pg_catalog.set_config('app.t', 'it''s', false)");
  CHECK(set_config_statement("app.t", "a\\b'") ==
        "SELECT pg_catalog.set_config('app.t', E'a\\\\b''', false)");
  // What the console shows of one: the value (for a harmless name).
  using E = SessionSettings::Entry;
  CHECK(shown_setting(E{"work_mem", set_config_statement("work_mem", "64MB")}) == "64MB");
  CHECK(shown_setting(E{"search_path", set_config_statement("search_path", "a;b, \"it's\"")}) ==
        "a;b, \"it's\"");
  CHECK(shown_setting(E{"search_path", set_config_statement("search_path", "x\\y")}) == "x\\y");
  CHECK(shown_setting(E{"app.key", set_config_statement("app.key", "secret")}) == "(hidden)");
}

TEST_CASE("SessionState: adopted settings and committed resets") {
  TrackedNames tracked;
  SessionState ss(&tracked, false);
  ss.adopt("app.tenant", set_config_statement("app.tenant", "b"));
  REQUIRE(ss.settings().find("app.tenant") != nullptr);
  CHECK(ss.resets() == 0);
  ss.adopt("app.tenant", "");
  CHECK(ss.settings().find("app.tenant") == nullptr);
  ss.adopt("app.tenant", set_config_statement("app.tenant", "c"));
  std::vector<SessionStmt> stmts;
  lex_session_sql("RESET ALL", true, &stmts);
  ss.note_query(stmts, true);
  std::string tag = "RESET";
  ss.on_reply(
      'C', std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(tag.c_str()), tag.size() + 1),
      'Q');
  ss.on_reply('Z', std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("I"), 1), 'Q');
  CHECK(ss.resets() == 1);
  CHECK(ss.settings().empty());
}

TEST_CASE("scan_pins: a DO block's SET of a name not read back is opaque") {
  PinScan r = scan_pins("DO $$BEGIN SET \"a'b\".c = 1; END$$", true, false);
  CHECK(r.opaque);
  CHECK(r.names.empty());
  CHECK(scan_pins("DO $$BEGIN SET \xc3\xa9.x = 1; END$$", true, false).opaque);
  CHECK(scan_pins("DO $$BEGIN SET " + std::string(200, 'a') + " = 1; END$$", true, false).opaque);
}
