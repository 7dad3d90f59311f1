// Pooling behaviour: global pool limit, no cross-talk, per-client parameters, dead clients,
// session reset, statement mode.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// Collects the first few errors from worker threads (doctest asserts stay on the main thread).
struct Errors {
  std::mutex mu;
  std::vector<std::string> list;
  std::atomic<int> count{0};
  void add(const std::string& e) {
    if (count++ < 10) {
      std::lock_guard<std::mutex> lk(mu);
      list.push_back(e);
    }
  }
  std::string text() {
    std::lock_guard<std::mutex> lk(mu);
    std::string s;
    for (const auto& e : list) s += e + "\n";
    return s;
  }
};

TEST_CASE("global pool limit: 64 clients, 2 workers, default_pool_size 4") {
  Options o;
  o.workers = 2;
  o.default_pool_size = 4;
  Pooler p(o);
  constexpr int kClients = 64;
  const double kSeconds = 3.0;
  std::atomic<bool> stop_monitor{false};
  std::atomic<int> max_seen{0};
  std::atomic<int> samples{0};
  std::atomic<int> completed{0};
  std::atomic<long> transactions{0};
  Errors errs;
  std::thread monitor([&] {
    while (!stop_monitor) {
      int n = count_backends("testdb", "md5user");
      if (n < 0) {
        errs.add("monitor query failed");
      } else {
        ++samples;
        int m = max_seen.load();
        while (n > m && !max_seen.compare_exchange_weak(m, n)) {
        }
      }
      sleep_ms(50);
    }
  });
  std::vector<std::thread> clients;
  auto t0 = Clock::now();
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      if (!c) {
        errs.add("client " + std::to_string(i) + " connect: " + err);
        return;
      }
      while (seconds_since(t0) < kSeconds) {
        if (!exec_nothrow(c.get(), "BEGIN", &err) ||
            !exec_nothrow(c.get(), "select pg_sleep(0.01)", &err) ||
            !exec_nothrow(c.get(), "COMMIT", &err)) {
          errs.add("client " + std::to_string(i) + " (port " + std::to_string(local_port(c.get())) +
                   "): " + err);
          return;
        }
        ++transactions;
      }
      ++completed;
    });
  }
  for (auto& t : clients) t.join();
  stop_monitor = true;
  monitor.join();
  MESSAGE("max backends seen " << max_seen.load() << " over " << samples.load() << " samples; "
                               << transactions.load() << " transactions");
  CHECK_MESSAGE(errs.count.load() == 0, errs.text());
  CHECK(completed.load() == kClients);
  CHECK(samples.load() > 10);
  CHECK(transactions.load() > kClients);
  if (!p.direct()) {
    CHECK(max_seen.load() <= 4);
    CHECK(max_seen.load() >= 1);
  }
}

TEST_CASE("cold pool: 64 simultaneous logins each see one clean login") {
  // Fresh poolers, so the first logins race with the first server connections.
  for (int round = 0; round < 3; ++round) {
    Pooler p;
    constexpr int kClients = 64;
    Errors errs;
    std::atomic<int> ok{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.emplace_back([&, i] {
        std::string err;
        Conn c = try_connect(p.conninfo(), &err);
        if (!c) {
          errs.add("client " + std::to_string(i) + " connect: " + err);
          return;
        }
        std::string v;
        for (int k = 0; k < 5; ++k) {
          // Transactions that hold servers a little while the pool is still filling up.
          std::string want = std::to_string(i * 10 + k);
          if (!exec_nothrow(c.get(), "BEGIN", &err) ||
              !exec_nothrow(c.get(), "select " + want + ", pg_sleep(0.01)", &err, &v) ||
              !exec_nothrow(c.get(), "COMMIT", &err) || v != want) {
            errs.add("client " + std::to_string(i) + " (port " +
                     std::to_string(local_port(c.get())) + ") query " + std::to_string(k) + ": " +
                     err + " value '" + v + "'");
            return;
          }
        }
        ++ok;
      });
    }
    for (auto& t : clients) t.join();
    INFO("round " << round);
    CHECK_MESSAGE(errs.count.load() == 0, errs.text());
    CHECK(ok.load() == kClients);
    if (errs.count.load() != 0) break;
  }
}

TEST_CASE("no cross-talk: 64 clients x 300 transactions") {
  Pooler p;
  {
    Conn c = connect(p.conninfo());
    exec_ok(c.get(), "DROP TABLE IF EXISTS it_crosstalk");
    exec_ok(c.get(),
            "CREATE TABLE it_crosstalk (client int, seq int, val text, PRIMARY KEY (client, seq))");
  }
  constexpr int kClients = 64;
  constexpr int kTx = 300;
  Errors errs;
  std::atomic<long> mismatches{0};
  std::atomic<int> completed{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      if (!c) {
        errs.add("client " + std::to_string(i) + " connect: " + err);
        return;
      }
      for (int s = 0; s < kTx; ++s) {
        std::string tag = std::to_string(i) + "-" + std::to_string(s);
        std::string v1, v2;
        // One round trip per transaction keeps the run short: the whole transaction goes as
        // one simple query; a second query outside any transaction reads an echoed literal.
        std::string tx = "BEGIN; INSERT INTO it_crosstalk VALUES (" + std::to_string(i) + ", " +
                         std::to_string(s) + ", '" + tag +
                         "'); SELECT val FROM it_crosstalk WHERE client = " + std::to_string(i) +
                         " AND seq = " + std::to_string(s) + "; COMMIT";
        if (!PQsendQuery(c.get(), tx.c_str())) {
          errs.add("client " + std::to_string(i) + ": send failed");
          return;
        }
        int nres = 0;
        bool bad = false;
        while (PGresult* res = PQgetResult(c.get())) {
          Result r(res);
          ++nres;
          auto st = PQresultStatus(res);
          if (st == PGRES_TUPLES_OK) {
            if (PQntuples(res) == 1) v1 = PQgetvalue(res, 0, 0);
          } else if (st != PGRES_COMMAND_OK) {
            errs.add("client " + std::to_string(i) + ": " + PQresultErrorMessage(res));
            bad = true;
          }
        }
        if (bad) return;
        if (nres != 4 || v1 != tag) {
          ++mismatches;
          errs.add("client " + tag + " read back '" + v1 + "' (" + std::to_string(nres) +
                   " results)");
        }
        // Explicit transaction with separate round trips (the server must stay the same).
        if (s % 3 == 0) {
          if (!exec_nothrow(c.get(), "BEGIN", &err) ||
              !exec_nothrow(c.get(),
                            "SELECT val FROM it_crosstalk WHERE client = " + std::to_string(i) +
                                " AND seq = " + std::to_string(s) + " FOR UPDATE",
                            &err, &v2) ||
              !exec_nothrow(c.get(), "COMMIT", &err)) {
            errs.add("client " + tag + ": " + err);
            return;
          }
          if (v2 != tag) {
            ++mismatches;
            errs.add("client " + tag + " re-read '" + v2 + "'");
          }
        }
        // SET-free read outside a transaction: the literal must come back to this client.
        if (!exec_nothrow(c.get(), "SELECT '" + tag + "'::text", &err, &v2)) {
          errs.add("client " + tag + ": " + err);
          return;
        }
        if (v2 != tag) {
          ++mismatches;
          errs.add("client " + tag + " echo got '" + v2 + "'");
        }
        if (PQtransactionStatus(c.get()) != PQTRANS_IDLE) {
          errs.add("client " + tag + " not idle after COMMIT");
          return;
        }
      }
      ++completed;
    });
  }
  for (auto& t : clients) t.join();
  CHECK_MESSAGE(errs.count.load() == 0, errs.text());
  CHECK(mismatches.load() == 0);
  CHECK(completed.load() == kClients);
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "SELECT count(*) FROM it_crosstalk") == std::to_string(kClients * kTx));
  CHECK(scalar(c.get(), "SELECT count(*) FROM it_crosstalk WHERE val <> client || '-' || seq") ==
        "0");
  exec_ok(c.get(), "DROP TABLE it_crosstalk");
}

// Sets PGTZ/PGDATESTYLE for the next connect (libpq sends them as startup parameters).
Conn connect_with_env(const std::string& conninfo, const char* tz, const char* datestyle) {
  setenv("PGTZ", tz, 1);
  setenv("PGDATESTYLE", datestyle, 1);
  Conn c = connect(conninfo);
  unsetenv("PGTZ");
  unsetenv("PGDATESTYLE");
  return c;
}

struct Expect {
  std::string app, tz, datestyle;
};

void check_params(PGconn* c, const Expect& e, const char* who) {
  INFO("client " << who);
  CHECK(scalar(c, "SHOW TimeZone") == e.tz);
  CHECK(scalar(c, "SHOW DateStyle") == e.datestyle);
  CHECK(scalar(c, "SELECT current_setting('application_name')") == e.app);
  const char* ps_tz = PQparameterStatus(c, "TimeZone");
  const char* ps_ds = PQparameterStatus(c, "DateStyle");
  const char* ps_app = PQparameterStatus(c, "application_name");
  CHECK(std::string(ps_tz ? ps_tz : "<none>") == e.tz);
  CHECK(std::string(ps_ds ? ps_ds : "<none>") == e.datestyle);
  CHECK(std::string(ps_app ? ps_app : "<none>") == e.app);
}

TEST_CASE("session parameters stay per client with one shared server (transaction mode)") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn a = connect_with_env(p.conninfo("md5user", "md5pass", "testdb", "application_name=client_a"),
                            "UTC", "ISO, MDY");
  Conn b = connect_with_env(p.conninfo("md5user", "md5pass", "testdb", "application_name=client_b"),
                            "Asia/Tokyo", "SQL, DMY");
  Expect ea{"client_a", "UTC", "ISO, MDY"};
  Expect eb{"client_b", "Asia/Tokyo", "SQL, DMY"};
  if (!p.direct()) {
    // One server for both: the same backend pid is visible to both clients.
    CHECK(scalar(a.get(), "select pg_backend_pid()") == scalar(b.get(), "select pg_backend_pid()"));
  }
  for (int round = 0; round < 5; ++round) {
    check_params(a.get(), ea, "A");
    check_params(b.get(), eb, "B");
  }
  // Dates render in each client's own style.
  CHECK(scalar(a.get(), "select date '2024-02-03'") == "2024-02-03");
  CHECK(scalar(b.get(), "select date '2024-02-03'") == "03/02/2024");
  // A SET outside a transaction sticks to the client that made it.
  exec_ok(a.get(), "SET TimeZone = 'Europe/Paris'");
  exec_ok(b.get(), "SET application_name = 'client_b2'");
  ea.tz = "Europe/Paris";
  eb.app = "client_b2";
  for (int round = 0; round < 3; ++round) {
    check_params(b.get(), eb, "B");
    check_params(a.get(), ea, "A");
  }
  // A SET LOCAL inside a transaction ends with it.
  exec_ok(b.get(), "BEGIN");
  exec_ok(b.get(), "SET LOCAL TimeZone = 'America/New_York'");
  CHECK(scalar(b.get(), "SHOW TimeZone") == "America/New_York");
  exec_ok(b.get(), "COMMIT");
  check_params(b.get(), eb, "B");
  check_params(a.get(), ea, "A");
  // A client connecting later with no settings sees the server defaults, not A's or B's.
  Conn d = connect(p.conninfo());
  CHECK(scalar(d.get(), "select current_setting('application_name')") == "");
  CHECK(scalar(d.get(), "SHOW DateStyle") == "ISO, MDY");
  CHECK(scalar(d.get(), "SHOW TimeZone") != "Asia/Tokyo");
  CHECK(scalar(d.get(), "SHOW TimeZone") != "Europe/Paris");
}

TEST_CASE("client killed mid-transaction: work rolled back, server reusable") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn other = connect(p.conninfo());
  exec_ok(other.get(), "DROP TABLE IF EXISTS it_killed");
  exec_ok(other.get(), "CREATE TABLE it_killed (marker text)");

  SUBCASE("child process SIGKILLed inside BEGIN") {
    int pipefd[2];
    REQUIRE(pipe(pipefd) == 0);
    std::string ci = p.conninfo();
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      close(pipefd[0]);
      PGconn* c = PQconnectdb(ci.c_str());
      char ok = 'n';
      if (PQstatus(c) == CONNECTION_OK) {
        PGresult* r1 = PQexec(c, "BEGIN");
        PGresult* r2 = PQexec(c, "INSERT INTO it_killed VALUES ('killed-child')");
        if (PQresultStatus(r1) == PGRES_COMMAND_OK && PQresultStatus(r2) == PGRES_COMMAND_OK)
          ok = 'y';
      }
      if (write(pipefd[1], &ok, 1) != 1) _exit(1);
      sleep(30);  // killed before this ends
      _exit(0);
    }
    close(pipefd[1]);
    char ok = 0;
    REQUIRE(read(pipefd[0], &ok, 1) == 1);
    close(pipefd[0]);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    REQUIRE(ok == 'y');
  }
  SUBCASE("socket closed without Terminate") {
    Conn c = connect(p.conninfo());
    exec_ok(c.get(), "BEGIN");
    exec_ok(c.get(), "INSERT INTO it_killed VALUES ('closed-socket')");
    shutdown(PQsocket(c.get()), SHUT_RDWR);
    // PQfinish's Terminate now goes nowhere.
  }
  // With pool size 1 the next query needs the dead client's server back.
  auto t0 = Clock::now();
  CHECK(scalar(other.get(), "select count(*) from it_killed") == "0");
  CHECK(seconds_since(t0) < 5);
  // No backend may stay idle in transaction for this user.
  int idle_tx = -1;
  for (int i = 0; i < 50; ++i) {
    idle_tx = count_backends("testdb", "md5user", "idle in transaction");
    if (idle_tx == 0) break;
    sleep_ms(100);
  }
  CHECK(idle_tx == 0);
  CHECK(scalar(other.get(), "select 1") == "1");
  exec_ok(other.get(), "DROP TABLE it_killed");
}

TEST_CASE("session mode: server_reset_query cleans a server before the next client") {
  Options o;
  o.pool_mode = "session";
  o.default_pool_size = 1;
  Pooler p(o);
  std::string pid_a;
  {
    Conn a = connect(p.conninfo());
    exec_ok(a.get(), "CREATE TEMP TABLE it_tmp_reset (x int)");
    exec_ok(a.get(), "INSERT INTO it_tmp_reset VALUES (1)");
    exec_ok(a.get(), "PREPARE it_stmt AS SELECT 1");
    exec_ok(a.get(), "SET work_mem = '7MB'");
    pid_a = scalar(a.get(), "select pg_backend_pid()");
  }
  Conn b;
  for (int i = 0; i < 50 && !b; ++i) {  // the server returns to the pool asynchronously
    std::string err;
    b = try_connect(p.conninfo(), &err);
    if (!b) sleep_ms(100);
  }
  REQUIRE(b);
  std::string pid_b = scalar(b.get(), "select pg_backend_pid()");
  if (!p.direct()) WARN_MESSAGE(pid_a == pid_b, "session pool did not reuse the server");
  CHECK(exec_sqlstate(b.get(), "SELECT * FROM it_tmp_reset") == "42P01");
  CHECK(exec_sqlstate(b.get(), "EXECUTE it_stmt") == "26000");
  CHECK(scalar(b.get(), "SHOW work_mem") == "4MB");
}

TEST_CASE("statement mode: single statements work, transaction blocks are refused") {
  if (skip_in_direct_mode("statement pooling is a pooler feature")) return;
  Options o;
  o.pool_mode = "statement";
  Pooler p(o);
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 1") == "1");
  CHECK(scalar(c.get(), "select 2") == "2");
  Result r(PQexec(c.get(), "BEGIN"));
  bool refused =
      PQresultStatus(r.get()) == PGRES_FATAL_ERROR || PQstatus(c.get()) == CONNECTION_BAD;
  if (!refused) {
    // The pooler may also let BEGIN through but fail the transaction's next statement.
    Result r2(PQexec(c.get(), "select 1"));
    refused = PQresultStatus(r2.get()) == PGRES_FATAL_ERROR || PQstatus(c.get()) == CONNECTION_BAD;
  }
  CHECK_MESSAGE(refused, "BEGIN accepted in statement pooling mode");
  // The client is told why, as PgBouncer does, not that the server crashed.
  CHECK_MESSAGE(std::string(PQerrorMessage(c.get()))
                        .find("transaction blocks not allowed in statement pooling mode") !=
                    std::string::npos,
                std::string(PQerrorMessage(c.get())));
  // Other clients are unaffected.
  Conn d = connect(p.conninfo());
  CHECK(scalar(d.get(), "select 3") == "3");
}

}  // namespace
}  // namespace it
