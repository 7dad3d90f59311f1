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

std::string sqlstate_of(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s ? s : "";
}

// The first value of a simple query, or "error <sqlstate>".
std::string query(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) < 1)
    return "error " + sqlstate_of(r.get()) + " " + PQresultErrorMessage(r.get());
  return PQgetvalue(r.get(), 0, 0);
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

}  // namespace
}  // namespace it
