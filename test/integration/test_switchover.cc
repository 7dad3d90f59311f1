// Targets that change under load. PgBouncer's switchover (PAUSE db, point [databases] at
// another server, RELOAD, RESUME db) moves the existing pools: their clients stay connected,
// no transaction fails, and the new transactions land on the new server.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <sstream>
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
  // The busy server is marked close_needed (the idle one is gone already, or as soon as the
  // reading of the pool's routines it may be running ends: pinning.h).
  Result sv = exec_ok(admin.get(), "SHOW SERVERS");
  for (int i = 0; i < 50 && PQntuples(sv.get()) != 1; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    sv = exec_ok(admin.get(), "SHOW SERVERS");
  }
  REQUIRE(PQntuples(sv.get()) == 1);
  CHECK(std::string(PQgetvalue(sv.get(), 0, PQfnumber(sv.get(), "close_needed"))) == "1");
  CHECK(std::string(PQgetvalue(sv.get(), 0, PQfnumber(sv.get(), "port"))) ==
        std::to_string(a.port));
  // The transaction goes on where it started; the client stays connected.
  exec_ok(busy.get(), "INSERT INTO sw VALUES (1)");
  exec_ok(busy.get(), "COMMIT");
  exec_ok(admin.get(), "WAIT_CLOSE testdb");  // returns: the old server closed at release
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

namespace it {

TEST_CASE(
    "failover: read-write over primary and standby follows a promotion, no write on the "
    "standby") {
  if (skip_in_direct_mode("failover is a pooler feature")) return;
  Cluster primary = log_cluster("fop");
  Cluster standby = start_standby(primary, "fos");
  Options o;
  o.databases = "testdb = host=127.0.0.1,127.0.0.1 port=" + std::to_string(primary.port) + "," +
                std::to_string(standby.port) + " dbname=testdb target_session_attrs=read-write\n";
  o.default_pool_size = 8;
  // server_login_retry stays at its default (15 s): the new primary is found through
  // server_check_delay, for which a host refused as a standby is held.
  int mport = free_port();
  o.extra_pgbouncer = "server_check_delay = 1\nserver_connect_timeout = 2\nmetrics_port = " +
                      std::to_string(mport) + "\n";
  Pooler p(o);
  auto metric = [&](const std::string& name) {
    CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
    size_t at = r.output.find("\n" + name + " ");
    if (at == std::string::npos) return std::string();
    size_t b = at + name.size() + 2, e = r.output.find('\n', b);
    return r.output.substr(b, e - b);
  };
  auto pool_host = [&] {
    Conn admin = connect(admin_conninfo(p));
    Result r(PQexec(admin.get(), "SHOW POOLS"));
    int col = PQfnumber(r.get(), "current_host");
    for (int i = 0; i < PQntuples(r.get()); i++)
      if (std::string(PQgetvalue(r.get(), i, 0)) == "testdb")
        return std::string(PQgetvalue(r.get(), i, col));
    return std::string("(no pool)");
  };

  using SteadyClock = std::chrono::steady_clock;
  std::atomic<bool> stop{false};
  std::atomic<long long> ok{0}, failed{0}, read_only_errors{0}, reconnects{0};
  std::atomic<int64_t> stopped_at{0};   // ns since epoch of the steady clock, 0: not yet
  std::atomic<int64_t> first_after{0};  // first successful write after stopped_at
  std::mutex err_mu;
  std::string first_errors;
  std::vector<int64_t> successes;  // when each write succeeded (err_mu)
  auto now_ns = [] { return SteadyClock::now().time_since_epoch().count(); };
  std::vector<std::thread> writers;
  for (int w = 0; w < 8; w++)
    writers.emplace_back([&] {
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      while (!stop) {
        if (!c || PQstatus(c.get()) != CONNECTION_OK) {
          reconnects++;
          c = try_connect(p.conninfo(), &err);
          if (!c) {
            failed++;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            continue;
          }
        }
        Result r(PQexec(c.get(), "INSERT INTO sw VALUES (1)"));
        if (PQresultStatus(r.get()) == PGRES_COMMAND_OK) {
          ok++;
          int64_t t = now_ns(), s = stopped_at.load();
          {
            std::lock_guard<std::mutex> g(err_mu);
            successes.push_back(t);
          }
          int64_t zero = 0;
          if (s != 0 && t > s) first_after.compare_exchange_strong(zero, t);
        } else {
          failed++;
          const char* st = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
          if (st && std::string(st) == "25006") read_only_errors++;
          std::lock_guard<std::mutex> g(err_mu);
          if (first_errors.size() < 600)
            first_errors += std::string(st ? st : "-") + " " + PQerrorMessage(c.get()) + "; ";
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  // Clients that stay idle through the failover (each ran one write before it).
  std::vector<Conn> idle;
  for (int i = 0; i < 4; i++) {
    idle.push_back(connect(p.conninfo()));
    exec_ok(idle.back().get(), "INSERT INTO sw VALUES (1)");
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  long long before = ok.load();
  {
    Conn su = connect(superuser_conninfo(standby));
    CHECK(scalar(su.get(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'md5user'") ==
          "0");  // read-write: no server stays on the standby
  }
  const std::string on_primary = "127.0.0.1:" + std::to_string(primary.port);
  const std::string on_standby = "127.0.0.1:" + std::to_string(standby.port);
  CHECK(pool_host() == on_primary);
  CHECK(metric("pgsluice_failovers_total") == "0");
  // The primary goes (a fast shutdown: its sessions end, its WAL reaches the standby), then
  // the standby is promoted, as a failover manager does.
  auto stop_begin = SteadyClock::now();
  int64_t stop_begin_ns = now_ns();
  CmdResult st = run_pg_ctl(primary, "stop -m fast -w -t 60");
  REQUIRE_MESSAGE(st.exit_code == 0, st.output);
  CmdResult pr = run_pg_ctl(standby, "promote -w -t 60");
  REQUIRE_MESSAGE(pr.exit_code == 0, pr.output);
  stopped_at = now_ns();
  double stop_ms =
      std::chrono::duration<double, std::milli>(SteadyClock::now() - stop_begin).count();
  std::this_thread::sleep_for(std::chrono::seconds(5));
  stop = true;
  for (auto& t : writers) t.join();

  // The idle clients see no error: their connections work, on the new primary.
  for (Conn& c : idle) exec_ok(c.get(), "INSERT INTO sw VALUES (1)");
  long long on_new = rows(standby) - 8;  // the idle clients' writes
  // The client-visible outage: the longest time without any successful write, from the
  // old primary's stop on.
  std::sort(successes.begin(), successes.end());
  int64_t prev = stop_begin_ns, gap = 0;
  for (int64_t t : successes)
    if (t > stop_begin_ns) {
      gap = std::max(gap, t - prev);
      prev = t;
    }
  double gap_ms = static_cast<double>(gap) / 1e6;
  double outage_ms = first_after.load() == 0
                         ? -1
                         : static_cast<double>(first_after.load() - stopped_at.load()) / 1e6;
  MESSAGE("failover: " << before << " writes before, " << ok.load() << " in all; failed "
                       << failed.load() << " (25006 read-only: " << read_only_errors.load()
                       << "); old primary stop took " << stop_ms
                       << " ms (with the promotion); first write after the promotion returned "
                       << outage_ms
                       << " ms later; longest time without a successful write from the stop "
                          "command on "
                       << gap_ms << " ms; rows on the new primary " << on_new << "; reconnects "
                       << reconnects.load());
  if (failed.load() > 0) MESSAGE("first errors: " << first_errors);
  // A writer whose server went with the primary got PostgreSQL's error and retried on the
  // same connection (transaction pooling keeps the client): none had to reconnect.
  CHECK(reconnects.load() == 0);
  CHECK(before > 0);
  CHECK(read_only_errors.load() == 0);
  CHECK(first_after.load() != 0);
  CHECK(outage_ms >= 0);
  // New transactions reach the new primary within server_check_delay (1 s: the standby was
  // refused as read-only and is held that long) plus one connect; 3 s leaves room for a
  // loaded machine, server_login_retry (15 s) would not fit.
  CHECK(outage_ms < 3000);
  CHECK(on_new > before);      // the standby had every row before; then new ones arrived
  CHECK(on_new == ok.load());  // every acknowledged write is on the new primary
  CHECK(gap_ms < 5000);
  // The standby was refused at first (read-only), and the old primary's failure is logged.
  CHECK(p.log().find("does not suit target_session_attrs: a standby") != std::string::npos);
  // Visible: the pool's current host, the failover counted once, and the log says where the
  // pool went and why.
  CHECK(pool_host() == on_standby);
  CHECK(metric("pgsluice_failovers_total") == "1");
  CHECK(p.log().find("now on host " + on_standby + " (was " + on_primary +
                     ", which could not "
                     "be reached)") != std::string::npos);
}

}  // namespace it

namespace it {

TEST_CASE(
    "RELOAD re-applies max_db_connections and max_user_connections to existing pools; "
    "reloads are counted") {
  if (skip_in_direct_mode("RELOAD is a pooler feature")) return;
  Cluster a = log_cluster("rla");
  int mport = free_port();
  Options o;
  o.databases = db_line(a);
  o.workers = 2;
  o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) + "\n";
  Pooler p(o);
  auto metric = [&](const std::string& name) {
    CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
    size_t at = r.output.find("\n" + name + " ");
    if (at == std::string::npos) return std::string();
    size_t b = at + name.size() + 2, e = r.output.find('\n', b);
    return r.output.substr(b, e - b);
  };
  Conn admin = connect(admin_conninfo(p));
  // Holds one server in a transaction, then has a second client try while the limit is 1:
  // the second waits until the first commits. `limit` is the [databases]/[users] body.
  // Servers made before stay (as PgBouncer): RECONNECT closes the idle ones first.
  auto second_waits = [&](const std::string& body) {
    rewrite_databases(p, body);
    exec_ok(admin.get(), "RELOAD");
    exec_ok(admin.get(), "RECONNECT testdb");
    Conn c1 = connect(p.conninfo());
    exec_ok(c1.get(), "BEGIN");
    exec_ok(c1.get(), "INSERT INTO sw VALUES (1)");
    Conn c2 = connect(p.conninfo());
    REQUIRE(PQsendQuery(c2.get(), "INSERT INTO sw VALUES (2)") == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    REQUIRE(PQconsumeInput(c2.get()) == 1);
    CHECK(PQisBusy(c2.get()) == 1);  // waiting for the one server the limit allows
    exec_ok(c1.get(), "COMMIT");
    Result r(PQgetResult(c2.get()));
    CHECK(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
    while (PGresult* more = PQgetResult(c2.get())) PQclear(more);
    rewrite_databases(p, db_line(a));  // back to no limit for the next round
    exec_ok(admin.get(), "RELOAD");
  };
  // Without a limit both run at once.
  {
    Conn c1 = connect(p.conninfo()), c2 = connect(p.conninfo());
    exec_ok(c1.get(), "BEGIN");
    exec_ok(c1.get(), "INSERT INTO sw VALUES (1)");
    exec_ok(c2.get(), "INSERT INTO sw VALUES (1)");
    exec_ok(c1.get(), "COMMIT");
  }
  CHECK(metric("pgsluice_reloads_total") == "0");
  std::string limited_db = db_line(a);
  limited_db.insert(limited_db.size() - 1, " max_db_connections=1");
  second_waits(limited_db);
  second_waits(db_line(a) + "[users]\nmd5user = max_user_connections=1\n");
  CHECK(metric("pgsluice_reloads_total") == "4");
  // A file that cannot be read keeps the running config and is counted as refused.
  rewrite_databases(p, db_line(a) + "[pgbouncer]\npool_mode = nonsense\n");
  Result bad(PQexec(admin.get(), "RELOAD"));
  CHECK(PQresultStatus(bad.get()) == PGRES_FATAL_ERROR);
  CHECK(metric("pgsluice_reload_failures_total") == "1");
  CHECK(metric("pgsluice_reloads_total") == "4");
}

}  // namespace it

namespace it {

// The README's failover figures: pgbench writes through pgsluice while the primary stops and
// the standby is promoted. pgbench (15) ends a client at its first error other than a
// serialization failure or deadlock, so its failed transactions are the aborted clients;
// the per-transaction log (-l) gives when each successful transaction ended.
TEST_CASE("failover under pgbench: client-visible outage and failed transactions, measured") {
  if (skip_in_direct_mode("failover is a pooler feature")) return;
  Cluster primary = log_cluster("fbp");
  Cluster standby = start_standby(primary, "fbs");
  Options o;
  o.databases = "testdb = host=127.0.0.1,127.0.0.1 port=" + std::to_string(primary.port) + "," +
                std::to_string(standby.port) + " dbname=testdb target_session_attrs=read-write\n";
  o.default_pool_size = 8;
  o.extra_pgbouncer = "server_check_delay = 1\nserver_connect_timeout = 2\n";
  Pooler p(o);
  std::string dir = make_temp_dir("fobench");
  write_file(dir + "/tx.sql", "INSERT INTO sw VALUES (1);\n");
  PgbenchRun run;
  std::thread bench([&] {
    run = run_pgbench(p, "-c 16 -j 2 -T 14 -l --log-prefix=" + dir + "/tx -f " + dir + "/tx.sql",
                      120);
  });
  std::this_thread::sleep_for(std::chrono::seconds(5));
  auto epoch_us = [] {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  int64_t stop_at = epoch_us();
  CmdResult st = run_pg_ctl(primary, "stop -m fast -w -t 60");
  REQUIRE_MESSAGE(st.exit_code == 0, st.output);
  CmdResult pr = run_pg_ctl(standby, "promote -w -t 60");
  REQUIRE_MESSAGE(pr.exit_code == 0, pr.output);
  int64_t promoted_at = epoch_us();
  bench.join();

  // Every successful transaction's end (time_epoch, time_us are the 5th and 6th fields).
  std::vector<int64_t> ends;
  CmdResult logs = run_shell("cat " + dir + "/tx.*", 10);
  std::istringstream in(logs.output);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string client, no, lat, script;
    long long sec = 0, usec = 0;
    if (f >> client >> no >> lat >> script >> sec >> usec && lat != "failed" && lat != "skipped")
      ends.push_back(sec * 1000000 + usec);
  }
  std::sort(ends.begin(), ends.end());
  int64_t prev = stop_at, gap = 0, first_after_promotion = 0;
  for (int64_t t : ends) {
    if (t <= stop_at) continue;
    gap = std::max(gap, t - prev);
    prev = t;
    if (first_after_promotion == 0 && t > promoted_at) first_after_promotion = t;
  }
  size_t aborted = 0;
  for (size_t at = run.output.find(" aborted in command"); at != std::string::npos;
       at = run.output.find(" aborted in command", at + 1))
    aborted++;
  long long on_new = rows(standby);
  MESSAGE("failover under pgbench -c 16, pool 8: "
          << ends.size() << " transactions, " << aborted
          << " clients aborted (failed transactions); stop + promotion took "
          << (promoted_at - stop_at) / 1000 << " ms; first transaction after the promotion "
          << (first_after_promotion - promoted_at) / 1000
          << " ms later; longest time without a committed transaction from the stop command on "
          << gap / 1000 << " ms; rows on the new primary " << on_new);
  CHECK(run.processed > 0);
  CHECK(static_cast<long long>(ends.size()) == run.processed);
  CHECK(run.output.find("25006") == std::string::npos);  // never a write on the standby
  CHECK(run.output.find("read-only") == std::string::npos);
  CHECK(aborted <= 8);  // only transactions on a server of the old primary can fail
  CHECK(aborted < 16);  // clients that were waiting or idle go on
  CHECK(first_after_promotion != 0);
  CHECK(first_after_promotion - promoted_at < 3000000);  // server_check_delay + one connect
  CHECK(gap < 5000000);
  CHECK(on_new == run.processed);  // every committed transaction is on the new primary
}

}  // namespace it
