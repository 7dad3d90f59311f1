// Issue 9 item 10, server-side code: a function created earlier reads pgsluice's statement
// names in pg_prepared_statements and drops or replaces them at run time, called by a plain
// `SELECT f()` that names nothing pgsluice can see. What the default (trust the pool) lets
// happen, what server_check_prepared catches, and what the recommended REVOKE prevents.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

const char* kDb = "hijackdb";

std::string sqlstate_of(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s ? s : "";
}

void prepare_ok(PGconn* c, const std::string& name, const std::string& sql) {
  Result r(PQprepare(c, name.c_str(), sql.c_str(), 0, nullptr));
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COMMAND_OK,
                  "PQprepare " << name << ": " << std::string(PQerrorMessage(c)));
}

// The first value of a run of prepared statement `name`, or "error <sqlstate>".
std::string run_prepared(PGconn* c, const std::string& name) {
  Result r(PQexecPrepared(c, name.c_str(), 0, nullptr, nullptr, nullptr, 0));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) < 1)
    return "error " + sqlstate_of(r.get()) + " " + PQresultErrorMessage(r.get());
  return PQgetvalue(r.get(), 0, 0);
}

// The first value of a simple query, or "error <sqlstate>".
std::string query(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) < 1)
    return "error " + sqlstate_of(r.get()) + " " + PQresultErrorMessage(r.get());
  return PQgetvalue(r.get(), 0, 0);
}

// A fresh database owned by md5user holding the attack functions, created straight on
// PostgreSQL: no text pgsluice sees names a statement, a namespace or a key word. Their
// bodies assemble the words at run time. `revoke`: the recommended REVOKE of
// pg_prepared_statements and pg_prepared_statement() from the application role (from
// PUBLIC, which is where PostgreSQL grants them; in this database only).
void make_db(bool revoke) {
  Conn su = connect(superuser_conninfo("postgres"));
  exec_ok(su.get(), std::string("DROP DATABASE IF EXISTS ") + kDb + " WITH (FORCE)");
  exec_ok(su.get(), std::string("CREATE DATABASE ") + kDb + " OWNER md5user");
  Conn db = connect(superuser_conninfo(kDb));
  if (revoke) {
    exec_ok(db.get(), "REVOKE ALL ON pg_catalog.pg_prepared_statements FROM PUBLIC");
    exec_ok(db.get(), "REVOKE ALL ON FUNCTION pg_catalog.pg_prepared_statement() FROM PUBLIC");
  }
  exec_ok(db.get(), "SET ROLE md5user");
  // The names a session holds (`which`: a WHERE clause), or -1 when it may not read them.
  const std::string names =
      "CREATE FUNCTION names(which text) RETURNS SETOF text LANGUAGE plpgsql AS $f$ BEGIN "
      "RETURN QUERY EXECUTE 'SELECT name FROM pg_' || 'prep' || 'ared_statements WHERE ' || "
      "which; END $f$";
  exec_ok(db.get(), names);
  // Replaces every statement `which` selects with SELECT 666 (as a statement prepared by
  // SQL, under the same name); returns how many, or -1 when it may not read them.
  exec_ok(db.get(),
          "CREATE FUNCTION hijack(which text DEFAULT 'true') RETURNS int LANGUAGE plpgsql AS $f$ "
          "DECLARE n text; k int := 0; BEGIN "
          "FOR n IN SELECT names(which) LOOP "
          "EXECUTE format('DEALLO' || 'CATE %I', n); "
          "EXECUTE format('PRE' || 'PARE %I AS SELECT 666', n); k := k + 1; END LOOP; "
          "RETURN k; EXCEPTION WHEN insufficient_privilege THEN RETURN -1; END $f$");
  // Drops them only.
  exec_ok(db.get(),
          "CREATE FUNCTION drop_them() RETURNS int LANGUAGE plpgsql AS $f$ "
          "DECLARE n text; k int := 0; BEGIN "
          "FOR n IN SELECT names('true') LOOP "
          "EXECUTE format('DEALLO' || 'CATE %I', n); k := k + 1; END LOOP; "
          "RETURN k; EXCEPTION WHEN insufficient_privilege THEN RETURN -1; END $f$");
  // Prepares SELECT 666 under the next `count` names pgsluice has not used yet (it numbers
  // its statements): the statements it prepares next meet them.
  exec_ok(db.get(),
          "CREATE FUNCTION plant(count int) RETURNS int LANGUAGE plpgsql AS $f$ "
          "DECLARE n text; pre text; top bigint; k int := 0; BEGIN "
          "SELECT max(x) INTO n FROM names('not from_sql') x; "
          "IF n IS NULL THEN RETURN 0; END IF; "
          "pre := substr(n, 1, length(n) - strpos(reverse(n), '_') + 1); "
          "SELECT max(substr(x, length(pre) + 1)::bigint) INTO top FROM names('not from_sql') x; "
          "FOR i IN 1..count LOOP "
          "EXECUTE format('PRE' || 'PARE %I AS SELECT 666', pre || (top + i)); k := k + 1; "
          "END LOOP; RETURN k; EXCEPTION WHEN insufficient_privilege THEN RETURN -1; END $f$");
}

void drop_db() {
  Conn su = connect(superuser_conninfo("postgres"));
  exec_ok(su.get(), std::string("DROP DATABASE IF EXISTS ") + kDb + " WITH (FORCE)");
}

std::string conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", kDb);
}

Options one_server(bool check) {
  Options o;
  o.default_pool_size = 1;  // victim and attacker share the one server session
  if (check) o.extra_pgbouncer = "server_check_prepared = 1\n";
  return o;
}

TEST_CASE("prepared hijack: by default a function of another client can replace a statement") {
  // The documented limit of the default (server_check_prepared = 0): clients of one pool
  // share server sessions, and server-side code that client runs is trusted.
  if (skip_in_direct_mode("two clients on one server session")) return;
  make_db(false);
  {
    Pooler p(one_server(false));
    Conn victim = connect(conninfo(p));
    Conn attacker = connect(conninfo(p));
    prepare_ok(victim.get(), "mine", "select 1 as mine");
    CHECK(run_prepared(victim.get(), "mine") == "1");
    CHECK(query(attacker.get(), "SELECT hijack()") == "1");
    CHECK(run_prepared(victim.get(), "mine") == "666");
  }
  drop_db();
}

// The names the attacker reads (through the attack database's helper), space-separated.
std::string names_seen(PGconn* attacker, const std::string& which) {
  return query(attacker, "SELECT coalesce(string_agg(n, ' '), '') FROM names('" + which + "') n");
}

bool log_has(const Pooler& p, const std::string& text) {
  for (int i = 0; i < 100; i++) {
    if (p.log().find(text) != std::string::npos) return true;
    sleep_ms(20);
  }
  return false;
}

const char* kDetected =
    "server_check_prepared: a statement under pgsluice's names was prepared by SQL";

TEST_CASE("prepared hijack: server_check_prepared catches a statement replaced by SQL") {
  if (skip_in_direct_mode("two clients on one server session")) return;
  make_db(false);
  {
    Pooler p(one_server(true));
    Conn victim = connect(conninfo(p));
    Conn attacker = connect(conninfo(p));
    prepare_ok(victim.get(), "mine", "select 1 as mine");
    CHECK(run_prepared(victim.get(), "mine") == "1");

    SUBCASE("a function replaces every protocol-level statement") {
      CHECK(query(attacker.get(), "SELECT hijack('not from_sql')") == "1");
      CHECK(run_prepared(victim.get(), "mine") == "1");
      CHECK(log_has(p, kDetected));
      // Again, on the new server.
      CHECK(query(attacker.get(), "SELECT hijack('not from_sql')") == "1");
      CHECK(run_prepared(victim.get(), "mine") == "1");
      CHECK(run_prepared(victim.get(), "mine") == "1");
    }
    SUBCASE("the same in a transaction the attacker then commits") {
      exec_ok(attacker.get(), "BEGIN");
      CHECK(query(attacker.get(), "SELECT hijack('not from_sql')") == "1");
      exec_ok(attacker.get(), "COMMIT");
      CHECK(run_prepared(victim.get(), "mine") == "1");
    }
    SUBCASE("the same through the extended protocol, then the attacker leaves") {
      Result r(PQexecParams(attacker.get(), "SELECT hijack('not from_sql')", 0, nullptr, nullptr,
                            nullptr, nullptr, 0));
      CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "1");
      attacker.reset();
      CHECK(run_prepared(victim.get(), "mine") == "1");
      CHECK(log_has(p, kDetected));
    }
    SUBCASE("a function drops them (no replacement): the victim's statement is prepared again") {
      CHECK(query(attacker.get(), "SELECT drop_them()") == "1");
      CHECK(run_prepared(victim.get(), "mine") == "1");
    }
    SUBCASE("a function prepares the names pgsluice will use next") {
      CHECK(query(attacker.get(), "SELECT plant(20)") == "20");
      prepare_ok(victim.get(), "next", "select 2 as next");
      CHECK(run_prepared(victim.get(), "next") == "2");
      CHECK(run_prepared(victim.get(), "mine") == "1");
    }
    SUBCASE("an SQL-level statement of the victim's") {
      exec_ok(victim.get(), "PREPARE v AS SELECT 3");
      CHECK(query(victim.get(), "EXECUTE v") == "3");
      CHECK(query(attacker.get(), "SELECT hijack('from_sql')") == "1");
      CHECK(query(victim.get(), "EXECUTE v") == "3");
      CHECK(query(victim.get(), "EXECUTE v") == "3");
      CHECK(run_prepared(victim.get(), "mine") == "1");
    }
    SUBCASE("a Parse from the attacker under the victim's server-side name is its own") {
      std::string name = names_seen(attacker.get(), "not from_sql");
      REQUIRE(name.rfind("PGSLUICE_", 0) == 0);
      REQUIRE(name.find(' ') == std::string::npos);
      prepare_ok(attacker.get(), name, "select 666");
      CHECK(run_prepared(attacker.get(), name) == "666");
      CHECK(run_prepared(victim.get(), "mine") == "1");
      CHECK(run_prepared(attacker.get(), name) == "666");
      // It did not take the name on the server: pgsluice gave it one of its own.
      std::string its = names_seen(attacker.get(), "statement = $$select 666$$");
      CHECK(its.rfind("PGSLUICE_", 0) == 0);
      CHECK(its != name);
    }
    CHECK(run_prepared(victim.get(), "mine") == "1");
  }
  drop_db();
}

TEST_CASE("prepared hijack: with pg_prepared_statements revoked the names cannot be found") {
  if (skip_in_direct_mode("two clients on one server session")) return;
  make_db(true);
  {
    Pooler p(one_server(false));
    Conn victim = connect(conninfo(p));
    Conn attacker = connect(conninfo(p));
    prepare_ok(victim.get(), "mine", "select 1 as mine");
    CHECK(run_prepared(victim.get(), "mine") == "1");
    // Each attack function gets 42501 reading the names (it returns -1).
    CHECK(query(attacker.get(), "SELECT hijack()") == "-1");
    CHECK(query(attacker.get(), "SELECT drop_them()") == "-1");
    CHECK(query(attacker.get(), "SELECT plant(20)") == "-1");
    CHECK(run_prepared(victim.get(), "mine") == "1");
    CHECK(query(attacker.get(), "SELECT count(*) FROM pg_prepared_statements")
              .rfind("error 42501", 0) == 0);
    CHECK(query(attacker.get(), "SELECT count(*) FROM pg_prepared_statement()")
              .rfind("error 42501", 0) == 0);
    CHECK(run_prepared(victim.get(), "mine") == "1");
  }
  {
    // server_check_prepared needs to read pg_prepared_statements: with the REVOKE its check
    // fails, and it fails closed (the server is closed; the victim gets a new one).
    Pooler p(one_server(true));
    Conn victim = connect(conninfo(p));
    Conn other = connect(conninfo(p));
    prepare_ok(victim.get(), "mine", "select 1 as mine");
    CHECK(run_prepared(victim.get(), "mine") == "1");
    CHECK(query(other.get(), "SELECT 5") == "5");
    CHECK(run_prepared(victim.get(), "mine") == "1");
    CHECK(log_has(p, "permission denied for view pg_prepared_statements"));
  }
  drop_db();
}

TEST_CASE("prepared: SQL-level statements are named as the protocol's Close names them") {
  // PREPARE once folded pgsluice's name to lower case: the Close that evicts a statement or
  // prepares it afresh missed it, and PostgreSQL answered 42P05 naming pgsluice's namespace.
  if (skip_in_direct_mode("max_prepared_statements")) return;
  Options o;
  o.default_pool_size = 1;
  o.extra_pgbouncer = "max_prepared_statements = 2\n";
  Pooler p(o);
  Conn c = connect(p.conninfo());
  for (int i = 0; i < 4; i++)
    exec_ok(c.get(), "PREPARE q" + std::to_string(i) + " AS SELECT " + std::to_string(i));
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < 4; i++) {
      INFO("round " << round << " q" << i);
      CHECK(query(c.get(), "EXECUTE q" + std::to_string(i)) == std::to_string(i));
    }
  // Evicted ones are gone from the server (the protocol-level Close names them as PREPARE did).
  CHECK(query(c.get(), "select count(*) from pg_prepared_statements") == "2");
  // An error of EXECUTE names the client's statement, as PostgreSQL would.
  exec_ok(c.get(), "PREPARE q9 (int) AS SELECT $1");
  CHECK(query(c.get(), "EXECUTE q9") ==
        "error 42601 ERROR:  wrong number of parameters for prepared statement \"q9\"\n"
        "DETAIL:  Expected 1 parameters but got 0.\n");
}

TEST_CASE("prepared hijack: what server_check_prepared costs") {
  // pgbench -M prepared -S on 2 servers. With 2 clients each finds the server it used last
  // (no check); with 8 nearly every transaction goes to a server another client used last,
  // checked first when on. Figures only: the machine is shared.
  if (skip_in_direct_mode("a pooler setting")) return;
  for (int clients : {2, 8}) {
    double tps[2] = {0, 0};
    for (int on = 0; on < 2; on++) {
      Options o;
      o.default_pool_size = 2;
      if (on) o.extra_pgbouncer = "server_check_prepared = 1\n";
      Pooler p(o);
      PgbenchRun r =
          run_pgbench(p, "-M prepared -S -c " + std::to_string(clients) + " -j 2 -T 4", 40);
      REQUIRE_MESSAGE(r.exit_code == 0, r.output);
      CHECK(r.failed <= 0);
      tps[on] = static_cast<double>(r.processed) / 4;
    }
    MESSAGE(clients << " clients: server_check_prepared off " << tps[0] << " tps, on " << tps[1]
                    << " tps");
    CHECK(tps[1] > 0);
  }
}

}  // namespace
}  // namespace it
