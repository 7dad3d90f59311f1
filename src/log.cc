// Logging: PgBouncer-style lines to stderr and the logfile, with a connection prefix.
#include "log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace pgsluice {
namespace {
std::mutex g_mu;
int g_fd = -1;
std::atomic<int> g_verbose{0};
std::atomic<bool> g_quiet{false};
std::atomic<long> g_bugs{0};

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Fatal: return "FATAL";
    case LogLevel::Error: return "ERROR";
    case LogLevel::Warning: return "WARNING";
    case LogLevel::Log: return "LOG";
    case LogLevel::Debug: return "DEBUG";
    case LogLevel::Noise: return "NOISE";
  }
  return "LOG";
}
}  // namespace

bool log_configure(const LogSettings& s) {
  int fd = -1;
  if (!s.logfile.empty()) {
    fd = ::open(s.logfile.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return false;
  }
  std::lock_guard<std::mutex> g(g_mu);
  if (g_fd >= 0) ::close(g_fd);
  g_fd = fd;
  g_verbose = s.verbose;
  g_quiet = s.quiet;
  return true;
}

bool log_enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(LogLevel::Log) + g_verbose.load();
}

void log_line(LogLevel level, std::string_view text) {
  if (!log_enabled(level)) return;
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char head[96];
  size_t n = std::strftime(head, sizeof head, "%Y-%m-%d %H:%M:%S", &tm);
  std::snprintf(head + n, sizeof head - n, ".%03d UTC [%d] %s ", static_cast<int>(tv.tv_usec / 1000),
                static_cast<int>(getpid()), level_name(level));
  std::string line = head;
  line.append(text);
  line.push_back('\n');
  if (!g_quiet.load()) {
    ssize_t r = ::write(STDERR_FILENO, line.data(), line.size());
    (void)r;
  }
  std::lock_guard<std::mutex> g(g_mu);
  if (g_fd >= 0) {
    ssize_t r = ::write(g_fd, line.data(), line.size());
    (void)r;
  }
}

void log_fmt(LogLevel level, const char* fmt, ...) {
  if (!log_enabled(level)) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  log_line(level, buf);
}

void log_bug(const char* file, int line, const char* what) {
  g_bugs++;
  log_fmt(LogLevel::Error, "BUG at %s:%d: %s", file, line, what);
}

}  // namespace pgsluice
