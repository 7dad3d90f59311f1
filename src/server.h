// A server connection: connect, log in to PostgreSQL, and the server half of the data path.
#pragma once

#include <sys/socket.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "auth_query.h"
#include "prepared.h"
#include "replies.h"
#include "session_state.h"
#include "stats.h"
#include "stream.h"
#include "varcache.h"

namespace pgsluice {

class Pool;
struct Target;
struct TargetHost;
struct AddrRecord;
struct LocalPool;
class Client;
class ScramClientSession;
class CancelConn;
class NotifyHub;
class TlsContext;

// A server's state. Only Worker::set_state() changes it, and with it the list or count it
// belongs to (Connecting to Login: LocalPool::connecting; Idle: LocalPool::idle).
enum class ServerState : uint8_t {
  New,            // constructed, not connecting yet (on no list)
  Connecting,     // non-blocking connect in progress
  SslRequest,     // SSLRequest sent; waiting for PostgreSQL's one-byte answer ('S' or 'N')
  Tls,            // TLS handshake in progress (after 'S', or at once with server_tls_direct)
  Login,          // startup sent; authenticating, reading ParameterStatus until ReadyForQuery
  Idle,           // logged in, clean (Server::clean), in LocalPool::idle
  Active,         // linked to client_
  Resetting,      // running server_reset_query after its client left
  BeingCanceled,  // released while cancel requests for it are in flight; not reusable yet
  Moving,         // being handed to another worker (on no list)
  Closed,         // closed; freed at the end of the loop turn (on no list)
};

// Connecting, SslRequest, Tls, Login: not logged in yet (server_connect_timeout, sv_login).
inline bool server_logging_in(ServerState st) {
  return st == ServerState::Connecting || st == ServerState::SslRequest || st == ServerState::Tls ||
         st == ServerState::Login;
}

// The bookkeeping of replies is the pure ReplyBook base (replies.h); Server adds the socket,
// the login and the framing of the data path.
class Server final : public Conn, public ReplyBook {
 public:
  Server(Worker* w, Fd fd, Pool* pool, LocalPool* lp);
  ~Server() override;
  void on_readable() override;
  void on_writable() override;

  // Starts the login once the socket is connected: SSLRequest, TLS handshake or startup
  // message, as server_tls_sslmode and server_tls_direct say.
  void start_login();
  // Parses what in_ holds: login messages, swallowed internal replies, or the data path.
  void process();
  void flush();
  // Queues a simple query of pgsluice's own (parameter SET, reset query): its replies are
  // swallowed up to its ReadyForQuery (internal_). The caller flushes.
  void send_internal_query(std::string_view sql);
  // Queues the auth_query lookup `run` (its replies are read into it; Worker::lookup_done
  // when the last ReadyForQuery came). The caller sets Resetting and flushes.
  void send_lookup(std::unique_ptr<LookupRun> run);
  std::unique_ptr<LookupRun> lookup_;  // the lookup running here (null: none)
  // The hub this server listens for (notify_hub.h; null: a pooled server). A hub's server
  // holds no pool slot and is Active with no client.
  NotifyHub* hub_ = nullptr;
  // A client's LISTEN ran here (PostgreSQL answered "LISTEN"): it never goes back to the
  // pool (Worker::release_idle closes it) unless a DISCARD ALL ran since.
  bool listened_ = false;
  // server_check_prepared: queues the check of this server's statements (its tag is read
  // when the reply comes) and forgets which client it served last.
  void send_prepared_check();
  // True when the linked client's transaction is over and the server can go back.
  bool can_release() const;
  // A client stops reading while this many of its requests are unanswered, if answers are
  // sure to come without more from it (answers_due): so a client that pipelines without
  // pause holds a bounded queue here, whatever the socket buffers hold.
  static constexpr size_t kMaxInFlight = 4096;
  bool answers_due() const {
    return !copy_ && (queue_.syncs() > 0 || (!skip_to_sync_ && queue_.flushes() > 0));
  }
  // Prepared-statement remapping (see prepared.h). All write to out_ and queue_ in order.
  // Makes sure e is prepared here, injecting a swallowed Parse (and evictions) if not.
  void ensure_prepared(const std::shared_ptr<const StmtEntry>& e, size_t max, PreparedStats& ps);
  // Evicts least recently used statements until one more fits under max.
  void make_room(size_t max, PreparedStats& ps);
  // Evicts least recently used statements down to max (after max_prepared_statements was
  // lowered); sends nothing when within it.
  void trim(size_t max, PreparedStats& ps) {
    if (max > 0 && stmts_.size() > max) make_room(max + 1, ps);
  }
  // On a stale_ server (ReplyBook::unverify): queues a swallowed Close of `name` (the next
  // Parse of it then cannot meet a statement some client put there).
  void close_if_stale(std::string_view name, bool always = false);
  // Answers the Fake requests now at the front of the queue (in order).
  void emit_fakes();
  void account_ready();
  // The linked client hands over a message of this type (its bytes follow in out_): the
  // server side's own bookkeeping of what PostgreSQL now owes. `client_copy_in`: the
  // client is sending COPY data (PostgreSQL ignores a Sync then).
  void note_request(uint8_t type, bool client_copy_in) {
    switch (type) {
      case 'Q':
      case 'F':
        queue_.push(type);
        begin_request();
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
        queue_.push(type);
        note_extended();
        break;
      case 'H':
        unsynced_ = true;
        break;
      case 'S':
        syncs_sent_++;
        if (!client_copy_in) {
          unsynced_ = false;
          queue_.push(type);
        }
        break;
      default:
        break;
    }
  }
  // An extended-protocol request went out (its queue entry pushed by the caller): an
  // implicit transaction is open until the client's Sync.
  void note_extended() {
    unsynced_ = true;
    begin_request();
  }
  // A request went to the server: start the query and transaction clocks if idle.
  void begin_request() {
    if (query_start_us_ == 0 || xact_start_us_ == 0) {
      uint64_t now = now_us();
      if (query_start_us_ == 0) query_start_us_ = now;
      if (xact_start_us_ == 0) xact_start_us_ = now;
    }
  }
  const std::vector<std::pair<std::string, std::string>>& login_params() const {
    return login_params_;
  }

  ServerState state() const { return state_; }
  // The one rule for "PostgreSQL is idle and clean": at a Sync boundary with nothing in
  // flight either way, no open transaction (explicit or implicit), not in COPY, not skipping
  // to a Sync after an error, no internal query pending. Only a clean server may be reused.
  bool clean() const;
  Pool* pool_;
  LocalPool* lp_;
  // The target it was made for (the pool's current one at launch; never null): startup
  // parameters and connect_query; older than the pool's: it closes (Worker::stale). thost_:
  // the host of that target it is on (its address, where its cancels go; SHOW SERVERS).
  Target* target_;
  TargetHost* thost_;
  void set_target(Target* t, TargetHost* h);
  // The address it connected to (its cancel requests go there, whatever DNS or RELOAD did
  // to its host since) and the DNS answer it came from (null: none); a name that no longer
  // resolves to it closes it at release (Worker::stale).
  const AddrRecord* addr_rec_ = nullptr;
  sockaddr_storage peer_{};
  socklen_t peer_len_ = 0;
  Client* client_ = nullptr;
  VarCache vars_;
  // The session settings this server has (session_state.h): those of the client it served
  // last (null: none); unknown: not known, so the next link resets everything first.
  std::unique_ptr<SessionSettings> sess_;
  bool sess_unknown_ = false;
  bool pin_checking_ = false;           // the internal query due is the pinning check (pinning.h)
  uint8_t pin_found_ = 0;               // the reasons its answer found
  std::vector<std::string> pin_names_;  // the settings it reads back
  // The catalog scan it runs for its pool (state_routines.h; Worker::scan_routines), and
  // whether a row of it was not understood.
  std::unique_ptr<StateRoutines> routines_;
  bool routines_bad_ = false;
  std::vector<std::optional<std::string>> pin_values_;  // and their values
  // Sends the pinning check when the linked client asked for one and this server is clean.
  void maybe_pin_check();
  int internal_ = 0;             // internal queries (SET, reset) whose ReadyForQuery is due
  uint64_t query_start_us_ = 0;  // first unanswered request (0: none)
  uint64_t xact_start_us_ = 0;   // first request of the open transaction (0: none)
  bool internal_failed_ = false;
  uint64_t fwd_remaining_ = 0;  // bytes of a message still to pass to the client
  uint32_t backend_pid_ = 0;
  std::string backend_key_;
  int cancels_pending_ = 0;
  std::vector<CancelConn*> cancels_;
  double connect_time_ = 0;
  double idle_since_ = 0;  // when it last became idle
  size_t pos_ = 0;         // index in Worker::servers_
  uint64_t id_ = 0;        // process-wide id (SHOW SERVERS)

  // The janitor (janitor.cc): when its last ReadyForQuery came (server_check_delay,
  // idle_transaction_timeout); the internal query due is server_check_query; logged in or
  // checked since its last client (so server_check_delay 0 does not check it again).
  double ready_at_ = 0;
  bool health_check_ = false;
  bool fresh_ = false;
  // server_check_prepared: the client linked last since the statements were last checked
  // (0: none since; see Worker::check_prepared).
  uint64_t check_client_ = 0;
  bool checking_ = false;  // the internal query due is that check (its tag is read)
  uint32_t gen_ = 0;       // DbState::generation when connected; older means close_needed
  // The FATAL ErrorResponse PostgreSQL sent before closing this session while linked (the
  // whole message; empty: none): Worker::server_lost hands it to the client.
  std::string fatal_;
  std::string login_error_;
  std::string login_sqlstate_;
  // The server_tls_* context current when this server was made (null: TLS disabled). A
  // server whose context is no longer the config's reconnects (Worker::stale).
  std::shared_ptr<const TlsContext> tls_ctx_;

 private:
  friend class Worker;  // set_state(), the one door for state changes
  ServerState state_ = ServerState::New;
  // Login steps before the startup message (server_tls_sslmode).
  void on_ssl_answer();
  void continue_tls();
  void send_startup();
  bool handle_login_message(uint8_t type, std::span<const uint8_t> body);
  bool handle_auth_request(std::span<const uint8_t> body);
  std::vector<std::pair<std::string, std::string>> login_params_;
  bool login_done_query_ = false;              // connect_query sent; its replies are swallowed
  std::unique_ptr<ScramClientSession> scram_;  // a SCRAM exchange begun and not yet verified
  bool auth_ok_ = false;                       // AuthenticationOk received
};

}  // namespace pgsluice
