// Operations hardening (issue 9, items 4 and 13): server TLS modes that require TLS are
// refused until TLS towards servers exists, client TLS modes need a key and certificate; console
// SET and RELOAD change the config through one door on the main thread; the metrics endpoint bounds
// requests and never waits on the main thread.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace it;  // NOLINT: test file

namespace {

std::string admin_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

std::string config_value(PGconn* admin, const std::string& key) {
  Result r = exec_ok(admin, "SHOW CONFIG");
  int k = PQfnumber(r.get(), "key"), v = PQfnumber(r.get(), "value");
  for (int i = 0; i < PQntuples(r.get()); i++)
    if (PQgetvalue(r.get(), i, k) == key) return PQgetvalue(r.get(), i, v);
  return "(absent)";
}

// The primary message of a failed command ("" when it succeeded).
std::string error_message(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  if (PQresultStatus(r.get()) != PGRES_FATAL_ERROR) return "";
  const char* m = PQresultErrorField(r.get(), PG_DIAG_MESSAGE_PRIMARY);
  return m ? m : "(no message)";
}

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) n++;
  return n;
}

// Replaces the line starting with `key` in the Pooler's ini (or appends it).
void set_ini_line(const Pooler& p, const std::string& key, const std::string& line) {
  std::string path = p.dir() + "/pgsluice.ini";
  std::string ini = read_file(path);
  size_t at = ini.find("\n" + key + " ");
  if (at == std::string::npos) {
    if (!ini.empty() && ini.back() != '\n') ini += "\n";
    ini += line + "\n";
  } else {
    size_t eol = ini.find('\n', at + 1);
    ini.replace(at + 1, eol - at - 1, line);
  }
  write_file(path, ini);
}

struct HttpAnswer {
  bool closed = false;  // the server ended the connection within the timeout
  std::string text;     // everything it sent
  int status() const {
    if (text.rfind("HTTP/1.", 0) != 0 || text.size() < 12) return 0;
    return std::atoi(text.substr(9, 3).c_str());
  }
};

// One HTTP/1.0 request on a new connection; the server closes after its answer.
HttpAnswer http_get(int port, const std::string& path, double timeout_s = 5) {
  Raw r = Raw::tcp(port, timeout_s);
  HttpAnswer a;
  if (!r.send_bytes("GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")) return a;
  a.closed = r.wait_closed(timeout_s);
  a.text = r.pending();
  return a;
}

}  // namespace

TEST_CASE("ops: client TLS without a key and certificate refuses to start, naming them") {
  if (skip_in_direct_mode("start-up checks are a pooler feature")) return;
  // client_tls_sslmode needs a key and a certificate (PgBouncer's rule); every
  // server_tls_sslmode starts (test_tls_server.cc).
  const std::pair<const char*, const char*> cases[] = {{"client_tls_sslmode", "require"},
                                                       {"client_tls_sslmode", "prefer"}};
  for (const auto& [key, mode] : cases) {
    const bool client = std::string(key) == "client_tls_sslmode";
    CAPTURE(key);
    CAPTURE(mode);
    std::string ini =
        "[databases]\ntestdb = host=127.0.0.1 port=" + std::to_string(cluster().port) +
        "\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = " + std::to_string(free_port()) +
        "\nunix_socket_dir = {dir}\nauth_type = trust\n" + key + " = " + mode + "\n";
    CmdResult r = run_pgsluice_config(ini, 5);
    CAPTURE(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);  // it exited by itself; it was not still running
    CHECK(r.output.find(client ? std::string("client_tls_key_file")
                               : std::string(key) + " = " + mode) != std::string::npos);
    CHECK(r.output.find("TLS") != std::string::npos);
  }
}

TEST_CASE("ops: SET and RELOAD refuse a TLS mode that requires TLS; the running config stays") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  // The default server_tls_sslmode = prefer uses TLS when the server offers it: no warning
  // about plain text.
  CHECK(count_of(p.log(), "server_tls_sslmode = prefer: TLS") == 0);
  Conn admin = connect(admin_conninfo(p));

  std::string err = error_message(admin.get(), "SET client_tls_sslmode = require");
  CHECK(err.find("client_tls_key_file") != std::string::npos);  // served, but needs a key
  CHECK(config_value(admin.get(), "client_tls_sslmode") == "disable");
  // TLS towards servers is built: verify-full is taken (and set back).
  exec_ok(admin.get(), "SET server_tls_sslmode = 'verify-full'");
  CHECK(config_value(admin.get(), "server_tls_sslmode") == "verify-full");
  exec_ok(admin.get(), "SET server_tls_sslmode = prefer");

  // A file asking for verify-ca with a CA file that cannot be read: RELOAD fails and
  // nothing of the file is taken.
  set_ini_line(p, "default_pool_size", "default_pool_size = 9");
  set_ini_line(p, "server_tls_sslmode",
               "server_tls_sslmode = verify-ca\nserver_tls_ca_file = /nonexistent/ca.pem");
  CHECK(exec_sqlstate(admin.get(), "RELOAD") == "F0000");
  CHECK(config_value(admin.get(), "server_tls_sslmode") == "prefer");
  CHECK(config_value(admin.get(), "default_pool_size") == "4");
  CHECK(p.log().find("server_tls_ca_file") != std::string::npos);
  CHECK(p.alive());
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 1") == "1");

  // Any client TLS mode needs a key and a certificate (PgBouncer's rule): refused.
  err = error_message(admin.get(), "SET client_tls_sslmode = allow");
  CHECK(err.find("client_tls_key_file") != std::string::npos);
  CHECK(config_value(admin.get(), "client_tls_sslmode") == "disable");

  // The file fixed: RELOAD takes it (and its values replace the SETs, as in PgBouncer).
  set_ini_line(p, "server_tls_sslmode", "server_tls_sslmode = prefer");
  set_ini_line(p, "server_tls_ca_file", "server_tls_ca_file =");
  exec_ok(admin.get(), "RELOAD");
  CHECK(config_value(admin.get(), "default_pool_size") == "9");
  CHECK(config_value(admin.get(), "client_tls_sslmode") == "disable");
  CHECK(config_value(admin.get(), "server_tls_ca_file") == "");
  CHECK(count_of(p.log(), "server_tls_sslmode = prefer: TLS") == 0);
}

TEST_CASE("ops: concurrent console SETs of different settings all survive; RELOAD re-reads") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Options o;
  o.workers = 2;
  // A large auth_file makes each copy of the config take a while: without one door for
  // changes, two SETs that copy the same snapshot lose one of the two changes.
  for (int i = 0; i < 20000; i++)
    o.extra_userlist += "\"filler" + std::to_string(i) + "\" \"pw" + std::to_string(i) + "\"\n";
  Pooler p(o);
  const char* keys[] = {"query_wait_timeout", "server_idle_timeout", "client_idle_timeout",
                        "idle_transaction_timeout"};
  constexpr int kConsoles = 4;
  constexpr int kRounds = 60;
  std::vector<Conn> consoles;
  for (int i = 0; i < kConsoles; i++) consoles.push_back(connect(admin_conninfo(p)));
  std::atomic<int> lost{0}, failed{0};
  std::mutex mu;
  std::string first_problem;
  std::vector<std::thread> threads;
  for (int t = 0; t < kConsoles; t++) {
    threads.emplace_back([&, t] {
      PGconn* c = consoles[static_cast<size_t>(t)].get();
      std::string key = keys[t];
      for (int i = 1; i <= kRounds; i++) {
        std::string v = std::to_string(1000 * (t + 1) + i);
        std::string err;
        if (!exec_nothrow(c, "SET " + key + " = " + v, &err)) {
          failed++;
          std::lock_guard<std::mutex> g(mu);
          if (first_problem.empty()) first_problem = "SET failed: " + err;
          continue;
        }
        // Nobody else writes this key: it must read back as just set.
        Result r(PQexec(c, "SHOW CONFIG"));
        int kc = PQfnumber(r.get(), "key"), vc = PQfnumber(r.get(), "value");
        std::string got = "(absent)";
        for (int row = 0; row < PQntuples(r.get()); row++)
          if (PQgetvalue(r.get(), row, kc) == key) got = PQgetvalue(r.get(), row, vc);
        if (got != v) {
          lost++;
          std::lock_guard<std::mutex> g(mu);
          if (first_problem.empty()) first_problem = key + ": set " + v + ", read " + got;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CAPTURE(first_problem);
  CHECK(failed.load() == 0);
  CHECK(lost.load() == 0);
  Conn admin = connect(admin_conninfo(p));
  for (int t = 0; t < kConsoles; t++)
    CHECK(config_value(admin.get(), keys[t]) == std::to_string(1000 * (t + 1) + kRounds));

  // RELOAD reads the file on the main thread; the file's values replace earlier SETs
  // (PgBouncer's RELOAD), and a SET after it holds.
  exec_ok(admin.get(), "RELOAD");
  CHECK(config_value(admin.get(), "query_wait_timeout") == "120");
  CHECK(config_value(admin.get(), "server_idle_timeout") == "600");
  exec_ok(admin.get(), "SET query_wait_timeout = 77");
  exec_ok(consoles[1].get(), "SET server_idle_timeout = 88");
  CHECK(config_value(admin.get(), "query_wait_timeout") == "77");
  CHECK(config_value(admin.get(), "server_idle_timeout") == "88");
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 2") == "2");
}

TEST_CASE("ops: metrics: an oversized request is refused and a trickling one is cut off") {
  if (skip_in_direct_mode("the metrics endpoint is a pooler feature")) return;
  int mport = free_port();
  Options o;
  o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) + "\n";
  Pooler p(o);
  REQUIRE(http_get(mport, "/metrics").status() == 200);

  // A 10 MB header: the server answers an error and closes long before the end.
  {
    Raw big = Raw::tcp(mport, 5);
    REQUIRE(big.send_bytes("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "));
    std::string chunk(64 * 1024, 'a');
    size_t sent = 0;
    while (sent < size_t{10} << 20 && big.send_bytes(chunk)) sent += chunk.size();
    bool closed = big.wait_closed(5);
    CAPTURE(sent);
    CHECK(closed);
    CHECK(big.pending().find(" 200 ") == std::string::npos);
    CHECK(sent < size_t{10} << 20);
  }
  CHECK(http_get(mport, "/metrics").status() == 200);
  CHECK(http_get(mport, "/metrics", 5).closed);

  // A client that sends its request one byte every 250 ms: other scrapes are answered at
  // once meanwhile, and the server ends the slow one at its request deadline (5 s).
  Raw slow = Raw::tcp(mport, 5);
  REQUIRE(slow.send_bytes("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "));
  auto t0 = Clock::now();
  std::atomic<bool> slow_closed{false};
  std::atomic<double> closed_after{-1};
  std::thread trickle([&] {
    while (seconds_since(t0) < 15) {
      if (!slow.send_bytes("x") || slow.wait_closed(0.25)) {
        closed_after = seconds_since(t0);
        slow_closed = true;
        return;
      }
    }
  });
  int fast = 0;
  for (int i = 0; i < 4; i++) {
    auto t1 = Clock::now();
    HttpAnswer a = http_get(mport, "/metrics", 5);
    if (a.status() == 200 && seconds_since(t1) < 1.0) fast++;
    sleep_ms(500);
  }
  trickle.join();
  CHECK(fast == 4);
  CHECK(slow_closed.load());
  CHECK(closed_after.load() < 8.0);
  CHECK(http_get(mport, "/metrics").status() == 200);
  CHECK(p.alive());
}

TEST_CASE("ops: metrics: a scrape waiting on a busy worker does not hold the main thread") {
  if (skip_in_direct_mode("the metrics endpoint is a pooler feature")) return;
  int mport = free_port();
  Options o;
  o.workers = 1;
  o.auth_type = "scram-sha-256";
  // plainuser's plain-text secret makes its login derive SCRAM keys on the worker thread:
  // with this many iterations the only worker is busy for a few seconds.
  o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) +
                      "\nscram_iterations = 4000000\nstats_period = 1\n";
  Pooler p(o);
  REQUIRE(http_get(mport, "/metrics").status() == 200);

  Raw login = Raw::tcp(p.port(), 30);
  REQUIRE(login.send_bytes(startup_packet({{"user", "plainuser"}, {"database", "testdb"}})));
  sleep_ms(300);  // the worker is deriving the keys now
  HttpAnswer held;
  std::thread scrape([&] { held = http_get(mport, "/metrics", 15); });
  sleep_ms(300);  // the scrape waits for the worker's part
  auto t0 = Clock::now();
  HttpAnswer other = http_get(mport, "/elsewhere", 10);
  double took = seconds_since(t0);
  scrape.join();
  CHECK(other.status() == 404);
  CHECK(took < 1.0);
  // The held scrape: the full answer once the worker is back, or 503 at the 2 s deadline;
  // never a 200 with the worker's part missing.
  CAPTURE(held.text.substr(0, 200));
  int st = held.status();
  CHECK((st == 200 || st == 503));
  if (st == 200) CHECK(held.text.find("pgbouncer_pools") != std::string::npos);
  // Once the worker is free again, scrapes are whole.
  Msg m;
  CHECK(login.read_msg(&m, 30) == ReadStatus::Ok);  // the SASL request came eventually
  CHECK(http_get(mport, "/metrics", 10).status() == 200);
  CHECK(p.alive());
}
