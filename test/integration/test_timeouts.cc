// The janitor's timeouts and the server health check against the harness's PostgreSQL:
// query_timeout, idle_transaction_timeout, transaction_timeout, client_idle_timeout (and
// their [users] overrides), query_wait_notify, server_check_query/server_check_delay,
// suspend_timeout. Short values (1 s), PgBouncer's error texts.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// Runs sql and returns its SQLSTATE ("" when it succeeded), with libpq's error text.
std::string run(PGconn* c, const std::string& sql, std::string* msg) {
  std::string st = exec_sqlstate(c, sql);
  *msg = PQerrorMessage(c);
  return st;
}

std::string metric(int mport, const std::string& name) {
  CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
  size_t at = r.output.find("\n" + name + " ");
  if (at == std::string::npos) return "";
  size_t b = at + name.size() + 2, e = r.output.find('\n', b);
  return r.output.substr(b, e - b);
}

Options one_server(const std::string& extra) {
  Options o;
  o.default_pool_size = 1;
  o.workers = 1;
  o.extra_pgbouncer = extra;
  return o;
}

// A TCP proxy in front of PostgreSQL that passes every connection through, except cancel
// requests: those it takes and holds open without an answer (a PostgreSQL that does not
// take cancels), counting them and noticing when the other side gives up.
class CancelSink {
 public:
  explicit CancelSink(int pg_port) : pg_port_(pg_port) {
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
  ~CancelSink() {
    stop_ = true;
    acceptor_.join();  // first: it is the only writer of threads_
    for (auto& t : threads_) t.join();
    ::close(lfd_);
  }
  int port() const { return port_; }
  std::atomic<int> held{0};     // cancel requests taken
  std::atomic<int> dropped{0};  // of those, closed by the sender

 private:
  int pg_port_, port_ = 0, lfd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> threads_;  // one per connection (written by acceptor_ only)

  bool wait_in(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, ms) > 0;
  }
  void accept_loop() {
    while (!stop_) {
      if (!wait_in(lfd_, 50)) continue;
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) continue;
      threads_.emplace_back([this, fd] { serve(fd); });
    }
  }
  void serve(int fd) {
    unsigned char head[8];
    ssize_t n = 0;
    while (!stop_ && n < 8) {
      if (!wait_in(fd, 50)) continue;
      n = recv(fd, head, 8, MSG_PEEK);
      if (n <= 0) break;
    }
    if (n == 8 && head[3] == 16 && head[4] == 0x04 && head[5] == 0xd2 && head[6] == 0x16 &&
        head[7] == 0x2e) {  // length 16, code 80877102: a CancelRequest
      held++;
      char buf[64];
      while (!stop_) {
        if (!wait_in(fd, 50)) continue;
        if (recv(fd, buf, sizeof buf, 0) <= 0) {
          dropped++;
          break;
        }
      }
      ::close(fd);
      return;
    }
    int up = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(pg_port_));
    if (connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      char buf[16384];
      while (!stop_) {
        pollfd p[2] = {{fd, POLLIN, 0}, {up, POLLIN, 0}};
        if (poll(p, 2, 50) <= 0) continue;
        bool done = false;
        for (int i = 0; i < 2 && !done; i++) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          ssize_t r = recv(p[i].fd, buf, sizeof buf, 0);
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

TEST_SUITE_BEGIN("timeouts");

TEST_CASE("query_timeout ends a running query with PgBouncer's error; its server is not reused") {
  if (skip_in_direct_mode("query_timeout is a pooler setting")) return;
  Pooler p(one_server("query_timeout = 1\n"));
  Conn c1 = connect(p.conninfo());
  std::string pid1 = scalar(c1.get(), "SELECT pg_backend_pid()");
  auto t0 = Clock::now();
  std::string msg;
  CHECK(run(c1.get(), "SELECT pg_sleep(10)", &msg) == "08P01");
  double took = seconds_since(t0);
  CHECK(msg.find("query timeout") != std::string::npos);
  CHECK(took > 0.9);
  CHECK(took < 2.5);
  // The only server slot is free again, on a new server: the busy one was closed.
  Conn c2 = connect(p.conninfo());
  std::string pid2 = scalar(c2.get(), "SELECT pg_backend_pid()");
  CHECK(pid2 != pid1);
  CHECK(scalar(c2.get(), "SELECT 1") == "1");
  // A query under the limit is not touched.
  CHECK(exec_sqlstate(c2.get(), "SELECT pg_sleep(0.3)") == "");
}

TEST_CASE("query_timeout per user in [users] overrides the global value") {
  if (skip_in_direct_mode("query_timeout is a pooler setting")) return;
  Pooler p(one_server("[users]\nmd5user = query_timeout=1\n"));
  Conn md5 = connect(p.conninfo());
  Conn plain = connect(p.conninfo("plainuser", "plainpass"));
  auto t0 = Clock::now();
  std::string msg;
  CHECK(run(md5.get(), "SELECT pg_sleep(10)", &msg) == "08P01");
  CHECK(msg.find("query timeout") != std::string::npos);
  CHECK(seconds_since(t0) < 2.5);
  // plainuser has no override and the global query_timeout is 0.
  CHECK(exec_sqlstate(plain.get(), "SELECT pg_sleep(1.6)") == "");
}

TEST_CASE("idle_transaction_timeout frees the server a client holds idle in a transaction") {
  if (skip_in_direct_mode("idle_transaction_timeout is a pooler setting")) return;
  Pooler p(one_server("idle_transaction_timeout = 1\n"));
  Conn c1 = connect(p.conninfo());
  Conn c2 = connect(p.conninfo());
  exec_ok(c1.get(), "BEGIN");
  exec_ok(c1.get(), "CREATE TEMP TABLE held(x int)");
  // pool_size 1: c2 waits for c1's server until the timeout frees it.
  std::atomic<bool> ok{false};
  std::string err, val;
  auto t0 = Clock::now();
  double took = 0;
  std::thread t([&] {
    ok = exec_nothrow(c2.get(), "SELECT now() = statement_timestamp()", &err, &val);
    took = seconds_since(t0);
  });
  t.join();
  CHECK_MESSAGE(ok.load(), err);
  CHECK(val == "t");  // not inside c1's transaction
  CHECK(took > 0.9);
  CHECK(took < 3.0);
  std::string msg;
  CHECK(run(c1.get(), "SELECT 1", &msg) != "");
  CHECK(msg.find("idle transaction timeout") != std::string::npos);
  CHECK(PQstatus(c1.get()) == CONNECTION_BAD);
  // The temp table died with c1's server: no server went back dirty.
  CHECK(exec_sqlstate(c2.get(), "SELECT * FROM held") == "42P01");
}

TEST_CASE("idle_transaction_timeout per user; a busy transaction is not idle") {
  if (skip_in_direct_mode("idle_transaction_timeout is a pooler setting")) return;
  Pooler p(one_server("[users]\nmd5user = idle_transaction_timeout=1\n"));
  Conn c1 = connect(p.conninfo());
  exec_ok(c1.get(), "BEGIN");
  // 1.5 s inside the transaction, but never idle for 1 s.
  for (int i = 0; i < 5; i++) exec_ok(c1.get(), "SELECT pg_sleep(0.3)");
  exec_ok(c1.get(), "COMMIT");
  // plainuser has no override: its idle transaction lives on.
  Conn plain = connect(p.conninfo("plainuser", "plainpass"));
  exec_ok(plain.get(), "BEGIN");
  sleep_ms(1600);
  CHECK(exec_sqlstate(plain.get(), "COMMIT") == "");
  exec_ok(c1.get(), "BEGIN");
  sleep_ms(1800);
  std::string msg;
  CHECK(run(c1.get(), "SELECT 1", &msg) != "");
  CHECK(msg.find("idle transaction timeout") != std::string::npos);
}

TEST_CASE("transaction_timeout ends a transaction that lasts too long, busy or not") {
  if (skip_in_direct_mode("transaction_timeout is a pooler setting")) return;
  Pooler p(one_server("transaction_timeout = 1\n"));
  Conn c1 = connect(p.conninfo());
  exec_ok(c1.get(), "BEGIN");
  auto t0 = Clock::now();
  std::string st, msg;
  for (int i = 0; i < 12 && st.empty(); i++) st = run(c1.get(), "SELECT pg_sleep(0.25)", &msg);
  CHECK(st == "08P01");
  CHECK(msg.find("transaction timeout") != std::string::npos);
  CHECK(seconds_since(t0) < 2.5);
  // Short transactions pass.
  Conn c2 = connect(p.conninfo());
  for (int i = 0; i < 4; i++) {
    exec_ok(c2.get(), "BEGIN");
    exec_ok(c2.get(), "SELECT pg_sleep(0.2)");
    exec_ok(c2.get(), "COMMIT");
  }
}

TEST_CASE("client_idle_timeout closes a client idle without a server; the console is exempt") {
  if (skip_in_direct_mode("client_idle_timeout is a pooler setting")) return;
  Pooler p(one_server("client_idle_timeout = 1\n"));
  Conn idle = connect(p.conninfo());
  Conn busy = connect(p.conninfo());
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  exec_ok(idle.get(), "SELECT 1");
  for (int i = 0; i < 6; i++) {  // 1.8 s with a request every 0.3 s
    exec_ok(busy.get(), "SELECT 1");
    sleep_ms(300);
  }
  std::string msg;
  CHECK(run(idle.get(), "SELECT 1", &msg) != "");
  CHECK(msg.find("client_idle_timeout") != std::string::npos);
  CHECK(exec_sqlstate(busy.get(), "SELECT 1") == "");
  CHECK(exec_sqlstate(admin.get(), "SHOW VERSION") == "");
}

TEST_CASE("query_wait_notify sends a NOTICE to a client queued longer than it") {
  if (skip_in_direct_mode("query_wait_notify is a pooler setting")) return;
  Pooler p(one_server("query_wait_notify = 1\n"));
  Conn c1 = connect(p.conninfo());
  Conn c2 = connect(p.conninfo());
  Conn c3 = connect(p.conninfo());
  static std::mutex mu;
  static std::vector<std::string> notices;
  notices.clear();
  PQsetNoticeReceiver(
      c2.get(),
      [](void*, const PGresult* r) {
        std::lock_guard<std::mutex> g(mu);
        notices.push_back(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
      },
      nullptr);
  exec_ok(c1.get(), "BEGIN");
  std::string err;
  bool ok = false;
  std::thread t([&] { ok = exec_nothrow(c2.get(), "SELECT 1", &err); });
  sleep_ms(1800);
  exec_ok(c1.get(), "COMMIT");
  t.join();
  CHECK_MESSAGE(ok, err);
  {
    std::lock_guard<std::mutex> g(mu);
    REQUIRE(notices.size() == 1);
    CHECK(notices[0] == "No server connection available in postgres backend, client being queued");
  }
  // A wait shorter than the limit gets no notice.
  exec_ok(c3.get(), "SELECT 1");
  exec_ok(c2.get(), "SELECT 1");
  std::lock_guard<std::mutex> g(mu);
  CHECK(notices.size() == 1);
}

TEST_CASE("query_wait_timeout per database, and per user before it") {
  if (skip_in_direct_mode("query_wait_timeout is a pooler setting")) return;
  std::string pg = "host=127.0.0.1 port=" + std::to_string(cluster().port);
  Options o = one_server("[users]\nplainuser = query_wait_timeout=0\n");
  o.databases = "testdb = " + pg + " dbname=testdb pool_size=1 query_wait_timeout=1\n";
  Pooler p(o);
  Conn holder = connect(p.conninfo());
  Conn waiter = connect(p.conninfo());
  exec_ok(holder.get(), "BEGIN");
  auto t0 = Clock::now();
  std::string msg;
  CHECK(run(waiter.get(), "SELECT 1", &msg) == "08P01");
  CHECK(msg.find("query_wait_timeout") != std::string::npos);
  CHECK(seconds_since(t0) < 2.5);
  // plainuser's own 0 (wait for ever) comes before the database's 1 s.
  Conn plain_holder = connect(p.conninfo("plainuser", "plainpass"));
  Conn plain = connect(p.conninfo("plainuser", "plainpass"));
  exec_ok(plain_holder.get(), "BEGIN");
  std::atomic<bool> ok{false};
  std::string err;
  std::thread t([&] { ok = exec_nothrow(plain.get(), "SELECT 1", &err); });
  sleep_ms(1800);
  exec_ok(plain_holder.get(), "COMMIT");
  t.join();
  CHECK_MESSAGE(ok.load(), err);
}

void make_check_function() {
  Conn su = connect(superuser_conninfo());
  exec_ok(su.get(), "CREATE TABLE IF NOT EXISTS sluice_doomed(pid int)");
  exec_ok(su.get(), "TRUNCATE sluice_doomed");
  exec_ok(su.get(), "GRANT SELECT ON sluice_doomed TO PUBLIC");
  exec_ok(su.get(),
          "CREATE OR REPLACE FUNCTION sluice_check() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
          "IF EXISTS (SELECT 1 FROM sluice_doomed WHERE pid = pg_backend_pid()) THEN "
          "RAISE EXCEPTION 'doomed server'; END IF; RETURN 1; END $$");
}

void doom(const std::string& pid) {
  Conn su = connect(superuser_conninfo());
  exec_ok(su.get(), "INSERT INTO sluice_doomed VALUES (" + pid + ")");
}

TEST_CASE("server_check_query checks a server idle longer than server_check_delay") {
  if (skip_in_direct_mode("server_check_query is a pooler setting")) return;
  make_check_function();
  int mport = free_port();
  Options o = one_server(
      "server_check_delay = 1\nserver_check_query = SELECT sluice_check()\n"
      "metrics_port = " +
      std::to_string(mport) + "\n");
  o.default_pool_size = 2;  // room for a second server, which a check must not open
  Pooler p(o);
  Conn c = connect(p.conninfo());
  std::string pid1 = scalar(c.get(), "SELECT pg_backend_pid()");
  // Used within the delay: no check, same server.
  CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
  CHECK(metric(mport, "pgsluice_server_checks_total") == "0");
  // Idle past the delay: checked, passes, same server.
  sleep_ms(1300);
  CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
  CHECK(metric(mport, "pgsluice_server_checks_total") == "1");
  sleep_ms(200);
  CHECK(count_backends("testdb", "md5user") == 1);
  // The check fails on this server: it is closed and the client gets a new one.
  doom(pid1);
  sleep_ms(1300);
  std::string pid2 = scalar(c.get(), "SELECT pg_backend_pid()");
  CHECK(pid2 != pid1);
  CHECK(metric(mport, "pgsluice_server_checks_total") == "2");
  CHECK(metric(mport, "pgsluice_server_checks_failed_total") == "1");
  CHECK(p.log().find("server_check_query failed") != std::string::npos);
}

TEST_CASE("an empty server_check_query disables the check") {
  if (skip_in_direct_mode("server_check_query is a pooler setting")) return;
  make_check_function();
  int mport = free_port();
  Pooler p(one_server("server_check_delay = 0\nserver_check_query =\nmetrics_port = " +
                      std::to_string(mport) + "\n"));
  Conn c = connect(p.conninfo());
  std::string pid1 = scalar(c.get(), "SELECT pg_backend_pid()");
  sleep_ms(300);
  CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
  CHECK(metric(mport, "pgsluice_server_checks_total") == "0");
}

TEST_CASE("a server whose backend was terminated while idle is not handed out") {
  if (skip_in_direct_mode("server checks are a pooler feature")) return;
  int mport = free_port();
  // The default check (an empty query) after 0 s: every reuse is checked.
  Pooler p(one_server("server_check_delay = 0\nmetrics_port = " + std::to_string(mport) + "\n"));
  Conn c = connect(p.conninfo());
  std::string pid1 = scalar(c.get(), "SELECT pg_backend_pid()");
  // A reused server is checked every time with server_check_delay 0 (and passes).
  int before = std::stoi(metric(mport, "pgsluice_server_checks_total"));
  CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
  CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
  CHECK(std::stoi(metric(mport, "pgsluice_server_checks_total")) == before + 2);
  CHECK(metric(mport, "pgsluice_server_checks_failed_total") == "0");
  Conn su = connect(superuser_conninfo());
  CHECK(scalar(su.get(), "SELECT pg_terminate_backend(" + pid1 + ")") == "t");
  sleep_ms(200);
  std::string pid2 = scalar(c.get(), "SELECT pg_backend_pid()");
  CHECK(pid2 != pid1);
  CHECK(scalar(c.get(), "SELECT 1") == "1");
}

TEST_CASE("suspend_timeout closes what SUSPEND could not drain; RESUME serves the rest") {
  if (skip_in_direct_mode("SUSPEND is a pooler command")) return;
  Pooler p(one_server("suspend_timeout = 1\n"));
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  Conn quiet = connect(p.conninfo());
  exec_ok(quiet.get(), "SELECT 1");
  // A connection still logging in (nothing sent) and a logged-in client half-way through a
  // message.
  Raw login = Raw::tcp(p.port());
  Conn half_conn = connect(p.conninfo());
  Raw half = Raw::from_libpq(half_conn.get());
  CHECK(half.send_bytes(std::string("Q") + be32(4 + 20) + "SELECT"));  // 14 bytes short
  sleep_ms(200);
  exec_ok(admin.get(), "SUSPEND");
  auto t0 = Clock::now();
  Msg m;
  CHECK(login.read_msg(&m, 4) == ReadStatus::Ok);
  CHECK(m.type == 'E');
  CHECK(m.field('M') == "suspend_timeout");
  CHECK(seconds_since(t0) > 0.8);
  CHECK(half.wait_closed(3));
  exec_ok(admin.get(), "RESUME");
  CHECK(scalar(quiet.get(), "SELECT 2") == "2");
}

TEST_CASE("cancel_wait_timeout gives up a cancel request PostgreSQL does not take") {
  if (skip_in_direct_mode("cancel_wait_timeout is a pooler setting")) return;
  CancelSink sink(cluster().port);
  Options o = one_server("cancel_wait_timeout = 1\nserver_tls_sslmode = disable\n");
  o.pg_port = sink.port();
  Pooler p(o);
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "SELECT 1") == "1");
  REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(2.5)") == 1);
  sleep_ms(300);
  PGcancel* cn = PQgetCancel(c.get());
  char err[256];
  CHECK(PQcancel(cn, err, sizeof err) == 1);
  PQfreeCancel(cn);
  auto t0 = Clock::now();
  CHECK(eventually([&] { return sink.held.load() == 1; }, 2));
  CHECK(eventually([&] { return sink.dropped.load() == 1; }, 3));
  CHECK(seconds_since(t0) > 0.5);
  CHECK(seconds_since(t0) < 2.0);
  // The cancel never reached PostgreSQL: the query ran to its end.
  PGresult* r = nullptr;
  ExecStatusType st = PGRES_COMMAND_OK;
  while ((r = PQgetResult(c.get())) != nullptr) {
    st = PQresultStatus(r);
    PQclear(r);
  }
  CHECK(st == PGRES_TUPLES_OK);
  CHECK(p.log().find("cancel_wait_timeout") != std::string::npos);
  CHECK(scalar(c.get(), "SELECT 2") == "2");
}

TEST_CASE("cancel_wait_timeout closes a released server whose cancel may still come") {
  if (skip_in_direct_mode("cancel_wait_timeout is a pooler setting")) return;
  CancelSink sink(cluster().port);
  Options o = one_server("cancel_wait_timeout = 1\nserver_tls_sslmode = disable\n");
  o.pg_port = sink.port();
  Pooler p(o);
  Conn c = connect(p.conninfo());
  std::string pid1 = scalar(c.get(), "SELECT pg_backend_pid()");
  REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(0.4)") == 1);
  sleep_ms(100);
  PGcancel* cn = PQgetCancel(c.get());
  char err[256];
  CHECK(PQcancel(cn, err, sizeof err) == 1);
  PQfreeCancel(cn);
  PGresult* r = nullptr;
  while ((r = PQgetResult(c.get())) != nullptr) PQclear(r);
  // The query ended on its own while the cancel is still held: the server waits
  // (BeingCanceled), then is closed when the cancel is given up.
  CHECK(eventually([&] { return sink.dropped.load() == 1; }, 3));
  std::string pid2 = scalar(c.get(), "SELECT pg_backend_pid()");
  CHECK(pid2 != pid1);
}

TEST_SUITE_END();

}  // namespace
}  // namespace it
