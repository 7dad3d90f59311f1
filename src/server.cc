// A server connection: connect, log in to PostgreSQL, and the server half of the data path.
#include "server.h"

#include <sys/socket.h>

#include "client.h"
#include "log.h"
#include "password.h"
#include "pool.h"
#include "scram.h"
#include "trace.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {
constexpr size_t kHighWater = 64 * 1024;
constexpr size_t kMaxBackendMessage = size_t{1} << 30;
}  // namespace

void RequestQueue::drop_syncs_after_front() {
  if (empty()) return;
  size_t w = head_ + 1;
  for (size_t r = head_ + 1; r < q_.size(); r++)
    if (q_[r].type != 'S') q_[w++] = q_[r];
  q_.resize(w);
  syncs_ = q_[head_].type == 'S';
}

Server::Server(Worker* w, Fd fd, Pool* pool, LocalPool* lp)
    : Conn(w, std::move(fd)), pool_(pool), lp_(lp) {
  vars_.resize(w->rt()->tracked->size());
  addr_ = PeerAddr{pool->host.empty() ? "unix" : pool->host, pool->port};
  connect_time_ = now_seconds();
}

Server::~Server() = default;

void Server::on_writable() {
  if (state_ == ServerState::Connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    want_write(false);
    if (err != 0) {
      worker_->server_login_failed(this, "08006",
                                   std::string("could not connect to server: ") + strerror(err));
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
  if (flush_out() == Io::Error) worker_->close_server(this, "server send failed");
}

void Server::start_login() {
  worker_->set_state(this, ServerState::Login);
  std::string m;
  wire::startup_message(m, pool_->startup_params);
  worker_->bufs().append(out_, m.data(), m.size());
  want_read(true);
  flush();
}

void Server::on_readable() {
  size_t got = 0;
  Io r = read_in(&got);
  if (r == Io::Eof || r == Io::Error) {
    if (state_ == ServerState::Login || state_ == ServerState::Connecting)
      worker_->server_login_failed(this, "08006", "server closed the connection during login");
    else
      worker_->close_server(this,
                            r == Io::Eof ? "server closed the connection" : "server read error");
    return;
  }
  if (got == 0) return;
  process();
}

namespace {
// Rebuilds an ErrorResponse with the server-side statement name replaced in its message.
std::string rename_error(std::span<const uint8_t> body, std::string_view from,
                         std::string_view to) {
  std::string out;
  wire::Writer w(out);
  w.begin('E');
  wire::Reader r(body);
  std::string_view sqlstate;
  for (;;) {
    uint8_t code = 0;
    std::string_view v;
    if (!r.u8(code) || code == 0 || !r.cstr(v)) break;
    if (from.empty() && (code == 'W' || code == 'q' || code == 'p')) continue;  // DO-block context
    if (code == 'C') sqlstate = v;
    if (code == 'M' && !from.empty() && to.empty() && sqlstate == "26000")
      w.u8(code).cstr("unnamed prepared statement does not exist");  // PostgreSQL's wording
    else
      w.u8(code).cstr(code == 'M' && !from.empty() ? rename_in_message(v, from, to)
                                                   : std::string(v));
  }
  w.u8(0).end();
  return out;
}
}  // namespace

bool Server::name_unresolved(std::string_view name) const {
  bool segment_ended = false;  // a Sync/Query/FunctionCall lies between r and the end
  for (size_t i = queue_.size(); i-- > 0;) {
    const Request& r = queue_.at(i);
    if (r.type == 'S' || r.type == 'Q' || r.type == 'F') segment_ended = true;
    if (!segment_ended || r.client_name < 0) continue;
    if (queue_.undos[r.client_name].name == name) return true;
  }
  return false;
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

void Server::ensure_prepared(const std::shared_ptr<const StmtEntry>& e, size_t max,
                             PreparedStats& ps) {
  std::string m;
  if (stmts_.touch(e->id)) {
    if (!stmts_.unconfirmed_before(e->id, syncs_sent_)) {
      ps.hits++;
      return;
    }
    // Its Parse went out in an earlier segment and may have failed: prepare it again here
    // (Close of a missing statement is harmless), so this segment gets PostgreSQL's answer.
    wire::Writer(m).begin('C').u8('S').cstr(e->server_name).end();
    queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
  } else {
    make_room(max, ps);
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
  while (!queue_.empty() && queue_.front().action == ReqAction::Fake) {
    const Request& r = queue_.front();
    if (skip_to_sync_) {  // PostgreSQL skips it too: no answer, and its change is undone
      unwind(r, false);
      queue_.pop();
      continue;
    }
    if (client_ != nullptr) {
      if (r.type == 'Q') {  // a whole simple-query answer: its tag, then ReadyForQuery
        std::string m;
        wire::Writer(m).begin('C').cstr(queue_.renames[r.tag].first).end();
        wire::ready_for_query(m, tx_);
        worker_->bufs().append(client_->out_, m.data(), m.size());
      } else {
        const char msg[5] = {r.type == 'P' ? '1' : '3', 0, 0, 0, 4};
        worker_->bufs().append(client_->out_, msg, sizeof msg);
      }
    }
    queue_.pop();
  }
}

void Server::unwind_to_sync(bool front_failed) {
  size_t n = 0;
  while (n < queue_.size()) {
    uint8_t t = queue_.at(n).type;
    if (t == 'S' || (!skip_to_sync_ && (t == 'Q' || t == 'F'))) break;
    n++;
  }
  for (size_t i = n; i-- > 0;) unwind(queue_.at(i), front_failed && i == 0);
  for (size_t i = 0; i < n; i++) queue_.pop();
}

void Server::unwind(const Request& r, bool failed) {
  if (r.client_name >= 0 && client_ != nullptr) {
    // The client's name goes back to what it was before this request; a failed unnamed
    // Parse leaves no unnamed statement at all (PostgreSQL drops the old one first).
    const NameUndo& u = queue_.undos[r.client_name];
    if (u.prev == nullptr || (failed && r.type == 'P' && u.name.empty()))
      client_->stmts_.erase(u.name);
    else
      client_->stmts_.set(u.name, u.prev);
  }
  if ((r.type == 'P' || r.type == 'Q') && r.stmt != 0) {
    // A failed Parse left nothing. A skipped one (and the Close skipped before it) left the
    // server as it was: the statement is there if PostgreSQL acknowledged it earlier.
    if (failed || !stmts_.confirmed(r.stmt))
      stmts_.remove(r.stmt);
    else
      stmts_.drop_pending(r.stmt);
  } else if (r.type == 'C' && r.action == ReqAction::Skip && r.stmt != 0) {
    auto it = evicting_.find(r.stmt);  // the eviction was skipped: still prepared here
    if (it != evicting_.end()) {
      stmts_.add(it->second);
      evicting_.erase(it);
    }
  }
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
         client_->fwd_remaining_ == 0 && !client_->copy_in_ && clean();
}

bool Server::handle_auth_request(std::span<const uint8_t> body) {
  wire::AuthRequest req;
  bool well_formed = wire::parse_auth_request(body, req);
  const std::string& secret = pool_->secret;
  SecretKind kind = secret_kind(secret);
  std::string m;
  auto fail = [&](const std::string& why) {
    worker_->server_login_failed(this, "08P01", why);
    return false;
  };
  if (!well_formed) return fail("bad authentication request from server");
  switch (req.code) {
    case 0:
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
      if (!req.scram_sha_256) return fail("server offers no supported SASL mechanism");
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
      wire::sasl_initial_response(m, "SCRAM-SHA-256", scram_->client_first());
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
  switch (type) {
    case 'R':
      if (login_done_query_) return true;
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
      worker_->server_login_failed(this, f.sqlstate.empty() ? "08P01" : f.sqlstate, f.message);
      return false;
    }
    case 'Z': {
      uint8_t st = 0;
      r.u8(st);
      tx_ = static_cast<char>(st);
      if (!login_done_query_ && !pool_->connect_query.empty()) {
        login_done_query_ = true;
        std::string m;
        wire::query(m, pool_->connect_query);
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
    bool need_whole = !linked || internal_ > 0 || type == 'Z' || type == 'S' || type == 'C' ||
                      type == '1' || type == '3' ||
                      (type == 'E' && !queue_.empty() &&
                       (queue_.front().rename >= 0 || queue_.front().stmt != 0));
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
    if (!linked || internal_ > 0) {
      // Idle, resetting, or answering an internal query: nothing goes to a client.
      in_.rpos += total;
      switch (type) {
        case 'Z': {
          tx_ = body.empty() ? '?' : static_cast<char>(body[0]);
          if (internal_ > 0) internal_--;
          if (internal_ == 0 && internal_failed_) {
            if (Client* c = client_) {
              worker_->unlink(c, this);
              worker_->fail_client(c, "08P01", "invalid server parameter",
                                   "invalid server parameter");
            }
            worker_->close_server(this, "internal query failed");
            return;
          }
          if (state_ == ServerState::Resetting && internal_ == 0) {
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
              if (client_ != nullptr) client_->vars_.set(static_cast<size_t>(i), value);
            }
          }
          break;
        }
        case 'E':
          if (internal_ > 0) {
            auto f = wire::parse_error(body);
            LOG_WARN("S-%p: internal query failed: %s", static_cast<void*>(this),
                     f.message.c_str());
            internal_failed_ = true;
          } else {
            auto f = wire::parse_error(body);
            worker_->close_server(this, "error from idle server: " + f.message);
            return;
          }
          break;
        case 'N':
        case 'A':
        case 'C':
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

    // Linked to a client: bookkeeping, then pass on (or swallow an injected reply).
    bool swallow = false;
    bool replay = false;
    switch (type) {
      case 'Z': {
        uint8_t st = body.empty() ? 0 : body[0];
        if (st != 'I' && st != 'T' && st != 'E') {
          worker_->close_server(this, "invalid ReadyForQuery status from server");
          return;
        }
        tx_ = static_cast<char>(st);
        copy_ = false;
        // Requests still unanswered here were sent after the segment's error was handled
        // (before its Sync): PostgreSQL skipped them too.
        unwind_to_sync(false);
        skip_to_sync_ = false;
        if (!queue_.empty()) queue_.pop();
        account_ready();
        if (retry_pending_) {
          swallow = true;
          replay = true;
        } else {
          retried_ = false;
        }
        break;
      }
      case 'S': {
        std::string_view name, value;
        if (wire::parse_parameter_status(body, name, value)) {
          int i = worker_->rt()->tracked->find(name);
          if (i >= 0) {
            vars_.set(static_cast<size_t>(i), value);
            client_->vars_.set(static_cast<size_t>(i), value);
          }
        }
        break;
      }
      case '1':
        if (!queue_.empty() && queue_.front_type() == 'P') {
          if (queue_.front().stmt != 0) stmts_.confirm(queue_.front().stmt);
          swallow = queue_.front().action == ReqAction::Skip;
          queue_.pop();
        }
        break;
      case '2':
        if (!queue_.empty() && queue_.front_type() == 'B') queue_.pop();
        break;
      case '3':
        if (!queue_.empty() && queue_.front_type() == 'C') {
          if (queue_.front().action == ReqAction::Skip) {
            swallow = true;
            evicting_.erase(queue_.front().stmt);
          }
          queue_.pop();
        }
        break;
      case 'n':
      case 'T':
        if (!queue_.empty() && queue_.front_type() == 'D') queue_.pop();
        break;
      case 'C':
      case 'I':
      case 's':
        if (type == 'C' && !queue_.empty() && queue_.front_type() == 'Q' &&
            queue_.front().swallow_c > 0) {
          queue_.front().swallow_c--;  // the PREPARE pgsluice put before the client's EXECUTE
          swallow = true;
          break;
        }
        if (!queue_.empty() && queue_.front_type() == 'E') queue_.pop();
        if (type == 'C') {
          client_->copy_in_ = false;
          copy_ = false;
          // DEALLOCATE ALL / DISCARD ALL dropped every statement of this session.
          std::string_view tag(reinterpret_cast<const char*>(body.data()),
                               body.empty() ? 0 : body.size() - 1);
          if (tag == "DEALLOCATE ALL" || tag == "DISCARD ALL") {
            stmts_.clear();
            evicting_.clear();
            client_->stmts_.clear();
          }
        }
        break;
      case 'E':
        client_->copy_in_ = false;
        copy_ = false;
        if (!need_whole) {
          // Streamed (too long to read whole): passed on unchanged.
        } else if (!retried_ && client_->seg_ok_ && seg_out_ == 0 && !queue_.empty() &&
                   queue_.front_type() == 'B' && queue_.front().stmt != 0 &&
                   queue_.single_segment() && wire::parse_error(body).sqlstate == "0A000") {
          // "cached plan must not change result type" after DDL, and the client has seen
          // nothing of this segment: re-prepare and replay it once (at its ReadyForQuery).
          retry_pending_ = true;
          retry_stmt_ = queue_.front().stmt;
          swallow = true;
        } else if (!queue_.empty() && queue_.front().rename >= 0) {
          // An error pgsluice provoked on the client's behalf: name the client's statement.
          const auto& rn = queue_.renames[queue_.front().rename];
          std::string m = rename_error(body, rn.first, rn.second);
          worker_->bufs().append(client_->out_, m.data(), m.size());
          lp_->stats.bytes_sent += m.size();
          swallow = true;
        } else if (!queue_.empty() && queue_.front().stmt != 0 &&
                   (queue_.front_type() == 'B' || queue_.front_type() == 'D')) {
          // An error that names a remapped statement ("bind message supplies 1 parameters,
          // but prepared statement ... requires 2"): name it as the client does.
          // The name is looked up by the statement and a fingerprint of the name (no copy
          // on the Bind path); the unnamed statement may have been replaced meanwhile.
          const Request& r = queue_.front();
          std::string_view name;
          const StmtEntry* e = client_->stmts_.find_by_id(r.stmt, r.tag, &name);
          if (e != nullptr || r.tag == name_tag({})) {
            std::string from = "PGSLUICE_" + std::to_string(r.stmt);
            std::string m = rename_error(body, from, name);
            worker_->bufs().append(client_->out_, m.data(), m.size());
            lp_->stats.bytes_sent += m.size();
            swallow = true;
          }
        }
        if (!queue_.empty() && queue_.front_type() == 'Q') {
          unwind(queue_.front(), true);  // a PREPARE that failed did not create anything
          queue_.front().stmt = 0;
          queue_.forget_undo();
          queue_.front().swallow_c = 0;
        }
        // Extended protocol: the server skips everything up to the next Sync, simple
        // queries included.
        if (!queue_.empty() && queue_.front_type() != 'Q' && queue_.front_type() != 'F' &&
            queue_.front_type() != 'S')
          skip_to_sync_ = true;
        unwind_to_sync(true);  // the front raised the error; the rest were skipped
        break;
      case 'G':
        copy_ = true;
        if (!queue_.empty() && queue_.front_type() == 'E') {
          // Extended protocol: PostgreSQL ignores the Syncs sent during COPY and wants one
          // after it, so the implicit transaction stays open until the client sends it.
          queue_.drop_syncs_after_front();
          unsynced_ = true;
          client_->copy_in_ = true;
        }
        break;
      case 'H':
      case 'W':
        copy_ = true;
        break;
      case 'K':
      case 'R':
        worker_->close_server(this, "unexpected login message from server");
        return;
      default:
        break;
    }
    if (type == 'Z' && pool_->mode == PoolMode::Statement && tx_ != 'I') {
      // Instead of this ReadyForQuery the client gets the refusal, so it never sees an
      // open transaction.
      in_.rpos += total;
      Client* c = client_;
      c->server_ = nullptr;  // unlink first: the client is owed this error, not "server crashed"
      client_ = nullptr;
      worker_->fail_client(c, "08P01", "transaction blocks not allowed in statement pooling mode",
                           "transaction in statement pooling mode");
      worker_->close_server(this, "transaction in statement pooling mode");
      return;
    }
    if (swallow) {
      in_.rpos += total;  // whole: need_whole covers every swallowed type
      if (replay) {
        retry_pending_ = false;
        retried_ = true;
        // Drop the stale statement here; the replay's Bind injects a fresh Parse.
        stmts_.remove(retry_stmt_);
        std::string m;
        wire::Writer(m).begin('C').u8('S').cstr("PGSLUICE_" + std::to_string(retry_stmt_)).end();
        worker_->bufs().append(out_, m.data(), m.size());
        queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
        lp_->prepared.replays++;
        client_->replay_segment();
        if (dead_ || client_ == nullptr) return;
        continue;
      }
      emit_fakes();
      continue;
    }
    if (client_->trace_) trace_message(client_, false, type, total);
    lp_->stats.bytes_sent += total;
    seg_out_ = type == 'Z' ? 0 : seg_out_ + total;
    size_t n = in_.size() < total ? in_.size() : total;
    worker_->bufs().append(client_->out_, in_.begin(), n);
    in_.rpos += n;
    fwd_remaining_ = total - n;
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
  if (can_release()) worker_->release(this);
}

}  // namespace pgsluice
