// TLS test fixtures: openssl-made certificates, a PostgreSQL cluster with ssl=on, raw TLS clients.
#include "integration/tls_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <doctest/doctest.h>

namespace it::tls {

namespace {

bool postgres_owner(uid_t* uid, gid_t* gid) {
  if (geteuid() != 0) return false;
  struct passwd* pw = getpwnam("postgres");
  if (!pw) return false;
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return true;
}

// One shell script makes every file: a CA, then leaves signed by it. `leaf NAME CA CN EXT`
// writes NAME.key/NAME.crt with the extensions in EXT.
const char* kMakeCerts = R"SH(
set -e
cd "$1"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() {
  key "$1"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 -out "$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
serial=100
leaf() {
  key "$1"
  printf '%s\n' "$4" > "$1.ext"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  serial=$((serial + 1))
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -set_serial "$serial" \
    -days 3650 -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
srv='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid'
cli='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid'
ca ca "pgsluice test CA"
leaf server ca localhost "$srv
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf wrong ca wrong.invalid "$srv
subjectAltName=DNS:wrong.invalid"
leaf md5user ca md5user "$cli"
leaf scramuser ca scramuser "$cli"
leaf unknown ca nosuchuser "$cli"
ca ca2 "pgsluice test CA 2"
leaf server2 ca2 localhost "$srv
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf md5user_ca2 ca2 md5user "$cli"
cat ca.crt ca2.crt > both_ca.crt
key mismatched
chmod 0600 *.key
chmod 0644 *.crt
)SH";

Certs* make_certs() {
  auto* c = new Certs;
  c->dir = make_temp_dir("certs");
  auto r = run_shell("sh -c " + shell_quote(kMakeCerts) + " make-certs " + shell_quote(c->dir), 60);
  REQUIRE_MESSAGE(r.exit_code == 0, "making the test certificates failed:\n" << r.output);
  auto crt = [&](const char* n) { return c->dir + "/" + n + ".crt"; };
  auto key = [&](const char* n) { return c->dir + "/" + n + ".key"; };
  c->ca_cert = crt("ca"), c->ca_key = key("ca");
  c->server_cert = crt("server"), c->server_key = key("server");
  c->wrong_cert = crt("wrong"), c->wrong_key = key("wrong");
  c->md5user_cert = crt("md5user"), c->md5user_key = key("md5user");
  c->scramuser_cert = crt("scramuser"), c->scramuser_key = key("scramuser");
  c->unknown_cert = crt("unknown"), c->unknown_key = key("unknown");
  c->ca2_cert = crt("ca2"), c->ca2_key = key("ca2");
  c->server2_cert = crt("server2"), c->server2_key = key("server2");
  c->md5user_ca2_cert = crt("md5user_ca2"), c->md5user_ca2_key = key("md5user_ca2");
  c->both_ca = crt("both_ca");
  c->mismatched_key = key("mismatched");
  REQUIRE(chmod(c->dir.c_str(), 0755) == 0);
  uid_t uid = 0;
  gid_t gid = 0;
  if (postgres_owner(&uid, &gid)) {
    r = run_shell("chown -R postgres:postgres " + shell_quote(c->dir));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }
  return c;
}

std::string openssl_errors() {
  std::string s;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!s.empty()) s += "; ";
    s += buf;
  }
  return s;
}

std::string b64(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(raw.data()),
                          static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string unb64(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return "";
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return "";
  size_t pad = text.ends_with("==") ? 2 : text.ends_with("=") ? 1 : 0;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string hmac256(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string sha256(std::string_view data) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), out);
  return std::string(reinterpret_cast<char*>(out), sizeof out);
}

std::string md5_hex(std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_md5(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < len; ++i) {
    s.push_back(hex[out[i] >> 4]);
    s.push_back(hex[out[i] & 15]);
  }
  return s;
}

// "key=value" attribute of a SCRAM message ("" when absent).
std::string scram_attr(std::string_view m, char key) {
  size_t i = 0;
  while (i < m.size()) {
    size_t end = m.find(',', i);
    if (end == std::string_view::npos) end = m.size();
    if (end - i >= 2 && m[i] == key && m[i + 1] == '=')
      return std::string(m.substr(i + 2, end - i - 2));
    i = end + 1;
  }
  return "";
}

uint32_t auth_code(const Msg& m) {
  if (m.body.size() < 4) return 0xffffffffu;
  return (static_cast<uint32_t>(static_cast<uint8_t>(m.body[0])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(m.body[1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(m.body[2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(m.body[3]));
}

std::string error_text(const Msg& m) {
  return m.field('C') + ": " + m.field('M');
}

std::string alpn_wire(const std::vector<std::string>& protos) {
  std::string w;
  for (const auto& p : protos) {
    w.push_back(static_cast<char>(p.size()));
    w += p;
  }
  return w;
}

// Client context and connection for o; "" or the reason in *err.
bool make_ssl(const TlsOptions& o, SSL_CTX** ctx_out, SSL** ssl_out, std::string* err) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    *err = "SSL_CTX_new: " + openssl_errors();
    return false;
  }
  *ctx_out = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (o.max_version) SSL_CTX_set_max_proto_version(ctx, o.max_version);
  if (!o.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o.ca_file.c_str(), nullptr) != 1) {
      *err = "loading " + o.ca_file + ": " + openssl_errors();
      return false;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  if (!o.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      *err = "client certificate " + o.cert_file + ": " + openssl_errors();
      return false;
    }
  }
  if (!o.alpn.empty()) {
    std::string w = alpn_wire(o.alpn);
    if (SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const unsigned char*>(w.data()),
                                static_cast<unsigned int>(w.size())) != 0) {
      *err = "ALPN: " + openssl_errors();
      return false;
    }
  }
  SSL* ssl = SSL_new(ctx);
  if (!ssl) {
    *err = "SSL_new: " + openssl_errors();
    return false;
  }
  *ssl_out = ssl;
  if (!o.sni.empty()) SSL_set_tlsext_host_name(ssl, o.sni.c_str());
  if (!o.ca_file.empty() && !o.verify_host.empty()) {
    X509_VERIFY_PARAM* vp = SSL_get0_param(ssl);
    in_addr a4{};
    bool ip = inet_pton(AF_INET, o.verify_host.c_str(), &a4) == 1;
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, o.verify_host.c_str())
                : X509_VERIFY_PARAM_set1_host(vp, o.verify_host.c_str(), 0);
    if (ok != 1) {
      *err = "verify_host: " + openssl_errors();
      return false;
    }
  }
  return true;
}

// Reads exactly one byte from fd within timeout_s (0 on close, error or timeout).
char read_one_byte(int fd, double timeout_s) {
  auto t0 = Clock::now();
  for (;;) {
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) return 0;
    pollfd p{fd, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left * 1000) + 1);
    if (pr < 0 && errno != EINTR) return 0;
    if (pr <= 0) continue;
    char c = 0;
    ssize_t n = recv(fd, &c, 1, 0);
    if (n == 1) return c;
    if (n == 0) return 0;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 0;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Certificates

const Certs& certs() {
  static std::mutex mu;
  static Certs* c = nullptr;
  std::lock_guard<std::mutex> lk(mu);
  if (!c) {
    auto t0 = Clock::now();
    c = make_certs();
    fprintf(stderr, "[it] test certificates in %s (%.1f s)\n", c->dir.c_str(), seconds_since(t0));
  }
  return *c;
}

std::string cert_subject(const std::string& cert_file) {
  auto r = run_shell("openssl x509 -noout -subject -nameopt RFC2253 -in " + shell_quote(cert_file));
  if (r.exit_code != 0) return "";
  std::string s = r.output;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.rfind("subject=", 0) == 0) s.erase(0, 8);
  while (!s.empty() && s.front() == ' ') s.erase(0, 1);
  return s;
}

void install_file(const std::string& from, const std::string& to) {
  struct stat st {};
  REQUIRE_MESSAGE(stat(from.c_str(), &st) == 0, "stat " << from);
  std::string tmp = to + ".tmp";
  write_file(tmp, read_file(from), static_cast<int>(st.st_mode & 07777));
  uid_t uid = 0;
  gid_t gid = 0;
  if (postgres_owner(&uid, &gid)) REQUIRE(chown(tmp.c_str(), uid, gid) == 0);
  REQUIRE_MESSAGE(rename(tmp.c_str(), to.c_str()) == 0,
                  "rename to " << to << ": " << std::string(strerror(errno)));
}

std::string libpq_ssl(const std::string& sslmode, const std::string& root_cert,
                      const std::string& cert, const std::string& key) {
  std::string s = " sslmode=" + sslmode;
  if (!root_cert.empty()) s += " sslrootcert=" + root_cert;
  if (!cert.empty()) s += " sslcert=" + cert;
  if (!key.empty()) s += " sslkey=" + key;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Clusters

Cluster start_ssl_cluster(const std::string& cert_file, const std::string& key_file,
                          const std::string& tag) {
  ClusterSetup s;
  s.tag = tag;
  s.conf = "ssl = on\nssl_cert_file = '" + cert_file + "'\nssl_key_file = '" + key_file +
           "'\nssl_ca_file = '" + certs().ca_cert + "'\n";
  s.hba =
      "local     all    all                trust\n"
      "hostssl   certdb all 127.0.0.1/32   cert\n"
      "hostssl   all    all 127.0.0.1/32   md5\n"
      "hostnossl all    all 127.0.0.1/32   reject\n";
  s.databases = {"certdb"};
  return start_cluster(s);
}

const Cluster& ssl_cluster() {
  static std::mutex mu;
  static Cluster* c = nullptr;
  std::lock_guard<std::mutex> lk(mu);
  if (!c) c = new Cluster(start_ssl_cluster(certs().server_cert, certs().server_key, "pg-ssl"));
  return *c;
}

const Cluster& wrong_name_cluster() {
  static std::mutex mu;
  static Cluster* c = nullptr;
  std::lock_guard<std::mutex> lk(mu);
  if (!c) c = new Cluster(start_ssl_cluster(certs().wrong_cert, certs().wrong_key, "pg-wrong"));
  return *c;
}

const Cluster& nossl_cluster() {
  return cluster();
}

// ---------------------------------------------------------------------------------------------
// Raw TLS client

std::string ssl_request_packet() {
  return be32(8) + be32(80877103);
}

char send_ssl_request(Raw& raw, double timeout_s) {
  if (!raw.send_bytes(ssl_request_packet())) return 0;
  return read_one_byte(raw.fd(), timeout_s);
}

std::string client_hello(const TlsOptions& o) {
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  std::string err;
  std::string out;
  if (make_ssl(o, &ctx, &ssl, &err)) {
    BIO* rbio = BIO_new(BIO_s_mem());
    BIO* wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rbio, wbio);  // ssl owns both
    SSL_connect(ssl);              // wants to read the ServerHello: the hello is in wbio
    char buf[4096];
    int n;
    while ((n = BIO_read(wbio, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  REQUIRE_MESSAGE(!out.empty(), "client_hello: " << err);
  return out;
}

TlsRaw::~TlsRaw() {
  free_all();
}

TlsRaw::TlsRaw(TlsRaw&& o) noexcept
    : fd_(o.fd_),
      ctx_(o.ctx_),
      ssl_(o.ssl_),
      handshake_done_(o.handshake_done_),
      answer_(o.answer_),
      buf_(std::move(o.buf_)),
      error_(std::move(o.error_)),
      mech_(std::move(o.mech_)) {
  o.fd_ = -1;
  o.ctx_ = nullptr;
  o.ssl_ = nullptr;
}

TlsRaw& TlsRaw::operator=(TlsRaw&& o) noexcept {
  if (this != &o) {
    free_all();
    fd_ = o.fd_;
    ctx_ = o.ctx_;
    ssl_ = o.ssl_;
    handshake_done_ = o.handshake_done_;
    answer_ = o.answer_;
    buf_ = std::move(o.buf_);
    error_ = std::move(o.error_);
    mech_ = std::move(o.mech_);
    o.fd_ = -1;
    o.ctx_ = nullptr;
    o.ssl_ = nullptr;
  }
  return *this;
}

void TlsRaw::free_all() {
  SSL_free(ssl_);
  SSL_CTX_free(ctx_);
  ssl_ = nullptr;
  ctx_ = nullptr;
  close_fd();
}

void TlsRaw::close_fd() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void TlsRaw::close_notify() {
  if (ssl_ && handshake_done_) SSL_shutdown(ssl_);
}

TlsRaw TlsRaw::connect(int port, const TlsOptions& o) {
  return start(Raw::tcp(port), o);
}

TlsRaw TlsRaw::start(Raw&& raw, const TlsOptions& o) {
  TlsRaw t;
  REQUIRE_MESSAGE(raw.pending().empty(), "TlsRaw::start: raw already holds unread bytes");
  t.fd_ = dup(raw.fd());
  REQUIRE(t.fd_ >= 0);
  raw.close_fd();
  if (!o.direct) {
    Raw view(dup(t.fd_));
    t.answer_ = send_ssl_request(view, o.timeout_s);
    if (t.answer_ != 'S') {
      t.error_ = t.answer_ == 'N' ? "server answered N to the SSLRequest"
                 : t.answer_ == 0
                     ? "no answer to the SSLRequest"
                     : std::string("server answered '") + t.answer_ + "' to the SSLRequest";
      return t;
    }
  }
  int fl = fcntl(t.fd_, F_GETFL);
  fcntl(t.fd_, F_SETFL, fl | O_NONBLOCK);
  ERR_clear_error();
  if (!make_ssl(o, &t.ctx_, &t.ssl_, &t.error_)) return t;
  SSL_set_fd(t.ssl_, t.fd_);
  auto t0 = Clock::now();
  for (;;) {
    ERR_clear_error();
    int rc = SSL_connect(t.ssl_);
    if (rc == 1) break;
    int e = SSL_get_error(t.ssl_, rc);
    if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
        t.wait_io(e, o.timeout_s - seconds_since(t0)))
      continue;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      t.error_ = "handshake timed out";
    } else {
      std::string why = openssl_errors();
      long vr = SSL_get_verify_result(t.ssl_);
      if (vr != X509_V_OK)
        why += std::string(" (verify: ") + X509_verify_cert_error_string(vr) + ")";
      if (why.empty()) why = e == SSL_ERROR_SYSCALL ? "connection closed" : "SSL error";
      t.error_ = "handshake failed: " + why;
    }
    return t;
  }
  t.handshake_done_ = true;
  return t;
}

bool TlsRaw::wait_io(int ssl_err, double left_s) {
  if (left_s <= 0) return false;
  pollfd p{fd_, static_cast<short>(ssl_err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
  int pr = poll(&p, 1, static_cast<int>(left_s * 1000) + 1);
  return pr >= 0 || errno == EINTR;
}

std::string TlsRaw::alpn() const {
  if (!ssl_) return "";
  const unsigned char* p = nullptr;
  unsigned int n = 0;
  SSL_get0_alpn_selected(ssl_, &p, &n);
  return p ? std::string(reinterpret_cast<const char*>(p), n) : "";
}

std::string TlsRaw::version() const {
  return ssl_ && handshake_done_ ? SSL_get_version(ssl_) : "";
}

std::string TlsRaw::cipher() const {
  return ssl_ && handshake_done_ ? SSL_get_cipher_name(ssl_) : "";
}

std::string TlsRaw::peer_subject() const {
  if (!ssl_) return "";
  X509* cert = SSL_get1_peer_certificate(ssl_);
  if (!cert) return "";
  BIO* b = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(b);
  X509_free(cert);
  return s;
}

std::string TlsRaw::server_end_point() const {
  if (!ssl_) return "";
  X509* cert = SSL_get1_peer_certificate(ssl_);
  if (!cert) return "";
  // RFC 5929: the certificate's signature hash, with MD5 and SHA-1 raised to SHA-256.
  int md_nid = NID_undef;
  OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, nullptr);
  const EVP_MD* md = (md_nid == NID_md5 || md_nid == NID_sha1 || md_nid == NID_undef)
                         ? EVP_sha256()
                         : EVP_get_digestbynid(md_nid);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  std::string s;
  if (md && X509_digest(cert, md, out, &n) == 1) s.assign(reinterpret_cast<char*>(out), n);
  X509_free(cert);
  return s;
}

bool TlsRaw::send_bytes(std::string_view bytes) {
  if (!ssl_ || !handshake_done_) return false;
  size_t off = 0;
  auto t0 = Clock::now();
  while (off < bytes.size()) {
    ERR_clear_error();
    int n = SSL_write(ssl_, bytes.data() + off, static_cast<int>(bytes.size() - off));
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    int e = SSL_get_error(ssl_, n);
    if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
        wait_io(e, 10 - seconds_since(t0)))
      continue;
    error_ = "write: " + openssl_errors();
    return false;
  }
  return true;
}

bool TlsRaw::send_msg(char type, std::string_view body) {
  return send_bytes(msg(type, body));
}

ReadStatus TlsRaw::read_msg(Msg* out, double timeout_s) {
  *out = Msg{};
  auto t0 = Clock::now();
  for (;;) {
    if (buf_.size() >= 5) {
      uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(buf_[1])) << 24) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(buf_[2])) << 16) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(buf_[3])) << 8) |
                     static_cast<uint32_t>(static_cast<uint8_t>(buf_[4]));
      if (len < 4 || len > (64u << 20)) return ReadStatus::Error;
      if (buf_.size() >= 1 + static_cast<size_t>(len)) {
        out->type = buf_[0];
        out->body = buf_.substr(5, len - 4);
        buf_.erase(0, 1 + static_cast<size_t>(len));
        return ReadStatus::Ok;
      }
    }
    if (!ssl_ || !handshake_done_) return ReadStatus::Error;
    char tmp[65536];
    ERR_clear_error();
    int n = SSL_read(ssl_, tmp, sizeof tmp);
    if (n > 0) {
      buf_.append(tmp, static_cast<size_t>(n));
      continue;
    }
    int e = SSL_get_error(ssl_, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      double left = timeout_s - seconds_since(t0);
      if (left <= 0) return ReadStatus::Timeout;
      wait_io(e, left);
      continue;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
      error_ = "close_notify";
      return ReadStatus::Closed;
    }
    std::string why = openssl_errors();
    if (e == SSL_ERROR_SYSCALL && why.empty()) {
      error_ = errno ? std::string("closed: ") + strerror(errno) : "closed";
      return ReadStatus::Closed;
    }
    error_ = "read: " + (why.empty() ? std::string("SSL error") : why);
    return ReadStatus::Error;
  }
}

std::vector<Msg> TlsRaw::read_until(char until, double timeout_s) {
  std::vector<Msg> out;
  auto t0 = Clock::now();
  for (;;) {
    Msg m;
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) break;
    if (read_msg(&m, left) != ReadStatus::Ok) break;
    out.push_back(m);
    if (m.type == until) break;
  }
  return out;
}

bool TlsRaw::wait_closed(double timeout_s) {
  auto t0 = Clock::now();
  for (;;) {
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) return false;
    Msg m;
    ReadStatus st = read_msg(&m, left);
    if (st == ReadStatus::Closed || st == ReadStatus::Error) return true;
    if (st == ReadStatus::Timeout) return false;
  }
}

std::string TlsRaw::login(const std::string& user, const std::string& db,
                          const std::string& password, bool channel_binding,
                          const std::vector<std::pair<std::string, std::string>>& params) {
  std::vector<std::pair<std::string, std::string>> all = {{"user", user}, {"database", db}};
  all.insert(all.end(), params.begin(), params.end());
  if (!send_bytes(startup_packet(all))) return "sending the startup packet: " + error_;
  mech_.clear();
  std::string client_first_bare, server_first, auth_message, salted;
  for (;;) {
    Msg m;
    ReadStatus st = read_msg(&m, 10);
    if (st != ReadStatus::Ok) return "no answer during login: " + error_;
    if (m.type == 'E') return error_text(m);
    if (m.type == 'Z') return "";
    if (m.type != 'R') continue;  // ParameterStatus, BackendKeyData, NoticeResponse
    uint32_t code = auth_code(m);
    if (code == 0) continue;
    if (code == 3) {
      if (!send_msg('p', cstr(password))) return "write: " + error_;
    } else if (code == 5 && m.body.size() >= 8) {
      std::string inner = md5_hex(password + user);
      if (!send_msg('p', cstr("md5" + md5_hex(inner + m.body.substr(4, 4)))))
        return "write: " + error_;
    } else if (code == 10) {
      std::vector<std::string> mechs;
      for (size_t i = 4; i < m.body.size() && m.body[i] != '\0';) {
        size_t e = m.body.find('\0', i);
        if (e == std::string::npos) break;
        mechs.push_back(m.body.substr(i, e - i));
        i = e + 1;
      }
      bool plus = false;
      for (const auto& x : mechs) plus = plus || x == "SCRAM-SHA-256-PLUS";
      if (channel_binding && !plus) return "the server did not offer SCRAM-SHA-256-PLUS";
      mech_ = channel_binding ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256";
      unsigned char nonce_raw[18];
      RAND_bytes(nonce_raw, sizeof nonce_raw);
      client_first_bare =
          "n=,r=" + b64(std::string_view(reinterpret_cast<char*>(nonce_raw), sizeof nonce_raw));
      std::string first =
          (channel_binding ? "p=tls-server-end-point,," : "n,,") + client_first_bare;
      if (!send_msg('p', cstr(mech_) + be32(static_cast<uint32_t>(first.size())) + first))
        return "write: " + error_;
    } else if (code == 11) {
      server_first = m.body.substr(4);
      std::string nonce = scram_attr(server_first, 'r');
      std::string salt = unb64(scram_attr(server_first, 's'));
      int iterations = atoi(scram_attr(server_first, 'i').c_str());
      if (nonce.empty() || salt.empty() || iterations <= 0)
        return "bad SCRAM server-first-message: " + server_first;
      salted.assign(32, '\0');
      PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()),
                        static_cast<int>(salt.size()), iterations, EVP_sha256(), 32,
                        reinterpret_cast<unsigned char*>(salted.data()));
      std::string cbind =
          mech_ == "SCRAM-SHA-256-PLUS" ? "p=tls-server-end-point,," + server_end_point() : "n,,";
      std::string final_bare = "c=" + b64(cbind) + ",r=" + nonce;
      auth_message = client_first_bare + "," + server_first + "," + final_bare;
      std::string client_key = hmac256(salted, "Client Key");
      std::string signature = hmac256(sha256(client_key), auth_message);
      std::string proof = client_key;
      for (size_t i = 0; i < proof.size(); ++i)
        proof[i] = static_cast<char>(proof[i] ^ signature[i]);
      if (!send_msg('p', final_bare + ",p=" + b64(proof))) return "write: " + error_;
    } else if (code == 12) {
      std::string expect = b64(hmac256(hmac256(salted, "Server Key"), auth_message));
      if (scram_attr(m.body.substr(4), 'v') != expect)
        return "SCRAM server signature does not match";
    } else {
      return "unsupported authentication request " + std::to_string(code);
    }
  }
}

std::string TlsRaw::query(const std::string& sql, std::string* first_value) {
  if (!send_msg('Q', cstr(sql))) return "write: " + error_;
  std::string err;
  bool have_row = false;
  for (;;) {
    Msg m;
    ReadStatus st = read_msg(&m, 20);
    if (st != ReadStatus::Ok) return "no answer to the query: " + error_;
    if (m.type == 'E' && err.empty()) err = error_text(m);
    if (m.type == 'D' && !have_row && first_value && m.body.size() >= 6) {
      have_row = true;
      uint32_t n = auth_code(Msg{'D', m.body.substr(2, 4)});
      if (n == 0xffffffffu)
        *first_value = "<NULL>";
      else if (m.body.size() >= 6 + static_cast<size_t>(n))
        *first_value = m.body.substr(6, n);
    }
    if (m.type == 'Z') return err;
  }
}

// ---------------------------------------------------------------------------------------------
// Python client

CmdResult python_client(int port, const std::string& user, const std::string& password,
                        const std::string& db, const std::string& flags, int timeout_s) {
  std::string script = checkout_root() + "/test/integration/tls_client.py";
  return run_shell("/usr/bin/python3 " + shell_quote(script) + " --port " + std::to_string(port) +
                       " --user " + shell_quote(user) + " --password " + shell_quote(password) +
                       " --dbname " + shell_quote(db) + " " + flags,
                   timeout_s);
}

}  // namespace it::tls
