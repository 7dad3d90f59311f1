// A server connection: connect, log in to PostgreSQL, and the server half of the data path.
#include "server.h"

#include "pinning.h"

#include <sys/socket.h>

#include "client.h"
#include "log.h"
#include "lost_server.h"
#include "notify_hub.h"
#include "password.h"
#include "pool.h"
#include "scram.h"
#include "tls.h"
#include "trace.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {
constexpr size_t kHighWater = 64 * 1024;
constexpr size_t kMaxBackendMessage = size_t{1} << 30;
}  // namespace

Server::Server(Worker* w, Fd fd, Pool* pool, LocalPool* lp)
    : Conn(w, std::move(fd)), pool_(pool), lp_(lp) {
  pool_uid_ = pool->uid;
  vars_.resize(w->rt()->tracked->size());
  Target* t = pool->target();
  set_target(t, t->hosts.front().get());
  connect_time_ = now_seconds();
}

void Server::set_target(Target* t, TargetHost* h) {
  target_ = t;
  thost_ = h;
  addr_ = PeerAddr{h->host, h->port};  // a Unix socket: its directory
}

Server::~Server() = default;

void Server::on_writable() {
  if (state_ == ServerState::Tls) {
    continue_tls();
    return;
  }
  if (state_ == ServerState::Connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    want_write(false);
    if (err != 0) {
      worker_->server_login_failed(
          this, "08006", std::string("could not connect to server: ") + strerror(err), true);
      return;
    }
    start_login();
    return;
  }
  flush();
  if (dead_) return;
  if (out_.empty() && client_ != nullptr && client_->state() == ClientState::Active) {
    client_->want_read(true);
    client_->process();
  }
}

void Server::flush() {
  if (out_.empty()) return;
  if (flush_out() == Io::Error) worker_->server_lost(this, "server send failed");
}

void Server::send_internal_query(std::string_view sql) {
  std::string m;
  wire::query(m, sql);
  worker_->bufs().append(out_, m.data(), m.size());
  internal_++;
  note_unnamed(0, 0);  // a simple query drops the unnamed statement
}

void Server::send_lookup(std::unique_ptr<LookupRun> run) {
  std::string m = lookup_messages(run->job.scope.query, run->job.user);
  worker_->bufs().append(out_, m.data(), m.size());
  internal_ += kLookupReadyCount;
  note_unnamed(0, 0);  // the lookup's Parse replaces the unnamed statement
  lookup_ = std::move(run);
}

void Server::send_prepared_check() {
  send_internal_query(stmts_.check_sql());
  check_client_ = 0;
  checking_ = true;
}

// As PgBouncer: any server_tls_sslmode but disable asks for TLS first (allow too), except
// over a Unix socket; server_tls_direct opens with the TLS ClientHello instead.
void Server::start_login() {
  const TlsContext* ctx = tls_ctx_.get();
  if (ctx == nullptr || peer_.ss_family == AF_UNIX) {
    send_startup();
    return;
  }
  if (ctx->settings().direct) {
    if (!start_tls(ctx->get(), false, {}, thost_->host,
                   ctx->settings().mode == SslMode::VerifyFull)) {
      worker_->server_login_failed(this, "08006", "could not start TLS towards server");
      return;
    }
    worker_->set_state(this, ServerState::Tls);
    continue_tls();
    return;
  }
  worker_->set_state(this, ServerState::SslRequest);
  uint8_t m[8];
  wire::put_u32(m, 8);
  wire::put_u32(m + 4, wire::kSslCode);
  worker_->bufs().append(out_, m, sizeof m);
  want_read(true);
  flush();
}

// PostgreSQL's one-byte answer to the SSLRequest. Nothing may follow it before the
// handshake: such bytes were not encrypted and may come from a man in the middle
// (CVE-2021-23222), so they end the login.
void Server::on_ssl_answer() {
  if (in_.empty()) return;
  uint8_t answer = in_.begin()[0];
  size_t more = in_.size() - 1;
  in_.rpos = in_.wpos;
  worker_->bufs().release_if_empty(in_);
  const TlsContext* ctx = tls_ctx_.get();
  SslMode mode = ctx->settings().mode;
  if (answer != 'S' && answer != 'N') {
    worker_->server_login_failed(this, "08P01",
                                 answer == 'E' ? "server answered the SSLRequest with an error"
                                               : "bad answer to SSLRequest from server");
    return;
  }
  if (more > 0) {
    worker_->server_login_failed(this, "08P01",
                                 "server sent unencrypted data after its answer to SSLRequest");
    return;
  }
  if (answer == 'N') {
    if (ssl_mode_requires_tls(mode)) {
      worker_->server_login_failed(this, "08006",
                                   "server does not support TLS, and server_tls_sslmode = " +
                                       std::string(worker_->cfg().server_tls_sslmode) +
                                       " requires it");
      return;
    }
    send_startup();
    return;
  }
  if (!start_tls(ctx->get(), false, {}, thost_->host, mode == SslMode::VerifyFull)) {
    worker_->server_login_failed(this, "08006", "could not start TLS towards server");
    return;
  }
  worker_->set_state(this, ServerState::Tls);
  continue_tls();
}

// Drives the handshake; the certificate (chain, and the host name for verify-full) is
// checked inside it, so no password goes out before the server is proven.
void Server::continue_tls() {
  std::string why;
  Io r = tls_handshake(&why);
  if (r == Io::WouldBlock) return;
  Runtime* rt = worker_->rt();
  if (r != Io::Ok) {
    rt->server_tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
    worker_->server_login_failed(this, "08006", "TLS handshake with server failed: " + why);
    return;
  }
  if (tls_ctx_->settings().direct) {
    // PostgreSQL 17 selects ALPN "postgresql" on a direct TLS connection (libpq insists).
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
    if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != kAlpnPostgres) {
      rt->server_tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
      worker_->server_login_failed(
          this, "08P01", "server did not select ALPN protocol \"postgresql\" in direct TLS");
      return;
    }
  }
  rt->server_tls_handshakes.fetch_add(1, std::memory_order_relaxed);
  if (worker_->cfg().log_connections)
    LOG_INFO("S-%p: %s/%s@%s:%d TLS established: %s", static_cast<void*>(this),
             pool_->db_name.c_str(), pool_->user_name.c_str(), addr_.host.c_str(), addr_.port,
             tls_description(ssl_).c_str());
  send_startup();
}

void Server::send_startup() {
  worker_->set_state(this, ServerState::Login);
  std::string m;
  wire::startup_message(m, target_->startup_params);
  worker_->bufs().append(out_, m.data(), m.size());
  want_read(true);
  flush();
}

void Server::on_readable() {
  if (state_ == ServerState::Tls) {
    continue_tls();
    return;
  }
  size_t got = 0;
  Io r = read_in(&got);
  if (r == Io::Eof || r == Io::Error) {
    if (server_logging_in(state_))
      worker_->server_login_failed(this, "08006", "server closed the connection during login",
                                   true);
    else
      worker_->server_lost(this,
                           r == Io::Eof ? "server closed the connection" : "server read error");
    return;
  }
  if (got == 0) return;
  if (state_ == ServerState::SslRequest) {
    on_ssl_answer();
    return;
  }
  process();
}

void Server::make_room(size_t max, PreparedStats& ps) {
  while (max > 0 && stmts_.size() >= max) {
    auto victim = stmts_.lru();
    if (!victim) break;
    stmts_.remove(victim->id);
    std::string m;
    wire::Writer(m).begin('C').u8('S').cstr(victim->server_name).end();
    worker_->bufs().append(out_, m.data(), m.size());
    queue_.push(Request{'C', ReqAction::Skip, victim->id, -1, -1, -1, 0});
    evicting_[victim->id] = std::move(victim);
    ps.evictions++;
  }
}

void Server::close_if_stale(std::string_view name, bool always) {
  if (!stale_ && !always) return;
  std::string m;
  wire::Writer(m).begin('C').u8('S').cstr(name).end();
  worker_->bufs().append(out_, m.data(), m.size());
  queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
}

void Server::ensure_prepared(const std::shared_ptr<const StmtEntry>& e, size_t max,
                             PreparedStats& ps) {
  std::string m;
  bool verified = false;
  if (stmts_.touch(e->id, &verified)) {
    if (verified && !stmts_.unconfirmed_before(e->id, syncs_sent_)) {
      ps.hits++;
      return;
    }
    // Its Parse went out in an earlier segment and may have failed, or some SQL may have
    // replaced it (unverify): prepare it again here (Close of a missing statement is
    // harmless), so this segment gets PostgreSQL's answer and runs pgsluice's text.
    wire::Writer(m).begin('C').u8('S').cstr(e->server_name).end();
    queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
  } else {
    make_room(max, ps);
    close_if_stale(e->server_name);
  }
  wire::Writer(m).begin('P').cstr(e->server_name).bytes(e->body).end();
  worker_->bufs().append(out_, m.data(), m.size());
  queue_.push(Request{'P', ReqAction::Skip, e->id, -1, -1, -1, 0});
  stmts_.add(e);
  stmts_.set_pending(e->id, syncs_sent_);
  ps.server_parses++;
  lp_->stats.server_parse_count++;
}

void Server::emit_fakes() {
  if (fwd_remaining_ > 0) return;  // mid-message to the client: wait for its end
  if (queue_.empty() || queue_.front().action != ReqAction::Fake) return;
  std::string m;
  take_fakes(m, client_ != nullptr ? &client_->stmts_ : nullptr);
  if (client_ != nullptr && !m.empty()) worker_->bufs().append(client_->out_, m.data(), m.size());
}

// A ReadyForQuery answered the oldest request: count the query, and the transaction
// when the server is idle again.
void Server::account_ready() {
  if (query_start_us_ == 0) return;
  uint64_t now = now_us();
  PoolStats& st = lp_->stats;
  uint64_t q = now - query_start_us_;
  st.query_count++;
  st.query_time_us += q;
  st.query_hist.add(q);
  query_start_us_ = queue_.empty() ? 0 : now;
  if (tx_ == 'I' && xact_start_us_ != 0) {
    uint64_t x = now - xact_start_us_;
    st.xact_count++;
    st.xact_time_us += x;
    st.xact_hist.add(x);
    xact_start_us_ = queue_.empty() ? 0 : now;
  }
}

bool Server::clean() const {
  return tx_ == 'I' && queue_.empty() && !unsynced_ && !skip_to_sync_ && !copy_ && internal_ == 0 &&
         !internal_failed_ && fwd_remaining_ == 0 && !retry_pending_ && in_.empty();
}

bool Server::can_release() const {
  return state_ == ServerState::Active && client_ != nullptr && pool_->mode != PoolMode::Session &&
         client_->pins_ == 0 && client_->fwd_remaining_ == 0 && !client_->copy_in_ && clean();
}

bool Server::handle_auth_request(std::span<const uint8_t> body) {
  wire::AuthRequest req;
  bool well_formed = wire::parse_auth_request(body, req);
  const std::string secret = pool_->login_secret();
  SecretKind kind = secret_kind(secret);
  std::string m;
  auto fail = [&](const std::string& why) {
    worker_->server_login_failed(this, "08P01", why);
    return false;
  };
  if (!well_formed) return fail("bad authentication request from server");
  switch (req.code) {
    case 0:
      // A SCRAM exchange, once begun, must end with the server's signature verified (code
      // 12): an AuthenticationOk before that would let any server in without proving it
      // knows the secret (libpq's require_auth=scram-sha-256 refuses it the same way).
      if (scram_ != nullptr)
        return fail("server sent AuthenticationOk before the SCRAM exchange completed");
      auth_ok_ = true;
      return true;
    case 3:
      if (secret.empty() || kind != SecretKind::Plain)
        return fail(
            "server asks for a cleartext password, and pgsluice has no plain password for user " +
            pool_->user_name);
      wire::password_message(m, secret);
      break;
    case 5: {
      if (secret.empty() || kind == SecretKind::Scram)
        return fail("server asks for md5, and pgsluice has no password or md5 secret for user " +
                    pool_->user_name);
      wire::password_message(m, md5_response(secret, pool_->user_name, req.salt.data()));
      break;
    }
    case 10: {
      if (!req.scram_sha_256 && !(req.scram_sha_256_plus && tls()))
        return fail("server offers no supported SASL mechanism");
      if (kind == SecretKind::Plain && !secret.empty()) {
        scram_ = std::make_unique<ScramClientSession>(ScramClientSession::with_password(secret));
      } else if (kind == SecretKind::Scram) {
        std::array<uint8_t, 32> ck, sk;
        if (!pool_->scram_keys(ck, sk))
          return fail(
              "password is SCRAM secret but client authentication did not provide SCRAM keys");
        scram_ = std::make_unique<ScramClientSession>(ScramClientSession::with_keys(ck, sk));
      } else {
        return fail("server asks for SCRAM, and pgsluice has no usable secret for user " +
                    pool_->user_name);
      }
      // Channel binding as libpq's channel_binding=prefer: bound to the server's
      // certificate when it offers SCRAM-SHA-256-PLUS over TLS; "y" over TLS without it
      // (so a server that does offer it detects a downgrade); "n" in plain text.
      if (tls() && req.scram_sha_256_plus) {
        std::string cb = tls_server_end_point(SSL_get0_peer_certificate(ssl_));
        if (cb.empty())
          return fail(
              "cannot bind SCRAM to the server's certificate (no hash for its "
              "signature algorithm)");
        scram_->set_channel_binding(ScramBinding::EndPoint, std::move(cb));
      } else if (tls()) {
        scram_->set_channel_binding(ScramBinding::Supported);
      }
      std::string first = scram_->client_first();
      if (first.empty()) return fail("SCRAM: could not make the client-first message");
      LOG_DEBUG("S-%p: SASL %s", static_cast<void*>(this), scram_->mechanism());
      wire::sasl_initial_response(m, scram_->mechanism(), first);
      break;
    }
    case 11: {
      if (!scram_) return fail("unexpected SASL continue");
      auto res = scram_->handle_server_first(req.sasl_data);
      if (!res) return fail("SCRAM: " + res.status().message());
      wire::sasl_response(m, *res);
      break;
    }
    case 12: {
      if (!scram_) return fail("unexpected SASL final");
      Status st = scram_->verify_server_final(req.sasl_data);
      if (!st) return fail("SCRAM: server signature mismatch");
      scram_.reset();
      return true;
    }
    default:
      return fail("unsupported authentication method requested by server: " +
                  std::to_string(req.code));
  }
  worker_->bufs().append(out_, m.data(), m.size());
  flush();
  return !dead_;
}

// Returns false when the server was closed.
bool Server::handle_login_message(uint8_t type, std::span<const uint8_t> body) {
  wire::Reader r(body);
  // Until AuthenticationOk only authentication requests, errors, notices and a
  // NegotiateProtocolVersion may come (libpq: "expected authentication request from
  // server"); after it, no further authentication request.
  if (!auth_ok_ && type != 'R' && type != 'E' && type != 'N' && type != 'v') {
    std::string what = "expected authentication request from server, but received ";
    if (type >= 0x20 && type < 0x7f)
      what.push_back(static_cast<char>(type));
    else
      what += "byte " + std::to_string(type);
    worker_->server_login_failed(this, "08P01", what);
    return false;
  }
  switch (type) {
    case 'R':
      if (auth_ok_) {
        worker_->server_login_failed(this, "08P01",
                                     "unexpected authentication request after AuthenticationOk");
        return false;
      }
      return handle_auth_request(body);
    case 'S': {
      std::string_view name, value;
      if (!wire::parse_parameter_status(body, name, value)) {
        worker_->server_login_failed(this, "08P01", "bad ParameterStatus from server");
        return false;
      }
      int i = worker_->rt()->tracked->find(name);
      if (i >= 0) vars_.set(static_cast<size_t>(i), value);
      bool found = false;
      for (auto& [k, v] : login_params_)
        if (k == name) {
          v = value;
          found = true;
        }
      if (!found) login_params_.emplace_back(std::string(name), std::string(value));
      return true;
    }
    case 'K': {
      std::span<const uint8_t> key;
      if (!wire::parse_backend_key(body, backend_pid_, key)) {
        worker_->server_login_failed(this, "08P01", "bad BackendKeyData from server");
        return false;
      }
      backend_key_.assign(reinterpret_cast<const char*>(key.data()), key.size());
      return true;
    }
    case 'E': {
      auto f = wire::parse_error(body);
      if (login_done_query_) {
        LOG_WARN("S-%p: connect_query failed: %s", static_cast<void*>(this), f.message.c_str());
        return true;
      }
      // 57P03: starting up, shutting down or in recovery; asking again later may work.
      worker_->server_login_failed(this, f.sqlstate.empty() ? "08P01" : f.sqlstate, f.message,
                                   f.sqlstate == "57P03");
      return false;
    }
    case 'Z': {
      uint8_t st = 0;
      r.u8(st);
      tx_ = static_cast<char>(st);
      if (!login_done_query_ && !target_->connect_query.empty()) {
        login_done_query_ = true;
        std::string m;
        wire::query(m, target_->connect_query);
        worker_->bufs().append(out_, m.data(), m.size());
        flush();
        return !dead_;
      }
      if (tx_ != 'I') {
        worker_->server_login_failed(this, "08P01", "server not idle after login");
        return false;
      }
      worker_->server_login_done(this);
      return !dead_;
    }
    default:
      return true;  // NoticeResponse, NegotiateProtocolVersion, connect_query results
  }
}

// The data path, server to client. Whole messages are read only for ReadyForQuery,
// ParameterStatus and login; everything else streams through.
void Server::process() {
  while (!dead_) {
    if (fwd_remaining_ > 0) {
      size_t n = in_.size() < fwd_remaining_ ? in_.size() : static_cast<size_t>(fwd_remaining_);
      if (n == 0) break;
      if (client_ != nullptr) worker_->bufs().append(client_->out_, in_.begin(), n);
      in_.rpos += n;
      fwd_remaining_ -= n;
      if (fwd_remaining_ == 0) emit_fakes();
      if (client_ != nullptr && client_->out_.size() > kHighWater) {
        client_->send_now();
        if (dead_) return;
        if (client_ != nullptr && client_->out_.size() > kHighWater) {
          want_read(false);  // resumed by Client::on_writable
          return;
        }
      }
      continue;
    }
    if (in_.size() < wire::kHeaderLen) break;
    uint8_t type = in_.begin()[0];
    size_t len = wire::get_u32(in_.begin() + 1);
    if (len < 4 || len > kMaxBackendMessage) {
      worker_->close_server(this, "invalid message length from server");
      return;
    }
    size_t total = len + 1;
    bool linked = state_ == ServerState::Active && client_ != nullptr;
    // Errors are read whole while linked: a FATAL is not forwarded (server_lost).
    bool need_whole = !linked || internal_ > 0 || type == 'E' || needs_whole(type);
    if (need_whole && len > wire::backend_whole_limit(type)) {
      if (linked && internal_ == 0 && type == 'E') {
        need_whole = false;  // too long to rename: it goes through as PostgreSQL wrote it
      } else if (state_ == ServerState::Login) {
        worker_->server_login_failed(this, "08P01", "oversized message from server");
        return;
      } else {
        if (Client* c = client_) {
          worker_->unlink(c, this);
          worker_->fail_client(c, "08P01", "server sent an oversized message",
                               "oversized message from server");
        }
        worker_->close_server(this, "oversized message from server");
        return;
      }
    }
    if (need_whole) {
      if (in_.size() < total) {
        worker_->bufs().reserve(in_, total - in_.size());
        break;
      }
    }
    std::span<const uint8_t> body(in_.begin() + wire::kHeaderLen, need_whole ? len - 4 : 0);

    if (state_ == ServerState::Login) {
      in_.rpos += total;
      if (!handle_login_message(type, body)) return;
      continue;
    }
    if (linked && type == 'E' && error_is_fatal(body)) {
      // PostgreSQL ends this session (shutdown, pg_terminate_backend, a timeout): the
      // client is told what was lost instead, and may stay (Worker::server_lost).
      fatal_.assign(reinterpret_cast<const char*>(in_.begin()), total);
      in_.rpos += total;
      worker_->server_lost(this, "server sent FATAL: " + wire::parse_error(body).message);
      return;
    }
    if (!linked || internal_ > 0) {
      // Idle, resetting, or answering an internal query: nothing goes to a client.
      in_.rpos += total;
      if (lookup_ != nullptr && internal_ > 0) lookup_->reply.on_message(type, body);
      if (routines_ != nullptr && type == 'D' && !routines_->add_row(body)) routines_bad_ = true;
      if (pin_checking_ && type == 'D' && client_ != nullptr)
        pin_found_ = pin_check_row(body, client_->pins_, pin_names_.size(), &pin_values_);
      // An idle server owes nothing: only asynchronous messages may come (NoticeResponse,
      // NotificationResponse, ParameterStatus, a FATAL ErrorResponse). Anything else (say a
      // ReadyForQuery 'T') would leave a server in the pool that is not clean.
      if (!linked && state_ == ServerState::Idle && internal_ == 0 && type != 'N' && type != 'A' &&
          type != 'S' && type != 'E') {
        worker_->close_server(this, "unexpected message from idle server");
        return;
      }
      switch (type) {
        case 'Z': {
          tx_ = body.empty() ? '?' : static_cast<char>(body[0]);
          ready_at_ = now_seconds();
          if (internal_ > 0) internal_--;
          checking_ = false;
          if (internal_ == 0 && pin_checking_) {  // the pinning check's answer (pinning.h)
            pin_checking_ = false;
            if ((pin_found_ & kPinListen) == 0) listened_ = false;  // it counted the channels
            if (client_ != nullptr) client_->pin_checked(pin_found_, pin_names_, pin_values_);
            pin_names_.clear();
            pin_values_.clear();
          }
          if (internal_ == 0 && routines_ != nullptr) worker_->routines_scanned(this);
          if (internal_ == 0 && lookup_ != nullptr) {
            worker_->lookup_done(this);
            if (dead_) return;
          }
          if (internal_ == 0 && internal_failed_) {
            if (Client* c = client_) {
              worker_->unlink(c, this);
              worker_->fail_client(c, "08P01", "invalid server parameter",
                                   "invalid server parameter");
            }
            worker_->close_server(this, "internal query failed");
            return;
          }
          if (hub_ != nullptr) {
            hub_->ready(this);
            if (dead_) return;
          }
          if (state_ == ServerState::Resetting && internal_ == 0) {
            if (health_check_) fresh_ = true;  // passed (a failed one closed the server above)
            health_check_ = false;
            if (tx_ != 'I') {
              worker_->close_server(this, "reset query left a transaction open");
              return;
            }
            worker_->release(this);
            return;
          }
          break;
        }
        case 'S': {
          std::string_view name, value;
          if (wire::parse_parameter_status(body, name, value)) {
            int i = worker_->rt()->tracked->find(name);
            if (i >= 0) {
              vars_.set(static_cast<size_t>(i), value);
              // The server's spelling of a value we SET on the client's behalf.
              if (client_ != nullptr) client_->server_set_parameter(static_cast<size_t>(i), value);
            }
          }
          break;
        }
        case 'E':
          if (internal_ > 0) {
            auto f = wire::parse_error(body);
            LOG_WARN("S-%p: internal query failed: %s", static_cast<void*>(this),
                     f.message.c_str());
            if (routines_ != nullptr)
              routines_bad_ = true;  // the routines' reading: the server stays (janitor.cc)
            else if (!pin_checking_)
              internal_failed_ = true;
            // A pinning check that fails (a catalog view revoked) leaves the pins as they were.
          } else {
            auto f = wire::parse_error(body);
            worker_->close_server(this, "error from idle server: " + f.message);
            return;
          }
          break;
        case 'C':
          if (body.size() > 1) {  // server_reset_query: DISCARD ALL drops every statement
            std::string_view tag(reinterpret_cast<const char*>(body.data()), body.size() - 1);
            if (tag == "DEALLOCATE ALL" || tag == "DISCARD ALL") unverify();
            if (tag == "DISCARD ALL") listened_ = false;
            if (checking_ && tag != "SELECT 0") {  // Worker::check_prepared found one
              LOG_WARN(
                  "S-%p: %s/%s server_check_prepared: a statement under pgsluice's names "
                  "was prepared by SQL; closing the server",
                  static_cast<void*>(this), pool_->db_name.c_str(), pool_->user_name.c_str());
              internal_failed_ = true;
            }
          }
          break;
        case 'A':
          if (hub_ != nullptr) hub_->notification(body);
          break;
        case 'N':
        case 'T':
        case 'D':
        case 'I':
          break;
        default:
          if (!linked && state_ == ServerState::Idle) {
            worker_->close_server(this, "unexpected message from idle server");
            return;
          }
          break;
      }
      continue;
    }

    // Linked to a client: the reply book decides, then pass on (or swallow, rewrite).
    if (type == 'S') {
      std::string_view name, value;
      if (wire::parse_parameter_status(body, name, value)) {
        int i = worker_->rt()->tracked->find(name);
        if (i >= 0) {
          vars_.set(static_cast<size_t>(i), value);
          client_->server_set_parameter(static_cast<size_t>(i), value);
        }
      }
    }
    if (client_->sess_ != nullptr &&
        (type == 'C' || type == 'E' || type == 'Z' || type == 'I' || type == 's'))
      client_->sess_->on_reply(type, body,
                               !queue_.empty() && queue_.front().sess ? queue_.front().type : 0);
    if (type == 'C' && body.size() > 1) {  // a LISTEN that reached a pooled server
      std::string_view tag(reinterpret_cast<const char*>(body.data()), body.size() - 1);
      if (tag == "LISTEN") listened_ = true;
      if (tag == "DISCARD ALL") listened_ = false;
    }
    ReplyVerdict v = on_reply(type, body, client_->stmts_, client_->seg_ok_);
    if (v.copy_in >= 0) client_->server_copy_in(v.copy_in == 1);
    if (v.ready) account_ready();
    if (type == 'Z') ready_at_ = now_seconds();
    if (v.kind == ReplyVerdict::Kind::Close) {
      worker_->close_server(this, v.why);
      return;
    }
    if (type == 'Z' && pool_->mode == PoolMode::Statement && tx_ != 'I') {
      // Instead of this ReadyForQuery the client gets the refusal, so it never sees an
      // open transaction.
      in_.rpos += total;
      Client* c = client_;
      worker_->unlink(c, this);  // first: the client is owed this error, not "server crashed"
      worker_->fail_client(c, "08P01", "transaction blocks not allowed in statement pooling mode",
                           "transaction in statement pooling mode");
      worker_->close_server(this, "transaction in statement pooling mode");
      return;
    }
    if (v.kind == ReplyVerdict::Kind::Rewrite) {
      worker_->bufs().append(client_->out_, v.rewritten.data(), v.rewritten.size());
      lp_->stats.bytes_sent += v.rewritten.size();
    }
    if (v.kind == ReplyVerdict::Kind::Replay) {
      in_.rpos += total;
      // Drop the stale statement here; the replay's Bind injects a fresh Parse.
      // (0: the server's statements were unverified; stale_ closes each anew.)
      if (v.replay_stmt != 0) {
        stmts_.remove(v.replay_stmt);
        std::string m;
        wire::Writer(m).begin('C').u8('S').cstr(stmt_server_name(v.replay_stmt)).end();
        worker_->bufs().append(out_, m.data(), m.size());
        queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
      }
      lp_->prepared.replays++;
      client_->replay_segment();
      if (dead_ || client_ == nullptr) return;
      continue;
    }
    if (v.kind != ReplyVerdict::Kind::Forward) {
      in_.rpos += total;  // whole: needs_whole() covers every type not forwarded
      emit_fakes();
      continue;
    }
    if (client_->trace_) trace_message(client_, false, type, total);
    lp_->stats.bytes_sent += total;
    if (type != 'Z') seg_out_ += total;
    size_t n = in_.size() < total ? in_.size() : total;
    worker_->bufs().append(client_->out_, in_.begin(), n);
    in_.rpos += n;
    fwd_remaining_ = total - n;
    if (type == 'Z' && fwd_remaining_ == 0 && client_->notify_ != nullptr)
      notify_after_ready(client_, tx_);  // held notifications, between transactions
    if (fwd_remaining_ == 0) emit_fakes();

    if (client_->out_.size() > kHighWater) {
      client_->send_now();
      if (dead_) return;
      if (client_ != nullptr && client_->out_.size() > kHighWater) {
        want_read(false);
        return;
      }
    }
  }
  if (dead_) return;
  worker_->bufs().release_if_empty(in_);
  if (client_ != nullptr) {
    client_->flush();
    if (dead_) return;
  }
  if (client_ != nullptr && client_->stalled_) {
    // The client waits for an earlier segment's answer (Client::must_wait), or for answers
    // to requests in flight (kMaxInFlight); it goes on (or waits again), and releases this
    // server itself when done.
    Client* c = client_;
    c->stalled_ = false;
    c->want_read(true);
    c->process();
    return;
  }
  maybe_pin_check();
  if (dead_) return;
  if (can_release()) worker_->release(this);
}

}  // namespace pgsluice
