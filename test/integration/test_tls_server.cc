// pgsluice as a TLS client of PostgreSQL (server_tls_*): each sslmode against an ssl=on and
// an ssl=off cluster, certificate checks, client certificates, SCRAM-SHA-256-PLUS, refusal of
// plain-text bytes after 'S', reconnect on a TLS settings change, direct TLS, cancel, the tls
// column and metrics.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"
#include "integration/tls_fixture.h"

using namespace it;  // NOLINT: test file

namespace {

// pgsluice in front of PostgreSQL at `pg_port` with these [pgbouncer] lines added.
Options tls_options(int pg_port, const std::string& extra) {
  Options o;
  o.pg_port = pg_port;
  o.extra_pgbouncer = extra;
  return o;
}

std::string admin_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// Whether this session's backend uses TLS (pg_stat_ssl), "t" or "f".
std::string backend_ssl(PGconn* c) {
  return scalar(c, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
}

// The tls column of every row of SHOW SERVERS.
std::vector<std::string> servers_tls(const Pooler& p) {
  Conn admin = connect(admin_conninfo(p));
  Result r = exec_ok(admin.get(), "SHOW SERVERS");
  int col = PQfnumber(r.get(), "tls");
  REQUIRE(col >= 0);
  std::vector<std::string> out;
  for (int i = 0; i < PQntuples(r.get()); i++) out.emplace_back(PQgetvalue(r.get(), i, col));
  return out;
}

// A login through p that must fail: the error libpq reports.
std::string login_error(const Pooler& p, const std::string& user = "md5user",
                        const std::string& password = "md5pass", const std::string& db = "testdb") {
  std::string err;
  Conn c = try_connect(p.conninfo(user, password, db), &err);
  if (c != nullptr) {
    // A pool that already has the server's welcome lets the client in first.
    std::string e;
    if (exec_nothrow(c.get(), "SELECT 1", &e)) return "";
    return e;
  }
  return err;
}

// Stands where PostgreSQL would and answers the SSLRequest with `answer` bytes, then keeps
// the connection open (so only pgsluice's own checks can end the login).
class SslAnswerServer {
 public:
  explicit SslAnswerServer(std::string answer) : answer_(std::move(answer)) {
    lfd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(lfd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(lfd_, 16) == 0);
    socklen_t len = sizeof a;
    REQUIRE(getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    th_ = std::thread([this] { run(); });
  }
  ~SslAnswerServer() {
    stop_ = true;
    th_.join();
    for (int fd : fds_) close(fd);
    close(lfd_);
  }
  int port() const { return port_; }
  int ssl_requests() const { return ssl_requests_.load(); }
  // Bytes that came after the SSLRequest (a startup packet would show here).
  size_t later_bytes() const { return later_bytes_.load(); }

 private:
  void run() {
    while (!stop_) {
      pollfd pfd{lfd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) {
        for (int fd : fds_) {
          char buf[4096];
          ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n > 0) later_bytes_ += static_cast<size_t>(n);
        }
        continue;
      }
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) continue;
      fds_.push_back(fd);
      timeval tv{5, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char req[8];
      size_t got = 0;
      while (got < sizeof req) {
        ssize_t n = recv(fd, req + got, sizeof req - got, 0);
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      if (got == sizeof req && std::string(req, 8) == tls::ssl_request_packet()) ssl_requests_++;
      (void)!send(fd, answer_.data(), answer_.size(), MSG_NOSIGNAL);
    }
  }
  std::string answer_;
  int lfd_ = -1;
  int port_ = 0;
  std::thread th_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ssl_requests_{0};
  std::atomic<size_t> later_bytes_{0};
  std::vector<int> fds_;
};

// Stands where a PostgreSQL 17 would for direct TLS: a TLS handshake at once (no SSLRequest)
// with the test server certificate, ALPN "postgresql" selected when `select_alpn`, then a
// trusting login (AuthenticationOk and a welcome) read and written over TLS.
class DirectTlsServer {
 public:
  explicit DirectTlsServer(bool select_alpn) : select_alpn_(select_alpn) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    REQUIRE(ctx_ != nullptr);
    REQUIRE(SSL_CTX_use_certificate_chain_file(ctx_, tls::certs().server_cert.c_str()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(ctx_, tls::certs().server_key.c_str(), SSL_FILETYPE_PEM) ==
            1);
    SSL_CTX_set_alpn_select_cb(ctx_, &DirectTlsServer::alpn_cb, this);
    lfd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(lfd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(lfd_, 16) == 0);
    socklen_t len = sizeof a;
    REQUIRE(getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    th_ = std::thread([this] { run(); });
  }
  ~DirectTlsServer() {
    stop_ = true;
    th_.join();
    for (SSL* s : ssls_) SSL_free(s);
    for (int fd : fds_) close(fd);
    close(lfd_);
    SSL_CTX_free(ctx_);
  }
  int port() const { return port_; }
  int handshakes() const { return handshakes_.load(); }
  int startups() const { return startups_.load(); }  // startup packets read over TLS
  bool offered_alpn() const { return offered_alpn_.load(); }

 private:
  static int alpn_cb(SSL*, const unsigned char** out, unsigned char* outlen,
                     const unsigned char* in, unsigned int inlen, void* arg) {
    auto* self = static_cast<DirectTlsServer*>(arg);
    std::string offered(reinterpret_cast<const char*>(in), inlen);
    if (offered.find("\x0apostgresql") != std::string::npos) self->offered_alpn_ = true;
    if (!self->select_alpn_) return SSL_TLSEXT_ERR_NOACK;
    size_t at = offered.find("\x0apostgresql");
    if (at == std::string::npos) return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = in + at + 1;
    *outlen = 10;
    return SSL_TLSEXT_ERR_OK;
  }
  static bool read_n(SSL* s, std::string& out, size_t n) {
    out.clear();
    while (out.size() < n) {
      char buf[4096];
      int want = static_cast<int>(std::min(sizeof buf, n - out.size()));
      int got = SSL_read(s, buf, want);
      if (got <= 0) return false;
      out.append(buf, static_cast<size_t>(got));
    }
    return true;
  }
  void serve(int fd) {
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL* s = SSL_new(ctx_);
    ssls_.push_back(s);
    SSL_set_fd(s, fd);
    if (SSL_accept(s) != 1) {
      ERR_clear_error();
      return;
    }
    handshakes_++;
    std::string head, body;
    if (!read_n(s, head, 4)) return;
    uint32_t len = static_cast<uint32_t>(static_cast<uint8_t>(head[0])) << 24 |
                   static_cast<uint32_t>(static_cast<uint8_t>(head[1])) << 16 |
                   static_cast<uint32_t>(static_cast<uint8_t>(head[2])) << 8 |
                   static_cast<uint32_t>(static_cast<uint8_t>(head[3]));
    if (len < 8 || len > 10000 || !read_n(s, body, len - 4)) return;
    startups_++;
    std::string w = msg('R', be32(0));
    for (auto [k, v] :
         std::vector<std::pair<const char*, const char*>>{{"server_version", "17.0"},
                                                          {"server_encoding", "UTF8"},
                                                          {"client_encoding", "UTF8"},
                                                          {"DateStyle", "ISO, MDY"},
                                                          {"TimeZone", "UTC"},
                                                          {"integer_datetimes", "on"},
                                                          {"standard_conforming_strings", "on"}})
      w += msg('S', cstr(k) + cstr(v));
    w += msg('K', be32(4242) + be32(1234));
    w += msg('Z', "I");
    SSL_write(s, w.data(), static_cast<int>(w.size()));
  }
  void run() {
    while (!stop_) {
      pollfd pfd{lfd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) continue;
      fds_.push_back(fd);
      serve(fd);
    }
  }
  bool select_alpn_;
  SSL_CTX* ctx_ = nullptr;
  int lfd_ = -1;
  int port_ = 0;
  std::thread th_;
  std::atomic<bool> stop_{false};
  std::atomic<int> handshakes_{0};
  std::atomic<int> startups_{0};
  std::atomic<bool> offered_alpn_{false};
  std::vector<int> fds_;
  std::vector<SSL*> ssls_;
};

// pgsluice (trust for clients) in front of a fake server, as plainuser/plainpass.
Options fake_options(int port, const std::string& mode) {
  Options o;
  o.auth_type = "trust";
  o.databases = "fakedb = host=127.0.0.1 port=" + std::to_string(port) +
                " dbname=fakedb user=plainuser password=plainpass\n";
  o.extra_pgbouncer = "server_tls_sslmode = " + mode + "\nserver_connect_timeout = 5\n";
  return o;
}

// A raw client login to fakedb: the message that ends it ('E', 'Z'), or type 0.
Msg fake_login(const Pooler& p) {
  Raw r = Raw::tcp(p.port(), 10);
  REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "fakedb"}})));
  for (int i = 0; i < 32; i++) {
    Msg m;
    if (r.read_msg(&m, 10) != ReadStatus::Ok) return Msg{};
    if (m.type == 'E' || m.type == 'Z') return m;
  }
  return Msg{};
}

long long metric(const Pooler& p, int mport, const std::string& name);

}  // namespace

TEST_SUITE("tls_server") {
  TEST_CASE("tls server: prefer (the default) uses TLS with an ssl=on server; tls column") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    Pooler p(tls_options(tls::ssl_cluster().port, ""));
    Conn c = connect(p.conninfo());
    CHECK(backend_ssl(c.get()) == "t");
    std::vector<std::string> t = servers_tls(p);
    REQUIRE(!t.empty());
    for (const std::string& s : t) {
      CAPTURE(s);
      CHECK(s.rfind("TLSv1.3/TLS_", 0) == 0);
      CHECK(s.find("/ECDH=") != std::string::npos);
    }
    // Against the ssl=off cluster prefer goes on in plain text; the column stays empty.
    Pooler q(tls_options(tls::nossl_cluster().port, ""));
    Conn d = connect(q.conninfo());
    CHECK(backend_ssl(d.get()) == "f");
    for (const std::string& s : servers_tls(q)) CHECK(s.empty());
  }

  TEST_CASE("tls server: each server_tls_sslmode against ssl=on and ssl=off servers") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    const tls::Certs& k = tls::certs();
    struct Case {
      const char* mode;
      bool ssl_server;
      bool ok;               // the login succeeds
      const char* in_error;  // part of the client's error when it does not
    };
    const Case cases[] = {
        // ssl=on, whose pg_hba refuses TCP logins without TLS (hostnossl reject).
        {"disable", true, false, "no encryption"},
        {"allow", true, true, ""},
        {"prefer", true, true, ""},
        {"require", true, true, ""},
        // ssl=off: only the modes that allow plain text log in.
        {"disable", false, true, ""},
        {"allow", false, true, ""},
        {"prefer", false, true, ""},
        {"require", false, false, "does not support TLS"},
        {"verify-ca", false, false, "does not support TLS"},
        {"verify-full", false, false, "does not support TLS"},
    };
    for (const Case& cs : cases) {
      CAPTURE(cs.mode);
      CAPTURE(cs.ssl_server);
      int port = cs.ssl_server ? tls::ssl_cluster().port : tls::nossl_cluster().port;
      std::string extra = std::string("server_tls_sslmode = ") + cs.mode + "\n";
      if (std::string(cs.mode).rfind("verify", 0) == 0)
        extra += "server_tls_ca_file = " + k.ca_cert + "\n";
      Pooler p(tls_options(port, extra));
      if (cs.ok) {
        Conn c = connect(p.conninfo());
        bool want_tls = cs.ssl_server && std::string(cs.mode) != "disable";
        CHECK(backend_ssl(c.get()) == (want_tls ? "t" : "f"));
      } else {
        std::string err = login_error(p);
        CHECK_MESSAGE(err.find(cs.in_error) != std::string::npos, err);
        if (!cs.ssl_server) {
          CHECK(p.log().find("server login failed: server does not support TLS, and "
                             "server_tls_sslmode = " +
                             std::string(cs.mode) + " requires it") != std::string::npos);
        }
      }
    }
  }

  TEST_CASE("tls server: verify-ca checks the chain, verify-full also the host name") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    const tls::Certs& k = tls::certs();
    auto pooler = [&](int port, const std::string& mode, const std::string& ca,
                      const std::string& host) {
      Options o;
      o.databases = "testdb = host=" + host + " port=" + std::to_string(port) + " dbname=testdb\n";
      o.extra_pgbouncer = "server_tls_sslmode = " + mode + "\nserver_tls_ca_file = " + ca + "\n";
      return o;
    };
    int good = tls::ssl_cluster().port;
    int wrong = tls::wrong_name_cluster().port;
    {
      // The certificate names localhost and 127.0.0.1: both pass verify-full.
      for (const char* host : {"127.0.0.1", "localhost"}) {
        CAPTURE(host);
        Pooler p(pooler(good, "verify-full", k.ca_cert, host));
        Conn c = connect(p.conninfo());
        CHECK(backend_ssl(c.get()) == "t");
      }
    }
    {
      Pooler p(pooler(wrong, "verify-ca", k.ca_cert, "127.0.0.1"));
      Conn c = connect(p.conninfo());
      CHECK(backend_ssl(c.get()) == "t");
    }
    {
      // wrong.invalid is not 127.0.0.1: refused in the handshake, before any password.
      Pooler p(pooler(wrong, "verify-full", k.ca_cert, "127.0.0.1"));
      std::string err = login_error(p);
      CHECK_MESSAGE(err.find("certificate verify failed") != std::string::npos, err);
      CHECK(p.log().find("TLS handshake with server failed: certificate verify failed") !=
            std::string::npos);
    }
    {
      // Another CA: the chain does not verify (verify-ca and verify-full).
      for (const char* mode : {"verify-ca", "verify-full"}) {
        CAPTURE(mode);
        Pooler p(pooler(good, mode, k.ca2_cert, "127.0.0.1"));
        std::string err = login_error(p);
        CHECK_MESSAGE(err.find("certificate verify failed") != std::string::npos, err);
      }
      // require does not check the certificate at all.
      Pooler p(pooler(good, "require", k.ca2_cert, "127.0.0.1"));
      Conn c = connect(p.conninfo());
      CHECK(backend_ssl(c.get()) == "t");
    }
  }

  TEST_CASE("tls server: server_tls_cert_file presents a client certificate (pg_hba cert)") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    const tls::Certs& k = tls::certs();
    std::string pg = "host=127.0.0.1 port=" + std::to_string(tls::ssl_cluster().port);
    Options o;
    o.databases = "certdb = " + pg + " dbname=certdb\n";
    o.extra_pgbouncer = "server_tls_sslmode = verify-full\nserver_tls_ca_file = " + k.ca_cert +
                        "\nserver_tls_cert_file = " + k.md5user_cert +
                        "\nserver_tls_key_file = " + k.md5user_key + "\n";
    {
      Pooler p(o);
      Conn c = connect(p.conninfo("md5user", "md5pass", "certdb"));
      CHECK(backend_ssl(c.get()) == "t");
      CHECK(scalar(c.get(), "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()") ==
            "/CN=md5user");
    }
    {
      // Without a client certificate the cert line refuses the login.
      Options n = o;
      n.extra_pgbouncer =
          "server_tls_sslmode = verify-full\nserver_tls_ca_file = " + k.ca_cert + "\n";
      Pooler p(n);
      std::string err = login_error(p, "md5user", "md5pass", "certdb");
      CHECK_MESSAGE(!err.empty(), "logged in to a cert line without a certificate");
    }
  }

  TEST_CASE("tls server: SCRAM-SHA-256-PLUS over TLS, for passwords and pass-through") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    Options o = tls_options(tls::ssl_cluster().port, "verbose = 1\n");
    o.auth_type = "scram-sha-256";
    Pooler p(o);
    // plainuser: pgsluice has the password. scramuser: a SCRAM secret, the client's keys
    // are passed through.
    Conn a = connect(p.conninfo("plainuser", "plainpass"));
    CHECK(backend_ssl(a.get()) == "t");
    Conn b = connect(p.conninfo("scramuser", "scrampass"));
    CHECK(backend_ssl(b.get()) == "t");
    CHECK(scalar(b.get(), "SELECT current_user") == "scramuser");
    std::string log = p.log();
    CHECK(log.find("SASL SCRAM-SHA-256-PLUS") != std::string::npos);
    CHECK(log.find("SASL SCRAM-SHA-256\n") == std::string::npos);
    CHECK(log.find("server login failed") == std::string::npos);

    // In plain text: SCRAM-SHA-256 (gs2 "n").
    Options q = tls_options(tls::nossl_cluster().port, "verbose = 1\n");
    q.auth_type = "scram-sha-256";
    Pooler pq(q);
    Conn c = connect(pq.conninfo("scramuser", "scrampass"));
    CHECK(backend_ssl(c.get()) == "f");
    CHECK(pq.log().find("SASL SCRAM-SHA-256-PLUS") == std::string::npos);
    CHECK(pq.log().find("SASL SCRAM-SHA-256") != std::string::npos);
  }

  TEST_CASE("tls server: bytes after the server's 'S' are refused; bad answers fail the login") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    struct Case {
      std::string answer;
      const char* mode;
      const char* why;
    };
    // 'S' and a plain-text AuthenticationOk in the same packet: what a man in the middle
    // would inject (CVE-2021-23222).
    std::string injected = "S" + msg('R', be32(0));
    const Case cases[] = {
        {injected, "prefer", "unencrypted data after its answer to SSLRequest"},
        {injected, "require", "unencrypted data after its answer to SSLRequest"},
        {"N" + msg('R', be32(0)), "prefer", "unencrypted data after its answer to SSLRequest"},
        {"X", "prefer", "bad answer to SSLRequest"},
        {"N", "require", "does not support TLS"},
    };
    for (const Case& cs : cases) {
      CAPTURE(cs.mode);
      CAPTURE(cs.why);
      SslAnswerServer fake(cs.answer);
      Pooler p(fake_options(fake.port(), cs.mode));
      auto t0 = Clock::now();
      Msg m = fake_login(p);
      CHECK(seconds_since(t0) < 4);
      CHECK_MESSAGE(m.type == 'E', "type " << int(m.type));
      CHECK_MESSAGE(m.field('M').find(cs.why) != std::string::npos, m.field('M'));
      CHECK(fake.ssl_requests() >= 1);
      sleep_ms(100);
      CHECK(fake.later_bytes() == 0);  // no startup packet, no password
    }
  }

  TEST_CASE("tls server: a changed server_tls setting reconnects idle servers; unchanged keeps") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    Options o = tls_options(tls::ssl_cluster().port, "");
    o.default_pool_size = 1;
    o.workers = 1;
    Pooler p(o);
    Conn c = connect(p.conninfo());
    std::string pid1 = scalar(c.get(), "SELECT pg_backend_pid()");
    Conn admin = connect(admin_conninfo(p));
    // A RELOAD that changes nothing keeps the server.
    exec_ok(admin.get(), "RELOAD");
    sleep_ms(1500);
    CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid1);
    // TLS 1.2 only: the idle server is closed (janitor or when taken), the next is TLS 1.2.
    exec_ok(admin.get(), "SET server_tls_protocols = 'tlsv1.2'");
    std::string pid2 = scalar(c.get(), "SELECT pg_backend_pid()");
    CHECK(pid2 != pid1);
    CHECK(scalar(c.get(), "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()") ==
          "TLSv1.2");
    std::vector<std::string> t = servers_tls(p);
    REQUIRE(t.size() == 1);
    CHECK(t[0].rfind("TLSv1.2/", 0) == 0);
    // A busy server closes at release: hold a transaction across the change.
    exec_ok(c.get(), "BEGIN");
    CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid2);
    exec_ok(admin.get(), "SET server_tls_protocols = 'secure'");
    CHECK(scalar(c.get(), "SELECT pg_backend_pid()") == pid2);  // the transaction goes on
    exec_ok(c.get(), "COMMIT");
    std::string pid3 = scalar(c.get(), "SELECT pg_backend_pid()");
    CHECK(pid3 != pid2);
    CHECK(scalar(c.get(), "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()") ==
          "TLSv1.3");
    // disable: the TLS server is replaced by a plain one (the ssl=on cluster refuses it).
    exec_ok(admin.get(), "SET server_tls_sslmode = disable");
    std::string e;
    CHECK_FALSE(exec_nothrow(c.get(), "SELECT 1", &e));
  }

  TEST_CASE("tls server: server_tls_direct against PostgreSQL 15 fails cleanly") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    for (const char* mode : {"prefer", "require"}) {
      CAPTURE(mode);
      Pooler p(tls_options(tls::ssl_cluster().port, std::string("server_tls_direct = 1\n") +
                                                        "server_tls_sslmode = " + mode + "\n"));
      auto t0 = Clock::now();
      std::string err = login_error(p);
      CHECK(seconds_since(t0) < 5);
      CHECK_MESSAGE(err.find("TLS handshake with server failed") != std::string::npos, err);
      CHECK(p.log().find("TLS handshake with server failed") != std::string::npos);
    }
    // disable ignores it.
    Pooler q(tls_options(tls::nossl_cluster().port,
                         "server_tls_direct = 1\nserver_tls_sslmode = disable\n"));
    Conn c = connect(q.conninfo());
    CHECK(backend_ssl(c.get()) == "f");
  }

  TEST_CASE("tls server: server_tls_direct opens with a ClientHello (ALPN postgresql)") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    const tls::Certs& k = tls::certs();
    std::string extra = "server_tls_direct = 1\nserver_tls_ca_file = " + k.ca_cert + "\n";
    {
      // A server that selects ALPN postgresql: the login goes on over TLS.
      DirectTlsServer fake(true);
      Options o = fake_options(fake.port(), "verify-full");
      o.extra_pgbouncer += extra;
      Pooler p(o);
      Msg m = fake_login(p);
      CHECK_MESSAGE(m.type == 'Z', m.field('M'));
      CHECK(fake.handshakes() == 1);
      CHECK(fake.startups() == 1);
      CHECK(fake.offered_alpn());
    }
    {
      // One that selects no ALPN is refused after the handshake, before the startup packet.
      DirectTlsServer fake(false);
      Options o = fake_options(fake.port(), "verify-full");
      o.extra_pgbouncer += extra;
      Pooler p(o);
      Msg m = fake_login(p);
      CHECK(m.type == 'E');
      CHECK_MESSAGE(m.field('M').find("ALPN") != std::string::npos, m.field('M'));
      // The fake's SSL_accept returns when it has read pgsluice's Finished, which may be
      // after the client already has pgsluice's error: wait for it rather than race it.
      CHECK(eventually([&] { return fake.handshakes() >= 1; }));
      sleep_ms(100);
      CHECK(fake.startups() == 0);
    }
  }

  TEST_CASE("tls server: cancel requests work with server_tls_sslmode = require") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    Pooler p(tls_options(tls::ssl_cluster().port, "server_tls_sslmode = require\n"));
    Conn c = connect(p.conninfo());
    CHECK(backend_ssl(c.get()) == "t");
    REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(20)") == 1);
    sleep_ms(300);
    auto t0 = Clock::now();
    PGcancel* cancel = PQgetCancel(c.get());
    char errbuf[256];
    CHECK(PQcancel(cancel, errbuf, sizeof errbuf) == 1);
    PQfreeCancel(cancel);
    std::string state;
    while (Result r{PQgetResult(c.get())}) {
      if (PQresultStatus(r.get()) == PGRES_FATAL_ERROR)
        state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    }
    CHECK(state == "57014");
    CHECK(seconds_since(t0) < 5);
    CHECK(scalar(c.get(), "SELECT 1") == "1");
  }

  TEST_CASE("tls server: metrics count handshakes and failures") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    int mport = free_port();
    const tls::Certs& k = tls::certs();
    std::string pg = "host=127.0.0.1 port=";
    Options o;
    o.databases = "testdb = " + pg + std::to_string(tls::ssl_cluster().port) +
                  " dbname=testdb\nwrongdb = " + pg +
                  std::to_string(tls::wrong_name_cluster().port) + " dbname=testdb\n";
    o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) +
                        "\nserver_tls_sslmode = verify-full\nserver_tls_ca_file = " + k.ca_cert +
                        "\n";
    Pooler p(o);
    Conn c = connect(p.conninfo());
    CHECK(backend_ssl(c.get()) == "t");
    CHECK_FALSE(login_error(p, "md5user", "md5pass", "wrongdb").empty());
    CHECK(metric(p, mport, "pgsluice_server_tls_handshakes_total") >= 1);
    CHECK(metric(p, mport, "pgsluice_server_tls_handshake_failures_total") >= 1);
  }

  TEST_CASE("tls server: server login time, plain text and TLS (figures)") {
    if (skip_in_direct_mode("server TLS is pgsluice's")) return;
    // Sequential server logins: each client holds its server in a transaction, so each one
    // makes pgsluice log in to PostgreSQL anew.
    constexpr int kLogins = 30;
    auto measure = [&](int port, const std::string& mode) {
      Options o = tls_options(port, "server_tls_sslmode = " + mode + "\n");
      o.default_pool_size = kLogins + 2;
      o.workers = 1;
      Pooler p(o);
      { Conn warm = connect(p.conninfo()); }  // the pool's welcome parameters
      std::vector<Conn> held;
      double cpu0 = cpu_seconds(p.pid());
      auto t0 = Clock::now();
      for (int i = 0; i < kLogins; i++) {
        held.push_back(connect(p.conninfo()));
        exec_ok(held.back().get(), "BEGIN");
        scalar(held.back().get(), "SELECT 1");
      }
      double wall_ms = seconds_since(t0) * 1000.0 / kLogins;
      double cpu_ms = (cpu_seconds(p.pid()) - cpu0) * 1000.0 / kLogins;
      return std::pair<double, double>(wall_ms, cpu_ms);
    };
    auto plain = measure(tls::nossl_cluster().port, "disable");
    auto tls_cost = measure(tls::ssl_cluster().port, "require");
    MESSAGE("per server login (with a client login and one query): plain "
            << plain.first << " ms wall, pgsluice CPU " << plain.second << " ms; TLS "
            << tls_cost.first << " ms wall, pgsluice CPU " << tls_cost.second << " ms");
    CHECK(tls_cost.first > 0);
  }
}

namespace {

long long metric(const Pooler&, int mport, const std::string& name) {
  Raw r = Raw::tcp(mport, 5);
  if (!r.send_bytes("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")) return -1;
  r.wait_closed(5);
  const std::string& text = r.pending();
  size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::atoll(text.c_str() + at + name.size() + 2);
}

}  // namespace
