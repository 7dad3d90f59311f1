// Client limits and hostile clients before login: max_client_conn never leaks, repeated
// encryption requests, clients that never read, floods of connections that never log in,
// and accept() at the file-descriptor limit.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdio>
#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

const uint32_t kSslRequest = 80877103;
const uint32_t kGssRequest = 80877104;

std::string encryption_request(uint32_t code) {
  return be32(8) + be32(code);
}

std::string login_packet(const std::string& user = "md5user", const std::string& db = "testdb") {
  return startup_packet({{"user", user}, {"database", db}});
}

// Reads one raw byte (the answer to an SSLRequest/GSSENCRequest); -1 on close or timeout.
int read_byte(Raw& r, double timeout_s = 5) {
  auto t0 = Clock::now();
  while (seconds_since(t0) < timeout_s) {
    pollfd p{r.fd(), POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    unsigned char ch = 0;
    ssize_t n = recv(r.fd(), &ch, 1, 0);
    if (n == 1) return ch;
    if (n == 0) return -1;
  }
  return -1;
}

// A raw client that sent its startup packet and got the password request: it stalls in
// authentication and never answers.
Raw stalled_in_auth(int port) {
  Raw r = Raw::tcp(port);
  REQUIRE(r.send_bytes(login_packet()));
  Msg m;
  REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
  REQUIRE_MESSAGE(m.type == 'R',
                  "expected an authentication request, got " << m.type << " " << m.field('M'));
  return r;
}

// Sends a startup packet and returns the SQLSTATE of the ErrorResponse that follows ("" when
// the answer is something else).
std::string refused_sqlstate(int port) {
  Raw r = Raw::tcp(port);
  if (!r.send_bytes(login_packet())) return "send failed";
  Msg m;
  if (r.read_msg(&m) != ReadStatus::Ok) return "no answer";
  if (m.type != 'E') return std::string("got ") + m.type;
  CHECK(m.field('M') == "no more connections allowed (max_client_conn)");
  CHECK(r.wait_closed(5));
  return m.field('C');
}

// Logs in n clients at once (all held open); returns how many succeeded.
int concurrent_logins(const Pooler& p, int n, std::string* last_error) {
  std::vector<Conn> held;
  for (int i = 0; i < n; i++) {
    Conn c = try_connect(p.conninfo(), last_error);
    if (c) held.push_back(std::move(c));
  }
  int ok = 0;
  for (auto& c : held)
    if (scalar(c.get(), "select 1") == "1") ok++;
  return ok;
}

// Retries until n concurrent logins work (closing is asynchronous in the pooler).
bool logins_work(const Pooler& p, int n, double timeout_s = 5) {
  auto t0 = Clock::now();
  std::string err;
  while (seconds_since(t0) < timeout_s) {
    if (concurrent_logins(p, n, &err) == n) return true;
    sleep_ms(100);
  }
  MESSAGE("last login error: " << err);
  return false;
}

}  // namespace

TEST_CASE("limits: a burst over max_client_conn does not lock anyone out") {
  if (skip_in_direct_mode("pgsluice's max_client_conn")) return;
  Options o;
  o.extra_pgbouncer = "max_client_conn = 3\n";
  Pooler p(o);
  std::vector<Raw> stalled;
  for (int i = 0; i < 3; i++) stalled.push_back(stalled_in_auth(p.port()));
  // Four more at once while the three stall: each is refused with 53300.
  std::vector<Raw> extra;
  for (int i = 0; i < 4; i++) {
    extra.push_back(Raw::tcp(p.port()));
    REQUIRE(extra.back().send_bytes(login_packet()));
  }
  for (Raw& r : extra) {
    Msg m;
    REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    CHECK(m.field('C') == "53300");
    CHECK(m.field('M') == "no more connections allowed (max_client_conn)");
  }
  CHECK(refused_sqlstate(p.port()) == "53300");
  extra.clear();
  stalled.clear();
  // Everyone left: three clients log in at once again.
  CHECK(logins_work(p, 3));
  CHECK(p.alive());
}

TEST_CASE("limits: a long run of refused and abandoned logins leaves the count exact") {
  if (skip_in_direct_mode("pgsluice's max_client_conn")) return;
  Options o;
  o.extra_pgbouncer = "max_client_conn = 2\n";
  Pooler p(o);
  {
    std::string err;
    Conn a = connect(p.conninfo());
    Conn b = connect(p.conninfo());
    // Every other way in or out, many times over, while the two slots are taken.
    for (int i = 0; i < 150; i++) CHECK(refused_sqlstate(p.port()) == "53300");
    for (int i = 0; i < 50; i++) {
      Raw cancel = Raw::tcp(p.port());
      CHECK(cancel.send_bytes(be32(16) + be32(80877102) + be32(12345) + be32(678)));
      CHECK(cancel.wait_closed(5));
      Raw bad = Raw::tcp(p.port());
      CHECK(bad.send_bytes(be32(3)));
      CHECK(bad.wait_closed(5));
      Raw vanish = Raw::tcp(p.port());  // leaves before its startup packet
      vanish.close_fd();
    }
    // The console is let in over the limit (PgBouncer does the same).
    Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
    CHECK(!scalar(admin.get(), "show version").empty());
    Conn refused = try_connect(p.conninfo(), &err);
    CHECK(!refused);
    CHECK(err.find("no more connections allowed") != std::string::npos);
  }
  // Clients that leave in authentication, one after another.
  sleep_ms(300);  // the pooler closes the clients above asynchronously
  {
    for (int i = 0; i < 50; i++) {
      Raw r = stalled_in_auth(p.port());
      r.close_fd();
    }
    Msg wrong = login_with_wrong_password(p.port(), "md5user", "testdb");
    CHECK(wrong.field('C') == "28P01");
  }
  // Exactly max_client_conn can log in again: neither leaked nor given back twice.
  auto t0 = Clock::now();
  bool two = false;
  while (!two && seconds_since(t0) < 5) {
    std::string err;
    Conn a = try_connect(p.conninfo(), &err);
    Conn b = try_connect(p.conninfo(), &err);
    if (a && b) {
      two = true;
      Conn c = try_connect(p.conninfo(), &err);
      CHECK_MESSAGE(!c, "a third client got in: the count was given back twice");
    } else {
      sleep_ms(100);
    }
  }
  CHECK(two);
}

TEST_CASE("limits: one SSLRequest and one GSSENCRequest, as PostgreSQL allows") {
  // In direct mode (PGSLUICE_TARGET=direct) the SSL cases run against PostgreSQL itself,
  // which has no TLS configured here; its GSSAPI build would answer 'G', so those are skipped.
  Pooler p;
  SUBCASE("a second SSLRequest is refused") {
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(encryption_request(kSslRequest)));
    CHECK(read_byte(r) == 'N');
    REQUIRE(r.send_bytes(encryption_request(kSslRequest)));
    Msg m;
    REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    CHECK(m.field('C') == "0A000");
    CHECK(m.field('M') == "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0");
    CHECK(r.wait_closed(5));
  }
  SUBCASE("a second GSSENCRequest is refused") {
    if (p.direct()) return;
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(encryption_request(kGssRequest)));
    CHECK(read_byte(r) == 'N');
    REQUIRE(r.send_bytes(encryption_request(kGssRequest)));
    Msg m;
    REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
    CHECK(m.field('C') == "0A000");
    CHECK(m.field('M') == "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0");
    CHECK(r.wait_closed(5));
  }
  SUBCASE("one of each, in either order, then a login") {
    if (p.direct()) return;
    for (bool gss_first : {false, true}) {
      Raw r = Raw::tcp(p.port());
      REQUIRE(r.send_bytes(encryption_request(gss_first ? kGssRequest : kSslRequest)));
      CHECK(read_byte(r) == 'N');
      REQUIRE(r.send_bytes(encryption_request(gss_first ? kSslRequest : kGssRequest)));
      CHECK(read_byte(r) == 'N');
      REQUIRE(r.send_bytes(login_packet()));
      Msg m;
      REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
      CHECK(m.type == 'R');
    }
  }
  SUBCASE("a client that sends requests and never reads is closed") {
    if (p.direct()) return;
    long before = vm_rss_kb(p.pid());
    std::vector<Raw> rs;
    std::string flood;
    for (int i = 0; i < 100000; i++) flood += encryption_request(kSslRequest);
    for (int k = 0; k < 4; k++) {
      rs.push_back(Raw::tcp(p.port()));
      // Do not wait for the whole flood to be taken: pgsluice may close first.
      (void)rs.back().send_bytes(flood);
    }
    for (Raw& r : rs) CHECK(r.wait_closed(5));
    long after = vm_rss_kb(p.pid());
    MESSAGE("RSS " << before << " kB -> " << after << " kB after 4 x 100,000 SSLRequests");
    CHECK(after - before < 4096);
  }
  // Logins still work.
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 1") == "1");
}

TEST_CASE("limits: a flood of connections that never log in is bounded") {
  if (skip_in_direct_mode("pgsluice's connection limit")) return;
  Options o;
  o.extra_pgbouncer = "max_client_conn = 40\n";
  Pooler p(o);
  sleep_ms(200);
  int fds0 = open_fds(p.pid());
  std::vector<Raw> idle;
  for (int i = 0; i < 400; i++) idle.push_back(Raw::tcp(p.port()));
  sleep_ms(1000);
  int fds = open_fds(p.pid());
  MESSAGE("pgsluice fds: " << fds0 << " before, " << fds << " with 400 idle connections");
  // At most max_client_conn + 16 spare client connections are held.
  CHECK(fds - fds0 <= 40 + 16);
  // The ones over the limit were told why and closed.
  int refused = 0;
  for (Raw& r : idle) {
    pollfd pf{r.fd(), POLLIN, 0};
    if (poll(&pf, 1, 0) != 1) continue;
    Msg m;
    if (r.read_msg(&m, 1) == ReadStatus::Ok && m.type == 'E' && m.field('C') == "53300") refused++;
  }
  MESSAGE(refused << " connections refused with 53300");
  CHECK(refused >= 400 - 40 - 16);
  CHECK(p.log().find("no more connections allowed (max_client_conn 40 + 16 spare)") !=
        std::string::npos);
  idle.clear();
  CHECK(logins_work(p, 3));
}

TEST_CASE("limits: memory per connection before login stays small") {
  if (skip_in_direct_mode("measures pgsluice's memory")) return;
  Options o;
  o.extra_pgbouncer = "max_client_conn = 5000\nclient_login_timeout = 0\n";
  o.workers = 2;
  Pooler p(o);
  const int n = 2000;
  sleep_ms(200);
  long base = vm_rss_kb(p.pid());
  std::vector<Raw> idle;
  for (int i = 0; i < n; i++) idle.push_back(Raw::tcp(p.port()));
  sleep_ms(1000);
  long with_idle = vm_rss_kb(p.pid());
  double per_idle = static_cast<double>(with_idle - base) * 1024.0 / n;
  // The same clients trickle a startup packet: three bytes each so far.
  std::string sp = login_packet();
  for (Raw& r : idle) CHECK(r.send_bytes(sp.substr(0, 3)));
  sleep_ms(1000);
  long with_trickle = vm_rss_kb(p.pid());
  double per_trickle = static_cast<double>(with_trickle - base) * 1024.0 / n;
  std::printf(
      "[limits] RSS %ld kB; %d idle pre-login connections: %ld kB (%.0f bytes each); "
      "trickling a startup packet: %ld kB (%.0f bytes each)\n",
      base, n, with_idle, per_idle, with_trickle, per_trickle);
  CHECK(per_idle < 4096);
  // A partial startup packet holds one 16 KiB buffer block until it is complete.
  CHECK(per_trickle < 20 * 1024);
  idle.clear();
  CHECK(logins_work(p, 2));
}

TEST_CASE("limits: accept backs off at the file-descriptor limit") {
  if (skip_in_direct_mode("pgsluice's fd limit")) return;
  Options o;
  o.nofile = 64;
  o.workers = 2;
  o.extra_pgbouncer = "max_client_conn = 200\n";
  Pooler p(o);
  CHECK(p.log().find("file descriptor limit 64 is below") != std::string::npos);
  std::vector<Raw> idle;
  for (int i = 0; i < 120; i++) idle.push_back(Raw::tcp(p.port()));
  sleep_ms(500);
  CHECK(p.log().find("Too many open files") != std::string::npos);
  double c0 = cpu_seconds(p.pid());
  sleep_ms(3000);
  double used = cpu_seconds(p.pid()) - c0;
  size_t lines = 0;
  std::string lg = p.log();
  for (size_t at = lg.find("accept() failed"); at != std::string::npos;
       at = lg.find("accept() failed", at + 1))
    lines++;
  MESSAGE("pgsluice CPU over 3 s at the fd limit: " << used
                                                    << " s; accept() failure lines: " << lines);
  CHECK(used < 0.3);
  CHECK(lines <= 4);  // one per worker per back-off
  idle.clear();
  // Accepting resumes after the back-off.
  CHECK(logins_work(p, 2, 10));
  CHECK(p.alive());
}

}  // namespace it
