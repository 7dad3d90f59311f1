// The configuration snapshot: the settings table, the ini reader and the value parsers.
#include "config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <system_error>

#include "connstr.h"
#include "cpus.h"
#include "hba.h"
#include "ident.h"

namespace pgsluice {

namespace {

constexpr size_t kMaxConfigFileBytes = size_t{64} << 20;
constexpr double kMaxSeconds = 1e9;  // about 31 years; keeps usec conversions in int64

bool is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

char lower_char(char ch) {
  return ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch - 'A' + 'a') : ch;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = lower_char(ch);
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    if (lower_char(a[i]) != lower_char(b[i])) return false;
  }
  return true;
}

// ---- the settings table ----

enum class Kind : uint8_t {
  Int,      // int, decimal, range lo..hi
  Octal,    // int shown and parsed in octal (unix_socket_mode)
  Int64,    // long long, decimal, range lo..hi
  Seconds,  // double seconds, fractional allowed
  Bool,     // 0/1 and friends
  String,   // free text
  Choice,   // text limited to `choices` ('|'-separated, case-insensitive)
  Pool,     // PoolMode
  Auth,     // AuthType
};

struct Row {
  SettingInfo info;
  Kind kind;
  int Config::*int_field = nullptr;
  long long Config::*int64_field = nullptr;
  double Config::*seconds_field = nullptr;
  bool Config::*bool_field = nullptr;
  std::string Config::*string_field = nullptr;
  PoolMode Config::*pool_field = nullptr;
  AuthType Config::*auth_field = nullptr;
  long long lo = 0;
  long long hi = 0;
  const char* choices = nullptr;
};

constexpr bool kReload = true;
constexpr bool kRestart = false;
constexpr long long kIntMax = INT_MAX;

constexpr Row int_row(const char* name, const char* def, bool reload, const char* doc,
                      int Config::*f, long long lo, long long hi) {
  Row r{{name, def, reload, doc}, Kind::Int};
  r.int_field = f;
  r.lo = lo;
  r.hi = hi;
  return r;
}
constexpr Row octal_row(const char* name, const char* def, bool reload, const char* doc,
                        int Config::*f, long long hi) {
  Row r = int_row(name, def, reload, doc, f, 0, hi);
  r.kind = Kind::Octal;
  return r;
}
constexpr Row int64_row(const char* name, const char* def, bool reload, const char* doc,
                        long long Config::*f, long long lo, long long hi) {
  Row r{{name, def, reload, doc}, Kind::Int64};
  r.int64_field = f;
  r.lo = lo;
  r.hi = hi;
  return r;
}
constexpr Row seconds_row(const char* name, const char* def, bool reload, const char* doc,
                          double Config::*f) {
  Row r{{name, def, reload, doc}, Kind::Seconds};
  r.seconds_field = f;
  return r;
}
constexpr Row bool_row(const char* name, const char* def, bool reload, const char* doc,
                       bool Config::*f) {
  Row r{{name, def, reload, doc}, Kind::Bool};
  r.bool_field = f;
  return r;
}
constexpr Row string_row(const char* name, const char* def, bool reload, const char* doc,
                         std::string Config::*f) {
  Row r{{name, def, reload, doc}, Kind::String};
  r.string_field = f;
  return r;
}
constexpr Row choice_row(const char* name, const char* def, bool reload, const char* doc,
                         std::string Config::*f, const char* choices) {
  Row r = string_row(name, def, reload, doc, f);
  r.kind = Kind::Choice;
  r.choices = choices;
  return r;
}
constexpr Row pool_row(const char* name, const char* def, bool reload, const char* doc,
                       PoolMode Config::*f) {
  Row r{{name, def, reload, doc}, Kind::Pool};
  r.pool_field = f;
  return r;
}
constexpr Row auth_row(const char* name, const char* def, bool reload, const char* doc,
                       AuthType Config::*f) {
  Row r{{name, def, reload, doc}, Kind::Auth};
  r.auth_field = f;
  return r;
}

constexpr const char* kSslModes = "disable|allow|prefer|require|verify-ca|verify-full";

// Every [pgbouncer] setting, in the order of PgBouncer's documentation. Defaults are the
// SHOW CONFIG text of a default-constructed Config (a unit test keeps them in step).
constexpr Row kRows[] = {
    // generic
    string_row("logfile", "", kReload, "log file, reopened on RELOAD and SIGHUP", &Config::logfile),
    string_row("pidfile", "", kRestart, "PID file; required with -d", &Config::pidfile),
    string_row("listen_addr", "", kRestart,
               "comma-separated TCP listen addresses; * for all, empty for Unix socket only",
               &Config::listen_addr),
    int_row("listen_port", "6432", kRestart, "TCP port, also used in the Unix socket name",
            &Config::listen_port, 1, 65535),
    string_row("unix_socket_dir", "/tmp", kRestart,
               "directory of the listening and server Unix sockets; empty disables them",
               &Config::unix_socket_dir),
    octal_row("unix_socket_mode", "0777", kRestart, "file mode of the listening Unix socket",
              &Config::unix_socket_mode, 07777),
    string_row("unix_socket_group", "", kRestart, "group owning the listening Unix socket",
               &Config::unix_socket_group),
    string_row("user", "", kRestart, "Unix user to switch to after start", &Config::user),
    pool_row("pool_mode", "session", kReload,
             "when a server is released: session, transaction or statement", &Config::pool_mode),
    int_row("max_client_conn", "100", kReload, "most client connections (admin console excepted)",
            &Config::max_client_conn, 0, kIntMax),
    int_row("default_pool_size", "20", kReload,
            "server connections per database/user pool; 0 means no limit",
            &Config::default_pool_size, 0, kIntMax),
    int_row("min_pool_size", "0", kReload, "server connections kept open per pool",
            &Config::min_pool_size, 0, kIntMax),
    int_row("reserve_pool_size", "0", kReload,
            "extra server connections a pool may open after reserve_pool_timeout",
            &Config::reserve_pool_size, 0, kIntMax),
    seconds_row("reserve_pool_timeout", "5", kReload,
                "seconds a client waits before the reserve pool is used",
                &Config::reserve_pool_timeout),
    int_row("max_db_connections", "0", kReload,
            "server connections per database over all users; 0 means no limit",
            &Config::max_db_connections, 0, kIntMax),
    int_row("max_db_client_connections", "0", kReload,
            "client connections per database; 0 means no limit", &Config::max_db_client_connections,
            0, kIntMax),
    int_row("max_user_connections", "0", kReload,
            "server connections per user over all databases; 0 means no limit",
            &Config::max_user_connections, 0, kIntMax),
    int_row("max_user_client_connections", "0", kReload,
            "client connections per user; 0 means no limit", &Config::max_user_client_connections,
            0, kIntMax),
    bool_row("server_round_robin", "0", kReload,
             "reuse idle servers in turn instead of most recently used first",
             &Config::server_round_robin),
    string_row("track_extra_parameters", "IntervalStyle", kRestart,
               "extra server parameters remembered per client and restored on each server",
               &Config::track_extra_parameters),
    string_row("ignore_startup_parameters", "", kReload,
               "startup parameters accepted from clients and not passed on",
               &Config::ignore_startup_parameters),
    int_row("peer_id", "0", kReload, "this process's id among [peers]; 0 turns peering off",
            &Config::peer_id, 0, 16383),
    bool_row("disable_pqexec", "0", kRestart, "refuse Simple Query messages",
             &Config::disable_pqexec),
    bool_row("application_name_add_host", "0", kReload,
             "append the client address to application_name at login",
             &Config::application_name_add_host),
    string_row("conffile", "", kReload, "configuration file read again by RELOAD",
               &Config::config_file),
    int_row("stats_period", "60", kReload, "seconds between statistics averages and log lines",
            &Config::stats_period, 1, kIntMax),
    int_row("max_prepared_statements", "200", kReload,
            "protocol-level prepared statements tracked per server; 0 turns tracking off",
            &Config::max_prepared_statements, 0, kIntMax),
    bool_row("cache_unnamed_statements", "0", kReload,
             "serve repeated unnamed Parse messages from the server-side statement cache",
             &Config::cache_unnamed_statements),
    bool_row("server_check_prepared", "0", kReload,
             "verify a server's prepared statements before another client uses them",
             &Config::server_check_prepared),
    int_row("scram_iterations", "4096", kReload, "iterations of SCRAM secrets built by pgsluice",
            &Config::scram_iterations, 1, kIntMax),
    int_row("workers", "0", kRestart,
            "worker threads; 0: one per CPU given to pgsluice alone, else one per two CPUs",
            &Config::workers, 0, 1024),
    string_row("metrics_listen_addr", "127.0.0.1", kRestart,
               "address of the Prometheus metrics endpoint", &Config::metrics_listen_addr),
    int_row("metrics_port", "0", kRestart,
            "TCP port of the Prometheus metrics endpoint (/metrics); 0 turns it off",
            &Config::metrics_port, 0, 65535),

    // authentication
    auth_row("auth_type", "md5", kReload,
             "client authentication: any, trust, plain, md5, scram-sha-256, cert, hba, peer",
             &Config::auth_type),
    string_row("auth_hba_file", "", kReload, "pg_hba.conf-style file used when auth_type is hba",
               &Config::auth_hba_file),
    string_row("auth_ident_file", "", kReload, "ident map file for map= in the HBA file",
               &Config::auth_ident_file),
    string_row("auth_file", "", kReload, "file of \"user\" \"secret\" lines", &Config::auth_file),
    string_row("auth_user", "", kReload, "user that runs auth_query for users not in auth_file",
               &Config::auth_user),
    string_row("auth_query",
               "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
               "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
               kReload, "query that returns a user's name and password secret",
               &Config::auth_query),
    string_row("auth_dbname", "", kReload, "database in which auth_query runs",
               &Config::auth_dbname),
    string_row("auth_cache_file", "", kReload,
               "SQLite file keeping auth_query's answers across restarts; empty: memory only",
               &Config::auth_cache_file),
    seconds_row("auth_cache_ttl", "3600", kReload,
                "seconds an auth_query answer is used before it is refreshed in the background",
                &Config::auth_cache_ttl),
    seconds_row("auth_cache_negative_ttl", "10", kReload,
                "seconds a user auth_query did not find is refused without asking again",
                &Config::auth_cache_negative_ttl),

    // logging
    bool_row("syslog", "0", kReload, "also log to syslog", &Config::syslog),
    string_row("syslog_ident", "pgbouncer", kReload, "syslog identity", &Config::syslog_ident),
    string_row("syslog_facility", "daemon", kReload, "syslog facility", &Config::syslog_facility),
    choice_row("log_format", "text", kReload,
               "format of stderr and logfile lines: text (PgBouncer's) or json (one object a line)",
               &Config::log_format, "text|json"),
    bool_row("log_connections", "1", kReload, "log successful logins", &Config::log_connections),
    bool_row("log_disconnections", "1", kReload, "log disconnections with their reason",
             &Config::log_disconnections),
    bool_row("log_pooler_errors", "1", kReload, "log the errors sent to clients",
             &Config::log_pooler_errors),
    bool_row("log_stats", "1", kReload, "log a statistics line every stats_period",
             &Config::log_stats),
    int_row("verbose", "0", kReload, "debug logging level", &Config::verbose, 0, kIntMax),

    // console access
    string_row("admin_users", "", kReload, "users allowed every console command",
               &Config::admin_users),
    string_row("stats_users", "", kReload, "users allowed the read-only SHOW commands",
               &Config::stats_users),

    // connection sanity checks and timeouts
    string_row("server_reset_query", "DISCARD ALL", kReload,
               "query run when a server is released in session mode", &Config::server_reset_query),
    bool_row("server_reset_query_always", "0", kReload, "run server_reset_query in every pool mode",
             &Config::server_reset_query_always),
    bool_row(
        "pin_on_untracked_state", "1", kReload,
        "keep a client on its server while it holds state pgsluice cannot follow; 0 refuses it",
        &Config::pin_on_untracked_state),
    seconds_row("server_check_delay", "30", kReload,
                "seconds an idle server may be reused without a check",
                &Config::server_check_delay),
    string_row("server_check_query", "<empty>", kReload,
               "liveness check query; <empty> sends an empty query, empty disables",
               &Config::server_check_query),
    bool_row("server_fast_close", "0", kReload,
             "close servers marked for reconnect at the end of the transaction",
             &Config::server_fast_close),
    seconds_row("server_lifetime", "3600", kReload,
                "close released servers older than this; 0 means use once",
                &Config::server_lifetime),
    seconds_row("server_idle_timeout", "600", kReload, "close servers idle longer than this",
                &Config::server_idle_timeout),
    seconds_row("server_connect_timeout", "15", kReload, "limit on server connect and login",
                &Config::server_connect_timeout),
    seconds_row("server_login_retry", "15", kReload, "wait after a failed server login",
                &Config::server_login_retry),
    seconds_row("client_login_timeout", "60", kReload,
                "disconnect clients that have not logged in after this",
                &Config::client_login_timeout),
    seconds_row("autodb_idle_timeout", "3600", kReload,
                "free unused databases created from the * entry after this",
                &Config::autodb_idle_timeout),
    seconds_row("pool_idle_timeout", "0", kReload,
                "free a pool without clients and servers for this long; 0 is off",
                &Config::pool_idle_timeout),
    seconds_row("dns_max_ttl", "15", kReload, "how long DNS answers are cached",
                &Config::dns_max_ttl),
    seconds_row("dns_nxdomain_ttl", "15", kReload, "how long DNS failures are cached",
                &Config::dns_nxdomain_ttl),
    seconds_row("dns_zone_check_period", "0", kReload, "DNS zone serial polling period; 0 is off",
                &Config::dns_zone_check_period),
    string_row("resolv_conf", "", kRestart, "alternative resolv.conf", &Config::resolv_conf),
    seconds_row("query_wait_notify", "5", kReload,
                "notify a queued client after this long; 0 is off", &Config::query_wait_notify),
    seconds_row("query_timeout", "0", kReload, "cancel queries running longer than this",
                &Config::query_timeout),
    seconds_row("query_wait_timeout", "120", kReload,
                "disconnect clients waiting this long for a server; 0 waits forever",
                &Config::query_wait_timeout),
    seconds_row("cancel_wait_timeout", "10", kReload,
                "limit on how long a cancel request waits to be forwarded",
                &Config::cancel_wait_timeout),
    seconds_row("client_idle_timeout", "0", kReload, "close clients idle longer than this",
                &Config::client_idle_timeout),
    seconds_row("idle_transaction_timeout", "0", kReload,
                "disconnect clients idle in a transaction longer than this",
                &Config::idle_transaction_timeout),
    seconds_row("transaction_timeout", "0", kReload,
                "disconnect clients whose transaction lasts longer than this",
                &Config::transaction_timeout),
    seconds_row("suspend_timeout", "10", kReload, "buffer flush wait during SUSPEND",
                &Config::suspend_timeout),

    // TLS
    choice_row("client_tls_sslmode", "disable", kReload, "TLS mode towards clients",
               &Config::client_tls_sslmode, kSslModes),
    string_row("client_tls_key_file", "", kReload, "private key for client TLS",
               &Config::client_tls_key_file),
    string_row("client_tls_cert_file", "", kReload, "certificate for client TLS",
               &Config::client_tls_cert_file),
    string_row("client_tls_ca_file", "", kReload, "CA that verifies client certificates",
               &Config::client_tls_ca_file),
    string_row("client_tls_protocols", "secure", kReload, "TLS versions allowed for clients",
               &Config::client_tls_protocols),
    string_row("client_tls_ciphers", "default", kReload, "TLS 1.2 ciphers for clients",
               &Config::client_tls_ciphers),
    string_row("client_tls13_ciphers", "", kReload, "TLS 1.3 cipher suites for clients",
               &Config::client_tls13_ciphers),
    string_row("client_tls_ecdhcurve", "auto", kReload, "ECDH curve for clients; none disables",
               &Config::client_tls_ecdhcurve),
    string_row("client_tls_dheparams", "auto", kReload, "DHE parameters: none, auto or legacy",
               &Config::client_tls_dheparams),
    choice_row("server_tls_sslmode", "prefer", kReload, "TLS mode towards servers",
               &Config::server_tls_sslmode, kSslModes),
    string_row("server_tls_ca_file", "", kReload, "CA that verifies server certificates",
               &Config::server_tls_ca_file),
    string_row("server_tls_key_file", "", kReload, "private key presented to servers",
               &Config::server_tls_key_file),
    string_row("server_tls_cert_file", "", kReload, "certificate presented to servers",
               &Config::server_tls_cert_file),
    string_row("server_tls_protocols", "secure", kReload, "TLS versions allowed for servers",
               &Config::server_tls_protocols),
    string_row("server_tls_ciphers", "default", kReload, "TLS 1.2 ciphers for servers",
               &Config::server_tls_ciphers),
    string_row("server_tls13_ciphers", "", kReload, "TLS 1.3 cipher suites for servers",
               &Config::server_tls13_ciphers),
    bool_row("server_tls_direct", "0", kReload,
             "open server connections with TLS at once, no SSLRequest (PostgreSQL 17+)",
             &Config::server_tls_direct),

    // low-level network
    int_row("pkt_buf", "4096", kRestart, "size of the internal packet buffer", &Config::pkt_buf,
            512, 1 << 30),
    int64_row("max_packet_size", "2147483647", kReload, "largest protocol message let through",
              &Config::max_packet_size, 1, 2147483647LL),
    int_row("listen_backlog", "128", kRestart, "listen(2) backlog", &Config::listen_backlog, 0,
            kIntMax),
    int_row("sbuf_loopcnt", "5", kReload,
            "buffers handled per connection before moving on; 0 means no limit",
            &Config::sbuf_loopcnt, 0, kIntMax),
    bool_row("so_reuseport", "0", kRestart, "set SO_REUSEPORT on listening sockets",
             &Config::so_reuseport),
    bool_row("tcp_defer_accept", "1", kReload, "set TCP_DEFER_ACCEPT on listening sockets",
             &Config::tcp_defer_accept),
    int_row("tcp_socket_buffer", "0", kReload, "SO_SNDBUF and SO_RCVBUF; 0 keeps the OS default",
            &Config::tcp_socket_buffer, 0, kIntMax),
    bool_row("tcp_keepalive", "1", kReload, "turn on TCP keepalive", &Config::tcp_keepalive),
    int_row("tcp_keepcnt", "0", kReload, "TCP keepalive probe count; 0 keeps the OS default",
            &Config::tcp_keepcnt, 0, kIntMax),
    int_row("tcp_keepidle", "0", kReload, "TCP keepalive idle time; 0 keeps the OS default",
            &Config::tcp_keepidle, 0, kIntMax),
    int_row("tcp_keepintvl", "0", kReload, "TCP keepalive interval; 0 keeps the OS default",
            &Config::tcp_keepintvl, 0, kIntMax),
    int_row("tcp_user_timeout", "0", kReload, "TCP_USER_TIMEOUT in milliseconds; 0 is off",
            &Config::tcp_user_timeout, 0, kIntMax),
};

// PgBouncer settings that pgsluice knows about but does not implement: a warning of their
// own instead of "unknown setting".
constexpr const char* kUnsupported[] = {"service_name", "job_name", "login_notify_message",
                                        "auth_ldap_options"};

const Row* find_row(std::string_view name) {
  for (const Row& r : kRows) {
    if (iequals(name, r.info.name)) return &r;
  }
  return nullptr;
}

std::string format_seconds(double v) {
  char buf[400];  // fixed notation of any finite double fits
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  if (res.ec != std::errc()) {
    res = std::to_chars(buf, buf + sizeof buf, v);
    if (res.ec != std::errc()) return "0";
  }
  return std::string(buf, res.ptr);
}

std::string format_octal(int v) {
  if (v == 0) return "0";
  char buf[32];
  buf[0] = '0';
  auto res = std::to_chars(buf + 1, buf + sizeof buf, v, 8);
  if (res.ec != std::errc()) return "0";
  return std::string(buf, res.ptr);
}

std::string row_value(const Config& c, const Row& r) {
  switch (r.kind) {
    case Kind::Int:
      return std::to_string(c.*(r.int_field));
    case Kind::Octal:
      return format_octal(c.*(r.int_field));
    case Kind::Int64:
      return std::to_string(c.*(r.int64_field));
    case Kind::Seconds:
      return format_seconds(c.*(r.seconds_field));
    case Kind::Bool:
      return c.*(r.bool_field) ? "1" : "0";
    case Kind::String:
    case Kind::Choice:
      return c.*(r.string_field);
    case Kind::Pool:
      return pool_mode_name(c.*(r.pool_field));
    case Kind::Auth:
      return auth_type_name(c.*(r.auth_field));
  }
  return std::string();
}

Status bad_setting(const Row& r, std::string_view value, const std::string& why) {
  return Status::error("invalid value '" + std::string(value) + "' for setting '" + r.info.name +
                       "': " + why);
}

Status set_row(Config& c, const Row& r, std::string_view raw) {
  std::string_view value = trim(raw);
  switch (r.kind) {
    case Kind::Int:
    case Kind::Int64:
    case Kind::Octal: {
      long long v = 0;
      if (r.kind == Kind::Octal) {
        auto res = std::from_chars(value.data(), value.data() + value.size(), v, 8);
        if (value.empty() || res.ec != std::errc() || res.ptr != value.data() + value.size()) {
          return bad_setting(r, value, "expected an octal number");
        }
      } else {
        std::optional<long long> p = parse_int_value(value);
        if (!p) return bad_setting(r, value, "expected an integer");
        v = *p;
      }
      if (v < r.lo || v > r.hi) {
        return bad_setting(r, value,
                           "out of range " + std::to_string(r.lo) + ".." + std::to_string(r.hi));
      }
      if (r.kind == Kind::Int64) {
        c.*(r.int64_field) = v;
      } else {
        c.*(r.int_field) = static_cast<int>(v);
      }
      return Status();
    }
    case Kind::Seconds: {
      std::optional<double> v = parse_seconds_value(value);
      if (!v) return bad_setting(r, value, "expected a number of seconds");
      c.*(r.seconds_field) = *v;
      return Status();
    }
    case Kind::Bool: {
      std::optional<bool> v = parse_bool_value(value);
      if (!v) return bad_setting(r, value, "expected a boolean (0/1, yes/no, on/off, true/false)");
      c.*(r.bool_field) = *v;
      return Status();
    }
    case Kind::String:
      c.*(r.string_field) = std::string(value);
      return Status();
    case Kind::Choice: {
      std::string_view all = r.choices;
      while (!all.empty()) {
        size_t bar = all.find('|');
        std::string_view one = all.substr(0, bar);
        if (iequals(one, value)) {
          c.*(r.string_field) = std::string(one);
          return Status();
        }
        all = bar == std::string_view::npos ? std::string_view() : all.substr(bar + 1);
      }
      std::string list(r.choices);
      for (char& ch : list) {
        if (ch == '|') ch = ',';
      }
      return bad_setting(r, value, "expected one of " + list);
    }
    case Kind::Pool: {
      std::optional<PoolMode> m = parse_pool_mode(value);
      if (!m) return bad_setting(r, value, "expected session, transaction or statement");
      c.*(r.pool_field) = *m;
      return Status();
    }
    case Kind::Auth: {
      std::optional<AuthType> t = parse_auth_type(value);
      if (!t) {
        return bad_setting(r, value,
                           "expected any, trust, plain, md5, scram-sha-256, cert, hba or peer");
      }
      c.*(r.auth_field) = *t;
      return Status();
    }
  }
  return bad_setting(r, value, "unsupported setting type");
}

// ---- the ini reader ----

enum class Section : uint8_t { None, Databases, Users, Peers, Pgbouncer, Unknown };

std::string where(const std::string& path, size_t lineno) {
  return path + ":" + std::to_string(lineno) + ": ";
}

// A [databases]/[users] key, possibly double-quoted with "" for a quote. Returns the
// position of the '=' in `line`, or npos on a syntax error (message in `err`).
size_t split_key(std::string_view line, std::string& key, std::string& err) {
  key.clear();
  size_t pos = 0;
  if (!line.empty() && line[0] == '"') {
    pos = 1;
    bool closed = false;
    while (pos < line.size()) {
      if (line[pos] == '"') {
        if (pos + 1 < line.size() && line[pos + 1] == '"') {
          key.push_back('"');
          pos += 2;
          continue;
        }
        closed = true;
        pos++;
        break;
      }
      key.push_back(line[pos]);
      pos++;
    }
    if (!closed) {
      err = "unterminated quoted name";
      return std::string_view::npos;
    }
    while (pos < line.size() && is_space(line[pos])) pos++;
    if (pos >= line.size() || line[pos] != '=') {
      err = "expected '=' after the quoted name";
      return std::string_view::npos;
    }
    if (key.empty()) {
      err = "empty name";
      return std::string_view::npos;
    }
    return pos;
  }
  size_t eq = line.find('=');
  if (eq == std::string_view::npos) {
    err = "expected 'key = value'";
    return eq;
  }
  key = std::string(trim(line.substr(0, eq)));
  if (key.empty()) {
    err = "empty key before '='";
    return std::string_view::npos;
  }
  return eq;
}

void add_prefixed(std::vector<std::string>& out, const std::vector<std::string>& in,
                  const std::string& prefix) {
  for (const std::string& w : in) out.push_back(prefix + w);
}

Status parse_ini(Config& c, std::string_view text, const std::string& path, int depth,
                 Section& section) {
  size_t lineno = 0;
  size_t start = 0;
  std::string key;
  std::string err;
  std::vector<std::string> sub_warnings;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(start, end - start);
    start = nl == std::string_view::npos ? text.size() : nl + 1;
    lineno++;

    if (lineno == 1 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);  // UTF-8 BOM
    line = trim(line);
    if (line.empty() || line[0] == ';' || line[0] == '#') continue;
    if (line.find('\0') != std::string_view::npos) {
      return Status::error(where(path, lineno) + "NUL byte in line");
    }

    if (line[0] == '%') {
      size_t sp = 0;
      while (sp < line.size() && !is_space(line[sp])) sp++;
      std::string_view directive = line.substr(0, sp);
      if (!iequals(directive, "%include")) {
        return Status::error(where(path, lineno) + "unknown directive '" + std::string(directive) +
                             "'");
      }
      std::string inc(trim(line.substr(sp)));
      if (inc.empty()) return Status::error(where(path, lineno) + "%include without a file name");
      if (depth + 1 > kMaxIncludeDepth) {
        return Status::error(where(path, lineno) + "%include nested more than " +
                             std::to_string(kMaxIncludeDepth) + " deep");
      }
      Result<std::string> body = read_config_file(inc);
      if (!body) return Status::error(where(path, lineno) + "%include: " + body.status().message());
      Status st = parse_ini(c, *body, inc, depth + 1, section);
      if (!st) return st;
      continue;
    }

    if (line[0] == '[') {
      size_t close = line.find(']');
      if (close == std::string_view::npos) {
        return Status::error(where(path, lineno) + "missing ']' in section header");
      }
      if (!trim(line.substr(close + 1)).empty()) {
        return Status::error(where(path, lineno) + "text after section header");
      }
      std::string name = lower(trim(line.substr(1, close - 1)));
      if (name == "databases") {
        section = Section::Databases;
      } else if (name == "users") {
        section = Section::Users;
      } else if (name == "peers") {
        section = Section::Peers;
      } else if (name == "pgbouncer" || name == "pgsluice") {
        section = Section::Pgbouncer;
      } else {
        section = Section::Unknown;
        c.warnings.push_back(where(path, lineno) + "unknown section [" +
                             std::string(trim(line.substr(1, close - 1))) + "] ignored");
      }
      continue;
    }

    size_t eq = split_key(line, key, err);
    if (eq == std::string_view::npos) return Status::error(where(path, lineno) + err);
    std::string_view value = trim(line.substr(eq + 1));

    switch (section) {
      case Section::None:
        c.warnings.push_back(where(path, lineno) + "setting '" + key +
                             "' outside any section ignored");
        break;
      case Section::Unknown:
        break;
      case Section::Pgbouncer: {
        const Row* r = find_row(key);
        if (r == nullptr) {
          bool known = false;
          for (const char* u : kUnsupported) known = known || iequals(key, u);
          c.warnings.push_back(where(path, lineno) +
                               (known ? "setting '" + key + "' is not supported, ignored"
                                      : "unknown setting '" + key + "'"));
          break;
        }
        Status st = set_row(c, *r, value);
        if (!st) return Status::error(where(path, lineno) + st.message());
        break;
      }
      case Section::Databases: {
        if (key == "pgbouncer" || key == "pgsluice") {
          c.warnings.push_back(where(path, lineno) + "database name '" + key +
                               "' is reserved for the admin console, entry ignored");
          break;
        }
        DatabaseDef d;
        d.name = key;
        sub_warnings.clear();
        Status st = apply_database_connstr(d, value, &sub_warnings);
        std::string prefix = where(path, lineno) + "database '" + key + "': ";
        if (!st) return Status::error(prefix + st.message());
        add_prefixed(c.warnings, sub_warnings, prefix);
        if (key == "*") {
          c.fallback_db = std::move(d);
        } else {
          c.databases.insert_or_assign(key, std::move(d));
        }
        break;
      }
      case Section::Users: {
        UserDef u;
        u.name = key;
        sub_warnings.clear();
        Status st = apply_user_connstr(u, value, &sub_warnings);
        std::string prefix = where(path, lineno) + "user '" + key + "': ";
        if (!st) return Status::error(prefix + st.message());
        add_prefixed(c.warnings, sub_warnings, prefix);
        c.users.insert_or_assign(key, std::move(u));
        break;
      }
      case Section::Peers: {
        std::optional<long long> id = parse_int_value(key);
        if (!id || *id < 1 || *id > 16383) {
          return Status::error(where(path, lineno) + "peer id '" + key +
                               "' must be an integer 1..16383");
        }
        PeerDef p;
        p.peer_id = static_cast<int>(*id);
        sub_warnings.clear();
        Status st = apply_peer_connstr(p, value, &sub_warnings);
        std::string prefix = where(path, lineno) + "peer " + std::to_string(*id) + ": ";
        if (!st) return Status::error(prefix + st.message());
        if (p.host.empty()) return Status::error(prefix + "host is required");
        add_prefixed(c.warnings, sub_warnings, prefix);
        c.peers.insert_or_assign(p.peer_id, std::move(p));
        break;
      }
    }
  }
  return Status();
}

}  // namespace

// ---- names ----

const char* pool_mode_name(PoolMode m) {
  switch (m) {
    case PoolMode::Session:
      return "session";
    case PoolMode::Transaction:
      return "transaction";
    case PoolMode::Statement:
      return "statement";
  }
  return "session";
}

std::optional<PoolMode> parse_pool_mode(std::string_view s) {
  s = trim(s);
  if (iequals(s, "session")) return PoolMode::Session;
  if (iequals(s, "transaction")) return PoolMode::Transaction;
  if (iequals(s, "statement")) return PoolMode::Statement;
  return std::nullopt;
}

const char* auth_type_name(AuthType t) {
  switch (t) {
    case AuthType::Any:
      return "any";
    case AuthType::Trust:
      return "trust";
    case AuthType::Plain:
      return "plain";
    case AuthType::Md5:
      return "md5";
    case AuthType::ScramSha256:
      return "scram-sha-256";
    case AuthType::Cert:
      return "cert";
    case AuthType::Hba:
      return "hba";
    case AuthType::Peer:
      return "peer";
  }
  return "md5";
}

std::optional<AuthType> parse_auth_type(std::string_view s) {
  s = trim(s);
  static constexpr AuthType kAll[] = {AuthType::Any, AuthType::Trust,       AuthType::Plain,
                                      AuthType::Md5, AuthType::ScramSha256, AuthType::Cert,
                                      AuthType::Hba, AuthType::Peer};
  for (AuthType t : kAll) {
    if (iequals(s, auth_type_name(t))) return t;
  }
  return std::nullopt;
}

// ---- value parsers ----

std::optional<bool> parse_bool_value(std::string_view s) {
  s = trim(s);
  if (iequals(s, "1") || iequals(s, "yes") || iequals(s, "on") || iequals(s, "true")) return true;
  if (iequals(s, "0") || iequals(s, "no") || iequals(s, "off") || iequals(s, "false")) {
    return false;
  }
  return std::nullopt;
}

std::optional<long long> parse_int_value(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  long long v = 0;
  auto res = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_seconds_value(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  double v = 0;
  auto res = std::from_chars(s.data(), s.data() + s.size(), v, std::chars_format::general);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) return std::nullopt;
  if (!std::isfinite(v) || v < 0 || v > kMaxSeconds) return std::nullopt;
  v = std::round(v * 1e6) / 1e6;  // timers have microsecond resolution
  return v == 0 ? 0.0 : v;        // no "-0"
}

// ---- the table's public face ----

int Config::effective_workers() const {
  return choose_workers(workers, machine_cpus()).count;
}

const std::vector<SettingInfo>& settings_table() {
  static const std::vector<SettingInfo> table = [] {
    std::vector<SettingInfo> t;
    t.reserve(std::size(kRows));
    for (const Row& r : kRows) t.push_back(r.info);
    return t;
  }();
  return table;
}

const SettingInfo* find_setting(std::string_view name) {
  const Row* r = find_row(trim(name));
  if (r == nullptr) return nullptr;
  return &settings_table()[static_cast<size_t>(r - kRows)];
}

std::optional<std::string> setting_value(const Config& c, std::string_view name) {
  const Row* r = find_row(trim(name));
  if (r == nullptr) return std::nullopt;
  return row_value(c, *r);
}

Status set_setting(Config& c, std::string_view name, std::string_view value) {
  const Row* r = find_row(trim(name));
  if (r == nullptr) return Status::error("unknown setting '" + std::string(name) + "'");
  return set_row(c, *r, value);
}

std::vector<std::string> settings_needing_restart(const Config& a, const Config& b) {
  std::vector<std::string> out;
  for (const Row& r : kRows) {
    if (!r.info.reloadable && row_value(a, r) != row_value(b, r)) out.emplace_back(r.info.name);
  }
  return out;
}

// ---- files ----

Result<std::string> read_config_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error("cannot open '" + path + "': " + std::strerror(errno));
  Fd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return Status::error("cannot stat '" + path + "': " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return Status::error("'" + path + "' is not a regular file");
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::error("cannot read '" + path + "': " + std::strerror(errno));
    }
    if (n == 0) break;
    size_t got = static_cast<size_t>(n);
    if (got > kMaxConfigFileBytes - out.size()) {
      return Status::error("'" + path + "' is larger than 64 MiB");
    }
    out.append(buf, got);
  }
  return out;
}

Status parse_config_text(Config& c, std::string_view text, const std::string& path, int depth) {
  if (depth < 0 || depth > kMaxIncludeDepth) {
    return Status::error(path + ": %include nested more than " + std::to_string(kMaxIncludeDepth) +
                         " deep");
  }
  Section section = Section::None;
  return parse_ini(c, text, path, depth, section);
}

Result<std::shared_ptr<Config>> load_config(const std::string& path) {
  auto c = std::make_shared<Config>();
  c->config_file = path;
  Result<std::string> text = read_config_file(path);
  if (!text) return text.status();
  Status st = parse_config_text(*c, *text, path);
  if (!st) return st;
  if (!c->auth_file.empty()) {
    Result<Userlist> users = load_userlist(c->auth_file, &c->warnings);
    if (!users) return users.status();
    c->userlist = std::move(*users);
  }
  return std::shared_ptr<Config>(std::move(c));
}

Status load_hba_rules(const Config& c, std::shared_ptr<const HbaFile>* hba,
                      std::shared_ptr<const IdentFile>* ident) {
  hba->reset();
  ident->reset();
  if (c.auth_type != AuthType::Hba) return Status();
  if (c.auth_hba_file.empty()) return Status::error("auth_type = hba needs auth_hba_file");
  Result<std::string> text = read_config_file(c.auth_hba_file);
  if (!text) return text.status();
  HbaLoader loader = [](const std::string& path) -> std::optional<std::string> {
    Result<std::string> t = read_config_file(path);
    if (!t) return std::nullopt;
    return std::move(*t);
  };
  auto file = std::make_shared<HbaFile>(parse_hba(*text, c.auth_hba_file, loader));
  auto where = [](const std::string& path, int line) {
    return path + ":" + std::to_string(line) + ": ";
  };
  if (file->error_count > 0 && !file->errors.empty()) {
    const HbaProblem& p = file->errors.front();
    std::string more = file->error_count > 1
                           ? " (and " + std::to_string(file->error_count - 1) + " more)"
                           : std::string();
    return Status::error(where(c.auth_hba_file, p.line) + p.message + more +
                         "; the hba file is refused as a whole (a skipped line could let in "
                         "what it was meant to refuse)");
  }
  if (!file->warnings.empty()) {
    const HbaProblem& p = file->warnings.front();
    return Status::error(where(c.auth_hba_file, p.line) + p.message + "; the hba file is refused");
  }
  std::shared_ptr<IdentFile> maps;
  for (const HbaRule& r : file->rules) {
    if (r.map.empty()) continue;
    if (maps == nullptr) {
      if (c.auth_ident_file.empty())
        return Status::error(where(c.auth_hba_file, r.line) + "map=" + r.map +
                             " needs auth_ident_file");
      Result<std::string> itext = read_config_file(c.auth_ident_file);
      if (!itext) return itext.status();
      maps = std::make_shared<IdentFile>(parse_ident(*itext));
      if (!maps->errors.empty()) {
        const IdentProblem& p = maps->errors.front();
        return Status::error(where(c.auth_ident_file, p.line) + p.message +
                             "; the ident file is refused");
      }
    }
    if (!maps->has_map(r.map))
      return Status::error(where(c.auth_hba_file, r.line) + "map \"" + r.map + "\" is not in " +
                           c.auth_ident_file);
  }
  *hba = std::move(file);
  *ident = std::move(maps);
  return Status();
}

LogSettings log_settings(const Config& c) {
  LogSettings ls;
  ls.logfile = c.logfile;
  ls.verbose = c.verbose;
  ls.format = c.log_format == "json" ? LogFormat::Json : LogFormat::Text;
  ls.syslog = SyslogSettings{c.syslog, c.syslog_ident, c.syslog_facility};
  return ls;
}

}  // namespace pgsluice
