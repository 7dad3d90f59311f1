// A client connection: startup, authentication, and the client half of the data path.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "auth_cache.h"
#include "lost_server.h"
#include "prepared.h"
#include "session_state.h"
#include "startup.h"
#include "stream.h"
#include "varcache.h"

namespace pgsluice {

class Pool;
struct LocalPool;
class Server;
class AuthExchange;
struct AuthSetup;
struct AuthReply;
class TlsContext;
struct Request;
struct NotifyClient;

// A client's state. Only Worker::set_state() changes it, and with it the list the client
// sits on (Login and Waiting: LocalPool::waiting; every other: only Worker::clients_).
enum class ClientState : uint8_t {
  Startup,   // reading the startup packet and the SSL/GSS requests before it (startup.h)
  Tls,       // TLS handshake in progress (after 'S', or a direct-TLS ClientHello); then Startup
  Auth,      // password or SASL exchange in progress
  AuthWait,  // authentication waits for auth_query's answer (Worker::auth_waiters_)
  Login,    // authenticated; waits for a server to learn the pool's parameters (LocalPool::waiting)
  Idle,     // logged in, no server linked, nothing to send
  Waiting,  // has a request; waits for a server (LocalPool::waiting)
  Active,   // linked to server_
  Closed,   // closed; freed at the end of the loop turn (on no list)
};

class Client final : public Conn {
 public:
  // `peer`: the address accept() returned (null: asked of the socket).
  Client(Worker* w, Fd fd, bool is_unix, const sockaddr_storage* peer = nullptr);
  ~Client() override;
  void on_readable() override;
  void on_writable() override;

  // Parses and forwards what in_ holds, as far as the current state allows.
  void process();
  // Sends the welcome (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery).
  void send_welcome();
  // Queues an ErrorResponse (FATAL when `fatal`) to the client.
  void queue_error(bool fatal, std::string_view sqlstate, std::string_view msg);
  // Ends this session with a FATAL error (Worker::fail_client).
  void fail(std::string_view sqlstate, std::string_view msg, std::string_view reason);
  // The linked server's doors into the client's state: a tracked parameter's value as
  // PostgreSQL reports it, and COPY IN starting or ending.
  void server_set_parameter(size_t i, std::string_view value) { vars_.set(i, value); }
  void server_copy_in(bool on) { copy_in_ = on; }
  // The worker's door when the linked server was lost (already unlinked), in transaction
  // and statement pooling: answers what the client had sent (lost_server.cc) and keeps it
  // connected, in an emulated aborted block if it was in a transaction.
  void server_lost(const LostServer& l);
  // The auth_query lookup this client waited for (AuthWait) ended: authentication goes on
  // with the secret, or the session ends with the lookup's error.
  void lookup_answered(const AuthCache::Outcome& out);
  // The key of the lookup it waits for (AuthWait); empty otherwise.
  const std::string& lookup_key() const;
  // Queues out_ to be sent when this loop turn's events are done (Worker::queue_flush).
  void flush();
  // Sends out_ now; arms the write event if the socket is full.
  void send_now();

  ClientState state() const { return state_; }
  // Still logging in: startup, TLS handshake or authentication (client_login_timeout).
  bool logging_in() const {
    return state_ == ClientState::Startup || state_ == ClientState::Tls ||
           state_ == ClientState::Auth || state_ == ClientState::AuthWait;
  }
  bool is_unix_ = false;
  Pool* pool_ = nullptr;
  LocalPool* lp_ = nullptr;
  Server* server_ = nullptr;
  std::string user_;
  std::string db_;
  VarCache vars_;
  uint32_t cancel_pid_ = 0;
  std::array<uint8_t, 4> cancel_key_{};
  uint64_t fwd_remaining_ = 0;               // bytes of a message still to pass to the server
  [[no_unique_address]] ClientStmts stmts_;  // the client's named statements (remapping)
  bool remap_ = false;                       // remap named statements (transaction/statement mode)
  bool cache_unnamed_ = false;               // and the unnamed one (cache_unnamed_statements)
  bool stalled_ = false;         // waiting for an earlier segment's answer (Client::must_wait)
  bool flush_queued_ = false;    // on the worker's list of sends (Worker::queue_flush)
  bool copy_in_ = false;         // between CopyInResponse and the client's CopyDone/CopyFail
  bool limits_counted_ = false;  // counted in its pool's, database's and user's counts (below)
  // unnamed_gen_ counts its unnamed Parses and simple queries (each replaces or drops its
  // unnamed statement; Remap::unnamed_body).
  uint64_t unnamed_gen_ = 0;
  // sql_scan() of the Query/Parse text being handled (remapping only); qscan_active_: a
  // Query too large to read whole is fed to Remap::qscan as it streams through.
  uint8_t scan_flags_ = 0;
  bool qscan_active_ = false;
  bool seg_ok_ = false;
  bool seg_fresh_ = true;
  bool is_admin_ = false;  // logged in to a virtual database (admin console)
  bool welcomed_ = false;  // the welcome was sent (it must be sent once)
  bool counted_ = false;   // counted in Runtime::clients (from accept to close)
  // The state of statement remapping that only the extended protocol (or a Query too large
  // to read whole) needs: allocated at the first such message (remap_state()) and kept until
  // the client closes, so that a client of simple queries carries one pointer and one of the
  // extended protocol allocates nothing per transaction (ARCHITECTURE.md, memory).
  struct Remap {
    // Without cache_unnamed_statements: the client's unnamed statement, kept so that it
    // survives a Sync as in PostgreSQL (Client::ensure_unnamed).
    std::string unnamed_body;
    // The current extended-protocol segment (messages up to Sync), kept so that a Bind
    // that failed with 0A000 after DDL can be replayed once; seg_ok_ is false when it
    // cannot be.
    std::string seg_bytes;
    SqlScan qscan;  // the Query streaming through (qscan_active_)
    // How far remap_need() has scanned the message at the front of in_, so that a message
    // trickling in is scanned once (offset in the message; the NULs of a Bind seen so far
    // are scan_nuls_). Reset when the message has what it needs, and when in_ is
    // rewritten (replay_segment).
    size_t scan_pos = 0;
  };
  std::unique_ptr<Remap> remap_state_;
  Remap& remap_state() {
    if (remap_state_ == nullptr) remap_state_ = std::make_unique<Remap>();
    return *remap_state_;
  }
  // Another message is now at the front of in_: remap_need() scans it afresh.
  void scan_restart() {
    if (remap_state_ != nullptr) remap_state_->scan_pos = 0;
    scan_nuls_ = 0;
  }
  void record_segment(uint8_t type, size_t len);
  // Puts the saved segment back in front of what the client sent since, and runs it again.
  void replay_segment();
  // Tells sess_ of a message about to go to the server: before remapping (`sent` false:
  // Parse, Bind, Close) and once it went as it is (true: Query, Execute, Sync).
  void session_message(uint8_t type, size_t len, bool sent);
  bool session_scs(std::string_view text) const;
  bool session_sql_changes(std::string_view parse_body) const;
  void note_connect_resets(const std::vector<SessionStmt>& stmts);
  void note_session_parse(std::string_view name, std::string_view parse_body);
  // Counted in its pool's, database's and login user's client counts (from the end of its
  // authentication to close: Worker::count_client); user_clients_ is the user's counter.
  std::atomic<int>* user_clients_ = nullptr;
  // Session settings it made (SET, RESET, ...), followed in transaction and statement
  // pooling (session_state.h, client_session.cc); null until its first statement that
  // changes one.
  std::unique_ptr<SessionState> sess_;
  // Pinning (pinning.h): the reasons this client keeps its server (PinReason bits), and
  // whether a statement that may release them was sent since the last check.
  uint8_t pins_ = 0;
  uint8_t pin_fresh_ = 0;  // reasons added since the last check was sent
  bool pin_check_due_ = false;
  // Its untracked settings (PinScan): an opaque one keeps it pinned until a RESET ALL or
  // DISCARD ALL is committed after pin_opaque_resets_ (SessionState::resets); a dirty one
  // has its server reset before another client uses it (Worker::unlink).
  bool pin_opaque_ = false;
  bool settings_dirty_ = false;
  // It sent a CREATE/ALTER/DROP of a routine, trigger, view, ... (PinScan::catalog): when its
  // transaction is over (Worker::unlink) its pool reads which routines make state again.
  bool catalog_changed_ = false;
  bool pin_stmts_full_ = false;  // more than kPinMaxStmts (pin_stmts_): other Binds unread
  uint64_t pin_opaque_resets_ = 0;
  // Settings a set_config or DO block named, read back by the next check (pinning.h); null
  // until the first (8 bytes where an empty vector took 24: ARCHITECTURE.md, memory).
  std::unique_ptr<std::vector<std::string>> pin_watch_;
  // Statements (by the client's name) whose text pins, may release, or calls something:
  // each Bind of one counts as its text sent again, and what it calls is judged then with
  // the routines known at that time (a routine replaced since its Parse). Null until one.
  struct PinStmt {
    PinScan scan;
    std::vector<std::string> calls;  // call_names of its text
    bool many_calls = false;
  };
  using PinStmts = std::unordered_map<std::string, PinStmt, NameHash, std::equal_to<>>;
  std::unique_ptr<PinStmts> pin_stmts_;
  void pin_apply(const PinScan& ps);
  // Reads a whole Query or Parse for pinning statements (transaction and statement
  // pooling): 0 go on, 1 in_ was rewritten (a refusal; read the message again), -1 wait
  // for more bytes.
  int pin_message(uint8_t type, size_t len);
  // Changes the reasons (the worker's gauge and counters follow).
  void set_pins(uint8_t pins);
  // A check is sent now (Server::maybe_pin_check): the settings it reads back.
  std::vector<std::string> pin_check_sent();
  // The check's answer: the reasons still present, and the values of the watched `names`
  // (followed from now on as the client's settings; empty when the row was not read).
  void pin_checked(uint8_t found, const std::vector<std::string>& names,
                   const std::vector<std::optional<std::string>>& values);
  // Its channels and held notifications, once it LISTENed through the hub (notify_hub.h).
  std::unique_ptr<NotifyClient> notify_;
  double wait_since_ = 0;    // when it started waiting for a server
  double connect_time_ = 0;  // when it was accepted
  size_t pos_ = 0;           // index in Worker::clients_
  // Console, stats and trace (admin.cc, trace.h); only the owning worker touches them.
  uint64_t id_ = 0;             // process-wide id (SHOW CLIENTS, KILL_CLIENT)
  double request_time_ = 0;     // when its last request asked for a server (monotonic)
  uint64_t trace_last_us_ = 0;  // time of the previous traced message
  uint8_t admin_role_ = 0;      // console: 0 none, 1 stats_users (read-only), 2 admin
  bool admin_busy_ = false;     // console: an answer is being gathered; reading is off
  bool trace_ = false;          // log every message's type and length (trace.h)
  bool wait_notified_ = false;  // query_wait_notify's NOTICE was sent for this wait

 private:
  friend class Worker;  // set_state(), the one door for state changes
  ClientState state_ = ClientState::Startup;
  void process_startup();
  // Answers 'S' (or takes a direct-TLS ClientHello) and begins the handshake.
  void begin_tls(std::span<const uint8_t> early);
  // Advances the handshake (Tls state), from the read or the write event.
  void step_tls();
  // client_tls_sslmode requires TLS and a startup packet came in plain text: FATAL 28000.
  void refuse_plain(std::span<const uint8_t> pkt);
  void process_auth();
  bool handle_startup_packet(std::span<const uint8_t> pkt);
  // Before login: false (and the client closed) when it lets replies pile up unread.
  bool prelogin_out_ok();
  // Chooses the method, looks the secret up and starts the exchange (auth.h).
  bool begin_auth();
  // Starts the exchange with the secret found (auth_file, auth cache or auth_query).
  bool start_exchange(AuthSetup setup);
  // Asks the auth cache for the secret (force: not the cached one): goes on at once, or
  // waits in AuthWait for auth_query.
  bool ask_auth_cache(bool force);
  // Sends what the exchange answered, then finishes, fails or waits for the next message;
  // false when the session ended.
  bool apply_auth(AuthReply& r);
  void finish_auth();
  bool forward_messages();
  bool forward_pass();
  bool forwarding_ = false;  // inside forward_messages()
  bool reforward_ = false;   // a lost server's answer asks for one more pass
  size_t remap_need(uint8_t type, size_t len);
  uint8_t scan_nuls_ = 0;  // with Remap::scan_pos
  // Whether a Bind/Describe/Close of this statement name is rewritten.
  bool remapped_name(std::string_view name) const {
    return !name.empty() || (cache_unnamed_ && stmts_.find(name) != nullptr);
  }
  bool must_wait(uint8_t type, size_t len) const;
  // After a lost server (lost_server.cc): what the client still owes or emulates; null
  // otherwise (freed when done, so a client carries one pointer).
  std::unique_ptr<LostState> lost_;
  bool lost_active() const { return lost_ != nullptr; }
  // Handles one message in that state: 1 done, 0 go on as usual, -1 wait for more bytes.
  int lost_message(uint8_t type, size_t len);
  int lost_step(uint8_t type, size_t len);
  void lost_settle() {
    if (lost_ != nullptr && lost_->done()) lost_.reset();
  }
  void lost_drop(size_t total);
  void lost_answer(std::string_view sqlstate, std::string_view msg, uint8_t type);
  const std::string* lost_stmt_text(std::string_view name, std::string* buf) const;
  void parse_entry(Server* s, const std::shared_ptr<const StmtEntry>& entry, int undo, size_t max);
  int remap(uint8_t type, size_t len);
  bool answer_parses();
  int remap_sql(const SqlPrepared& sp, size_t total);
  int refuse_sql(size_t total);
  int send_sql(const std::string& sql, const Request& req, size_t total);
  static std::string raise_sql(std::string_view sqlstate, std::string_view msg);
  void ensure_unnamed(Server* s);
  bool scan_streamed(size_t n);
  std::string_view server_stmt_name(std::string_view name, int* rename, uint64_t* id,
                                    bool* touches = nullptr);

  // What only the login needs (the requests before the startup packet, the start of TLS,
  // the password exchange and the stored secret): freed once the client is authenticated
  // (finish_auth), so that a logged-in client carries none of it, its secret least of all.
  struct Login {
    bool direct_tls = false;  // TLS began with a ClientHello, without an SSLRequest
    Opening opening;          // what was asked before the startup packet (startup.h)
    // The exchange and the stored secret it holds (auth.h), from begin_auth().
    std::unique_ptr<AuthExchange> auth;
    // Between 'S' and the handshake's start: the context chosen when the SSLRequest was
    // answered, and the ClientHello bytes already read (direct TLS).
    std::shared_ptr<const TlsContext> tls_ctx;
    std::string tls_early;
    // auth_query: which lookup finds this user's secret (empty dbname: none), the setup
    // waiting for its answer, and the key the client waits under (AuthWait).
    LookupScope scope;
    std::unique_ptr<AuthSetup> pending;
    std::string lookup_key;
  };
  std::unique_ptr<Login> login_;
};

}  // namespace pgsluice
