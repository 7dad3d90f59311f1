// TLS towards clients (issue 10, client side): client_tls_sslmode against libpq's sslmodes,
// the requests before the startup packet, direct TLS, auth_type = cert, SCRAM-SHA-256-PLUS,
// the tls column and metrics, login timeouts mid-handshake, and certificate rotation under
// load. Real libpq, psql, pgbench, psycopg and Python's ssl module; certificates from
// tls_fixture.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"
#include "integration/tls_fixture.h"

using namespace it;       // NOLINT: test file
using namespace it::tls;  // NOLINT: test file

namespace {

// [pgbouncer] lines for TLS towards clients with the fixture's server certificate and CA.
std::string client_tls_lines(const std::string& mode, const std::string& cert = "",
                             const std::string& key = "") {
  const Certs& k = certs();
  return "client_tls_sslmode = " + mode +
         "\nclient_tls_key_file = " + (key.empty() ? k.server_key : key) +
         "\nclient_tls_cert_file = " + (cert.empty() ? k.server_cert : cert) +
         "\nclient_tls_ca_file = " + k.ca_cert + "\n";
}

Options tls_options(const std::string& mode, const std::string& more = "") {
  Options o;
  if (mode != "disable") o.extra_pgbouncer = client_tls_lines(mode);
  o.extra_pgbouncer += more;
  return o;
}

// The SQLSTATE and primary message of a failed libpq connection, from its error text.
bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// A raw connection to pgsluice's Unix socket.
Raw unix_raw(const Pooler& p) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::string path = p.dir() + "/.s.PGSQL." + std::to_string(p.port());
  REQUIRE(path.size() < sizeof un.sun_path);
  std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof un) == 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return Raw(fd);
}

// What libpq (and so psycopg, which uses it) and PgBouncer's rules make of a client sslmode
// against a client_tls_sslmode: whether the login succeeds and whether it is over TLS.
// `with_cert`: the client presents the fixture's md5user certificate.
struct TlsOutcome {
  bool ok = true;
  bool tls = false;
};
TlsOutcome expected_outcome(const std::string& smode, const std::string& cmode, bool with_cert) {
  const bool offered = smode != "disable";
  const bool required = offered && smode != "allow" && smode != "prefer";
  const bool needs_cert = smode == "verify-ca" || smode == "verify-full";
  const bool client_wants_tls = cmode != "disable" && cmode != "allow";
  const bool client_can_tls = cmode != "disable";
  const bool client_needs_tls = client_wants_tls && cmode != "prefer";
  TlsOutcome o;
  o.tls = offered && (client_wants_tls || (cmode == "allow" && required));
  if (client_needs_tls && !offered) o.ok = false;
  if (required && !client_can_tls) o.ok = false;
  if (o.tls && needs_cert && !with_cert) o.ok = false;  // the handshake wants a certificate
  // prefer falls back to plain text only when TLS is refused ('N'), not after a failed
  // handshake, and allow retries with TLS only after a plain-text refusal.
  return o;
}

const char* const kSslModes[] = {"disable", "allow",     "prefer",
                                 "require", "verify-ca", "verify-full"};

std::string metrics_text(int port) {
  Raw r = Raw::tcp(port, 5);
  if (!r.send_bytes("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")) return "";
  r.wait_closed(5);
  return r.pending();
}

long long metric(const std::string& text, const std::string& name) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex("\n" + name + " ([0-9]+)"))) return std::stoll(m[1]);
  return -1;
}

std::string admin_conninfo(const Pooler& p) {
  return p.unix_conninfo("md5user", "md5pass", "pgbouncer");
}

}  // namespace

TEST_SUITE("tls client") {
  TEST_CASE("tls client: every libpq sslmode against every client_tls_sslmode") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    const Certs& k = certs();
    int logins = 0, tls_logins = 0;
    for (const char* sm : kSslModes) {
      Pooler p(tls_options(sm));
      const std::string smode = sm;
      const bool needs_cert = smode == "verify-ca" || smode == "verify-full";
      for (const char* cm : kSslModes) {
        for (bool with_cert : {false, true}) {
          if (with_cert && !needs_cert) continue;
          const std::string cmode = cm;
          CAPTURE(smode);
          CAPTURE(cmode);
          CAPTURE(with_cert);
          const TlsOutcome want = expected_outcome(smode, cmode, with_cert);
          std::string ci = p.conninfo("md5user", "md5pass", "testdb",
                                      libpq_ssl(cmode, k.ca_cert, with_cert ? k.md5user_cert : "",
                                                with_cert ? k.md5user_key : "") +
                                          " connect_timeout=5");
          std::string err;
          Conn c = try_connect(ci, &err);
          CAPTURE(err);
          CHECK((c != nullptr) == want.ok);
          if (c) {
            logins++;
            CHECK(scalar(c.get(), "select 1") == "1");
            CHECK((PQsslInUse(c.get()) == 1) == want.tls);
            if (want.tls) tls_logins++;
          } else if (smode != "disable" && smode != "allow" && smode != "prefer" &&
                     cmode == "disable") {
            CHECK(has(err, "SSL required"));
            CHECK(has(err, "no encryption"));
          }
        }
      }
    }
    MESSAGE("sslmode matrix: " << logins << " logins, " << tls_logins << " over TLS");
    CHECK(tls_logins >= 15);
  }

  TEST_CASE("tls client: every psycopg sslmode against every client_tls_sslmode") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    const Certs& k = certs();
    // One Python process per pooler: it tries every connection string given and prints,
    // per line, "ok <ssl_in_use>" or "fail <message>".
    const std::string script =
        "import sys, psycopg\n"
        "for ci in sys.argv[1:]:\n"
        "    try:\n"
        "        with psycopg.connect(ci) as c:\n"
        "            v = c.execute('select 40 + 2').fetchone()[0]\n"
        "            print('ok', c.pgconn.ssl_in_use, v, flush=True)\n"
        "    except psycopg.Error as e:\n"
        "        print('fail', str(e).replace('\\n', ' '), flush=True)\n";
    int logins = 0, tls_logins = 0;
    for (const char* sm : kSslModes) {
      Pooler p(tls_options(sm));
      const std::string smode = sm;
      const bool needs_cert = smode == "verify-ca" || smode == "verify-full";
      std::vector<std::pair<std::string, bool>> cases;  // client sslmode, with certificate
      std::string args;
      for (const char* cm : kSslModes) {
        for (bool with_cert : {false, true}) {
          if (with_cert && !needs_cert) continue;
          cases.emplace_back(cm, with_cert);
          args +=
              " " + shell_quote(p.conninfo("md5user", "md5pass", "testdb",
                                           libpq_ssl(cm, k.ca_cert, with_cert ? k.md5user_cert : "",
                                                     with_cert ? k.md5user_key : "") +
                                               " connect_timeout=5"));
        }
      }
      write_file(p.dir() + "/sslmodes.py", script);
      CmdResult r = run_shell("/usr/bin/python3 " + p.dir() + "/sslmodes.py" + args, 120);
      CAPTURE(r.output);
      REQUIRE(r.exit_code == 0);
      std::vector<std::string> lines;
      size_t at = 0;
      while (at < r.output.size()) {
        size_t nl = r.output.find('\n', at);
        if (nl == std::string::npos) nl = r.output.size();
        std::string line = r.output.substr(at, nl - at);
        if (line.rfind("ok ", 0) == 0 || line.rfind("fail ", 0) == 0) lines.push_back(line);
        at = nl + 1;
      }
      REQUIRE(lines.size() == cases.size());
      for (size_t i = 0; i < cases.size(); i++) {
        const auto& [cmode, with_cert] = cases[i];
        CAPTURE(smode);
        CAPTURE(cmode);
        CAPTURE(with_cert);
        CAPTURE(lines[i]);
        const TlsOutcome want = expected_outcome(smode, cmode, with_cert);
        CHECK((lines[i].rfind("ok ", 0) == 0) == want.ok);
        if (want.ok) {
          logins++;
          CHECK(lines[i] == std::string("ok ") + (want.tls ? "True" : "False") + " 42");
          if (want.tls) tls_logins++;
        }
      }
    }
    MESSAGE("psycopg sslmode matrix: " << logins << " logins, " << tls_logins << " over TLS");
    CHECK(tls_logins >= 15);
  }

  TEST_CASE("tls client: psql, pgbench and psycopg over TLS") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("require"));
    const Certs& k = certs();
    std::string env = "PGPASSWORD=md5pass PGSSLMODE=verify-full PGSSLROOTCERT=" + k.ca_cert +
                      " PGCONNECT_TIMEOUT=10 ";
    CmdResult psql = run_shell(env + "psql -X -At -h 127.0.0.1 -p " + std::to_string(p.port()) +
                               " -U md5user -d testdb -c 'select 41+1'");
    CAPTURE(psql.output);
    CHECK(psql.exit_code == 0);
    CHECK(has(psql.output, "42"));
    CmdResult bench = run_shell(env + "pgbench -n -S -T 3 -c 4 -h 127.0.0.1 -p " +
                                std::to_string(p.port()) + " -U md5user testdb");
    CAPTURE(bench.output);
    CHECK(bench.exit_code == 0);
    CHECK(has(bench.output, "number of failed transactions: 0"));
    std::string py =
        "import psycopg\n"
        "with psycopg.connect('host=127.0.0.1 port=" +
        std::to_string(p.port()) +
        " user=scramuser password=scrampass dbname=testdb sslmode=verify-full sslrootcert=" +
        k.ca_cert +
        " channel_binding=require') as c:\n"
        "    print('ssl', c.pgconn.ssl_in_use, c.execute('select 7*6').fetchone()[0])\n";
    write_file(p.dir() + "/tls_psycopg.py", py);
    CmdResult r = run_shell("/usr/bin/python3 " + p.dir() + "/tls_psycopg.py");
    CAPTURE(r.output);
    CHECK(r.exit_code == 0);
    CHECK(has(r.output, "ssl True 42"));
  }

  TEST_CASE("tls client: the Unix socket neither offers nor requires TLS (PgBouncer)") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("require"));
    Raw u = unix_raw(p);
    CHECK(send_ssl_request(u) == 'N');
    Conn c = connect(p.unix_conninfo());
    CHECK(scalar(c.get(), "select 1") == "1");
    CHECK(PQsslInUse(c.get()) == 0);
    // TCP with the same mode: 'S'.
    Raw t = Raw::tcp(p.port());
    CHECK(send_ssl_request(t) == 'S');
  }

  TEST_CASE("tls client: bytes behind an SSLRequest are refused (CVE-2021-23214)") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    for (const char* mode : {"prefer", "disable"}) {
      CAPTURE(mode);
      Pooler p(tls_options(mode));
      Raw r = Raw::tcp(p.port());
      // The SSLRequest and a startup packet in one write: no 'S', an 08P01 in plain text.
      REQUIRE(r.send_bytes(ssl_request_packet() +
                           startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
      Msg m;
      REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
      CHECK(m.type == 'E');
      CHECK(m.field('C') == "08P01");
      CHECK(m.field('M') == "received unencrypted data after SSL request");
      CHECK(r.wait_closed(5));
      // The GSSENCRequest likewise.
      Raw g = Raw::tcp(p.port());
      REQUIRE(g.send_bytes(be32(8) + be32(80877104) + "garbage"));
      REQUIRE(g.read_msg(&m) == ReadStatus::Ok);
      CHECK(m.field('C') == "08P01");
      CHECK(has(m.field('M'), "after GSSAPI encryption request"));
    }
  }

  TEST_CASE("tls client: GSSENCRequest gets N, then TLS; any request inside TLS is refused") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("prefer"));
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(be32(8) + be32(80877104)));
    char ans = 0;
    REQUIRE(::recv(r.fd(), &ans, 1, 0) == 1);
    CHECK(ans == 'N');
    TlsRaw t = TlsRaw::start(std::move(r));
    REQUIRE_MESSAGE(t.ok(), t.error());
    CHECK(t.ssl_answer() == 'S');
    CHECK(t.login("md5user", "testdb", "md5pass") == "");
    std::string v;
    CHECK(t.query("select 5", &v) == "");
    CHECK(v == "5");

    for (uint32_t code : {80877103u, 80877104u}) {
      CAPTURE(code);
      for (bool direct : {false, true}) {
        TlsOptions o;
        o.direct = direct;
        TlsRaw in = TlsRaw::connect(p.port(), o);
        REQUIRE_MESSAGE(in.ok(), in.error());
        REQUIRE(in.send_bytes(be32(8) + be32(code)));
        Msg m;
        REQUIRE(in.read_msg(&m) == ReadStatus::Ok);
        CHECK(m.type == 'E');
        CHECK(m.field('C') == "0A000");
        CHECK(has(m.field('M'), "unsupported frontend protocol 1234."));
      }
    }
  }

  TEST_CASE("tls client: require refuses a plain-text startup with 28000; cancel stays plain") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("require"));
    std::string err;
    Conn plain = try_connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"), &err);
    CHECK(plain == nullptr);
    CHECK(has(err,
              "SSL required: no entry for host \"127.0.0.1\", user \"md5user\", "
              "database \"testdb\", no encryption"));
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
    Msg m;
    REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.field('C') == "28000");
    CHECK(m.field('S') == "FATAL");

    // libpq 15 sends its CancelRequest in plain text: still served.
    Conn c = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=require"));
    REQUIRE(PQsendQuery(c.get(), "select pg_sleep(20)") == 1);
    sleep_ms(500);
    PGcancel* cancel = PQgetCancel(c.get());
    char buf[256];
    CHECK(PQcancel(cancel, buf, sizeof buf) == 1);
    PQfreeCancel(cancel);
    auto t0 = Clock::now();
    Result res(PQgetResult(c.get()));
    CHECK(seconds_since(t0) < 10);
    const char* st = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
    CHECK(std::string(st ? st : "") == "57014");
    while (PGresult* more = PQgetResult(c.get())) PQclear(more);
  }

  TEST_CASE("tls client: direct TLS with ALPN postgresql; without it the connection is closed") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("require"));
    const Certs& k = certs();
    CmdResult ok = python_client(p.port(), "md5user", "md5pass", "testdb",
                                 "--direct --ca " + k.ca_cert + " --sql 'select 6*7'");
    CAPTURE(ok.output);
    CHECK(ok.exit_code == 0);
    CHECK(has(ok.output, "alpn=postgresql"));
    CHECK(has(ok.output, "row 42"));
    CmdResult scram =
        python_client(p.port(), "scramuser", "scrampass", "testdb", "--direct --channel-binding");
    CAPTURE(scram.output);
    CHECK(scram.exit_code == 0);

    CmdResult none = python_client(p.port(), "md5user", "md5pass", "testdb", "--direct --no-alpn");
    CAPTURE(none.output);
    CHECK(none.exit_code == 3);
    CHECK(eventually([&] {
      return has(p.log(),
                 "received direct SSL connection request without ALPN protocol negotiation "
                 "extension");
    }));
    TlsOptions other;
    other.direct = true;
    other.alpn = {"http/1.1"};
    TlsRaw h = TlsRaw::connect(p.port(), other);
    CHECK_FALSE(h.ok());
    // SSLRequest-negotiated TLS needs no ALPN (libpq 15 sends none).
    TlsOptions plain_alpn;
    plain_alpn.alpn = {};
    TlsRaw s = TlsRaw::connect(p.port(), plain_alpn);
    REQUIRE_MESSAGE(s.ok(), s.error());
    CHECK(s.login("md5user", "testdb", "md5pass") == "");

    // Where TLS is off, a ClientHello is closed without an answer (PostgreSQL).
    Pooler off(tls_options("disable"));
    TlsOptions d;
    d.direct = true;
    TlsRaw x = TlsRaw::connect(off.port(), d);
    CHECK_FALSE(x.ok());
  }

  TEST_CASE("tls client: a half-finished handshake is closed by client_login_timeout") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("prefer", "client_login_timeout = 1\n"));
    std::string hello = client_hello();
    REQUIRE(hello.size() > 20);
    Raw a = Raw::tcp(p.port());
    CHECK(send_ssl_request(a) == 'S');
    REQUIRE(a.send_bytes(hello.substr(0, hello.size() / 2)));
    Raw b = Raw::tcp(p.port());  // direct TLS, half a ClientHello
    REQUIRE(b.send_bytes(hello.substr(0, 10)));
    Raw c = Raw::tcp(p.port());  // 'S' and then nothing
    CHECK(send_ssl_request(c) == 'S');
    auto t0 = Clock::now();
    CHECK(a.wait_closed(5));
    CHECK(b.wait_closed(5));
    CHECK(c.wait_closed(5));
    CHECK(seconds_since(t0) < 4.5);
    // Nothing is left: the only client is the console itself.
    Conn admin = connect(admin_conninfo(p));
    Result r = exec_ok(admin.get(), "SHOW LISTS");
    std::string used;
    for (int i = 0; i < PQntuples(r.get()); i++)
      if (std::string(PQgetvalue(r.get(), i, 0)) == "used_clients")
        used = PQgetvalue(r.get(), i, 1);
    CHECK(used == "1");
  }

  TEST_CASE("tls client: clients that vanish mid-handshake leave nothing behind") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    // Under make asan (PGSLUICE_BIN=build-asan/pgsluice) LeakSanitizer reports at exit what
    // a vanished handshake left; here the client count must come back to the console alone.
    Pooler p(tls_options("prefer"));
    std::string hello = client_hello();
    auto reset = [](Raw& r) {
      linger lg{1, 0};  // close with RST
      setsockopt(r.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      r.close_fd();
    };
    auto t_start = Clock::now();
    for (int i = 0; i < 40; i++) {
      Raw a = Raw::tcp(p.port());  // 'S', then gone
      CHECK(send_ssl_request(a) == 'S');
      reset(a);
      Raw b = Raw::tcp(p.port());  // half a ClientHello after 'S'
      CHECK(send_ssl_request(b) == 'S');
      b.send_bytes(hello.substr(0, hello.size() / 2));
      if (i % 2) reset(b);
      Raw c = Raw::tcp(p.port());  // direct TLS, a ClientHello and gone before the answer
      c.send_bytes(hello);
      if (i % 2) reset(c);
      TlsRaw d = TlsRaw::connect(p.port());  // handshake done, half a startup packet
      REQUIRE_MESSAGE(d.ok(), d.error());
      std::string sp = startup_packet({{"user", "md5user"}, {"database", "testdb"}});
      d.send_bytes(sp.substr(0, 9));
      if (i % 2) d.close_notify();
      d.close_fd();
    }
    Conn admin = connect(admin_conninfo(p));
    auto used = [&] {
      Result r = exec_ok(admin.get(), "SHOW LISTS");
      for (int i = 0; i < PQntuples(r.get()); i++)
        if (std::string(PQgetvalue(r.get(), i, 0)) == "used_clients")
          return std::string(PQgetvalue(r.get(), i, 1));
      return std::string("?");
    };
    CHECK(eventually([&] { return used() == "1"; }, 10));
    MESSAGE("160 vanished handshakes freed " << seconds_since(t_start) << " s after the first");
    CHECK(p.alive());
    // And TLS still works.
    Conn c = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=require"));
    CHECK(PQsslInUse(c.get()) == 1);
  }

  TEST_CASE("tls client: failed handshakes are logged with the reason and counted") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    int mport = free_port();
    Pooler p(tls_options("verify-ca", "client_tls_protocols = tlsv1.3\nmetrics_port = " +
                                          std::to_string(mport) + "\n"));
    const Certs& k = certs();
    // TLS 1.2 only, against tlsv1.3 only.
    TlsOptions old;
    old.max_version = 0x0303;
    old.cert_file = k.md5user_cert;
    old.key_file = k.md5user_key;
    TlsRaw a = TlsRaw::connect(p.port(), old);
    CHECK_FALSE(a.ok());
    // No client certificate where verify-ca wants one; one from another CA.
    TlsRaw b = TlsRaw::connect(p.port());
    CHECK_FALSE((b.ok() && b.login("md5user", "testdb", "md5pass").empty()));
    TlsOptions other;
    other.cert_file = k.md5user_ca2_cert;
    other.key_file = k.md5user_ca2_key;
    TlsRaw c = TlsRaw::connect(p.port(), other);
    CHECK_FALSE((c.ok() && c.login("md5user", "testdb", "md5pass").empty()));
    // And one that works.
    TlsOptions good;
    good.cert_file = k.md5user_cert;
    good.key_file = k.md5user_key;
    TlsRaw d = TlsRaw::connect(p.port(), good);
    REQUIRE_MESSAGE(d.ok(), d.error());
    CHECK(d.login("md5user", "testdb", "md5pass") == "");
    CHECK(eventually([&] { return has(p.log(), "unsupported protocol"); }));
    CHECK(eventually([&] { return has(p.log(), "peer did not return a certificate"); }));
    CHECK(eventually([&] { return has(p.log(), "certificate verify failed"); }));
    CHECK_FALSE(has(p.log(), "md5pass"));
    std::string text = metrics_text(mport);
    CAPTURE(text);
    CHECK(metric(text, "pgsluice_client_tls_handshake_failures_total") >= 3);
    CHECK(metric(text, "pgsluice_client_tls_handshakes_total") >= 1);
  }

  TEST_CASE("tls client: auth_type = cert: the certificate's CN is the user name") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Options o = tls_options("verify-full");
    o.auth_type = "cert";
    Pooler p(o);
    const Certs& k = certs();
    auto login = [&](const std::string& user, const std::string& cert, const std::string& key,
                     std::string* err) {
      return try_connect(
          p.conninfo(user, "", "testdb",
                     libpq_ssl("verify-full", k.ca_cert, cert, key) + " connect_timeout=5"),
          err);
    };
    std::string err;
    Conn right = login("md5user", k.md5user_cert, k.md5user_key, &err);
    CAPTURE(err);
    REQUIRE(right != nullptr);
    CHECK(scalar(right.get(), "select current_user") == "md5user");
    // Wrong CN.
    Conn wrong = login("md5user", k.scramuser_cert, k.scramuser_key, &err);
    CHECK(wrong == nullptr);
    CHECK(has(err, "certificate authentication failed for user \"md5user\""));
    CHECK(has(p.log(), "certificate CN \"scramuser\" does not match"));
    // A CN that names no user of auth_file.
    Conn unknown = login("nosuchuser", k.unknown_cert, k.unknown_key, &err);
    CHECK(unknown == nullptr);
    CHECK(has(err, "certificate authentication failed for user \"nosuchuser\""));
    // No certificate: the handshake fails (verify-full); another CA's: likewise.
    Conn none = login("md5user", "", "", &err);
    CHECK(none == nullptr);
    Conn ca2 = login("md5user", k.md5user_ca2_cert, k.md5user_ca2_key, &err);
    CHECK(ca2 == nullptr);
    // The Unix socket has no TLS: no certificate, refused.
    Conn sock = try_connect(p.unix_conninfo("md5user", ""), &err);
    CHECK(sock == nullptr);
    CHECK(has(err, "connection requires a valid client certificate"));
  }

  TEST_CASE("tls client: channel_binding=require logs in with SCRAM-SHA-256-PLUS") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Options o = tls_options("prefer");
    o.auth_type = "scram-sha-256";
    Pooler p(o);
    const Certs& k = certs();
    // A SCRAM verifier (scramuser) and a plain-text password (plainuser) in auth_file.
    for (const auto& [user, pw] : {std::pair<std::string, std::string>{"scramuser", "scrampass"},
                                   {"plainuser", "plainpass"}}) {
      CAPTURE(user);
      std::string err;
      Conn c = try_connect(p.conninfo(user, pw, "testdb",
                                      libpq_ssl("verify-full", k.ca_cert) +
                                          " channel_binding=require connect_timeout=5"),
                           &err);
      CAPTURE(err);
      REQUIRE(c != nullptr);
      CHECK(PQsslInUse(c.get()) == 1);
      CHECK(scalar(c.get(), "select 1") == "1");
      // A wrong password still fails, with binding.
      Conn bad = try_connect(
          p.conninfo(user, "nope", "testdb", "sslmode=require channel_binding=require"), &err);
      CHECK(bad == nullptr);
      CHECK(has(err, "password authentication failed"));
      // Over plain text libpq refuses to go on without binding.
      Conn plain = try_connect(
          p.conninfo(user, pw, "testdb", "sslmode=disable channel_binding=require"), &err);
      CHECK(plain == nullptr);
      CHECK(has(err, "channel binding"));
    }
    // The raw client sees the mechanism list and binds.
    TlsRaw t = TlsRaw::connect(p.port());
    REQUIRE_MESSAGE(t.ok(), t.error());
    CHECK(t.login("scramuser", "testdb", "scrampass", true) == "");
    CHECK(t.sasl_mechanism() == "SCRAM-SHA-256-PLUS");

    // The mechanism lists, and a downgrade: gs2 flag 'y' ("I could bind, but you cannot")
    // over TLS, where binding was offered, is refused before any proof.
    std::string sp = startup_packet({{"user", "scramuser"}, {"database", "testdb"}});
    TlsRaw y = TlsRaw::connect(p.port());
    REQUIRE_MESSAGE(y.ok(), y.error());
    REQUIRE(y.send_bytes(sp));
    Msg m;
    REQUIRE(y.read_msg(&m) == ReadStatus::Ok);
    REQUIRE(m.type == 'R');
    CHECK(m.body == be32(10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + '\0');
    std::string first = "y,,n=,r=abcdefghijklmnop";
    REQUIRE(
        y.send_msg('p', cstr("SCRAM-SHA-256") + be32(static_cast<uint32_t>(first.size())) + first));
    REQUIRE(y.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    CHECK(m.field('C') == "08P01");
    CHECK(has(m.field('M'), "SCRAM channel binding negotiation error"));
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(sp));
    REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
    REQUIRE(m.type == 'R');
    CHECK(m.body == be32(10) + cstr("SCRAM-SHA-256") + '\0');  // no PLUS in plain text
  }

  TEST_CASE("tls client: SHOW CLIENTS tls column") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    Pooler p(tls_options("prefer"));
    Conn t = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=require"));
    Conn plain = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
    Conn admin = connect(admin_conninfo(p));
    Result r = exec_ok(admin.get(), "SHOW CLIENTS");
    int port_col = PQfnumber(r.get(), "port"), tls_col = PQfnumber(r.get(), "tls");
    REQUIRE(tls_col >= 0);
    std::string tls_text, plain_text = "(absent)";
    for (int i = 0; i < PQntuples(r.get()); i++) {
      int port = std::atoi(PQgetvalue(r.get(), i, port_col));
      if (port == local_port(t.get())) tls_text = PQgetvalue(r.get(), i, tls_col);
      if (port == local_port(plain.get())) plain_text = PQgetvalue(r.get(), i, tls_col);
    }
    CAPTURE(tls_text);
    // PgBouncer's form: version/cipher/key exchange group.
    CHECK(std::regex_match(tls_text, std::regex(R"(TLSv1\.[23]/[A-Z0-9_-]+/(ECDH|DH)=\w+)")));
    CHECK(has(tls_text, std::string(PQsslAttribute(t.get(), "cipher"))));
    CHECK(plain_text == "");
  }

  TEST_CASE(
      "tls client: certificate rotation under pgbench load, RELOAD twice, a bad key kept out") {
    if (skip_in_direct_mode("client TLS is pgsluice's")) return;
    const Certs& k = certs();
    // pgsluice reads its own copies, which the test replaces.
    std::string dir = make_temp_dir("tls-rot");
    REQUIRE(::chmod(dir.c_str(), 0755) == 0);  // pgsluice may run as postgres
    std::string cert = dir + "/server.pem", key = dir + "/server.key";
    install_file(k.server_cert, cert);
    install_file(k.server_key, key);
    Options o;
    o.extra_pgbouncer = client_tls_lines("require", cert, key);
    o.default_pool_size = 8;
    Pooler p(o);
    auto verified_by = [&](const std::string& ca) {
      std::string err;
      Conn c = try_connect(p.conninfo("md5user", "md5pass", "testdb",
                                      libpq_ssl("verify-full", ca) + " connect_timeout=5"),
                           &err);
      return c != nullptr && scalar(c.get(), "select 1") == "1";
    };
    REQUIRE(verified_by(k.ca_cert));
    CHECK_FALSE(verified_by(k.ca2_cert));
    Conn old = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=require"));
    Conn admin = connect(admin_conninfo(p));

    std::atomic<bool> done{false};
    CmdResult bench;
    std::thread load([&] {
      bench = run_shell(
          "PGPASSWORD=md5pass PGSSLMODE=require PGCONNECT_TIMEOUT=10 pgbench -n -S "
          "-T 20 -c 8 -j 2 -h 127.0.0.1 -p " +
              std::to_string(p.port()) + " -U md5user testdb",
          60);
      done = true;
    });
    sleep_ms(4000);
    // 1: a new certificate from the second CA.
    install_file(k.server2_cert, cert);
    install_file(k.server2_key, key);
    exec_ok(admin.get(), "RELOAD");
    CHECK(verified_by(k.ca2_cert));
    CHECK_FALSE(verified_by(k.ca_cert));
    CmdResult s_client = run_shell(
        "openssl s_client -starttls postgres -connect 127.0.0.1:" + std::to_string(p.port()) +
            " -CAfile " + k.ca2_cert + " -verify_return_error </dev/null 2>&1",
        20);
    CHECK(has(s_client.output, "CN = pgsluice test CA 2"));
    CHECK(has(s_client.output, "Verify return code: 0 (ok)"));
    CHECK(scalar(old.get(), "select 2") == "2");  // the old session goes on
    sleep_ms(3000);
    // 2: a key that does not match: refused, the running context stays.
    install_file(k.mismatched_key, key);
    CHECK(exec_sqlstate(admin.get(), "RELOAD") != "");
    CHECK(has(p.log(), "client_tls_key_file does not match client_tls_cert_file"));
    CHECK(verified_by(k.ca2_cert));
    sleep_ms(3000);
    // 3: back to the first CA's certificate.
    install_file(k.server_cert, cert);
    install_file(k.server_key, key);
    exec_ok(admin.get(), "RELOAD");
    CHECK(verified_by(k.ca_cert));
    CHECK(scalar(old.get(), "select 3") == "3");
    load.join();
    CAPTURE(bench.output);
    CHECK(bench.exit_code == 0);
    CHECK(has(bench.output, "number of failed transactions: 0 "));
    std::smatch m;
    REQUIRE(std::regex_search(bench.output, m,
                              std::regex(R"(number of transactions actually processed: (\d+))")));
    MESSAGE("pgbench over TLS during rotation: " << m[1] << " transactions, 0 failed");
    CHECK(std::stoll(m[1]) > 1000);
    CHECK(p.alive());
  }
}
