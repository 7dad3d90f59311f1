// TLS test fixtures: openssl-made certificates, a PostgreSQL cluster with ssl=on, raw TLS clients.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "integration/harness.h"

// OpenSSL's handle types, so that tests need not include OpenSSL.
struct ssl_st;
struct ssl_ctx_st;

namespace it::tls {

// ---------------------------------------------------------------------------------------------
// Certificates.

// Files made once per run (lazily) by the `openssl` command in one temp dir. All keys are EC
// P-256, PEM, mode 0600; certificates are valid for ten years and signed with SHA-256. When the
// tests run as root the files belong to postgres, so PostgreSQL and a pgsluice running as
// postgres can read them. Shared by every test: never write to them; a rotation test copies
// them over its own files with install_file().
struct Certs {
  std::string dir;
  std::string ca_cert, ca_key;  // test CA, CN "pgsluice test CA"
  // Server: CN localhost, SAN DNS:localhost and IP:127.0.0.1, serverAuth; signed by ca.
  std::string server_cert, server_key;
  // Server with the wrong name: CN and SAN DNS wrong.invalid, no IP; signed by ca.
  std::string wrong_cert, wrong_key;
  // Clients (clientAuth) signed by ca, CN md5user / scramuser / nosuchuser (no such role).
  std::string md5user_cert, md5user_key;
  std::string scramuser_cert, scramuser_key;
  std::string unknown_cert, unknown_key;
  // A second, independent CA (CN "pgsluice test CA 2") and what it signed: a server cert like
  // server_cert (rotation tests) and a client cert CN md5user (a client the first CA rejects).
  std::string ca2_cert, ca2_key;
  std::string server2_cert, server2_key;
  std::string md5user_ca2_cert, md5user_ca2_key;
  std::string both_ca;         // ca_cert followed by ca2_cert (a bundle trusting both)
  std::string mismatched_key;  // belongs to no certificate: with server_cert, a bad pair
};

// Makes the files on first use (REQUIREs success) and returns their paths.
const Certs& certs();

// Subject of a certificate as `openssl x509 -noout -subject -nameopt RFC2253` prints it,
// without "subject=": e.g. "CN=md5user". "" when openssl fails.
std::string cert_subject(const std::string& cert_file);

// Copies `from` to `to` (replacing it atomically by rename) with from's mode, owned by postgres
// when we are root: for "replace the files, then RELOAD" tests.
void install_file(const std::string& from, const std::string& to);

// " sslmode=<mode>" plus sslrootcert/sslcert/sslkey when given, to append to a libpq conninfo.
std::string libpq_ssl(const std::string& sslmode, const std::string& root_cert = "",
                      const std::string& cert = "", const std::string& key = "");

// ---------------------------------------------------------------------------------------------
// PostgreSQL with and without TLS.

// A cluster with ssl=on (started lazily once by start_cluster()): ssl_cert_file/ssl_key_file =
// certs().server_cert/server_key, ssl_ca_file = certs().ca_cert (a client certificate, when
// sent, must chain to it). Roles and secrets as in cluster(); databases testdb (empty) and
// certdb. pg_hba.conf, first match wins:
//   local     all    all                 trust
//   hostssl   certdb all  127.0.0.1/32   cert   (client certificate; CN = user name)
//   hostssl   all    all  127.0.0.1/32   md5    (password over TLS; SCRAM for SCRAM secrets)
//   hostnossl all    all  127.0.0.1/32   reject (no TCP login without TLS)
// So a TCP login succeeds only over TLS (a plain server link fails with 28000), and
// pg_stat_ssl shows the rest.
const Cluster& ssl_cluster();

// Like ssl_cluster() but presenting certs().wrong_cert (started lazily once): verify-full to it
// fails while verify-ca succeeds.
const Cluster& wrong_name_cluster();

// A new cluster configured as ssl_cluster() but with this certificate and key (each call
// starts one; stopped at exit).
Cluster start_ssl_cluster(const std::string& cert_file, const std::string& key_file,
                          const std::string& tag = "pg-ssl");

// The cluster without TLS: the main cluster() (ssl=off, answers an SSLRequest with 'N'), for
// "server_tls_sslmode=require refuses, prefer falls back" tests.
const Cluster& nossl_cluster();

// ---------------------------------------------------------------------------------------------
// Raw TLS client (the TLS form of it::Raw).

// The 8-byte SSLRequest packet.
std::string ssl_request_packet();

// Sends an SSLRequest on raw and reads the one-byte answer: 'S', 'N', or 0 when the peer
// closed or nothing came within timeout_s. Nothing past that byte is read.
char send_ssl_request(Raw& raw, double timeout_s = 5);

struct TlsOptions {
  bool direct = false;  // ClientHello first (PostgreSQL 17's direct TLS), no SSLRequest
  std::vector<std::string> alpn = {"postgresql"};  // protocols offered; empty: no ALPN at all
  std::string ca_file;                             // verify the chain against it; "": no checks
  std::string verify_host;          // with ca_file: name or IP the certificate must match; "": none
  std::string sni = "localhost";    // server name sent; "": none
  std::string cert_file, key_file;  // client certificate and key
  int max_version = 0;              // e.g. TLS1_2_VERSION (0x0303); 0: OpenSSL's highest
  double timeout_s = 5;             // for the SSLRequest answer and the handshake
};

// The client's first TLS flight (a complete ClientHello record) for these options, made with
// memory BIOs: for half-finished handshake tests that send only part of it over a Raw.
std::string client_hello(const TlsOptions& o = {});

class TlsRaw {
 public:
  TlsRaw() = default;
  ~TlsRaw();
  TlsRaw(TlsRaw&& o) noexcept;
  TlsRaw& operator=(TlsRaw&& o) noexcept;
  TlsRaw(const TlsRaw&) = delete;
  TlsRaw& operator=(const TlsRaw&) = delete;

  // TCP connect to 127.0.0.1:port (REQUIREs that), then start(). A failed negotiation is not
  // an assertion: see ok() and error().
  static TlsRaw connect(int port, const TlsOptions& o = {});
  // Negotiates TLS on raw's socket (taken over; raw is left closed): SSLRequest and its answer
  // unless o.direct, then the handshake.
  static TlsRaw start(Raw&& raw, const TlsOptions& o = {});

  bool ok() const { return handshake_done_; }          // the handshake finished
  const std::string& error() const { return error_; }  // last failure ("" when none)
  char ssl_answer() const { return answer_; }          // 'S', 'N', or 0 (direct, or none came)
  std::string alpn() const;                            // protocol the server chose ("" none)
  std::string version() const;                         // "TLSv1.3", ...
  std::string cipher() const;
  std::string peer_subject() const;  // server certificate subject, RFC 2253 ("CN=localhost")
  // tls-server-end-point channel binding data (RFC 5929): hash of the server certificate.
  std::string server_end_point() const;
  int fd() const { return fd_; }

  // Same contract as Raw's; a TLS alert or protocol failure reads as ReadStatus::Error with
  // OpenSSL's reason in error(); EOF, close_notify and a reset read as Closed.
  bool send_bytes(std::string_view bytes);
  bool send_msg(char type, std::string_view body);
  ReadStatus read_msg(Msg* out, double timeout_s = 5);
  std::vector<Msg> read_until(char until, double timeout_s = 5);
  bool wait_closed(double timeout_s);
  const std::string& pending() const { return buf_; }

  // Startup packet (user, database, then `params`) and the password exchange: cleartext, md5,
  // SCRAM-SHA-256, or SCRAM-SHA-256-PLUS with tls-server-end-point when channel_binding (fails
  // if the server does not offer it); reads through ReadyForQuery. Returns "" on success, else
  // "SQLSTATE: message" from an ErrorResponse or what went wrong.
  std::string login(const std::string& user, const std::string& db, const std::string& password,
                    bool channel_binding = false,
                    const std::vector<std::pair<std::string, std::string>>& params = {});
  const std::string& sasl_mechanism() const { return mech_; }  // what login() used ("" no SASL)
  // Simple query through ReadyForQuery: "" and the first row's first column in *first_value,
  // or the error as login() reports it.
  std::string query(const std::string& sql, std::string* first_value = nullptr);

  void close_notify();  // sends close_notify (the socket stays open)
  void close_fd();      // closes the socket without close_notify

 private:
  int fd_ = -1;
  ssl_ctx_st* ctx_ = nullptr;
  ssl_st* ssl_ = nullptr;
  bool handshake_done_ = false;
  char answer_ = 0;
  std::string buf_;
  std::string error_;
  std::string mech_;
  void free_all();
  bool wait_io(int ssl_err, double left_s);
};

// ---------------------------------------------------------------------------------------------
// Python client (test/integration/tls_client.py, /usr/bin/python3's ssl module).

// Runs the script against 127.0.0.1:port: TLS after an SSLRequest, or with `--direct` a
// ClientHello first (ALPN "postgresql" unless `--no-alpn`), then startup, the password
// exchange (cleartext, md5, SCRAM; `--channel-binding` requires SCRAM-SHA-256-PLUS) and one
// query (`--sql`, default SELECT 1). Other flags: --ca FILE (verify the chain and
// --server-name, default localhost), --cert FILE --key FILE. Prints "tls <version> alpn=<p>"
// then "row <value>" and exits 0; an ErrorResponse prints "error <SQLSTATE> <message>" (exit
// 1); a refused or failed TLS prints "fail <reason>" (exit 3).
CmdResult python_client(int port, const std::string& user, const std::string& password,
                        const std::string& db, const std::string& flags = "", int timeout_s = 30);

}  // namespace it::tls
