// The TLS fixtures checked against PostgreSQL itself (no pgsluice): certificates, the ssl=on
// and ssl=off clusters, the raw TLS client and the Python client.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "integration/harness.h"
#include "integration/tls_fixture.h"

namespace it::tls {

namespace {

// libpq over TCP to cluster c as user (password may be "").
std::string tcp_conninfo(const Cluster& c, const std::string& host, const std::string& user,
                         const std::string& password, const std::string& db = "testdb") {
  std::string s = "host=" + host + " hostaddr=127.0.0.1 port=" + std::to_string(c.port) +
                  " user=" + user + " dbname=" + db + " connect_timeout=10";
  if (!password.empty()) s += " password=" + password;
  return s;
}

bool openssl_ok(const std::string& args) {
  return run_shell("openssl " + args + " >/dev/null 2>&1").exit_code == 0;
}

std::string public_key(const std::string& file, bool is_cert) {
  std::string cmd = is_cert ? "openssl x509 -noout -pubkey -in " : "openssl pkey -pubout -in ";
  return run_shell(cmd + shell_quote(file)).output;
}

}  // namespace

TEST_SUITE("tls_fixture") {
  TEST_CASE("certificates: subjects, chains, names, key pairs, modes") {
    const Certs& k = certs();
    CHECK(cert_subject(k.md5user_cert) == "CN=md5user");
    CHECK(cert_subject(k.scramuser_cert) == "CN=scramuser");
    CHECK(cert_subject(k.unknown_cert) == "CN=nosuchuser");
    CHECK(cert_subject(k.md5user_ca2_cert) == "CN=md5user");
    CHECK(cert_subject(k.server_cert) == "CN=localhost");
    CHECK(cert_subject(k.server2_cert) == "CN=localhost");
    CHECK(cert_subject(k.wrong_cert) == "CN=wrong.invalid");
    CHECK(cert_subject(k.ca_cert) == "CN=pgsluice test CA");
    CHECK(cert_subject(k.ca2_cert) == "CN=pgsluice test CA 2");

    std::string ca = " -CAfile " + shell_quote(k.ca_cert) + " ";
    std::string ca2 = " -CAfile " + shell_quote(k.ca2_cert) + " ";
    std::string both = " -CAfile " + shell_quote(k.both_ca) + " ";
    // Chains: each leaf verifies against its own CA only; the bundle trusts both.
    CHECK(openssl_ok("verify -purpose sslserver" + ca + shell_quote(k.server_cert)));
    CHECK(openssl_ok("verify -purpose sslserver" + ca + shell_quote(k.wrong_cert)));
    CHECK(openssl_ok("verify -purpose sslclient" + ca + shell_quote(k.md5user_cert)));
    CHECK(openssl_ok("verify -purpose sslclient" + ca + shell_quote(k.scramuser_cert)));
    CHECK(openssl_ok("verify -purpose sslclient" + ca + shell_quote(k.unknown_cert)));
    CHECK_FALSE(openssl_ok("verify" + ca + shell_quote(k.server2_cert)));
    CHECK_FALSE(openssl_ok("verify" + ca + shell_quote(k.md5user_ca2_cert)));
    CHECK_FALSE(openssl_ok("verify" + ca2 + shell_quote(k.server_cert)));
    CHECK(openssl_ok("verify -purpose sslserver" + ca2 + shell_quote(k.server2_cert)));
    CHECK(openssl_ok("verify -purpose sslclient" + ca2 + shell_quote(k.md5user_ca2_cert)));
    CHECK(openssl_ok("verify" + both + shell_quote(k.server_cert)));
    CHECK(openssl_ok("verify" + both + shell_quote(k.server2_cert)));
    // Names: the server certs match localhost and 127.0.0.1, the wrong one neither.
    CHECK(openssl_ok("verify -verify_hostname localhost" + ca + shell_quote(k.server_cert)));
    CHECK(openssl_ok("verify -verify_ip 127.0.0.1" + ca + shell_quote(k.server_cert)));
    CHECK(openssl_ok("verify -verify_ip 127.0.0.1" + ca2 + shell_quote(k.server2_cert)));
    CHECK_FALSE(openssl_ok("verify -verify_hostname localhost" + ca + shell_quote(k.wrong_cert)));
    CHECK_FALSE(openssl_ok("verify -verify_ip 127.0.0.1" + ca + shell_quote(k.wrong_cert)));
    // Key pairs: every key matches its cert but the mismatched one.
    CHECK(public_key(k.server_cert, true) == public_key(k.server_key, false));
    CHECK(public_key(k.md5user_cert, true) == public_key(k.md5user_key, false));
    CHECK(public_key(k.server2_cert, true) == public_key(k.server2_key, false));
    CHECK(public_key(k.server_cert, true).find("BEGIN PUBLIC KEY") != std::string::npos);
    CHECK(public_key(k.server_cert, true) != public_key(k.mismatched_key, false));
    // Modes: keys 0600 (owned by postgres when we are root: PostgreSQL insists).
    for (const auto& key :
         {k.ca_key, k.server_key, k.wrong_key, k.md5user_key, k.scramuser_key, k.unknown_key,
          k.ca2_key, k.server2_key, k.md5user_ca2_key, k.mismatched_key}) {
      struct stat st {};
      REQUIRE(stat(key.c_str(), &st) == 0);
      CHECK((st.st_mode & 0777) == 0600);
      if (geteuid() == 0) CHECK(st.st_uid != 0);
    }
    // install_file keeps the mode and replaces the target.
    std::string dir = make_temp_dir("tls-install");
    install_file(k.server_key, dir + "/k.key");
    install_file(k.server2_key, dir + "/k.key");
    CHECK(read_file(dir + "/k.key") == read_file(k.server2_key));
    struct stat st {};
    REQUIRE(stat((dir + "/k.key").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }

  TEST_CASE("ssl cluster: libpq verify-full with the CA, by name and by IP") {
    const Cluster& c = ssl_cluster();
    const Certs& k = certs();
    for (const char* host : {"localhost", "127.0.0.1"}) {
      CAPTURE(host);
      Conn conn = connect(tcp_conninfo(c, host, "md5user", "md5pass") +
                          libpq_ssl("verify-full", k.ca_cert));
      CHECK(PQsslInUse(conn.get()) == 1);
      const char* proto = PQsslAttribute(conn.get(), "protocol");
      REQUIRE(proto != nullptr);
      CHECK(std::string(proto) == "TLSv1.3");
      CHECK(scalar(conn.get(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t");
    }
    // SCRAM over TLS negotiates channel binding.
    Conn s = connect(tcp_conninfo(c, "localhost", "scramuser", "scrampass") +
                     libpq_ssl("verify-full", k.ca_cert) + " channel_binding=require");
    CHECK(PQsslInUse(s.get()) == 1);
    // hostnossl ... reject: no TCP login without TLS.
    std::string err;
    Conn plain = try_connect(
        tcp_conninfo(c, "localhost", "md5user", "md5pass") + libpq_ssl("disable"), &err);
    CHECK(plain == nullptr);
    CHECK(err.find("no encryption") != std::string::npos);
    // The second CA does not vouch for this server.
    Conn other = try_connect(
        tcp_conninfo(c, "localhost", "md5user", "md5pass") + libpq_ssl("verify-ca", k.ca2_cert),
        &err);
    CHECK(other == nullptr);
    CHECK(err.find("certificate verify failed") != std::string::npos);
    // libpq checks the name: a name the certificate lacks fails verify-full.
    Conn wrong = try_connect(tcp_conninfo(c, "wrong.invalid", "md5user", "md5pass") +
                                 libpq_ssl("verify-full", k.ca_cert),
                             &err);
    CHECK(wrong == nullptr);
    CHECK(err.find("does not match host name") != std::string::npos);
  }

  TEST_CASE("wrong-name cluster: verify-full fails, verify-ca succeeds") {
    const Cluster& c = wrong_name_cluster();
    const Certs& k = certs();
    std::string err;
    for (const char* host : {"localhost", "127.0.0.1"}) {
      CAPTURE(host);
      Conn conn = try_connect(
          tcp_conninfo(c, host, "md5user", "md5pass") + libpq_ssl("verify-full", k.ca_cert), &err);
      CHECK(conn == nullptr);
      CHECK(err.find("does not match host name") != std::string::npos);
    }
    Conn ca_only = connect(tcp_conninfo(c, "localhost", "md5user", "md5pass") +
                           libpq_ssl("verify-ca", k.ca_cert));
    CHECK(PQsslInUse(ca_only.get()) == 1);
  }

  TEST_CASE("ssl cluster: hostssl cert login takes the user from the certificate's CN") {
    const Cluster& c = ssl_cluster();
    const Certs& k = certs();
    std::string ssl = libpq_ssl("verify-full", k.ca_cert, k.md5user_cert, k.md5user_key);
    Conn conn = connect(tcp_conninfo(c, "localhost", "md5user", "", "certdb") + ssl);
    CHECK(scalar(conn.get(), "SELECT current_user") == "md5user");
    CHECK(scalar(conn.get(), "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()") ==
          "/CN=md5user");
    Conn scram = connect(tcp_conninfo(c, "localhost", "scramuser", "", "certdb") +
                         libpq_ssl("verify-full", k.ca_cert, k.scramuser_cert, k.scramuser_key));
    CHECK(scalar(scram.get(), "SELECT current_user") == "scramuser");
    std::string err;
    // Someone else's certificate, an unknown CN, a foreign CA, or none: refused.
    CHECK(try_connect(tcp_conninfo(c, "localhost", "scramuser", "", "certdb") + ssl, &err) ==
          nullptr);
    CHECK(err.find("certificate authentication failed") != std::string::npos);
    CHECK(try_connect(tcp_conninfo(c, "localhost", "md5user", "", "certdb") +
                          libpq_ssl("verify-full", k.ca_cert, k.unknown_cert, k.unknown_key),
                      &err) == nullptr);
    CHECK(err.find("certificate authentication failed") != std::string::npos);
    CHECK(
        try_connect(tcp_conninfo(c, "localhost", "md5user", "", "certdb") +
                        libpq_ssl("verify-full", k.ca_cert, k.md5user_ca2_cert, k.md5user_ca2_key),
                    &err) == nullptr);
    CHECK(try_connect(tcp_conninfo(c, "localhost", "md5user", "md5pass", "certdb") +
                          libpq_ssl("verify-full", k.ca_cert),
                      &err) == nullptr);
    CHECK(err.find("connection requires a valid client certificate") != std::string::npos);
  }

  TEST_CASE("nossl cluster: ssl is off and an SSLRequest is answered N") {
    const Cluster& c = nossl_cluster();
    Conn su = connect(superuser_conninfo(c, "postgres"));
    CHECK(scalar(su.get(), "SHOW ssl") == "off");
    Raw r = Raw::tcp(c.port);
    CHECK(send_ssl_request(r) == 'N');
    TlsRaw t = TlsRaw::connect(c.port);
    CHECK_FALSE(t.ok());
    CHECK(t.ssl_answer() == 'N');
    CHECK(t.error().find("answered N") != std::string::npos);
    std::string err;
    CHECK(try_connect(tcp_conninfo(c, "localhost", "md5user", "md5pass") + libpq_ssl("require"),
                      &err) == nullptr);
    Conn prefer = connect(tcp_conninfo(c, "localhost", "md5user", "md5pass") + libpq_ssl("prefer"));
    CHECK(PQsslInUse(prefer.get()) == 0);
  }

  TEST_CASE("raw TLS client: SSLRequest, handshake, md5 / SCRAM-PLUS login, query") {
    const Cluster& c = ssl_cluster();
    const Certs& k = certs();
    TlsOptions o;
    o.ca_file = k.ca_cert;
    o.verify_host = "localhost";
    TlsRaw t = TlsRaw::connect(c.port, o);
    REQUIRE_MESSAGE(t.ok(), t.error());
    CHECK(t.ssl_answer() == 'S');
    CHECK(t.version() == "TLSv1.3");
    CHECK(t.peer_subject() == "CN=localhost");
    CHECK(t.alpn() == "");  // PostgreSQL 15 offers no ALPN
    CHECK(t.server_end_point().size() == 32);
    CHECK(t.login("md5user", "testdb", "md5pass") == "");
    CHECK(t.sasl_mechanism() == "");
    std::string v;
    CHECK(t.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &v) == "");
    CHECK(v == "t");
    CHECK(t.query("SELECT 1/0").rfind("22012:", 0) == 0);
    CHECK(t.query("SELECT 2", &v) == "");
    CHECK(v == "2");
    t.close_notify();
    CHECK(t.wait_closed(5));

    for (bool plus : {false, true}) {
      CAPTURE(plus);
      TlsRaw s = TlsRaw::connect(c.port, o);
      REQUIRE_MESSAGE(s.ok(), s.error());
      CHECK(s.login("scramuser", "testdb", "scrampass", plus) == "");
      CHECK(s.sasl_mechanism() == (plus ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256"));
      CHECK(s.query("SELECT current_user", &v) == "");
      CHECK(v == "scramuser");
    }
    TlsRaw bad = TlsRaw::connect(c.port, o);
    REQUIRE(bad.ok());
    CHECK(bad.login("scramuser", "testdb", "nope", true).rfind("28P01:", 0) == 0);

    // Client certificate over the raw client, TLS 1.2 forced.
    TlsOptions oc = o;
    oc.cert_file = k.md5user_cert;
    oc.key_file = k.md5user_key;
    oc.max_version = 0x0303;
    TlsRaw cc = TlsRaw::connect(c.port, oc);
    REQUIRE_MESSAGE(cc.ok(), cc.error());
    CHECK(cc.version() == "TLSv1.2");
    CHECK(cc.login("md5user", "certdb", "") == "");

    // Verification failures: the wrong CA, the wrong name.
    TlsOptions o2 = o;
    o2.ca_file = k.ca2_cert;
    TlsRaw f = TlsRaw::connect(c.port, o2);
    CHECK_FALSE(f.ok());
    CHECK(f.error().find("certificate verify failed") != std::string::npos);
    TlsOptions o3 = o;
    o3.verify_host = "wrong.invalid";
    TlsRaw g = TlsRaw::connect(c.port, o3);
    CHECK_FALSE(g.ok());
    CHECK(g.error().find("hostname mismatch") != std::string::npos);
    TlsOptions o4 = o;
    o4.verify_host = "127.0.0.1";
    CHECK(TlsRaw::connect(c.port, o4).ok());
  }

  TEST_CASE("raw TLS client: ClientHello bytes, direct TLS refused by PostgreSQL 15") {
    const Cluster& c = ssl_cluster();
    std::string hello = client_hello();
    REQUIRE(hello.size() > 5);
    CHECK(hello[0] == 0x16);  // handshake record
    CHECK(hello[5] == 0x01);  // ClientHello
    CHECK(hello.find("postgresql") != std::string::npos);
    TlsOptions no_alpn;
    no_alpn.alpn.clear();
    CHECK(client_hello(no_alpn).find("postgresql") == std::string::npos);

    // PostgreSQL 15 reads a ClientHello as a startup packet and hangs up.
    TlsOptions d;
    d.direct = true;
    TlsRaw t = TlsRaw::connect(c.port, d);
    CHECK_FALSE(t.ok());
    CHECK(t.ssl_answer() == 0);

    // Plain bytes after an SSLRequest: PostgreSQL 15 answers S, handshakes, and only then
    // refuses (08P01) the unencrypted startup packet it had buffered (CVE-2021-23214's fix).
    Raw r = Raw::tcp(c.port);
    REQUIRE(r.send_bytes(ssl_request_packet() +
                         startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
    char answer = 0;
    REQUIRE(recv(r.fd(), &answer, 1, 0) == 1);
    CHECK(answer == 'S');
    TlsOptions after_s;
    after_s.direct = true;  // the SSLRequest is done: the handshake comes next
    TlsRaw late = TlsRaw::start(std::move(r), after_s);
    REQUIRE_MESSAGE(late.ok(), late.error());
    Msg m;
    REQUIRE(late.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    CHECK(m.field('C') == "08P01");
    CHECK(m.field('M') == "received unencrypted data after SSL request");
    CHECK(late.wait_closed(5));

    // Half a ClientHello after S: no answer yet; then the rest finishes the handshake.
    Raw h = Raw::tcp(c.port);
    REQUIRE(send_ssl_request(h) == 'S');
    REQUIRE(h.send_bytes(hello.substr(0, hello.size() / 2)));
    CHECK_FALSE(h.wait_closed(0.3));
    CHECK(h.pending().empty());
  }

  TEST_CASE("python client: SSLRequest mode against PostgreSQL 15") {
    const Cluster& c = ssl_cluster();
    const Certs& k = certs();
    std::string ca = " --ca " + shell_quote(k.ca_cert);
    CmdResult r = python_client(c.port, "md5user", "md5pass", "testdb", ca);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("tls TLSv1.3 alpn=none") != std::string::npos);
    CHECK(r.output.find("row 1") != std::string::npos);

    r = python_client(c.port, "scramuser", "scrampass", "testdb",
                      ca + " --channel-binding --sql " +
                          shell_quote("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"));
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("row t") != std::string::npos);

    r = python_client(c.port, "md5user", "", "certdb",
                      ca + " --cert " + shell_quote(k.md5user_cert) + " --key " +
                          shell_quote(k.md5user_key) + " --sql 'SELECT current_user'");
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("row md5user") != std::string::npos);

    r = python_client(c.port, "md5user", "wrong", "testdb", ca);
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("error 28P01") != std::string::npos);

    r = python_client(c.port, "md5user", "md5pass", "testdb", " --ca " + shell_quote(k.ca2_cert));
    INFO(r.output);
    CHECK(r.exit_code == 3);
    CHECK(r.output.find("fail handshake failed") != std::string::npos);

    r = python_client(nossl_cluster().port, "md5user", "md5pass", "testdb", ca);
    INFO(r.output);
    CHECK(r.exit_code == 3);
    CHECK(r.output.find("fail server answered b'N'") != std::string::npos);

    // Direct mode: PostgreSQL 15 has no direct TLS and hangs up (pgsluice's tests use it).
    r = python_client(c.port, "md5user", "md5pass", "testdb", ca + " --direct");
    INFO(r.output);
    CHECK(r.exit_code == 3);
  }

  TEST_CASE("start_cluster + Options::pg_port: same secrets, pgsluice's userlist logs in") {
    ClusterSetup setup;
    setup.tag = "pg-extra";
    setup.databases = {"otherdb"};
    setup.setup_sql =
        "CREATE TABLE marker (v int); INSERT INTO marker VALUES (42);"
        " GRANT SELECT ON marker TO md5user, scramuser";
    Cluster extra = start_cluster(setup);
    CHECK(extra.port != cluster().port);
    CHECK(extra.scram_secret == cluster().scram_secret);
    for (std::string auth : {"md5", "scram-sha-256"}) {
      CAPTURE(auth);
      Options o;
      o.auth_type = auth;
      o.pg_port = extra.port;
      Pooler p(o);
      // md5user's secret is md5: it logs in only with auth_type md5.
      std::string user = auth == "md5" ? "md5user" : "scramuser";
      Conn m = connect(p.conninfo(user, user == "md5user" ? "md5pass" : "scrampass"));
      CHECK(scalar(m.get(), "SHOW port") == std::to_string(extra.port));
      CHECK(scalar(m.get(), "SELECT v FROM marker") == "42");
      Conn s = connect(p.conninfo("scramuser", "scrampass"));
      CHECK(scalar(s.get(), "SELECT current_user") == "scramuser");
      Conn other = connect(p.conninfo("scramuser", "scrampass", "otherdb"));
      CHECK(scalar(other.get(), "SELECT current_database()") == "otherdb");
    }
  }
}

}  // namespace it::tls
