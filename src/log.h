// Logging: PgBouncer-style lines to stderr, the logfile and syslog, with a connection prefix.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgsluice {

enum class LogLevel : int { Fatal = 0, Error = 1, Warning = 2, Log = 3, Debug = 4, Noise = 5 };

// Line format of stderr and the logfile (the log_format setting; syslog lines are always text).
enum class LogFormat : int {
  Text,  // PgBouncer's "2026-11-23 22:56:42.123 UTC [pid] LEVEL text"
  Json,  // {"ts":"2026-11-23T22:56:42.123Z","pid":1,"level":"LOG","msg":"text"}
};

struct SyslogSettings {
  bool enabled = false;             // also send every line to syslog(3)
  std::string ident = "pgbouncer";  // openlog() ident; empty means "unnamed"
  std::string facility = "daemon";  // unknown names warn and use daemon, as PgBouncer does
};

struct LogSettings {
  std::string logfile;
  int verbose = 0;            // 0: LOG and above; 1: DEBUG; 2+: NOISE
  std::optional<bool> quiet;  // -q: nothing to stderr; left unset, it keeps its value
  // Left unset, these keep their current value (the console's SET logfile/verbose).
  std::optional<LogFormat> format;       // starts as Text
  std::optional<SyslogSettings> syslog;  // starts disabled
};

// (Re)opens the logfile, applies the settings and, when syslog is set, closes and reopens
// the syslog connection. Thread-safe.
bool log_configure(const LogSettings& s);
bool log_enabled(LogLevel level);
// The process id the lines carry: getpid() once, and again after a fork.
int log_pid();
// One line in the configured format to stderr and the logfile (one write each), and to syslog
// when enabled. Thread-safe.
void log_line(LogLevel level, std::string_view text);

// A worker thread batches its LOG, DEBUG and NOISE lines (a login writes two): from
// log_batch_begin() on, such a line waits in a buffer of this thread, and the buffer is
// written (one write to stderr and one to the logfile, whatever the number of lines) by
// log_batch_flush(), which the worker calls once per loop turn, when no socket event of
// that turn is left, and with its queued replies (Worker::flush_queued, at least every
// 64 socket callbacks under a load that leaves no such moment). `arm(arg)` is called when a line
// goes into an empty buffer, to schedule that flush. A WARNING or worse first writes what waits,
// then itself, at once; so does a full buffer. Lines reach syslog at once, one by one. Only this
// thread's lines wait: another thread's lines may come between two lines of this one written
// together.
void log_batch_begin(void (*arm)(void*), void* arg);
void log_batch_flush();
void log_batch_end();  // flushes and stops batching on this thread

// printf-style helpers.
void log_fmt(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_ERROR(...) ::pgsluice::log_fmt(::pgsluice::LogLevel::Error, __VA_ARGS__)
#define LOG_WARN(...) ::pgsluice::log_fmt(::pgsluice::LogLevel::Warning, __VA_ARGS__)
#define LOG_INFO(...) ::pgsluice::log_fmt(::pgsluice::LogLevel::Log, __VA_ARGS__)
#define LOG_DEBUG(...)                                               \
  do {                                                               \
    if (::pgsluice::log_enabled(::pgsluice::LogLevel::Debug))        \
      ::pgsluice::log_fmt(::pgsluice::LogLevel::Debug, __VA_ARGS__); \
  } while (0)

// An internal invariant broke: logged and counted, never fatal in release builds.
void log_bug(const char* file, int line, const char* what);
#define PGS_BUG(what) ::pgsluice::log_bug(__FILE__, __LINE__, what)

// ---- pure helpers (exposed for the unit tests) ----

// "FATAL", "ERROR", "WARNING", "LOG", "DEBUG", "NOISE".
const char* log_level_name(LogLevel level);
// `s` as the inside of a JSON string: '"' and '\' backslashed, bytes below 0x20 and 0x7f as
// \u00XX, valid UTF-8 passed through, each byte of invalid UTF-8 as \ufffd.
std::string log_json_escape(std::string_view s);
// `s` with every control byte (below 0x20, and 0x7f) written as an escape: \n, \r, \t or
// \xNN. Everything else, invalid UTF-8 included, is kept. Text-format and syslog lines pass
// through it, so a name or message from the network can never end a line or forge another.
std::string log_escape_controls(std::string_view s);
// One complete line, '\n' included; unix_ms is the time in milliseconds since the epoch (UTC).
// Control bytes in `text` are escaped (log_escape_controls).
std::string log_text_line(long long unix_ms, int pid, LogLevel level, std::string_view text);
// The same line written into buf[0..cap) without allocating; its length, or 0 when it does
// not fit (log_text_line then builds it in a string).
size_t log_text_line_into(char* buf, size_t cap, long long unix_ms, int pid, LogLevel level,
                          std::string_view text);
std::string log_json_line(long long unix_ms, int pid, LogLevel level, std::string_view text);
// syslog(3) facility for auth, authpriv, daemon, user, local0..local7 (case-insensitive).
std::optional<int> syslog_facility_from_name(std::string_view name);
// syslog(3) priority: FATAL LOG_CRIT, ERROR LOG_ERR, WARNING LOG_WARNING, LOG LOG_INFO,
// DEBUG and NOISE LOG_DEBUG.
int syslog_priority(LogLevel level);

}  // namespace pgsluice
