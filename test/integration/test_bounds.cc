// Bounds on work and memory per client: a message that trickles in is scanned once (CPU
// linear in its size), a message over max_packet_size ends only its own session, and a
// client that pipelines without pause holds only what is in flight (RSS flat).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// The CPU bounds below tell linear from quadratic scanning in an optimised build; a
// sanitizer build (make asan) runs the same code about three times slower.
#if defined(__SANITIZE_ADDRESS__)
constexpr double kSlowdown = 3;
constexpr long kQuarantineKb = 4096;  // make asan keeps up to 4 MB of freed memory
#else
constexpr double kSlowdown = 1;
constexpr long kQuarantineKb = 0;
#endif

// CPU time of a process (all threads), in seconds: user and system.
struct Cpu {
  double user = 0;
  double sys = 0;
};
Cpu cpu_of(pid_t pid) {
  std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
  size_t close_paren = st.rfind(')');
  REQUIRE(close_paren != std::string::npos);
  // After "(comm) ": state is field 1, utime 12, stime 13.
  unsigned long long utime = 0, stime = 0;
  int n = std::sscanf(st.c_str() + close_paren + 2,
                      "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime);
  REQUIRE(n == 2);
  auto tck = static_cast<double>(sysconf(_SC_CLK_TCK));
  return Cpu{static_cast<double>(utime) / tck, static_cast<double>(stime) / tck};
}

constexpr long long kMaxPacket = 100'000'000;

Pooler bounds_pooler() {
  Options o;
  o.workers = 1;  // everything on one worker thread, as in the report
  o.extra_pgbouncer = "max_packet_size = " + std::to_string(kMaxPacket) + "\n";
  return Pooler(o);
}

Raw raw_session(const Pooler& p, Conn* holder) {
  *holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  return Raw::from_libpq(holder->get(), 30);
}

// Sends `header` then `size` bytes of `fill` in 16 KiB pieces, then `tail`; returns the user
// CPU seconds pgsluice spent from the first byte to the answer's ReadyForQuery (scanning is
// user time; the socket copies, system time, are about 1.5 s for 64 MB in and out on a
// virtual machine), and that answer.
double trickle(const Pooler& p, Raw& r, const std::string& header, size_t size, char fill,
               const std::string& tail, std::vector<Msg>* answer) {
  Cpu c0 = cpu_of(p.pid());
  REQUIRE(r.send_bytes(header));
  const std::string piece(16384, fill);
  for (size_t sent = 0; sent < size; sent += piece.size()) {
    REQUIRE(r.send_bytes(std::string_view(piece).substr(0, std::min(piece.size(), size - sent))));
    usleep(20);  // one piece per read, as from a slow client
  }
  REQUIRE(r.send_bytes(tail));
  *answer = r.read_until('Z', 60);
  Cpu c1 = cpu_of(p.pid());
  MESSAGE("pgsluice CPU: user " << c1.user - c0.user << " s, system " << c1.sys - c0.sys << " s");
  return c1.user - c0.user;
}

// Sends `header` then `size` bytes of `fill` in 16 KiB pieces, as a message that is not
// complete yet; returns the user CPU seconds pgsluice spent buffering (and scanning) them.
double trickle_open(const Pooler& p, Raw& r, const std::string& header, size_t size, char fill) {
  Cpu c0 = cpu_of(p.pid());
  REQUIRE(r.send_bytes(header));
  const std::string piece(16384, fill);
  for (size_t sent = 0; sent < size; sent += piece.size()) {
    REQUIRE(r.send_bytes(piece));
    usleep(20);  // one piece per read, as from a slow client
  }
  // Until pgsluice has read it all: its CPU time stops moving.
  Cpu c1 = cpu_of(p.pid());
  for (int i = 0; i < 300; i++) {
    sleep_ms(200);
    Cpu c2 = cpu_of(p.pid());
    bool settled = c2.user == c1.user && c2.sys == c1.sys;
    c1 = c2;
    if (settled) break;
  }
  MESSAGE("pgsluice CPU: user " << c1.user - c0.user << " s, system " << c1.sys - c0.sys << " s");
  return c1.user - c0.user;
}

std::string types_of(const std::vector<Msg>& ms) {
  std::string t;
  for (const auto& m : ms) t += m.type;
  return t;
}

// A message whose length word is over max_packet_size: FATAL 08P01, and the session ends.
void check_too_large(const Pooler& p, char type) {
  Conn holder;
  Raw r = raw_session(p, &holder);
  REQUIRE(r.send_bytes(std::string(1, type) + be32(static_cast<uint32_t>(kMaxPacket + 1)) +
                       std::string(10, 'a')));
  Msg m;
  REQUIRE(r.read_msg(&m, 10) == ReadStatus::Ok);
  CHECK(m.type == 'E');
  CHECK(m.field('C') == "08P01");
  CHECK(m.field('M') == "invalid message length");
  CHECK(r.wait_closed(10));
}

}  // namespace

TEST_CASE("bounds: a Bind whose portal name never ends is scanned once") {
  if (skip_in_direct_mode("measures pgsluice's CPU")) return;
  Pooler p = bounds_pooler();
  Conn other = connect(p.conninfo());
  CHECK(scalar(other.get(), "select 1") == "1");
  {
    // 64 MB of a portal name in a Bind of 90 MB: read and scanned once.
    Conn holder;
    Raw r = raw_session(p, &holder);
    double cpu = trickle_open(p, r, "B" + be32(90u << 20), size_t{64} << 20, 'a');
    MESSAGE("pgsluice user CPU for 64 MB of a Bind's portal name in 16 KiB pieces: " << cpu
                                                                                     << " s");
    CHECK(cpu <
          0.9 * kSlowdown);  // 0.4-0.5 s here (per-read system-call cost); 1.4 s and more before
  }
  {
    // Complete, the unterminated name goes to PostgreSQL, which rejects it (08P01, not
    // fatal); the session goes on.
    Conn holder;
    Raw r = raw_session(p, &holder);
    const size_t kSize = size_t{4} << 20;
    std::vector<Msg> got;
    trickle(p, r, "B" + be32(static_cast<uint32_t>(4 + kSize)), kSize, 'a', msg('S', ""), &got);
    REQUIRE(types_of(got) == "EZ");
    CHECK(got[0].field('C') == "08P01");
    CHECK(got[1].body == "I");
    REQUIRE(r.send_msg('Q', cstr("select 7")));
    got = r.read_until('Z', 10);
    REQUIRE(types_of(got) == "TDCZ");
    CHECK(got[1].body.substr(6) == "7");
  }
  check_too_large(p, 'B');
  CHECK(scalar(other.get(), "select 2") == "2");
  CHECK(p.alive());
}

TEST_CASE("bounds: a Query with 64 MB of leading white space is scanned once") {
  if (skip_in_direct_mode("measures pgsluice's CPU")) return;
  Pooler p = bounds_pooler();
  Conn other = connect(p.conninfo());
  {
    Conn holder;
    Raw r = raw_session(p, &holder);
    double cpu = trickle_open(p, r, "Q" + be32(90u << 20), size_t{64} << 20, ' ');
    MESSAGE("pgsluice user CPU for 64 MB of a Query's leading space in 16 KiB pieces: " << cpu
                                                                                        << " s");
    CHECK(cpu < 0.9 * kSlowdown);  // as above
  }
  {
    Conn holder;
    Raw r = raw_session(p, &holder);
    const size_t kSize = size_t{4} << 20;
    std::string q = "select 8";
    std::vector<Msg> got;
    trickle(p, r, "Q" + be32(static_cast<uint32_t>(4 + kSize + q.size() + 1)), kSize, ' ', cstr(q),
            &got);
    REQUIRE(types_of(got) == "TDCZ");
    CHECK(got[1].body.substr(6) == "8");
  }
  check_too_large(p, 'Q');
  CHECK(scalar(other.get(), "select 2") == "2");
}

TEST_CASE("bounds: a 32 MB PREPARE and a 32 MB Parse trickled in cost linear CPU") {
  if (skip_in_direct_mode("measures pgsluice's CPU")) return;
  Pooler p = bounds_pooler();
  Conn other = connect(p.conninfo());
  Conn holder;
  Raw r = raw_session(p, &holder);
  const size_t kSize = size_t{32} << 20;
  const std::string expect_len = std::to_string(kSize);
  SUBCASE("PREPARE") {
    std::string head = "PREPARE big AS SELECT length('";
    std::string tail = "')";
    std::vector<Msg> got;
    double cpu = trickle(
        p, r, "Q" + be32(static_cast<uint32_t>(4 + head.size() + kSize + tail.size() + 1)) + head,
        kSize, 'x', cstr(tail), &got);
    MESSAGE("pgsluice user CPU for a 32 MB PREPARE in 16 KiB pieces: " << cpu << " s");
    CHECK(cpu < 1.5 * kSlowdown);  // linear before too; a guard against a rescan
    REQUIRE(types_of(got) == "CZ");
    REQUIRE(r.send_msg('Q', cstr("EXECUTE big")));
    got = r.read_until('Z', 30);
    REQUIRE(types_of(got) == "TDCZ");
    CHECK(got[1].body.substr(6) == expect_len);
  }
  SUBCASE("Parse") {
    std::string head = cstr("bigstmt") + "SELECT length('";
    std::string tail = cstr("')") + be16(0);
    std::vector<Msg> got;
    double cpu = trickle(
        p, r, "P" + be32(static_cast<uint32_t>(4 + head.size() + kSize + tail.size())) + head,
        kSize, 'x', tail + msg('S', ""), &got);
    MESSAGE("pgsluice user CPU for a 32 MB Parse in 16 KiB pieces: " << cpu << " s");
    CHECK(cpu < 1.5 * kSlowdown);
    REQUIRE(types_of(got) == "1Z");
    REQUIRE(r.send_bytes(msg('B', cstr("") + cstr("bigstmt") + be16(0) + be16(0) + be16(0)) +
                         msg('E', cstr("") + be32(0)) + msg('S', "")));
    got = r.read_until('Z', 30);
    REQUIRE(types_of(got) == "2DCZ");
    CHECK(got[1].body.substr(6) == expect_len);
    check_too_large(p, 'P');
  }
  CHECK(scalar(other.get(), "select 3") == "3");
}

TEST_CASE("bounds: a Bind with a 1 MB portal name works as in PostgreSQL") {
  // PostgreSQL accepts any length of name in a Bind (its portal table compares the first
  // NAMEDATALEN-1 bytes); pgsluice must not be stricter.
  Pooler p = bounds_pooler();
  Conn holder;
  Raw r = raw_session(p, &holder);
  // Execute is a small message (10000 bytes at most, in PostgreSQL as in pgsluice): it names
  // the portal by a prefix, which is what PostgreSQL compares.
  const std::string portal(1 << 20, 'p');
  REQUIRE(r.send_bytes(msg('P', cstr("s42") + cstr("select 42") + be16(0)) +
                       msg('B', cstr(portal) + cstr("s42") + be16(0) + be16(0) + be16(0)) +
                       msg('E', cstr(portal.substr(0, 5000)) + be32(0)) + msg('S', "")));
  std::vector<Msg> got = r.read_until('Z', 30);
  REQUIRE(types_of(got) == "12DCZ");
  CHECK(got[2].body.substr(6) == "42");
}

namespace {

// Sends units 0..count-1 (unit(i): messages answered by exactly one ReadyForQuery) from a
// thread while reading the answers as they come. Returns the ReadyForQuery count; *errors
// gets the ErrorResponse count.
long pipeline(Raw& r, const std::function<std::string(long)>& unit, long count, long* errors) {
  std::atomic<bool> send_ok{true};
  std::thread sender([&] {
    for (long i = 0; i < count && send_ok; i += 1000) {
      std::string chunk;
      for (long j = i; j < count && j < i + 1000; j++) chunk += unit(j);
      if (!r.send_bytes(chunk)) send_ok = false;
    }
  });
  std::string buf;
  size_t off = 0;
  long zs = 0;
  *errors = 0;
  auto t0 = Clock::now();
  while (zs < count && seconds_since(t0) < 120) {
    char tmp[65536];
    ssize_t n = recv(r.fd(), tmp, sizeof tmp, MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
      sleep_ms(1);
      continue;
    }
    buf.append(tmp, static_cast<size_t>(n));
    while (buf.size() - off >= 5) {
      auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(buf[off + i])); };
      uint32_t len = (b(1) << 24) | (b(2) << 16) | (b(3) << 8) | b(4);
      if (buf.size() - off < 1 + static_cast<size_t>(len)) break;
      if (buf[off] == 'Z') zs++;
      if (buf[off] == 'E') ++*errors;
      off += 1 + len;
    }
    if (off > 65536) {
      buf.erase(0, off);
      off = 0;
    }
  }
  sender.join();
  CHECK(send_ok);
  return zs;
}

}  // namespace

TEST_CASE("bounds: a client that pipelines without pause holds only what is in flight") {
  if (skip_in_direct_mode("measures pgsluice's memory")) return;
  Options o;
  o.workers = 1;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn holder;
  Raw r = raw_session(p, &holder);
  REQUIRE(r.send_msg('Q', cstr("BEGIN")));
  REQUIRE(types_of(r.read_until('Z', 10)) == "CZ");
  REQUIRE(r.send_bytes(msg('P', cstr("s1") + cstr("select 1") + be16(0)) + msg('S', "")));
  REQUIRE(types_of(r.read_until('Z', 10)) == "1Z");
  const std::string sync = msg('S', "");
  const std::string bes = msg('B', cstr("") + cstr("s1") + be16(0) + be16(0) + be16(0)) +
                          msg('E', cstr("") + be32(0)) + sync;
  struct Case {
    const char* name;
    std::function<std::string(long)> unit;
    long count;
  };
  const Case cases[] = {
      {"Sync", [&](long) { return sync; }, 600000},
      {"Bind/Execute/Sync", [&](long) { return bes; }, 200000},
      // A name created and dropped in every segment: each request carries an undo.
      {"Parse/Close/Sync",
       [&](long i) {
         std::string n = "n" + std::to_string(i);
         return msg('P', cstr(n) + cstr("select 1") + be16(0)) +
                msg('C', std::string("S") + cstr(n)) + sync;
       },
       200000},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.name));
    long errors = 0;
    REQUIRE(pipeline(r, c.unit, c.count / 10, &errors) == c.count / 10);  // warm up
    long rss0 = vm_rss_kb(p.pid());
    auto t0 = Clock::now();
    CHECK(pipeline(r, c.unit, c.count, &errors) == c.count);
    CHECK(errors == 0);
    long rss1 = vm_rss_kb(p.pid());
    MESSAGE(std::string(c.name) << " x " << c.count << " pipelined in " << seconds_since(t0)
                                << " s: pgsluice RSS " << rss0 << " -> " << rss1 << " kB (+"
                                << rss1 - rss0 << ")");
    CHECK(rss1 - rss0 < 3 * 1024 + kQuarantineKb);
  }
  REQUIRE(r.send_msg('Q', cstr("COMMIT")));
  REQUIRE(types_of(r.read_until('Z', 10)) == "CZ");
}

// Memory per idle logged-in client (ARCHITECTURE.md, memory per client): RSS growth over
// 2,000 clients that logged in and ran one query, opened after 100 that stay (first-use
// costs). 918 bytes when the fields of Client and Conn were ordered without holes (998
// before), 899 with the tracked values shrunk to size; the goal of issue 13 is 800, met by
// the remapping and pinning state allocated on use and the flat cancel-key table.
TEST_CASE("bounds: an idle logged-in client costs under 800 bytes") {
  if (skip_in_direct_mode("measures pgsluice's memory")) return;
  if (kQuarantineKb > 0) return;  // a sanitizer's allocator measures something else
  Options o;
  o.workers = 1;
  o.extra_pgbouncer = "max_client_conn = 2500\n";
  Pooler p(o);
  std::vector<Conn> held;
  auto open = [&](int n) {
    for (int i = 0; i < n; i++) {
      held.push_back(connect(p.conninfo()));
      REQUIRE(scalar(held.back().get(), "select 1") == "1");
    }
  };
  open(100);
  long rss0 = vm_rss_kb(p.pid());
  const int kClients = 2000;
  open(kClients);
  long rss1 = vm_rss_kb(p.pid());
  long per_client = (rss1 - rss0) * 1024 / kClients;
  MESSAGE("pgsluice RSS " << rss0 << " -> " << rss1 << " kB over " << kClients
                          << " idle clients: " << per_client << " bytes each");
  CHECK(per_client < 800);
}

}  // namespace it
