// TLS contexts built from the client_tls_* and server_tls_* settings, the sslmode rules, and
// the description of an established TLS session for SHOW CLIENTS/SERVERS.
//
// A context is built on the main thread (start, RELOAD, SET) and published in the Config
// snapshot; SSL objects take their own reference on it (SSL_new), so sessions established
// with an old context keep it after a reload. Protocols, ciphers and groups come only from
// the settings: a new TLS version or cipher is a config change, not a code change.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common.h"

namespace pgsluice {

struct Config;

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;

// client_tls_sslmode / server_tls_sslmode, in PgBouncer's order of strictness.
enum class SslMode : uint8_t { Disable, Allow, Prefer, Require, VerifyCa, VerifyFull };
SslMode parse_ssl_mode(std::string_view s);  // unknown text: Disable (config validates it)
inline bool ssl_mode_requires_tls(SslMode m) {
  return m >= SslMode::Require;
}

// Which end of the TLS session pgsluice is.
enum class TlsRole : uint8_t {
  Accept,   // towards clients: pgsluice is the TLS server (client_tls_*)
  Connect,  // towards PostgreSQL: pgsluice is the TLS client (server_tls_*)
};

// The settings of one side, copied out of Config.
struct TlsSettings {
  SslMode mode = SslMode::Disable;
  std::string key_file, cert_file, ca_file;
  std::string protocols = "secure";
  std::string ciphers = "default";
  std::string tls13_ciphers;
  std::string ecdhcurve = "auto";  // accept side only
  std::string dheparams = "auto";  // accept side only
  bool direct = false;             // connect side only: server_tls_direct
  bool operator==(const TlsSettings&) const = default;
};
TlsSettings client_tls_settings(const Config& c);
TlsSettings server_tls_settings(const Config& c);

// TLS protocol versions allowed by a *_tls_protocols value, as OpenSSL's min and max
// version numbers (0x0301 = TLS 1.0 ... 0x0304 = TLS 1.3, and tlsv1.N generally) plus
// the versions inside that range to switch off. Syntax as PgBouncer: a list separated by
// ',' or ':' of all, secure, default, legacy, tlsv1, tlsv1.N, each optionally negated by '!'.
struct TlsVersions {
  int min = 0;
  int max = 0;
  uint32_t holes = 0;  // bit (v - 0x0301): a version between min and max that is off
};
Result<TlsVersions> parse_tls_protocols(std::string_view s);

// One built SSL_CTX with the settings and file contents it came from.
class TlsContext {
 public:
  TlsContext(SslCtxPtr ctx, TlsRole role, TlsSettings settings, std::string files)
      : ctx_(std::move(ctx)),
        role_(role),
        settings_(std::move(settings)),
        files_(std::move(files)) {}
  SSL_CTX* get() const { return ctx_.get(); }
  TlsRole role() const { return role_; }
  const TlsSettings& settings() const { return settings_; }
  // The key, certificate and CA files' bytes as read when the context was built.
  const std::string& files() const { return files_; }

 private:
  SslCtxPtr ctx_;
  TlsRole role_;
  TlsSettings settings_;
  std::string files_;
};

// Builds a context for one side. Errors (unreadable file, key not matching its
// certificate, unknown protocol, cipher or curve) name the setting and never the key.
Result<std::shared_ptr<const TlsContext>> build_tls_context(const TlsSettings& s, TlsRole role);

// The contexts a Config snapshot carries; a side's context is null when its mode is disable.
struct TlsContexts {
  std::shared_ptr<const TlsContext> client;  // client_tls_*: pgsluice accepts TLS
  std::shared_ptr<const TlsContext> server;  // server_tls_*: pgsluice connects with TLS
};

// Builds the contexts for c. A side whose settings and file bytes equal those of `previous`
// keeps previous's context (so established servers need not reconnect). Any error refuses
// the whole config (the caller keeps the running one). Also checks PgBouncer's rules:
// TLS towards clients needs client_tls_key_file and client_tls_cert_file; verify-ca and
// verify-full towards clients need client_tls_ca_file; auth_type = cert needs
// client_tls_sslmode verify-ca or verify-full and client_tls_ca_file.
Result<std::shared_ptr<const TlsContexts>> make_tls_contexts(const Config& c,
                                                             const TlsContexts* previous);

// "TLSv1.3/TLS_AES_256_GCM_SHA384/ECDH=X25519" for an established session (PgBouncer's
// tls column); "" for nullptr.
std::string tls_description(const SSL* ssl);

// The channel-binding data of tls-server-end-point (RFC 5929) for a certificate: the hash
// of its DER encoding with the hash of its signature algorithm, SHA-256 when that is MD5
// or SHA-1. "" when the algorithm has no single hash (Ed25519, Ed448) or on failure.
std::string tls_server_end_point(const X509* cert);

// The last OpenSSL error of this thread as text (and the queue cleared); `fallback` if none.
std::string tls_error_text(const char* fallback);

// The peer certificate's subject common name (auth_type = cert); "" when the peer sent no
// certificate, or its subject has no CN, more than one, or one with a NUL byte.
std::string tls_peer_common_name(const SSL* ssl);

// ALPN protocol id of the PostgreSQL protocol ("postgresql").
inline constexpr std::string_view kAlpnPostgres = "postgresql";

}  // namespace pgsluice
