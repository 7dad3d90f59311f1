// Log output: log_format = json lines in the logfile, and syslog = 1 through a stand-in /dev/log.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    if (nl > start) out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

// Minimal JSON reader for one log line: a flat object whose values are strings or integers.
// Returns false on anything else (including bad escapes and trailing bytes).
class FlatJson {
 public:
  explicit FlatJson(std::string_view s) : s_(s) {}

  bool parse(std::map<std::string, std::string>* out) {
    skip_ws();
    if (!eat('{')) return false;
    skip_ws();
    if (eat('}')) return done();
    for (;;) {
      std::string key, value;
      skip_ws();
      if (!string(&key)) return false;
      skip_ws();
      if (!eat(':')) return false;
      skip_ws();
      if (peek() == '"') {
        if (!string(&value)) return false;
      } else if (!number(&value)) {
        return false;
      }
      if (!out->emplace(key, value).second) return false;  // duplicate key
      skip_ws();
      if (eat(',')) continue;
      if (eat('}')) return done();
      return false;
    }
  }

 private:
  std::string_view s_;
  size_t i_ = 0;

  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool eat(char c) {
    if (peek() != c || i_ >= s_.size()) return false;
    i_++;
    return true;
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) i_++;
  }
  bool done() {
    skip_ws();
    return i_ == s_.size();
  }
  bool number(std::string* out) {
    size_t start = i_;
    if (peek() == '-') i_++;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    if (i_ == start || (i_ == start + 1 && s_[start] == '-')) return false;
    *out = std::string(s_.substr(start, i_ - start));
    return true;
  }
  bool string(std::string* out) {
    if (!eat('"')) return false;
    while (i_ < s_.size()) {
      unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return true;
      if (c < 0x20) return false;  // raw control characters are not allowed
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          if (s_.size() - i_ < 4) return false;
          for (int k = 0; k < 4; k++) {
            if (!isxdigit(static_cast<unsigned char>(s_[i_ + static_cast<size_t>(k)])))
              return false;
          }
          out->append("\\u").append(s_.substr(i_, 4));  // kept escaped: enough for the checks
          i_ += 4;
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }
};

// Waits until the logfile holds `needle` (or timeout); returns the logfile text.
std::string wait_for_log(const Pooler& p, const std::string& needle, double timeout_s = 5) {
  auto start = Clock::now();
  std::string lf;
  while (seconds_since(start) < timeout_s) {
    lf = read_file(p.dir() + "/pgsluice.log");
    if (lf.find(needle) != std::string::npos) break;
    sleep_ms(50);
  }
  return lf;
}

bool is_iso_utc_ms(const std::string& ts) {
  // 2026-11-23T22:56:42.123Z
  if (ts.size() != 24) return false;
  const char* shape = "dddd-dd-ddTdd:dd:dd.dddZ";
  for (size_t k = 0; k < ts.size(); k++) {
    if (shape[k] == 'd' ? !isdigit(static_cast<unsigned char>(ts[k])) : ts[k] != shape[k])
      return false;
  }
  return true;
}

// A datagram socket bound at /dev/log for the length of a test, unlinked again however the
// test ends. Only used when no syslog daemon owns /dev/log.
struct FakeDevLog {
  int fd = -1;
  bool bound = false;
  FakeDevLog() {
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, "/dev/log");
    if (bind(fd, reinterpret_cast<sockaddr*>(&un), sizeof un) != 0) return;
    bound = true;
    chmod("/dev/log", 0666);  // pgsluice may run as another user (PGSLUICE_RUN_AS)
    timeval tv{0, 200 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~FakeDevLog() {
    if (bound) unlink("/dev/log");
    if (fd >= 0) close(fd);
  }
  FakeDevLog(const FakeDevLog&) = delete;
  FakeDevLog& operator=(const FakeDevLog&) = delete;

  // Datagrams received until one contains `needle` or timeout_s passes.
  std::vector<std::string> read_until(const std::string& needle, double timeout_s) {
    std::vector<std::string> got;
    auto start = Clock::now();
    char buf[8192];
    while (seconds_since(start) < timeout_s) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) continue;
      got.emplace_back(buf, static_cast<size_t>(n));
      if (got.back().find(needle) != std::string::npos) break;
    }
    return got;
  }
};

}  // namespace

TEST_CASE("logging: log_format = json writes one JSON object per line, and reload switches back") {
  if (skip_in_direct_mode("log_format is a pooler setting")) return;
  Options o;
  o.extra_pgbouncer = "log_format = json\n";
  Pooler p(o);
  int port = 0;
  {
    Conn c = connect(p.conninfo());
    port = local_port(c.get());
    CHECK(scalar(c.get(), "select 'a \"quoted\" \\\\ value'") == "a \"quoted\" \\\\ value");
  }
  std::string addr = "@127.0.0.1:" + std::to_string(port);
  std::string lf = wait_for_log(p, addr + " closing because");
  INFO("logfile:\n" << lf);
  std::vector<std::string> lines = split_lines(lf);
  REQUIRE(!lines.empty());
  bool login = false, disconnect = false;
  for (const std::string& line : lines) {
    CAPTURE(line);
    std::map<std::string, std::string> obj;
    REQUIRE(FlatJson(line).parse(&obj));
    CHECK(obj.size() == 4);
    REQUIRE(obj.count("ts") == 1);
    REQUIRE(obj.count("pid") == 1);
    REQUIRE(obj.count("level") == 1);
    REQUIRE(obj.count("msg") == 1);
    CHECK(is_iso_utc_ms(obj["ts"]));
    CHECK(obj["pid"] == std::to_string(p.pid()));
    CHECK((obj["level"] == "LOG" || obj["level"] == "WARNING" || obj["level"] == "ERROR" ||
           obj["level"] == "DEBUG" || obj["level"] == "NOISE" || obj["level"] == "FATAL"));
    if (obj["msg"].find(addr + " login attempt: db=testdb user=md5user") != std::string::npos)
      login = true;
    if (obj["msg"].find(addr + " closing because") != std::string::npos) disconnect = true;
    CHECK(obj["msg"].find("md5pass") == std::string::npos);
  }
  CHECK(login);
  CHECK(disconnect);

  // RELOAD with log_format = text: the next lines are PgBouncer's again.
  std::string ini_path = p.dir() + "/pgsluice.ini";
  std::string ini = read_file(ini_path);
  size_t at = ini.find("log_format = json");
  REQUIRE(at != std::string::npos);
  ini.replace(at, std::strlen("log_format = json"), "log_format = text");
  write_file(ini_path, ini, 0600);
  struct stat st {};
  REQUIRE(stat(p.dir().c_str(), &st) == 0);
  if (chown(ini_path.c_str(), st.st_uid, st.st_gid) != 0) {
    // same owner as the folder (pgsluice may run as another user); best effort
  }
  REQUIRE(kill(p.pid(), SIGHUP) == 0);
  sleep_ms(300);
  {
    Conn c = connect(p.conninfo());
    port = local_port(c.get());
  }
  addr = "@127.0.0.1:" + std::to_string(port);
  lf = wait_for_log(p, addr + " login attempt");
  std::string last;
  for (const std::string& line : split_lines(lf)) {
    if (line.find(addr + " login attempt") != std::string::npos) last = line;
  }
  INFO("logfile:\n" << lf);
  CHECK(last.find(" UTC [" + std::to_string(p.pid()) + "] LOG C-") != std::string::npos);
  CHECK(last.rfind("{", 0) == std::string::npos);
}

TEST_CASE("logging: syslog = 1 sends LEVEL text to /dev/log with ident, pid and facility") {
  if (skip_in_direct_mode("syslog is a pooler setting")) return;
  struct stat st {};
  if (lstat("/dev/log", &st) == 0) {
    MESSAGE("skipped: /dev/log exists (a syslog daemon owns it); not touching the host's logging");
    return;
  }
  FakeDevLog devlog;
  if (!devlog.bound) {
    MESSAGE("skipped: cannot bind a socket at /dev/log: " << strerror(errno));
    return;
  }
  std::string ident = "pgsluice-it-" + std::to_string(getpid());
  Options o;
  o.extra_pgbouncer = "syslog = 1\nsyslog_ident = " + ident + "\nsyslog_facility = local3\n";
  Pooler p(o);
  std::string tag = ident + "[" + std::to_string(p.pid()) + "]: ";
  // The start-up line, at LOG_LOCAL3 | LOG_INFO = <158>.
  std::vector<std::string> got = devlog.read_until(" listening on ", 10);
  std::string all;
  for (const std::string& d : got) all += d + "\n";
  INFO("datagrams:\n" << all);
  REQUIRE(!got.empty());
  const std::string& line = got.back();
  CHECK(line.find(" listening on ") != std::string::npos);
  CHECK(line.rfind("<158>", 0) == 0);
  CHECK(line.find(tag + "LOG ") != std::string::npos);
  CHECK(line.find(" UTC [") == std::string::npos);  // syslog adds its own time and pid

  // A client login shows up too.
  int port = 0;
  {
    Conn c = connect(p.conninfo());
    port = local_port(c.get());
  }
  std::string needle = "@127.0.0.1:" + std::to_string(port) + " login attempt";
  got = devlog.read_until(needle, 10);
  REQUIRE(!got.empty());
  CHECK(got.back().find(needle) != std::string::npos);
  CHECK(got.back().find(tag + "LOG C-") != std::string::npos);
}

}  // namespace it
