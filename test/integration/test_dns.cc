// Host names in [databases] are resolved off the event loops: a slow DNS answer stalls no
// other client of the worker. pgsluice gets its own /etc/resolv.conf (a private mount
// namespace) naming a DNS server run by this test, which answers after a delay.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// A DNS server on UDP ip:53 answering every query `delay_s` after it came: an A record
// 127.0.0.1 for ok_name (no AAAA record), NXDOMAIN for any other name.
class SlowDns {
 public:
  SlowDns(const std::string& ip, std::string ok_name, double delay_s)
      : ok_name_(std::move(ok_name)), delay_s_(delay_s) {
    fd_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    REQUIRE(inet_pton(AF_INET, ip.c_str(), &a.sin_addr) == 1);
    REQUIRE_MESSAGE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0,
                    "bind " << ip << ":53: " << strerror(errno));
    thread_ = std::thread([this] { run(); });
  }
  ~SlowDns() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  int queries() const { return queries_.load(); }

 private:
  struct Due {
    Clock::time_point at;
    sockaddr_storage peer;
    socklen_t peerlen;
    std::string reply;
  };

  void run() {
    std::vector<Due> due;
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 5) > 0) {
        char buf[512];
        Due d{};
        d.peerlen = sizeof d.peer;
        ssize_t n =
            recvfrom(fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&d.peer), &d.peerlen);
        if (n > 12 && answer(std::string(buf, static_cast<size_t>(n)), &d.reply)) {
          queries_++;
          d.at = Clock::now() + std::chrono::microseconds(static_cast<long>(delay_s_ * 1e6));
          due.push_back(std::move(d));
        }
      }
      auto now = Clock::now();
      for (auto it = due.begin(); it != due.end();) {
        if (it->at > now) {
          ++it;
          continue;
        }
        ssize_t r = sendto(fd_, it->reply.data(), it->reply.size(), 0,
                           reinterpret_cast<sockaddr*>(&it->peer), it->peerlen);
        (void)r;
        it = due.erase(it);
      }
    }
  }

  // The reply to one query (header + its question, then the answer if any).
  bool answer(const std::string& q, std::string* out) const {
    if (q[4] != 0 || q[5] != 1) return false;  // exactly one question
    size_t i = 12;
    std::string name;
    while (i < q.size() && q[i] != 0) {
      size_t len = static_cast<unsigned char>(q[i]);
      if (len > 63 || i + 1 + len > q.size()) return false;
      if (!name.empty()) name += '.';
      for (size_t k = 0; k < len; k++)
        name += static_cast<char>(std::tolower(static_cast<unsigned char>(q[i + 1 + k])));
      i += 1 + len;
    }
    if (i + 5 > q.size()) return false;
    int qtype = (static_cast<unsigned char>(q[i + 1]) << 8) | static_cast<unsigned char>(q[i + 2]);
    std::string r = q.substr(0, i + 5);
    bool known = name == ok_name_;
    bool with_a = known && qtype == 1;
    r[2] = static_cast<char>(0x84 | (q[2] & 0x01));  // response, authoritative, RD copied
    r[3] = static_cast<char>(known ? 0x80 : 0x83);   // RA; NOERROR or NXDOMAIN
    r[6] = 0;
    r[7] = with_a ? 1 : 0;            // answers
    r[8] = r[9] = r[10] = r[11] = 0;  // no authority, no additional
    if (with_a)
      r += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01", 16);
    *out = std::move(r);
    return true;
  }

  int fd_ = -1;
  std::string ok_name_;
  double delay_s_;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

TEST_CASE("slow DNS: a host name resolves off the event loop, the worker's other clients go on") {
  if (skip_in_direct_mode("pgsluice resolves [databases] hosts")) return;
  if (!can_private_mount()) {
    MESSAGE("skipped: no private mount namespace here (resolv.conf cannot be replaced)");
    return;
  }
  const Cluster& cl = cluster();
  unsigned pid = static_cast<unsigned>(getpid());
  std::string ip =
      "127.53." + std::to_string((pid >> 8) & 255) + "." + std::to_string((pid & 255) | 1);
  const double delay = 1.5;
  SlowDns dns(ip, "slow-ok.pgsluice.test", delay);
  std::string dir = make_temp_dir("dns");
  write_file(dir + "/resolv.conf", "nameserver " + ip + "\noptions timeout:10 attempts:1\n");

  Options o;
  o.workers = 1;  // every client on the same event loop
  o.auth_type = "trust";
  o.resolv_conf = dir + "/resolv.conf";
  std::string port = std::to_string(cl.port);
  o.databases = "testdb = host=127.0.0.1 port=" + port + " dbname=testdb\n" +
                "slowok = host=slow-ok.pgsluice.test port=" + port + " dbname=testdb\n" +
                "slowbad = host=slow-bad.pgsluice.test port=" + port + " dbname=testdb\n" +
                "slowok2 = host=slow-ok.pgsluice.test port=" + port + " dbname=testdb\n" +
                "slowbad2 = host=slow-bad.pgsluice.test port=" + port + " dbname=testdb\n";
  Pooler pl(o);
  Conn b = connect(pl.conninfo());
  CHECK(scalar(b.get(), "select 1") == "1");

  auto t0 = Clock::now();
  std::atomic<bool> ok_done{false};
  std::atomic<bool> bad_done{false};
  std::string ok_value, ok_err;
  double ok_secs = 0;
  std::thread ok_t([&] {
    Conn c = try_connect(pl.conninfo("md5user", "", "slowok"), &ok_err);
    if (c) exec_nothrow(c.get(), "select 7", &ok_err, &ok_value);
    ok_secs = seconds_since(t0);
    ok_done = true;
  });
  // The first ErrorResponse of a login to db (type 0 when none came).
  auto failed_login = [&](const std::string& db) {
    Raw r = Raw::tcp(pl.port(), 20);
    r.send_bytes(startup_packet({{"user", "md5user"}, {"database", db}}));
    for (Msg m; r.read_msg(&m, 20) == ReadStatus::Ok;)
      if (m.type == 'E') return m;
    return Msg{};
  };
  Msg bad;
  double bad_secs = 0;
  std::thread bad_t([&] {
    bad = failed_login("slowbad");
    bad_secs = seconds_since(t0);
    bad_done = true;
  });

  // While both names are being looked up: 20 queries and a new login on the same worker.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  double worst = 0;
  for (int i = 0; i < 20; i++) {
    auto q0 = Clock::now();
    CHECK(scalar(b.get(), "select " + std::to_string(i)) == std::to_string(i));
    worst = std::max(worst, seconds_since(q0));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto l0 = Clock::now();
  Conn b2 = connect(pl.conninfo());
  CHECK(scalar(b2.get(), "select 2") == "2");
  double login = seconds_since(l0);
  bool overlapped = !ok_done && !bad_done;
  double others_done = seconds_since(t0);
  ok_t.join();
  bad_t.join();
  MESSAGE("other clients done at " << others_done << " s: slowest of 20 queries " << worst * 1e3
                                   << " ms, login " << login * 1e3 << " ms; slow-ok answered at "
                                   << ok_secs << " s, slow-bad failed at " << bad_secs
                                   << " s; DNS queries " << dns.queries());
  CHECK(overlapped);  // the queries above ran while both lookups were pending
  CHECK(worst < 0.2);
  CHECK(login < 0.5);
  CHECK(dns.queries() >= 2);
  // The resolved name is used: the client logs in and is answered.
  CHECK(ok_err == "");
  CHECK(ok_value == "7");
  CHECK(ok_secs >= delay * 0.8);
  // The failed one: 08006 naming the host, once the slow NXDOMAIN came.
  CHECK(bad.type == 'E');
  CHECK(bad.field('C') == "08006");
  CHECK(bad.field('M').find("slow-bad.pgsluice.test") != std::string::npos);
  CHECK(bad_secs >= delay * 0.8);
  CHECK(bad_secs < 15);

  // A success is cached per (host, port): a new pool for the same target asks DNS nothing.
  int asked = dns.queries();
  auto c0 = Clock::now();
  Conn again = connect(pl.conninfo("md5user", "", "slowok2"));
  CHECK(scalar(again.get(), "select 3") == "3");
  CHECK(seconds_since(c0) < delay * 0.5);
  CHECK(dns.queries() == asked);
  // A failure is not: the next new pool for that name asks again, and fails the same way.
  Msg bad2 = failed_login("slowbad2");
  CHECK(bad2.field('C') == "08006");
  CHECK(dns.queries() > asked);
  CHECK(pl.alive());
}

}  // namespace
}  // namespace it
