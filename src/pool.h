// Pools shared by all workers: one per (database, user), with the global server-slot
// counters that make pool_size hold across threads, and the registry that finds them.
#pragma once

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "dns.h"
#include "state_routines.h"
#include "target.h"

namespace pgsluice {

// Operator state of one database name, shared by all its pools and all workers: set by the
// console (PAUSE, DISABLE, KILL, RECONNECT) and read by workers in acquire/release.
struct DbState {
  std::atomic<bool> paused{false};      // PAUSE/KILL: no server is handed out; released ones close
  std::atomic<bool> disabled{false};    // DISABLE: new logins refused
  std::atomic<uint32_t> generation{0};  // RECONNECT: servers of an older generation close
  RoutineReadings routines;             // routines that make session state (pinning)
};

// One (database, user) pool. Its target and settings are re-applied at RELOAD (retarget);
// the counters are atomics that any worker may touch; everything else is behind mu_.
class Pool {
 public:
  Pool(std::string db_name, std::string user_name, size_t nworkers);

  const std::string db_name;    // the database name clients use
  const std::string user_name;  // the user pgsluice logs in to PostgreSQL as
  // Process-wide unique, never reused: whose acceptance a StmtEntry records.
  const uint64_t uid;

  // Where servers connect and what they log in to (target.h): the current target, replaced
  // whole by retarget (RELOAD changed the database's entry). A published Target lives as long
  // as the pool (servers keep pointing at theirs, and a pool is freed only once it has none),
  // so readers need no reference count.
  Target* target() const { return target_.load(std::memory_order_acquire); }
  uint32_t target_gen() const { return target()->gen; }
  // Publishes t (its gen set by the caller). Registry only.
  void set_target(std::unique_ptr<Target> t);

  // Settings RELOAD may change in place: the next acquire, release and slot count use them.
  std::atomic<PoolMode> mode{PoolMode::Session};
  std::atomic<int> pool_size{20};
  // The password / md5 / SCRAM secret from the config (password= or auth_file); may be empty.
  std::string config_secret() const;
  void set_config_secret(const std::string& s);

  // Server slots, global across workers: every server connection holds one, from
  // connect to close. Limits: pool_size, max_db_connections, max_user_connections.
  bool try_reserve() { return try_reserve_within(pool_size); }
  // The same while fewer than `limit` servers are held (0: pool_size does not bound):
  // reserve_pool_size lets a pool go past pool_size, min_pool_size fills up to its value.
  bool try_reserve_within(int limit);
  void unreserve();
  int server_count() const { return servers_.load(); }

  // Holds keep a pool registered (pool_idle_timeout, autodb_idle_timeout): every logged-in
  // client (the hold Registry::get took), every server slot (try_reserve to unreserve) and
  // every auth_query lookup waiting in a LocalPool holds one. A pool without any can be
  // retired (Registry::retire_idle); hold() is false then, and the pool is never used again.
  bool hold();
  // Gives a hold back; now is the pool's last use (its idle time counts from the last one).
  void unhold();
  bool retired() const { return holds_.load(std::memory_order_acquire) < 0; }
  // Monotonic seconds of the last unhold() (or of the pool's creation).
  double last_used() const { return last_used_.load(std::memory_order_relaxed); }

  // Per-worker idle-server and waiting-client counts, published so that a worker with
  // a waiting client can find a worker holding an idle server, and the reverse.
  std::atomic<int>& idle_on(size_t w) { return per_worker_[w].idle; }
  std::atomic<int>& waiting_on(size_t w) { return per_worker_[w].waiting; }
  size_t nworkers() const { return nworkers_; }

  // The ParameterStatus set from the pool's first server login, sent to every client at
  // login. Immutable once welcome_ready() is true.
  bool welcome_ready() const { return welcome_ready_.load(std::memory_order_acquire); }
  const std::vector<std::pair<std::string, std::string>>& welcome() const { return welcome_; }
  void set_welcome(std::vector<std::pair<std::string, std::string>> params);

  // server_login_retry: when a server of this pool last failed to connect or log in
  // (monotonic seconds; 0: the last attempt succeeded). No new server is started for
  // server_login_retry after a failure (Worker::may_connect).
  double login_failed_at() const { return login_failed_at_.load(std::memory_order_relaxed); }
  void set_login_failed_at(double t) { login_failed_at_.store(t, std::memory_order_relaxed); }

  // The secret server logins use: config_secret() (auth_file or password=), else the one auth_query
  // found for this user and a client proved (set_looked_up_secret). A copy: another worker
  // may replace it meanwhile.
  std::string login_secret() const;
  void set_looked_up_secret(const std::string& s);
  // SCRAM keys recovered from a client's proof, for pass-through logins.
  void set_scram_keys(const std::array<uint8_t, 32>& ck, const std::array<uint8_t, 32>& sk);
  bool scram_keys(std::array<uint8_t, 32>& ck, std::array<uint8_t, 32>& sk) const;

  // Routines that may make session state (state_routines.h): this database's readings.
  const StateRoutines* routines() const {
    return state != nullptr ? state->routines.current() : nullptr;
  }
  bool routines_unknown() const { return state == nullptr || state->routines.unknown(); }

  DbState* state = nullptr;  // this database's operator state (never null once registered)

  // Logged-in clients of this pool, every worker together (min_pool_size applies to a pool
  // with at least one, or with a forced user). Written by Worker::count_client/uncount_client.
  std::atomic<int> clients{0};
  std::atomic<int>* db_clients = nullptr;  // shared per-database client count
  // The client count of the login user named user_name (Registry::user_client_counter), so
  // that a login without a forced user finds its counter without the registry's lock.
  std::atomic<int>* user_clients = nullptr;

  // Shared per-database and per-user server counts, and their limits (0: none), which
  // RELOAD re-applies (apply_settings in pool.cc).
  std::atomic<int>* db_conns = nullptr;
  std::atomic<int> db_max{0};
  std::atomic<int>* user_conns = nullptr;
  std::atomic<int> user_max{0};

 private:
  friend class Registry;  // retire_idle: holds_ from 0 to kRetired under its lock
  static constexpr int kRetired = -(1 << 30);
  std::atomic<int> holds_{0};
  std::atomic<double> last_used_{0};
  std::atomic<int> servers_{0};
  size_t nworkers_;
  // One cache line per worker and count. Each worker writes only its own counts: idle twice
  // per transaction (the server taken, the server released), waiting when a client queues.
  // Every release reads the other workers' waiting counts: on a line of their own, which a
  // worker writes only when its clients queue, those reads hit the reader's cache, where a
  // line shared with the owner's idle count moved between cores at every transaction
  // (ARCHITECTURE.md, "Scaling with cores").
  struct PerWorker {
    alignas(64) std::atomic<int> idle{0};
    alignas(64) std::atomic<int> waiting{0};
  };
  std::unique_ptr<PerWorker[]> per_worker_;
  mutable std::mutex mu_;
  std::atomic<Target*> target_{nullptr};
  std::vector<std::unique_ptr<Target>> targets_;  // every target published (mu_)
  std::string config_secret_;
  std::atomic<bool> welcome_ready_{false};
  std::atomic<double> login_failed_at_{0};
  std::vector<std::pair<std::string, std::string>> welcome_;
  std::string looked_up_secret_;
  bool have_keys_ = false;
  std::array<uint8_t, 32> client_key_{};
  std::array<uint8_t, 32> server_key_{};
};

// Finds or creates pools, and frees the idle ones (pool_idle_timeout, autodb_idle_timeout).
// Pools are created only for authenticated clients.
//
// Freeing: a pool without holds (Pool::hold) that has been unused long enough is retired
// under the registry lock (retire_idle): its holds become kRetired in one compare-and-swap,
// so no new client, server or lookup can join it, and it leaves the map, so the next login
// creates a fresh pool. Workers still know its address (their LocalPool, kicks in their
// inboxes): each worker drops what it kept of the retired pools at its janitor tick and
// says so (passed); the memory is freed (reclaim) once every worker passed the epoch of
// the retirement. Worker threads may use the Pool* of pools() during one callback (the
// pool lives at least until their next tick); other threads use held_pools().
class Registry {
 public:
  explicit Registry(size_t nworkers);
  ~Registry();  // stop_resolver()
  // The pool for an authenticated client's (database, user) under `cfg`, with one hold taken
  // for the caller (give it back with Pool::unhold); nullptr and `err`
  // set when the database is unknown or disabled. Never blocks on DNS: a new pool whose host
  // is a name (not numeric, not a Unix socket) that was never answered yet is returned with
  // its address Pending and looked up on the resolver thread (dns.h: one lookup per name in
  // flight, answers shared by every pool naming it).
  Pool* get(const Config& cfg, const std::string& db, const std::string& user, std::string* err,
            std::string* sqlstate);
  // RELOAD: re-applies `cfg` to every existing pool whose database is still configured. A
  // pool whose target (host, port, dbname, user, startup parameters, connect_query) changed
  // gets a new Target of the next generation, resolved as get() does; mode, pool_size and the
  // config secret are updated in place. Main thread (the config door); returns how many
  // pools moved.
  int retarget(const Config& cfg);
  // Every registered pool, ordered by (database, user). Worker threads only (see above).
  std::vector<Pool*> pools();
  // The same with a hold on each (a retired pool is left out), for threads that are not
  // workers; give them back with release_held (which is not a use of the pools).
  std::vector<Pool*> held_pools();
  static void release_held(const std::vector<Pool*>& pools);
  // Server connections of every pool (graceful shutdown's wait).
  int server_total();

  // Retires the pools unused (no hold) for pool_idle_timeout, except a forced user's pool
  // kept at min_pool_size, and every pool of a database made from the "*" entry once all of
  // them have been unused for autodb_idle_timeout (not while PAUSEd); never a pool whose host
  // name is being resolved. Worker 0's janitor; returns how many were retired.
  int retire_idle(const Config& cfg, double now);
  // True while some retired pool is not freed yet (a relaxed load: the janitor's fast path).
  bool has_retired() const { return has_retired_.load(std::memory_order_relaxed); }
  // Worker w's quiescent point: the retired pools not freed yet (the worker drops its
  // LocalPools of them), and in *epoch what it passes once it did (passed).
  std::vector<Pool*> retired(uint64_t* epoch);
  void passed(size_t w, uint64_t epoch);
  // Frees the retired pools every worker has passed.
  void reclaim();
  // The operator state of a database name, created on first use.
  DbState* db_state(const std::string& db);
  // Names of the databases that have a DbState (pools, or console commands).
  std::vector<std::string> db_names();
  // Current per-user server connection count (SHOW USERS).
  int user_server_count(const std::string& user);
  // The logged-in client count of a login user (max_user_client_connections), shared by all
  // workers; created on first use, never freed.
  std::atomic<int>* user_client_counter(const std::string& user);
  // Current client counts (SHOW DATABASES, SHOW USERS); 0 when never counted.
  int db_client_count(const std::string& db);
  int user_client_count(const std::string& user);

  // Called on the resolver thread after a lookup a pool waited for ended (Ready or Failed),
  // so the workers serve its waiting clients. Set before the first lookup; must not block.
  void set_on_resolved(std::function<void(Pool*)> fn) { dns_->set_on_resolved(std::move(fn)); }
  // No pool is written and on_resolved is not called after this returns. Idempotent.
  void stop_resolver() { dns_->stop(); }
  // Before a new server of p: asks again for every host name of t whose answer is older than
  // dns_max_ttl (a failure: dns_nxdomain_ttl); the current address keeps being used
  // meanwhile. True when some host has no address and a lookup for it is on its way: p's
  // waiters wait for it (p is kicked when it ends) instead of failing.
  bool refresh(Pool* p, Target& t, const Config& cfg, double now);
  Resolver& resolver() { return *dns_; }

 private:
  // First: destroyed last, after the pools whose targets point at its names.
  std::unique_ptr<Resolver> dns_;
  std::mutex mu_;
  size_t nworkers_;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<Pool>> pools_;
  std::map<std::string, std::unique_ptr<std::atomic<int>>> db_counts_;
  std::map<std::string, std::unique_ptr<std::atomic<int>>> user_counts_;
  std::map<std::string, std::unique_ptr<std::atomic<int>>> db_client_counts_;
  std::map<std::string, std::unique_ptr<std::atomic<int>>> user_client_counts_;
  std::map<std::string, std::unique_ptr<DbState>> db_states_;
  struct Retired {
    std::unique_ptr<Pool> pool;
    uint64_t epoch;  // freed once every worker passed it
  };
  std::vector<Retired> retired_;  // mu_
  uint64_t epoch_ = 0;            // mu_: bumped by each retire_idle that retired a pool
  std::unique_ptr<std::atomic<uint64_t>[]> passed_;  // per worker: the last epoch it passed
  std::atomic<bool> has_retired_{false};
  DbState* db_state_locked(const std::string& db);
  // A lookup on its way will kick p (Resolver::waits_for).
  bool lookup_pending(const Pool* p);
  // Gives every host its address when that needs no lookup (a Unix socket, a numeric
  // address, a name already answered); false when some name has no answer yet (then
  // start_lookup once p and t are published).
  bool resolve_now(Target& t);
  void start_lookup(Pool* p, Target* t, const Config& cfg);
};

}  // namespace pgsluice
