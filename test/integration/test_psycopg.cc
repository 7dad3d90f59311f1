// psycopg 3 (a real client library with its own prepared-statement cache and pipeline mode)
// through pgsluice and straight to PostgreSQL: the script must pass against both.
#include <doctest/doctest.h>

#include <string>

#include "integration/harness.h"

namespace it {

TEST_CASE("psycopg 3: DEALLOCATE ALL / DISCARD ALL and a failed Parse in a pipeline (issue 9)") {
  if (skip_in_direct_mode("compares pgsluice with direct")) return;
  Options o;
  o.default_pool_size = 1;  // every client shares the one server
  Pooler p(o);
  const Cluster& cl = cluster();
  std::string direct = "host=127.0.0.1 port=" + std::to_string(cl.port) +
                       " user=md5user password=md5pass dbname=testdb";
  CmdResult r = run_shell(
      "/usr/bin/python3 " + shell_quote(checkout_root() + "/test/integration/psycopg_prepared.py") +
          " " + shell_quote(direct) + " " + shell_quote(p.conninfo()),
      120);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("all checks passed") != std::string::npos);
}

}  // namespace it
