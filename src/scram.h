// SCRAM-SHA-256 (RFC 5802/7677): stored secrets, mock secrets, and the server and client sessions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common.h"

namespace pgsluice {

// Bounds on everything a SCRAM peer or a stored secret can make us handle.
inline constexpr size_t kScramMaxMessageLen = 1024;  // any one SASL message, either direction
inline constexpr size_t kScramMaxNonceLen = 512;     // client nonce, or combined nonce
inline constexpr size_t kScramMaxSaltLen = 256;      // raw salt bytes
inline constexpr size_t kScramMaxSecretLen = 1024;   // a stored "SCRAM-SHA-256$..." string
inline constexpr int kScramMinIterations = 1;
inline constexpr int kScramMaxIterations = 10'000'000;
inline constexpr int kScramDefaultIterations = 4096;
inline constexpr size_t kScramDefaultSaltLen = 16;
inline constexpr size_t kScramKeyLen = 32;

// What a SCRAM-SHA-256 verifier stores. Never holds the password.
struct ScramKeys {
  int iterations = 0;  // 0 means "not valid" (e.g. an OpenSSL failure)
  std::string salt;    // raw bytes
  std::array<uint8_t, 32> stored_key{};
  std::array<uint8_t, 32> server_key{};
};

// Standard base64 with padding. Decoding is strict: length a multiple of 4, only the
// alphabet, '=' only as the final one or two characters (unused low bits of the last
// character are not checked). nullopt on bad input or if the decoded size would exceed
// max_out.
std::string base64_encode(std::string_view raw);
std::optional<std::string> base64_decode(std::string_view b64, size_t max_out);

// The password as SCRAM hashes it. PostgreSQL runs SASLprep (RFC 4013) and falls back to the
// raw bytes when the password is not valid UTF-8 or contains prohibited characters. We do the
// ASCII fast path only: a 7-bit ASCII password is returned unchanged, exactly as PostgreSQL
// does; any other password is used as raw bytes. That matches PostgreSQL for passwords that
// are ASCII, invalid UTF-8, prohibited, or already in NFKC with no mapped characters, and
// differs only for UTF-8 passwords that SASLprep would rewrite (non-ASCII spaces, soft
// hyphens, compatibility forms).
std::string scram_normalize_password(std::string_view password);

// "SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>". nullopt on any deviation
// (bad base64, keys not 32 bytes, salt empty or > kScramMaxSaltLen, iterations out of range).
std::optional<ScramKeys> parse_scram_secret(std::string_view secret);
// Derives the keys from a password. iterations == 0 in the result if the inputs are out of
// bounds or OpenSSL failed.
ScramKeys scram_keys_from_password(std::string_view password, std::string_view salt,
                                   int iterations);
// Ad hoc keys for a plaintext password: a fresh random kScramDefaultSaltLen-byte salt.
std::optional<ScramKeys> scram_keys_with_random_salt(std::string_view password, int iterations);
std::string scram_secret_string(const ScramKeys& k);  // inverse of parse
// Deterministic keys for a user that does not exist, so an attacker cannot tell (salt derived from
// user + a per-process random nonce; the exchange looks like a real one and always fails).
ScramKeys scram_mock_keys(std::string_view user, std::string_view process_nonce, int iterations);

// Keys derived from plain-text secrets, so that PBKDF2 runs once per (user, secret, iterations)
// rather than on the event loop at every SCRAM login. The salt is chosen at random by the first
// derivation and then stays, as a stored secret's does (so a known user's salt is as stable
// as an unknown user's mock salt). Entries are keyed by a hash of user, secret and iterations:
// a secret changed by a reload simply misses. Thread-safe; the lock is never held while
// deriving. Bounded: when full, it is emptied.
class ScramKeyCache {
 public:
  explicit ScramKeyCache(size_t max_entries = 4096) : max_(max_entries) {}
  // The keys for `password`; iterations == 0 in the result if deriving failed.
  ScramKeys get(std::string_view user, std::string_view password, int iterations);
  uint64_t derivations() const;  // PBKDF2 runs so far
  size_t size() const;

 private:
  mutable std::mutex mu_;
  size_t max_;
  uint64_t derivations_ = 0;
  std::map<std::string, ScramKeys> keys_;
};
// The process-wide cache used by client authentication.
ScramKeyCache& scram_key_cache();

// The pooler verifying a client (server role). One exchange per object.
class ScramServerSession {
 public:
  ScramServerSession(ScramKeys keys, bool mock);
  // Tests only: use `server_nonce` (printable, no ',') instead of a random one.
  ScramServerSession(ScramKeys keys, bool mock, std::string server_nonce);
  ~ScramServerSession();
  ScramServerSession(ScramServerSession&&) = default;
  ScramServerSession& operator=(ScramServerSession&&) = default;

  // Over TLS, before handle_client_first: SCRAM-SHA-256-PLUS was offered with this
  // tls-server-end-point data (tls_server_end_point()), and `plus` says whether the client
  // chose it. Without this call no binding is offered (a plain connection).
  void set_channel_binding(std::string cbind_data, bool plus);

  // SASLInitialResponse payload (client-first-message). Returns server-first-message.
  // With SCRAM-SHA-256-PLUS the gs2 header must be "p=tls-server-end-point"; without it
  // 'n' is accepted, and 'y' only when no binding was offered ('y' over TLS is a
  // downgrade: the client thinks we offer no binding). Errors are PostgreSQL's.
  Result<std::string> handle_client_first(std::string_view msg);
  // SASLResponse payload (client-final-message). Returns server-final-message ("v=...") on
  // success; a wrong proof (or a mock session) gives sqlstate "28P01" and message
  // "password authentication failed" (the caller adds the user); malformed input "08P01".
  Result<std::string> handle_client_final(std::string_view msg);
  // After success: ClientKey recovered from the proof (for SCRAM pass-through to the server).
  const std::array<uint8_t, 32>& client_key() const { return client_key_; }
  const ScramKeys& keys() const { return keys_; }
  bool succeeded() const { return state_ == State::Done; }

 private:
  enum class State : uint8_t {
    WantClientFirst,  // nothing received yet
    WantClientFinal,  // server-first sent
    Done,             // authenticated; client_key_ valid
    Failed,           // any error; further calls fail
  };
  Status fail(std::string msg, std::string sqlstate);

  ScramKeys keys_;
  bool mock_ = false;
  State state_ = State::WantClientFirst;
  std::string fixed_server_nonce_;
  std::string gs2_header_;         // e.g. "n,," or "p=tls-server-end-point,,"
  std::string cbind_data_;         // tls-server-end-point hash; empty: no binding offered
  bool plus_ = false;              // the client chose SCRAM-SHA-256-PLUS
  std::string client_first_bare_;  // "n=...,r=..."
  std::string server_first_;
  std::string nonce_;  // client nonce + server nonce
  std::array<uint8_t, 32> client_key_{};
};

// Channel binding of the pooler's SCRAM login to PostgreSQL (RFC 5802 gs2 header).
enum class ScramBinding : uint8_t {
  None,       // "n,,": not over TLS, no binding possible
  Supported,  // "y,,": over TLS, but the server offered no SCRAM-SHA-256-PLUS
  EndPoint,   // "p=tls-server-end-point,,": SCRAM-SHA-256-PLUS bound to the server's certificate
};

// The pooler logging in to PostgreSQL (client role). gs2 header "n,," unless
// set_channel_binding() says otherwise.
class ScramClientSession {
 public:
  static ScramClientSession with_password(std::string_view password);
  // Pass-through: keys recovered from a client's SCRAM exchange (ScramServerSession::client_key)
  // and the stored secret's ServerKey.
  static ScramClientSession with_keys(const std::array<uint8_t, 32>& client_key,
                                      const std::array<uint8_t, 32>& server_key);
  ~ScramClientSession();
  ScramClientSession(ScramClientSession&&) = default;
  ScramClientSession& operator=(ScramClientSession&&) = default;

  // Tests only: client_first() sends `nonce` (printable, no ',') and "n=<user_name>".
  void set_fixed_nonce_for_testing(std::string_view nonce, std::string_view user_name = {});

  // Before client_first(): the binding to use; for EndPoint, `cb_data` is the server
  // certificate's hash (tls_server_end_point in tls.h), which must not be empty.
  void set_channel_binding(ScramBinding b, std::string cb_data = {});
  // The SASL mechanism to name in the SASLInitialResponse.
  const char* mechanism() const {
    return binding_ == ScramBinding::EndPoint ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256";
  }
  // "<gs2 header>n=,r=<24 random bytes b64>"; "" if the CSPRNG failed (or EndPoint without
  // data).
  std::string client_first();
  // Returns client-final-message; validates nonce prefix, salt, i bounds.
  Result<std::string> handle_server_first(std::string_view msg);
  Status verify_server_final(std::string_view msg);  // checks v= server signature

 private:
  enum class State : uint8_t {
    Start,            // client_first() not called yet
    WantServerFirst,  // client-first sent
    WantServerFinal,  // client-final sent
    Done,             // server signature verified
    Failed,           // any error; further calls fail
  };
  ScramClientSession() = default;
  Status fail(std::string msg, std::string sqlstate = "08P01");

  State state_ = State::Start;
  bool have_keys_ = false;  // pass-through: client_key_/server_key_ given, no password
  std::string password_;    // as given; normalised when hashed; wiped on destruction
  std::array<uint8_t, 32> client_key_{};
  std::array<uint8_t, 32> server_key_{};
  std::string fixed_nonce_;
  std::string user_name_;
  std::string client_nonce_;
  std::string client_first_bare_;
  ScramBinding binding_ = ScramBinding::None;
  std::string cb_data_;  // EndPoint: the certificate hash
  std::array<uint8_t, 32> expected_server_signature_{};
};

}  // namespace pgsluice
