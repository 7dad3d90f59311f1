// Basic client traffic through pgsluice: psql, simple multi-statement queries, Unix socket,
// pgbench.
#include <doctest/doctest.h>

#include <string>

#include "integration/harness.h"

namespace it {
namespace {

TEST_CASE("psql: select 1 through the pooler") {
  Pooler p;
  auto r = run_shell("psql " + shell_quote(p.conninfo()) + " -X -A -t -c 'select 1'", 30);
  INFO("psql output: " << r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output == "1\n");
  // A multi-statement script with a transaction, from psql's stdin.
  r = run_shell("printf 'begin;\\nselect 40+2;\\ncommit;\\n' | psql " + shell_quote(p.conninfo()) +
                    " -X -A -t -q",
                30);
  INFO("psql output: " << r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output == "42\n");
}

TEST_CASE("simple query with several statements returns every result") {
  Pooler p;
  Conn c = connect(p.conninfo());
  REQUIRE(PQsendQuery(c.get(), "select 1; select 2 as b, 'x'; select 3 where false") == 1);
  std::vector<std::string> got;
  int results = 0;
  while (PGresult* res = PQgetResult(c.get())) {
    Result r(res);
    ++results;
    REQUIRE_MESSAGE(PQresultStatus(res) == PGRES_TUPLES_OK, std::string(PQresultErrorMessage(res)));
    std::string row;
    for (int i = 0; i < PQntuples(res); ++i)
      for (int j = 0; j < PQnfields(res); ++j) row += std::string(PQgetvalue(res, i, j)) + "|";
    got.push_back(row);
  }
  CHECK(results == 3);
  REQUIRE(got.size() == 3);
  CHECK(got[0] == "1|");
  CHECK(got[1] == "2|x|");
  CHECK(got[2] == "");
  // An error in the middle stops the rest of the string; the connection stays usable.
  REQUIRE(PQsendQuery(c.get(), "select 1; select 1/0; select 3") == 1);
  std::vector<ExecStatusType> sts;
  while (PGresult* res = PQgetResult(c.get())) {
    sts.push_back(PQresultStatus(res));
    PQclear(res);
  }
  REQUIRE(sts.size() == 2);
  CHECK(sts[0] == PGRES_TUPLES_OK);
  CHECK(sts[1] == PGRES_FATAL_ERROR);
  CHECK(scalar(c.get(), "select 'still fine'") == "still fine");
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
}

TEST_CASE("Unix socket listener") {
  Pooler p;
  Conn c = connect(p.unix_conninfo());
  CHECK(scalar(c.get(), "select current_user") == "md5user");
  CHECK(scalar(c.get(), "select current_database()") == "testdb");
  if (!p.direct()) {
    // The pooler, not PostgreSQL, owns the socket file.
    CHECK(access((p.dir() + "/.s.PGSQL." + std::to_string(p.port())).c_str(), F_OK) == 0);
  }
  auto r = run_shell("psql " + shell_quote(p.unix_conninfo()) + " -X -A -t -c 'select 7'", 30);
  INFO(r.output);
  CHECK(r.output == "7\n");
}

void check_pgbench(const Pooler& p, const std::string& args) {
  PgbenchRun r = run_pgbench(p, args);
  bool ok = r.exit_code == 0 && r.processed > 0 && r.failed == 0;
  CHECK_MESSAGE(ok, "pgbench " << args << "\nexit " << r.exit_code << ", output:\n" << r.output);
  MESSAGE("pgbench " << args << ": " << r.processed << " transactions");
}

TEST_CASE("pgbench select-only, simple protocol, 32 clients") {
  Pooler p;
  check_pgbench(p, "-M simple -S -c 32 -j 2 -T 4");
}

TEST_CASE("pgbench select-only, extended protocol, 32 clients") {
  Pooler p;
  check_pgbench(p, "-M extended -S -c 32 -j 2 -T 4");
}

TEST_CASE("pgbench TPC-B-like, simple protocol, 32 clients") {
  Pooler p;
  check_pgbench(p, "-M simple -c 32 -j 2 -T 4");
}

TEST_CASE("pgbench TPC-B-like, extended protocol, 32 clients") {
  Pooler p;
  check_pgbench(p, "-M extended -c 32 -j 2 -T 4");
}

}  // namespace
}  // namespace it
