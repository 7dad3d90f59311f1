// Idle pools freed: pool_idle_timeout (an empty pool goes, a pool with a client stays, 0 keeps
// every pool), autodb_idle_timeout (a database made from "*" leaves SHOW DATABASES), and
// logins racing the freeing over two workers.
#include <doctest/doctest.h>

#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

std::string pg() {
  return "host=127.0.0.1 port=" + std::to_string(cluster().port);
}

std::string admin_of(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// (database, user) of every SHOW POOLS row but the console's.
std::set<std::pair<std::string, std::string>> show_pools(const Pooler& p) {
  Conn admin = connect(admin_of(p));
  Result r = exec_ok(admin.get(), "SHOW POOLS");
  std::set<std::pair<std::string, std::string>> out;
  for (int i = 0; i < PQntuples(r.get()); i++)
    if (std::string(PQgetvalue(r.get(), i, 0)) != "pgbouncer")
      out.emplace(PQgetvalue(r.get(), i, 0), PQgetvalue(r.get(), i, 1));
  return out;
}

std::set<std::string> show_databases(const Pooler& p) {
  Conn admin = connect(admin_of(p));
  Result r = exec_ok(admin.get(), "SHOW DATABASES");
  std::set<std::string> out;
  for (int i = 0; i < PQntuples(r.get()); i++) out.insert(PQgetvalue(r.get(), i, 0));
  return out;
}

bool has_pool(const Pooler& p, const std::string& db, const std::string& user = "md5user") {
  return show_pools(p).count({db, user}) != 0;
}

// The pid of the backend a one-query client of db gets, through p.
std::string one_query(const Pooler& p, const std::string& db) {
  Conn c = connect(p.conninfo("md5user", "md5pass", db));
  return scalar(c.get(), "SELECT pg_backend_pid()");
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
  return n;
}

}  // namespace

TEST_SUITE("pool idle") {
  TEST_CASE("pool_idle_timeout: an empty pool is freed, a new client gets a fresh one") {
    Options o;
    o.databases = "testdb = " + pg() + " dbname=testdb\n";
    o.extra_pgbouncer = "pool_idle_timeout = 1\nserver_idle_timeout = 0.5\n";
    Pooler p(o);
    one_query(p, "testdb");
    REQUIRE(has_pool(p, "testdb"));
    // The client left; its server closes after server_idle_timeout, the pool a second later.
    CHECK(eventually([&] { return !has_pool(p, "testdb"); }, 5));
    CHECK(eventually([] { return count_backends("testdb", "md5user") == 0; }, 5));
    CHECK(p.log().find("pool testdb/md5user freed") != std::string::npos);
    // A new login makes a fresh pool, whose statistics start again.
    Conn c = connect(p.conninfo("md5user", "md5pass", "testdb"));
    CHECK(scalar(c.get(), "SELECT 41 + 1") == "42");
    CHECK(has_pool(p, "testdb"));
    Conn admin = connect(admin_of(p));
    Result st = exec_ok(admin.get(), "SHOW STATS");
    for (int i = 0; i < PQntuples(st.get()); i++)
      if (std::string(PQgetvalue(st.get(), i, 0)) == "testdb")
        CHECK(std::string(PQgetvalue(st.get(), i, 2)) == "1");  // total_xact_count
  }

  TEST_CASE("pool_idle_timeout: a pool with a logged-in client is never freed") {
    Options o;
    o.databases = "testdb = " + pg() + " dbname=testdb\n";
    o.extra_pgbouncer = "pool_idle_timeout = 1\nserver_idle_timeout = 0.5\n";
    Pooler p(o);
    Conn c = connect(p.conninfo("md5user", "md5pass", "testdb"));
    CHECK(scalar(c.get(), "SELECT 1") == "1");
    // Transaction pooling: the server went back to the pool and closes; the client stays.
    CHECK(eventually([] { return count_backends("testdb", "md5user") == 0; }, 5));
    sleep_ms(2500);
    CHECK(has_pool(p, "testdb"));
    CHECK(p.log().find("pool testdb/md5user freed") == std::string::npos);
    CHECK(scalar(c.get(), "SELECT 2") == "2");
  }

  TEST_CASE("pool_idle_timeout = 0 (the default): pools stay") {
    Options o;
    o.databases = "testdb = " + pg() + " dbname=testdb\n";
    o.extra_pgbouncer = "server_idle_timeout = 0.5\n";
    Pooler p(o);
    one_query(p, "testdb");
    CHECK(eventually([] { return count_backends("testdb", "md5user") == 0; }, 5));
    sleep_ms(2500);
    CHECK(has_pool(p, "testdb"));
    CHECK(p.log().find("freed") == std::string::npos);
  }

  TEST_CASE("autodb_idle_timeout: a database made from * leaves SHOW DATABASES, then comes back") {
    Options o;  // the harness's [databases]: testdb, and * for every other name
    o.extra_pgbouncer = "autodb_idle_timeout = 1\nserver_idle_timeout = 0.5\n";
    Pooler p(o);
    Conn keep = connect(p.conninfo("md5user", "md5pass", "testdb"));  // a configured database
    CHECK(scalar(keep.get(), "SELECT 1") == "1");
    one_query(p, "postgres");
    CHECK(show_databases(p).count("postgres") == 1);
    CHECK(has_pool(p, "postgres"));
    // Its server counts as a use (PgBouncer): it closes first (server_idle_timeout), then the
    // database goes a second later.
    CHECK(eventually([&] { return show_databases(p).count("postgres") == 0; }, 5));
    CHECK(!has_pool(p, "postgres"));
    CHECK(p.log().find("pool postgres/md5user freed") != std::string::npos);
    CHECK(p.log().find("autodb_idle_timeout") != std::string::npos);
    // Configured databases are not auto-databases.
    CHECK(show_databases(p).count("testdb") == 1);
    CHECK(has_pool(p, "testdb"));
    // Reconnecting makes it again.
    Conn c = connect(p.conninfo("md5user", "md5pass", "postgres"));
    CHECK(scalar(c.get(), "SELECT current_database()") == "postgres");
    CHECK(show_databases(p).count("postgres") == 1);
    CHECK(scalar(keep.get(), "SELECT 2") == "2");
  }

  TEST_CASE("autodb_idle_timeout: a PAUSEd auto-database stays") {
    Options o;
    o.extra_pgbouncer = "autodb_idle_timeout = 1\nserver_idle_timeout = 0.5\n";
    Pooler p(o);
    one_query(p, "postgres");
    Conn admin = connect(admin_of(p));
    exec_ok(admin.get(), "PAUSE postgres");
    sleep_ms(2500);
    CHECK(show_databases(p).count("postgres") == 1);
    exec_ok(admin.get(), "RESUME postgres");
    CHECK(eventually([&] { return show_databases(p).count("postgres") == 0; }, 5));
  }

  TEST_CASE("logins racing the freeing of their pools, two workers, several databases") {
    Options o;
    o.workers = 2;
    o.default_pool_size = 3;
    // Three configured names on two PostgreSQL databases, and * for "postgres" under its name.
    o.databases = "db1 = " + pg() + " dbname=testdb\ndb2 = " + pg() +
                  " dbname=testdb\ndb3 = " + pg() + " dbname=postgres\n* = " + pg() + "\n";
    o.extra_pgbouncer =
        "pool_idle_timeout = 1\nautodb_idle_timeout = 1\nserver_idle_timeout = 0.5\n";
    Pooler p(o);
    // Bursts on six pools that are freed between them; db2 is kept busy all along.
    const std::vector<std::string> dbs = {"db1", "db3", "postgres"};
    const std::vector<std::pair<std::string, std::string>> users = {{"md5user", "md5pass"},
                                                                    {"plainuser", "plainpass"}};
    std::atomic<long> ok{0}, failed{0};
    std::atomic<bool> stop{false};
    std::vector<std::string> errors(10);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; t++)
      threads.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1);
        while (!stop.load()) {
          // A burst on one pool, then a pause long enough for some pools to be freed.
          const std::string& db = dbs[rng() % dbs.size()];
          const auto& [user, pass] = users[rng() % users.size()];
          for (int i = 0, n = 1 + static_cast<int>(rng() % 6); i < n && !stop.load(); i++) {
            std::string err;
            Conn c = try_connect(p.conninfo(user, pass, db), &err);
            std::string v;
            if (c && exec_nothrow(c.get(), "SELECT 1", &err, &v) && v == "1") {
              ok++;
            } else {
              failed++;
              errors[static_cast<size_t>(t)] = db + "/" + user + ": " + err;
            }
          }
          sleep_ms(static_cast<int>(rng() % 2200));
        }
      });
    for (int t = 0; t < 2; t++)
      threads.emplace_back([&, t] {
        const auto& [user, pass] = users[static_cast<size_t>(t)];
        while (!stop.load()) {
          std::string err, v;
          Conn c = try_connect(p.conninfo(user, pass, "db2"), &err);
          if (c && exec_nothrow(c.get(), "SELECT 1", &err, &v) && v == "1") {
            ok++;
          } else {
            failed++;
            errors[static_cast<size_t>(8 + t)] = "db2/" + user + ": " + err;
          }
        }
      });
    sleep_ms(10000);
    stop = true;
    for (auto& th : threads) th.join();
    std::string log = p.log();
    size_t freed = count_of(log, " freed: unused for ");
    MESSAGE("queries: " << ok.load() << " ok, " << failed.load()
                        << " failed; pools freed: " << freed);
    for (const std::string& e : errors)
      if (!e.empty()) MESSAGE("error: " << e);
    CHECK(failed.load() == 0);
    CHECK(ok.load() > 100);
    CHECK(freed >= 3);
    CHECK(log.find("BUG") == std::string::npos);
    CHECK(p.alive());
    // Everything idle goes in the end, and comes back.
    CHECK(eventually([&] { return show_pools(p).empty(); }, 6));
    for (const char* db : {"db1", "db2", "db3", "postgres"}) CHECK(one_query(p, db) != "");
  }
}

}  // namespace it
