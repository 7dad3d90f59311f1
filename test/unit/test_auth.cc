// Unit tests for auth.h: the method choice, the secret lookup, and every exchange driven
// without a socket (the client side computed with password.h and scram.h).
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "auth.h"
#include "hba.h"
#include "ident.h"
#include "password.h"
#include "scram.h"
#include "wire.h"

namespace pgsluice {
namespace {

using Outcome = AuthReply::Outcome;

constexpr char kUser[] = "alice";
constexpr char kPassword[] = "pencil";

// An exchange for `user`, with `secret` as auth_file holds it (nullopt: not listed).
AuthExchange make(AuthMethod method, std::optional<std::string> secret, std::string cbind = {},
                  std::string user = kUser) {
  AuthSetup s;
  s.method = method;
  s.user = std::move(user);
  if (secret) {
    s.secret.state = SecretLookup::State::Found;
    s.secret.secret = std::move(*secret);
  }
  s.scram_nonce = "process nonce";
  s.cbind = std::move(cbind);
  return AuthExchange(std::move(s));
}

std::string scram_secret(std::string_view password) {
  return scram_secret_string(scram_keys_from_password(password, "0123456789abcdef", 4096));
}

// The authentication request in `send` (one 'R' message), parsed as libpq would.
wire::AuthRequest request_of(const std::string& send) {
  wire::AuthRequest r;
  REQUIRE(send.size() >= wire::kHeaderLen);
  REQUIRE(send[0] == 'R');
  REQUIRE(wire::get_u32(reinterpret_cast<const uint8_t*>(send.data()) + 1) + 1 == send.size());
  auto body = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(send.data()), send.size())
                  .subspan(wire::kHeaderLen);
  REQUIRE(wire::parse_auth_request(body, r));
  return r;
}

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// A PasswordMessage body: the string and its NUL.
std::string password_body(std::string_view pw) {
  return std::string(pw) + '\0';
}

// A SASLInitialResponse body: mechanism, NUL, length, data.
std::string sasl_initial(std::string_view mech, std::string_view data) {
  std::string b(mech);
  b.push_back('\0');
  auto n = static_cast<uint32_t>(data.size());
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<char>(n >> shift));
  b.append(data);
  return b;
}

void check_password_failure(const AuthReply& r, std::string_view user = kUser) {
  CHECK(r.outcome == Outcome::Failed);
  CHECK(r.sqlstate == "28P01");
  CHECK(r.message == "password authentication failed for user \"" + std::string(user) + "\"");
  CHECK(r.reason == "password authentication failed");
  CHECK(r.send.empty());
  CHECK(r.warning.empty());
}

// Cleartext: the reply to `password` given the stored `secret`.
AuthReply cleartext(std::optional<std::string> secret, std::string_view password) {
  AuthExchange a = make(AuthMethod::Cleartext, std::move(secret));
  AuthReply first = a.start();
  REQUIRE(first.outcome == Outcome::Continue);
  CHECK(request_of(first.send).code == 3);
  return a.on_message(bytes(password_body(password)));
}

// md5: the reply to the response computed from `client_secret` given the stored `secret`.
AuthReply md5(std::optional<std::string> secret, std::string_view client_secret,
              std::string user = kUser) {
  AuthExchange a = make(AuthMethod::Md5, std::move(secret), {}, user);
  AuthReply first = a.start();
  REQUIRE(first.outcome == Outcome::Continue);
  wire::AuthRequest req = request_of(first.send);
  REQUIRE(req.code == 5);
  REQUIRE(req.salt.size() == 4);
  std::string resp = md5_response(client_secret, user, req.salt.data());
  return a.on_message(bytes(password_body(resp)));
}

struct ScramRun {
  AuthReply first;               // the SASL request
  AuthReply server_first;        // the answer to the client-first message
  AuthReply last;                // the answer to the client-final message
  bool server_verified = false;  // the client checked the server's signature
  std::optional<ScramPassThrough> pass_through;
};

// A full SCRAM exchange, the client side knowing `password`.
ScramRun scram(AuthExchange& a, std::string_view password,
               ScramBinding binding = ScramBinding::None, std::string cb_data = {}) {
  ScramRun run;
  run.first = a.start();
  REQUIRE(run.first.outcome == Outcome::Continue);
  REQUIRE(request_of(run.first.send).code == 10);
  ScramClientSession c = ScramClientSession::with_password(password);
  if (binding != ScramBinding::None) c.set_channel_binding(binding, cb_data);
  run.server_first = a.on_message(bytes(sasl_initial(c.mechanism(), c.client_first())));
  if (run.server_first.outcome != Outcome::Continue) return run;
  wire::AuthRequest sf = request_of(run.server_first.send);
  REQUIRE(sf.code == 11);
  auto cf = c.handle_server_first(sf.sasl_data);
  REQUIRE(cf.ok());
  run.last = a.on_message(bytes(*cf));
  if (run.last.outcome == Outcome::Succeeded) {
    wire::AuthRequest fin = request_of(run.last.send);
    CHECK(fin.code == 12);
    run.server_verified = c.verify_server_final(fin.sasl_data).ok();
  }
  run.pass_through = a.pass_through();
  return run;
}

TEST_CASE("auth: the method follows auth_type on the Unix socket, TCP and TLS alike") {
  const std::vector<std::pair<AuthType, AuthMethod>> table = {
      {AuthType::Any, AuthMethod::Any},           {AuthType::Trust, AuthMethod::Trust},
      {AuthType::Plain, AuthMethod::Cleartext},   {AuthType::Md5, AuthMethod::Md5},
      {AuthType::ScramSha256, AuthMethod::Scram}, {AuthType::Cert, AuthMethod::Cert},
      {AuthType::Hba, AuthMethod::Reject},        {AuthType::Peer, AuthMethod::Peer},
  };
  const AuthAttempt kinds[] = {
      {"alice", "app", true, false, "unix"},
      {"alice", "app", false, false, "192.0.2.1"},
      {"alice", "app", false, true, "2001:db8::1"},
  };
  for (const auto& row : table) {
    const AuthType type = row.first;
    const AuthMethod method = row.second;
    Config cfg;
    cfg.auth_type = type;
    for (const AuthAttempt& k : kinds) {
      CAPTURE(auth_type_name(type));
      CAPTURE(k.is_unix);
      CAPTURE(k.tls);
      std::string refusal;
      CHECK(choose_method(cfg, k, &refusal) == method);  // hba without rules: refused
    }
  }
}

TEST_CASE("auth: with auth_type = hba the first matching line decides; none matches: refused") {
  Config cfg;
  cfg.auth_type = AuthType::Hba;
  cfg.hba =
      std::make_shared<HbaFile>(parse_hba("local all postgres peer\n"
                                          "local all all md5\n"
                                          "host all blocked 0.0.0.0/0 reject\n"
                                          "hostssl app all 192.0.2.0/24 scram-sha-256\n"
                                          "host app all 192.0.2.0/24 password\n"
                                          "host all all 2001:db8::/32 cert\n"
                                          "host trusted all 127.0.0.1/32 trust\n",
                                          "/etc/pg_hba.conf", nullptr));
  REQUIRE(cfg.hba->error_count == 0);
  struct Row {
    AuthAttempt attempt;
    AuthMethod method;
    const char* refusal;
  };
  const Row rows[] = {
      {{"postgres", "app", true, false, "unix"}, AuthMethod::Peer, ""},
      {{"alice", "app", true, false, "unix"}, AuthMethod::Md5, ""},
      {{"blocked", "app", false, true, "192.0.2.9"},
       AuthMethod::Reject,
       "pg_hba.conf rejects connection for host \"192.0.2.9\", user \"blocked\", database "
       "\"app\", SSL encryption"},
      {{"alice", "app", false, true, "192.0.2.9"}, AuthMethod::Scram, ""},
      {{"alice", "app", false, false, "192.0.2.9"}, AuthMethod::Cleartext, ""},
      {{"alice", "app", false, true, "2001:db8::1"}, AuthMethod::Cert, ""},
      {{"alice", "trusted", false, false, "127.0.0.1"}, AuthMethod::Trust, ""},
      {{"alice", "other", false, false, "192.0.2.9"},
       AuthMethod::Reject,
       "no pg_hba.conf entry for host \"192.0.2.9\", user \"alice\", database \"other\", no "
       "encryption"},
      {{"alice", "app", false, false, "not an address"}, AuthMethod::Reject, nullptr},
  };
  for (const Row& row : rows) {
    CAPTURE(row.attempt.user);
    CAPTURE(row.attempt.database);
    CAPTURE(row.attempt.peer_host);
    std::string refusal;
    CHECK(choose_method(cfg, row.attempt, &refusal) == row.method);
    if (row.refusal != nullptr) CHECK(refusal == row.refusal);
  }
  // The refusal becomes the FATAL, before any exchange and whatever the user is.
  AuthSetup setup;
  setup.method = AuthMethod::Reject;
  setup.user = "blocked";
  setup.refusal = "pg_hba.conf rejects connection for host \"192.0.2.9\"";
  AuthExchange a(setup);
  AuthReply r = a.start();
  CHECK(r.outcome == AuthReply::Outcome::Failed);
  CHECK(r.sqlstate == "28000");
  CHECK(r.message == setup.refusal);
  CHECK(r.send.empty());
}

TEST_CASE("auth: peer takes the Unix socket's OS user as the proof") {
  auto run = [](bool is_unix, const char* peer_user, bool known) {
    AuthSetup s;
    s.method = AuthMethod::Peer;
    s.user = "alice";
    s.is_unix = is_unix;
    s.peer_user = peer_user;
    if (known) {
      s.secret.state = SecretLookup::State::Found;
      s.secret.secret = "";
    }
    AuthExchange a(s);
    return a.start();
  };
  CHECK(run(true, "alice", true).outcome == AuthReply::Outcome::Succeeded);
  for (AuthReply r : {run(true, "bob", true), run(true, "", true), run(false, "alice", true),
                      run(true, "alice", false)}) {
    CHECK(r.outcome == AuthReply::Outcome::Failed);
    CHECK(r.sqlstate == "28000");
    CHECK(r.message == "Peer authentication failed for user \"alice\"");
  }
  CHECK(run(true, "bob", true).warning ==
        "provided user name (alice) and authenticated user name (bob) do not match");
}

TEST_CASE("auth: map= lets a peer's OS user or a certificate's CN be another user") {
  auto maps = std::make_shared<IdentFile>(parse_ident("m root alice\nm /^(.*)@corp$ \\1\n"));
  REQUIRE(maps->errors.empty());
  auto run = [&](AuthMethod method, const char* system_name, const char* user) {
    AuthSetup s;
    s.method = method;
    s.user = user;
    s.is_unix = true;
    s.secret.state = SecretLookup::State::Found;
    s.map = "m";
    s.ident = maps;
    if (method == AuthMethod::Peer) s.peer_user = system_name;
    s.cert.verified = true;
    s.cert.cn = system_name;
    AuthExchange a(s);
    return a.start();
  };
  for (AuthMethod m : {AuthMethod::Peer, AuthMethod::Cert}) {
    CHECK(run(m, "root", "alice").outcome == AuthReply::Outcome::Succeeded);
    CHECK(run(m, "bob@corp", "bob").outcome == AuthReply::Outcome::Succeeded);
    AuthReply no = run(m, "root", "bob");
    CHECK(no.outcome == AuthReply::Outcome::Failed);
    CHECK(no.sqlstate == "28000");
    CHECK(no.warning == "no match in usermap \"m\" for user \"bob\" authenticated as \"root\"");
    // With a map, the name itself is not enough: alice as alice is not in the map.
    CHECK(run(m, "alice", "alice").outcome == AuthReply::Outcome::Failed);
  }
}

TEST_CASE("auth: the secret comes from auth_file; a listed user may have none") {
  Config cfg;
  cfg.userlist.secrets["alice"] = "pencil";
  cfg.userlist.secrets["nopass"] = "";
  SecretLookup a = lookup_secret(cfg, "alice");
  CHECK(a.state == SecretLookup::State::Found);
  CHECK(a.secret == "pencil");
  SecretLookup n = lookup_secret(cfg, "nopass");
  CHECK(n.state == SecretLookup::State::Found);
  CHECK(n.secret.empty());
  SecretLookup u = lookup_secret(cfg, "mallory");
  CHECK(u.state == SecretLookup::State::Unknown);
  CHECK(u.secret.empty());
}

TEST_CASE("auth: any, trust, cert and an unsupported auth_type decide at once") {
  AuthReply any = make(AuthMethod::Any, std::nullopt).start();
  CHECK(any.outcome == Outcome::Succeeded);
  CHECK(any.send.empty());
  CHECK(make(AuthMethod::Trust, std::string()).start().outcome == Outcome::Succeeded);
  check_password_failure(make(AuthMethod::Trust, std::nullopt).start());

  auto cert = [](std::optional<std::string> secret, bool verified, std::string cn) {
    AuthSetup s;
    s.method = AuthMethod::Cert;
    s.user = kUser;
    if (secret) s.secret = {SecretLookup::State::Found, *secret};
    s.cert = {verified, std::move(cn)};
    return AuthExchange(std::move(s)).start();
  };
  CHECK(cert("x", true, kUser).outcome == Outcome::Succeeded);
  AuthReply none = cert("x", false, "");
  CHECK(none.outcome == Outcome::Failed);
  CHECK(none.sqlstate == "28000");
  CHECK(none.message == "connection requires a valid client certificate");
  CHECK(none.reason == "no client certificate");
  AuthReply other = cert("x", true, "bob");
  CHECK(other.outcome == Outcome::Failed);
  CHECK(other.sqlstate == "28000");
  CHECK(other.message == "certificate authentication failed for user \"alice\"");
  CHECK(other.reason == "certificate authentication failed");
  CHECK(other.warning == "certificate CN \"bob\" does not match the user name");
  AuthReply unknown = cert(std::nullopt, true, kUser);  // the CN matches, auth_file lacks it
  CHECK(unknown.outcome == Outcome::Failed);
  CHECK(unknown.message == other.message);
  CHECK(unknown.warning.empty());

  AuthSetup s;
  s.method = AuthMethod::Unsupported;
  s.auth_type = AuthType::Hba;
  AuthReply hba = AuthExchange(std::move(s)).start();
  CHECK(hba.outcome == Outcome::Failed);
  CHECK(hba.sqlstate == "28000");
  CHECK(hba.message == "auth_type hba is not supported yet");
  CHECK(hba.reason == "unsupported auth_type");
}

TEST_CASE("auth: cleartext against plain, md5 and SCRAM secrets") {
  const std::string secrets[] = {kPassword, md5_secret(kPassword, kUser), scram_secret(kPassword)};
  for (const std::string& secret : secrets) {
    CAPTURE(secret);
    AuthReply ok = cleartext(secret, kPassword);
    CHECK(ok.outcome == Outcome::Succeeded);
    CHECK(ok.send.empty());
    check_password_failure(cleartext(secret, "pencil2"));
    AuthReply empty = cleartext(secret, "");
    CHECK(empty.outcome == Outcome::Failed);
    CHECK(empty.sqlstate == "28P01");
    CHECK(empty.message == "empty password returned by client");
    CHECK(empty.reason == "empty password");
  }
  // An unknown user and a user without a password fail as a wrong password does.
  check_password_failure(cleartext(std::nullopt, kPassword));
  check_password_failure(cleartext(std::string(), kPassword));
  CHECK(cleartext(std::nullopt, "").message == "empty password returned by client");
  // A message without its NUL is a wrong password, not a crash.
  AuthExchange a = make(AuthMethod::Cleartext, std::string(kPassword));
  a.start();
  check_password_failure(a.on_message(bytes(std::string(kPassword))));
}

TEST_CASE("auth: md5 against plain and md5 secrets") {
  const std::string secrets[] = {kPassword, md5_secret(kPassword, kUser)};
  for (const std::string& secret : secrets) {
    CAPTURE(secret);
    // The client may know the password or its md5 secret: the response is the same.
    CHECK(md5(secret, kPassword).outcome == Outcome::Succeeded);
    CHECK(md5(secret, md5_secret(kPassword, kUser)).outcome == Outcome::Succeeded);
    check_password_failure(md5(secret, "pencil2"));
  }
  // Unknown user, no password: the same challenge, the same failure.
  check_password_failure(md5(std::nullopt, kPassword));
  check_password_failure(md5(std::string(), kPassword));
  check_password_failure(md5(std::nullopt, kPassword, "mallory"), "mallory");

  AuthExchange a = make(AuthMethod::Md5, std::string(kPassword));
  a.start();
  AuthReply empty = a.on_message(bytes(password_body("")));
  CHECK(empty.message == "empty password returned by client");
  CHECK(a.pass_through() == std::nullopt);

  // Each challenge has its own salt.
  AuthExchange b = make(AuthMethod::Md5, std::string(kPassword));
  AuthExchange c = make(AuthMethod::Md5, std::string(kPassword));
  CHECK(b.start().send != c.start().send);
}

TEST_CASE("auth: md5 with a SCRAM secret runs SCRAM") {
  AuthExchange a = make(AuthMethod::Md5, scram_secret(kPassword));
  ScramRun run = scram(a, kPassword);
  CHECK(run.last.outcome == Outcome::Succeeded);
  CHECK(run.server_verified);
  CHECK(run.pass_through.has_value());
}

TEST_CASE("auth: SCRAM against a plain secret and a SCRAM secret") {
  // A plain secret: keys from scram_key_cache(); no pass-through (no stored ServerKey).
  AuthExchange plain = make(AuthMethod::Scram, std::string(kPassword));
  ScramRun p = scram(plain, kPassword);
  CHECK(request_of(p.first.send).scram_sha_256);
  CHECK_FALSE(request_of(p.first.send).scram_sha_256_plus);  // no TLS: no binding offered
  CHECK(p.last.outcome == Outcome::Succeeded);
  CHECK(p.server_verified);
  CHECK_FALSE(p.pass_through.has_value());

  // A SCRAM secret: the proven ClientKey and the secret's ServerKey go to the pool.
  const std::string secret = scram_secret(kPassword);
  AuthExchange stored = make(AuthMethod::Scram, secret);
  ScramRun s = scram(stored, kPassword);
  CHECK(s.last.outcome == Outcome::Succeeded);
  CHECK(s.server_verified);
  REQUIRE(s.pass_through.has_value());
  auto keys = parse_scram_secret(secret);
  REQUIRE(keys.has_value());
  CHECK(s.pass_through->server_key == keys->server_key);
  ScramKeys derived = scram_keys_from_password(kPassword, keys->salt, keys->iterations);
  CHECK(s.pass_through->client_key != std::array<uint8_t, 32>{});
  CHECK(derived.stored_key == keys->stored_key);

  // Wrong password: PostgreSQL's 28P01, no pass-through.
  for (const std::string& sec : {std::string(kPassword), secret}) {
    AuthExchange a = make(AuthMethod::Scram, sec);
    ScramRun w = scram(a, "pencil2");
    check_password_failure(w.last);
    CHECK_FALSE(w.pass_through.has_value());
  }
}

TEST_CASE("auth: SCRAM for an unknown user looks like a known one and fails the same") {
  AuthExchange known = make(AuthMethod::Scram, scram_secret(kPassword));
  AuthExchange unknown = make(AuthMethod::Scram, std::nullopt, {}, "mallory");
  AuthExchange nopass = make(AuthMethod::Scram, std::string());
  AuthExchange md5only = make(AuthMethod::Scram, md5_secret(kPassword, kUser));
  ScramRun k = scram(known, "wrong");
  ScramRun u = scram(unknown, kPassword);
  ScramRun n = scram(nopass, kPassword);
  ScramRun m = scram(md5only, kPassword);
  CHECK(u.first.send == k.first.send);
  // server-first: "r=<nonce>,s=<salt>,i=<iterations>", the same shape for all.
  auto shape = [](const ScramRun& r) {
    std::string_view sf = request_of(r.server_first.send).sasl_data;
    return std::make_pair(sf.substr(0, 2), sf.substr(sf.find(",i=")));
  };
  CHECK(shape(u) == shape(k));
  CHECK(shape(n) == shape(k));
  CHECK(shape(m) == shape(k));
  check_password_failure(k.last);
  check_password_failure(u.last, "mallory");
  check_password_failure(n.last);
  check_password_failure(m.last);
  CHECK_FALSE(u.pass_through.has_value());
  // The mock salt is stable for a name, as a real one is.
  AuthExchange again = make(AuthMethod::Scram, std::nullopt, {}, "mallory");
  ScramRun u2 = scram(again, kPassword);
  auto salt = [](const ScramRun& r) {
    std::string_view sf = request_of(r.server_first.send).sasl_data;
    size_t s = sf.find(",s=");
    return std::string(sf.substr(s, sf.find(",i=") - s));
  };
  CHECK(salt(u2) == salt(u));
}

TEST_CASE("auth: SCRAM-SHA-256-PLUS over TLS binds the channel") {
  const std::string cbind(32, 'h');  // stands for tls_server_end_point() of our certificate
  const std::string secret = scram_secret(kPassword);
  AuthExchange a = make(AuthMethod::Scram, secret, cbind);
  ScramRun plus = scram(a, kPassword, ScramBinding::EndPoint, cbind);
  CHECK(request_of(plus.first.send).scram_sha_256_plus);
  CHECK(request_of(plus.first.send).scram_sha_256);
  CHECK(plus.last.outcome == Outcome::Succeeded);
  CHECK(plus.server_verified);
  CHECK(plus.pass_through.has_value());

  // Plain SCRAM-SHA-256 with "n" is still taken over TLS.
  AuthExchange b = make(AuthMethod::Scram, secret, cbind);
  CHECK(scram(b, kPassword).last.outcome == Outcome::Succeeded);

  // A client bound to another certificate fails.
  AuthExchange c = make(AuthMethod::Scram, secret, cbind);
  ScramRun other = scram(c, kPassword, ScramBinding::EndPoint, std::string(32, 'x'));
  CHECK(other.last.outcome == Outcome::Failed);

  // "y" over TLS is a downgrade: refused at client-first.
  AuthExchange d = make(AuthMethod::Scram, secret, cbind);
  ScramRun y = scram(d, kPassword, ScramBinding::Supported);
  CHECK(y.server_first.outcome == Outcome::Failed);
  CHECK(y.server_first.reason == "bad SCRAM client-first");

  // Without TLS, -PLUS is not a mechanism the client may choose.
  AuthExchange e = make(AuthMethod::Scram, secret);
  e.start();
  AuthReply r =
      e.on_message(bytes(sasl_initial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc")));
  CHECK(r.outcome == Outcome::Failed);
  CHECK(r.sqlstate == "28000");
  CHECK(r.message == "client selected an invalid SASL authentication mechanism");
  CHECK(r.reason == "bad SASL mechanism");
}

TEST_CASE("auth: malformed SASL messages end the exchange with 08P01") {
  AuthExchange a = make(AuthMethod::Scram, std::string(kPassword));
  a.start();
  std::string truncated = sasl_initial("SCRAM-SHA-256", "n,,n=,r=abc");
  truncated.resize(truncated.size() - 3);
  AuthReply r = a.on_message(bytes(truncated));
  CHECK(r.outcome == Outcome::Failed);
  CHECK(r.sqlstate == "08P01");
  CHECK(r.message == "malformed SASLInitialResponse");
  CHECK(r.reason == "bad SASL message");

  AuthExchange b = make(AuthMethod::Scram, std::string(kPassword));
  b.start();
  AuthReply sf = b.on_message(bytes(sasl_initial("SCRAM-SHA-256", "n,,n=,r=abc")));
  REQUIRE(sf.outcome == Outcome::Continue);
  AuthReply bad = b.on_message(bytes(std::string("garbage")));
  CHECK(bad.outcome == Outcome::Failed);
  CHECK(bad.sqlstate == "08P01");
  CHECK(bad.reason == "bad SCRAM client-final");
  CHECK_FALSE(b.pass_through().has_value());
}

}  // namespace
}  // namespace pgsluice

namespace pgsluice {
namespace {

// An exchange whose secret came from the auth cache (may_refresh).
AuthExchange make_cached(AuthMethod method, std::string secret) {
  AuthSetup s;
  s.method = method;
  s.user = kUser;
  s.secret.state = SecretLookup::State::Found;
  s.secret.secret = std::move(secret);
  s.may_refresh = true;
  s.scram_nonce = "process nonce";
  return AuthExchange(std::move(s));
}

SecretLookup found(std::string secret) {
  SecretLookup l;
  l.state = SecretLookup::State::Found;
  l.secret = std::move(secret);
  return l;
}

TEST_CASE("auth: a check failing against a cached secret asks for a refresh once, then rechecks") {
  SUBCASE("md5: the new password passes against the refreshed verifier") {
    AuthExchange a = make_cached(AuthMethod::Md5, md5_secret("old", kUser));
    AuthReply first = a.start();
    wire::AuthRequest req = request_of(first.send);
    REQUIRE(req.code == 5);
    std::string resp = md5_response(md5_secret("new", kUser), kUser, req.salt.data());
    AuthReply r = a.on_message(bytes(password_body(resp)));
    CHECK(r.outcome == Outcome::Refresh);
    CHECK(r.send.empty());
    AuthReply again = a.recheck(found(md5_secret("new", kUser)));
    CHECK(again.outcome == Outcome::Succeeded);
  }
  SUBCASE("md5: a wrong password still fails after the refresh, with the same 28P01") {
    AuthExchange a = make_cached(AuthMethod::Md5, md5_secret("old", kUser));
    AuthReply first = a.start();  // req.salt points into first.send
    wire::AuthRequest req = request_of(first.send);
    std::string resp = md5_response(md5_secret("guess", kUser), kUser, req.salt.data());
    CHECK(a.on_message(bytes(password_body(resp))).outcome == Outcome::Refresh);
    check_password_failure(a.recheck(found(md5_secret("new", kUser))));
  }
  SUBCASE("the refresh finds the same secret, or no user: failure") {
    AuthExchange a = make_cached(AuthMethod::Cleartext, md5_secret("old", kUser));
    a.start();
    CHECK(a.on_message(bytes(password_body("new"))).outcome == Outcome::Refresh);
    check_password_failure(a.recheck(found(md5_secret("old", kUser))));
    AuthExchange b = make_cached(AuthMethod::Cleartext, md5_secret("old", kUser));
    b.start();
    CHECK(b.on_message(bytes(password_body("new"))).outcome == Outcome::Refresh);
    check_password_failure(b.recheck(SecretLookup{}));
  }
  SUBCASE("cleartext against a refreshed SCRAM verifier") {
    AuthExchange a = make_cached(AuthMethod::Cleartext, scram_secret("old"));
    a.start();
    CHECK(a.on_message(bytes(password_body("new"))).outcome == Outcome::Refresh);
    CHECK(a.recheck(found(scram_secret("new"))).outcome == Outcome::Succeeded);
  }
  SUBCASE("SCRAM: the proof cannot be rechecked (bound to the old salt): refresh, then fail") {
    AuthExchange a = make_cached(AuthMethod::Scram, scram_secret("old"));
    ScramRun run = scram(a, "new");
    CHECK(run.last.outcome == Outcome::Refresh);
    check_password_failure(a.recheck(found(scram_secret("new"))));
  }
  SUBCASE("a secret fetched for this login (no may_refresh) fails at once") {
    check_password_failure(md5(md5_secret("old", kUser), md5_secret("new", kUser)));
  }
}

}  // namespace
}  // namespace pgsluice
