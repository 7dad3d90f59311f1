// One worker thread: its event loop, inbox, local pools, and the moves of clients and
// servers between pool lists (acquire, release, close). Accepting is listener.h's.
#pragma once

#include <event2/event.h>
#include <event2/event_struct.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "auth_query.h"
#include "cancel_table.h"
#include "client.h"
#include "config.h"
#include "notify_hub.h"
#include "pool.h"
#include "prepared.h"
#include "server.h"
#include "stats.h"
#include "stream.h"
#include "varcache.h"

namespace pgsluice {

class Client;
class Listener;
class Server;
class Worker;

// Process-wide state every worker reads: the config snapshot, the pool registry, the
// workers themselves (for their inboxes) and global counters.
struct Runtime {
  std::shared_ptr<const Config> config() const {
    std::lock_guard<std::mutex> g(cfg_mu);
    return cfg;
  }
  void set_config(std::shared_ptr<const Config> c) {
    std::lock_guard<std::mutex> g(cfg_mu);
    cfg = std::move(c);
  }
  mutable std::mutex cfg_mu;
  std::shared_ptr<const Config> cfg;
  std::unique_ptr<Registry> registry;
  std::unique_ptr<TrackedNames> tracked;
  std::vector<std::unique_ptr<Worker>> workers;
  std::atomic<int> clients{0};  // client connections, from accept to close (max_client_conn)
  std::string scram_nonce;      // per-process secret for mock SCRAM salts

  // Operator state (console and signals). Workers read these with relaxed loads.
  std::atomic<bool> paused_all{false};  // PAUSE/KILL without a database, SIGUSR1
  std::atomic<bool> suspended{false};   // SUSPEND
  std::atomic<int> shutdown_mode{0};    // ShutdownMode, once a graceful shutdown started
  std::atomic<uint64_t> next_id{1};     // ids of clients and servers
  // TLS handshakes that completed, and that failed or were abandoned, per side (metrics).
  std::atomic<uint64_t> client_tls_handshakes{0};
  std::atomic<uint64_t> client_tls_handshake_failures{0};
  std::atomic<uint64_t> server_tls_handshakes{0};
  std::atomic<uint64_t> server_tls_handshake_failures{0};
  // server_check_query checks started, and those that failed (the server was closed).
  std::atomic<uint64_t> server_checks{0};
  std::atomic<uint64_t> server_checks_failed{0};
  std::atomic<uint64_t> routine_readings{0};  // state_routines.h: catalog reads ended
  std::atomic<uint64_t> routine_reading_failures{0};
  // Clients pinned (pinning.h), by reason (bit order), and pinned now.
  std::atomic<uint64_t> client_pins[7] = {};  // by reason (pinning.h, kPinReasons)
  std::atomic<int64_t> pinned_clients{0};
  std::atomic<uint64_t> failovers{0};        // a pool's servers moved off a held host
  std::atomic<uint64_t> reloads{0};          // configurations committed by RELOAD/SIGHUP
  std::atomic<uint64_t> reload_failures{0};  // RELOAD/SIGHUP refused (the running one stays)
  // LISTEN/NOTIFY hubs (notify_hub.h), every worker together: the channels they listen on
  // (one per hub that has it) and the clients listening through them.
  std::atomic<int> listen_channels{0};
  std::atomic<int> listen_clients{0};
  double start_time = 0;  // monotonic seconds at start
  // Set by main before the workers start; callable from any thread.
  std::function<void(int mode)> request_shutdown;  // ShutdownMode
  std::function<Status()> reload;                  // RELOAD: re-read the config (main thread)
  // Console SET of one reloadable setting (main thread). With `reload`, the one door for a
  // new config snapshot: both run only on the main thread, reached through post_main.
  std::function<Status(const std::string& key, const std::string& value)> set_one;
  // Runs fn on the main thread at its next loop turn; thread-safe, fn must not block.
  std::function<void(std::function<void()>)> post_main;
  event_base* main_base = nullptr;        // the main thread's loop (gather deadlines)
  std::unique_ptr<StatsHistory> stats;    // stats_period averages (stats.h)
  std::unique_ptr<AuthCache> auth_cache;  // auth_query's answers (auth_cache.h)
};

// SHUTDOWN modes (PgBouncer's order).
enum class ShutdownMode : int { None = 0, Immediate = 1, WaitForServers = 2, WaitForClients = 3 };

// A worker's view of one shared pool.
struct LocalPool {
  Pool* pool = nullptr;
  std::deque<Client*> waiting;    // FIFO of clients in Login/Waiting
  std::vector<Server*> idle;      // LIFO of idle servers
  int connecting = 0;             // servers of this worker still logging in
  bool serve_queued = false;      // on Worker::serveq_ (waiters are served at the end of the turn)
  PoolStats stats;                // this worker's share of the pool's statistics
  PreparedStats prepared;         // prepared-statement remapping counters
  std::deque<LookupJob> lookups;  // auth_query lookups waiting for a server (auth_lookup.cc)
  // The connection that listens for this pool's clients of this worker (notify_hub.h);
  // null until a client's first LISTEN in transaction or statement pooling.
  std::unique_ptr<NotifyHub> hub;
};

// A connection that forwards one CancelRequest to PostgreSQL and waits for it to close.
class CancelConn final : public Conn {
 public:
  CancelConn(Worker* w, Fd fd, Server* target);
  ~CancelConn() override;
  void on_readable() override;
  void on_writable() override;
  Server* target_;  // cleared when the target server closes first
  bool connected_ = false;
  double started_ = 0;  // when the request was taken (cancel_wait_timeout)
  uint32_t pid_;        // the target's BackendKeyData, copied at creation
  std::string key_;
  bool orphan_ = false;  // sent even though its target closed (Worker::cancel_backend)
};

// A message for a worker's inbox.
struct InboxMsg {
  enum class Kind : uint8_t { NewClient, Server, Kick, Cancel, Stop, Call };
  Kind kind;
  int fd = -1;               // NewClient
  bool is_unix = false;      // NewClient
  Server* server = nullptr;  // Server: hand-over (the receiver adopts it)
  Pool* pool = nullptr;      // Server, Kick
  uint32_t cancel_pid = 0;
  std::string cancel_key;
  std::function<void(Worker&)> call;  // Call: run on the receiving worker's thread
};

class Worker {
 public:
  Worker(Runtime* rt, size_t index);
  ~Worker();
  // Opens this worker's listeners (TCP with SO_REUSEPORT; the Unix socket on worker 0).
  Status listen();
  // Takes on a client connection the listener accepted (already counted in
  // Runtime::clients), non-blocking and close-on-exec from accept4().
  // `peer`: the client's address as accept() returned it (null: asked of the socket).
  void new_client(int fd, bool is_unix, const sockaddr_storage* peer = nullptr);
  void start();
  void join();
  // Thread-safe: queue a message and wake the loop.
  void post(InboxMsg m);
  // Thread-safe: run fn on this worker's thread at its next loop turn (admin console,
  // stats snapshots). fn must not block.
  void post_call(std::function<void(Worker&)> fn);
  const std::unordered_map<Pool*, std::unique_ptr<LocalPool>>& local_pools() const {
    return pools_;
  }

  event_base* base() const { return base_; }
  size_t index() const { return index_; }
  BufPool& bufs() { return bufs_; }
  Runtime* rt() const { return rt_; }
  const Config& cfg() const { return *cfg_; }

  // ---- the state doors: the only functions that change a client's or server's state,
  // and with it the list it sits on and that list's published counter ----
  void set_state(Client* c, ClientState to);
  void set_state(Server* s, ServerState to);
  // Clears the client/server link on both sides (an Active client becomes Idle).
  void unlink(Client* c, Server* s);
  // The server now has client c's session settings (session_state.h).
  void note_server_settings(Client* c, Server* s);
  LocalPool* local_pool(Pool* p);
  // The client has a request (or a login) and no server. Returns true when a server was
  // linked at once (the caller goes on forwarding); false when the client was queued.
  bool acquire(Client* c);
  // Links c and s, queueing the SET that restores the client's parameters.
  void link(Client* c, Server* s);
  // Links a queued client to a server and restarts its reading and forwarding.
  void link_waiter(Client* c, Server* s);
  // The server's client is done with it: give it to a waiter or make it idle.
  void release(Server* s);
  // An unlinked server is free: give it to a waiter here or elsewhere, or make it idle.
  void release_idle(Server* s);
  // The one door that ends a client's session with an error: queues a FATAL
  // ErrorResponse (sqlstate, msg), sends what it can, and closes the client.
  void fail_client(Client* c, std::string_view sqlstate, std::string_view msg,
                   std::string_view reason);
  void close_client(Client* c, std::string_view reason);
  void close_server(Server* s, std::string_view reason);
  // The server's session ended under it (EOF, a socket error, a FATAL from PostgreSQL: its
  // message in Server::fatal_). In transaction and statement pooling its linked client is
  // told what was lost (Client::server_lost) and stays connected; in session pooling, or
  // when half a message had reached the client, the client gets the error and is closed.
  // Then close_server.
  void server_lost(Server* s, std::string_view reason);
  void close_cancel(CancelConn* c);
  void server_login_done(Server* s);
  // Connects the listening server of `hub` (notify_hub.h): outside pool_size and every
  // server-slot count; false when none was started.
  bool launch_hub(LocalPool* lp, NotifyHub* hub) { return launch_server(lp, hub); }
  void note_current_host(Server* s);
  // A server's login ended without success. `unreachable`: PostgreSQL could not be reached
  // or is not accepting connections yet (connect refused or timed out, closed before any
  // answer, 57P03): the pool's waiting clients stay queued (query_wait_timeout) and a new
  // server is tried after server_login_retry. Otherwise PostgreSQL refused the login (a
  // password, a database): the waiting clients get its error at once, as PgBouncer does.
  void server_login_failed(Server* s, std::string_view sqlstate, std::string_view msg,
                           bool unreachable = false);
  // ---- pool limits (pool_limits.cc) ----
  // An authenticated client joins its pool's, database's and user's client counts. False:
  // max_db_client_connections or max_user_client_connections is exceeded and the client was
  // failed with PgBouncer's message (08P01).
  bool count_client(Client* c);
  // The client leaves those counts (close_client); idempotent.
  void uncount_client(Client* c);
  // reserve_pool_size: a server slot beyond pool_size for p's first waiter when it has waited
  // reserve_pool_timeout. True when one was reserved (the caller launches the server).
  bool reserve_extra(Pool* p, LocalPool* lp);
  // The pool's min_pool_size now (its database's value, else the global one; at most
  // pool_size); 0 when min_pool_size does not apply to it (no logged-in client and no forced
  // user). server_idle_timeout should spare p's servers while server_count() <= this.
  int min_pool_size(const Pool* p) const;
  // Janitor tick: min_pool_size (servers opened ahead of need), server_fast_close and the
  // listening sockets' tcp_defer_accept after a reload.
  void tend_pools();
  // No server of p failed to log in within the last server_login_retry seconds.
  bool may_connect(const Pool* p) const;
  // RECONNECT asked for it to close, RELOAD gave its pool a new target, or the server_tls_*
  // settings changed since it connected (SHOW SERVERS close_needed).
  bool stale(const Server* s) const;

  void register_cancel_key(Client* c);
  void unregister_cancel_key(Client* c);
  void handle_cancel(uint32_t pid, const std::string& key);

  std::shared_ptr<const Config> cfg_ptr() const { return cfg_; }

  // ---- auth_query lookups (auth_lookup.cc) ----
  // Runs auth_query for `user` on a server of the scope's pool (queued until one is free);
  // its outcome goes to the auth cache and to every worker whose logins wait for it.
  void run_lookup(const LookupScope& scope, const std::string& user);
  // A server's lookup got its last reply, or the server is closing under it.
  void lookup_done(Server* s);
  // The logins of this worker waiting for `key` (AuthCache) go on with `out`.
  void wake_auth_waiters(const std::string& key, const AuthCache::Outcome& out);

  // ---- console and operator commands (run on this worker's thread) ----
  // True while new work must not get a server: PAUSE, KILL, SUSPEND.
  bool suspended() const { return suspended_; }
  // SUSPEND/RESUME on this worker: stop or restart reading every non-console socket and
  // accepting new ones; buffered input is processed on resume.
  void set_suspended(bool on);
  bool paused(const Pool* p) const {
    return rt_->paused_all.load(std::memory_order_relaxed) ||
           rt_->suspended.load(std::memory_order_relaxed) ||
           p->state->paused.load(std::memory_order_relaxed);
  }
  // Closes idle servers that PAUSE, KILL or RECONNECT want gone, and serves waiters
  // again after RESUME. `kill_db`: also close every client and server of that database
  // ("*": of every database).
  void sweep(const std::string& kill_db = {});
  Client* find_client(uint64_t id);
  // Adopts the runtime's current config snapshot now (after RELOAD or SET).
  void refresh_config() { cfg_ = rt_->config(); }
  // Stops accepting on TCP listeners (graceful shutdown); the Unix socket stays.
  void stop_listening_tcp();
  // Queues a client's pending bytes to be sent after the callbacks of this loop pass (or
  // after kFlushAfter socket callbacks, whichever is first): see ARCHITECTURE.md.
  void queue_flush(Client* c);
  // Called after each socket callback: sends the queued replies when they waited long enough.
  void after_callback() {
    if (!flushq_.empty() && ++flush_age_ >= kFlushAfter) flush_queued();
  }
  static constexpr unsigned kFlushAfter = 64;
  // Wire trace selection (trace.h): 0 off, 1 one client id, 2 one database, 3 all.
  void set_trace(int mode, uint64_t client_id, const std::string& db);
  void apply_trace(Client* c) {
    if (trace_mode_ != 0) apply_trace_slow(c);
  }

 private:
  void run();
  // Connects one new server (a slot is reserved); false when none was started (no address
  // yet or none usable: the slot is given back).
  bool launch_server(LocalPool* lp, NotifyHub* hub = nullptr);
  void adopt_server(Server* s, Pool* p);
  void kick(Pool* p);
  void drain_inbox();
  void defer_free(Conn* c);
  void hand_over(Server* s, size_t to);
  void free_dead();
  void flush_queued();
  static void flush_cb(evutil_socket_t, short, void* arg);
  // This thread's log lines wait for the end of the loop turn (log_batch_begin).
  static void log_arm(void* arg);
  static void log_cb(evutil_socket_t, short, void* arg);
  // ---- the janitor (janitor.cc): every timeout, on the maintenance timer ----
  void janitor();
  // pool_idle_timeout, autodb_idle_timeout (pool_idle.cc): worker 0 retires idle pools;
  // every worker drops its LocalPools of retired ones; worker 0 frees those all passed.
  void reap_pools(double now);
  void waiter_timeouts(LocalPool* lp, double now);
  void linked_timeouts(double now);
  void idle_client_timeouts(double now);
  void cancel_timeouts(double now);
  void suspend_timeouts(double now);
  // server_check_query (after server_check_delay), else server_check_prepared: starts the
  // check of s before c may use it; true when started (s is Resetting, the client waits).
  bool check_server(Server* s, const Client* c);
  // The pool's catalog scan of routines that make state (state_routines.h): started on s
  // before a client gets it when one is due (true: s is Resetting until it ends); its end
  // publishes the result (a failure, or s closed meanwhile, keeps the last one).
  bool scan_routines(Server* s);

 public:
  void routines_scanned(Server* s);

 private:
  // Sends PostgreSQL a cancel request for s's backend, at the address s is connected to,
  // tracked by no server (s is about to close): query_timeout stops the query itself.
  void cancel_backend(Server* s);
  void serve_waiters(Pool* p, LocalPool* lp);
  // Starts queued lookups on lp's idle servers (auth_lookup.cc).
  void serve_lookups(LocalPool* lp);
  // Records a lookup's outcome and tells the workers that wait for it.
  void finish_lookup(const LookupJob& job, const AuthCache::Outcome& out);
  // Lookups that waited too long for a server, or whose server login failed, end Failed.
  void fail_lookups(LocalPool* lp, std::string_view sqlstate, std::string_view msg,
                    double older_than = -1);
  // Clients in AuthWait, by the lookup key they wait for.
  std::unordered_map<std::string, std::vector<Client*>> auth_waiters_;
  Server* take_idle(LocalPool* lp);
  // server_check_prepared: starts the check of s's statements before c may use it; true
  // when started (s is Resetting until PostgreSQL answers, then idle again or closed).
  bool check_prepared(Server* s, const Client* c);
  // server_check_prepared: the most recently idle server c may use without that check (it
  // served c last, or nobody since its check, or holds no statements), or null.
  Server* idle_unchecked(LocalPool* lp, const Client* c);
  // Serves lp's waiters from the end of this loop turn (not from the releasing stack).
  void serve_later(LocalPool* lp);
  static void serve_cb(evutil_socket_t, short, void* arg);
  void serve_queued();
  void apply_trace_slow(Client* c);

  static void inbox_cb(evutil_socket_t, short, void* arg);
  static void free_cb(evutil_socket_t, short, void* arg);
  static void janitor_cb(evutil_socket_t, short, void* arg);

  Runtime* rt_;
  size_t index_;
  event_base* base_ = nullptr;
  std::shared_ptr<const Config> cfg_;
  BufPool bufs_;
  std::thread thread_;

  std::mutex inbox_mu_;
  std::vector<InboxMsg> inbox_;
  int inbox_fd_ = -1;  // eventfd
  struct event inbox_ev_;

  std::unique_ptr<Listener> listener_;  // this worker's listening sockets (listener.h)

  std::unordered_map<Pool*, std::unique_ptr<LocalPool>> pools_;
  CancelTable<Client> cancel_keys_;  // its clients by cancel key pid (flat: 8 bytes a slot)
  std::vector<Conn*> dead_;
  std::vector<Client*> flushq_;
  std::vector<Client*> flushing_;
  unsigned flush_age_ = 0;
  struct event flush_ev_;
  struct event log_ev_;  // writes this thread's waiting log lines (log_batch_flush)
  // Servers leaving for another worker. Posted at the end of the loop turn, so that no
  // caller up the stack can touch a server another thread already owns.
  std::vector<std::pair<Server*, size_t>> handoff_;
  struct event free_ev_;
  std::vector<LocalPool*> serveq_;
  std::vector<LocalPool*> serving_;  // serveq_ being served (serve_queued)
  struct event serve_ev_;
  struct event janitor_ev_;
  bool stopping_ = false;
  bool suspended_ = false;
  double suspend_since_ = 0;     // when SUSPEND began on this worker (suspend_timeout)
  bool suspend_forced_ = false;  // suspend_timeout already closed what was left
  int trace_mode_ = 0;           // see set_trace()
  uint64_t trace_client_ = 0;
  std::string trace_db_;

 public:
  std::vector<Client*> clients_;           // every live client of this worker (unordered)
  std::vector<Server*> servers_;           // every live server of this worker (unordered)
  std::vector<CancelConn*> cancel_conns_;  // every live cancel connection (unordered)

 private:
  void track_server(Server* s);
  void untrack_server(Server* s);
};

double now_seconds();

}  // namespace pgsluice
