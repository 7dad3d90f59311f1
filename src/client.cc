// A client connection: startup, authentication, and the client half of the data path.
#include "client.h"

#include "admin.h"
#include "auth.h"
#include "log.h"
#include "notify_hub.h"
#include "pool.h"
#include "server.h"
#include "tls.h"
#include "trace.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

#if defined(__x86_64__) && defined(__GLIBCXX__)
// Every idle client carries one (ARCHITECTURE.md, memory per client): 584 bytes, a 592-byte
// malloc chunk. A field that makes it larger belongs in a struct allocated on use.
static_assert(sizeof(Client) <= 584, "Client grew: see ARCHITECTURE.md, memory per client");
#endif

namespace {
constexpr size_t kHighWater = 64 * 1024;  // stop reading a side whose peer has this much unsent
constexpr size_t kScanWhole = 64 * 1024;  // a Query up to this size is read whole before sending
constexpr const char* kReservedNames =
    "prepared statement names of the connection pooler cannot be used";
// Most bytes queued to a client that has not logged in: the longest answer before login is
// a NegotiateProtocolVersion naming every option of a 10000-byte startup packet, plus an
// authentication request. A client that lets more pile up does not read: it is closed.
constexpr size_t kMaxPreLoginOut = 16 * 1024;

bool in_csv_list(std::string_view list, std::string_view name) {
  size_t i = 0;
  while (i <= list.size()) {
    size_t j = list.find(',', i);
    if (j == std::string_view::npos) j = list.size();
    std::string_view w = list.substr(i, j - i);
    while (!w.empty() && w.front() == ' ') w.remove_prefix(1);
    while (!w.empty() && w.back() == ' ') w.remove_suffix(1);
    if (iequals(w, name)) return true;
    i = j + 1;
  }
  return false;
}
}  // namespace

Client::Client(Worker* w, Fd fd, bool is_unix, const sockaddr_storage* peer)
    : Conn(w, std::move(fd)), is_unix_(is_unix), login_(std::make_unique<Login>()) {
  addr_ = is_unix ? PeerAddr{"unix", 0} : peer != nullptr ? peer_from(*peer) : peer_of(fd_.get());
}

Client::~Client() = default;

void Client::on_readable() {
  if (state_ == ClientState::Tls) {
    step_tls();  // OpenSSL reads the handshake from the socket itself
    return;
  }
  if ((state_ == ClientState::Waiting || state_ == ClientState::Login ||
       state_ == ClientState::AuthWait) &&
      in_.size() >= BufPool::kBlock) {
    want_read(false);  // queued with a full block buffered: wait for a server (or a secret)
    return;
  }
  size_t got = 0;
  Io r = read_in(&got);
  if (r == Io::Eof || r == Io::Error) {
    worker_->close_client(this, r == Io::Eof ? "client unexpected eof" : "client read error");
    return;
  }
  if (got == 0) return;
  process();
}

void Client::on_writable() {
  if (state_ == ClientState::Tls) {
    step_tls();
    return;
  }
  send_now();
  if (dead_) return;
  if (out_.empty() && notify_ != nullptr) notify_refill(this);  // held notifications
  if (out_.empty() && server_ != nullptr) {
    // The server was paused while we had too much queued for this client.
    server_->want_read(true);
    server_->process();
  }
}

void Client::flush() {
  if (out_.empty()) {
    want_write(false);
    return;
  }
  worker_->queue_flush(this);
}

void Client::send_now() {
  if (state_ == ClientState::Tls) return;  // step_tls() sends 'S' and drives the handshake
  if (out_.empty()) {
    want_write(false);
    return;
  }
  if (flush_out() == Io::Error) worker_->close_client(this, "client send failed");
}

void Client::queue_error(bool fatal, std::string_view sqlstate, std::string_view msg) {
  std::string m;
  wire::error_response(m, fatal ? "FATAL" : "ERROR", sqlstate, msg);
  worker_->bufs().append(out_, m.data(), m.size());
  if (worker_->cfg().log_pooler_errors)
    LOG_WARN("C-%p: %s/%s@%s:%d pooler error: %s", static_cast<void*>(this), db_.c_str(),
             user_.c_str(), addr_.host.c_str(), addr_.port, std::string(msg).c_str());
}

void Client::fail(std::string_view sqlstate, std::string_view msg, std::string_view reason) {
  worker_->fail_client(this, sqlstate, msg, reason);
}

void Client::process() {
  if (dead_) return;
  switch (state_) {
    case ClientState::Startup:
      process_startup();
      break;
    case ClientState::Tls:
      break;  // nothing is read from in_ during the handshake
    case ClientState::Auth:
      process_auth();
      break;
    case ClientState::Login:
    case ClientState::Waiting:
      break;  // bytes wait in in_ until a server is linked (link_waiter)
    case ClientState::AuthWait:
      break;  // bytes wait in in_ until auth_query answers (lookup_answered)
    case ClientState::Idle:
    case ClientState::Active:
      forward_messages();
      break;
    case ClientState::Closed:
      break;
  }
}

void Client::process_startup() {
  while (!dead_ && state_ == ClientState::Startup) {
    const Config& cfg = worker_->cfg();
    const bool tcp = !is_unix_;
    // As PgBouncer (and PostgreSQL): no TLS on the Unix socket, and no TLS required there.
    login_->opening.tls_offered = tcp && cfg.tls != nullptr && cfg.tls->client != nullptr;
    login_->opening.tls_required =
        tcp && ssl_mode_requires_tls(parse_ssl_mode(cfg.client_tls_sslmode));
    std::span<const uint8_t> in(in_.begin(), in_.size());
    OpeningStep step = next_opening_step(login_->opening, in);
    switch (step.action) {
      case OpeningAction::NeedMore:
        if (step.len > in_.size()) worker_->bufs().reserve(in_, step.len - in_.size());
        return;
      case OpeningAction::BadLength:
        fail("08P01", "invalid length of startup packet", "bad startup packet length");
        return;
      case OpeningAction::RefuseDirectTls:
        // PostgreSQL closes without an answer: a TLS client could not read one.
        worker_->close_client(this, "direct TLS connection, but TLS is not offered here");
        return;
      case OpeningAction::RefuseTrailing:
        fail("08P01",
             step.code == wire::kSslCode
                 ? "received unencrypted data after SSL request"
                 : "received unencrypted data after GSSAPI encryption request",
             "unencrypted data after an encryption request");
        return;
      case OpeningAction::RefuseRepeated: {
        // A second request of either kind is read by PostgreSQL as a startup packet of
        // protocol 1234.5679 (or .5680), which it refuses with this error.
        char msg[128];
        std::snprintf(msg, sizeof msg,
                      "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                      step.code >> 16, step.code & 0xffff);
        fail("0A000", msg,
             login_->opening.in_tls ? "encryption request inside TLS"
                                    : "repeated encryption request");
        return;
      }
      case OpeningAction::AnswerN: {
        note_opening_step(login_->opening, step);
        in_.rpos += step.len;
        const char no = 'N';
        worker_->bufs().append(out_, &no, 1);
        flush();
        if (!prelogin_out_ok()) return;
        continue;
      }
      case OpeningAction::AnswerS:
      case OpeningAction::DirectTls: {
        note_opening_step(login_->opening, step);
        std::span<const uint8_t> early;
        if (step.action == OpeningAction::DirectTls) early = in.subspan(0, step.len);
        login_->direct_tls = step.action == OpeningAction::DirectTls;
        login_->tls_ctx = cfg.tls->client;
        begin_tls(early);
        in_.rpos += step.len;
        worker_->bufs().release_if_empty(in_);
        step_tls();
        return;
      }
      case OpeningAction::RefusePlain:
      case OpeningAction::Packet: {
        note_opening_step(login_->opening, step);
        std::span<const uint8_t> pkt(in_.begin(), step.len);
        in_.rpos += step.len;
        if (step.action == OpeningAction::RefusePlain) {
          refuse_plain(pkt);
          return;
        }
        if (!handle_startup_packet(pkt) || !prelogin_out_ok()) return;
        break;
      }
    }
  }
  if (!dead_ && state_ == ClientState::Auth) process_auth();
}

void Client::refuse_plain(std::span<const uint8_t> pkt) {
  // PostgreSQL's pg_hba refusal names host, user, database and "no encryption"; PgBouncer
  // says "SSL required". Both, with PostgreSQL's SQLSTATE (invalid_authorization_specification).
  auto parsed = wire::parse_startup(pkt);
  std::string user, db;
  if (parsed) {
    for (const auto& [k, v] : parsed->params) {
      if (k == "user") user = v;
      if (k == "database") db = v;
    }
  }
  if (db.empty()) db = user;
  user_ = user;
  db_ = db;
  fail("28000",
       "SSL required: no entry for host \"" + addr_.host + "\", user \"" + user +
           "\", database \"" + db + "\", no encryption",
       "SSL required");
}

void Client::begin_tls(std::span<const uint8_t> early) {
  login_->tls_early.assign(reinterpret_cast<const char*>(early.data()), early.size());
  if (!login_->direct_tls) {
    const char yes = 'S';
    worker_->bufs().append(out_, &yes, 1);
  }
  worker_->set_state(this, ClientState::Tls);
}

void Client::step_tls() {
  if (dead_ || state_ != ClientState::Tls) return;
  if (!tls()) {
    // 'S' leaves in plain text before the session starts (our Conn encrypts from then on).
    if (!out_.empty()) {
      if (flush_out() == Io::Error) {
        worker_->close_client(this, "client send failed");
        return;
      }
      if (!out_.empty()) return;  // the write event calls again
    }
    bool ok = login_->tls_ctx != nullptr &&
              start_tls(login_->tls_ctx->get(), true, login_->tls_early, "", false);
    login_->tls_ctx.reset();
    login_->tls_early.clear();
    login_->tls_early.shrink_to_fit();
    if (!ok) {
      worker_->rt()->client_tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
      LOG_WARN("C-%p: (nodb)/(nouser)@%s:%d could not start TLS: %s", static_cast<void*>(this),
               addr_.host.c_str(), addr_.port, tls_error_text("out of memory").c_str());
      worker_->close_client(this, "could not start TLS");
      return;
    }
  }
  std::string why;
  Io r = tls_handshake(&why);
  if (r == Io::WouldBlock) return;
  if (r != Io::Ok) {
    worker_->rt()->client_tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("C-%p: (nodb)/(nouser)@%s:%d TLS handshake failed: %s", static_cast<void*>(this),
             addr_.host.c_str(), addr_.port, why.c_str());
    worker_->close_client(this, "TLS handshake failed");
    return;
  }
  if (login_->direct_tls) {
    // PostgreSQL 17: a direct TLS connection must have negotiated ALPN "postgresql" (the
    // context's callback refuses any other protocol; a client may offer none).
    const unsigned char* proto = nullptr;
    unsigned int plen = 0;
    SSL_get0_alpn_selected(ssl(), &proto, &plen);
    if (std::string_view(reinterpret_cast<const char*>(proto), proto ? plen : 0) != kAlpnPostgres) {
      worker_->rt()->client_tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
      LOG_WARN(
          "C-%p: (nodb)/(nouser)@%s:%d received direct SSL connection request without ALPN "
          "protocol negotiation extension",
          static_cast<void*>(this), addr_.host.c_str(), addr_.port);
      worker_->close_client(this, "direct TLS without ALPN");
      return;
    }
  }
  worker_->rt()->client_tls_handshakes.fetch_add(1, std::memory_order_relaxed);
  login_->opening.in_tls = true;
  worker_->set_state(this, ClientState::Startup);
  want_write(!out_.empty());
  want_read(true);  // the startup packet follows inside TLS (and may be decrypted already)
}

bool Client::prelogin_out_ok() {
  if (out_.size() <= kMaxPreLoginOut) return true;
  if (state_ != ClientState::Startup && state_ != ClientState::Auth) return true;  // logged in
  worker_->close_client(this, "client does not read its login replies");
  return false;
}

bool Client::handle_startup_packet(std::span<const uint8_t> pkt) {
  auto parsed = wire::parse_startup(pkt);
  if (!parsed) {
    fail("08P01", parsed.status().message(), "bad startup packet");
    return false;
  }
  wire::StartupPacket& sp = *parsed;
  using Kind = wire::StartupPacket::Kind;
  if (sp.kind == Kind::Ssl || sp.kind == Kind::Gss) {
    // next_opening_step() takes every well-formed request; this one is not (length != 8).
    fail("08P01", "invalid length of startup packet", "bad encryption request");
    return false;
  }
  if (sp.kind == Kind::Cancel) {
    worker_->handle_cancel(sp.cancel_pid, sp.cancel_key);
    worker_->close_client(this, "cancel request");
    return false;
  }
  if ((sp.version >> 16) != 3) {
    char msg[128];
    std::snprintf(msg, sizeof msg,
                  "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                  sp.version >> 16, sp.version & 0xffff);
    fail("0A000", msg, "unsupported protocol");  // PostgreSQL: feature_not_supported
    return false;
  }
  const Config& cfg = worker_->cfg();
  const TrackedNames& tracked = *worker_->rt()->tracked;
  vars_.resize(tracked.size());
  std::vector<std::string> unrecognised;
  auto bad_param = [&](const std::string& name) {
    fail("08P01", "unsupported startup parameter: " + name, "unsupported startup parameter");
    return false;
  };
  for (const auto& [k, v] : sp.params) {
    if (k == "user") {
      user_ = v;
    } else if (k == "database") {
      db_ = v;
    } else if (k.rfind("_pq_.", 0) == 0) {
      unrecognised.push_back(k);
    } else if (int i = tracked.find(k); i >= 0) {
      vars_.set(static_cast<size_t>(i), v);
    } else if (k == "options") {
      if (in_csv_list(cfg.ignore_startup_parameters, "options")) continue;
      auto opts = wire::parse_options(v);
      if (!opts) return bad_param("options");
      for (const auto& [ok, ov] : *opts) {
        if (int j = tracked.find(ok); j >= 0)
          vars_.set(static_cast<size_t>(j), ov);
        else if (!in_csv_list(cfg.ignore_startup_parameters, ok))
          return bad_param("options");
      }
    } else if (k == "replication") {
      fail("08P01", "replication connections are not supported", "replication connection");
      return false;
    } else if (!in_csv_list(cfg.ignore_startup_parameters, k)) {
      return bad_param(k);
    }
  }
  if ((sp.version & 0xffff) != 0 || !unrecognised.empty()) {
    std::string m;
    wire::negotiate_protocol_version(m, wire::kProtocol30, unrecognised);
    worker_->bufs().append(out_, m.data(), m.size());
  }
  if (user_.empty()) {
    fail("28000", "no PostgreSQL user name specified in startup packet", "no user");
    return false;
  }
  if (db_.empty()) db_ = user_;
  // Every client connection counts, this one included, from accept to close (Listener);
  // the console is let in over the limit, as PgBouncer does. The message is PgBouncer's,
  // the SQLSTATE PostgreSQL's for too many connections.
  if (cfg.max_client_conn > 0 && worker_->rt()->clients.load() > cfg.max_client_conn &&
      !is_admin_database(db_)) {
    fail("53300", "no more connections allowed (max_client_conn)", "max_client_conn");
    return false;
  }
  if (is_admin_database(db_)) {
    is_admin_ = true;                // the console: no pool, no server (admin.cc)
    if (admin_trusted_peer(this)) {  // user pgbouncer over the Unix socket, same uid
      finish_auth();
      return !dead_;
    }
    return begin_auth();
  }
  // No pool is looked up or created before the password is checked (finish_auth): a client
  // that never authenticates leaves nothing behind, and an unknown database is reported only
  // after authentication, as PostgreSQL and PgBouncer do.
  return begin_auth();
}

bool Client::begin_auth() {
  const Config& cfg = worker_->cfg();
  AuthSetup setup;
  setup.method = choose_method(cfg, AuthAttempt{user_, db_, is_unix_, tls(), addr_.host},
                               &setup.refusal, &setup.map);
  setup.ident = cfg.ident;
  setup.is_unix = is_unix_;
  if (setup.method == AuthMethod::Peer && is_unix_) setup.peer_user = unix_peer_user(fd());
  setup.auth_type = cfg.auth_type;
  setup.user = user_;
  setup.secret = lookup_secret(cfg, user_);
  setup.scram_iterations = cfg.scram_iterations;
  setup.scram_nonce = worker_->rt()->scram_nonce;
  if (tls() && (setup.method == AuthMethod::Md5 || setup.method == AuthMethod::Scram))
    setup.cbind = tls_server_end_point(SSL_get_certificate(ssl()));
  if (setup.method == AuthMethod::Cert) {
    setup.cert.verified = tls() && SSL_get0_peer_certificate(ssl()) != nullptr &&
                          SSL_get_verify_result(ssl()) == X509_V_OK;
    if (setup.cert.verified) setup.cert.cn = tls_peer_common_name(ssl());
  }
  // Not in auth_file: auth_query finds the secret, through the auth cache (the console's
  // users are auth_file's only, as PgBouncer's).
  if (setup.secret.state == SecretLookup::State::Unknown && !is_admin_ &&
      method_needs_user(setup.method)) {
    if (auto scope = lookup_scope(cfg, db_)) {
      login_->scope = std::move(*scope);
      login_->pending = std::make_unique<AuthSetup>(std::move(setup));
      return ask_auth_cache(false);
    }
  }
  return start_exchange(std::move(setup));
}

bool Client::start_exchange(AuthSetup setup) {
  login_->auth = std::make_unique<AuthExchange>(std::move(setup));
  AuthReply r = login_->auth->start();
  return apply_auth(r);
}

bool Client::ask_auth_cache(bool force) {
  const Config& cfg = worker_->cfg();
  AuthCache::Answer a =
      worker_->rt()->auth_cache->get(login_->scope, user_, worker_->index(), cfg.auth_cache_ttl,
                                     cfg.auth_cache_negative_ttl, force);
  using K = AuthCache::Answer::Kind;
  if (a.kind == K::Run || a.refresh) worker_->run_lookup(login_->scope, user_);
  if (a.kind == K::Run || a.kind == K::Wait) {
    login_->lookup_key = AuthCache::entry_key(login_->scope.key(), user_);
    worker_->set_state(this, ClientState::AuthWait);
    return true;
  }
  AuthCache::Outcome out;
  out.kind =
      a.kind == K::Found ? AuthCache::Outcome::Kind::Found : AuthCache::Outcome::Kind::NotFound;
  out.secret = std::move(a.secret);
  if (login_->auth != nullptr) {  // a recheck that the cache answered (just refreshed)
    SecretLookup fresh;
    if (out.kind == AuthCache::Outcome::Kind::Found) {
      fresh.state = SecretLookup::State::Found;
      fresh.secret = std::move(out.secret);
    }
    AuthReply r = login_->auth->recheck(fresh);
    return apply_auth(r);
  }
  AuthSetup setup = std::move(*login_->pending);
  login_->pending.reset();
  if (out.kind == AuthCache::Outcome::Kind::Found) {
    setup.secret.state = SecretLookup::State::Found;
    setup.secret.secret = std::move(out.secret);
    setup.may_refresh = true;  // from the cache: a failed proof asks PostgreSQL once
  }
  return start_exchange(std::move(setup));
}

const std::string& Client::lookup_key() const {
  static const std::string kNone;
  return login_ != nullptr ? login_->lookup_key : kNone;
}

void Client::lookup_answered(const AuthCache::Outcome& out) {
  if (dead_ || state_ != ClientState::AuthWait) return;
  worker_->set_state(this, ClientState::Auth);
  login_->lookup_key.clear();
  want_read(true);  // reading may have stopped while it waited (on_readable)
  if (out.kind == AuthCache::Outcome::Kind::Failed && login_->auth == nullptr) {
    fail(out.sqlstate.empty() ? "08P01" : out.sqlstate, out.message, "auth_query failed");
    return;
  }
  SecretLookup fresh;
  if (out.kind == AuthCache::Outcome::Kind::Found) {
    fresh.state = SecretLookup::State::Found;
    fresh.secret = out.secret;
  }
  if (login_->auth != nullptr) {  // a recheck after a failed proof
    AuthReply r = login_->auth->recheck(fresh);
    if (!apply_auth(r)) return;
  } else {
    AuthSetup setup = std::move(*login_->pending);
    login_->pending.reset();
    setup.secret = std::move(fresh);  // fetched for this login: no refresh on failure
    if (!start_exchange(std::move(setup))) return;
  }
  if (!dead_ && state_ == ClientState::Auth && !in_.empty()) process_auth();
}

bool Client::apply_auth(AuthReply& r) {
  if (!r.send.empty()) worker_->bufs().append(out_, r.send.data(), r.send.size());
  switch (r.outcome) {
    case AuthReply::Outcome::Continue:
      if (state_ != ClientState::Auth) worker_->set_state(this, ClientState::Auth);
      flush();
      break;
    case AuthReply::Outcome::Succeeded:
      finish_auth();  // also hands the proven keys to the pool for pass-through
      break;
    case AuthReply::Outcome::Refresh:
      // The proof failed against a cached secret: ask PostgreSQL once before failing.
      return ask_auth_cache(true);
    case AuthReply::Outcome::Failed:
      if (!r.warning.empty())
        LOG_WARN("C-%p: %s/%s@%s:%d %s", static_cast<void*>(this), db_.c_str(), user_.c_str(),
                 addr_.host.c_str(), addr_.port, r.warning.c_str());
      fail(r.sqlstate, r.message, r.reason);
      break;
  }
  return !dead_;
}

void Client::process_auth() {
  while (!dead_ && state_ == ClientState::Auth) {
    if (in_.size() < wire::kHeaderLen) return;
    uint8_t type = in_.begin()[0];
    size_t len = wire::get_u32(in_.begin() + 1);
    if (type != 'p' || len < 4 || len > wire::kMaxAuthMessage) {
      fail("08P01", "invalid message during authentication", "bad auth packet");
      return;
    }
    size_t total = len + 1;
    if (in_.size() < total) {
      worker_->bufs().reserve(in_, total - in_.size());
      return;
    }
    std::span<const uint8_t> body(in_.begin() + wire::kHeaderLen, len - 4);
    in_.rpos += total;
    if (login_->auth == nullptr) return;
    AuthReply r = login_->auth->on_message(body);
    if (!apply_auth(r)) return;
    if (state_ == ClientState::Auth && !prelogin_out_ok()) return;
  }
}

void Client::finish_auth() {
  if (worker_->cfg().log_connections)
    LOG_INFO("C-%p: %s/%s@%s:%d login attempt: db=%s user=%s tls=%s", static_cast<void*>(this),
             db_.c_str(), user_.c_str(), addr_.host.c_str(), addr_.port, db_.c_str(), user_.c_str(),
             tls() ? tls_description(ssl()).c_str() : "no");
  if (!is_admin_) {
    // Authenticated: only now is the pool found or created (unknown or disabled database:
    // refused here, after the password, so that nothing is created for strangers).
    std::string err, sqlstate;
    pool_ = worker_->rt()->registry->get(worker_->cfg(), db_, user_, &err, &sqlstate);
    if (pool_ == nullptr) {
      fail(sqlstate, err, "unknown database");
      return;
    }
    lp_ = worker_->local_pool(pool_);
    if (!worker_->count_client(this)) return;  // max_db/user_client_connections
    // Pass-through: the client proved the stored secret, so its keys can log in to a
    // server holding the same secret (only when no forced user changes who logs in).
    if (login_->auth != nullptr && pool_->user_name == user_) {
      // A secret from auth_query logs the pool's servers in (as PgBouncer's dynamic users).
      if (!login_->scope.dbname.empty() && pool_->config_secret().empty())
        pool_->set_looked_up_secret(login_->auth->secret());
      if (auto keys = login_->auth->pass_through())
        pool_->set_scram_keys(keys->client_key, keys->server_key);
    }
  }
  login_.reset();  // the secret and the exchange are not needed any more
  worker_->register_cancel_key(this);
  if (is_admin_) {
    admin_login(this);
    return;
  }
  lp_->stats.client_login_count++;
  remap_ = pool_->mode != PoolMode::Session && worker_->cfg().max_prepared_statements > 0;
  cache_unnamed_ = remap_ && worker_->cfg().cache_unnamed_statements;
  if (pool_->welcome_ready()) {
    send_welcome();
    worker_->set_state(this, ClientState::Idle);
    flush();
    if (!dead_ && !in_.empty()) forward_messages();
  } else {
    if (worker_->acquire(this)) {  // else it waits in Login
      flush();
      if (!dead_ && !in_.empty()) forward_messages();
      if (!dead_ && server_ != nullptr) {
        server_->flush();
        if (server_ != nullptr && server_->can_release()) worker_->release(server_);
      }
    }
  }
}

void Client::send_welcome() {
  if (welcomed_) {
    LOG_ERROR("C-%p: BUG welcome again, state=%d server=%p", static_cast<void*>(this),
              static_cast<int>(state_), static_cast<void*>(server_));
    PGS_BUG("welcome sent twice");
    return;
  }
  welcomed_ = true;
  const TrackedNames& tracked = *worker_->rt()->tracked;
  // Built in one string per thread that keeps its capacity: the welcome (about 400 bytes of
  // ParameterStatus) costs no allocation once the first login has sized it.
  thread_local std::string m;
  m.clear();
  wire::auth_ok(m);
  thread_local std::vector<bool> sent;
  sent.assign(tracked.size(), false);
  for (const auto& [name, value] : pool_->welcome()) {
    int i = tracked.find(name);
    if (i >= 0) {
      auto idx = static_cast<size_t>(i);
      if (!vars_.has(idx)) vars_.set(idx, value);
      wire::parameter_status(m, name, vars_.get(idx));
      sent[idx] = true;
    } else {
      wire::parameter_status(m, name, value);
    }
  }
  for (size_t i = 0; i < tracked.size(); i++)
    if (!sent[i] && vars_.has(i)) wire::parameter_status(m, tracked.name(i), vars_.get(i));
  wire::backend_key_data(m, cancel_pid_,
                         std::string_view(reinterpret_cast<const char*>(cancel_key_.data()), 4));
  wire::ready_for_query(m, 'I');
  worker_->bufs().append(out_, m.data(), m.size());
  vars_.shrink();  // grown value by value during the login: kept at its size from now on
}

// A lost server's answer may come while this client is forwarding (a failed send):
// what in_ still holds is then handled when the pass ends (Client::server_lost).
bool Client::forward_messages() {
  forwarding_ = true;
  bool ok = forward_pass();
  forwarding_ = false;
  if (ok && !dead_ && reforward_) {
    reforward_ = false;
    return forward_messages();
  }
  return ok;
}

// The data path, client to server. Only the type and length of each message are read;
// the bytes are passed on as they arrive, a large message in pieces.
bool Client::forward_pass() {
  const Config& cfg = worker_->cfg();
  while (!dead_) {
    if (lost_ != nullptr && lost_->drop > 0) {  // the rest of a message already answered
      size_t n = in_.size() < lost_->drop ? in_.size() : static_cast<size_t>(lost_->drop);
      if (n == 0) break;
      in_.rpos += n;
      lost_->drop -= n;
      lost_settle();
      continue;
    }
    if (fwd_remaining_ > 0) {
      size_t n = in_.size() < fwd_remaining_ ? in_.size() : static_cast<size_t>(fwd_remaining_);
      if (n == 0) break;
      if (qscan_active_ && !scan_streamed(n)) return false;
      worker_->bufs().append(server_->out_, in_.begin(), n);
      in_.rpos += n;
      fwd_remaining_ -= n;
      if (qscan_active_ && fwd_remaining_ == 0) {
        qscan_active_ = false;
        if (remap_state_->qscan.flags & SqlScan::kTouchesStmts) server_->unverify();
      }
      continue;
    }
    if (in_.size() < wire::kHeaderLen) break;
    if (server_ != nullptr && server_->queue_.size() >= Server::kMaxInFlight &&
        server_->answers_due()) {
      // Enough is in flight: read on when answers come (Server::process resumes us).
      stalled_ = true;
      want_read(false);
      break;
    }
    uint8_t type = in_.begin()[0];
    size_t len = wire::get_u32(in_.begin() + 1);
    size_t limit = wire::frontend_limit(type);
    if (limit == 0 || type == 'p') {
      char msg[64];
      std::snprintf(msg, sizeof msg, "invalid frontend message type %d", type);
      fail("08P01", msg, "invalid message type");
      return false;
    }
    if (len < 4 || len > limit || static_cast<long long>(len) > cfg.max_packet_size) {
      fail("08P01", "invalid message length", "invalid message length");
      return false;
    }
    if (type == 'X') {
      in_.rpos += 5;
      worker_->close_client(this, "client close request");
      return false;
    }
    if (is_admin_) {  // the console reads whole messages; it never reaches a server
      size_t whole = len + 1;
      if (whole > kAdminMaxMessage) {
        fail("08P01", "admin console message too long", "admin message too long");
        return false;
      }
      if (in_.size() < whole) {
        worker_->bufs().reserve(in_, whole - in_.size());
        break;
      }
      std::span<const uint8_t> body(in_.begin() + wire::kHeaderLen, len - 4);
      in_.rpos += whole;
      if (!admin_message(this, type, body)) return false;
      continue;
    }
    if (server_ == nullptr && lost_active()) {  // its last server was lost (lost_server.cc)
      int r = lost_message(type, len);
      if (r < 0) break;
      if (r > 0) continue;
    }
    if (state_ == ClientState::Idle && !lost_active()) {  // LISTEN/UNLISTEN (notify_hub.h)
      int r = notify_message(this, type, len);
      if (r < 0) break;
      if (r > 0) continue;
    }
    if (int pr = pin_message(type, len); pr != 0) {  // pinning.h
      if (pr < 0) break;
      continue;
    }
    if (type == 'P' && remap_ && state_ == ClientState::Idle && answer_parses()) continue;
    // A message whose statement name is remapped is read far enough to rewrite it before
    // a server is taken, so a slow client never holds a server while it trickles in.
    size_t need = 0;
    if (remap_ && (type == 'P' || type == 'B' || type == 'D' || type == 'C' || type == 'Q')) {
      need = remap_need(type, len);
      if (in_.size() < need) {
        // Room for what is missing, grown (doubling) with what arrives, not the declared
        // length at once: a length word costs the sender nothing.
        size_t more = need - in_.size();
        worker_->bufs().reserve(in_, more < BufPool::kBlock ? more : BufPool::kBlock);
        break;
      }
      scan_restart();  // the next message is scanned afresh
    }
    bool remapped = need > 0;
    if (state_ != ClientState::Active) {
      if (!worker_->acquire(this)) return false;  // queued; link_waiter() resumes us
    }
    // Scanned once a server is linked, so a client that waits for one is not scanned twice.
    scan_flags_ = 0;
    if (remap_ && (type == 'Q' || type == 'P') && in_.size() > len) {
      // The whole text is here: what may it do to pgsluice's statements (sql_scan)?
      wire::Reader r(in_.begin() + wire::kHeaderLen, len - 4);
      std::string_view name;
      if (type == 'Q' || r.cstr(name)) {
        auto t = r.rest();
        scan_flags_ = sql_scan(std::string_view(reinterpret_cast<const char*>(t.data()), t.size()));
      }
    }
    if (remapped && !server_->queue_.undos.empty() && must_wait(type, len)) {
      // The name's meaning depends on an earlier segment still in flight (its Parse or
      // Close may yet be rejected or skipped): wait for that segment's answer, which
      // its Sync brings promptly; Server::process() resumes this client.
      stalled_ = true;
      want_read(false);
      break;
    }
    if (trace_) trace_message(this, true, type, len + 1);
    if (remap_) record_segment(type, len);
    if (remap_) session_message(type, len, false);
    if (remapped) {
      if (remap(type, len)) continue;
    }
    Server* s = server_;
    PoolStats& st = lp_->stats;
    switch (type) {
      case 'Q':
        if (cache_unnamed_) stmts_.erase(std::string_view());  // a simple query drops it
        if (remap_) {
          stmts_.has_unnamed = false;  // and without the cache, the client's and the server's
          s->note_unnamed(id_, ++unnamed_gen_);
        }
        if (remap_ && in_.size() <= len) {
          // Too large to read whole: scanned as it streams through (scan_streamed).
          remap_state().qscan.reset();
          qscan_active_ = true;
          in_.rpos += wire::kHeaderLen;
          bool ok = scan_streamed(in_.size() < len - 4 ? in_.size() : len - 4);
          in_.rpos -= wire::kHeaderLen;
          if (!ok) return false;
        }
        break;
      case 'P':
        st.client_parse_count++, st.server_parse_count++;
        break;
      case 'B':
        st.bind_count++;
        break;
      case 'c':
      case 'f':
        copy_in_ = false;
        break;
      default:
        break;
    }
    s->note_request(type, copy_in_);
    if (remap_) session_message(type, len, true);
    size_t total = len + 1;
    st.bytes_received += total;
    size_t n = in_.size() < total ? in_.size() : total;
    worker_->bufs().append(s->out_, in_.begin(), n);
    in_.rpos += n;
    fwd_remaining_ = total - n;
    if (s->out_.size() > kHighWater) {
      s->flush();
      if (dead_) return false;
      if (server_ == nullptr) continue;  // lost: the rest is answered (lost_server.cc)
      if (s->out_.size() > kHighWater) {
        want_read(false);  // resumed by Server::on_writable
        return false;
      }
    }
  }
  worker_->bufs().release_if_empty(in_);
  // Answers pgsluice gave itself (fake replies) go now only if the server owes nothing
  // more: otherwise they leave with its answers, in one send (PostgreSQL, too, sends
  // nothing before a Sync or Flush, and for those an answer is due).
  if (!out_.empty() && (server_ == nullptr || server_->queue_.empty())) flush();
  if (!dead_ && server_ != nullptr) {
    Server* s = server_;
    s->flush();
    // A request answered entirely by pgsluice leaves the server with nothing to do.
    if (!s->dead_ && s->client_ == this) s->maybe_pin_check();  // pinning.h
    if (!s->dead_ && s->client_ == this && s->can_release()) worker_->release(s);
  }
  return !dead_;
}

// Scans the next n bytes of a Query that streams through (qscan_active_). A text that
// names pgsluice's namespace ends the session: part of it already went to the server.
bool Client::scan_streamed(size_t n) {
  SqlScan& q = remap_state_->qscan;
  q.feed(std::string_view(reinterpret_cast<const char*>(in_.begin()), n));
  if (!(q.flags & SqlScan::kNamesNamespace)) return true;
  qscan_active_ = false;
  fail("42501", kReservedNames, "statement names pgsluice's namespace");
  return false;
}

// How many bytes of a Parse/Bind/Describe/Close must be buffered before remap() can
// rewrite it: the whole message, except for Bind, whose parameters may be large and
// stream through after its two names. A message that trickles in is scanned once: the
// scan resumes where the previous read left it (Remap::scan_pos), so the cost is linear in
// its size, however small the pieces.
size_t Client::remap_need(uint8_t type, size_t len) {
  size_t total = len + 1;
  if (type == 'Q' && total <= kScanWhole) return total;  // read whole and scanned (sql_scan)
  if (type != 'Q' && type != 'B') return total;
  size_t avail = in_.size() < total ? in_.size() : total;
  size_t& scan_pos = remap_state().scan_pos;
  if (scan_pos < wire::kHeaderLen || scan_pos > avail) {
    scan_pos = wire::kHeaderLen;
    scan_nuls_ = 0;
  }
  if (type == 'Q') {  // only a query starting with PREPARE/EXECUTE/DEALLOCATE is read whole
    std::string_view text(reinterpret_cast<const char*>(in_.begin()) + wire::kHeaderLen,
                          avail - wire::kHeaderLen);
    size_t from = scan_pos - wire::kHeaderLen;
    int k = sql_prepared_prefix(text, avail == total, &from);
    if (k < 0) {
      scan_pos = wire::kHeaderLen + from;
      return avail + 64 < total ? avail + 64 : total;
    }
    return k == 0 ? 0 : total;
  }
  const uint8_t* p = in_.begin();
  size_t i = scan_pos;
  while (i < avail) {
    const void* nul = std::memchr(p + i, 0, avail - i);
    if (nul == nullptr) break;
    i = static_cast<size_t>(static_cast<const uint8_t*>(nul) - p) + 1;
    if (++scan_nuls_ == 2) return i;
  }
  scan_pos = avail;
  return avail + 1 < total ? avail + 1 : total;  // need more of the names
}

// The server-side name for a client's statement, prepared on the linked server if needed.
// An unknown name maps to one the server does not have either (id 0 is never used, and it
// is closed first in case some client's SQL prepared it), so that
// PostgreSQL itself answers 26000 at this point of the pipeline; *rename then tells how to
// name it back. *touches: running the statement may change the server's statements.
std::string_view Client::server_stmt_name(std::string_view name, int* rename, uint64_t* id,
                                          bool* touches) {
  static const std::string none = stmt_server_name(0);
  if (const auto* e = stmts_.find(name)) {
    server_->ensure_prepared(*e, static_cast<size_t>(worker_->cfg().max_prepared_statements),
                             lp_->prepared);
    *id = (*e)->id;
    if (touches != nullptr) *touches = (*e)->touches_stmts;
    return (*e)->server_name;
  }
  server_->close_if_stale(none, true);  // rare; and no client's PREPARE of it may run
  *rename = server_->add_rename(none, std::string(name));
  return none;
}

bool Client::must_wait(uint8_t type, size_t len) const {
  wire::Reader r(in_.begin() + wire::kHeaderLen, len - 4);
  std::string_view name, portal;
  uint8_t kind = 0;
  switch (type) {
    case 'P':
      if (!r.cstr(name)) return false;
      break;
    case 'B':
      if (!r.cstr(portal) || !r.cstr(name)) return false;
      break;
    case 'D':
    case 'C':
      if (!r.u8(kind) || kind != 'S' || !r.cstr(name)) return false;
      break;
    default:
      return false;
  }
  if (name.empty() && !cache_unnamed_) return false;
  // An unnamed Parse replaces whatever was there, whatever became of it.
  if (type == 'P' && name.empty()) return false;
  return server_->name_unresolved(name);
}

// A client's Parse of `entry` (its name already mapped): answered by pgsluice when server s
// holds the statement, otherwise sent under the server-side name.
void Client::parse_entry(Server* s, const std::shared_ptr<const StmtEntry>& entry, int undo,
                         size_t max) {
  PreparedStats& ps = lp_->prepared;
  bool verified = false;
  bool held = s->stmts_.touch(entry->id, &verified);
  if (held && verified && !s->stmts_.unconfirmed_before(entry->id, s->syncs_sent_)) {
    ps.hits++;
    s->queue_.push(Request{'P', ReqAction::Fake, 0, -1, undo, -1, 0});
    return;
  }
  std::string m;
  if (held) {  // unconfirmed from an earlier segment, or unverified: prepare it again
    wire::Writer(m).begin('C').u8('S').cstr(entry->server_name).end();
    s->queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
  } else {
    s->make_room(max, ps);
    s->close_if_stale(entry->server_name);
  }
  wire::Writer(m).begin('P').cstr(entry->server_name).bytes(entry->body).end();
  worker_->bufs().append(s->out_, m.data(), m.size());
  s->queue_.push(Request{'P', ReqAction::Forward, entry->id, -1, undo, -1, 0});
  s->stmts_.add(entry);
  s->stmts_.set_pending(entry->id, s->syncs_sent_);
  lp_->stats.server_parse_count++;
  ps.server_parses++;
}

// A segment of only named Parses and its Sync, from a client with no server: when
// PostgreSQL has accepted every one of these statements before on a server of this pool
// (the same database and role: StmtEntry::accepted) and none of
// the names is in use, pgsluice answers it itself (ParseComplete each, then ReadyForQuery
// 'I', as PostgreSQL would) and takes no server. The server-side Parse follows with the
// first Bind or Describe, on whichever server runs it. Without this, a client that prepares
// synchronously while its own other connections hold every server in open transactions
// (pgbench -M prepared with more clients than servers) waits for ever. Returns true when
// the segment was answered; false leaves everything to the normal path.
bool Client::answer_parses() {
  const uint8_t* p = in_.begin();
  const size_t avail = in_.size();
  size_t pos = 0;
  std::vector<std::pair<std::string_view, std::shared_ptr<const StmtEntry>>> found;
  for (;;) {
    if (avail - pos < wire::kHeaderLen) return false;  // the Sync is not here yet
    uint8_t type = p[pos];
    size_t len = wire::get_u32(p + pos + 1);
    if (len < 4 || avail - pos - 1 < len) return false;
    if (type == 'S') {
      if (len != 4) return false;
      pos += len + 1;
      break;
    }
    if (type != 'P' || found.size() >= 64) return false;
    if (len > wire::frontend_limit('P') ||
        static_cast<long long>(len) > worker_->cfg().max_packet_size)
      return false;  // the normal path rejects it
    wire::Reader r(p + pos + wire::kHeaderLen, len - 4);
    std::string_view name;
    if (!r.cstr(name) || name.empty() || stmts_.find(name) != nullptr) return false;
    for (const auto& f : found)
      if (f.first == name) return false;  // 42P05 comes from PostgreSQL, through a server
    auto rest = r.rest();
    auto e = stmt_registry().find(
        std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()));
    if (e == nullptr || !e->accepted(pool_->uid)) return false;
    found.emplace_back(name, std::move(e));
    pos += len + 1;
  }
  if (found.empty()) return false;
  PoolStats& st = lp_->stats;
  PreparedStats& ps = lp_->prepared;
  std::string m;
  for (auto& [name, e] : found) {
    if (sess_ != nullptr || session_sql_changes(e->body)) note_session_parse(name, e->body);
    if (trace_) trace_message(this, true, 'P', name.size() + 1 + e->body.size() + wire::kHeaderLen);
    stmts_.set(name, std::move(e));
    st.client_parse_count++;
    ps.client_parses++;
    ps.hits++;
    m.append("1\0\0\0\4", 5);
  }
  if (trace_) trace_message(this, true, 'S', 5);
  wire::ready_for_query(m, 'I');
  st.bytes_received += pos;
  in_.rpos += pos;
  worker_->bufs().append(out_, m.data(), m.size());
  flush();
  return true;
}

// Rewrites a named-statement message for the linked server. Returns 1 when the message
// was consumed (sent rewritten, or answered by pgsluice), 0 to forward it unchanged.
int Client::remap(uint8_t type, size_t len) {
  Server* s = server_;
  PoolStats& st = lp_->stats;
  PreparedStats& ps = lp_->prepared;
  const size_t max = static_cast<size_t>(worker_->cfg().max_prepared_statements);
  const size_t total = len + 1;
  size_t have = in_.size() < total ? in_.size() : total;
  wire::Reader r(in_.begin() + wire::kHeaderLen, have - wire::kHeaderLen);
  std::string m;
  s->trim(max, ps);  // max_prepared_statements may have been lowered meanwhile
  switch (type) {
    case 'P': {
      std::string_view name;
      if (!r.cstr(name)) return 0;
      if (scan_flags_ & SqlScan::kNamesNamespace) {
        // Refused where PostgreSQL would have parsed it: a Parse that cannot succeed goes in
        // its place (PostgreSQL then skips to the Sync), and its error is replaced by ours.
        st.bytes_received += total;
        s->unsynced_ = true;
        s->begin_request();
        wire::Writer(m).begin('P').cstr(stmt_server_name(0)).cstr("pgsluice refused").i16(0).end();
        worker_->bufs().append(s->out_, m.data(), m.size());
        s->queue_.push(Request{'P', ReqAction::Forward, 0, s->add_rename(kRefused, kReservedNames),
                               -1, -1, 0});
        in_.rpos += total;
        return 1;
      }
      if (name.empty() && !cache_unnamed_) {
        // Forwarded as it is, and remembered (ensure_unnamed); what it runs may drop or
        // replace statements.
        if (scan_flags_ & SqlScan::kTouchesStmts) s->unverify();
        auto rest = r.rest();
        remap_state().unnamed_body.assign(reinterpret_cast<const char*>(rest.data()), rest.size());
        stmts_.has_unnamed = true;
        s->note_unnamed(id_, ++unnamed_gen_);
        st.client_parse_count++;
        st.server_parse_count++;
        st.bytes_received += total;
        s->unsynced_ = true;
        s->begin_request();
        worker_->bufs().append(s->out_, in_.begin(), total);
        s->queue_.push(Request{'P', ReqAction::Forward, 0, -1, -1, kUnnamedParse, 0});
        in_.rpos += total;
        return 1;
      }
      auto rest = r.rest();
      std::string_view body(reinterpret_cast<const char*>(rest.data()), rest.size());
      st.client_parse_count++;
      ps.client_parses++;
      st.bytes_received += total;
      s->note_extended();
      // The unnamed statement is replaced by each unnamed Parse (no 42P05); a repeat of
      // the same text keeps its entry without asking the registry.
      const auto* e = stmts_.find(name);
      if (name.empty() && e != nullptr && (*e)->body != body) e = nullptr;
      if (e != nullptr && name.empty()) {
        parse_entry(s, *e, s->add_undo_kept(name), max);
      } else if (e != nullptr) {
        // The name is in use: let PostgreSQL answer 42P05 at this point of the pipeline,
        // with its own skip-to-Sync and transaction state, under the client's name.
        auto entry = *e;
        s->ensure_prepared(entry, max, ps);
        wire::Writer(m).begin('P').cstr(entry->server_name).bytes(entry->body).end();
        s->queue_.push(Request{'P', ReqAction::Forward, 0,
                               s->add_rename(entry->server_name, std::string(name)), -1, -1, 0});
      } else {
        auto entry = stmt_registry().get(body);
        const auto* prev = stmts_.find(name);  // only "" can be mapped here
        int undo = s->add_undo(name, prev != nullptr ? *prev : nullptr);
        stmts_.set(name, entry);
        parse_entry(s, entry, undo, max);
      }
      if (!m.empty()) worker_->bufs().append(s->out_, m.data(), m.size());
      in_.rpos += total;
      s->emit_fakes();
      return 1;
    }
    case 'B': {
      std::string_view portal, name;
      if (!r.cstr(portal) || !r.cstr(name)) return 0;
      if (!remapped_name(name)) {
        if (name.empty() && !cache_unnamed_) ensure_unnamed(s);
        return 0;
      }
      st.bind_count++;
      st.bytes_received += total;
      s->note_extended();
      int rename = -1;
      uint64_t id = 0;
      bool touches = false;
      std::string_view srv = server_stmt_name(name, &rename, &id, &touches);
      if (touches) s->unverify();  // what it runs may drop or replace statements
      size_t head = wire::kHeaderLen + portal.size() + 1 + name.size() + 1;
      size_t rest = total - head;
      // The rewritten header goes straight into the server's buffer; names end in NUL both
      // in the client's bytes and in std::string storage.
      uint8_t hdr[wire::kHeaderLen] = {'B'};
      wire::put_u32(hdr + 1, static_cast<uint32_t>(4 + portal.size() + 1 + srv.size() + 1 + rest));
      BufPool& bp = worker_->bufs();
      bp.append(s->out_, hdr, sizeof hdr);
      bp.append(s->out_, portal.data(), portal.size() + 1);
      bp.append(s->out_, srv.data(), srv.size() + 1);
      s->queue_.push(Request{'B', ReqAction::Forward, id, rename, -1, name_tag(name), 0});
      in_.rpos += head;
      size_t n = in_.size() < rest ? in_.size() : rest;
      worker_->bufs().append(s->out_, in_.begin(), n);
      in_.rpos += n;
      fwd_remaining_ = rest - n;
      return 1;
    }
    case 'D':
    case 'C': {
      uint8_t kind = 0;
      std::string_view name;
      if (!r.u8(kind) || !r.cstr(name) || kind != 'S') return 0;
      if (!remapped_name(name)) {
        if (name.empty() && !cache_unnamed_ && type == 'D') ensure_unnamed(s);
        if (name.empty() && !cache_unnamed_ && type == 'C') {
          stmts_.has_unnamed = false;  // forwarded; the server's unnamed statement is the client's
          s->note_unnamed(id_, ++unnamed_gen_);
        }
        return 0;
      }
      st.bytes_received += total;
      s->note_extended();
      in_.rpos += total;
      if (type == 'C') {
        // Only the client's name goes; the server keeps the statement for others. If
        // PostgreSQL skips this Close (an error earlier in the segment), it comes back.
        const auto* prev = stmts_.find(name);
        int undo = prev != nullptr ? s->add_undo(name, *prev) : -1;
        stmts_.erase(name);
        s->queue_.push(Request{'C', ReqAction::Fake, 0, -1, undo, -1, 0});
        s->emit_fakes();
        return 1;
      }
      int rename = -1;
      uint64_t id = 0;
      std::string_view srv = server_stmt_name(name, &rename, &id);
      wire::Writer(m).begin('D').u8('S').cstr(srv).end();
      worker_->bufs().append(s->out_, m.data(), m.size());
      s->queue_.push(Request{'D', ReqAction::Forward, id, rename, -1, name_tag(name), 0});
      return 1;
    }
    case 'Q': {
      std::string_view text;
      if (cache_unnamed_) stmts_.erase(std::string_view());  // a simple query drops it
      // ... here too: the client's, and the server's (now the same: none).
      stmts_.has_unnamed = false;
      s->note_unnamed(id_, ++unnamed_gen_);
      if (!r.cstr(text)) return 0;
      if (scan_flags_ & SqlScan::kNamesNamespace) return refuse_sql(total);
      if (sql_prepared_prefix(text, true) == 1) {
        SqlPrepared sp = parse_sql_prepared(text);
        if (sp.kind != SqlPrepared::Kind::None) return remap_sql(sp, total);
      }
      // Not fully understood: if it may drop, replace or read statements (a second
      // statement, a comment, a DO block, dynamic SQL), trust nothing this server holds.
      if (scan_flags_ & SqlScan::kTouchesStmts) s->unverify();
      return 0;
    }
    default:
      return 0;
  }
}

// SQL-level PREPARE / EXECUTE / DEALLOCATE of a whole simple Query (see remap()).
int Client::remap_sql(const SqlPrepared& sp, size_t total) {
  Server* s = server_;
  PreparedStats& ps = lp_->prepared;
  const size_t max = static_cast<size_t>(worker_->cfg().max_prepared_statements);
  std::string sql;
  Request req{'Q', ReqAction::Forward, 0, -1, -1, -1, 0};
  switch (sp.kind) {
    case SqlPrepared::Kind::Prepare: {
      if (stmts_.find(sp.name)) {
        // PostgreSQL's own error, raised where it would be, so the transaction state follows.
        std::string msg = "prepared statement \"" + sp.name + "\" already exists";
        sql = raise_sql("42P05", msg);
        req.rename = s->add_rename(std::string(), std::string());
        break;
      }
      auto entry = stmt_registry().get(sql_stmt_key(sp.types, sp.statement));
      ps.client_parses++;
      req.client_name = s->add_undo(sp.name, nullptr);  // a new name (else 42P05 above)
      stmts_.set(sp.name, entry);
      bool verified = false;
      if (s->stmts_.touch(entry->id, &verified) && verified) {
        ps.hits++;
        req.action = ReqAction::Fake;
        req.tag = s->add_rename("PREPARE", std::string());
      } else {
        bool held = s->stmts_.contains(entry->id);  // but unverified
        if (!held) s->make_room(max, ps);
        s->close_if_stale(entry->server_name, held);
        sql = sql_prepare_text(*entry);
        req.stmt = entry->id;
        req.rename = s->add_rename(entry->server_name, sp.name);  // errors name the client's
        s->stmts_.add(entry);
        ps.server_parses++;
      }
      break;
    }
    case SqlPrepared::Kind::Execute: {
      const auto* e = stmts_.find(sp.name);
      if (e == nullptr) return 0;  // unknown: PostgreSQL says 26000 with the client's name
      auto entry = *e;
      bool verified = false;
      if (is_sql_stmt(*entry) && !(s->stmts_.touch(entry->id, &verified) && verified)) {
        bool held = s->stmts_.contains(entry->id);  // but unverified
        if (!held) s->make_room(max, ps);
        s->close_if_stale(entry->server_name, held);
        sql = sql_prepare_text(*entry) + ";";
        req.stmt = entry->id;
        req.swallow_c = 1;
        s->stmts_.add(entry);
        ps.server_parses++;
      } else if (!is_sql_stmt(*entry)) {
        s->ensure_prepared(entry, max, ps);
      } else {
        ps.hits++;
      }
      sql += "EXECUTE \"" + entry->server_name + "\"" + sp.args;  // as sql_prepare_text names it
      // Its errors ("wrong number of parameters for prepared statement") name the client's.
      req.rename = s->add_rename(entry->server_name, sp.name);
      if (entry->touches_stmts) s->unverify();  // what it runs may change statements
      break;
    }
    case SqlPrepared::Kind::Deallocate: {
      const auto* prev = stmts_.find(sp.name);
      if (prev == nullptr) return 0;                  // unknown: PostgreSQL's own 26000
      req.client_name = s->add_undo(sp.name, *prev);  // back if PostgreSQL skips it
      stmts_.erase(sp.name);
      req.action = ReqAction::Fake;
      req.tag = s->add_rename("DEALLOCATE", std::string());
      break;
    }
    case SqlPrepared::Kind::None:
      return 0;
  }
  return send_sql(sql, req, total);
}

// Consumes the client's Query (total bytes) and sends `sql` in its place (nothing when
// empty: the request is answered by pgsluice), its answer handled as `req` says.
int Client::send_sql(const std::string& sql, const Request& req, size_t total) {
  Server* s = server_;
  lp_->stats.bytes_received += total;
  s->begin_request();
  if (!sql.empty()) {
    std::string m;
    wire::query(m, sql);
    worker_->bufs().append(s->out_, m.data(), m.size());
  }
  s->queue_.push(req);
  in_.rpos += total;
  s->emit_fakes();
  return 1;
}

// A DO block that raises PostgreSQL's own error, so the transaction state follows it.
std::string Client::raise_sql(std::string_view sqlstate, std::string_view msg) {
  return "DO $pgsluice$BEGIN RAISE EXCEPTION USING ERRCODE = '" + std::string(sqlstate) +
         "', MESSAGE = " + wire::sql_literal(msg) + "; END$pgsluice$";
}

// A Bind or Describe of the unnamed statement (without cache_unnamed_statements) on a server
// that does not hold the client's own: PostgreSQL keeps a session's unnamed statement until
// the next unnamed Parse or simple Query, across Syncs, so pgsluice parses it again here
// (swallowed), or, when the client has none, closes whatever another client left there so
// that PostgreSQL answers 26000 as it would.
void Client::ensure_unnamed(Server* s) {
  if (s->unnamed_client_ == id_ && s->unnamed_gen_ == unnamed_gen_) return;
  std::string m;
  if (stmts_.has_unnamed) {
    wire::Writer(m).begin('P').cstr("").bytes(remap_state().unnamed_body).end();
    s->queue_.push(Request{'P', ReqAction::Skip, 0, -1, -1, kUnnamedParse, 0});
    lp_->stats.server_parse_count++;
  } else {
    wire::Writer(m).begin('C').u8('S').cstr("").end();
    s->queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
  }
  worker_->bufs().append(s->out_, m.data(), m.size());
  s->note_unnamed(id_, unnamed_gen_);
}

// A Query whose text names pgsluice's statement namespace: PostgreSQL raises 42501 in its
// place (through a DO block, so the transaction state is PostgreSQL's own).
int Client::refuse_sql(size_t total) {
  Request req{'Q', ReqAction::Forward, 0, server_->add_rename(std::string(), std::string()), -1, -1,
              0};
  return send_sql(raise_sql("42501", kReservedNames), req, total);
}

void Client::record_segment(uint8_t type, size_t len) {
  if (seg_fresh_) {
    if (remap_state_ != nullptr) remap_state_->seg_bytes.clear();
    seg_ok_ = server_->tx_ == 'I' && server_->queue_.empty();  // an implicit transaction
    seg_fresh_ = false;
  }
  if (type == 'S' || type == 'Q' || type == 'F') seg_fresh_ = true;  // a segment ends here
  if (!seg_ok_) return;
  size_t total = len + 1;
  bool extended = type == 'P' || type == 'B' || type == 'D' || type == 'E' || type == 'C' ||
                  type == 'H' || type == 'S';
  if (!extended) {  // a simple Query or a function call: no Remap for it
    seg_ok_ = false;
    if (remap_state_ != nullptr) remap_state_->seg_bytes.clear();
    return;
  }
  std::string& seg = remap_state().seg_bytes;
  if (in_.size() < total || seg.size() + total > 64 * 1024) {
    seg_ok_ = false;
    seg.clear();
    return;
  }
  seg.append(reinterpret_cast<const char*>(in_.begin()), total);
}

void Client::replay_segment() {
  scan_restart();  // another message is now at the front of in_
  std::string rest(reinterpret_cast<const char*>(in_.begin()), in_.size());
  in_.rpos = in_.wpos;
  std::string seg;
  seg.swap(remap_state().seg_bytes);
  seg_ok_ = false;
  seg_fresh_ = true;
  worker_->bufs().append(in_, seg.data(), seg.size());
  worker_->bufs().append(in_, rest.data(), rest.size());
  process();
}

}  // namespace pgsluice
