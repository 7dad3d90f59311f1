// Logging: PgBouncer-style lines to stderr, the logfile and syslog, with a connection prefix.
#include "log.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/time.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>

// <syslog.h> redefines LOG_INFO and LOG_DEBUG, which log.h uses for its own macros: keep the
// priorities under other names and drop both macros (this file uses neither meaning again).
namespace {
constexpr int kSyslogInfo = LOG_INFO;
constexpr int kSyslogDebug = LOG_DEBUG;
}  // namespace
#undef LOG_INFO
#undef LOG_DEBUG

namespace pgsluice {
namespace {
// g_mu guards the logfile descriptor and the syslog connection (openlog keeps a pointer to
// g_syslog_ident, so it changes only under the lock, between closelog and openlog).
std::mutex g_mu;
int g_fd = -1;
bool g_syslog = false;
std::atomic<bool> g_syslog_on{false};  // g_syslog, read without the lock
std::string g_syslog_ident;
std::atomic<int> g_verbose{0};
std::atomic<bool> g_quiet{false};
std::atomic<LogFormat> g_format{LogFormat::Text};
std::atomic<long> g_bugs{0};
// The pid every line carries, asked of the kernel once (glibc does not cache it) and again
// in a forked child (-d), not at every line.
std::atomic<int> g_pid{0};

// A worker thread's waiting lines (log_batch_begin).
struct LogBatch {
  bool on = false;
  void (*arm)(void*) = nullptr;
  void* arg = nullptr;
  std::string buf;
};
thread_local LogBatch t_batch;
// A batch is written when the next line would take it past this.
constexpr size_t kBatchBytes = 16384;

// Writes whole lines to stderr (unless quiet) and to the logfile: one write each.
void write_lines(std::string_view lines) {
  if (lines.empty()) return;
  if (!g_quiet.load()) {
    ssize_t r = ::write(STDERR_FILENO, lines.data(), lines.size());
    (void)r;
  }
  std::lock_guard<std::mutex> g(g_mu);
  if (g_fd >= 0) {
    ssize_t r = ::write(g_fd, lines.data(), lines.size());
    (void)r;
  }
}

void forget_pid() {
  g_pid.store(0, std::memory_order_relaxed);
}

// Splits unix_ms into a UTC calendar time and the milliseconds.
void split_time(long long unix_ms, struct tm* tm, int* ms) {
  long long sec = unix_ms / 1000;
  long long rem = unix_ms % 1000;
  if (rem < 0) {
    rem += 1000;
    sec -= 1;
  }
  time_t t = static_cast<time_t>(sec);
  gmtime_r(&t, tm);
  *ms = static_cast<int>(rem);
}

// Length of the valid UTF-8 sequence at s[i], or 0 when the byte there does not start one.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = at(i);
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;  // no overlong forms
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() - i <= need) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k <= need; k++) {
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  }
  return need + 1;
}
}  // namespace

const char* log_level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Fatal:
      return "FATAL";
    case LogLevel::Error:
      return "ERROR";
    case LogLevel::Warning:
      return "WARNING";
    case LogLevel::Log:
      return "LOG";
    case LogLevel::Debug:
      return "DEBUG";
    case LogLevel::Noise:
      return "NOISE";
  }
  return "LOG";
}

std::string log_json_escape(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
      i++;
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\u00";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
      i++;
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      i++;
    } else if (size_t n = utf8_sequence_length(s, i); n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\\ufffd";
      i++;
    }
  }
  return out;
}

namespace {

// Appends `text` with its control bytes escaped (log_escape_controls) at buf[n..cap); false
// when it does not fit (each byte takes at most 4).
bool put_escaped(char* buf, size_t cap, size_t& n, std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  for (char ch : text) {
    if (cap - n < 4) return false;
    auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      buf[n++] = ch;
    } else if (c == '\n' || c == '\r' || c == '\t') {
      buf[n++] = '\\';
      buf[n++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
    } else {
      buf[n++] = '\\';
      buf[n++] = 'x';
      buf[n++] = kHex[c >> 4];
      buf[n++] = kHex[c & 0xf];
    }
  }
  return true;
}

}  // namespace

std::string log_escape_controls(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && static_cast<unsigned char>(s[i]) >= 0x20 && s[i] != 0x7f) i++;
  if (i == s.size()) return std::string(s);
  std::string out(i + 4 * (s.size() - i), '\0');
  s.copy(out.data(), i);
  size_t n = i;
  put_escaped(out.data(), out.size(), n, s.substr(i));
  out.resize(n);
  return out;
}

size_t log_text_line_into(char* buf, size_t cap, long long unix_ms, int pid, LogLevel level,
                          std::string_view text) {
  // The calendar part changes once a second: each thread keeps it for its current second.
  thread_local long long t_second = LLONG_MIN;
  thread_local char t_date[32];
  thread_local size_t t_date_len = 0;
  long long second = unix_ms / 1000 - (unix_ms % 1000 < 0 ? 1 : 0);
  int ms = static_cast<int>(unix_ms - second * 1000);
  if (second != t_second) {
    struct tm tm;
    int unused = 0;
    split_time(second * 1000, &tm, &unused);
    t_date_len = std::strftime(t_date, sizeof t_date, "%Y-%m-%d %H:%M:%S", &tm);
    t_second = second;
  }
  if (cap < t_date_len + 64) return 0;
  std::memcpy(buf, t_date, t_date_len);
  size_t n = t_date_len;
  int h = std::snprintf(buf + n, cap - n, ".%03d UTC [%d] %s ", ms, pid, log_level_name(level));
  if (h < 0 || static_cast<size_t>(h) >= cap - n) return 0;
  n += static_cast<size_t>(h);
  if (!put_escaped(buf, cap - 1, n, text)) return 0;  // room kept for the newline
  buf[n++] = '\n';
  return n;
}

std::string log_text_line(long long unix_ms, int pid, LogLevel level, std::string_view text) {
  // Room for the longest date and head, every byte escaped, and the newline.
  std::string line(96 + 4 * text.size() + 1, '\0');
  line.resize(log_text_line_into(line.data(), line.size(), unix_ms, pid, level, text));
  return line;
}

std::string log_json_line(long long unix_ms, int pid, LogLevel level, std::string_view text) {
  struct tm tm;
  int ms = 0;
  split_time(unix_ms, &tm, &ms);
  char head[128];
  size_t n = std::strftime(head, sizeof head, "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(head + n, sizeof head - n, ".%03dZ\",\"pid\":%d,\"level\":\"%s\",\"msg\":\"", ms,
                pid, log_level_name(level));
  std::string line = head;
  line += log_json_escape(text);
  line += "\"}\n";
  return line;
}

std::optional<int> syslog_facility_from_name(std::string_view name) {
  struct Facility {
    const char* name;
    int code;
  };
  static const Facility kFacilities[] = {
      {"auth", LOG_AUTH},     {"authpriv", LOG_AUTHPRIV}, {"daemon", LOG_DAEMON},
      {"user", LOG_USER},     {"local0", LOG_LOCAL0},     {"local1", LOG_LOCAL1},
      {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},     {"local4", LOG_LOCAL4},
      {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},     {"local7", LOG_LOCAL7},
  };
  for (const Facility& f : kFacilities) {
    std::string_view want = f.name;
    if (want.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; i++) {
      char ch = name[i];
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
      same = ch == want[i];
    }
    if (same) return f.code;
  }
  return std::nullopt;
}

int syslog_priority(LogLevel level) {
  switch (level) {
    case LogLevel::Fatal:
      return LOG_CRIT;
    case LogLevel::Error:
      return LOG_ERR;
    case LogLevel::Warning:
      return LOG_WARNING;
    case LogLevel::Log:
      return kSyslogInfo;
    case LogLevel::Debug:
    case LogLevel::Noise:
      return kSyslogDebug;
  }
  return kSyslogInfo;
}

bool log_configure(const LogSettings& s) {
  int fd = -1;
  if (!s.logfile.empty()) {
    fd = ::open(s.logfile.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return false;
  }
  std::optional<int> facility;
  if (s.syslog) facility = syslog_facility_from_name(s.syslog->facility);
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_fd >= 0) ::close(g_fd);
    g_fd = fd;
    g_verbose = s.verbose;
    if (s.quiet) g_quiet = *s.quiet;
    if (s.format) g_format = *s.format;
    if (s.syslog) {
      if (g_syslog) closelog();
      g_syslog = s.syslog->enabled;
      g_syslog_on.store(g_syslog);
      if (g_syslog) {
        g_syslog_ident = s.syslog->ident.empty() ? "unnamed" : s.syslog->ident;
        openlog(g_syslog_ident.c_str(), LOG_PID, facility.value_or(LOG_DAEMON));
      }
    }
  }
  if (s.syslog && s.syslog->enabled && !facility) {
    log_fmt(LogLevel::Warning, "unknown syslog_facility \"%s\", using daemon",
            s.syslog->facility.c_str());
  }
  return true;
}

int log_pid() {
  int pid = g_pid.load(std::memory_order_relaxed);
  if (pid != 0) return pid;
  static const bool fork_hook = pthread_atfork(nullptr, nullptr, forget_pid) == 0;
  pid = static_cast<int>(getpid());
  if (fork_hook) g_pid.store(pid, std::memory_order_relaxed);
  return pid;
}

bool log_enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(LogLevel::Log) + g_verbose.load();
}

void log_line(LogLevel level, std::string_view text) {
  if (!log_enabled(level)) return;
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  long long unix_ms = static_cast<long long>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
  int pid = log_pid();
  // A text line is built in this buffer (a login writes two: no allocation for them).
  char buf[4096];
  std::string_view line;
  std::string long_line;
  size_t n = g_format.load() == LogFormat::Json
                 ? 0
                 : log_text_line_into(buf, sizeof buf, unix_ms, pid, level, text);
  if (n > 0) {
    line = std::string_view(buf, n);
  } else {
    long_line = g_format.load() == LogFormat::Json ? log_json_line(unix_ms, pid, level, text)
                                                   : log_text_line(unix_ms, pid, level, text);
    line = long_line;
  }
  LogBatch& b = t_batch;
  if (b.on && static_cast<int>(level) >= static_cast<int>(LogLevel::Log) &&
      line.size() <= kBatchBytes) {
    if (b.buf.size() + line.size() > kBatchBytes) log_batch_flush();
    if (b.buf.empty() && b.arm != nullptr) b.arm(b.arg);
    b.buf.append(line);
  } else {
    if (b.on) log_batch_flush();  // the lines before this one first
    write_lines(line);
  }
  // syslog adds its own time, ident and pid: the message is "LEVEL text" only.
  if (!g_syslog_on.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> g(g_mu);
  if (g_syslog) {
    std::string safe = log_escape_controls(text);
    syslog(syslog_priority(level), "%s %.*s", log_level_name(level), static_cast<int>(safe.size()),
           safe.data());
  }
}

void log_batch_begin(void (*arm)(void*), void* arg) {
  LogBatch& b = t_batch;
  b.on = true;
  b.arm = arm;
  b.arg = arg;
  b.buf.reserve(kBatchBytes);
}

void log_batch_flush() {
  LogBatch& b = t_batch;
  if (b.buf.empty()) return;
  write_lines(b.buf);
  b.buf.clear();
}

void log_batch_end() {
  log_batch_flush();
  LogBatch& b = t_batch;
  b.on = false;
  b.arm = nullptr;
  b.arg = nullptr;
  std::string().swap(b.buf);
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
