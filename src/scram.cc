// SCRAM-SHA-256 (RFC 5802/7677): stored secrets, mock secrets, and the server and client sessions.
#include "scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <charconv>
#include <climits>
#include <utility>

#include "password.h"

namespace pgsluice {

namespace {

using Key = std::array<uint8_t, 32>;

constexpr std::string_view kSecretPrefix = "SCRAM-SHA-256$";
constexpr size_t kServerNonceRawLen = 18;  // 24 base64 characters, as PostgreSQL sends
constexpr size_t kClientNonceRawLen = 24;  // 32 base64 characters
constexpr size_t kMaxIterationDigits = 8;  // kScramMaxIterations has 8 digits
constexpr size_t kMaxServerErrorShown = 64;
constexpr char kFailedAuth[] = "password authentication failed";

static_assert(kScramKeyLen == sizeof(Key));

// Overwrites a string's whole buffer (not only its current contents) before clearing it.
void wipe(std::string& s) {
  s.resize(s.capacity());
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

std::string_view as_chars(const uint8_t* p, size_t n) {
  return std::string_view(reinterpret_cast<const char*>(p), n);
}
std::string_view as_chars(const Key& k) {
  return as_chars(k.data(), k.size());
}
const uint8_t* as_bytes(std::string_view s) {
  return reinterpret_cast<const uint8_t*>(s.data());
}

bool sha256(std::string_view data, Key& out) {
  unsigned int len = 0;
  return EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) == 1 &&
         len == out.size();
}

bool hmac_sha256(std::string_view key, std::string_view data, Key& out) {
  if (key.size() > static_cast<size_t>(INT_MAX)) return false;
  unsigned int len = 0;
  return HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), as_bytes(data), data.size(),
              out.data(), &len) != nullptr &&
         len == out.size();
}

Key xor_keys(const Key& a, const Key& b) {
  Key out{};
  for (size_t i = 0; i < out.size(); i++) out[i] = static_cast<uint8_t>(a[i] ^ b[i]);
  return out;
}

bool iterations_ok(int iterations) {
  return iterations >= kScramMinIterations && iterations <= kScramMaxIterations;
}

// SaltedPassword, ClientKey, StoredKey and ServerKey from a password (RFC 5802 §3).
bool derive_keys(std::string_view password, std::string_view salt, int iterations, ScramKeys& keys,
                 Key& client_key) {
  if (!iterations_ok(iterations) || salt.empty() || salt.size() > kScramMaxSaltLen ||
      password.size() > static_cast<size_t>(INT_MAX))
    return false;
  std::string pw = scram_normalize_password(password);
  Key salted{};
  bool ok = PKCS5_PBKDF2_HMAC(pw.data(), static_cast<int>(pw.size()), as_bytes(salt),
                              static_cast<int>(salt.size()), iterations, EVP_sha256(),
                              static_cast<int>(salted.size()), salted.data()) == 1 &&
            hmac_sha256(as_chars(salted), "Client Key", client_key) &&
            hmac_sha256(as_chars(salted), "Server Key", keys.server_key) &&
            sha256(as_chars(client_key), keys.stored_key);
  wipe(pw);
  OPENSSL_cleanse(salted.data(), salted.size());
  if (!ok) return false;
  keys.iterations = iterations;
  keys.salt = std::string(salt);
  return true;
}

// Characters RFC 5802 allows in a nonce: printable ASCII except ','.
bool valid_nonce(std::string_view n) {
  if (n.empty() || n.size() > kScramMaxNonceLen) return false;
  for (char c : n)
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  return true;
}

bool has_nul(std::string_view s) {
  return s.find('\0') != std::string_view::npos;
}

// Walks the comma-separated "a=value" attributes of one SCRAM message.
class AttrReader {
 public:
  explicit AttrReader(std::string_view in) : rest_(in) {}
  // The next attribute, or false if the input is malformed there (or exhausted).
  bool next(char& name, std::string_view& value) {
    if (done_ || rest_.size() < 2 || rest_[1] != '=') return false;
    char c = rest_[0];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return false;
    name = c;
    size_t comma = rest_.find(',', 2);
    if (comma == std::string_view::npos) {
      value = rest_.substr(2);
      rest_ = {};
      done_ = true;
    } else {
      value = rest_.substr(2, comma - 2);
      rest_ = rest_.substr(comma + 1);
    }
    return true;
  }
  // Reads one attribute that must be called `want`.
  bool expect(char want, std::string_view& value) {
    char name = 0;
    return next(name, value) && name == want;
  }
  // Skips extension attributes to the end; false if one is malformed.
  bool skip_extensions() {
    char name = 0;
    std::string_view value;
    while (!done_)
      if (!next(name, value)) return false;
    return true;
  }
  bool done() const { return done_; }
  // The first character of the attribute that next() would read, or 0.
  char peek() const { return done_ || rest_.empty() ? 0 : rest_[0]; }

 private:
  std::string_view rest_;
  bool done_ = false;
};

bool decode_key(std::string_view b64, Key& out) {
  auto raw = base64_decode(b64, out.size());
  if (!raw || raw->size() != out.size()) return false;
  for (size_t i = 0; i < out.size(); i++) out[i] = static_cast<uint8_t>((*raw)[i]);
  return true;
}

// A positive decimal number without sign or leading '+', within the iteration bounds.
bool parse_iterations(std::string_view s, int& out) {
  if (s.empty() || s.size() > kMaxIterationDigits) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  int v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || !iterations_ok(v)) return false;
  out = v;
  return true;
}

std::string random_nonce(size_t raw_len) {
  std::array<uint8_t, 32> raw{};
  if (raw_len > raw.size() || !random_bytes(raw.data(), raw_len)) return {};
  return base64_encode(as_chars(raw.data(), raw_len));
}

int8_t b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return static_cast<int8_t>(c - 'A');
  if (c >= 'a' && c <= 'z') return static_cast<int8_t>(c - 'a' + 26);
  if (c >= '0' && c <= '9') return static_cast<int8_t>(c - '0' + 52);
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string base64_encode(std::string_view raw) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= raw.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(raw[i])) << 16 |
                 static_cast<uint32_t>(static_cast<uint8_t>(raw[i + 1])) << 8 |
                 static_cast<uint32_t>(static_cast<uint8_t>(raw[i + 2]));
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  size_t left = raw.size() - i;
  if (left > 0) {
    uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(raw[i])) << 16;
    if (left == 2) v |= static_cast<uint32_t>(static_cast<uint8_t>(raw[i + 1])) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(left == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view b64, size_t max_out) {
  if (b64.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (!b64.empty() && b64.back() == '=') pad = b64[b64.size() - 2] == '=' ? 2 : 1;
  size_t out_len = b64.size() / 4 * 3 - pad;  // size() >= 4 whenever pad > 0
  if (out_len > max_out) return std::nullopt;
  std::string out;
  out.reserve(out_len);
  for (size_t i = 0; i < b64.size(); i += 4) {
    bool last = i + 4 == b64.size();
    uint32_t v = 0;
    for (size_t j = 0; j < 4; j++) {
      char c = b64[i + j];
      int8_t d = 0;
      if (c == '=') {
        // Only in the final group's last `pad` positions.
        if (!last || j < 4 - pad) return std::nullopt;
      } else {
        d = b64_value(c);
        if (d < 0) return std::nullopt;
      }
      v = v << 6 | static_cast<uint32_t>(d);
    }
    out.push_back(static_cast<char>((v >> 16) & 0xff));
    if (!last || pad < 2) out.push_back(static_cast<char>((v >> 8) & 0xff));
    if (!last || pad < 1) out.push_back(static_cast<char>(v & 0xff));
  }
  return out;
}

std::string scram_normalize_password(std::string_view password) {
  // ASCII fast path, as in PostgreSQL: pure 7-bit ASCII needs no SASLprep processing.
  // Anything else: raw bytes (see the header for where this differs from full SASLprep).
  return std::string(password);
}

std::optional<ScramKeys> parse_scram_secret(std::string_view secret) {
  if (secret.size() > kScramMaxSecretLen || secret.substr(0, kSecretPrefix.size()) != kSecretPrefix)
    return std::nullopt;
  std::string_view rest = secret.substr(kSecretPrefix.size());
  size_t colon1 = rest.find(':');
  size_t dollar = rest.find('$');
  if (colon1 == std::string_view::npos || dollar == std::string_view::npos || dollar < colon1)
    return std::nullopt;
  size_t colon2 = rest.find(':', dollar);
  if (colon2 == std::string_view::npos) return std::nullopt;
  ScramKeys k;
  if (!parse_iterations(rest.substr(0, colon1), k.iterations)) return std::nullopt;
  auto salt = base64_decode(rest.substr(colon1 + 1, dollar - colon1 - 1), kScramMaxSaltLen);
  if (!salt || salt->empty()) return std::nullopt;
  k.salt = std::move(*salt);
  if (!decode_key(rest.substr(dollar + 1, colon2 - dollar - 1), k.stored_key) ||
      !decode_key(rest.substr(colon2 + 1), k.server_key))
    return std::nullopt;
  return k;
}

ScramKeys scram_keys_from_password(std::string_view password, std::string_view salt,
                                   int iterations) {
  ScramKeys k;
  Key client_key{};
  if (!derive_keys(password, salt, iterations, k, client_key)) k = ScramKeys{};
  OPENSSL_cleanse(client_key.data(), client_key.size());
  return k;
}

std::optional<ScramKeys> scram_keys_with_random_salt(std::string_view password, int iterations) {
  std::array<uint8_t, kScramDefaultSaltLen> salt{};
  if (!random_bytes(salt.data(), salt.size())) return std::nullopt;
  ScramKeys k = scram_keys_from_password(password, as_chars(salt.data(), salt.size()), iterations);
  if (k.iterations == 0) return std::nullopt;
  return k;
}

std::string scram_secret_string(const ScramKeys& k) {
  return std::string(kSecretPrefix) + std::to_string(k.iterations) + ":" + base64_encode(k.salt) +
         "$" + base64_encode(as_chars(k.stored_key)) + ":" + base64_encode(as_chars(k.server_key));
}

ScramKeys scram_mock_keys(std::string_view user, std::string_view process_nonce, int iterations) {
  // Every value is an HMAC keyed by the per-process nonce, so it is stable for one user within
  // one process and unpredictable without the nonce. The keys match no password anyone knows,
  // and ScramServerSession fails a mock exchange whatever the proof.
  ScramKeys k;
  k.iterations = iterations_ok(iterations) ? iterations : kScramDefaultIterations;
  auto derive = [&](std::string_view label, Key& out) {
    std::string m(label);
    m.push_back('\0');
    m.append(user);
    return hmac_sha256(process_nonce, m, out);
  };
  Key salt{};
  if (!derive("salt", salt) || !derive("stored", k.stored_key) || !derive("server", k.server_key)) {
    salt.fill(0x5a);  // OpenSSL failed: still looks like a real secret; the exchange fails anyway
  }
  k.salt = std::string(as_chars(salt.data(), kScramDefaultSaltLen));
  return k;
}

// ---------------------------------------------------------------------------------------------
// ScramKeyCache

ScramKeys ScramKeyCache::get(std::string_view user, std::string_view password, int iterations) {
  std::string id(user);
  id.push_back('\0');
  id.append(password);
  id.push_back('\0');
  id.append(std::to_string(iterations));
  Key digest{};
  bool hashed = sha256(id, digest);
  wipe(id);
  if (!hashed) return ScramKeys{};
  std::string key(as_chars(digest));
  OPENSSL_cleanse(digest.data(), digest.size());
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = keys_.find(key);
    if (it != keys_.end()) return it->second;
  }
  std::optional<ScramKeys> k = scram_keys_with_random_salt(password, iterations);
  std::lock_guard<std::mutex> g(mu_);
  derivations_++;
  if (!k) return ScramKeys{};
  if (keys_.size() >= max_) keys_.clear();
  // Another thread may have derived the same keys meanwhile: the first one stays.
  return keys_.emplace(std::move(key), std::move(*k)).first->second;
}

uint64_t ScramKeyCache::derivations() const {
  std::lock_guard<std::mutex> g(mu_);
  return derivations_;
}

size_t ScramKeyCache::size() const {
  std::lock_guard<std::mutex> g(mu_);
  return keys_.size();
}

ScramKeyCache& scram_key_cache() {
  static ScramKeyCache cache;
  return cache;
}

// ---------------------------------------------------------------------------------------------
// ScramServerSession

ScramServerSession::ScramServerSession(ScramKeys keys, bool mock)
    : keys_(std::move(keys)), mock_(mock) {}

ScramServerSession::ScramServerSession(ScramKeys keys, bool mock, std::string server_nonce)
    : keys_(std::move(keys)), mock_(mock), fixed_server_nonce_(std::move(server_nonce)) {}

ScramServerSession::~ScramServerSession() {
  OPENSSL_cleanse(client_key_.data(), client_key_.size());
}

Status ScramServerSession::fail(std::string msg, std::string sqlstate) {
  state_ = State::Failed;
  OPENSSL_cleanse(client_key_.data(), client_key_.size());
  return Status::error(std::move(msg), std::move(sqlstate));
}

void ScramServerSession::set_channel_binding(std::string cbind_data, bool plus) {
  cbind_data_ = std::move(cbind_data);
  plus_ = plus && !cbind_data_.empty();
}

Result<std::string> ScramServerSession::handle_client_first(std::string_view msg) {
  if (state_ != State::WantClientFirst) return fail("unexpected SASL message", "08P01");
  if (msg.size() < 3 || msg.size() > kScramMaxMessageLen || has_nul(msg))
    return fail("malformed SCRAM message", "08P01");
  // gs2-header: cbind-flag "," [authzid] ","; cbind-flag is "n", "y" or "p=" cb-name.
  size_t pos = 0;
  switch (msg[0]) {
    case 'p': {
      if (!plus_)
        return fail(
            "malformed SCRAM message (the client selected SCRAM-SHA-256 without channel "
            "binding, but the SCRAM message includes channel binding data)",
            "08P01");
      size_t comma = msg.find(',');
      if (msg[1] != '=' || comma == std::string_view::npos)
        return fail("malformed SCRAM message (bad channel-binding flag)", "08P01");
      std::string_view type = msg.substr(2, comma - 2);
      if (type != "tls-server-end-point") {
        std::string shown;
        for (char c : type.substr(0, 64)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
        return fail("unsupported SCRAM channel-binding type \"" + shown + "\"", "08P01");
      }
      pos = comma + 1;
      break;
    }
    case 'n':
    case 'y':
      if (plus_)
        return fail(
            "malformed SCRAM message (the client selected SCRAM-SHA-256-PLUS, but the SCRAM "
            "message does not include channel binding data)",
            "08P01");
      // 'y': the client could bind but thinks we cannot. Over TLS we can: a man in the
      // middle may have removed SCRAM-SHA-256-PLUS from the list (RFC 5802 section 6).
      if (msg[0] == 'y' && !cbind_data_.empty())
        return fail(
            "SCRAM channel binding negotiation error (the client supports SCRAM channel "
            "binding but thinks the server does not; however, this server does support "
            "channel binding)",
            "08P01");
      if (msg[1] != ',')
        return fail("malformed SCRAM message (unexpected channel-binding flag)", "08P01");
      pos = 2;
      break;
    default:
      return fail("malformed SCRAM message (unexpected channel-binding flag)", "08P01");
  }
  if (pos >= msg.size()) return fail("malformed SCRAM message", "08P01");
  if (msg[pos] != ',') {
    if (msg[pos] == 'a')
      return fail("client uses authorization identity, but it is not supported", "0A000");
    return fail("malformed SCRAM message (unexpected attribute in gs2 header)", "08P01");
  }
  pos++;
  AttrReader r(msg.substr(pos));
  if (r.peek() == 'm') return fail("client requires an unsupported SCRAM extension", "0A000");
  std::string_view user, cnonce;
  if (!r.expect('n', user)) return fail("malformed SCRAM message (expected n=)", "08P01");
  if (!r.expect('r', cnonce) || !valid_nonce(cnonce))
    return fail("malformed SCRAM message (expected a valid r=)", "08P01");
  if (!r.skip_extensions()) return fail("malformed SCRAM message (bad extension)", "08P01");

  if (!iterations_ok(keys_.iterations) || keys_.salt.empty() ||
      keys_.salt.size() > kScramMaxSaltLen)
    return fail("invalid SCRAM secret", "XX000");
  std::string snonce = fixed_server_nonce_;
  if (snonce.empty()) snonce = random_nonce(kServerNonceRawLen);
  if (!valid_nonce(snonce)) return fail("could not generate SCRAM nonce", "XX000");

  gs2_header_ = std::string(msg.substr(0, pos));
  client_first_bare_ = std::string(msg.substr(pos));
  nonce_ = std::string(cnonce) + snonce;
  server_first_ =
      "r=" + nonce_ + ",s=" + base64_encode(keys_.salt) + ",i=" + std::to_string(keys_.iterations);
  state_ = State::WantClientFinal;
  return server_first_;
}

Result<std::string> ScramServerSession::handle_client_final(std::string_view msg) {
  if (state_ != State::WantClientFinal) return fail("unexpected SASL message", "08P01");
  if (msg.size() > kScramMaxMessageLen || has_nul(msg))
    return fail("malformed SCRAM message", "08P01");
  AttrReader r(msg);
  std::string_view cbind, nonce, proof_b64;
  if (!r.expect('c', cbind)) return fail("malformed SCRAM message (expected c=)", "08P01");
  // c= is the gs2 header, followed with SCRAM-SHA-256-PLUS by the binding data: our own
  // certificate's hash as this TLS session has it. A man in the middle has another one.
  std::string expected = gs2_header_;
  if (plus_) expected += cbind_data_;
  auto cbind_raw = base64_decode(cbind, expected.size());
  if (!cbind_raw || cbind_raw->size() != expected.size() ||
      CRYPTO_memcmp(cbind_raw->data(), expected.data(), expected.size()) != 0)
    return fail("SCRAM channel binding check failed", plus_ ? "28000" : "08P01");
  if (!r.expect('r', nonce) || nonce != nonce_) return fail("SCRAM nonce does not match", "08P01");
  // Extensions, then the proof, which must be the last attribute.
  for (;;) {
    char name = 0;
    if (!r.next(name, proof_b64)) return fail("malformed SCRAM message (expected p=)", "08P01");
    if (name == 'p') break;
  }
  if (!r.done()) return fail("malformed SCRAM message (garbage after p=)", "08P01");
  Key proof{};
  if (!decode_key(proof_b64, proof)) return fail("malformed SCRAM proof", "08P01");
  // proof_b64 ends the message and is preceded by ",p=".
  size_t proof_at = static_cast<size_t>(proof_b64.data() - msg.data());
  std::string_view without_proof = msg.substr(0, proof_at - 3);

  std::string auth_message = client_first_bare_;
  auth_message.append(",").append(server_first_).append(",").append(without_proof);
  Key client_sig{}, server_sig{}, stored{};
  if (!hmac_sha256(as_chars(keys_.stored_key), auth_message, client_sig) ||
      !hmac_sha256(as_chars(keys_.server_key), auth_message, server_sig))
    return fail("SCRAM computation failed", "XX000");
  Key client_key = xor_keys(proof, client_sig);
  bool match = sha256(as_chars(client_key), stored) &&
               CRYPTO_memcmp(stored.data(), keys_.stored_key.data(), stored.size()) == 0;
  if (!match || mock_) {
    OPENSSL_cleanse(client_key.data(), client_key.size());
    return fail(kFailedAuth, "28P01");
  }
  client_key_ = client_key;
  OPENSSL_cleanse(client_key.data(), client_key.size());
  state_ = State::Done;
  return "v=" + base64_encode(as_chars(server_sig));
}

// ---------------------------------------------------------------------------------------------
// ScramClientSession

ScramClientSession ScramClientSession::with_password(std::string_view password) {
  ScramClientSession s;
  s.password_ = std::string(password);
  return s;
}

ScramClientSession ScramClientSession::with_keys(const std::array<uint8_t, 32>& client_key,
                                                 const std::array<uint8_t, 32>& server_key) {
  ScramClientSession s;
  s.have_keys_ = true;
  s.client_key_ = client_key;
  s.server_key_ = server_key;
  return s;
}

ScramClientSession::~ScramClientSession() {
  wipe(password_);
  OPENSSL_cleanse(client_key_.data(), client_key_.size());
  OPENSSL_cleanse(server_key_.data(), server_key_.size());
}

Status ScramClientSession::fail(std::string msg, std::string sqlstate) {
  state_ = State::Failed;
  return Status::error(std::move(msg), std::move(sqlstate));
}

void ScramClientSession::set_fixed_nonce_for_testing(std::string_view nonce,
                                                     std::string_view user_name) {
  fixed_nonce_ = std::string(nonce);
  user_name_ = std::string(user_name);
}

void ScramClientSession::set_channel_binding(ScramBinding b, std::string cb_data) {
  binding_ = b;
  cb_data_ = b == ScramBinding::EndPoint ? std::move(cb_data) : std::string();
}

namespace {
std::string_view gs2_header(ScramBinding b) {
  switch (b) {
    case ScramBinding::Supported:
      return "y,,";
    case ScramBinding::EndPoint:
      return "p=tls-server-end-point,,";
    case ScramBinding::None:
      break;
  }
  return "n,,";
}
}  // namespace

std::string ScramClientSession::client_first() {
  if (state_ != State::Start || (binding_ == ScramBinding::EndPoint && cb_data_.empty())) {
    state_ = State::Failed;
    return {};
  }
  client_nonce_ = fixed_nonce_.empty() ? random_nonce(kClientNonceRawLen) : fixed_nonce_;
  if (!valid_nonce(client_nonce_)) {
    state_ = State::Failed;
    return {};
  }
  client_first_bare_ = "n=" + user_name_ + ",r=" + client_nonce_;
  state_ = State::WantServerFirst;
  return std::string(gs2_header(binding_)) + client_first_bare_;
}

Result<std::string> ScramClientSession::handle_server_first(std::string_view msg) {
  if (state_ != State::WantServerFirst) return fail("unexpected SCRAM message from server");
  if (msg.size() > kScramMaxMessageLen || has_nul(msg))
    return fail("malformed SCRAM server-first-message");
  AttrReader r(msg);
  if (r.peek() == 'm') return fail("server requires an unsupported SCRAM extension");
  std::string_view nonce, salt_b64, iter_s;
  // The combined nonce must extend ours by a non-empty server part.
  if (!r.expect('r', nonce) || !valid_nonce(nonce) || nonce.size() <= client_nonce_.size() ||
      nonce.substr(0, client_nonce_.size()) != client_nonce_)
    return fail("invalid SCRAM server nonce");
  if (!r.expect('s', salt_b64)) return fail("malformed SCRAM server-first-message (s=)");
  auto salt = base64_decode(salt_b64, kScramMaxSaltLen);
  if (!salt || salt->empty()) return fail("invalid SCRAM salt");
  int iterations = 0;
  if (!r.expect('i', iter_s) || !parse_iterations(iter_s, iterations))
    return fail("invalid SCRAM iteration count");
  if (!r.skip_extensions()) return fail("malformed SCRAM server-first-message");

  Key stored{};
  if (!have_keys_) {
    ScramKeys k;
    if (!derive_keys(password_, *salt, iterations, k, client_key_))
      return fail("SCRAM computation failed", "XX000");
    server_key_ = k.server_key;
    stored = k.stored_key;
  } else if (!sha256(as_chars(client_key_), stored)) {
    return fail("SCRAM computation failed", "XX000");
  }
  // c=: base64 of the gs2 header and, when bound, the channel-binding data.
  std::string cbind(gs2_header(binding_));
  cbind += cb_data_;
  std::string without_proof = "c=" + base64_encode(cbind) + ",r=" + std::string(nonce);
  std::string auth_message = client_first_bare_;
  auth_message.append(",").append(msg).append(",").append(without_proof);
  Key client_sig{};
  if (!hmac_sha256(as_chars(stored), auth_message, client_sig) ||
      !hmac_sha256(as_chars(server_key_), auth_message, expected_server_signature_))
    return fail("SCRAM computation failed", "XX000");
  Key proof = xor_keys(client_key_, client_sig);
  state_ = State::WantServerFinal;
  return without_proof + ",p=" + base64_encode(as_chars(proof));
}

Status ScramClientSession::verify_server_final(std::string_view msg) {
  if (state_ != State::WantServerFinal) return fail("unexpected SCRAM message from server");
  if (msg.size() > kScramMaxMessageLen || has_nul(msg))
    return fail("malformed SCRAM server-final-message");
  AttrReader r(msg);
  char name = 0;
  std::string_view value;
  if (!r.next(name, value)) return fail("malformed SCRAM server-final-message");
  if (name == 'e') {
    std::string shown;
    for (char c : value.substr(0, kMaxServerErrorShown))
      shown.push_back(c >= 0x20 && c <= 0x7e ? c : '?');
    return fail("SCRAM server error: " + shown, "28000");
  }
  Key sig{};
  if (name != 'v' || !decode_key(value, sig) || !r.skip_extensions())
    return fail("malformed SCRAM server-final-message");
  if (CRYPTO_memcmp(sig.data(), expected_server_signature_.data(), sig.size()) != 0)
    return fail("invalid SCRAM server signature", "28000");
  state_ = State::Done;
  return Status();
}

}  // namespace pgsluice
