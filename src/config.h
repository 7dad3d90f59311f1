// The configuration snapshot: every setting of pgbouncer.ini, loaded from one table.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "log.h"
#include "userlist.h"

namespace pgsluice {

enum class PoolMode : uint8_t { Session, Transaction, Statement };
enum class AuthType : uint8_t { Any, Trust, Plain, Md5, ScramSha256, Cert, Hba, Peer };

const char* pool_mode_name(PoolMode m);
std::optional<PoolMode> parse_pool_mode(std::string_view s);
const char* auth_type_name(AuthType t);
std::optional<AuthType> parse_auth_type(std::string_view s);

// One [databases] entry. Numeric overrides are -1 when the entry does not set them.
struct DatabaseDef {
  std::string name;        // key in [databases] ("*" for the fallback)
  std::string host;        // empty: Unix socket in unix_socket_dir; "/dir": Unix socket dir
  int port = 5432;         // the first of `ports`
  std::vector<int> ports;  // port=p1,p2,...: one per host (host=a,b,...); empty: one port
  std::string dbname;      // empty: same as the client's database name
  std::string user;        // forced user; empty when none
  std::string password;    // password for the forced user (or any user); empty when none
  std::string auth_user;
  int pool_size = -1;
  int min_pool_size = -1;
  int reserve_pool_size = -1;
  int max_db_connections = -1;
  int max_db_client_connections = -1;
  double server_lifetime = -1;
  std::optional<PoolMode> pool_mode;
  std::string client_encoding;  // sent as startup parameters to the server when set
  std::string datestyle;
  std::string timezone;
  std::string application_name;
  std::string connect_query;  // run once after each server login; errors logged, ignored
  // Added by the config readers (accepted in connection strings):
  std::string auth_query;          // per-db auth_query override; empty: the global one
  std::string auth_dbname;         // per-db auth_dbname override; empty: the global one
  std::string load_balance_hosts;  // "round-robin" or "disable"; empty: not set (round-robin)
  // libpq's target_session_attrs: any, read-write, read-only, primary, standby,
  // prefer-standby; empty: not set (any).
  std::string target_session_attrs;
  double query_wait_timeout = -1;  // per-db override; -1: not set

  bool operator==(const DatabaseDef&) const = default;  // RELOAD: changed entry?
};

// One [users] entry.
struct UserDef {
  std::string name;
  int pool_size = -1;
  int reserve_pool_size = -1;
  int max_user_connections = -1;
  int max_user_client_connections = -1;
  std::optional<PoolMode> pool_mode;
  // Per-user timeout overrides in seconds; -1: not set.
  double query_timeout = -1;
  double query_wait_timeout = -1;
  double idle_transaction_timeout = -1;
  double transaction_timeout = -1;
  double client_idle_timeout = -1;

  bool operator==(const UserDef&) const = default;
};

// One [peers] entry.
struct PeerDef {
  int peer_id = 0;
  std::string host;
  int port = 6432;
  int pool_size = -1;

  bool operator==(const PeerDef&) const = default;
};

// Immutable once loaded; workers hold it through std::shared_ptr<const Config>.
// Field names are the ini keys. Durations are seconds (double).
struct TlsContexts;  // tls.h
struct HbaFile;      // hba.h
struct IdentFile;    // ident.h

struct Config {
  std::string config_file;  // the path given on the command line (conffile)

  // generic
  std::string logfile;
  std::string pidfile;
  std::string listen_addr;  // empty: Unix socket only; "*": all addresses
  int listen_port = 6432;
  std::string unix_socket_dir = "/tmp";
  int unix_socket_mode = 0777;
  std::string unix_socket_group;
  std::string user;
  PoolMode pool_mode = PoolMode::Session;
  int max_client_conn = 100;
  int default_pool_size = 20;
  int min_pool_size = 0;
  int reserve_pool_size = 0;
  double reserve_pool_timeout = 5.0;
  int max_db_connections = 0;
  int max_db_client_connections = 0;
  int max_user_connections = 0;
  int max_user_client_connections = 0;
  bool server_round_robin = false;
  std::string track_extra_parameters = "IntervalStyle";
  std::string ignore_startup_parameters;
  int peer_id = 0;
  bool disable_pqexec = false;
  bool application_name_add_host = false;
  int stats_period = 60;
  int max_prepared_statements = 200;
  bool cache_unnamed_statements = false;
  bool server_check_prepared = false;  // pgsluice: see Worker::check_prepared
  int scram_iterations = 4096;
  int workers = 0;  // pgsluice: worker threads; 0 (default) = number of CPUs
  std::string metrics_listen_addr = "127.0.0.1";  // pgsluice: Prometheus endpoint address
  int metrics_port = 0;                           // pgsluice: its port; 0 (default) = off

  // authentication
  AuthType auth_type = AuthType::Md5;
  std::string auth_hba_file;
  std::string auth_ident_file;
  std::string auth_file;
  std::string auth_user;
  std::string auth_query =
      "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
      "FROM pg_authid WHERE rolname=$1 AND rolcanlogin";
  std::string auth_dbname;
  // The auth cache (pgsluice's own): where auth_query's answers are kept across restarts
  // (empty: memory only), and how long an answer is used without asking PostgreSQL again.
  std::string auth_cache_file;
  double auth_cache_ttl = 3600.0;
  double auth_cache_negative_ttl = 10.0;

  // logging
  bool syslog = false;
  std::string syslog_ident = "pgbouncer";
  std::string syslog_facility = "daemon";
  std::string log_format = "text";  // pgsluice: text (PgBouncer's lines) or json
  bool log_connections = true;
  bool log_disconnections = true;
  bool log_pooler_errors = true;
  bool log_stats = true;
  int verbose = 0;

  // console access
  std::string admin_users;
  std::string stats_users;

  // sanity checks and timeouts
  std::string server_reset_query = "DISCARD ALL";
  bool server_reset_query_always = false;
  // Transaction pooling: state pgsluice cannot follow pins the client (on) or is refused.
  bool pin_on_untracked_state = true;
  double server_check_delay = 30.0;
  std::string server_check_query = "<empty>";
  bool server_fast_close = false;
  double server_lifetime = 3600.0;
  double server_idle_timeout = 600.0;
  double server_connect_timeout = 15.0;
  double server_login_retry = 15.0;
  double client_login_timeout = 60.0;
  double autodb_idle_timeout = 3600.0;
  double pool_idle_timeout = 0.0;
  double dns_max_ttl = 15.0;
  double dns_nxdomain_ttl = 15.0;
  double dns_zone_check_period = 0.0;
  std::string resolv_conf;
  double query_wait_notify = 5.0;
  double query_timeout = 0.0;
  double query_wait_timeout = 120.0;
  double cancel_wait_timeout = 10.0;
  double client_idle_timeout = 0.0;
  double idle_transaction_timeout = 0.0;
  double transaction_timeout = 0.0;
  double suspend_timeout = 10.0;

  // TLS (loaded and shown; the TLS issue implements them)
  std::string client_tls_sslmode = "disable";
  std::string client_tls_key_file, client_tls_cert_file, client_tls_ca_file;
  std::string client_tls_protocols = "secure";
  std::string client_tls_ciphers = "default";
  std::string client_tls13_ciphers;
  std::string client_tls_ecdhcurve = "auto";
  std::string client_tls_dheparams = "auto";
  std::string server_tls_sslmode = "prefer";
  std::string server_tls_ca_file, server_tls_key_file, server_tls_cert_file;
  std::string server_tls_protocols = "secure";
  std::string server_tls_ciphers = "default";
  std::string server_tls13_ciphers;
  bool server_tls_direct = false;  // ours: TLS ClientHello instead of SSLRequest (PG 17+)

  // low-level network
  int pkt_buf = 4096;
  long long max_packet_size = 2147483647LL;
  int listen_backlog = 128;
  int sbuf_loopcnt = 5;
  bool so_reuseport = false;
  bool tcp_defer_accept = true;
  int tcp_socket_buffer = 0;
  bool tcp_keepalive = true;
  int tcp_keepcnt = 0, tcp_keepidle = 0, tcp_keepintvl = 0;
  int tcp_user_timeout = 0;

  // sections
  std::map<std::string, DatabaseDef> databases;  // without "*"
  std::optional<DatabaseDef> fallback_db;        // the "*" entry
  // The [databases] entry a database name uses: its own, else "*"'s; null when neither.
  const DatabaseDef* database(const std::string& name) const {
    auto it = databases.find(name);
    if (it != databases.end()) return &it->second;
    return fallback_db ? &*fallback_db : nullptr;
  }
  std::map<std::string, UserDef> users;
  std::map<int, PeerDef> peers;

  // auth_file contents, loaded with the config
  Userlist userlist;

  // Warnings met while loading (unknown keys etc.), each "file:line: text".
  std::vector<std::string> warnings;

  // TLS contexts built from the *_tls_* settings (make_tls_contexts in tls.h) when the
  // snapshot is committed; null until then and in snapshots that are never run.
  std::shared_ptr<const TlsContexts> tls;
  // auth_hba_file's rules and auth_ident_file's maps (load_hba_rules) when auth_type = hba,
  // read when the snapshot is committed; null otherwise (ident: also when no rule has map=).
  std::shared_ptr<const HbaFile> hba;
  std::shared_ptr<const IdentFile> ident;

  // Derived helpers.
  int effective_workers() const;  // workers, or when 0 the count cpus.h chooses
};

// One row of the settings table (drives loading, SHOW CONFIG, SET, the man-page test).
struct SettingInfo {
  const char* name;
  const char* default_value;  // as SHOW CONFIG prints it
  bool reloadable;            // false: needs a restart
  const char* doc;            // one line
};
const std::vector<SettingInfo>& settings_table();
// The row for `name` (case-insensitive); nullptr for an unknown name.
const SettingInfo* find_setting(std::string_view name);
// Names of the non-reloadable settings whose values differ between `a` and `b`
// (RELOAD keeps the old value of these and warns).
std::vector<std::string> settings_needing_restart(const Config& a, const Config& b);

// Current value of a setting in SHOW CONFIG form; nullopt for an unknown name.
std::optional<std::string> setting_value(const Config& c, std::string_view name);
// Sets one [pgbouncer] key from text (as the ini, SET and RELOAD do).
Status set_setting(Config& c, std::string_view name, std::string_view value);

// Loads an ini file (with %include) and its auth_file. Unknown keys become warnings;
// a malformed value or unreadable file is an error.
Result<std::shared_ptr<Config>> load_config(const std::string& path);
// Parses ini text as if read from `path` (for tests and fuzzing; %include resolved
// relative to the current directory, as PgBouncer does).
Status parse_config_text(Config& c, std::string_view text, const std::string& path, int depth = 0);

// auth_hba_file, and auth_ident_file when a rule has map=, read and parsed when auth_type =
// hba (both null otherwise). Refused as a whole, with the file, line and reason of the
// first problem, when a file cannot be read, any line is malformed (PgBouncer skips such a
// line and keeps the rest: a skipped `reject` would let in what it was meant to refuse),
// an address has bits outside its mask (such a rule matches nothing in PgBouncer, so a
// `reject` written that way refuses nobody), or a map= names a map the ident file lacks.
Status load_hba_rules(const Config& c, std::shared_ptr<const HbaFile>* hba,
                      std::shared_ptr<const IdentFile>* ident);

// Maximum %include nesting; deeper includes are an error (stops include loops).
inline constexpr int kMaxIncludeDepth = 10;
// Reads a whole regular file of at most 64 MiB (config, auth_file, hba); errors name the path.
Result<std::string> read_config_file(const std::string& path);

// Value parsers shared by the config, connection-string and console readers. Surrounding
// whitespace is ignored; anything else that is not a complete value gives nullopt.
std::optional<bool> parse_bool_value(std::string_view s);      // 0/1/yes/no/on/off/true/false
std::optional<long long> parse_int_value(std::string_view s);  // decimal, optional '-'
// Seconds: decimal or exponent form, finite, 0..1e9, rounded to microseconds.
std::optional<double> parse_seconds_value(std::string_view s);

// The logging settings a config asks for (logfile, verbose, log_format, syslog*).
LogSettings log_settings(const Config& c);

}  // namespace pgsluice
