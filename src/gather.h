// Snapshots of every worker's clients, servers and pools, gathered by message passing:
// each worker copies its own state into plain structs on its own thread, and the parts
// are merged on the requester's thread (a console's worker, or the main thread for the
// metrics endpoint, the stats timer and the shutdown watcher).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stats.h"

namespace pgsluice {

class Pool;
class Worker;
struct Runtime;

// What a snapshot must hold (bit mask); pool counts and stats are cheap, rows are not.
enum SnapPart : unsigned { kSnapPools = 1, kSnapClients = 2, kSnapServers = 4, kSnapSockets = 8 };

// One row of SHOW CLIENTS / SERVERS / SOCKETS.
struct ConnRow {
  bool is_server = false;
  std::string user, db, state, addr, local_addr, app_name;
  int port = 0, local_port = 0;
  double connect_wall = 0, request_wall = 0;  // Unix time, seconds
  uint64_t wait_us = 0;
  bool close_needed = false;
  const void* ptr = nullptr;
  const void* link = nullptr;
  int remote_pid = 0;
  std::string tls;  // the tls column: tls_description() of an established TLS session
  uint64_t id = 0;
  uint64_t prepared = 0;  // SHOW CLIENTS/SERVERS prepared_statements
  std::string pinned;     // SHOW CLIENTS pinned: the reasons (pinning.h)
  size_t worker = 0;
  bool logging_in = false;   // a client still in startup or authentication
  int fd = -1, link_fd = 0;  // SHOW FDS
  // SHOW SOCKETS
  uint64_t recv_pos = 0, pkt_pos = 0, pkt_remain = 0, send_pos = 0, send_remain = 0, pkt_avail = 0,
           send_avail = 0;
};

// One pool's list sizes and statistics (summed over workers when merged). The pool is
// named by copies: it may be freed (pool_idle_timeout) before the snapshot is read.
struct PoolRow {
  uint64_t uid = 0;  // Pool::uid, never reused
  std::string db, user;
  const char* mode = "";  // pool_mode_name()
  int cl_active = 0, cl_waiting = 0, sv_active = 0, sv_active_cancel = 0, sv_being_canceled = 0,
      sv_idle = 0, sv_used = 0, sv_tested = 0, sv_login = 0;
  uint64_t maxwait_us = 0;
  std::optional<std::string> host;  // current_host() when copied
  PoolStats stats;
};

struct Snapshot {
  std::vector<PoolRow> pools;  // ordered by (database, user)
  std::vector<ConnRow> clients, servers;
  int admin_clients = 0;  // console clients (they have no pool)
  int login_clients = 0;  // still in startup or authentication
  int used_clients = 0, used_servers = 0;
  uint64_t free_blocks = 0;  // buffer blocks cached by the workers
  size_t parts = 0;          // workers that answered
};

// The host the pool's last server logged in to ("host:port", or the socket directory), null
// before the first (pgsluice's column, after PgBouncer's).
std::optional<std::string> current_host(const Pool& p);

// Copies one worker's state (runs on that worker's thread).
Snapshot snapshot_worker(Worker& w, unsigned parts);
// Adds `part` into `into` (pool rows summed by pool, rows appended).
void merge_snapshot(Snapshot& into, Snapshot&& part);
// Per-database totals of a merged snapshot's pool statistics.
std::map<std::string, PoolStats> stats_by_database(const Snapshot& s);

// From worker `me`'s thread: asks every worker for its part and calls `done` on `me`'s
// thread once all have answered. Never blocks.
void gather_async(Worker& me, unsigned parts, std::function<void(Snapshot&)> done);
// From the main thread: asks every worker for its part and calls `done` on the main thread
// (through Runtime::post_main) once all have answered, with complete = true, or when
// `timeout_s` passed first, with the parts that came and complete = false. Never blocks;
// `done` runs exactly once (not at all if the main loop stops first).
void gather_on_main(Runtime& rt, unsigned parts, double timeout_s,
                    std::function<void(Snapshot&, bool complete)> done);
// From a thread that is not a worker: blocks until all workers answered or `timeout_s`
// passed (then the snapshot holds the parts that came). The daemon's main thread does not
// use it (gather_on_main); it is kept for tools and tests.
Snapshot gather_blocking(Runtime& rt, unsigned parts, double timeout_s);
// From a non-worker thread: runs fn on every worker and waits for all (or the timeout).
void run_on_all_blocking(Runtime& rt, const std::function<void(Worker&)>& fn, double timeout_s);

// Wall-clock seconds of a monotonic timestamp from now_seconds().
double wall_of(double mono);

}  // namespace pgsluice
