// Client authentication: which method, which secret, and the exchanges (no sockets).
#include "auth.h"

#include <arpa/inet.h>

#include "hba.h"
#include "password.h"
#include "wire.h"

namespace pgsluice {

namespace {

AuthReply failure(std::string sqlstate, std::string message, std::string reason) {
  AuthReply r;
  r.outcome = AuthReply::Outcome::Failed;
  r.sqlstate = std::move(sqlstate);
  r.message = std::move(message);
  r.reason = std::move(reason);
  return r;
}

AuthReply request(std::string send) {
  AuthReply r;
  r.send = std::move(send);
  return r;
}

std::span<const uint8_t> as_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// A PasswordMessage (cleartext or md5) holding an empty string: PostgreSQL refuses it before
// looking at the user, with this message; it depends only on what the client sent.
AuthReply empty_password() {
  return failure("28P01", "empty password returned by client", "empty password");
}

// auth_type = hba: the first line of auth_hba_file that matches decides. No rules loaded
// (cannot happen once a snapshot is committed) or no matching line: refused.
AuthMethod hba_method(const Config& cfg, const AuthAttempt& attempt, std::string* refusal,
                      std::string* map) {
  HbaRequest req;
  req.unix_socket = attempt.is_unix;
  req.tls = attempt.tls;
  req.database = attempt.database;
  req.user = attempt.user;
  bool addr_ok = attempt.is_unix;
  if (!attempt.is_unix) {
    std::string host(attempt.peer_host);
    if (inet_pton(AF_INET, host.c_str(), req.addr.data()) == 1) {
      addr_ok = true;
    } else if (inet_pton(AF_INET6, host.c_str(), req.addr.data()) == 1) {
      req.ipv6 = true;
      addr_ok = true;
    }
  }
  const HbaRule* rule = cfg.hba != nullptr && addr_ok ? match_hba(*cfg.hba, req) : nullptr;
  if (rule == nullptr) {
    if (refusal != nullptr) *refusal = hba_no_match_message(req);
    return AuthMethod::Reject;
  }
  if (map != nullptr) *map = rule->map;
  switch (rule->method) {
    case HbaMethod::Trust:
      return AuthMethod::Trust;
    case HbaMethod::Reject:
      if (refusal != nullptr) *refusal = hba_reject_message(req);
      return AuthMethod::Reject;
    case HbaMethod::Password:
      return AuthMethod::Cleartext;
    case HbaMethod::Md5:
      return AuthMethod::Md5;
    case HbaMethod::ScramSha256:
      return AuthMethod::Scram;
    case HbaMethod::Cert:
      return AuthMethod::Cert;
    case HbaMethod::Peer:
      return AuthMethod::Peer;
  }
  return AuthMethod::Unsupported;
}

}  // namespace

AuthMethod choose_method(const Config& cfg, const AuthAttempt& attempt, std::string* refusal,
                         std::string* map) {
  if (map != nullptr) map->clear();
  switch (cfg.auth_type) {
    case AuthType::Any:
      return AuthMethod::Any;
    case AuthType::Trust:
      return AuthMethod::Trust;
    case AuthType::Plain:
      return AuthMethod::Cleartext;
    case AuthType::Md5:
      return AuthMethod::Md5;
    case AuthType::ScramSha256:
      return AuthMethod::Scram;
    case AuthType::Cert:
      return AuthMethod::Cert;
    case AuthType::Peer:
      return AuthMethod::Peer;
    case AuthType::Hba:
      return hba_method(cfg, attempt, refusal, map);
  }
  return AuthMethod::Unsupported;
}

SecretLookup lookup_secret(const Config& cfg, std::string_view user) {
  SecretLookup r;
  if (const std::string* s = cfg.userlist.find(user)) {
    r.state = SecretLookup::State::Found;
    r.secret = *s;
  }
  return r;
}

std::optional<LookupScope> lookup_scope(const Config& cfg, std::string_view db) {
  const DatabaseDef* def = cfg.database(std::string(db));
  if (def == nullptr) return std::nullopt;
  LookupScope s;
  s.auth_user = !def->auth_user.empty() ? def->auth_user : cfg.auth_user;
  if (s.auth_user.empty()) return std::nullopt;
  s.query = !def->auth_query.empty() ? def->auth_query : cfg.auth_query;
  s.dbname = !def->auth_dbname.empty()  ? def->auth_dbname
             : !cfg.auth_dbname.empty() ? cfg.auth_dbname
                                        : std::string(db);
  return s;
}

bool method_needs_user(AuthMethod method) {
  switch (method) {
    case AuthMethod::Trust:
    case AuthMethod::Cleartext:
    case AuthMethod::Md5:
    case AuthMethod::Scram:
    case AuthMethod::Cert:
    case AuthMethod::Peer:
      return true;
    case AuthMethod::Any:
    case AuthMethod::Reject:
    case AuthMethod::Unsupported:
      return false;
  }
  return false;
}

AuthExchange::AuthExchange(AuthSetup setup) : s_(std::move(setup)) {}

AuthExchange::~AuthExchange() = default;

AuthReply AuthExchange::failed() const {
  return failure("28P01", "password authentication failed for user \"" + s_.user + "\"",
                 "password authentication failed");
}

AuthReply AuthExchange::succeeded(std::string send) {
  step_ = Step::Done;
  AuthReply r;
  r.outcome = AuthReply::Outcome::Succeeded;
  r.send = std::move(send);
  return r;
}

bool AuthExchange::name_allowed(const std::string& system_name) const {
  if (s_.map.empty()) return system_name == s_.user;
  return s_.ident != nullptr && ident_allows(*s_.ident, s_.map, system_name, s_.user);
}

AuthReply AuthExchange::start() {
  const bool known = s_.secret.state == SecretLookup::State::Found;
  // An empty secret is no password: like PostgreSQL (a role without a password) and PgBouncer,
  // every password method refuses it, through the same motions as for an unknown user.
  const bool has_secret = known && !s_.secret.secret.empty();
  std::string m;
  switch (s_.method) {
    case AuthMethod::Any:
      return succeeded();
    case AuthMethod::Trust:
      if (!known) return failed();
      return succeeded();
    case AuthMethod::Cleartext:
      wire::auth_request(m, 3);
      step_ = Step::Cleartext;
      return request(std::move(m));
    case AuthMethod::Md5:
      if (has_secret && secret_kind(s_.secret.secret) == SecretKind::Scram) return start_scram();
      random_bytes(md5_salt_.data(), md5_salt_.size());
      wire::auth_request(m, 5, md5_salt_);
      step_ = Step::Md5;
      return request(std::move(m));
    case AuthMethod::Scram:
      return start_scram();
    case AuthMethod::Cert: {
      // PostgreSQL's cert method: the handshake verified the chain against
      // client_tls_ca_file (client_tls_sslmode verify-ca or verify-full); the CN must be the
      // user name. The user must be in auth_file, as PgBouncer requires.
      if (!s_.cert.verified)
        return failure("28000", "connection requires a valid client certificate",
                       "no client certificate");
      if (!known || !name_allowed(s_.cert.cn)) {
        AuthReply r =
            failure("28000", "certificate authentication failed for user \"" + s_.user + "\"",
                    "certificate authentication failed");
        if (!name_allowed(s_.cert.cn))
          r.warning = s_.map.empty()
                          ? "certificate CN \"" + s_.cert.cn + "\" does not match the user name"
                          : "no match in usermap \"" + s_.map + "\" for user \"" + s_.user +
                                "\" authenticated as \"" + s_.cert.cn + "\"";
        return r;
      }
      return succeeded();
    }
    case AuthMethod::Peer: {
      // PostgreSQL's peer method: the OS user at the other end of the Unix socket
      // (SO_PEERCRED) must be the user name, and the user must be known (as PgBouncer).
      std::string msg = "Peer authentication failed for user \"" + s_.user + "\"";
      if (!s_.is_unix) return failure("28000", msg, "peer authentication needs the Unix socket");
      if (!known || s_.peer_user.empty() || !name_allowed(s_.peer_user)) {
        AuthReply r = failure("28000", msg, "peer authentication failed");
        if (!s_.peer_user.empty() && !name_allowed(s_.peer_user))
          r.warning = s_.map.empty()
                          ? "provided user name (" + s_.user + ") and authenticated user name (" +
                                s_.peer_user + ") do not match"
                          : "no match in usermap \"" + s_.map + "\" for user \"" + s_.user +
                                "\" authenticated as \"" + s_.peer_user + "\"";
        return r;
      }
      return succeeded();
    }
    case AuthMethod::Reject:
      return failure("28000", s_.refusal, "refused by auth_hba_file");
    case AuthMethod::Unsupported:
      break;
  }
  return failure("28000",
                 std::string("auth_type ") + auth_type_name(s_.auth_type) + " is not supported yet",
                 "unsupported auth_type");
}

AuthReply AuthExchange::start_scram() {
  const std::string& secret = s_.secret.secret;
  const bool has_secret = s_.secret.state == SecretLookup::State::Found && !secret.empty();
  const SecretKind kind = has_secret ? secret_kind(secret) : SecretKind::Plain;
  ScramKeys keys;
  bool mock = !has_secret;
  if (has_secret && kind == SecretKind::Scram) {
    auto k = parse_scram_secret(secret);
    if (k) {
      keys = *k;
      scram_real_secret_ = true;
    } else {
      mock = true;
    }
  } else if (has_secret && kind == SecretKind::Plain) {
    // PBKDF2 runs once per (user, secret), not on the event loop at every login.
    keys = scram_key_cache().get(s_.user, secret, s_.scram_iterations);
    if (keys.iterations == 0) mock = true;
  } else {
    mock = true;  // unknown user, no password, or an md5 secret that cannot serve SCRAM
  }
  if (mock) keys = scram_mock_keys(s_.user, s_.scram_nonce, s_.scram_iterations);
  scram_ = std::make_unique<ScramServerSession>(std::move(keys), mock);
  std::string m;
  // Over TLS SCRAM-SHA-256-PLUS comes first (tls-server-end-point binding, as PostgreSQL
  // offers it), to every user alike so that the list tells nothing about the secret.
  if (!s_.cbind.empty()) {
    static constexpr char kBoth[] = "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0";  // + final NUL
    wire::auth_request(m, 10, as_bytes(std::string_view(kBoth, sizeof kBoth)));
  } else {
    wire::auth_sasl(m, "SCRAM-SHA-256");
  }
  step_ = Step::ScramFirst;
  return request(std::move(m));
}

AuthReply AuthExchange::failed_check() {
  if (!s_.may_refresh) return failed();
  s_.may_refresh = false;  // once
  AuthReply r;
  r.outcome = AuthReply::Outcome::Refresh;
  return r;
}

AuthReply AuthExchange::recheck(const SecretLookup& fresh) {
  if (fresh.state != SecretLookup::State::Found || fresh.secret == s_.secret.secret ||
      retry_answer_.empty())
    return failed();
  s_.secret = fresh;
  std::string answer = std::move(retry_answer_);
  retry_answer_.clear();
  if (failed_step_ == Step::Cleartext) return check_cleartext(answer);
  if (failed_step_ == Step::Md5) {
    if (!md5_verify(s_.secret.secret, s_.user, md5_salt_.data(), answer)) return failed();
    return succeeded();
  }
  return failed();
}

AuthReply AuthExchange::check_cleartext(std::string_view pw) {
  if (pw.empty()) return empty_password();
  const std::string& secret = s_.secret.secret;
  if (s_.secret.state != SecretLookup::State::Found || secret.empty()) return failed();
  bool ok = false;
  switch (secret_kind(secret)) {
    case SecretKind::Plain:
      ok = constant_time_eq(pw, secret);
      break;
    case SecretKind::Md5:
      ok = constant_time_eq(md5_secret(pw, s_.user), secret);
      break;
    case SecretKind::Scram: {
      auto k = parse_scram_secret(secret);
      if (k) {
        ScramKeys t = scram_keys_from_password(pw, k->salt, k->iterations);
        ok = t.stored_key == k->stored_key;
      }
      break;
    }
  }
  if (!ok) {
    failed_step_ = Step::Cleartext;
    retry_answer_.assign(pw);
    return failed_check();
  }
  return succeeded();
}

AuthReply AuthExchange::on_message(std::span<const uint8_t> body) {
  wire::Reader r(body);
  switch (step_) {
    case Step::Cleartext: {
      std::string_view pw;
      if (!r.cstr(pw)) return failed();
      return check_cleartext(pw);
    }
    case Step::Md5: {
      std::string_view resp;
      if (!r.cstr(resp)) return failed();
      if (resp.empty()) return empty_password();
      // md5_verify refuses an empty stored secret.
      if (s_.secret.state != SecretLookup::State::Found) return failed();
      if (!md5_verify(s_.secret.secret, s_.user, md5_salt_.data(), resp)) {
        failed_step_ = Step::Md5;
        retry_answer_.assign(resp);
        return failed_check();
      }
      return succeeded();
    }
    case Step::ScramFirst: {
      std::string_view mech;
      int32_t n = 0;
      std::span<const uint8_t> data;
      if (!r.cstr(mech) || !r.i32(n) || n < 0 || !r.bytes(static_cast<size_t>(n), data))
        return failure("08P01", "malformed SASLInitialResponse", "bad SASL message");
      const bool plus = mech == "SCRAM-SHA-256-PLUS";
      if (mech != "SCRAM-SHA-256" && !(plus && !s_.cbind.empty()))
        return failure("28000", "client selected an invalid SASL authentication mechanism",
                       "bad SASL mechanism");
      if (!s_.cbind.empty()) scram_->set_channel_binding(s_.cbind, plus);
      auto res = scram_->handle_client_first(
          std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
      if (!res)
        return failure(res.status().sqlstate(), res.status().message(), "bad SCRAM client-first");
      std::string m;
      wire::auth_request(m, 11, as_bytes(*res));
      step_ = Step::ScramFinal;
      return request(std::move(m));
    }
    case Step::ScramFinal: {
      auto rest = r.rest();
      auto res = scram_->handle_client_final(
          std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()));
      if (!res) {
        if (res.status().sqlstate() == "28P01") {
          failed_step_ = Step::ScramFinal;
          return scram_real_secret_ ? failed_check() : failed();
        }
        return failure(res.status().sqlstate(), res.status().message(), "bad SCRAM client-final");
      }
      std::string m;
      wire::auth_request(m, 12, as_bytes(*res));
      return succeeded(std::move(m));
    }
    case Step::None:
    case Step::Done:
      break;
  }
  return {};  // no exchange in progress: nothing to answer
}

std::optional<ScramPassThrough> AuthExchange::pass_through() const {
  if (step_ != Step::Done || scram_ == nullptr || !scram_->succeeded() || !scram_real_secret_)
    return std::nullopt;
  ScramPassThrough p;
  p.client_key = scram_->client_key();
  p.server_key = scram_->keys().server_key;
  return p;
}

}  // namespace pgsluice
