// Integration-test harness: real PostgreSQL 15 clusters, pgsluice launcher, helpers.
#pragma once

// The Makefile adds no libpq include path; Debian keeps the header in /usr/include/postgresql.
#if __has_include(<libpq-fe.h>)
#include <libpq-fe.h>
#else
#include <postgresql/libpq-fe.h>
#endif
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace it {

// ---------------------------------------------------------------------------------------------
// PostgreSQL cluster (started lazily once, stopped at exit).

struct Cluster {
  std::string dir;           // temp dir: holds data/, the Unix socket and the server log
  int port = 0;              // TCP port on 127.0.0.1 (and the Unix socket's port)
  std::string md5_secret;    // pg_authid.rolpassword of md5user ("md5...")
  std::string scram_secret;  // pg_authid.rolpassword of scramuser ("SCRAM-SHA-256$...")
};

// Starts the cluster on first use (REQUIREs success) and returns it.
const Cluster& cluster();

// Superuser (postgres) connection straight to PostgreSQL over its Unix socket.
std::string superuser_conninfo(const std::string& db = "testdb");
std::string superuser_conninfo(const Cluster& c, const std::string& db = "testdb");

// Another cluster, for tests that need other server settings (TLS): a copy of the same initdb,
// with md5user, scramuser and plainuser holding the very secrets they hold in cluster() (so the
// default userlist works), an empty testdb owned by md5user (no pgbench tables), and
// `databases` created too. Started at once, stopped and removed at exit; REQUIREs success.
struct ClusterSetup {
  std::string tag = "pg2";                     // part of the temp dir's name
  std::string conf;                            // lines appended to postgresql.conf
  std::string hba;                             // replaces pg_hba.conf when non-empty
  std::vector<std::string> databases;          // more databases (owner md5user)
  std::string setup_sql;                       // run as postgres in testdb at the end
  std::string listen_addresses = "127.0.0.1";  // PostgreSQL's listen_addresses
};
Cluster start_cluster(const ClusterSetup& setup);

// A streaming-replication standby of `primary` (pg_basebackup -R: its roles, databases and
// secrets), started at once on its own port, stopped and removed at exit; REQUIREs success.
Cluster start_standby(const Cluster& primary, const std::string& tag);

struct CmdResult;
// pg_ctl <args> on c's data dir as the postgres OS user ("promote -w", "stop -m fast -w").
CmdResult run_pg_ctl(const Cluster& c, const std::string& args, int timeout_s = 60);

// True when PGSLUICE_TARGET=direct: tests talk straight to PostgreSQL.
bool direct_mode();

// Prints a skip line and returns true in direct mode (for tests that need a pooler).
bool skip_in_direct_mode(const char* why);

// ---------------------------------------------------------------------------------------------
// pgsluice launcher.

struct Options {
  std::string auth_type = "md5";
  std::string pool_mode = "transaction";
  int default_pool_size = 4;
  int workers = 2;
  std::string extra_pgbouncer;  // more lines for [pgbouncer] ("key = value\n"...)
  std::string databases;        // replaces the default [databases] body when non-empty
  std::string extra_userlist;   // more lines for userlist.txt
  int nofile = 0;               // RLIMIT_NOFILE (soft and hard) for pgsluice; 0: inherited
  // A file bind-mounted over /etc/resolv.conf in pgsluice's own mount namespace (needs
  // CAP_SYS_ADMIN; see can_private_mount()); "": the host's resolver config.
  std::string resolv_conf;
  // PostgreSQL port the default [databases] point at (e.g. a start_cluster() one); 0: cluster()'s.
  // In direct mode the Pooler's port() is this one.
  int pg_port = 0;
};

// True when this process may give a child its own mount namespace (Options::resolv_conf).
bool can_private_mount();

// RAII pgsluice instance; in direct mode it starts nothing and points at PostgreSQL.
class Pooler {
 public:
  explicit Pooler(Options opts = {});
  ~Pooler();
  Pooler(const Pooler&) = delete;
  Pooler& operator=(const Pooler&) = delete;

  bool direct() const { return pid_ <= 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  const std::string& dir() const { return dir_; }    // pgsluice's temp dir (Unix socket dir)
  const std::string& host() const { return host_; }  // 127.0.0.1
  // libpq connection string over TCP.
  std::string conninfo(const std::string& user = "md5user", const std::string& password = "md5pass",
                       const std::string& db = "testdb", const std::string& extra = "") const;
  // libpq connection string over the Unix socket.
  std::string unix_conninfo(const std::string& user = "md5user",
                            const std::string& password = "md5pass",
                            const std::string& db = "testdb") const;
  std::string log() const;  // pgsluice.log + stdout/stderr
  bool alive();             // process still running (false in direct mode)
  // Status of the process when it exited on its own ("" while alive).
  std::string exit_description() const { return exit_desc_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
  std::string host_ = "127.0.0.1";
  std::string exit_desc_;
  void stop();
};

// The checkout's root (the folder with the Makefile and src/, found from the working dir).
std::string checkout_root();

// Path of the pgsluice binary (PGSLUICE_BIN or <repo root>/pgsluice).
std::string pgsluice_binary();

// ---------------------------------------------------------------------------------------------
// libpq helpers.

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Conn = std::unique_ptr<PGconn, ConnDeleter>;
using Result = std::unique_ptr<PGresult, ResultDeleter>;

// Connects; REQUIREs success (message includes libpq's error).
Conn connect(const std::string& conninfo);
// Connects; returns null conn and the error text on failure (no assertion).
Conn try_connect(const std::string& conninfo, std::string* error);

// Runs a command; REQUIREs COMMAND_OK or TUPLES_OK.
Result exec_ok(PGconn* c, const std::string& sql);
// Runs a query returning one value; REQUIREs TUPLES_OK with >= 1 row.
std::string scalar(PGconn* c, const std::string& sql);
// Runs a query and returns its SQLSTATE ("" when it succeeded).
std::string exec_sqlstate(PGconn* c, const std::string& sql);
// Non-asserting variants for worker threads: return false and fill *err.
bool exec_nothrow(PGconn* c, const std::string& sql, std::string* err,
                  std::string* first_value = nullptr);

// Local TCP port of a libpq connection (to find it in pgsluice's log: "@127.0.0.1:<port>").
int local_port(PGconn* c);

// Number of server backends for db/user (excluding the caller's own), optionally in a state.
int count_backends(const std::string& db, const std::string& user, const std::string& state = "");

// ---------------------------------------------------------------------------------------------
// Processes and /proc.

// VmRSS of pid in kB (-1 when unreadable).
long vm_rss_kb(pid_t pid);
// User + system CPU time of pid in seconds (-1 when unreadable).
double cpu_seconds(pid_t pid);
// Number of open file descriptors of pid (-1 when unreadable).
int open_fds(pid_t pid);

struct CmdResult {
  int exit_code = -1;  // -1: did not exit normally
  std::string output;  // stdout + stderr
};
// Runs `sh -c cmd` under `timeout`, capturing output.
CmdResult run_shell(const std::string& cmd, int timeout_s = 60);
// Single-quotes s for sh.
std::string shell_quote(const std::string& s);

// One pgbench run as md5user against testdb through p (host 127.0.0.1, p's port), with
// pgbench's own counts read from its output (-1 when absent).
struct PgbenchRun {
  int exit_code = -1;
  long long processed = -1;  // "number of transactions actually processed"
  long long failed = -1;     // "number of failed transactions"
  std::string output;
};
PgbenchRun run_pgbench(const Pooler& p, const std::string& args, int timeout_s = 60);

// Runs pgsluice once with `ini` as its config file, written to a fresh temp dir that the
// text may name as {dir} (every {dir} is replaced), for configs that must make it exit at
// start. Returns its exit code and stdout+stderr; a pgsluice still running after timeout_s
// is killed and the exit code is 124.
CmdResult run_pgsluice_config(const std::string& ini, int timeout_s = 10);

// Free TCP port on 127.0.0.1.
int free_port();

// Makes a temp dir (mkdtemp) registered for removal at exit.
std::string make_temp_dir(const char* tag);
void remove_tree(const std::string& dir);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& text, int mode = 0644);

// ---------------------------------------------------------------------------------------------
// Raw protocol client (for SQLSTATE checks, bad input and protocol corner cases).

struct Msg {
  char type = 0;     // 0 when nothing was read
  std::string body;  // payload after the length word
  // Field of an ErrorResponse/NoticeResponse ('C' = SQLSTATE, 'M' = message).
  std::string field(char code) const;
};

enum class ReadStatus { Ok, Closed, Timeout, Error };

class Raw {
 public:
  Raw() = default;
  explicit Raw(int fd) : fd_(fd) {}
  ~Raw();
  Raw(Raw&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Raw& operator=(Raw&& o) noexcept;

  // TCP connect to 127.0.0.1:port with send/receive timeouts; REQUIREs success.
  static Raw tcp(int port, double timeout_s = 5);
  // Takes over a libpq connection's authenticated socket (dup'ed). The caller keeps conn
  // open (and must not use it) until done; sslmode must have been disable.
  static Raw from_libpq(PGconn* conn, double timeout_s = 5);

  int fd() const { return fd_; }
  bool send_bytes(std::string_view bytes);
  bool send_msg(char type, std::string_view body);
  // Reads one typed message (after startup). max_len guards against junk lengths.
  ReadStatus read_msg(Msg* out, double timeout_s = 5);
  // Reads until a message of type `until` (inclusive); returns all read; stops on error.
  std::vector<Msg> read_until(char until, double timeout_s = 5);
  // Waits until the peer closes (true) or timeout (false); discards data.
  bool wait_closed(double timeout_s);
  void shutdown_write();
  void close_fd();
  // Bytes read but not yet consumed as messages (wait_closed keeps what it reads here).
  const std::string& pending() const { return buf_; }

 private:
  int fd_ = -1;
  std::string buf_;
};

// Message builders.
std::string be32(uint32_t v);
std::string be16(uint16_t v);
std::string startup_packet(const std::vector<std::pair<std::string, std::string>>& params,
                           uint32_t version = 196608);
std::string msg(char type, std::string_view body);
std::string cstr(std::string_view s);  // s + '\0'

// Sends a startup packet for user/db and answers the first auth request with a wrong
// password (cleartext, md5 or a bogus SCRAM proof). Returns the final ErrorResponse (or the
// first non-auth message / type 0 on close).
Msg login_with_wrong_password(int port, const std::string& user, const std::string& db);

// Clock helpers.
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t);
void sleep_ms(int ms);
// Polls `cond` every 20 ms until it holds or `timeout_s` have passed; returns its last
// value. For facts another thread or process makes true a little after the reply a test
// waits on.
template <typename F>
bool eventually(F cond, double timeout_s = 5) {
  auto t0 = Clock::now();
  while (seconds_since(t0) < timeout_s) {
    if (cond()) return true;
    sleep_ms(20);
  }
  return cond();
}

}  // namespace it
