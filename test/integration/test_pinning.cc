// Pinning (pinning.h): state pgsluice cannot follow keeps a client in transaction pooling on
// its server until the state is gone, or is refused with 0A000 (pin_on_untracked_state = 0).
#include <libpq-fe.h>

#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "admin_columns.h"
#include "harness.h"

namespace it {

namespace {

// Transaction mode, workers 2, a pool of 2 for 3 clients (a, b and a third that keeps
// the other server busy between a's transactions).
Options small_pool(const std::string& extra = "") {
  Options o;
  o.workers = 2;
  o.default_pool_size = 2;
  o.extra_pgbouncer = extra;
  return o;
}

std::string pid_of(PGconn* c) {
  return scalar(c, "SELECT pg_backend_pid()");
}

// The pinned column of SHOW CLIENTS for testdb clients, in any order.
std::vector<std::string> pinned_column(const Pooler& p) {
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
  int col = PQfnumber(cl.get(), "pinned");
  REQUIRE(col == PQnfields(cl.get()) - 1);
  std::vector<std::string> v;
  for (int i = 0; i < PQntuples(cl.get()); i++)
    if (std::string(PQgetvalue(cl.get(), i, PQfnumber(cl.get(), "database"))) == "testdb")
      v.push_back(PQgetvalue(cl.get(), i, col));
  return v;
}

bool has(const std::vector<std::string>& v, const std::string& s) {
  for (const auto& x : v)
    if (x == s) return true;
  return false;
}

// With a pool of two, one server pinned to some client: `b` opens a transaction on the
// other (never the pinned one), `c` sends `sql` meanwhile and must wait for b's COMMIT (a
// pinned server given to c would answer at once, carrying the pinned client's state).
// Returns c's one value.
std::string while_other_busy(PGconn* b, PGconn* c, const std::string& sql) {
  exec_ok(b, "BEGIN");
  REQUIRE(PQsendQuery(c, sql.c_str()) == 1);
  sleep_ms(20);
  exec_ok(b, "COMMIT");
  Result r(PQgetResult(c));
  REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
  std::string v = PQgetvalue(r.get(), 0, 0);
  while (PGresult* more = PQgetResult(c)) PQclear(more);
  return v;
}

// pgsluice_routine_readings_total from the metrics endpoint on `mport` (-1: not found).
int routine_readings(int mport) {
  CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
  const std::string k = "\npgsluice_routine_readings_total ";
  size_t at = r.output.find(k);
  return at == std::string::npos ? -1 : std::atoi(r.output.c_str() + at + k.size());
}

}  // namespace

TEST_SUITE_BEGIN("pinning");

TEST_CASE("pinning: a session advisory lock keeps the client on its server until unlocked") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool());
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  Conn c = connect(p.conninfo());
  exec_ok(a.get(), "SELECT pg_advisory_lock(4242)");
  std::string pid = pid_of(a.get());
  for (int i = 0; i < 10; i++) {
    // b in a transaction holds the other server, never a's; c, asking meanwhile, must
    // wait for it (a reused pinned server would answer c at once, and its try-lock would
    // re-enter a's lock: 't').
    exec_ok(b.get(), "BEGIN");
    CHECK(pid_of(b.get()) != pid);
    CHECK(while_other_busy(b.get(), c.get(), "SELECT pg_try_advisory_lock(4242)") == "f");
    CHECK(pid_of(a.get()) == pid);
  }
  CHECK(eventually([&] { return has(pinned_column(p), "advisory_lock"); }));
  // Unlocked: a is unpinned and another client takes the lock.
  CHECK(scalar(a.get(), "SELECT pg_advisory_unlock(4242)") == "t");
  CHECK(eventually([&] { return !has(pinned_column(p), "advisory_lock"); }));
  CHECK(scalar(c.get(), "SELECT pg_try_advisory_lock(4242)") == "t");
  exec_ok(c.get(), "SELECT pg_advisory_unlock_all()");
}

TEST_CASE("pinning: a temporary table keeps the client on its server until dropped") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool());
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  Conn c = connect(p.conninfo());
  exec_ok(a.get(), "CREATE TEMP TABLE pin_tmp(x int)");
  std::string pid = pid_of(a.get());
  for (int i = 0; i < 10; i++) {
    exec_ok(a.get(), "INSERT INTO pin_tmp VALUES (1)");
    CHECK(while_other_busy(b.get(), c.get(),
                           "SELECT count(*) FROM pg_class WHERE relname = 'pin_tmp' AND "
                           "relnamespace = pg_my_temp_schema()") == "0");
    CHECK(pid_of(a.get()) == pid);
  }
  CHECK(scalar(a.get(), "SELECT count(*) FROM pin_tmp") == "10");
  CHECK(eventually([&] { return has(pinned_column(p), "temp_table"); }));
  exec_ok(a.get(), "DROP TABLE pin_tmp");
  CHECK(eventually([&] { return !has(pinned_column(p), "temp_table"); }));
}

TEST_CASE("pinning: WITH HOLD cursor, LISTEN, set_config and DO pin; SHOW CLIENTS and metrics") {
  if (skip_in_direct_mode("pooling")) return;
  int mport = free_port();
  Options o = small_pool("metrics_port = " + std::to_string(mport) + "\n");
  o.default_pool_size = 3;  // l, s and d are pinned at once
  Pooler p(o);
  Conn a = connect(p.conninfo());
  exec_ok(a.get(), "DECLARE cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g");
  std::string pid = pid_of(a.get());
  CHECK(scalar(a.get(), "FETCH 1 FROM cur") == "1");
  CHECK(pid_of(a.get()) == pid);
  CHECK(scalar(a.get(), "FETCH 1 FROM cur") == "2");
  CHECK(eventually([&] { return has(pinned_column(p), "hold_cursor"); }));
  exec_ok(a.get(), "CLOSE cur");
  CHECK(eventually([&] { return has(pinned_column(p), ""); }));

  Conn l = connect(p.conninfo());
  // Among other statements (the LISTEN hub answers a lone LISTEN of an idle client).
  exec_ok(l.get(), "LISTEN pin_chan; SELECT 1");
  Conn s = connect(p.conninfo());
  // A name the text does not tell: pinned until RESET ALL or DISCARD ALL.
  CHECK(scalar(s.get(), "SELECT set_config('work' || '_mem', '8MB', false)") == "8MB");
  exec_ok(s.get(), "SELECT 1");  // answered after the check that followed set_config
  Conn d = connect(p.conninfo());
  exec_ok(d.get(), "DO $$BEGIN PERFORM 1; END$$");
  auto col = pinned_column(p);
  CHECK(has(col, "listen"));
  CHECK(has(col, "untracked_setting"));
  exec_ok(l.get(), "UNLISTEN *");
  CHECK(eventually([&] { return !has(pinned_column(p), "listen"); }));
  // set_config: only DISCARD ALL unpins.
  exec_ok(s.get(), "SELECT 1");
  exec_ok(s.get(), "DISCARD ALL");
  exec_ok(d.get(), "DISCARD ALL");
  CHECK(eventually([&] { return !has(pinned_column(p), "untracked_setting"); }));

  CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
  INFO(r.output);
  CHECK(r.output.find("pgsluice_client_pins_total{reason=\"hold_cursor\"} 1") != std::string::npos);
  CHECK(r.output.find("pgsluice_client_pins_total{reason=\"listen\"} 1") != std::string::npos);
  CHECK(r.output.find("pgsluice_client_pins_total{reason=\"untracked_setting\"} 2") !=
        std::string::npos);
  CHECK(r.output.find("pgsluice_client_pins_total{reason=\"advisory_lock\"} 0") !=
        std::string::npos);
  CHECK(r.output.find("pgsluice_pinned_clients 0") != std::string::npos);
}

TEST_CASE("pinning: custom settings made by set_config or DO follow their client, reach no other") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = small_pool();
  o.default_pool_size = 4;  // two pinned (the opaque ones) and two shared by the rest
  Pooler p(o);
  const std::string read = "SELECT coalesce(current_setting('app.tenant', true), '')";
  struct Who {
    std::string name;
    Conn c;
    std::string want;
  };
  std::vector<Who> who;
  for (const char* n : {"lit", "ext", "do", "opaque", "dyn", "rolled", "plain1", "plain2"})
    who.push_back(Who{n, connect(p.conninfo()), ""});
  auto& lit = who[0];
  auto& ext = who[1];
  auto& dob = who[2];
  auto& opq = who[3];
  auto& dyn = who[4];
  auto& rolled = who[5];
  // A literal name: read back after the statement, followed from then on.
  CHECK(scalar(lit.c.get(), "SELECT set_config('app.tenant', 'LIT', false)") == "LIT");
  lit.want = "LIT";
  // Extended protocol, the value a parameter (the usual RLS pattern).
  const char* v = "EXT";
  Result er(PQexecParams(ext.c.get(), "SELECT set_config('App.Tenant', $1, false)", 1, nullptr, &v,
                         nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(er.get()) == PGRES_TUPLES_OK);
  ext.want = "EXT";
  exec_ok(dob.c.get(), "DO $$BEGIN PERFORM set_config('app.tenant', 'DO', false); END$$");
  dob.want = "DO";
  // A computed name, dynamic SQL: pinned until RESET ALL.
  CHECK(scalar(opq.c.get(), "SELECT set_config('app.' || 'tenant', 'OPAQUE', false)") == "OPAQUE");
  opq.want = "OPAQUE";
  exec_ok(dyn.c.get(), "DO $$BEGIN EXECUTE 'SET app.tenant = ''DYN'''; END$$");
  dyn.want = "DYN";
  // Rolled back: nothing stays. A local one ends with its transaction.
  exec_ok(rolled.c.get(), "BEGIN");
  exec_ok(rolled.c.get(), "SELECT set_config('app.tenant', 'ROLLED', false)");
  exec_ok(rolled.c.get(), "ROLLBACK");
  exec_ok(who[6].c.get(), "SELECT set_config('app.tenant', 'LOCAL', true)");

  // opaque and dyn stay pinned; the others are unpinned once their check was answered.
  auto untracked = [&] {
    int n = 0;
    for (const auto& x : pinned_column(p)) n += x == "untracked_setting";
    return n;
  };
  CHECK(eventually([&] { return untracked() == 2; }));
  sleep_ms(100);
  CHECK(untracked() == 2);
  int wrong = 0;
  for (int round = 0; round < 12; round++) {
    // Every other round a transaction holds one shared server, so the readers move.
    Conn& holder = who[7].c;
    if (round % 2 == 1) exec_ok(holder.get(), "BEGIN");
    for (size_t i = 0; i + (round % 2) < who.size(); i++) {
      std::string got = scalar(who[i].c.get(), read);
      if (got != who[i].want) {
        wrong++;
        MESSAGE(who[i].name << " read '" << got << "', wants '" << who[i].want << "'");
      }
    }
    if (round % 2 == 1) exec_ok(holder.get(), "COMMIT");
  }
  CHECK(wrong == 0);
  // RESET ALL ends the opaque pins (and the settings).
  exec_ok(opq.c.get(), "RESET ALL");
  exec_ok(dyn.c.get(), "DISCARD ALL");
  opq.want = dyn.want = "";
  CHECK(eventually([&] { return !has(pinned_column(p), "untracked_setting"); }));
  exec_ok(lit.c.get(), "RESET app.tenant");
  lit.want = "";
  for (int round = 0; round < 4; round++)
    for (auto& w : who) CHECK_MESSAGE(scalar(w.c.get(), read) == w.want, w.name);
}

TEST_CASE("pinning: texts over 64 KiB (not read) leave no state to the next client") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = small_pool();
  o.default_pool_size = 1;
  o.workers = 1;
  Pooler p(o);
  const std::string pad = " /*" + std::string(70000, 'x') + "*/";
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  const std::string dflt = scalar(b.get(), "SHOW statement_timeout");
  // A SET, a custom setting and a session lock hidden behind a long comment.
  exec_ok(a.get(), "SET statement_timeout = '4321ms'; SELECT 1" + pad);
  exec_ok(a.get(), "SELECT set_config('app.big', 'A', false)" + pad);
  exec_ok(a.get(), "SELECT pg_advisory_lock(5150)" + pad);
  CHECK(eventually([&] { return has(pinned_column(p), "advisory_lock,untracked_setting"); }));
  // Pinned: b waits while a holds the pool's one server; a keeps its state.
  REQUIRE(PQsendQuery(b.get(), "SHOW statement_timeout") == 1);
  CHECK(scalar(a.get(), "SHOW statement_timeout") == "4321ms");
  exec_ok(a.get(), "SELECT pg_advisory_unlock_all()");
  exec_ok(a.get(), "RESET statement_timeout");
  // Now b gets the server: reset first (nothing of a's remains).
  Result r(PQgetResult(b.get()));
  REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
  CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == dflt);
  while (PGresult* more = PQgetResult(b.get())) PQclear(more);
  CHECK(scalar(b.get(), "SELECT coalesce(current_setting('app.big', true), '')") == "");
  CHECK(scalar(b.get(), "SELECT pg_try_advisory_lock(5150)") == "t");
  exec_ok(b.get(), "SELECT pg_advisory_unlock_all()");

  // Extended protocol: a Bind with a parameter over 64 KiB of a statement that locks.
  std::string big(70000, 'y');
  const char* vals[2] = {"6160", big.c_str()};
  Result pr(PQprepare(a.get(), "lockbig", "SELECT pg_advisory_lock($1::bigint), length($2::text)",
                      2, nullptr));
  REQUIRE(PQresultStatus(pr.get()) == PGRES_COMMAND_OK);
  Result er(PQexecPrepared(a.get(), "lockbig", 2, vals, nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(er.get()) == PGRES_TUPLES_OK);
  CHECK(eventually([&] { return has(pinned_column(p), "advisory_lock"); }));
  // A Parse over 64 KiB: pinned at each execution until the check tells.
  Result bp(
      PQprepare(a.get(), "setbig", ("SET statement_timeout = '999ms'" + pad).c_str(), 0, nullptr));
  REQUIRE(PQresultStatus(bp.get()) == PGRES_COMMAND_OK);
  exec_ok(a.get(), "SELECT pg_advisory_unlock_all()");
  Result be(PQexecPrepared(a.get(), "setbig", 0, nullptr, nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(be.get()) == PGRES_COMMAND_OK);
  // Its SET is followed (a Parse is kept whole for remapping and read for settings) or
  // pinned: either way it stays a's, and b never sees it.
  CHECK(scalar(a.get(), "SHOW statement_timeout") == "999ms");
  CHECK(scalar(b.get(), "SHOW statement_timeout") == dflt);
  CHECK(scalar(a.get(), "SHOW statement_timeout") == "999ms");
  exec_ok(a.get(), "RESET statement_timeout");
  CHECK(eventually([&] { return has(pinned_column(p), ""); }));
  CHECK(scalar(b.get(), "SHOW statement_timeout") == dflt);
}

TEST_CASE("pinning: a lock taken while the check runs keeps its pin") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = small_pool();
  o.default_pool_size = 1;
  o.workers = 1;
  Pooler p(o);
  Conn a = connect(p.conninfo());
  int lost = 0;
  for (int i = 0; i < 20; i++) {
    // The unlock makes a check due; the lock arrives while that check is in flight.
    exec_ok(a.get(), "SELECT pg_advisory_unlock_all()");
    exec_ok(a.get(), "SELECT pg_advisory_lock(8080)");
    sleep_ms(30);
    if (!has(pinned_column(p), "advisory_lock")) lost++;
  }
  CHECK(lost == 0);
  exec_ok(a.get(), "SELECT pg_advisory_unlock_all()");
}

TEST_CASE("pinning: routines that make state (functions, triggers) pin and are read back") {
  if (skip_in_direct_mode("pooling")) return;
  {
    Conn su = connect(superuser_conninfo());
    exec_ok(su.get(),
            "DROP TABLE IF EXISTS rt_audited; DROP FUNCTION IF EXISTS rt_set_sp(text), "
            "rt_wrap(text), rt_trg(), rt_dyn(text), rt_new(), rt_later() CASCADE;"
            "CREATE FUNCTION rt_set_sp(p text) RETURNS void LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM set_config('search_path', p, false); END$$;"
            "CREATE FUNCTION rt_wrap(p text) RETURNS void LANGUAGE sql AS "
            "$$SELECT rt_set_sp(p)$$;"
            "CREATE FUNCTION rt_dyn(p text) RETURNS void LANGUAGE plpgsql AS "
            "$$BEGIN EXECUTE 'SET statement_timeout = ' || quote_literal(p); END$$;"
            "CREATE FUNCTION rt_trg() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN SET app.who = 'trigger'; RETURN NEW; END$$;"
            "CREATE TABLE rt_audited(a int); GRANT ALL ON rt_audited TO md5user;"
            "CREATE TRIGGER rt_t BEFORE INSERT ON rt_audited FOR EACH ROW EXECUTE FUNCTION "
            "rt_trg()");
  }
  int mport = free_port();
  Options o = small_pool("metrics_port = " + std::to_string(mport) + "\n");
  o.default_pool_size = 3;  // one pinned (rt_dyn), two shared
  Pooler p(o);
  auto readings = [&] { return routine_readings(mport); };
  Conn a = connect(p.conninfo());
  Conn w = connect(p.conninfo());
  Conn t = connect(p.conninfo());
  Conn d = connect(p.conninfo());
  Conn n = connect(p.conninfo());
  const std::string dflt_sp = scalar(n.get(), "SHOW search_path");
  const std::string dflt_st = scalar(n.get(), "SHOW statement_timeout");
  exec_ok(a.get(), "SELECT rt_set_sp('pg_catalog, public')");
  exec_ok(w.get(), "SELECT rt_wrap('information_schema, public')");
  exec_ok(t.get(), "INSERT INTO rt_audited VALUES (1)");
  exec_ok(d.get(), "SELECT rt_dyn('4242ms')");
  // A routine made through pgsluice is read again after its creation.
  exec_ok(n.get(),
          "CREATE FUNCTION rt_new() RETURNS void LANGUAGE plpgsql AS "
          "$$BEGIN PERFORM set_config('app.new', 'made', false); END$$");
  // The pool reads its routines again once that transaction is over (until the reading
  // ends, a call by another client counts as one that may make anything: checked after it
  // and its server reset, but not followed).
  const int before = readings();
  CHECK(before >= 1);
  CHECK(eventually([&] {
    exec_ok(n.get(), "SELECT 1");
    return readings() > before;
  }));
  Conn m = connect(p.conninfo());
  exec_ok(m.get(), "SELECT rt_new()");
  CHECK(eventually([&] {
    int pinned = 0;
    for (const auto& x : pinned_column(p)) pinned += x == "untracked_setting";
    return pinned == 1;  // rt_dyn: dynamic SQL, until RESET ALL
  }));
  const std::string who = "SELECT coalesce(current_setting('app.who', true), '')";
  const std::string made = "SELECT coalesce(current_setting('app.new', true), '')";
  int wrong = 0;
  auto expect = [&](PGconn* c, const std::string& sql, const std::string& want) {
    std::string got = scalar(c, sql);
    if (got != want) {
      wrong++;
      MESSAGE(sql << ": '" << got << "', wants '" << want << "'");
    }
  };
  for (int round = 0; round < 6; round++) {
    if (round % 2 == 1) exec_ok(n.get(), "BEGIN");  // the others move to the other server
    expect(a.get(), "SHOW search_path", "pg_catalog, public");
    expect(w.get(), "SHOW search_path", "information_schema, public");
    expect(t.get(), who, "trigger");
    expect(t.get(), "SHOW search_path", dflt_sp);
    expect(d.get(), "SHOW statement_timeout", "4242ms");
    expect(m.get(), made, "made");
    expect(m.get(), who, "");
    expect(m.get(), "SHOW statement_timeout", dflt_st);
    if (round % 2 == 1) exec_ok(n.get(), "COMMIT");
    expect(n.get(), "SHOW search_path", dflt_sp);
    expect(n.get(), made, "");
  }
  CHECK(wrong == 0);
  exec_ok(d.get(), "RESET ALL");
  CHECK(eventually([&] { return !has(pinned_column(p), "untracked_setting"); }));

  // A statement prepared while the routine it calls made nothing, the routine replaced since:
  // its next execution is judged with the routine as it is now.
  exec_ok(n.get(), "CREATE FUNCTION rt_later() RETURNS void LANGUAGE sql AS 'SELECT'");
  Conn h = connect(p.conninfo());
  Result hp(PQprepare(h.get(), "callit", "SELECT rt_later()", 0, nullptr));
  REQUIRE(PQresultStatus(hp.get()) == PGRES_COMMAND_OK);
  Result he(PQexecPrepared(h.get(), "callit", 0, nullptr, nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(he.get()) == PGRES_TUPLES_OK);
  const int before2 = readings();
  exec_ok(n.get(),
          "CREATE OR REPLACE FUNCTION rt_later() RETURNS void LANGUAGE plpgsql AS "
          "$$BEGIN PERFORM set_config('search_path', 'pg_catalog, public', false); END$$");
  CHECK(eventually([&] {
    exec_ok(n.get(), "SELECT 1");
    return readings() > before2;
  }));
  Result he2(PQexecPrepared(h.get(), "callit", 0, nullptr, nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(he2.get()) == PGRES_TUPLES_OK);
  for (int round = 0; round < 4; round++) {
    if (round % 2 == 1) exec_ok(m.get(), "BEGIN");
    expect(h.get(), "SHOW search_path", "pg_catalog, public");
    expect(n.get(), "SHOW search_path", dflt_sp);
    if (round % 2 == 1) exec_ok(m.get(), "COMMIT");
  }
  CHECK(wrong == 0);

  Conn su = connect(superuser_conninfo());
  exec_ok(su.get(),
          "DROP TABLE rt_audited; DROP FUNCTION rt_set_sp(text), rt_wrap(text), rt_trg(), "
          "rt_dyn(text), rt_new(), rt_later()");
}

TEST_CASE(
    "pinning: beyond the statements kept, a statement that calls something is judged unread") {
  if (skip_in_direct_mode("pooling")) return;
  {
    Conn su = connect(superuser_conninfo());
    exec_ok(su.get(), "DROP FUNCTION IF EXISTS rt_cap() CASCADE");
  }
  Pooler p(small_pool());
  Conn h = connect(p.conninfo());
  Conn n = connect(p.conninfo());
  exec_ok(n.get(), "CREATE FUNCTION rt_cap() RETURNS int LANGUAGE sql AS 'SELECT 1'");
  const std::string dflt_sp = scalar(n.get(), "SHOW search_path");
  // More statements calling something than a client's pinning keeps (1000): the last ones
  // are not kept.
  for (int i = 0; i <= 1000; i++) {
    const std::string name = "cap" + std::to_string(i);
    const std::string sql = "SELECT rt_cap() + " + std::to_string(i);
    Result r(PQprepare(h.get(), name.c_str(), sql.c_str(), 0, nullptr));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
  }
  // The routine now sets the session's search_path; the pool learns it at its next reading.
  exec_ok(n.get(),
          "CREATE OR REPLACE FUNCTION rt_cap() RETURNS int LANGUAGE plpgsql AS "
          "$$BEGIN PERFORM set_config('search_path', 'pg_catalog, public', false); "
          "RETURN 1; END$$");
  exec_ok(n.get(), "SELECT 1");
  // The statement not kept: its call can only be judged as one that may make anything.
  Result e(PQexecPrepared(h.get(), "cap1000", 0, nullptr, nullptr, nullptr, 0));
  REQUIRE(PQresultStatus(e.get()) == PGRES_TUPLES_OK);
  // Checked after: the setting it made is found, and h keeps its server (pinned).
  CHECK(eventually([&] { return has(pinned_column(p), "untracked_setting"); }));
  CHECK(scalar(h.get(), "SHOW search_path") == "pg_catalog, public");
  for (int round = 0; round < 4; round++) CHECK(scalar(n.get(), "SHOW search_path") == dflt_sp);
  Conn su = connect(superuser_conninfo());
  exec_ok(su.get(), "DROP FUNCTION rt_cap()");
}

TEST_CASE("pinning: a routine replaced over a direct connection is seen within seconds") {
  if (skip_in_direct_mode("pooling")) return;
  Conn su = connect(superuser_conninfo());
  exec_ok(su.get(),
          "DROP FUNCTION IF EXISTS rt_ext() CASCADE;"
          "CREATE FUNCTION rt_ext() RETURNS int LANGUAGE sql AS 'SELECT 1';"
          "GRANT EXECUTE ON FUNCTION rt_ext() TO PUBLIC");
  int mport = free_port();
  Pooler p(small_pool("metrics_port = " + std::to_string(mport) + "\n"));
  auto readings = [&] { return routine_readings(mport); };
  Conn h = connect(p.conninfo());
  Conn n = connect(p.conninfo());
  Conn m = connect(p.conninfo());
  const std::string dflt_sp = scalar(n.get(), "SHOW search_path");
  exec_ok(h.get(), "SELECT rt_ext()");  // the pool's first call: its routines are read
  CHECK(eventually([&] {
    exec_ok(n.get(), "SELECT 1");
    return readings() >= 1;
  }));
  const int before = readings();
  // Replaced by a migration that does not go through pgsluice.
  exec_ok(su.get(),
          "CREATE OR REPLACE FUNCTION rt_ext() RETURNS int LANGUAGE plpgsql AS "
          "$$BEGIN PERFORM set_config('search_path', 'pg_catalog, public', false); "
          "RETURN 1; END$$");
  // The next probe (within RoutineReadings::kProbePeriod, 5 s) sees the change and the
  // catalog is read again, long before the 60 s period.
  CHECK(eventually(
      [&] {
        exec_ok(n.get(), "SELECT 1");
        sleep_ms(100);
        return readings() > before;
      },
      20));
  exec_ok(h.get(), "SELECT rt_ext()");
  int wrong = 0;
  for (int round = 0; round < 6; round++) {
    if (round % 2 == 1) exec_ok(m.get(), "BEGIN");  // the others move to the other server
    if (scalar(h.get(), "SHOW search_path") != "pg_catalog, public") wrong++;
    if (round % 2 == 1) exec_ok(m.get(), "COMMIT");
    const std::string got = scalar(n.get(), "SHOW search_path");
    if (got != dflt_sp) {
      wrong++;
      MESSAGE("round " << round << ": n sees search_path '" << got << "'");
    }
  }
  CHECK(wrong == 0);
  exec_ok(su.get(), "DROP FUNCTION rt_ext()");
}

TEST_CASE("pinning: a string or comment naming pg_advisory_lock does not pin") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool());
  Conn a = connect(p.conninfo());
  exec_ok(a.get(),
          "SELECT 'pg_advisory_lock(1)', $x$ set_config( $x$ /* DO pg_advisory_lock(2) */");
  exec_ok(a.get(), "SELECT 1 -- CREATE TEMP TABLE x()");
  for (const auto& v : pinned_column(p)) CHECK(v == "");
}

TEST_CASE("pinning: a client that vanishes while pinned leaves no lock or temp table") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = small_pool();
  o.default_pool_size = 1;
  Pooler p(o);
  {
    Conn a = connect(p.conninfo());
    exec_ok(a.get(), "SELECT pg_advisory_lock(777)");
    exec_ok(a.get(), "CREATE TEMP TABLE vanish_tmp(x int)");
  }  // gone without unlocking or dropping
  Conn b = connect(p.conninfo());
  // No session holds it (a reused server would hold it for b too: try-lock re-enters).
  Conn su = connect(superuser_conninfo());
  CHECK(eventually([&] {
    return scalar(su.get(),
                  "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                  "objid = 777") == "0";
  }));
  CHECK(scalar(b.get(), "SELECT pg_try_advisory_lock(777)") == "t");
  CHECK(scalar(b.get(),
               "SELECT count(*) FROM pg_class WHERE relname = 'vanish_tmp' AND "
               "relnamespace = pg_my_temp_schema()") == "0");
  exec_ok(b.get(), "SELECT pg_advisory_unlock_all()");
}

TEST_CASE("pinning: pin_on_untracked_state = 0 refuses with 0A000") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool("pin_on_untracked_state = 0\n"));
  Conn a = connect(p.conninfo());
  CHECK(exec_sqlstate(a.get(), "SELECT pg_advisory_lock(5)") == "0A000");
  CHECK(std::string(PQerrorMessage(a.get())).find("session advisory locks are not supported") !=
        std::string::npos);
  CHECK(exec_sqlstate(a.get(), "CREATE TEMP TABLE refused(x int)") == "0A000");
  CHECK(PQtransactionStatus(a.get()) == PQTRANS_IDLE);
  // Extended protocol.
  Result r(PQexecParams(a.get(), "SELECT pg_advisory_lock(6)", 0, nullptr, nullptr, nullptr,
                        nullptr, 0));
  CHECK(std::string(PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) != nullptr
                        ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE)
                        : "") == "0A000");
  CHECK(scalar(a.get(), "SELECT 1") == "1");
  // Inside a block: the transaction is failed, as PostgreSQL would leave it.
  exec_ok(a.get(), "BEGIN");
  exec_ok(a.get(), "CREATE TABLE IF NOT EXISTS pin_refused_block(x int)");
  CHECK(exec_sqlstate(a.get(), "LISTEN nope") == "0A000");
  CHECK(PQtransactionStatus(a.get()) == PQTRANS_INERROR);
  CHECK(exec_sqlstate(a.get(), "SELECT 1") == "25P02");
  exec_ok(a.get(), "ROLLBACK");
  for (const auto& v : pinned_column(p)) CHECK(v == "");
  Conn su = connect(superuser_conninfo());
  CHECK(scalar(su.get(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0");
}

TEST_CASE("pinning: extended protocol pins; SQL PREPARE without remapping pins until DEALLOCATE") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool("max_prepared_statements = 0\n"));
  Conn a = connect(p.conninfo());
  Result r(PQexecParams(a.get(), "SELECT pg_advisory_lock(31)", 0, nullptr, nullptr, nullptr,
                        nullptr, 0));
  REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
  CHECK(eventually([&] { return has(pinned_column(p), "advisory_lock"); }));
  Result u(PQexecParams(a.get(), "SELECT pg_advisory_unlock(31)", 0, nullptr, nullptr, nullptr,
                        nullptr, 0));
  CHECK(eventually([&] { return !has(pinned_column(p), "advisory_lock"); }));
  exec_ok(a.get(), "PREPARE pin_p AS SELECT 1");
  CHECK(eventually([&] { return has(pinned_column(p), "prepare"); }));
  CHECK(scalar(a.get(), "EXECUTE pin_p") == "1");
  exec_ok(a.get(), "DEALLOCATE pin_p");
  CHECK(eventually([&] { return !has(pinned_column(p), "prepare"); }));
}

TEST_CASE("pinning: a named prepared statement pins at each execution, remapped or not") {
  if (skip_in_direct_mode("pooling")) return;
  for (const char* extra : {"", "max_prepared_statements = 0\n"}) {
    CAPTURE(extra);
    Pooler p(small_pool(extra));
    Conn a = connect(p.conninfo());
    Result pl(PQprepare(a.get(), "lk", "SELECT pg_advisory_lock(51)", 0, nullptr));
    REQUIRE(PQresultStatus(pl.get()) == PGRES_COMMAND_OK);
    Result pu(PQprepare(a.get(), "ul", "SELECT pg_advisory_unlock(51)", 0, nullptr));
    REQUIRE(PQresultStatus(pu.get()) == PGRES_COMMAND_OK);
    for (int i = 0; i < 3; i++) {
      Result l(PQexecPrepared(a.get(), "lk", 0, nullptr, nullptr, nullptr, 0));
      REQUIRE(PQresultStatus(l.get()) == PGRES_TUPLES_OK);
      CHECK(eventually([&] { return has(pinned_column(p), "advisory_lock"); }));
      Result u(PQexecPrepared(a.get(), "ul", 0, nullptr, nullptr, nullptr, 0));
      REQUIRE(PQresultStatus(u.get()) == PGRES_TUPLES_OK);
      CHECK(eventually([&] { return !has(pinned_column(p), "advisory_lock"); }));
    }
  }
}

TEST_CASE("pinning: the check runs only after a statement that may release the state") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(small_pool());
  Conn a = connect(p.conninfo());
  Conn su = connect(superuser_conninfo());
  auto last_query = [&](const std::string& pid) {
    return scalar(su.get(), "SELECT query FROM pg_stat_activity WHERE pid = " + pid);
  };
  // The pool's first call is checked once (which routines make state is read then).
  exec_ok(a.get(), "SELECT now()");
  CHECK(eventually([&] { return has(pinned_column(p), ""); }));
  // Never pinned: its server's last statement is its own.
  std::string pid;
  for (int i = 0; i < 5; i++) {
    pid = scalar(a.get(), "SELECT pg_backend_pid() AS plain");
    CHECK(last_query(pid) == "SELECT pg_backend_pid() AS plain");
  }
  // Pinned, ordinary statements: still no check.
  exec_ok(a.get(), "SELECT pg_advisory_lock(61)");
  pid = pid_of(a.get());
  exec_ok(a.get(), "SELECT 2 AS pinned_plain");
  CHECK(last_query(pid) == "SELECT 2 AS pinned_plain");
  // An unlock: one check, swallowed, then unpinned.
  exec_ok(a.get(), "SELECT pg_advisory_unlock(61)");
  CHECK(eventually(
      [&] { return last_query(pid).find("pg_listening_channels") != std::string::npos; }));
  CHECK(eventually([&] { return !has(pinned_column(p), "advisory_lock"); }));
}

TEST_CASE("pinning: statement pooling refuses such statements with 0A000") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = small_pool();
  o.pool_mode = "statement";
  Pooler p(o);
  Conn a = connect(p.conninfo());
  CHECK(exec_sqlstate(a.get(), "SELECT pg_advisory_lock(41)") == "0A000");
  CHECK(std::string(PQerrorMessage(a.get())).find("not supported in statement pooling") !=
        std::string::npos);
  CHECK(scalar(a.get(), "SELECT 1") == "1");
}

TEST_SUITE_END();

}  // namespace it
