// TLS contexts from settings, sslmode rules, session descriptions.
#include "tls.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "config.h"
#include "varcache.h"

namespace pgsluice {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

constexpr int kTls10 = 0x0301;
constexpr int kTls12 = 0x0303;
constexpr int kTls13 = 0x0304;
constexpr int kTlsMaxKnown = 0x0304;  // "all" ends at the newest version OpenSSL 3.0 has

// Bit for TLS 1.N (N = v - 0x0301), N < 32.
uint32_t bit(int v) {
  return 1u << static_cast<unsigned>(v - kTls10);
}

// Reads a whole file named by a setting (at most 1 MiB), for the context and for noticing
// a changed file at the next reload.
Result<std::string> read_small_file(const std::string& path, const std::string& setting) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::error(std::string(setting) + ": cannot open '" + path +
                         "': " + std::strerror(errno));
  }
  Fd owned(fd);
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::error(std::string(setting) + ": cannot read '" + path +
                           "': " + std::strerror(errno));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > (1u << 20)) {
      return Status::error(std::string(setting) + ": '" + path + "' is larger than 1 MiB");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

BioPtr mem_bio(const std::string& bytes) {
  return BioPtr(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
}

// Loads the certificate chain and key from PEM bytes; checks that they match.
Status load_keypair(SSL_CTX* ctx, const std::string& cert_pem, const std::string& key_pem,
                    const char* prefix) {
  BioPtr cb = mem_bio(cert_pem);
  X509* leaf = PEM_read_bio_X509_AUX(cb.get(), nullptr, nullptr, nullptr);
  if (leaf == nullptr) {
    ERR_clear_error();
    return Status::error(std::string(prefix) + "_cert_file: no PEM certificate in the file");
  }
  int ok = SSL_CTX_use_certificate(ctx, leaf);
  X509_free(leaf);
  if (ok != 1) {
    return Status::error(std::string(prefix) +
                         "_cert_file: " + tls_error_text("certificate not usable"));
  }
  SSL_CTX_clear_chain_certs(ctx);
  while (X509* extra = PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) {
      X509_free(extra);
      return Status::error(std::string(prefix) +
                           "_cert_file: " + tls_error_text("bad chain certificate"));
    }
  }
  ERR_clear_error();  // the end of the PEM list
  BioPtr kb = mem_bio(key_pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    ERR_clear_error();
    return Status::error(std::string(prefix) +
                         "_key_file: no unencrypted PEM private key in the file");
  }
  ok = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    return Status::error(std::string(prefix) + "_key_file does not match " + prefix + "_cert_file");
  }
  return Status();
}

// Loads the CA certificates (PEM bytes) into the context's trust store, and for the accept
// side also as the list of acceptable client CAs sent to clients.
Status load_ca(SSL_CTX* ctx, const std::string& ca_pem, const char* prefix, bool accept) {
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  BioPtr b = mem_bio(ca_pem);
  int n = 0;
  STACK_OF(X509_NAME)* names = accept ? sk_X509_NAME_new_null() : nullptr;
  while (X509* x = PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store, x);
    if (names != nullptr) {
      if (X509_NAME* nm = X509_NAME_dup(X509_get_subject_name(x))) sk_X509_NAME_push(names, nm);
    }
    X509_free(x);
    n++;
  }
  ERR_clear_error();
  if (n == 0) {
    if (names != nullptr) sk_X509_NAME_pop_free(names, X509_NAME_free);
    return Status::error(std::string(prefix) + "_ca_file: no PEM certificate in the file");
  }
  if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
  return Status();
}

// Accept side: take ALPN "postgresql" when the client offers it; a client that offers
// ALPN without it is refused in the handshake (as PostgreSQL 17).
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  unsigned int i = 0;
  while (i < inlen) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    std::string_view proto(reinterpret_cast<const char*>(in + i + 1), len);
    if (proto == kAlpnPostgres) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

SslMode parse_ssl_mode(std::string_view s) {
  if (iequals(s, "allow")) return SslMode::Allow;
  if (iequals(s, "prefer")) return SslMode::Prefer;
  if (iequals(s, "require")) return SslMode::Require;
  if (iequals(s, "verify-ca")) return SslMode::VerifyCa;
  if (iequals(s, "verify-full")) return SslMode::VerifyFull;
  return SslMode::Disable;
}

TlsSettings client_tls_settings(const Config& c) {
  TlsSettings s;
  s.mode = parse_ssl_mode(c.client_tls_sslmode);
  s.key_file = c.client_tls_key_file;
  s.cert_file = c.client_tls_cert_file;
  s.ca_file = c.client_tls_ca_file;
  s.protocols = c.client_tls_protocols;
  s.ciphers = c.client_tls_ciphers;
  s.tls13_ciphers = c.client_tls13_ciphers;
  s.ecdhcurve = c.client_tls_ecdhcurve;
  s.dheparams = c.client_tls_dheparams;
  return s;
}

TlsSettings server_tls_settings(const Config& c) {
  TlsSettings s;
  s.mode = parse_ssl_mode(c.server_tls_sslmode);
  s.key_file = c.server_tls_key_file;
  s.cert_file = c.server_tls_cert_file;
  s.ca_file = c.server_tls_ca_file;
  s.protocols = c.server_tls_protocols;
  s.ciphers = c.server_tls_ciphers;
  s.tls13_ciphers = c.server_tls13_ciphers;
  s.ecdhcurve = "";
  s.dheparams = "";
  s.direct = c.server_tls_direct;
  return s;
}

Result<TlsVersions> parse_tls_protocols(std::string_view text) {
  // Bits for TLS 1.0 .. 1.(kMaxMinor); a version newer than OpenSSL knows is refused by
  // OpenSSL when the context is built, not here.
  constexpr int kMaxMinor = 9;
  uint32_t all = 0;
  for (int v = kTls10; v <= kTlsMaxKnown; v++) all |= bit(v);
  uint32_t on = 0;
  bool any = false;
  std::string_view rest = text;
  while (true) {
    size_t cut = rest.find_first_of(",:");
    std::string_view item = trim(rest.substr(0, cut));
    bool negate = !item.empty() && item.front() == '!';
    if (negate) item = trim(item.substr(1));
    uint32_t bits = 0;
    if (iequals(item, "all") || iequals(item, "legacy")) {
      bits = all;
    } else if (iequals(item, "secure") || iequals(item, "default")) {
      bits = bit(kTls12) | bit(kTls13);
    } else if (iequals(item, "tlsv1")) {
      bits = all;
    } else if (item.size() == 7 && iequals(item.substr(0, 6), "tlsv1.") && item[6] >= '0' &&
               item[6] <= '0' + kMaxMinor) {
      bits = bit(kTls10 + (item[6] - '0'));
    } else {
      return Status::error("unknown TLS protocol '" + std::string(item) +
                           "' (use all, secure, legacy, tlsv1.0 ... tlsv1.3)");
    }
    if (negate && !any) on = all;
    on = negate ? (on & ~bits) : (on | bits);
    any = true;
    if (cut == std::string_view::npos) break;
    rest = rest.substr(cut + 1);
  }
  if (on == 0) return Status::error("no TLS protocol version left in '" + std::string(text) + "'");
  TlsVersions v;
  for (int x = kTls10; x <= kTls10 + kMaxMinor; x++) {
    if ((on & bit(x)) == 0) continue;
    if (v.min == 0) v.min = x;
    v.max = x;
  }
  for (int x = v.min; x <= v.max; x++)
    if ((on & bit(x)) == 0) v.holes |= bit(x);
  return v;
}

std::string tls_server_end_point(const X509* cert) {
  if (cert == nullptr) return "";
  int md_nid = NID_undef;
  if (X509_get_signature_info(const_cast<X509*>(cert), &md_nid, nullptr, nullptr, nullptr) != 1) {
    ERR_clear_error();
    return "";
  }
  if (md_nid == NID_md5 || md_nid == NID_sha1) md_nid = NID_sha256;
  const EVP_MD* md = md_nid == NID_undef ? nullptr : EVP_get_digestbynid(md_nid);
  if (md == nullptr) return "";
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, md, out, &len) != 1) {
    ERR_clear_error();
    return "";
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

std::string tls_error_text(const char* fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

Result<std::shared_ptr<const TlsContext>> build_tls_context(const TlsSettings& s, TlsRole role) {
  const bool accept = role == TlsRole::Accept;
  const char* prefix = accept ? "client_tls" : "server_tls";
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(accept ? TLS_server_method() : TLS_client_method()));
  if (!ctx) return Status::error(std::string(prefix) + ": " + tls_error_text("SSL_CTX_new failed"));
  SSL_CTX* c = ctx.get();

  Result<TlsVersions> v = parse_tls_protocols(s.protocols);
  if (!v) return Status::error(std::string(prefix) + "_protocols: " + v.status().message());
  if (SSL_CTX_set_min_proto_version(c, v->min) != 1 ||
      SSL_CTX_set_max_proto_version(c, v->max) != 1) {
    ERR_clear_error();
    return Status::error(std::string(prefix) + "_protocols = '" + s.protocols +
                         "': a version this OpenSSL does not support");
  }
  // Versions switched off inside the range ("tlsv1.0,tlsv1.2"); OpenSSL's own options.
  if (v->holes & bit(0x0302)) SSL_CTX_set_options(c, SSL_OP_NO_TLSv1_1);
  if (v->holes & bit(0x0303)) SSL_CTX_set_options(c, SSL_OP_NO_TLSv1_2);
  if (v->holes & (bit(0x0301))) SSL_CTX_set_options(c, SSL_OP_NO_TLSv1);

  // Ciphers: PgBouncer's keywords mean OpenSSL's defaults (and its system policy).
  if (!s.ciphers.empty() && !iequals(s.ciphers, "default") && !iequals(s.ciphers, "secure") &&
      !iequals(s.ciphers, "normal") && !iequals(s.ciphers, "fast")) {
    if (SSL_CTX_set_cipher_list(c, s.ciphers.c_str()) != 1) {
      ERR_clear_error();
      return Status::error(std::string(prefix) + "_ciphers: no ciphers for '" + s.ciphers + "'");
    }
  }
  if (!s.tls13_ciphers.empty() && SSL_CTX_set_ciphersuites(c, s.tls13_ciphers.c_str()) != 1) {
    ERR_clear_error();
    return Status::error(std::string(accept ? "client" : "server") +
                         "_tls13_ciphers: no TLS 1.3 cipher suites for '" + s.tls13_ciphers + "'");
  }

  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(
      c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);

  std::string files;
  if (!s.cert_file.empty() || !s.key_file.empty()) {
    if (s.cert_file.empty() || s.key_file.empty()) {
      return Status::error(std::string(prefix) + "_key_file and " + prefix +
                           "_cert_file must be set together");
    }
    Result<std::string> cert = read_small_file(s.cert_file, std::string(prefix) + "_cert_file");
    if (!cert) return cert.status();
    Result<std::string> key = read_small_file(s.key_file, std::string(prefix) + "_key_file");
    if (!key) return key.status();
    Status st = load_keypair(c, *cert, *key, prefix);
    if (!st) return st;
    files += *cert;
    files += '\0';
    files += *key;
    files += '\0';
  }
  if (!s.ca_file.empty()) {
    Result<std::string> ca = read_small_file(s.ca_file, std::string(prefix) + "_ca_file");
    if (!ca) return ca.status();
    Status st = load_ca(c, *ca, prefix, accept);
    if (!st) return st;
    files += *ca;
  } else if (!accept && s.mode >= SslMode::VerifyCa) {
    // No CA file: the system's trust store, as libpq's sslrootcert=system would.
    SSL_CTX_set_default_verify_paths(c);
  }

  if (accept) {
    if (s.key_file.empty()) {
      return Status::error(
          "To allow TLS connections from clients, client_tls_key_file and "
          "client_tls_cert_file must be set");
    }
    // PostgreSQL's choices for the server end: no session resumption, no tickets.
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(c, 0);
    SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(c, select_alpn, nullptr);
    if (iequals(s.ecdhcurve, "none")) {
      // Leave OpenSSL's defaults: TLS 1.3 needs a group; "none" only matters for TLS 1.2.
    } else if (!s.ecdhcurve.empty() && !iequals(s.ecdhcurve, "auto")) {
      if (SSL_CTX_set1_groups_list(c, s.ecdhcurve.c_str()) != 1) {
        ERR_clear_error();
        return Status::error("client_tls_ecdhcurve: unknown curve '" + s.ecdhcurve + "'");
      }
    }
    if (iequals(s.dheparams, "auto") || iequals(s.dheparams, "legacy")) {
      SSL_CTX_set_dh_auto(c, 1);
    } else if (!s.dheparams.empty() && !iequals(s.dheparams, "none")) {
      return Status::error("client_tls_dheparams: invalid value '" + s.dheparams +
                           "' (none, auto or legacy)");
    }
    if (s.mode >= SslMode::VerifyCa) {
      SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    } else if (!s.ca_file.empty()) {
      SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);  // a certificate is checked if sent
    } else {
      SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    }
  } else {
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    static const unsigned char kAlpn[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};
    SSL_CTX_set_alpn_protos(c, kAlpn, sizeof kAlpn);
    // verify-ca and verify-full check the chain in the handshake; the host name check is
    // set per connection (SSL_set1_host), since the context serves every host.
    SSL_CTX_set_verify(c, s.mode >= SslMode::VerifyCa ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  }
  ERR_clear_error();
  return std::shared_ptr<const TlsContext>(
      std::make_shared<TlsContext>(std::move(ctx), role, s, std::move(files)));
}

Result<std::shared_ptr<const TlsContexts>> make_tls_contexts(const Config& c,
                                                             const TlsContexts* previous) {
  auto out = std::make_shared<TlsContexts>();
  TlsSettings cs = client_tls_settings(c);
  TlsSettings ss = server_tls_settings(c);
  if (c.auth_type == AuthType::Cert) {
    if (cs.mode < SslMode::VerifyCa) {
      return Status::error(
          "auth_type = cert requires client_tls_sslmode = verify-ca or "
          "verify-full");
    }
  }
  if (cs.mode >= SslMode::VerifyCa && cs.ca_file.empty()) {
    return Status::error("client_tls_sslmode = " + c.client_tls_sslmode +
                         " requires client_tls_ca_file");
  }
  struct Side {
    const TlsSettings* s;
    TlsRole role;
    std::shared_ptr<const TlsContext> TlsContexts::*field;
  };
  const Side sides[] = {{&cs, TlsRole::Accept, &TlsContexts::client},
                        {&ss, TlsRole::Connect, &TlsContexts::server}};
  for (const Side& side : sides) {
    if (side.s->mode == SslMode::Disable) continue;
    Result<std::shared_ptr<const TlsContext>> built = build_tls_context(*side.s, side.role);
    if (!built) return built.status();
    const std::shared_ptr<const TlsContext>& old =
        previous != nullptr ? previous->*(side.field) : std::shared_ptr<const TlsContext>();
    if (old && old->settings() == *side.s && old->files() == (*built)->files()) {
      out.get()->*(side.field) = old;  // nothing changed: established sessions stay valid
    } else {
      out.get()->*(side.field) = *built;
    }
  }
  return std::shared_ptr<const TlsContexts>(std::move(out));
}

std::string tls_description(const SSL* ssl) {
  if (ssl == nullptr) return "";
  std::string out = SSL_get_version(ssl);
  out += '/';
  const SSL_CIPHER* ciph = SSL_get_current_cipher(ssl);
  out += ciph != nullptr ? SSL_CIPHER_get_name(ciph) : "?";
  int group = SSL_get_negotiated_group(const_cast<SSL*>(ssl));
  if (group != 0 && group != NID_undef) {
    const char* name = OBJ_nid2sn(group & ~TLSEXT_nid_unknown);
    if (name != nullptr && (group & TLSEXT_nid_unknown) == 0) {
      out += (ciph != nullptr && SSL_CIPHER_get_kx_nid(ciph) == NID_kx_dhe) ? "/DH=" : "/ECDH=";
      out += name;
    }
  }
  return out;
}

std::string tls_peer_common_name(const SSL* ssl) {
  if (ssl == nullptr) return "";
  X509* peer = SSL_get0_peer_certificate(ssl);
  if (peer == nullptr) return "";
  X509_NAME* subject = X509_get_subject_name(peer);
  int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (at < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) {
    ERR_clear_error();
    return "";
  }
  std::string cn(reinterpret_cast<const char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  if (cn.find('\0') != std::string::npos) return "";  // "user\0.evil.example" is not "user"
  return cn;
}

}  // namespace pgsluice
