// Password secrets and md5 authentication: secret kinds, md5 secrets and responses, random bytes.
#include "password.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <pthread.h>

#include <atomic>
#include <climits>
#include <cstring>
#include <memory>
#include <optional>

namespace pgsluice {

namespace {

constexpr std::string_view kMd5Prefix = "md5";
constexpr std::string_view kScramPrefix = "SCRAM-SHA-256$";
constexpr size_t kMd5HexLen = 32;
constexpr size_t kMd5SecretLen = 3 + kMd5HexLen;
constexpr size_t kMd5SaltLen = 4;

bool is_lower_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// MD5 fetched from OpenSSL's providers once (EVP_md5() fetches it again at every init, a
// look-up under a lock), and one digest context per thread, reset between uses: an md5
// login computes two digests. Null when MD5 is unavailable (FIPS).
const EVP_MD* md5_method() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "MD5", nullptr);
  return md;
}

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
thread_local std::unique_ptr<EVP_MD_CTX, MdCtxFree> t_md_ctx;

// hex(md5(a + b)), or nullopt if OpenSSL failed (e.g. MD5 unavailable under FIPS).
std::optional<std::string> md5_hex2(std::string_view a, std::string_view b) {
  const EVP_MD* md = md5_method();
  if (md == nullptr) return std::nullopt;
  if (t_md_ctx == nullptr) t_md_ctx.reset(EVP_MD_CTX_new());
  EVP_MD_CTX* ctx = t_md_ctx.get();
  if (ctx == nullptr) return std::nullopt;
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  bool ok = EVP_DigestInit_ex(ctx, md, nullptr) == 1 &&
            EVP_DigestUpdate(ctx, a.data(), a.size()) == 1 &&
            EVP_DigestUpdate(ctx, b.data(), b.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, digest, &len) == 1 && len == 16;
  EVP_MD_CTX_reset(ctx);  // wipes what the context held of the inputs
  if (!ok) return std::nullopt;
  std::string out = hex_encode(digest, len);
  OPENSSL_cleanse(digest, sizeof(digest));
  return out;
}

// The hex part of md5(password + user): taken from an md5 secret or computed from a password.
std::optional<std::string> inner_md5_hex(std::string_view secret, std::string_view user) {
  switch (secret_kind(secret)) {
    case SecretKind::Md5:
      return std::string(secret.substr(kMd5Prefix.size()));
    case SecretKind::Plain:
      return md5_hex2(secret, user);
    case SecretKind::Scram:
      break;
  }
  return std::nullopt;
}

// Random bytes for the small draws of every login (md5 salt, cancel key, nonces) come from a
// per-thread buffer that RAND_bytes refills 256 bytes at a time: one call into OpenSSL per
// about 25 logins instead of three per login, each of which asks the kernel for the pid (its
// fork check). The bytes handed out are wiped from the buffer. A fork empties the buffer in
// the child (pthread_atfork), so parent and child never hand out the same bytes.
constexpr size_t kRandomPoolSize = 256;
constexpr size_t kRandomPoolMaxDraw = 64;  // larger draws go to RAND_bytes directly
std::atomic<unsigned> g_fork_generation{0};

void note_fork_in_child() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
}

struct RandomPool {
  uint8_t bytes[kRandomPoolSize];
  size_t pos = kRandomPoolSize;  // bytes[pos..] not handed out yet
  unsigned generation = 0;
  ~RandomPool() { OPENSSL_cleanse(bytes, sizeof bytes); }
};
thread_local RandomPool t_random_pool;

bool rand_bytes_direct(uint8_t* out, size_t n) {
  while (n > 0) {
    size_t chunk = n > static_cast<size_t>(INT_MAX) ? static_cast<size_t>(INT_MAX) : n;
    if (RAND_bytes(out, static_cast<int>(chunk)) != 1) return false;
    out += chunk;
    n -= chunk;
  }
  return true;
}

}  // namespace

SecretKind secret_kind(std::string_view secret) {
  if (secret.size() == kMd5SecretLen && secret.substr(0, kMd5Prefix.size()) == kMd5Prefix) {
    bool all_hex = true;
    for (char c : secret.substr(kMd5Prefix.size())) all_hex = all_hex && is_lower_hex(c);
    if (all_hex) return SecretKind::Md5;
  }
  if (secret.substr(0, kScramPrefix.size()) == kScramPrefix) return SecretKind::Scram;
  return SecretKind::Plain;
}

std::string hex_encode(const uint8_t* data, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; i++) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0x0f]);
  }
  return out;
}

std::string md5_secret(std::string_view password, std::string_view user) {
  auto hex = md5_hex2(password, user);
  if (!hex) return {};
  return std::string(kMd5Prefix) + *hex;
}

std::string md5_response(std::string_view secret, std::string_view user, const uint8_t salt[4]) {
  auto inner = inner_md5_hex(secret, user);
  if (!inner) return {};
  auto outer = md5_hex2(*inner, std::string_view(reinterpret_cast<const char*>(salt), kMd5SaltLen));
  OPENSSL_cleanse(inner->data(), inner->size());
  if (!outer) return {};
  return std::string(kMd5Prefix) + *outer;
}

bool md5_verify(std::string_view stored_secret, std::string_view user, const uint8_t salt[4],
                std::string_view response) {
  if (stored_secret.empty() || response.empty()) return false;
  std::string expected = md5_response(stored_secret, user, salt);
  if (expected.empty()) return false;
  bool ok = constant_time_eq(expected, response);
  OPENSSL_cleanse(expected.data(), expected.size());
  return ok;
}

bool random_bytes(uint8_t* out, size_t n) {
  static const bool fork_hook = pthread_atfork(nullptr, nullptr, note_fork_in_child) == 0;
  if (n > kRandomPoolMaxDraw || !fork_hook) return rand_bytes_direct(out, n);
  RandomPool& p = t_random_pool;
  const unsigned generation = g_fork_generation.load(std::memory_order_relaxed);
  if (p.generation != generation) {  // a copy of the parent's buffer: never used
    OPENSSL_cleanse(p.bytes, sizeof p.bytes);
    p.pos = kRandomPoolSize;
    p.generation = generation;
  }
  if (kRandomPoolSize - p.pos < n) {
    if (!rand_bytes_direct(p.bytes, kRandomPoolSize)) return false;
    p.pos = 0;
  }
  std::memcpy(out, p.bytes + p.pos, n);
  OPENSSL_cleanse(p.bytes + p.pos, n);
  p.pos += n;
  return true;
}

bool crypto_start() {
  uint8_t b[16];
  return random_bytes(b, sizeof b) && !md5_secret("pgsluice", "start").empty();
}

bool constant_time_eq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace pgsluice
