// Unit tests for scram.h: RFC 7677 vector, secrets, mock keys, sessions, pass-through, bad input.
#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <string>

#include "scram.h"
#include "tls.h"

namespace pgsluice {
namespace {

// RFC 7677 §3 example (user "user", password "pencil").
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// The same credentials as PostgreSQL stores them; computed independently with Python's
// hashlib.pbkdf2_hmac / hmac / sha256.
constexpr std::string_view kRfcSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr std::string_view kOtherSecret =  // "secret", salt bytes 0..15, 10000 iterations
    "SCRAM-SHA-256$10000:AAECAwQFBgcICQoLDA0ODw==$CKQloE1j43AtXqnxbtKTUOS3pJFHpkjOzIj+0LaF32o=:"
    "Zx4iufpnScpV+GUVRmPFiTGZ7BDpUqLg1ouUHynhBGE=";

ScramKeys rfc_keys() {
  auto k = parse_scram_secret(kRfcSecret);
  REQUIRE(k.has_value());
  return *k;
}

// A full exchange; returns the server's final Status (ok on success).
Status run_exchange(ScramClientSession& c, ScramServerSession& s) {
  std::string first = c.client_first();
  auto sf = s.handle_client_first(first);
  if (!sf) return sf.status();
  auto cf = c.handle_server_first(*sf);
  if (!cf) return cf.status();
  auto fin = s.handle_client_final(*cf);
  if (!fin) return fin.status();
  return c.verify_server_final(*fin);
}

TEST_CASE("base64 encode/decode") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  CHECK(base64_decode("Zg==", 10) == std::string("f"));
  CHECK(base64_decode("Zm8=", 10) == std::string("fo"));
  CHECK(base64_decode("Zm9vYmFy", 10) == std::string("foobar"));
  CHECK(base64_decode("", 10) == std::string());
  CHECK_FALSE(base64_decode("Zm9vYmFy", 5));  // over the bound
  CHECK_FALSE(base64_decode("Zg=", 10));
  CHECK_FALSE(base64_decode("Zg", 10));
  CHECK_FALSE(base64_decode("Z===", 10));
  CHECK_FALSE(base64_decode("====", 10));
  CHECK_FALSE(base64_decode("Zg==Zg==", 10));  // padding in the middle
  CHECK_FALSE(base64_decode("Z=g=", 10));
  CHECK_FALSE(base64_decode("Zm9*", 10));
  CHECK_FALSE(base64_decode("Zm9 ", 10));
  CHECK_FALSE(base64_decode(std::string_view("Zm\0v", 4), 10));
  std::string all;
  for (int i = 0; i < 256; i++) all.push_back(static_cast<char>(i));
  CHECK(base64_decode(base64_encode(all), 256) == all);
}

TEST_CASE("PostgreSQL-format secret parses, matches the password and re-serialises") {
  ScramKeys k = rfc_keys();
  CHECK(k.iterations == 4096);
  CHECK(k.salt.size() == 16);
  CHECK(scram_secret_string(k) == kRfcSecret);
  ScramKeys d = scram_keys_from_password("pencil", k.salt, 4096);
  CHECK(d.iterations == 4096);
  CHECK(d.stored_key == k.stored_key);
  CHECK(d.server_key == k.server_key);
  CHECK(scram_secret_string(d) == kRfcSecret);

  auto o = parse_scram_secret(kOtherSecret);
  REQUIRE(o.has_value());
  CHECK(o->iterations == 10000);
  CHECK(scram_secret_string(*o) == kOtherSecret);
  ScramKeys od = scram_keys_from_password("secret", o->salt, 10000);
  CHECK(scram_secret_string(od) == kOtherSecret);
}

TEST_CASE("malformed secrets are rejected") {
  const std::string good(kRfcSecret);
  CHECK_FALSE(parse_scram_secret(""));
  CHECK_FALSE(parse_scram_secret("SCRAM-SHA-256$"));
  CHECK_FALSE(parse_scram_secret("md520c46e3762c864548e296b33c3406aa9"));
  CHECK_FALSE(parse_scram_secret(good.substr(0, good.size() - 1)));
  CHECK_FALSE(parse_scram_secret(good.substr(0, good.size() - 4)));
  CHECK_FALSE(parse_scram_secret(good + "A"));
  CHECK_FALSE(parse_scram_secret(good + ":x"));
  std::string s = good;
  s.replace(14, 4, "0000");
  CHECK_FALSE(parse_scram_secret(s));  // iterations 0
  s = good;
  s.replace(14, 4, "-496");
  CHECK_FALSE(parse_scram_secret(s));
  s = good;
  s.replace(14, 4, "99999999999");
  CHECK_FALSE(parse_scram_secret(s));
  s = good;
  s.replace(14, 4, "");
  CHECK_FALSE(parse_scram_secret(s));
  CHECK_FALSE(parse_scram_secret("SCRAM-SHA-256$4096:$" + good.substr(good.find('$', 14) + 1)));
  CHECK_FALSE(parse_scram_secret("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$a:b"));
  CHECK_FALSE(parse_scram_secret("SCRAM-SHA-256$4096$W22ZaJ0SNY7soEsUEjb6gQ==:a:b"));
  CHECK_FALSE(parse_scram_secret(std::string(2000, 'A')));
}

TEST_CASE("scram_keys_from_password bounds") {
  CHECK(scram_keys_from_password("pencil", "", 4096).iterations == 0);
  CHECK(scram_keys_from_password("pencil", "salt", 0).iterations == 0);
  CHECK(scram_keys_from_password("pencil", "salt", kScramMaxIterations + 1).iterations == 0);
  CHECK(scram_keys_from_password("pencil", std::string(kScramMaxSaltLen + 1, 's'), 1).iterations ==
        0);
  auto r = scram_keys_with_random_salt("pencil", 4096);
  REQUIRE(r.has_value());
  CHECK(r->salt.size() == kScramDefaultSaltLen);
  CHECK(parse_scram_secret(scram_secret_string(*r)).has_value());
  CHECK(scram_normalize_password("pencil") == "pencil");
  CHECK(scram_normalize_password("p\xc3\xa9ncil") == "p\xc3\xa9ncil");
}

TEST_CASE("RFC 7677 exchange, client role") {
  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  CHECK(c.client_first() == kRfcClientFirst);
  auto cf = c.handle_server_first(kRfcServerFirst);
  REQUIRE(cf.ok());
  CHECK(*cf == kRfcClientFinal);
  CHECK(c.verify_server_final(kRfcServerFinal).ok());
}

TEST_CASE("RFC 7677 exchange, server role") {
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  auto sf = s.handle_client_first(kRfcClientFirst);
  REQUIRE(sf.ok());
  CHECK(*sf == kRfcServerFirst);
  auto fin = s.handle_client_final(kRfcClientFinal);
  REQUIRE(fin.ok());
  CHECK(*fin == kRfcServerFinal);
  CHECK(s.succeeded());
  // ClientKey recovered from the proof equals HMAC(SaltedPassword, "Client Key").
  ScramClientSession pt = ScramClientSession::with_keys(s.client_key(), s.keys().server_key);
  pt.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  CHECK(pt.client_first() == kRfcClientFirst);
  auto cf = pt.handle_server_first(kRfcServerFirst);
  REQUIRE(cf.ok());
  CHECK(*cf == kRfcClientFinal);
  CHECK(pt.verify_server_final(kRfcServerFinal).ok());
}

TEST_CASE("RFC 7677 client rejects a wrong server signature") {
  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  (void)c.client_first();
  REQUIRE(c.handle_server_first(kRfcServerFirst).ok());
  Status st = c.verify_server_final("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
  CHECK_FALSE(st.ok());
  CHECK(st.sqlstate() == "28000");
}

TEST_CASE("round trip with random nonces: right and wrong password") {
  ScramKeys keys = scram_keys_from_password("s3cret", "0123456789abcdef", 4096);
  REQUIRE(keys.iterations == 4096);
  {
    ScramClientSession c = ScramClientSession::with_password("s3cret");
    ScramServerSession s(keys, false);
    Status st = run_exchange(c, s);
    CHECK(st.ok());
    CHECK(s.succeeded());
  }
  {
    ScramClientSession c = ScramClientSession::with_password("wrong");
    ScramServerSession s(keys, false);
    Status st = run_exchange(c, s);
    CHECK_FALSE(st.ok());
    CHECK(st.sqlstate() == "28P01");
    CHECK(st.message() == "password authentication failed");
    CHECK_FALSE(s.succeeded());
  }
  {
    // The client's first message looks like what libpq sends.
    ScramClientSession c = ScramClientSession::with_password("x");
    std::string first = c.client_first();
    CHECK(first.rfind("n,,n=,r=", 0) == 0);
    CHECK(first.size() == 8 + 32);
  }
}

TEST_CASE("y,, gs2 header is accepted with c=eSws; p= is rejected") {
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  auto sf = s.handle_client_first("y,,n=,r=rOprNGfwEbeRWgbNEkqO");
  REQUIRE(sf.ok());
  // Wrong c= for a y,, header.
  auto bad = s.handle_client_final(kRfcClientFinal);
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().sqlstate() == "08P01");

  ScramServerSession p(rfc_keys(), false);
  auto r = p.handle_client_first("p=tls-server-end-point,,n=,r=abc");
  CHECK_FALSE(r.ok());
  ScramServerSession a(rfc_keys(), false);
  auto ra = a.handle_client_first("n,a=bob,n=,r=abc");
  CHECK_FALSE(ra.ok());
  CHECK(ra.status().sqlstate() == "0A000");
}

TEST_CASE("y,, full exchange succeeds") {
  // RFC 7677 credentials and nonces with gs2 header "y,,"; proof and signature computed
  // independently with Python (hashlib/hmac).
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  auto sf = s.handle_client_first("y,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  REQUIRE(sf.ok());
  CHECK(*sf == kRfcServerFirst);
  auto fin = s.handle_client_final(
      "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
      "p=FoqiHTtQEDE8lz1CdaEe3tK4mS+iMDTl77SPyDS53DY=");
  REQUIRE(fin.ok());
  CHECK(*fin == "v=dI4KpiQJwBr1+V+K6U1dA6l6I4I9DUNXWND4pcpRU3U=");
  // The n,, proof over a y,, exchange fails authentication (parsing is fine).
  ScramServerSession s2(rfc_keys(), false, std::string(kRfcServerNonce));
  REQUIRE(s2.handle_client_first("y,,n=user,r=rOprNGfwEbeRWgbNEkqO").ok());
  auto wrong = s2.handle_client_final(
      "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
      "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  CHECK_FALSE(wrong.ok());
  CHECK(wrong.status().sqlstate() == "28P01");
}

// ---- SCRAM-SHA-256-PLUS (tls-server-end-point), the server role ----

// The client side of a binding exchange, computed here independently of scram.cc: the
// client-final-message for `gs2` + `cbind` with password "pencil" and the RFC keys' salt.
std::string plus_client_final(std::string_view client_first_bare, std::string_view server_first,
                              std::string_view nonce, const std::string& gs2,
                              const std::string& cbind) {
  ScramKeys k = rfc_keys();
  unsigned char salted[32], ck[32], sk[32], sig[32];
  unsigned int len = 0;
  REQUIRE(PKCS5_PBKDF2_HMAC("pencil", 6, reinterpret_cast<const unsigned char*>(k.salt.data()),
                            static_cast<int>(k.salt.size()), k.iterations, EVP_sha256(), 32,
                            salted) == 1);
  HMAC(EVP_sha256(), salted, 32, reinterpret_cast<const unsigned char*>("Client Key"), 10, ck,
       &len);
  EVP_Digest(ck, 32, sk, &len, EVP_sha256(), nullptr);
  std::string without_proof = "c=" + base64_encode(gs2 + cbind) + ",r=" + std::string(nonce);
  std::string auth =
      std::string(client_first_bare) + "," + std::string(server_first) + "," + without_proof;
  HMAC(EVP_sha256(), sk, 32, reinterpret_cast<const unsigned char*>(auth.data()), auth.size(), sig,
       &len);
  std::string proof(32, '\0');
  for (int i = 0; i < 32; i++) proof[static_cast<size_t>(i)] = static_cast<char>(ck[i] ^ sig[i]);
  return without_proof + ",p=" + base64_encode(proof);
}

const std::string kCbind = std::string("\x01\x02\x03", 3) + std::string(29, 'h');  // 32 bytes

TEST_CASE("PLUS: p=tls-server-end-point with the right binding data logs in") {
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  s.set_channel_binding(kCbind, true);
  const std::string gs2 = "p=tls-server-end-point,,";
  auto sf = s.handle_client_first(gs2 + "n=user,r=rOprNGfwEbeRWgbNEkqO");
  REQUIRE(sf.ok());
  CHECK(*sf == kRfcServerFirst);
  std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
  auto fin = s.handle_client_final(
      plus_client_final("n=user,r=rOprNGfwEbeRWgbNEkqO", *sf, nonce, gs2, kCbind));
  CHECK(fin.ok());
  CHECK(s.succeeded());
}

TEST_CASE("PLUS: binding data of another certificate (a man in the middle) is refused") {
  const std::string gs2 = "p=tls-server-end-point,,";
  std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
  std::string other = kCbind;
  other[5] ^= 1;
  for (const std::string& cb : {other, kCbind.substr(0, 31), kCbind + "x", std::string()}) {
    ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
    s.set_channel_binding(kCbind, true);
    auto sf = s.handle_client_first(gs2 + "n=user,r=rOprNGfwEbeRWgbNEkqO");
    REQUIRE(sf.ok());
    // The proof is right for what the client saw: only the binding is wrong.
    auto fin = s.handle_client_final(
        plus_client_final("n=user,r=rOprNGfwEbeRWgbNEkqO", *sf, nonce, gs2, cb));
    CHECK_FALSE(fin.ok());
    CHECK(fin.status().message() == "SCRAM channel binding check failed");
    CHECK(fin.status().sqlstate() == "28000");
    CHECK_FALSE(s.succeeded());
  }
}

TEST_CASE("PLUS: gs2 flags that do not match the mechanism are refused") {
  // 'y' while binding was offered: a downgrade (PostgreSQL's negotiation error).
  {
    ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
    s.set_channel_binding(kCbind, false);
    auto r = s.handle_client_first("y,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().sqlstate() == "08P01");
    CHECK(r.status().message().find("channel binding negotiation error") != std::string::npos);
  }
  // 'n' over TLS with plain SCRAM-SHA-256 is the client's choice: allowed.
  {
    ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
    s.set_channel_binding(kCbind, false);
    auto sf = s.handle_client_first(kRfcClientFirst);
    REQUIRE(sf.ok());
    CHECK(s.handle_client_final(kRfcClientFinal).ok());
  }
  // SCRAM-SHA-256-PLUS chosen but 'n' or 'y' sent.
  for (const char* first : {"n,,n=user,r=abc", "y,,n=user,r=abc"}) {
    ScramServerSession s(rfc_keys(), false);
    s.set_channel_binding(kCbind, true);
    auto r = s.handle_client_first(first);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("SCRAM-SHA-256-PLUS") != std::string::npos);
  }
  // 'p' with plain SCRAM-SHA-256 (over TLS or not), or another binding type.
  {
    ScramServerSession s(rfc_keys(), false);
    s.set_channel_binding(kCbind, false);
    CHECK_FALSE(s.handle_client_first("p=tls-server-end-point,,n=user,r=abc").ok());
  }
  for (const char* first :
       {"p=tls-unique,,n=user,r=abc", "p=,,n=user,r=abc", "p=tls-server-end-point",
        "p=tls-server-end-point,", "p=tls-server-end-point,a=x,n=user,r=abc", "p,,n=user,r=abc"}) {
    CAPTURE(first);
    ScramServerSession s(rfc_keys(), false);
    s.set_channel_binding(kCbind, true);
    CHECK_FALSE(s.handle_client_first(first).ok());
  }
  // A 'p' client-first with the binding data of plain SCRAM in client-final ("cD10bHMt...").
  {
    ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
    s.set_channel_binding(kCbind, true);
    const std::string gs2 = "p=tls-server-end-point,,";
    auto sf = s.handle_client_first(gs2 + "n=user,r=rOprNGfwEbeRWgbNEkqO");
    REQUIRE(sf.ok());
    std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
    auto fin = s.handle_client_final(
        plus_client_final("n=user,r=rOprNGfwEbeRWgbNEkqO", *sf, nonce, "n,,", ""));
    CHECK_FALSE(fin.ok());
  }
}

TEST_CASE("PLUS: a mock session (unknown user) fails after a well-formed binding") {
  ScramServerSession s(scram_mock_keys("nobody", "nonce", 4096), true,
                       std::string(kRfcServerNonce));
  s.set_channel_binding(kCbind, true);
  auto sf = s.handle_client_first("p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO");
  REQUIRE(sf.ok());
  std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
  auto fin = s.handle_client_final(plus_client_final("n=,r=rOprNGfwEbeRWgbNEkqO", *sf, nonce,
                                                     "p=tls-server-end-point,,", kCbind));
  CHECK_FALSE(fin.ok());
  CHECK(fin.status().sqlstate() == "28P01");
}

// tls_server_end_point(): the certificate's hash with its signature's hash function, and
// SHA-256 for a SHA-1 signature (RFC 5929 section 4.1), as `openssl x509 -fingerprint`.
TEST_CASE("tls-server-end-point: hash of our certificate by its signature algorithm") {
  char tmpl[] = "/tmp/pgsluice_cbind_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  struct Case {
    const char* sig;   // -<digest> for openssl req
    const char* hash;  // expected fingerprint digest
  };
  for (const Case& c : {Case{"sha256", "sha256"}, Case{"sha384", "sha384"},
                        Case{"sha512", "sha512"}, Case{"sha1", "sha256"}}) {
    CAPTURE(c.sig);
    std::string cert = dir + "/c.pem", key = dir + "/k.pem", fp = dir + "/fp";
    std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -" +
                      std::string(c.sig) + " -keyout " + key + " -out " + cert +
                      " >/dev/null 2>&1 && openssl x509 -in " + cert + " -noout -fingerprint -" +
                      c.hash + " > " + fp;
    REQUIRE(std::system(cmd.c_str()) == 0);
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    REQUIRE(SSL_CTX_use_certificate_file(ctx, cert.c_str(), SSL_FILETYPE_PEM) == 1);
    SSL* ssl = SSL_new(ctx);
    std::string got = tls_server_end_point(SSL_get_certificate(ssl));
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    // "SHA256 Fingerprint=AB:CD:..." -> raw bytes
    FILE* f = std::fopen(fp.c_str(), "r");
    REQUIRE(f != nullptr);
    char line[512] = {0};
    REQUIRE(std::fgets(line, sizeof line, f) != nullptr);
    std::fclose(f);
    std::string hex = std::string(line).substr(std::string(line).find('=') + 1);
    std::string want;
    for (size_t i = 0; i + 1 < hex.size(); i += 3)
      want.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    CHECK(got.size() == want.size());
    CHECK(got == want);
  }
  CHECK(tls_server_end_point(static_cast<const X509*>(nullptr)).empty());
  std::string rm = "rm -rf " + dir;
  (void)std::system(rm.c_str());
}

TEST_CASE("pass-through: recovered ClientKey logs in to a server with the same secret") {
  ScramKeys keys = scram_keys_from_password("passw0rd", "saltsaltsaltsalt", 4096);
  ScramClientSession client = ScramClientSession::with_password("passw0rd");
  ScramServerSession pooler(keys, false);
  REQUIRE(run_exchange(client, pooler).ok());
  const auto ck = pooler.client_key();

  ScramClientSession to_server = ScramClientSession::with_keys(ck, keys.server_key);
  ScramServerSession postgres(keys, false);
  CHECK(run_exchange(to_server, postgres).ok());
  CHECK(postgres.client_key() == ck);

  // Same password but a different salt: the keys do not carry over.
  ScramKeys other = scram_keys_from_password("passw0rd", "another-salt-xyz", 4096);
  ScramClientSession to_other = ScramClientSession::with_keys(ck, keys.server_key);
  ScramServerSession postgres2(other, false);
  Status st = run_exchange(to_other, postgres2);
  CHECK_FALSE(st.ok());
  CHECK(st.sqlstate() == "28P01");
}

TEST_CASE("key cache: PBKDF2 once per (user, secret, iterations), keys that verify") {
  ScramKeyCache cache;
  ScramKeys a = cache.get("alice", "pw1", 4096);
  REQUIRE(a.iterations == 4096);
  CHECK(a.salt.size() == kScramDefaultSaltLen);
  ScramKeys check = scram_keys_from_password("pw1", a.salt, 4096);
  CHECK(check.stored_key == a.stored_key);
  CHECK(check.server_key == a.server_key);
  CHECK(cache.derivations() == 1);
  // Hits: same keys and salt, no new derivation.
  for (int i = 0; i < 5; i++) {
    ScramKeys again = cache.get("alice", "pw1", 4096);
    CHECK(again.salt == a.salt);
    CHECK(again.stored_key == a.stored_key);
  }
  CHECK(cache.derivations() == 1);
  // A changed secret (reload), another user or another iteration count: a new entry.
  ScramKeys b = cache.get("alice", "pw2", 4096);
  CHECK(b.stored_key != a.stored_key);
  CHECK(cache.get("bob", "pw1", 4096).salt != a.salt);
  CHECK(cache.get("alice", "pw1", 4097).iterations == 4097);
  CHECK(cache.derivations() == 4);
  CHECK(cache.size() == 4);
  // A full exchange with the cached keys accepts the password.
  ScramServerSession srv(cache.get("alice", "pw2", 4096), false);
  ScramClientSession cli = ScramClientSession::with_password("pw2");
  auto sf = srv.handle_client_first(cli.client_first());
  REQUIRE(sf);
  auto cf = cli.handle_server_first(*sf);
  REQUIRE(cf);
  auto fin = srv.handle_client_final(*cf);
  REQUIRE(fin);
  CHECK(cli.verify_server_final(*fin).ok());
}

TEST_CASE("key cache: bounded, and failures are not cached") {
  ScramKeyCache cache(2);
  (void)cache.get("u1", "p", 1);
  (void)cache.get("u2", "p", 1);
  CHECK(cache.size() == 2);
  (void)cache.get("u3", "p", 1);
  CHECK(cache.size() <= 2);
  CHECK(cache.get("u4", "p", 0).iterations == 0);  // out of bounds: nothing stored
  CHECK(cache.size() <= 2);
}

TEST_CASE("mock keys are deterministic per user and never verify") {
  ScramKeys a1 = scram_mock_keys("alice", "process-nonce", 4096);
  ScramKeys a2 = scram_mock_keys("alice", "process-nonce", 4096);
  ScramKeys b = scram_mock_keys("bob", "process-nonce", 4096);
  ScramKeys a3 = scram_mock_keys("alice", "other-nonce", 4096);
  CHECK(scram_secret_string(a1) == scram_secret_string(a2));
  CHECK(a1.salt != b.salt);
  CHECK(a1.salt != a3.salt);
  CHECK(a1.salt.size() == kScramDefaultSaltLen);
  CHECK(a1.iterations == 4096);
  CHECK(scram_mock_keys("alice", "n", 0).iterations == kScramDefaultIterations);
  CHECK(parse_scram_secret(scram_secret_string(a1)).has_value());

  // Even a client that knows the mock keys cannot log in through a mock session.
  ScramServerSession s(a1, true);
  ScramClientSession c = ScramClientSession::with_keys({}, a1.server_key);
  std::string first = c.client_first();
  auto sf = s.handle_client_first(first);
  REQUIRE(sf.ok());
  CHECK(sf->find(",s=" + base64_encode(a1.salt) + ",i=4096") != std::string::npos);
  auto cf = c.handle_server_first(*sf);
  REQUIRE(cf.ok());
  auto fin = s.handle_client_final(*cf);
  CHECK_FALSE(fin.ok());
  CHECK(fin.status().sqlstate() == "28P01");

  // And an ordinary password fails the same way.
  ScramServerSession s2(a1, true);
  ScramClientSession c2 = ScramClientSession::with_password("anything");
  Status st = run_exchange(c2, s2);
  CHECK(st.sqlstate() == "28P01");
}

TEST_CASE("server rejects malformed client-first messages") {
  const char* bad[] = {
      "",
      "n",
      "n,",
      "n,,",
      "x,,n=,r=abc",
      "n,,r=abc",
      "n,,n=",
      "n,,n=,",
      "n,,n=,r=",
      "n,,n=,r=abc,",
      "n,,n=,r=ab,c",
      "n,,n=,r=a\x01z",
      "n,,m=ext,n=,r=abc",
      "n,x,n=,r=abc",
      "nn,n=,r=abc",
      "n,,n=,s=abc",
      "n,,n=,r=abc,1=2",
  };
  for (const char* m : bad) {
    ScramServerSession s(rfc_keys(), false);
    auto r = s.handle_client_first(m);
    CHECK_MESSAGE(!r.ok(), m);
  }
  ScramServerSession s(rfc_keys(), false);
  CHECK_FALSE(s.handle_client_first(std::string_view("n,,n=\0,r=abc", 12)).ok());
  ScramServerSession big(rfc_keys(), false);
  CHECK_FALSE(big.handle_client_first("n,,n=,r=" + std::string(2000, 'a')).ok());
  ScramServerSession long_nonce(rfc_keys(), false);
  CHECK_FALSE(long_nonce.handle_client_first("n,,n=,r=" + std::string(600, 'a')).ok());
  // Extensions after the nonce are allowed.
  ScramServerSession ext(rfc_keys(), false);
  CHECK(ext.handle_client_first("n,,n=whatever,r=abc,x=1").ok());
}

TEST_CASE("server rejects malformed client-final messages") {
  const std::string nonce = std::string(kRfcClientNonce) + std::string(kRfcServerNonce);
  const std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
  const std::string bad[] = {
      "",
      "c=biws",
      "c=biws,r=" + nonce,
      "c=biws,r=" + nonce + ",",
      "c=biws,r=" + nonce + ",p=",
      "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",      // no padding
      "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And*Q=",     // bad char
      "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQAAAA",  // 33+ bytes
      "c=biws,r=" + nonce + "," + proof + ",x=1",                                  // proof not last
      "c=biws,r=" + nonce + "x," + proof,                                          // wrong nonce
      "c=biws,r=" + std::string(kRfcClientNonce) + "," + proof,
      "c=eSws,r=" + nonce + "," + proof,  // channel binding flag mismatch
      "c=bi,r=" + nonce + "," + proof,
      "r=" + nonce + "," + proof,
      proof,
      "c=biws,r=" + nonce + "," + proof + std::string(1100, 'A'),
  };
  for (const auto& m : bad) {
    ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
    REQUIRE(s.handle_client_first(kRfcClientFirst).ok());
    auto r = s.handle_client_final(m);
    CHECK_MESSAGE(!r.ok(), m);
    CHECK_MESSAGE(r.status().sqlstate() == "08P01", m);
    CHECK_FALSE(s.succeeded());
    // A failed session stays failed.
    CHECK_FALSE(s.handle_client_final(kRfcClientFinal).ok());
  }
  // Extensions before the proof are allowed.
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  REQUIRE(s.handle_client_first(kRfcClientFirst).ok());
  auto r = s.handle_client_final("c=biws,r=" + nonce + ",x=1," + proof);
  CHECK_FALSE(r.ok());
  CHECK(r.status().sqlstate() == "28P01");  // parsed; the proof covers a different message
}

TEST_CASE("server session enforces message order") {
  ScramServerSession s(rfc_keys(), false);
  CHECK_FALSE(s.handle_client_final(kRfcClientFinal).ok());
  ScramServerSession s2(rfc_keys(), false, std::string(kRfcServerNonce));
  REQUIRE(s2.handle_client_first(kRfcClientFirst).ok());
  CHECK_FALSE(s2.handle_client_first(kRfcClientFirst).ok());
  ScramServerSession invalid(ScramKeys{}, false);
  CHECK_FALSE(invalid.handle_client_first(kRfcClientFirst).ok());
}

TEST_CASE("client rejects malformed server-first messages") {
  const std::string n = std::string(kRfcClientNonce);
  const std::string bad[] = {
      "",
      "r=" + n + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",       // no server part
      "r=xx" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // wrong prefix
      "r=" + n + "abc",                                      // missing s=
      "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",                   // missing r=
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096",     // bad base64
      "r=" + n + "abc,s=,i=4096",                            // empty salt
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==",           // missing i=
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x",
      "r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,",
      "m=x,r=" + n + "abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
      "r=" + n + std::string(1000, 'z') + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // long nonce
      "r=" + n + "abc,s=" + std::string(400, 'A') + ",i=4096",                   // salt over bound
  };
  for (const auto& m : bad) {
    ScramClientSession c = ScramClientSession::with_password("pencil");
    c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
    (void)c.client_first();
    auto r = c.handle_server_first(m);
    CHECK_MESSAGE(!r.ok(), m);
    CHECK_FALSE(c.verify_server_final(kRfcServerFinal).ok());
  }
  // Out of order.
  ScramClientSession c = ScramClientSession::with_password("pencil");
  CHECK_FALSE(c.handle_server_first(kRfcServerFirst).ok());
}

TEST_CASE("client rejects malformed or hostile server-final messages") {
  const std::string bad[] = {
      "",
      "v=",
      "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
      "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,",
      "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
      "e=invalid-proof",
      "e=" + std::string(2000, 'x'),
  };
  for (const auto& m : bad) {
    ScramClientSession c = ScramClientSession::with_password("pencil");
    c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
    (void)c.client_first();
    REQUIRE(c.handle_server_first(kRfcServerFirst).ok());
    CHECK_MESSAGE(!c.verify_server_final(m).ok(), m);
  }
  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  (void)c.client_first();
  REQUIRE(c.handle_server_first(kRfcServerFirst).ok());
  Status st = c.verify_server_final("e=invalid-proof");
  CHECK(st.message().find("invalid-proof") != std::string::npos);
  // Extensions after v= are tolerated.
  ScramClientSession c2 = ScramClientSession::with_password("pencil");
  c2.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  (void)c2.client_first();
  REQUIRE(c2.handle_server_first(kRfcServerFirst).ok());
  CHECK(c2.verify_server_final(std::string(kRfcServerFinal) + ",x=1").ok());
}

// ---- channel binding in the client role (pgsluice logging in to PostgreSQL over TLS) ----

TEST_CASE("client role: y,, over TLS when the server offers no PLUS (c=eSws)") {
  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_channel_binding(ScramBinding::Supported);
  c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  CHECK(std::string(c.mechanism()) == "SCRAM-SHA-256");
  CHECK(c.client_first() == "y,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  auto cf = c.handle_server_first(kRfcServerFirst);
  REQUIRE(cf.ok());
  // The same proof as in "y,, full exchange succeeds" (computed with Python).
  CHECK(*cf ==
        "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "p=FoqiHTtQEDE8lz1CdaEe3tK4mS+iMDTl77SPyDS53DY=");
  CHECK(c.verify_server_final("v=dI4KpiQJwBr1+V+K6U1dA6l6I4I9DUNXWND4pcpRU3U=").ok());
}

TEST_CASE("client role: SCRAM-SHA-256-PLUS binds tls-server-end-point data into c= and the proof") {
  std::string cb;
  for (int i = 0; i < 32; i++) cb.push_back(static_cast<char>(i));
  // Expected values computed independently with Python (hashlib/hmac/base64) for the RFC
  // 7677 credentials and nonces, gs2 header "p=tls-server-end-point,," and cb = 00..1f.
  const std::string want_final =
      "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,"
      "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
      "p=nY1Wus9a+gM2DrbQ1msXFgyhW6KM5ktOxWiU+/P/EGY=";
  const std::string want_server_final = "v=RwppMGddhz/J0lFYaRReBjXcQeNUFP5Qc76Lo5Exrig=";

  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_channel_binding(ScramBinding::EndPoint, cb);
  c.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  CHECK(std::string(c.mechanism()) == "SCRAM-SHA-256-PLUS");
  CHECK(c.client_first() == "p=tls-server-end-point,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  auto cf = c.handle_server_first(kRfcServerFirst);
  REQUIRE(cf.ok());
  CHECK(*cf == want_final);
  CHECK(c.verify_server_final(want_server_final).ok());

  // Pass-through (a client's ClientKey) binds the same way.
  ScramServerSession s(rfc_keys(), false, std::string(kRfcServerNonce));
  REQUIRE(s.handle_client_first(kRfcClientFirst).ok());
  REQUIRE(s.handle_client_final(kRfcClientFinal).ok());
  ScramClientSession pt = ScramClientSession::with_keys(s.client_key(), s.keys().server_key);
  pt.set_channel_binding(ScramBinding::EndPoint, cb);
  pt.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  CHECK(pt.client_first() == "p=tls-server-end-point,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  auto pcf = pt.handle_server_first(kRfcServerFirst);
  REQUIRE(pcf.ok());
  CHECK(*pcf == want_final);
  CHECK(pt.verify_server_final(want_server_final).ok());

  // Other binding data gives another proof, and the real signature no longer verifies.
  std::string other = cb;
  other[0] = 'x';
  ScramClientSession d = ScramClientSession::with_password("pencil");
  d.set_channel_binding(ScramBinding::EndPoint, other);
  d.set_fixed_nonce_for_testing(kRfcClientNonce, "user");
  (void)d.client_first();
  auto dcf = d.handle_server_first(kRfcServerFirst);
  REQUIRE(dcf.ok());
  CHECK(*dcf != want_final);
  CHECK_FALSE(d.verify_server_final(want_server_final).ok());
}

TEST_CASE("client role: PLUS without binding data makes no client-first message") {
  ScramClientSession c = ScramClientSession::with_password("pencil");
  c.set_channel_binding(ScramBinding::EndPoint, "");
  CHECK(c.client_first().empty());
  CHECK_FALSE(c.handle_server_first(kRfcServerFirst).ok());
}

namespace {

// A self-signed certificate for key k, signed with md (nullptr: the key's own, Ed25519).
X509* self_signed(EVP_PKEY* k, const EVP_MD* md) {
  X509* x = X509_new();
  REQUIRE(x != nullptr);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("pg.test"), -1, -1, 0);
  X509_set_issuer_name(x, n);
  REQUIRE(X509_sign(x, k, md) > 0);
  return x;
}

std::string digest_of_der(X509* x, const EVP_MD* md) {
  unsigned char* der = nullptr;
  int len = i2d_X509(x, &der);
  REQUIRE(len > 0);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  REQUIRE(EVP_Digest(der, static_cast<size_t>(len), out, &n, md, nullptr) == 1);
  OPENSSL_free(der);
  return std::string(reinterpret_cast<const char*>(out), n);
}

}  // namespace

TEST_CASE("tls_server_end_point: the signature's hash, SHA-256 for SHA-1 (RFC 5929)") {
  EVP_PKEY* ec = EVP_EC_gen("P-256");
  REQUIRE(ec != nullptr);
  struct Case {
    const EVP_MD* sign;
    const EVP_MD* want;
  };
  const Case cases[] = {{EVP_sha1(), EVP_sha256()},
                        {EVP_sha256(), EVP_sha256()},
                        {EVP_sha384(), EVP_sha384()},
                        {EVP_sha512(), EVP_sha512()}};
  for (const Case& k : cases) {
    CAPTURE(EVP_MD_get0_name(k.sign));
    X509* x = self_signed(ec, k.sign);
    std::string h = tls_server_end_point(x);
    CHECK(h.size() == static_cast<size_t>(EVP_MD_get_size(k.want)));
    CHECK(h == digest_of_der(x, k.want));
    X509_free(x);
  }
  EVP_PKEY_free(ec);
  CHECK(tls_server_end_point(nullptr).empty());

  // Ed25519 signs without a separate hash: no binding data (PostgreSQL cannot bind either).
  EVP_PKEY* ed = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  REQUIRE(ed != nullptr);
  X509* x = self_signed(ed, nullptr);
  CHECK(tls_server_end_point(x).empty());
  X509_free(x);
  EVP_PKEY_free(ed);
}

}  // namespace
}  // namespace pgsluice
