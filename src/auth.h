// Client authentication: which method, which secret, and the exchanges (no sockets).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "auth_cache.h"
#include "config.h"
#include "ident.h"
#include "scram.h"

namespace pgsluice {

// How a client proves who it is.
enum class AuthMethod : uint8_t {
  Any,          // no password, and any user name is taken (auth_type = any)
  Trust,        // no password; the user must be known (auth_type = trust)
  Cleartext,    // the password in a PasswordMessage (auth_type = plain)
  Md5,          // md5 challenge; SCRAM instead when the stored secret is SCRAM (auth_type = md5)
  Scram,        // SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over TLS (auth_type = scram-sha-256)
  Cert,         // the verified client certificate's CN is the user name (auth_type = cert)
  Peer,         // the Unix socket's peer OS user is the user name (auth_type = peer, hba peer)
  Reject,       // refused before any exchange (hba: a `reject` line, or no line matches)
  Unsupported,  // an auth_type not built: refused
};

// What the method choice may look at: who asks, for what, and over which connection.
struct AuthAttempt {
  std::string_view user;
  std::string_view database;
  bool is_unix = false;        // the Unix socket (else TCP)
  bool tls = false;            // TLS is established
  std::string_view peer_host;  // numeric address ("unix" on the Unix socket)
};

// The method for this attempt: auth_type, or with auth_type = hba the first matching line
// of auth_hba_file (Config::hba). Reject comes with PostgreSQL's message in *refusal.
// A peer or cert line's map= comes back in *map (empty: the names must be equal).
AuthMethod choose_method(const Config& cfg, const AuthAttempt& attempt, std::string* refusal,
                         std::string* map = nullptr);

// The answer to "which secret does this user have".
struct SecretLookup {
  enum class State : uint8_t {
    Found,    // `secret` is the stored secret (empty: the user has no password)
    Unknown,  // no such user
    Pending,  // the answer comes later (an asynchronous lookup; none exists yet)
  };
  State state = State::Unknown;
  std::string secret;
};

// The stored secret of `user`: today from auth_file (Config::userlist), at once.
SecretLookup lookup_secret(const Config& cfg, std::string_view user);

// The auth_query that finds users of database `db` missing from auth_file: auth_user,
// auth_query and auth_dbname of its [databases] entry, else the global ones (PgBouncer's
// rules). nullopt when no auth_user applies (or `db` is not a known database).
std::optional<LookupScope> lookup_scope(const Config& cfg, std::string_view db);
// Whether `method` needs the user's secret (or at least to know the user exists).
bool method_needs_user(AuthMethod method);

// What an authentication step asks of the client's connection.
struct AuthReply {
  enum class Outcome : uint8_t {
    Continue,   // send `send` and wait for the client's next message
    Succeeded,  // send `send` (may be empty), then the client is authenticated
    Failed,     // log `warning` if any, then end the session with the FATAL below
    Refresh,    // the check failed against a cached secret: look it up again from PostgreSQL
                // (AuthCache::get with force) and call AuthExchange::recheck with the answer
  };
  Outcome outcome = Outcome::Continue;
  std::string send;     // protocol bytes for the client
  std::string warning;  // a line to log with the client's prefix before failing
  std::string sqlstate;
  std::string message;  // the ErrorResponse's text
  std::string reason;   // why the session ended, for the log
};

// The client certificate as auth_type = cert needs it.
struct ClientCert {
  bool verified = false;  // over TLS, a certificate came and its chain verified
  std::string cn;         // its common name (when verified)
};

// Everything an exchange needs, gathered by the client's connection.
struct AuthSetup {
  AuthMethod method = AuthMethod::Unsupported;
  AuthType auth_type = AuthType::Md5;  // the setting, named when its method is unsupported
  std::string user;
  SecretLookup secret;  // Found or Unknown (Pending is taken as Unknown: refused)
  // The secret came from the auth cache, not from PostgreSQL for this very login: a failed
  // check asks for a fresh one once (AuthReply::Outcome::Refresh) before it fails.
  bool may_refresh = false;
  int scram_iterations = kScramDefaultIterations;
  std::string scram_nonce;  // the process's secret for mock SCRAM salts
  std::string cbind;        // over TLS: tls_server_end_point() of our certificate, else empty
  ClientCert cert;          // Cert only
  std::string refusal;      // Reject only: the FATAL message (choose_method)
  bool is_unix = false;     // Peer: the connection came in on the Unix socket
  std::string peer_user;    // Peer: the OS user of the socket's peer (empty: unknown)
  // Peer and Cert from an hba line with map=: the map that must let the OS user (or the
  // certificate's CN) be this user, and the maps (Config::ident).
  std::string map;
  std::shared_ptr<const IdentFile> ident;
};

// SCRAM pass-through: the client proved a stored SCRAM secret, so the pool may log in to a
// server holding the same secret with these keys (Pool::set_scram_keys).
struct ScramPassThrough {
  std::array<uint8_t, 32> client_key{};
  std::array<uint8_t, 32> server_key{};
};

// One client's authentication, from the first request to success or failure. Touches no
// socket and no connection state: the client sends what it is given and ends the session
// on failure. Unknown users and users without a password go through the same motions as
// known ones (md5 challenge, or SCRAM with mock keys) and get the same 28P01.
class AuthExchange {
 public:
  explicit AuthExchange(AuthSetup setup);
  ~AuthExchange();
  AuthExchange(const AuthExchange&) = delete;
  AuthExchange& operator=(const AuthExchange&) = delete;

  // The first step: the authentication request to send, or at once success or failure
  // (any, trust, cert, unsupported). Called once.
  AuthReply start();
  // The body of the client's next 'p' message (PasswordMessage, SASLInitialResponse or
  // SASLResponse; the caller checked type and length).
  AuthReply on_message(std::span<const uint8_t> body);
  // After a Refresh: the check again, against the secret PostgreSQL has now. A password
  // check (cleartext, md5) is repeated with what the client sent; a SCRAM proof cannot be
  // (it was computed over the old secret's salt), so it fails, and the next login meets the
  // new secret. Succeeded or Failed.
  AuthReply recheck(const SecretLookup& fresh);
  // The secret the client proved (after success).
  const std::string& secret() const { return s_.secret.secret; }
  // After a SCRAM success against a stored SCRAM secret: the keys for pass-through.
  std::optional<ScramPassThrough> pass_through() const;

 private:
  enum class Step : uint8_t { None, Cleartext, Md5, ScramFirst, ScramFinal, Done };
  AuthReply start_scram();
  AuthReply check_cleartext(std::string_view pw);
  AuthReply failed() const;  // 28P01, PostgreSQL's password message
  // Peer and cert: whether the OS user or CN may be the user (equal, or through the map).
  bool name_allowed(const std::string& system_name) const;
  AuthReply succeeded(std::string send = {});

  // Fails, or asks for a Refresh when the secret may be out of date (once).
  AuthReply failed_check();

  AuthSetup s_;
  Step step_ = Step::None;
  Step failed_step_ = Step::None;   // the check a Refresh repeats
  std::string retry_answer_;        // what the client sent to it (cleartext or md5 response)
  bool scram_real_secret_ = false;  // the SCRAM keys came from a stored SCRAM secret
  std::array<uint8_t, 4> md5_salt_{};
  std::unique_ptr<ScramServerSession> scram_;
};

}  // namespace pgsluice
