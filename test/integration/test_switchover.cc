// Targets that change under load. PgBouncer's switchover (PAUSE db, point [databases] at
// another server, RELOAD, RESUME db) moves the existing pools: their clients stay connected,
// no transaction fails, and the new transactions land on the new server.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

std::string admin_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// A cluster whose testdb has the table the test's pgbench script writes to.
Cluster log_cluster(const char* tag) {
  ClusterSetup s;
  s.tag = tag;
  s.setup_sql = "CREATE TABLE sw (x int); GRANT SELECT, INSERT ON sw TO md5user;";
  return start_cluster(s);
}

long long rows(const Cluster& c) {
  Conn su = connect(superuser_conninfo(c));
  return std::stoll(scalar(su.get(), "SELECT count(*) FROM sw"));
}

std::string db_line(const Cluster& c) {
  return "testdb = host=127.0.0.1 port=" + std::to_string(c.port) + " dbname=testdb\n";
}

// Replaces the [databases] body of p's ini with `body`.
void rewrite_databases(const Pooler& p, const std::string& body) {
  std::string path = p.dir() + "/pgsluice.ini";
  std::string ini = read_file(path);
  size_t from = ini.find("[databases]\n");
  size_t to = ini.find("[pgbouncer]");
  REQUIRE(from != std::string::npos);
  REQUIRE(to != std::string::npos);
  from += 12;
  ini.replace(from, to - from, body + "\n");
  write_file(path, ini, 0600);
}

}  // namespace

TEST_CASE("switchover: PAUSE, [databases] to another cluster, RELOAD, RESUME under pgbench") {
  if (skip_in_direct_mode("switchover is a pooler feature")) return;
  Cluster a = log_cluster("swa");
  Cluster b = log_cluster("swb");
  Options o;
  o.databases = db_line(a);
  o.default_pool_size = 8;
  Pooler p(o);
  std::string dir = make_temp_dir("swbench");
  write_file(dir + "/tx.sql", "INSERT INTO sw VALUES (1);\n");

  PgbenchRun run;
  std::thread bench([&] { run = run_pgbench(p, "-c 16 -j 4 -T 20 -f " + dir + "/tx.sql", 90); });
  std::this_thread::sleep_for(std::chrono::seconds(6));
  Conn admin = connect(admin_conninfo(p));
  auto t0 = std::chrono::steady_clock::now();
  exec_ok(admin.get(), "PAUSE testdb");
  rewrite_databases(p, db_line(b));
  exec_ok(admin.get(), "RELOAD");
  long long a_at_switch = rows(a);
  exec_ok(admin.get(), "RESUME testdb");
  double paused_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  bench.join();

  long long a_rows = rows(a), b_rows = rows(b);
  MESSAGE("switchover: pgbench processed "
          << run.processed << ", failed " << run.failed << "; cluster A " << a_rows
          << " rows, cluster B " << b_rows << " rows; PAUSE..RESUME took " << paused_ms << " ms");
  CHECK_MESSAGE(run.exit_code == 0, run.output);
  CHECK(run.failed <= 0);  // pgbench prints no failure line when nothing failed
  CHECK(run.processed > 0);
  CHECK(a_rows > 0);
  CHECK(a_rows == a_at_switch);  // nothing reached the old cluster after RELOAD
  CHECK(b_rows > 0);
  CHECK(a_rows + b_rows == run.processed);
  // Servers are on the new cluster only.
  Result sv = exec_ok(admin.get(), "SHOW SERVERS");
  int port_col = PQfnumber(sv.get(), "port");
  REQUIRE(port_col >= 0);
  for (int i = 0; i < PQntuples(sv.get()); i++)
    CHECK(std::string(PQgetvalue(sv.get(), i, port_col)) == std::to_string(b.port));
  CHECK(p.log().find("target changed by RELOAD") != std::string::npos);
}

TEST_CASE("switchover: RELOAD alone moves idle servers at once and busy ones at release") {
  if (skip_in_direct_mode("switchover is a pooler feature")) return;
  Cluster a = log_cluster("swa");
  Cluster b = log_cluster("swb");
  Options o;
  o.databases = db_line(a);
  Pooler p(o);
  Conn busy = connect(p.conninfo());
  Conn idle = connect(p.conninfo());
  exec_ok(idle.get(), "INSERT INTO sw VALUES (1)");  // leaves an idle server on A
  exec_ok(busy.get(), "BEGIN");
  exec_ok(busy.get(), "INSERT INTO sw VALUES (1)");  // holds a server on A
  Conn admin = connect(admin_conninfo(p));
  rewrite_databases(p, db_line(b));
  exec_ok(admin.get(), "RELOAD");
  // The transaction goes on where it started; the client stays connected.
  exec_ok(busy.get(), "INSERT INTO sw VALUES (1)");
  exec_ok(busy.get(), "COMMIT");
  CHECK(rows(a) == 3);
  exec_ok(busy.get(), "INSERT INTO sw VALUES (1)");
  exec_ok(idle.get(), "INSERT INTO sw VALUES (1)");
  CHECK(rows(a) == 3);
  CHECK(rows(b) == 2);
  // No server of the pool is left on A.
  Conn su = connect(superuser_conninfo(a));
  for (int i = 0; i < 50 && scalar(su.get(),
                                   "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                                   "'md5user'") != "0";
       i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(scalar(su.get(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'md5user'") == "0");
}

}  // namespace it

namespace it {

TEST_CASE("multi-host: round-robin spreads new servers over both hosts") {
  if (skip_in_direct_mode("host lists are a pooler feature")) return;
  Cluster a = log_cluster("rra");
  Cluster b = log_cluster("rrb");
  Options o;
  o.databases = "testdb = host=127.0.0.1,127.0.0.1 port=" + std::to_string(a.port) + "," +
                std::to_string(b.port) + " dbname=testdb\n";
  o.default_pool_size = 8;
  Pooler p(o);
  std::vector<Conn> held;
  for (int i = 0; i < 8; i++) {
    held.push_back(connect(p.conninfo()));
    exec_ok(held.back().get(), "BEGIN");
    exec_ok(held.back().get(), "INSERT INTO sw VALUES (1)");  // each holds its own server
  }
  for (Conn& c : held) exec_ok(c.get(), "COMMIT");
  long long on_a = rows(a), on_b = rows(b);
  MESSAGE("round-robin: " << on_a << " servers' transactions on A, " << on_b << " on B");
  CHECK(on_a + on_b == 8);
  CHECK(on_a >= 3);
  CHECK(on_b >= 3);
  // SHOW SERVERS names the host each server is on.
  Conn admin = connect(admin_conninfo(p));
  Result sv = exec_ok(admin.get(), "SHOW SERVERS");
  int port_col = PQfnumber(sv.get(), "port");
  int seen_a = 0, seen_b = 0;
  for (int i = 0; i < PQntuples(sv.get()); i++) {
    std::string port = PQgetvalue(sv.get(), i, port_col);
    seen_a += port == std::to_string(a.port);
    seen_b += port == std::to_string(b.port);
  }
  CHECK(seen_a + seen_b == PQntuples(sv.get()));
  CHECK(seen_a >= 3);
  CHECK(seen_b >= 3);
}

TEST_CASE("multi-host: a host that refuses connections is skipped while the other serves") {
  if (skip_in_direct_mode("host lists are a pooler feature")) return;
  Cluster b = log_cluster("rfb");
  int dead = free_port();  // nothing listens there: connect is refused
  for (const char* lb : {"round-robin", "disable"}) {
    CAPTURE(lb);
    Options o;
    o.databases = "testdb = host=127.0.0.1,127.0.0.1 port=" + std::to_string(dead) + "," +
                  std::to_string(b.port) + " dbname=testdb load_balance_hosts=" + lb + "\n";
    o.default_pool_size = 6;
    o.extra_pgbouncer = "server_login_retry = 30\n";
    Pooler p(o);
    std::vector<Conn> held;
    for (int i = 0; i < 6; i++) {
      held.push_back(connect(p.conninfo()));
      exec_ok(held.back().get(), "BEGIN");
      CHECK(scalar(held.back().get(), "SELECT 1") == "1");  // no client sees the dead host
    }
    for (Conn& c : held) exec_ok(c.get(), "COMMIT");
    std::string log = p.log();
    // One failed connect to the dead host; then it is skipped for server_login_retry.
    size_t failures = 0;
    std::string needle = "127.0.0.1:" + std::to_string(dead) + " server login failed";
    for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1))
      failures++;
    CHECK(failures == 1);
    if (std::string(lb) == "disable")
      CHECK(log.find("moving to host 127.0.0.1:" + std::to_string(b.port)) != std::string::npos);
  }
}

}  // namespace it
