// Session settings in transaction pooling: what a client SETs follows it from server to
// server, and never reaches another client (issue 14; src/session_state.*).
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// A TCP proxy in front of PostgreSQL that counts the simple Query messages pgsluice sends:
// each is one round trip (pgsluice's swallowed SET is one such message).
class QueryCounter {
 public:
  explicit QueryCounter(int pg_port) : pg_port_(pg_port) {
    lfd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    REQUIRE(::listen(lfd_, 16) == 0);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~QueryCounter() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : threads_) t.join();
    ::close(lfd_);
  }
  int port() const { return port_; }
  std::atomic<int> queries{0};

 private:
  int pg_port_, port_ = 0, lfd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> threads_;

  void accept_loop() {
    while (!stop_) {
      pollfd p{lfd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd >= 0) threads_.emplace_back([this, fd] { serve(fd); });
    }
  }
  // Frames what pgsluice sends: untyped packets (SSLRequest, startup) first, then typed.
  struct Framer {
    std::string buf;
    bool untyped = true;
    uint32_t be32(size_t at) const {  // buf is not aligned for a uint32_t load
      uint32_t v;
      std::memcpy(&v, buf.data() + at, sizeof v);
      return ntohl(v);
    }
    int count(const char* p, size_t n) {
      buf.append(p, n);
      int q = 0;
      size_t at = 0;
      for (;;) {
        if (untyped) {
          if (buf.size() - at < 8) break;
          uint32_t len = be32(at), code = be32(at + 4);
          if (buf.size() - at < len) break;
          at += len;
          if (code != 80877103 && code != 80877104) untyped = false;
        } else {
          if (buf.size() - at < 5) break;
          uint32_t len = be32(at + 1);
          if (buf.size() - at < len + 1) break;
          q += buf[at] == 'Q';
          at += len + 1;
        }
      }
      buf.erase(0, at);
      return q;
    }
  };
  void serve(int fd) {
    int up = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(pg_port_));
    Framer f;
    if (connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      char buf[16384];
      while (!stop_) {
        pollfd p[2] = {{fd, POLLIN, 0}, {up, POLLIN, 0}};
        if (poll(p, 2, 50) <= 0) continue;
        bool done = false;
        for (int i = 0; i < 2 && !done; i++) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          ssize_t r = recv(p[i].fd, buf, sizeof buf, 0);
          if (r > 0 && i == 0) queries += f.count(buf, static_cast<size_t>(r));
          if (r <= 0 || send(p[1 - i].fd, buf, static_cast<size_t>(r), MSG_NOSIGNAL) != r)
            done = true;
        }
        if (done) break;
      }
    }
    ::close(up);
    ::close(fd);
  }
};

// Tenant schemas tenant_0..n-1, each with a table t holding one row: its own name.
void make_tenants(int n) {
  Conn su = connect(superuser_conninfo());
  std::string sql;
  for (int i = 0; i < n; i++) {
    std::string s = "tenant_" + std::to_string(i);
    sql += "DROP SCHEMA IF EXISTS " + s + " CASCADE; CREATE SCHEMA " + s +
           " AUTHORIZATION md5user; CREATE TABLE " + s + ".t(name text); INSERT INTO " + s +
           ".t VALUES ('" + s + "'); ALTER TABLE " + s + ".t OWNER TO md5user;";
  }
  exec_ok(su.get(), sql);
}

Options one_server(int workers = 1) {
  Options o;
  o.workers = workers;
  o.default_pool_size = 1;
  return o;
}

// Runs sql with the extended protocol (PQexecParams, no parameters); "" or the SQLSTATE.
std::string exec_ext(PGconn* c, const std::string& sql, std::string* value = nullptr) {
  Result r(PQexecParams(c, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
  auto st = PQresultStatus(r.get());
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
    if (value != nullptr && PQntuples(r.get()) > 0) *value = PQgetvalue(r.get(), 0, 0);
    return "";
  }
  const char* s = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  return s != nullptr ? s : "?";
}

std::string show(PGconn* c, const std::string& name) {
  return scalar(c, "SHOW " + name);
}

}  // namespace

TEST_SUITE_BEGIN("session state");

TEST_CASE("session state: the issue's case, pool of one: B never sees A's settings") {
  if (skip_in_direct_mode("pooling")) return;
  Pooler p(one_server());
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  std::string path_default = show(b.get(), "search_path");
  std::string timeout_default = show(b.get(), "statement_timeout");
  exec_ok(a.get(), "SET search_path = pg_catalog, public");
  exec_ok(a.get(), "SET statement_timeout = '1234ms'");
  for (int i = 0; i < 3; i++) {
    CHECK(show(b.get(), "search_path") == path_default);
    CHECK(show(b.get(), "statement_timeout") == timeout_default);
    CHECK(show(a.get(), "search_path") == "pg_catalog, public");
    CHECK(show(a.get(), "statement_timeout") == "1234ms");
    exec_ok(b.get(), "BEGIN");
    CHECK(show(b.get(), "search_path") == path_default);
    exec_ok(b.get(), "COMMIT");
  }
}

TEST_CASE("session state: a server goes back to connect_query's settings, not the defaults") {
  if (skip_in_direct_mode("pooling")) return;
  Options o = one_server();
  o.databases = "testdb = host=127.0.0.1 port=" + std::to_string(cluster().port) +
                " dbname=testdb connect_query='SET search_path = cq_base, public; "
                "SET statement_timeout = 777'\n";
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  const std::string base_path = "cq_base, public", base_timeout = "777ms";
  CHECK(show(b.get(), "search_path") == base_path);
  CHECK(show(b.get(), "statement_timeout") == base_timeout);
  auto b_sees_base = [&](const char* after) {
    for (int i = 0; i < 2; i++) {
      std::string sp = show(b.get(), "search_path"), st = show(b.get(), "statement_timeout");
      CHECK_MESSAGE(sp == base_path, after << ": b sees search_path " << sp);
      CHECK_MESSAGE(st == base_timeout, after << ": b sees statement_timeout " << st);
    }
  };
  exec_ok(a.get(), "SET search_path = a_path");
  CHECK(show(a.get(), "search_path") == "a_path");
  b_sees_base("a's SET");
  CHECK(show(a.get(), "search_path") == "a_path");
  CHECK(show(a.get(), "statement_timeout") == base_timeout);
  exec_ok(a.get(), "SET statement_timeout = 5000");
  b_sees_base("a's second SET");
  CHECK(show(a.get(), "statement_timeout") == "5s");
  // The client's RESET takes it to PostgreSQL's default on that server; once it has left,
  // the server is the pool's again (connect_query's values).
  exec_ok(a.get(), "RESET statement_timeout");
  b_sees_base("a's RESET");
  exec_ok(a.get(), "RESET ALL");
  b_sees_base("a's RESET ALL");
  exec_ok(a.get(), "SET search_path = a_path; SET ROLE md5user");
  b_sees_base("a's SET ROLE");
  exec_ok(a.get(), "DISCARD ALL");
  b_sees_base("a's DISCARD ALL");
  exec_ok(a.get(), "DO $$BEGIN PERFORM set_config('search_path', 'do_path', false); END$$");
  b_sees_base("a's DO block");
  CHECK(show(a.get(), "search_path") == "do_path");
}

TEST_CASE("session state: each statement kind follows PostgreSQL's rules") {
  if (skip_in_direct_mode("pooling")) return;
  {
    Conn su = connect(superuser_conninfo());
    exec_ok(su.get(),
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sess_role') THEN "
            "CREATE ROLE sess_role; END IF; END$$; GRANT sess_role TO md5user");
  }
  Pooler p(one_server(2));
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  const std::string def = show(b.get(), "search_path");
  auto other_is_clean = [&] {
    CHECK(show(b.get(), "search_path") == def);
    CHECK(show(b.get(), "work_mem") == "4MB");
    CHECK(scalar(b.get(), "SELECT current_user") == "md5user");
    CHECK(scalar(b.get(), "SELECT coalesce(current_setting('myapp.tenant', true), '')") == "");
  };

  SUBCASE("SET, SET SESSION, SET TO DEFAULT, RESET, RESET ALL") {
    exec_ok(a.get(), "SET search_path = a1");
    exec_ok(a.get(), "SET SESSION work_mem TO '7MB'");
    exec_ok(a.get(), "SET myapp.tenant = 'x'");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "a1");
    CHECK(show(a.get(), "work_mem") == "7MB");
    CHECK(scalar(a.get(), "SELECT current_setting('myapp.tenant')") == "x");
    exec_ok(a.get(), "SET work_mem TO DEFAULT");
    exec_ok(a.get(), "RESET search_path");
    other_is_clean();
    CHECK(show(a.get(), "work_mem") == "4MB");
    CHECK(show(a.get(), "search_path") == def);
    CHECK(scalar(a.get(), "SELECT current_setting('myapp.tenant')") == "x");
    exec_ok(a.get(), "SET search_path = a2; SET work_mem = '5MB'");
    exec_ok(a.get(), "RESET ALL");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == def);
    CHECK(show(a.get(), "work_mem") == "4MB");
  }
  SUBCASE("a SET in a transaction that rolls back, or fails, is undone; COMMIT keeps it") {
    exec_ok(a.get(), "SET search_path = keep");
    exec_ok(a.get(), "BEGIN");
    exec_ok(a.get(), "SET search_path = gone");
    exec_ok(a.get(), "ROLLBACK");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "keep");
    exec_ok(a.get(), "BEGIN");
    exec_ok(a.get(), "SET search_path = gone");
    CHECK(exec_sqlstate(a.get(), "SELECT 1/0") == "22012");
    exec_ok(a.get(), "COMMIT");  // of a failed transaction: a rollback
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "keep");
    // An error in a multi-statement query undoes all of it (implicit transaction).
    CHECK(exec_sqlstate(a.get(), "SET search_path = gone; SELECT 1/0") == "22012");
    CHECK(show(a.get(), "search_path") == "keep");
    // ... but not what a COMMIT inside it made permanent.
    CHECK(exec_sqlstate(a.get(),
                        "SET work_mem = '6MB'; COMMIT; SET search_path = gone; "
                        "SELECT 1/0") == "22012");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "keep");
    CHECK(show(a.get(), "work_mem") == "6MB");
    exec_ok(a.get(), "BEGIN; SET search_path = committed; COMMIT");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "committed");
  }
  SUBCASE("savepoints") {
    exec_ok(a.get(), "BEGIN");
    exec_ok(a.get(), "SET search_path = s1");
    exec_ok(a.get(), "SAVEPOINT sp");
    exec_ok(a.get(), "SET search_path = s2");
    CHECK(exec_sqlstate(a.get(), "SELECT 1/0") == "22012");
    exec_ok(a.get(), "ROLLBACK TO SAVEPOINT sp");
    exec_ok(a.get(), "SAVEPOINT sp2");
    exec_ok(a.get(), "SET work_mem = '9MB'");
    exec_ok(a.get(), "RELEASE sp2");
    exec_ok(a.get(), "COMMIT");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "s1");
    CHECK(show(a.get(), "work_mem") == "9MB");
  }
  SUBCASE("SET LOCAL ends with its transaction") {
    exec_ok(a.get(), "SET search_path = sess");
    exec_ok(a.get(), "BEGIN");
    exec_ok(a.get(), "SET LOCAL search_path = loc");
    CHECK(show(a.get(), "search_path") == "loc");
    exec_ok(a.get(), "COMMIT");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "sess");
  }
  SUBCASE("SET ROLE and RESET ROLE") {
    exec_ok(a.get(), "SET ROLE sess_role");
    other_is_clean();
    CHECK(scalar(a.get(), "SELECT current_user") == "sess_role");
    exec_ok(a.get(), "RESET ROLE");
    CHECK(scalar(a.get(), "SELECT current_user") == "md5user");
    exec_ok(a.get(), "SET ROLE sess_role");
    exec_ok(a.get(), "SET ROLE NONE");
    other_is_clean();
    CHECK(scalar(a.get(), "SELECT current_user") == "md5user");
    exec_ok(a.get(), "SET ROLE sess_role; SET search_path = r1");
    exec_ok(a.get(), "RESET ALL");  // keeps the role, as in PostgreSQL
    other_is_clean();
    CHECK(scalar(a.get(), "SELECT current_user") == "sess_role");
    CHECK(show(a.get(), "search_path") == def);
  }
  SUBCASE("SET SESSION CHARACTERISTICS with one mode") {
    exec_ok(a.get(), "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    other_is_clean();
    CHECK(show(b.get(), "default_transaction_isolation") == "read committed");
    CHECK(show(a.get(), "default_transaction_isolation") == "serializable");
    CHECK(show(a.get(), "transaction_isolation") == "serializable");
  }
  SUBCASE("DISCARD ALL, SET SCHEMA") {
    exec_ok(a.get(), "SET SCHEMA 'sch'");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "sch");
    exec_ok(a.get(), "SET ROLE sess_role");
    exec_ok(a.get(), "DISCARD ALL");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == def);
    CHECK(scalar(a.get(), "SELECT current_user") == "md5user");
  }
  SUBCASE("extended protocol: unnamed and named statements") {
    CHECK(exec_ext(a.get(), "SET search_path = ext1") == "");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "ext1");
    Result r(PQprepare(a.get(), "setter", "SET work_mem = '3MB'", 0, nullptr));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
    other_is_clean();
    CHECK(show(a.get(), "work_mem") == "4MB");  // prepared, not run
    Result e(PQexecPrepared(a.get(), "setter", 0, nullptr, nullptr, nullptr, 0));
    REQUIRE(PQresultStatus(e.get()) == PGRES_COMMAND_OK);
    other_is_clean();
    CHECK(show(a.get(), "work_mem") == "3MB");
    CHECK(exec_ext(a.get(), "BEGIN") == "");
    CHECK(exec_ext(a.get(), "SET search_path = ext2") == "");
    CHECK(exec_ext(a.get(), "ROLLBACK") == "");
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "ext1");
  }
  SUBCASE("pipelines: an error in a segment undoes its SET; an earlier segment stays") {
    REQUIRE(PQenterPipelineMode(a.get()) == 1);
    auto send = [&](const char* sql) {
      REQUIRE(PQsendQueryParams(a.get(), sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
    };
    send("SET search_path = seg1");
    REQUIRE(PQpipelineSync(a.get()) == 1);
    send("SET work_mem = '2MB'");
    send("SELECT 1/0");
    send("SET search_path = never");
    REQUIRE(PQpipelineSync(a.get()) == 1);
    // Read everything up to the second sync's result.
    int syncs = 0;
    for (int guard = 0; syncs < 2 && guard < 100; guard++) {
      Result r(PQgetResult(a.get()));
      if (r == nullptr) continue;
      if (PQresultStatus(r.get()) == PGRES_PIPELINE_SYNC) syncs++;
    }
    REQUIRE(syncs == 2);
    REQUIRE(PQexitPipelineMode(a.get()) == 1);
    other_is_clean();
    CHECK(show(a.get(), "search_path") == "seg1");
    CHECK(show(a.get(), "work_mem") == "4MB");
  }
  SUBCASE("what pgsluice cannot follow exactly resets the server before another client") {
    // Two modes in one statement: not followed (one statement, one setting).
    exec_ok(a.get(), "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY DEFERRABLE");
    exec_ok(a.get(), "SET search_path = kept");
    other_is_clean();
    CHECK(show(b.get(), "default_transaction_read_only") == "off");
    CHECK(show(b.get(), "default_transaction_deferrable") == "off");
    CHECK(show(a.get(), "search_path") == "kept");  // what it could follow, it keeps
    other_is_clean();
  }
  SUBCASE("settings follow the client to a new server") {
    exec_ok(a.get(), "SET search_path = follows; SET statement_timeout = '4321ms'");
    // The server goes away; the client's next transaction lands on a new one.
    Conn su = connect(superuser_conninfo());
    exec_ok(su.get(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'md5user'");
    CHECK(eventually([&] { return count_backends("testdb", "md5user") == 0; }));
    std::string err;
    exec_nothrow(a.get(), "SELECT 1", &err);  // may meet the dead server once
    CHECK(show(a.get(), "search_path") == "follows");
    CHECK(show(a.get(), "statement_timeout") == "4321ms");
    other_is_clean();
  }
}

TEST_CASE("session state: SHOW CLIENT_STATE lists names, values only when harmless") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p(one_server());
  Conn a = connect(p.conninfo());
  exec_ok(a.get(), "SET search_path = shown; SET myapp.api_key = 'hunter2'");
  exec_ok(a.get(), "BEGIN; SET statement_timeout = '1s'");  // not committed yet
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
  std::string id;
  for (int i = 0; i < PQntuples(cl.get()); i++)
    if (std::string(PQgetvalue(cl.get(), i, PQfnumber(cl.get(), "database"))) == "testdb")
      id = PQgetvalue(cl.get(), i, PQfnumber(cl.get(), "id"));
  REQUIRE(!id.empty());
  Result r = exec_ok(admin.get(), "SHOW CLIENT_STATE " + id);
  std::map<std::string, std::string> rows;
  for (int i = 0; i < PQntuples(r.get()); i++)
    rows[PQgetvalue(r.get(), i, 0)] = PQgetvalue(r.get(), i, 1);
  CHECK(rows.size() == 2);
  CHECK(rows["search_path"] == "shown");
  CHECK(rows["myapp.api_key"] == "(hidden)");
  exec_ok(a.get(), "COMMIT");
  Result r2 = exec_ok(admin.get(), "SHOW CLIENT_STATE " + id);
  CHECK(PQntuples(r2.get()) == 3);
  CHECK(exec_sqlstate(admin.get(), "SHOW CLIENT_STATE 999999") == "08P01");
  CHECK(exec_sqlstate(admin.get(), "SHOW CLIENT_STATE x") == "08P01");
  CHECK(p.log().find("hunter2") == std::string::npos);
}

TEST_CASE("session state: 64 tenants over a small pool never read another tenant's row") {
  if (skip_in_direct_mode("pooling")) return;
  constexpr int kClients = 64;
  constexpr int kTx = 300;
  make_tenants(kClients);
  Options o;
  o.workers = 2;
  o.default_pool_size = 4;
  Pooler p(o);
  std::atomic<int> wrong{0}, failed{0}, reads{0};
  std::mutex mu;
  std::string first_error;
  auto note = [&](const std::string& e) {
    std::lock_guard<std::mutex> lk(mu);
    if (first_error.empty()) first_error = e;
  };
  std::vector<std::thread> ts;
  for (int i = 0; i < kClients; i++) {
    ts.emplace_back([&, i] {
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      if (!c) {
        failed++;
        note(err);
        return;
      }
      const std::string me = "tenant_" + std::to_string(i);
      const std::string set = "SET search_path = " + me;
      const std::string timeout = std::to_string(1001 + i) + "ms";
      const int style = i % 5;
      if (!exec_nothrow(c.get(), "SET statement_timeout = '" + timeout + "'", &err)) {
        failed++;
        note(err);
        return;
      }
      if (style == 0 && !exec_nothrow(c.get(), set, &err)) failed++;  // once
      for (int k = 0; k < kTx; k++) {
        std::string got;
        bool ok = true;
        switch (style) {
          case 0:  // set once, above
            ok = exec_nothrow(c.get(), "SELECT name FROM t", &err, &got);
            break;
          case 1:  // every time, its own query
            ok = exec_nothrow(c.get(), set, &err) &&
                 exec_nothrow(c.get(), "SELECT name FROM t", &err, &got);
            break;
          case 2: {  // in a multi-statement query: the last result is the SELECT's
            Result r(PQexec(c.get(), (set + "; SELECT name FROM t").c_str()));
            ok = PQresultStatus(r.get()) == PGRES_TUPLES_OK;
            if (ok)
              got = PQgetvalue(r.get(), 0, 0);
            else
              err = PQerrorMessage(c.get());
            break;
          }
          case 3:  // extended protocol, sometimes
            ok = (k % 7 != 0 || exec_ext(c.get(), set).empty()) &&
                 (k > 0 || exec_ext(c.get(), set).empty()) &&
                 exec_ext(c.get(), "SELECT name FROM t", &got).empty();
            if (!ok) err = PQerrorMessage(c.get());
            break;
          default:  // inside a transaction block
            ok = exec_nothrow(c.get(), "BEGIN", &err) &&
                 (k % 3 != 0 || exec_nothrow(c.get(), set, &err)) &&
                 (k > 0 || exec_nothrow(c.get(), set, &err)) &&
                 exec_nothrow(c.get(), "SELECT name FROM t", &err, &got) &&
                 exec_nothrow(c.get(), "COMMIT", &err);
            break;
        }
        if (!ok) {
          failed++;
          note(me + ": " + err);
          return;
        }
        reads++;
        if (got != me) {
          wrong++;
          note(me + " read " + got);
        }
        if (k % 50 == 49) {
          std::string t;
          if (!exec_nothrow(c.get(), "SHOW statement_timeout", &err, &t) || t != timeout) {
            wrong++;
            note(me + " statement_timeout " + t);
          }
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  INFO(first_error);
  CHECK(failed.load() == 0);
  CHECK(wrong.load() == 0);
  CHECK(reads.load() == kClients * kTx);
  MESSAGE("session state: " << reads.load() << " tenant reads, " << wrong.load() << " wrong");
}

TEST_CASE("session state: pgbench -M prepared, a SET statement per tenant, checked reads") {
  if (skip_in_direct_mode("pooling")) return;
  constexpr int kTenants = 8;
  make_tenants(kTenants);
  Options o;
  o.workers = 2;
  o.default_pool_size = 2;
  Pooler p(o);
  // Each script SETs its tenant (a named prepared statement under -M prepared), then reads
  // in its own transaction, on whichever server comes: a wrong row fails the transaction.
  std::string dir = make_temp_dir("sess-bench");
  std::string args = "-M prepared -c 12 -j 2 -t 100";
  for (int i = 0; i < kTenants; i++) {
    std::string me = "tenant_" + std::to_string(i);
    std::string f = dir + "/" + me + ".sql";
    write_file(f, "SET search_path = " + me + ";\nSELECT name = '" + me +
                      "' AS ok FROM t \\gset\n\\if :ok\n\\else\nSELECT 1/0;\n\\endif\n");
    args += " -f " + f;
  }
  PgbenchRun r = run_pgbench(p, args, 120);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.processed == 1200);
  CHECK(r.output.find("aborted") == std::string::npos);
}

TEST_CASE("session state: round trips (a client that never SETs causes none)") {
  if (skip_in_direct_mode("pooling")) return;
  QueryCounter qc(cluster().port);
  Options o = one_server();
  o.pg_port = qc.port();
  Pooler p(o);
  Conn n = connect(p.conninfo());
  Conn s = connect(p.conninfo());
  exec_ok(n.get(), "SELECT 1");  // the server logs in
  int before = qc.queries.load();
  for (int i = 0; i < 50; i++) exec_ok(n.get(), "SELECT 1");
  int plain = qc.queries.load() - before;
  CHECK(plain == 50);
  // One that SETs, alone on the server: nothing more than its own queries.
  before = qc.queries.load();
  exec_ok(s.get(), "SET search_path = rt; SET statement_timeout = '2s'");
  for (int i = 0; i < 50; i++) exec_ok(s.get(), "SELECT 1");
  int alone = qc.queries.load() - before;
  CHECK(alone == 51);
  // Taking turns on the one server: each change of client costs one round trip at most.
  before = qc.queries.load();
  constexpr int kTurns = 20;
  for (int i = 0; i < kTurns; i++) {
    CHECK(show(n.get(), "search_path") != "rt");
    CHECK(show(s.get(), "search_path") == "rt");
  }
  int turns = qc.queries.load() - before;
  CHECK(turns == 2 * kTurns + 2 * kTurns);  // one per change of client, the first included
  // Two clients that never SET, taking turns after it: one RESET, then nothing more.
  Conn m = connect(p.conninfo());
  before = qc.queries.load();
  for (int i = 0; i < kTurns; i++) {
    exec_ok(n.get(), "SELECT 1");
    exec_ok(m.get(), "SELECT 1");
  }
  int never = qc.queries.load() - before;
  CHECK(never == 2 * kTurns + 1);
  MESSAGE("round trips: never-SET client alone "
          << plain << " for 50 queries; SET client alone " << alone << " for 51; " << 2 * kTurns
          << " alternating queries took " << turns << "; two never-SET clients " << never);
}

TEST_SUITE_END();

}  // namespace it
