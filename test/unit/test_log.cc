// Unit tests for the log line formats, JSON escaping and the syslog mappings (log.h).
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

// log.h's LOG_INFO and LOG_DEBUG macros take the names of two syslog priorities.
namespace {
constexpr int kSyslogInfo = LOG_INFO;
constexpr int kSyslogDebug = LOG_DEBUG;
}  // namespace
#undef LOG_INFO
#undef LOG_DEBUG

#include "log.h"

namespace pgsluice {

namespace {
// 2026-11-23 22:56:42.123 UTC
constexpr long long kWhen = 1795474602123LL;
}  // namespace

TEST_CASE("log: text line keeps PgBouncer's format") {
  CHECK(log_text_line(kWhen, 4242, LogLevel::Log, "C-0x1: db/u@1.2.3.4:5 login attempt") ==
        "2026-11-23 22:56:42.123 UTC [4242] LOG C-0x1: db/u@1.2.3.4:5 login attempt\n");
  CHECK(log_text_line(kWhen + 877, 1, LogLevel::Warning, "") ==
        "2026-11-23 22:56:43.000 UTC [1] WARNING \n");
}

TEST_CASE("log: the buffered text line is the same line, across seconds, or 0 when too long") {
  char buf[256];
  for (long long at : {kWhen, kWhen + 1, kWhen + 999, kWhen + 1000, kWhen - 1, -1LL, 0LL}) {
    const std::pair<std::string_view, std::string_view> cases[] = {
        {"C-0x1: db/u login", "C-0x1: db/u login"},
        {std::string_view("a\nb\x01\x7f\tc\r\xc3\xa9", 11), "a\\nb\\x01\\x7f\\tc\\r\xc3\xa9\\x00"}};
    for (const auto& [t, want] : cases) {
      size_t n = log_text_line_into(buf, sizeof buf, at, 42, LogLevel::Log, t);
      REQUIRE(n > 0);
      std::string_view got(buf, n);
      CHECK(got.substr(got.find("LOG ") + 4) == std::string(want) + "\n");
      CHECK(log_escape_controls(t) == want);
      CHECK(std::string(buf, n) == log_text_line(at, 42, LogLevel::Log, t));
    }
  }
  CHECK(std::string(buf, log_text_line_into(buf, sizeof buf, kWhen, 4242, LogLevel::Log, "x")) ==
        "2026-11-23 22:56:42.123 UTC [4242] LOG x\n");
  CHECK(std::string(buf, log_text_line_into(buf, sizeof buf, -1, 1, LogLevel::Log, "")) ==
        "1969-12-31 23:59:59.999 UTC [1] LOG \n");
  std::string big(300, '\x01');  // 1200 bytes escaped: too long for buf
  CHECK(log_text_line_into(buf, sizeof buf, kWhen, 1, LogLevel::Log, big) == 0);
  std::string line = log_text_line(kWhen, 1, LogLevel::Log, std::string(5000, 'y'));
  CHECK(line.size() == std::string("2026-11-23 22:56:42.123 UTC [1] LOG \n").size() + 5000);
}

TEST_CASE("log: the pid lines carry is asked once, and is the child's after a fork") {
  CHECK(log_pid() == static_cast<int>(getpid()));
  CHECK(log_pid() == static_cast<int>(getpid()));  // kept
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int p = log_pid();
    ssize_t w = write(fds[1], &p, sizeof p);
    _exit(w == static_cast<ssize_t>(sizeof p) ? 0 : 1);
  }
  close(fds[1]);
  int seen = 0;
  ssize_t got = read(fds[0], &seen, sizeof seen);
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(got == static_cast<ssize_t>(sizeof seen));
  CHECK(seen == static_cast<int>(child));
  CHECK(log_pid() == static_cast<int>(getpid()));
}

namespace {
std::string file_text(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char b[4096];
    size_t n;
    while ((n = std::fread(b, 1, sizeof b, f)) > 0) out.append(b, n);
    std::fclose(f);
  }
  return out;
}
size_t lines_in(const std::string& s) {
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}
}  // namespace

TEST_CASE("log: a worker's LOG lines wait for the end of its loop turn; a WARNING does not") {
  char dir[] = "/tmp/pgsluice-logbatch-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/batch.log";
  LogSettings ls;
  ls.logfile = path;
  ls.quiet = true;
  REQUIRE(log_configure(ls));
  int armed = 0;
  log_batch_begin([](void* a) { ++*static_cast<int*>(a); }, &armed);
  LOG_INFO("one");
  LOG_INFO("two");
  CHECK(file_text(path).empty());  // waiting
  CHECK(armed == 1);               // the flush was asked for once
  LOG_WARN("three");               // writes what waits, then itself
  std::string t = file_text(path);
  CHECK(lines_in(t) == 3);
  CHECK(t.find("LOG one") < t.find("LOG two"));
  CHECK(t.find("LOG two") < t.find("WARNING three"));
  LOG_INFO("four");
  CHECK(armed == 2);
  CHECK(lines_in(file_text(path)) == 3);
  log_batch_flush();
  CHECK(lines_in(file_text(path)) == 4);
  log_batch_flush();  // nothing waits: nothing written
  CHECK(lines_in(file_text(path)) == 4);
  // A full buffer is written before the line that would overflow it.
  std::string chunk(1000, 'x');
  int flushes = 0;
  for (int i = 0; i < 40; i++) {
    size_t before = lines_in(file_text(path));
    LOG_INFO("%d %s", i, chunk.c_str());
    size_t after = lines_in(file_text(path));
    if (after != before) {
      flushes++;
      CHECK(after - before > 10);                  // a buffer's worth (16 KiB) at a time
      CHECK(after - 4 == static_cast<size_t>(i));  // everything before line i
    }
  }
  CHECK(flushes == 2);
  log_batch_end();  // writes the rest; lines are written at once from then on
  CHECK(lines_in(file_text(path)) == 44);
  LOG_INFO("five");
  CHECK(lines_in(file_text(path)) == 45);
  CHECK(armed == 2 + 1 + flushes);  // one per batch begun; none after log_batch_end
  // Another thread's lines do not wait for this thread's batch.
  log_batch_begin([](void*) {}, nullptr);
  LOG_INFO("six");
  std::thread([] { LOG_INFO("seven"); }).join();
  t = file_text(path);
  CHECK(t.find("LOG seven") != std::string::npos);
  CHECK(t.find("LOG six") == std::string::npos);
  log_batch_end();
  t = file_text(path);
  CHECK(t.find("LOG seven") < t.find("LOG six"));
  ls.logfile.clear();
  ls.quiet = false;
  REQUIRE(log_configure(ls));
  std::remove(path.c_str());
  rmdir(dir);
}

TEST_CASE("log: control bytes are escaped, so one event is one text line") {
  CHECK(log_escape_controls("plain name") == "plain name");
  CHECK(log_escape_controls("") == "");
  CHECK(log_escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td");
  CHECK(log_escape_controls(std::string_view("x\0y\x1b[31m\x7fz", 10)) == "x\\x00y\\x1b[31m\\x7fz");
  // Bytes above 0x7f (UTF-8 or not) and quotes are kept as they are.
  CHECK(log_escape_controls("caf\xc3\xa9 \"q\" \xff") == "caf\xc3\xa9 \"q\" \xff");
  // A user name that tries to forge a second log line stays inside the first one.
  std::string forged = "C-0x1: db/evil\n2026-11-23 22:56:42.123 UTC [1] LOG forged@1.2.3.4:5";
  std::string l = log_text_line(kWhen, 7, LogLevel::Log, forged);
  CHECK(l.find('\n') == l.size() - 1);
  CHECK(l ==
        "2026-11-23 22:56:42.123 UTC [7] LOG C-0x1: db/evil\\n2026-11-23 22:56:42.123 UTC [1] "
        "LOG forged@1.2.3.4:5\n");
}

TEST_CASE("log: json line has ts, pid, level and msg") {
  CHECK(log_json_line(kWhen, 4242, LogLevel::Error, "x") ==
        "{\"ts\":\"2026-11-23T22:56:42.123Z\",\"pid\":4242,\"level\":\"ERROR\",\"msg\":\"x\"}\n");
  CHECK(log_json_line(kWhen + 7, 9, LogLevel::Noise, "a \"b\"\nc") ==
        "{\"ts\":\"2026-11-23T22:56:42.130Z\",\"pid\":9,\"level\":\"NOISE\",\"msg\":"
        "\"a \\\"b\\\"\\u000ac\"}\n");
  // Exactly one line, whatever the message holds.
  std::string l = log_json_line(kWhen, 1, LogLevel::Log, "one\ntwo\r\nthree\n");
  CHECK(l.find('\n') == l.size() - 1);
  CHECK(l.find('\r') == std::string::npos);
}

TEST_CASE("log: json escaping of tricky strings") {
  CHECK(log_json_escape("") == "");
  CHECK(log_json_escape("plain text 123 {}[]:,") == "plain text 123 {}[]:,");
  CHECK(log_json_escape("say \"hi\"") == "say \\\"hi\\\"");
  CHECK(log_json_escape("C:\\dir\\") == "C:\\\\dir\\\\");
  CHECK(log_json_escape("\\\"") == "\\\\\\\"");
  CHECK(log_json_escape("a\nb\tc\rd") == "a\\u000ab\\u0009c\\u000dd");
  CHECK(log_json_escape(std::string_view("\0\x01\x1f\x7f", 4)) == "\\u0000\\u0001\\u001f\\u007f");
  CHECK(log_json_escape("\x1b[31mred") == "\\u001b[31mred");
  CHECK(log_json_escape("/ stays") == "/ stays");
}

TEST_CASE("log: json escaping passes UTF-8 through and replaces invalid bytes") {
  // 2-, 3- and 4-byte sequences: é, €, U+2028, 😀
  CHECK(log_json_escape("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(log_json_escape("\xe2\x82\xac 5") == "\xe2\x82\xac 5");
  CHECK(log_json_escape("\xe2\x80\xa8") == "\xe2\x80\xa8");
  CHECK(log_json_escape("\xf0\x9f\x98\x80!") == "\xf0\x9f\x98\x80!");
  // A lone continuation byte, a truncated sequence, an overlong form, a surrogate, > U+10FFFF.
  CHECK(log_json_escape("a\x80z") == "a\\ufffdz");
  CHECK(log_json_escape("\xc3") == "\\ufffd");
  CHECK(log_json_escape("\xe2\x82") == "\\ufffd\\ufffd");
  CHECK(log_json_escape("\xc0\xaf") == "\\ufffd\\ufffd");
  CHECK(log_json_escape("\xed\xa0\x80") == "\\ufffd\\ufffd\\ufffd");
  CHECK(log_json_escape("\xf4\x90\x80\x80") == "\\ufffd\\ufffd\\ufffd\\ufffd");
  CHECK(log_json_escape("\xff\"") == "\\ufffd\\\"");
}

TEST_CASE("log: syslog facility names") {
  CHECK(syslog_facility_from_name("auth") == LOG_AUTH);
  CHECK(syslog_facility_from_name("authpriv") == LOG_AUTHPRIV);
  CHECK(syslog_facility_from_name("daemon") == LOG_DAEMON);
  CHECK(syslog_facility_from_name("user") == LOG_USER);
  CHECK(syslog_facility_from_name("local0") == LOG_LOCAL0);
  CHECK(syslog_facility_from_name("local3") == LOG_LOCAL3);
  CHECK(syslog_facility_from_name("local7") == LOG_LOCAL7);
  CHECK(syslog_facility_from_name("LOCAL5") == LOG_LOCAL5);
  CHECK(syslog_facility_from_name("Daemon") == LOG_DAEMON);
  CHECK(!syslog_facility_from_name(""));
  CHECK(!syslog_facility_from_name("local8"));
  CHECK(!syslog_facility_from_name("kern"));
  CHECK(!syslog_facility_from_name("daemon "));
  CHECK(!syslog_facility_from_name(std::string_view("auth\0", 5)));
}

TEST_CASE("log: level to syslog priority") {
  CHECK(syslog_priority(LogLevel::Fatal) == LOG_CRIT);
  CHECK(syslog_priority(LogLevel::Error) == LOG_ERR);
  CHECK(syslog_priority(LogLevel::Warning) == LOG_WARNING);
  CHECK(syslog_priority(LogLevel::Log) == kSyslogInfo);
  CHECK(syslog_priority(LogLevel::Debug) == kSyslogDebug);
  CHECK(syslog_priority(LogLevel::Noise) == kSyslogDebug);
  CHECK(std::string(log_level_name(LogLevel::Warning)) == "WARNING");
}

}  // namespace pgsluice
