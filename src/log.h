// Logging: PgBouncer-style lines to stderr and the logfile, with a connection prefix.
#pragma once

#include <string>
#include <string_view>

namespace pgsluice {

enum class LogLevel : int { Fatal = 0, Error = 1, Warning = 2, Log = 3, Debug = 4, Noise = 5 };

struct LogSettings {
  std::string logfile;
  int verbose = 0;     // 0: LOG and above; 1: DEBUG; 2+: NOISE
  bool quiet = false;  // -q: nothing to stderr
};

// (Re)opens the logfile and applies the settings. Thread-safe.
bool log_configure(const LogSettings& s);
bool log_enabled(LogLevel level);
// One line: "2026-11-23 22:56:42.123 UTC [pid] LEVEL text". Thread-safe (one write per line).
void log_line(LogLevel level, std::string_view text);

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

}  // namespace pgsluice
