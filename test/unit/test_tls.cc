// Unit tests for TLS contexts from settings (tls.h): protocol lists, key/certificate
// checks, context reuse across reloads, and a handshake through the library's contexts.
#include <doctest/doctest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "config.h"
#include "tls.h"

namespace pgsluice {
namespace {

// A temp dir with two self-signed key pairs made by the openssl command.
struct Certs {
  std::string dir;
  std::string cert1, key1, cert2, key2;
  Certs() {
    char tmpl[] = "/tmp/pgsluice_tls_unit_XXXXXX";
    dir = ::mkdtemp(tmpl);
    for (int i = 1; i <= 2; i++) {
      std::string c = dir + "/c" + std::to_string(i) + ".pem";
      std::string k = dir + "/k" + std::to_string(i) + ".pem";
      std::string cmd =
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
          "-days 2 -subj /CN=localhost -keyout " +
          k + " -out " + c + " >/dev/null 2>&1";
      REQUIRE(std::system(cmd.c_str()) == 0);
      (i == 1 ? cert1 : cert2) = c;
      (i == 1 ? key1 : key2) = k;
    }
  }
  ~Certs() {
    std::string cmd = "rm -rf " + dir;
    (void)std::system(cmd.c_str());
  }
};

Certs& certs() {
  static Certs c;
  return c;
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("tls: protocol lists as PgBouncer writes them") {
  auto v = parse_tls_protocols("secure");
  REQUIRE(v);
  CHECK(v->min == 0x0303);
  CHECK(v->max == 0x0304);
  CHECK(v->holes == 0);
  v = parse_tls_protocols("all");
  REQUIRE(v);
  CHECK(v->min == 0x0301);
  CHECK(v->max == 0x0304);
  v = parse_tls_protocols("tlsv1.0, tlsv1.2");
  REQUIRE(v);
  CHECK(v->min == 0x0301);
  CHECK(v->max == 0x0303);
  CHECK(v->holes == (1u << 1));  // TLS 1.1 off inside the range
  v = parse_tls_protocols("!tlsv1.0:!tlsv1.1");
  REQUIRE(v);
  CHECK(v->min == 0x0303);
  CHECK(v->max == 0x0304);
  v = parse_tls_protocols("TLSv1.3");
  REQUIRE(v);
  CHECK(v->min == 0x0304);
  // A version newer than today's is read by rule, not by a table: no code change needed.
  v = parse_tls_protocols("tlsv1.4");
  REQUIRE(v);
  CHECK(v->min == 0x0305);
  CHECK_FALSE(parse_tls_protocols("sslv3"));
  CHECK_FALSE(parse_tls_protocols("!all"));
  CHECK_FALSE(parse_tls_protocols(""));
}

TEST_CASE("tls: a context needs a key and certificate that match, and names the setting") {
  TlsSettings s;
  s.mode = SslMode::Require;
  auto r = build_tls_context(s, TlsRole::Accept);
  CHECK_FALSE(r);
  CHECK(r.status().message().find("client_tls_key_file") != std::string::npos);

  s.cert_file = certs().cert1;
  s.key_file = certs().key2;  // another pair's key
  r = build_tls_context(s, TlsRole::Accept);
  REQUIRE_FALSE(r);
  CHECK(r.status().message().find("does not match") != std::string::npos);
  CHECK(r.status().message().find("PRIVATE") == std::string::npos);

  s.key_file = certs().key1;
  r = build_tls_context(s, TlsRole::Accept);
  REQUIRE(r);
  CHECK((*r)->get() != nullptr);

  s.key_file = certs().dir + "/missing.pem";
  r = build_tls_context(s, TlsRole::Accept);
  REQUIRE_FALSE(r);
  CHECK(r.status().message().find("cannot open") != std::string::npos);

  s.key_file = certs().key1;
  s.ciphers = "NO-SUCH-CIPHER";
  CHECK_FALSE(build_tls_context(s, TlsRole::Accept));
  s.ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256";
  CHECK(build_tls_context(s, TlsRole::Accept));
  s.tls13_ciphers = "TLS_NOPE";
  CHECK_FALSE(build_tls_context(s, TlsRole::Accept));
  s.tls13_ciphers = "TLS_CHACHA20_POLY1305_SHA256";
  CHECK(build_tls_context(s, TlsRole::Accept));
  s.ecdhcurve = "no-such-curve";
  CHECK_FALSE(build_tls_context(s, TlsRole::Accept));
  s.ecdhcurve = "X25519:P-256";
  CHECK(build_tls_context(s, TlsRole::Accept));
  s.protocols = "tlsv1.9";  // parsed, but OpenSSL has no such version
  CHECK_FALSE(build_tls_context(s, TlsRole::Accept));
}

TEST_CASE("tls: make_tls_contexts keeps an unchanged side's context and rebuilds a changed one") {
  Config c;
  c.client_tls_sslmode = "require";
  c.client_tls_cert_file = certs().dir + "/live-cert.pem";
  c.client_tls_key_file = certs().dir + "/live-key.pem";
  c.server_tls_sslmode = "prefer";
  std::ofstream(c.client_tls_cert_file) << slurp(certs().cert1);
  std::ofstream(c.client_tls_key_file) << slurp(certs().key1);
  auto a = make_tls_contexts(c, nullptr);
  REQUIRE(a);
  REQUIRE((*a)->client);
  REQUIRE((*a)->server);
  auto b = make_tls_contexts(c, a->get());
  REQUIRE(b);
  CHECK((*b)->client == (*a)->client);
  CHECK((*b)->server == (*a)->server);

  // The files change (rotation): the client side is new, the server side stays.
  std::ofstream(c.client_tls_cert_file) << slurp(certs().cert2);
  std::ofstream(c.client_tls_key_file) << slurp(certs().key2);
  auto d = make_tls_contexts(c, b->get());
  REQUIRE(d);
  CHECK((*d)->client != (*b)->client);
  CHECK((*d)->server == (*b)->server);

  // A key that does not match: refused as a whole (the caller keeps the running one).
  std::ofstream(c.client_tls_key_file) << slurp(certs().key1);
  CHECK_FALSE(make_tls_contexts(c, d->get()));

  // PgBouncer's rules.
  Config e;
  e.client_tls_sslmode = "verify-full";
  e.client_tls_cert_file = certs().cert1;
  e.client_tls_key_file = certs().key1;
  auto r = make_tls_contexts(e, nullptr);
  REQUIRE_FALSE(r);
  CHECK(r.status().message().find("client_tls_ca_file") != std::string::npos);
  Config f;
  f.auth_type = AuthType::Cert;
  f.client_tls_sslmode = "require";
  f.client_tls_cert_file = certs().cert1;
  f.client_tls_key_file = certs().key1;
  CHECK_FALSE(make_tls_contexts(f, nullptr));
  Config g;  // defaults: client disable, server prefer
  auto gr = make_tls_contexts(g, nullptr);
  REQUIRE(gr);
  CHECK_FALSE((*gr)->client);
  CHECK((*gr)->server);
}

TEST_CASE("tls: the two sides' contexts complete a handshake; description and ALPN") {
  TlsSettings ss;
  ss.mode = SslMode::Require;
  ss.cert_file = certs().cert1;
  ss.key_file = certs().key1;
  auto acc = build_tls_context(ss, TlsRole::Accept);
  REQUIRE(acc);
  TlsSettings cs;
  cs.mode = SslMode::Require;
  auto con = build_tls_context(cs, TlsRole::Connect);
  REQUIRE(con);
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  SSL* a = SSL_new((*acc)->get());
  SSL* b = SSL_new((*con)->get());
  SSL_set_fd(a, sv[0]);
  SSL_set_fd(b, sv[1]);
  SSL_set_accept_state(a);
  SSL_set_connect_state(b);
  int ra = 0;
  // Run the client side in a child process to avoid deadlock on blocking sockets.
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int r = SSL_connect(b);
    _exit(r == 1 ? 0 : 1);
  }
  ra = SSL_accept(a);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(ra == 1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  std::string d = tls_description(a);
  CHECK(d.rfind("TLSv1.3/TLS_", 0) == 0);
  CHECK(d.find("/ECDH=") != std::string::npos);
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(a, &alpn, &alpn_len);
  CHECK(std::string(reinterpret_cast<const char*>(alpn), alpn_len) == "postgresql");
  CHECK(tls_description(nullptr).empty());
  SSL_free(a);
  SSL_free(b);
  close(sv[0]);
  close(sv[1]);
}

}  // namespace pgsluice
