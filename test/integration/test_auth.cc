// Client authentication through pgsluice: md5, scram-sha-256, plain, trust, any; secrets of
// each kind in the auth_file; wrong passwords and unknown users fail alike with 28P01; empty
// secrets and passwords refused; nothing kept for clients that never authenticate; log lines
// that names cannot split; the server login refused when the server skips authentication.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"
#include "password.h"
#include "scram.h"

namespace it {
namespace {

void login_ok(const Pooler& p, const std::string& user, const std::string& password,
              const std::string& expect_user) {
  INFO("login as " << user);
  std::string err;
  Conn c = try_connect(p.conninfo(user, password), &err);
  CHECK_MESSAGE(c != nullptr, "login as " << user << " failed: " << err);
  if (!c) return;
  CHECK(scalar(c.get(), "select current_user") == expect_user);
  CHECK(scalar(c.get(), "select 1 + 1") == "2");
}

// A refused login: libpq fails with "password authentication failed", and the raw protocol
// shows SQLSTATE 28P01 after a wrong answer to the auth challenge.
void login_refused(const Pooler& p, const std::string& user, const std::string& password) {
  INFO("refused login as " << user);
  std::string err;
  Conn c = try_connect(p.conninfo(user, password), &err);
  CHECK_MESSAGE(c == nullptr, "login as " << user << " with a wrong password succeeded");
  CHECK_MESSAGE(err.find("password authentication failed") != std::string::npos, err);
  CHECK_MESSAGE(err.find("does not exist") == std::string::npos, err);
  Msg m = login_with_wrong_password(p.port(), user, "testdb");
  CHECK_MESSAGE(m.type == 'E', "expected ErrorResponse, got type " << int(m.type));
  CHECK(m.field('C') == "28P01");
  CHECK_MESSAGE(m.field('M').find("does not exist") == std::string::npos, m.field('M'));
}

// First authentication request code sent for user (3 cleartext, 5 md5, 10 SASL), -1 if none.
int first_auth_code(const Pooler& p, const std::string& user) {
  Raw r = Raw::tcp(p.port());
  REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", "testdb"}})));
  Msg m;
  if (r.read_msg(&m, 5) != ReadStatus::Ok || m.type != 'R' || m.body.size() < 4) return -1;
  return static_cast<unsigned char>(m.body[3]);
}

TEST_CASE("auth_type=md5: md5, SCRAM and plain secrets") {
  Options o;
  o.auth_type = "md5";
  Pooler p(o);
  login_ok(p, "md5user", "md5pass", "md5user");
  login_ok(p, "scramuser", "scrampass", "scramuser");
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_refused(p, "md5user", "wrong");
  login_refused(p, "scramuser", "wrong");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "nosuchuser", "whatever");
  CHECK(first_auth_code(p, "md5user") == 5);
  // A SCRAM secret cannot answer an md5 challenge: md5 is upgraded to SCRAM.
  CHECK(first_auth_code(p, "scramuser") == 10);
  // The second login of the same SCRAM user (cached keys on the pooler side) works too.
  login_ok(p, "scramuser", "scrampass", "scramuser");
}

TEST_CASE("auth_type=scram-sha-256") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "scram-sha-256";
  Pooler p(o);
  login_ok(p, "scramuser", "scrampass", "scramuser");
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_refused(p, "scramuser", "wrong");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "nosuchuser", "whatever");
  CHECK(first_auth_code(p, "scramuser") == 10);
  CHECK(first_auth_code(p, "plainuser") == 10);
  CHECK(first_auth_code(p, "nosuchuser") == 10);
  // PgBouncer: with scram-sha-256 the auth_file must hold SCRAM or plain secrets; an md5
  // secret cannot verify a SCRAM exchange, so that user cannot log in.
  std::string err;
  Conn c = try_connect(p.conninfo("md5user", "md5pass"), &err);
  CHECK_MESSAGE(c == nullptr, "md5-secret user logged in under auth_type=scram-sha-256");
}

TEST_CASE("auth_type=plain") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "plain";
  Pooler p(o);
  CHECK(first_auth_code(p, "plainuser") == 3);
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_ok(p, "md5user", "md5pass", "md5user");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "md5user", "wrong");
  login_refused(p, "nosuchuser", "whatever");
}

TEST_CASE("auth_type=trust") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "trust";
  Pooler p(o);
  // No password asked; the server login uses the auth_file secret.
  login_ok(p, "md5user", "", "md5user");
  login_ok(p, "md5user", "not-the-password", "md5user");
  login_ok(p, "plainuser", "", "plainuser");
  CHECK(first_auth_code(p, "md5user") == 0);
  // PgBouncer: under trust the user must still exist in auth_file.
  std::string err;
  Conn c = try_connect(p.conninfo("nosuchuser", ""), &err);
  CHECK_MESSAGE(c == nullptr, "unknown user accepted under auth_type=trust");
}

TEST_CASE("auth_type=any with a forced database user") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  const Cluster& cl = cluster();
  Options o;
  o.auth_type = "any";
  o.databases = "testdb = host=127.0.0.1 port=" + std::to_string(cl.port) +
                " dbname=testdb user=md5user password=md5pass\n";
  Pooler p(o);
  login_ok(p, "whoever", "", "md5user");
  login_ok(p, "someone_else", "bogus", "md5user");
  CHECK(first_auth_code(p, "whoever") == 0);
}

// ---------------------------------------------------------------------------------------------
// Empty secrets and empty passwords (PostgreSQL and PgBouncer refuse both for every password
// method).

// Logs in over the raw protocol, answering whatever is asked with `password`: cleartext, md5,
// or a real SCRAM exchange (so an empty password can be proven, which libpq refuses to send).
// Returns the message that ended it: 'R' with code 0 (logged in), 'E', or type 0 on close.
Msg raw_login(int port, const std::string& user, const std::string& db,
              const std::string& password) {
  Raw r = Raw::tcp(port);
  REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", db}})));
  pgsluice::ScramClientSession scram = pgsluice::ScramClientSession::with_password(password);
  for (int step = 0; step < 6; ++step) {
    Msg m;
    if (r.read_msg(&m, 5) != ReadStatus::Ok) return Msg{};
    if (m.type != 'R' || m.body.size() < 4) return m;
    uint32_t code = static_cast<uint32_t>(static_cast<uint8_t>(m.body[3]));
    if (code == 0) return m;
    if (code == 3) {
      REQUIRE(r.send_msg('p', cstr(password)));
    } else if (code == 5) {
      REQUIRE(m.body.size() >= 8);
      std::string resp = pgsluice::md5_response(
          password, user, reinterpret_cast<const uint8_t*>(m.body.data() + 4));
      REQUIRE(r.send_msg('p', cstr(resp)));
    } else if (code == 10) {
      std::string first = scram.client_first();
      REQUIRE(r.send_msg(
          'p', cstr("SCRAM-SHA-256") + be32(static_cast<uint32_t>(first.size())) + first));
    } else if (code == 11) {
      auto fin = scram.handle_server_first(m.body.substr(4));
      REQUIRE(fin);
      REQUIRE(r.send_msg('p', *fin));
    } else if (code == 12) {
      CHECK(scram.verify_server_final(m.body.substr(4)).ok());
    } else {
      return m;
    }
  }
  return Msg{};
}

// Sends `raw_reply` (a complete PasswordMessage body) as the answer to the first auth request.
Msg answer_first_request(int port, const std::string& user, const std::string& raw_reply) {
  Raw r = Raw::tcp(port);
  REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", "testdb"}})));
  Msg m;
  REQUIRE(r.read_msg(&m, 5) == ReadStatus::Ok);
  REQUIRE(m.type == 'R');
  REQUIRE(r.send_msg('p', raw_reply));
  Msg e;
  if (r.read_msg(&e, 5) != ReadStatus::Ok) return Msg{};
  return e;
}

bool logged_in(const Msg& m) {
  return m.type == 'R' && m.body.size() >= 4 && m.body[3] == 0;
}

void check_refused(const Msg& m, const std::string& message) {
  CHECK_MESSAGE(m.type == 'E', "expected ErrorResponse, got type "
                                   << int(m.type) << (logged_in(m) ? " (logged in)" : ""));
  CHECK(m.field('C') == "28P01");
  CHECK(m.field('M') == message);
}

TEST_CASE("empty secret: no password method lets a client in with the empty password") {
  if (skip_in_direct_mode("auth_file is pooler configuration")) return;
  for (const char* method : {"scram-sha-256", "md5", "plain"}) {
    CAPTURE(method);
    Options o;
    o.auth_type = method;
    o.extra_userlist = "\"emptyuser\" \"\"\n";
    Pooler p(o);
    const int port = p.port();
    std::string failed = "password authentication failed for user \"emptyuser\"";
    std::string method_s = method;
    if (method_s == "plain") {
      // The client's empty PasswordMessage: PostgreSQL's own message, whoever the user is.
      check_refused(raw_login(port, "emptyuser", "testdb", ""),
                    "empty password returned by client");
      check_refused(raw_login(port, "plainuser", "testdb", ""),
                    "empty password returned by client");
      check_refused(raw_login(port, "nosuchuser", "testdb", ""),
                    "empty password returned by client");
    } else {
      // A proof of the empty password (SCRAM, or md5 of "" + user) fails like a wrong one.
      check_refused(raw_login(port, "emptyuser", "testdb", ""), failed);
      check_refused(raw_login(port, "scramuser", "testdb", ""),
                    "password authentication failed for user \"scramuser\"");
    }
    // Any other password fails the same way as for an unknown user.
    check_refused(raw_login(port, "emptyuser", "testdb", "x"), failed);
    check_refused(login_with_wrong_password(port, "emptyuser", "testdb"), failed);
    // Real secrets still work over the same raw client.
    if (method_s == "scram-sha-256")
      CHECK(logged_in(raw_login(port, "scramuser", "testdb", "scrampass")));
    else
      CHECK(logged_in(raw_login(port, "plainuser", "testdb", "plainpass")));
  }
}

TEST_CASE("empty password sent by the client for a user with a real secret is refused") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  {
    Options o;
    o.auth_type = "md5";
    Pooler p(o);
    // An empty md5 response (not an md5 of anything).
    check_refused(answer_first_request(p.port(), "md5user", std::string(1, '\0')),
                  "empty password returned by client");
  }
  {
    Options o;
    o.auth_type = "plain";
    Pooler p(o);
    check_refused(answer_first_request(p.port(), "md5user", std::string(1, '\0')),
                  "empty password returned by client");
  }
}

TEST_CASE("auth_type=trust: a user with an empty secret is trusted, as in PgBouncer") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "trust";
  o.extra_userlist = "\"emptyuser\" \"\"\n";
  // emptyuser is no PostgreSQL role: the server login uses a forced user.
  o.databases = "testdb = host=127.0.0.1 port=" + std::to_string(cluster().port) +
                " dbname=testdb user=md5user password=md5pass\n";
  Pooler p(o);
  Msg m = raw_login(p.port(), "emptyuser", "testdb", "");
  CHECK(logged_in(m));
}

// ---------------------------------------------------------------------------------------------
// SCRAM with a plain-text secret: PBKDF2 once per secret, not per login.

// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; i++) {
    if (i == 14) utime = atoll(field.c_str());
    if (i == 15) stime = atoll(field.c_str());
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

TEST_CASE("SCRAM logins with a plain-text secret: keys derived once (figures printed)") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "scram-sha-256";
  Pooler p(o);
  const int n = 200;
  auto timed = [&](const char* what, auto&& login) {
    double cpu0 = cpu_seconds(p.pid());
    auto t0 = Clock::now();
    for (int i = 0; i < n; i++) login();
    double wall = seconds_since(t0);
    double cpu = cpu_seconds(p.pid()) - cpu0;
    MESSAGE(n << " SCRAM logins, " << std::string(what) << ": " << wall << " s wall, pgsluice CPU "
              << cpu << " s (" << cpu / n * 1e6 << " us per login)");
  };
  timed("plain-text secret, right password",
        [&] { CHECK(logged_in(raw_login(p.port(), "plainuser", "testdb", "plainpass"))); });
  timed("plain-text secret, wrong password", [&] {
    check_refused(raw_login(p.port(), "plainuser", "testdb", "nope"),
                  "password authentication failed for user \"plainuser\"");
  });
  timed("unknown user", [&] {
    check_refused(raw_login(p.port(), "nosuchuser", "testdb", "nope"),
                  "password authentication failed for user \"nosuchuser\"");
  });
  // libpq's own login still works (its keys match the cached ones).
  Conn c = connect(p.conninfo("plainuser", "plainpass"));
  CHECK(scalar(c.get(), "select current_user") == "plainuser");
}

// ---------------------------------------------------------------------------------------------
// Nothing is created for clients that do not authenticate.

long long list_items(PGconn* admin, const std::string& list) {
  Result r = exec_ok(admin, "SHOW LISTS");
  for (int i = 0; i < PQntuples(r.get()); i++)
    if (list == PQgetvalue(r.get(), i, 0)) return atoll(PQgetvalue(r.get(), i, 1));
  return -1;
}

int pool_rows(PGconn* admin) {
  Result r = exec_ok(admin, "SHOW POOLS");
  return PQntuples(r.get());
}

std::string random_name(std::mt19937_64& rng, const char* prefix) {
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s = prefix;
  for (int i = 0; i < 12; i++) s.push_back(kChars[rng() % (sizeof kChars - 1)]);
  return s;
}

TEST_CASE("logins that fail authentication create no pools (unknown users, '*' databases)") {
  if (skip_in_direct_mode("pools are pooler state")) return;
  Options o;  // md5; the default [databases] has testdb and '*'
  Pooler p(o);
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  Conn c = connect(p.conninfo());  // one real pool
  CHECK(scalar(c.get(), "select 1") == "1");
  const long long pools0 = list_items(admin.get(), "pools");
  const long long dbs0 = list_items(admin.get(), "databases");
  const int rows0 = pool_rows(admin.get());
  const long rss0 = vm_rss_kb(p.pid());
  std::mt19937_64 rng(42);
  for (int i = 0; i < 500; i++) {
    Msg m = login_with_wrong_password(p.port(), random_name(rng, "nouser_"), "testdb");
    REQUIRE(m.field('C') == "28P01");
  }
  const long rss1 = vm_rss_kb(p.pid());
  CHECK(list_items(admin.get(), "pools") == pools0);
  CHECK(pool_rows(admin.get()) == rows0);
  // Known user, wrong password, 500 database names that only the '*' entry would serve; and
  // unknown users on such names.
  for (int i = 0; i < 500; i++) {
    std::string db = random_name(rng, "nodb_");
    Msg m = login_with_wrong_password(p.port(), i % 2 ? "md5user" : random_name(rng, "u_"), db);
    REQUIRE(m.field('C') == "28P01");
  }
  const long rss2 = vm_rss_kb(p.pid());
  CHECK(list_items(admin.get(), "pools") == pools0);
  CHECK(list_items(admin.get(), "databases") == dbs0);
  CHECK(pool_rows(admin.get()) == rows0);
  MESSAGE("RSS kB: start " << rss0 << ", after 500 unknown users " << rss1
                           << ", after 500 unknown databases " << rss2);
  // make asan keeps up to 4 MB of freed memory in quarantine (ASAN_OPTIONS in the Makefile).
#if defined(__SANITIZE_ADDRESS__)
  CHECK(rss2 - rss0 < 4096 + 4096);
#else
  CHECK(rss2 - rss0 < 4096);
#endif
  // An authenticated client on a database served by '*' still gets its pool.
  Conn pg = connect(p.conninfo("md5user", "md5pass", "postgres"));
  CHECK(scalar(pg.get(), "select current_database()") == "postgres");
  CHECK(list_items(admin.get(), "pools") == pools0 + 1);
}

TEST_CASE("an unknown database is reported after authentication, not before") {
  if (skip_in_direct_mode("databases are pooler configuration")) return;
  Options o;
  const Cluster& cl = cluster();
  o.databases = "testdb = host=127.0.0.1 port=" + std::to_string(cl.port) + " dbname=testdb\n";
  Pooler p(o);
  // A wrong password: 28P01, whether the database exists or not.
  Msg m = login_with_wrong_password(p.port(), "md5user", "nosuchdb");
  CHECK(m.field('C') == "28P01");
  // The right password: then the database is unknown.
  std::string err;
  Conn c = try_connect(p.conninfo("md5user", "md5pass", "nosuchdb"), &err);
  CHECK(c == nullptr);
  CHECK_MESSAGE(err.find("no such database: nosuchdb") != std::string::npos, err);
}

// ---------------------------------------------------------------------------------------------
// Server login: a fault injector in place of PostgreSQL.

// Stands where PostgreSQL would: reads a startup packet, then breaks the login protocol the way
// its script says, and keeps the connection open.
class FakeServer {
 public:
  enum class Script {
    OkInsideScram,  // AuthenticationSASL, then AuthenticationOk without SASLContinue/Final
    NoAuthAtAll,    // ParameterStatus, BackendKeyData, ReadyForQuery with no auth request
    TrustOk,        // AuthenticationOk at once (trust), then the welcome: a valid login
  };
  explicit FakeServer(Script s) : script_(s) {
    lfd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(lfd_ >= 0);
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(lfd_, 16) == 0);
    socklen_t len = sizeof a;
    REQUIRE(getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    th_ = std::thread([this] { run(); });
  }
  ~FakeServer() {
    stop_ = true;
    th_.join();
    for (int fd : fds_) close(fd);
    close(lfd_);
  }
  int port() const { return port_; }
  int connections() const { return connections_.load(); }

 private:
  static bool read_n(int fd, std::string& out, size_t n) {
    out.clear();
    while (out.size() < n) {
      char buf[4096];
      size_t want = std::min(sizeof buf, n - out.size());
      ssize_t got = recv(fd, buf, want, 0);
      if (got <= 0) return false;
      out.append(buf, static_cast<size_t>(got));
    }
    return true;
  }
  static uint32_t u32(const std::string& s, size_t at) {
    return static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24 |
           static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 16 |
           static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 8 |
           static_cast<uint32_t>(static_cast<uint8_t>(s[at + 3]));
  }
  static void send_all(int fd, const std::string& b) {
    size_t off = 0;
    while (off < b.size()) {
      ssize_t n = send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }
  static std::string welcome() {
    std::string w;
    for (auto [k, v] :
         std::vector<std::pair<const char*, const char*>>{{"server_version", "15.0"},
                                                          {"server_encoding", "UTF8"},
                                                          {"client_encoding", "UTF8"},
                                                          {"DateStyle", "ISO, MDY"},
                                                          {"TimeZone", "UTC"},
                                                          {"integer_datetimes", "on"},
                                                          {"standard_conforming_strings", "on"}})
      w += msg('S', cstr(k) + cstr(v));
    w += msg('K', be32(4242) + be32(1234));
    w += msg('Z', "I");
    return w;
  }
  void serve(int fd) {
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string head, body;
    if (!read_n(fd, head, 4) || u32(head, 0) < 8 || !read_n(fd, body, u32(head, 0) - 4)) return;
    if (u32(head, 0) == 8 && u32(body, 0) == 80877103) {  // SSLRequest: no TLS here
      send_all(fd, "N");
      if (!read_n(fd, head, 4) || u32(head, 0) < 8 || !read_n(fd, body, u32(head, 0) - 4)) return;
    }
    connections_++;
    switch (script_) {
      case Script::OkInsideScram: {
        send_all(fd, msg('R', be32(10) + cstr("SCRAM-SHA-256") + std::string(1, '\0')));
        std::string h;  // the SASLInitialResponse
        if (!read_n(fd, h, 5) || h[0] != 'p' || !read_n(fd, body, u32(h, 1) - 4)) return;
        send_all(fd, msg('R', be32(0)) + welcome());
        break;
      }
      case Script::NoAuthAtAll:
        send_all(fd, welcome());
        break;
      case Script::TrustOk:
        send_all(fd, msg('R', be32(0)) + welcome());
        break;
    }
  }
  void run() {
    while (!stop_) {
      pollfd pfd{lfd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) continue;
      fds_.push_back(fd);  // kept open until the end: no EOF to hide the injected fault
      serve(fd);
    }
  }

  Script script_;
  int lfd_ = -1;
  int port_ = 0;
  std::thread th_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::vector<int> fds_;
};

// pgsluice (trust for clients) in front of `fake`, logging in to it as plainuser/plainpass.
Options fake_target(const FakeServer& fake) {
  Options o;
  o.auth_type = "trust";
  o.databases = "fakedb = host=127.0.0.1 port=" + std::to_string(fake.port()) +
                " dbname=fakedb user=plainuser password=plainpass\n";
  return o;
}

// A client's login to fakedb over the raw protocol: the message that ends it ('E', or 'Z'
// when a session was established).
Msg fake_login(const Pooler& p) {
  Raw r = Raw::tcp(p.port());
  REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "fakedb"}})));
  for (int i = 0; i < 32; i++) {
    Msg m;
    if (r.read_msg(&m, 8) != ReadStatus::Ok) return Msg{};
    if (m.type == 'E' || m.type == 'Z') return m;
  }
  return Msg{};
}

TEST_CASE("server login: AuthenticationOk inside a SCRAM exchange is refused") {
  if (skip_in_direct_mode("the server login is pgsluice's")) return;
  FakeServer fake(FakeServer::Script::OkInsideScram);
  Pooler p(fake_target(fake));
  Msg m = fake_login(p);
  CHECK_MESSAGE(m.type == 'E', "a session was established, type " << int(m.type));
  CHECK(m.field('C') == "08P01");
  CHECK_MESSAGE(m.field('M').find("SCRAM exchange completed") != std::string::npos, m.field('M'));
  CHECK(fake.connections() >= 1);
  std::string err;
  Conn c = try_connect(p.conninfo("md5user", "", "fakedb"), &err);
  CHECK_MESSAGE(c == nullptr, "libpq client got a session from an unauthenticated server");
  CHECK(p.log().find("server login failed") != std::string::npos);
}

TEST_CASE("server login: a welcome without any authentication exchange is refused") {
  if (skip_in_direct_mode("the server login is pgsluice's")) return;
  FakeServer fake(FakeServer::Script::NoAuthAtAll);
  Pooler p(fake_target(fake));
  Msg m = fake_login(p);
  CHECK_MESSAGE(m.type == 'E', "a session was established, type " << int(m.type));
  CHECK(m.field('C') == "08P01");
  CHECK_MESSAGE(
      m.field('M').find("expected authentication request from server") != std::string::npos,
      m.field('M'));
}

TEST_CASE("server login: a trusting server (AuthenticationOk at once) is accepted, as by libpq") {
  if (skip_in_direct_mode("the server login is pgsluice's")) return;
  FakeServer fake(FakeServer::Script::TrustOk);
  Pooler p(fake_target(fake));
  Msg m = fake_login(p);
  CHECK_MESSAGE(m.type == 'Z', "login refused: " << m.field('M'));
}

// ---------------------------------------------------------------------------------------------
// Names in log lines.

TEST_CASE("a user name with a newline cannot forge a log line") {
  if (skip_in_direct_mode("the log is pgsluice's")) return;
  Options o;
  o.extra_pgbouncer = "log_connections = 1\nlog_disconnections = 1\nlog_pooler_errors = 1\n";
  Pooler p(o);
  const std::string forged = "2026-01-01 00:00:00.000 UTC [1] LOG C-0x1: forged line";
  Msg m = login_with_wrong_password(p.port(), "evil\n" + forged, "testdb");
  CHECK(m.field('C') == "28P01");
  Conn c = connect(p.conninfo());  // a later event, so the failed login is surely logged
  CHECK(scalar(c.get(), "select 1") == "1");
  std::string log = read_file(p.dir() + "/pgsluice.log");
  std::istringstream in(log);
  std::string line;
  int event_lines = 0;
  while (std::getline(in, line)) {
    CHECK_MESSAGE(line.rfind("2026-01-01", 0) != 0, "forged line: " << line);
    if (line.find("forged line") == std::string::npos) continue;
    CHECK_MESSAGE(line.find("evil\\n2026-01-01") != std::string::npos, line);
    if (line.find("closing because") != std::string::npos) event_lines++;
  }
  CHECK(event_lines == 1);
}

}  // namespace
}  // namespace it
