// Password secrets and md5 authentication: secret kinds, md5 secrets and responses, random bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pgsluice {

// What a stored secret (auth_file, auth_query, [databases] password=) holds.
enum class SecretKind : uint8_t {
  Plain,  // a cleartext password
  Md5,    // "md5" + 32 lowercase hex digits: md5(password + user), password-equivalent
  Scram,  // "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
};

// "md5"+32 lowercase hex -> Md5; "SCRAM-SHA-256$" prefix -> Scram; anything else -> Plain.
SecretKind secret_kind(std::string_view secret);

// "md5" + hex(md5(password + user)), the secret PostgreSQL stores for md5.
std::string md5_secret(std::string_view password, std::string_view user);

// What a client sends for an md5 challenge: "md5" + hex(md5(hex(md5(password+user)) + salt)).
// `secret` may be a plain password or an md5 secret (then its hex part is used directly).
// Returns "" if `secret` is a SCRAM secret (it cannot answer md5) or on an OpenSSL failure.
std::string md5_response(std::string_view secret, std::string_view user, const uint8_t salt[4]);

// Checks a client's md5 response against a stored plain or md5 secret (constant-time compare).
// Always false for a SCRAM secret, an empty stored secret or an empty response.
bool md5_verify(std::string_view stored_secret, std::string_view user, const uint8_t salt[4],
                std::string_view response);

// Fills out[0..n) from OpenSSL's CSPRNG (RAND_bytes; draws up to 64 bytes through a
// per-thread buffer of its bytes, emptied in a forked child). False if it failed.
bool random_bytes(uint8_t* out, size_t n);

// Seeds OpenSSL's random generator and runs the md5 digest once, at start: a machine that
// cannot give random bytes is refused at start rather than at the first login, and what
// OpenSSL sets up on first use (its providers, the generator) is not paid by a client.
bool crypto_start();

// Equal length and equal bytes, compared in time that depends only on the lengths.
bool constant_time_eq(std::string_view a, std::string_view b);

// Lowercase hex of `n` bytes.
std::string hex_encode(const uint8_t* data, size_t n);

}  // namespace pgsluice
