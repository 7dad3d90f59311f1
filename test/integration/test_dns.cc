// Host names in [databases] are resolved off the event loops: a slow DNS answer stalls no
// other client of the worker; answers are reused for dns_max_ttl (failures for
// dns_nxdomain_ttl), and a name that moves takes new servers along. pgsluice gets its own
// /etc/resolv.conf (a private mount namespace) naming a DNS server run by this test, whose
// answers the test sets.
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
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// A DNS server on UDP ip:53 answering every query `delay_s` after it came: an A record
// for each name set (127.0.0.1 for ok_name; no AAAA record), NXDOMAIN for any other name.
// set() changes the answers while it runs.
class SlowDns {
 public:
  SlowDns(const std::string& ip, const std::string& ok_name, double delay_s) : delay_s_(delay_s) {
    set(ok_name, "127.0.0.1");
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
  // name answers an A record `ipv4` from now on ("": NXDOMAIN).
  void set(const std::string& name, const std::string& ipv4) {
    std::lock_guard<std::mutex> g(mu_);
    if (ipv4.empty()) {
      answers_.erase(name);
      return;
    }
    in_addr a{};
    REQUIRE(inet_pton(AF_INET, ipv4.c_str(), &a) == 1);
    answers_[name] = std::string(reinterpret_cast<const char*>(&a), 4);
  }
  // How many queries named `name` came.
  int asked(const std::string& name) {
    std::lock_guard<std::mutex> g(mu_);
    return static_cast<int>(std::count(names_.begin(), names_.end(), name));
  }

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
  bool answer(const std::string& q, std::string* out) {
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
    std::string addr;
    bool known = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      names_.push_back(name);
      if (auto it = answers_.find(name); it != answers_.end()) {
        known = true;
        addr = it->second;
      }
    }
    bool with_a = known && qtype == 1;
    r[2] = static_cast<char>(0x84 | (q[2] & 0x01));  // response, authoritative, RD copied
    r[3] = static_cast<char>(known ? 0x80 : 0x83);   // RA; NOERROR or NXDOMAIN
    r[6] = 0;
    r[7] = with_a ? 1 : 0;            // answers
    r[8] = r[9] = r[10] = r[11] = 0;  // no authority, no additional
    if (with_a)                       // TTL 60: pgsluice ignores it (dns_max_ttl)
      r += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04", 12) + addr;
    *out = std::move(r);
    return true;
  }

  int fd_ = -1;
  std::mutex mu_;
  std::map<std::string, std::string> answers_;  // name -> 4 address bytes (mu_)
  std::vector<std::string> names_;              // every name asked (mu_)
  double delay_s_;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

// A loopback address for this process's DNS server and a resolv.conf naming it.
std::string dns_ip() {
  unsigned pid = static_cast<unsigned>(getpid());
  return "127.53." + std::to_string((pid >> 8) & 255) + "." + std::to_string((pid & 255) | 1);
}
std::string resolv_conf_for(const std::string& ip) {
  std::string dir = make_temp_dir("dns");
  write_file(dir + "/resolv.conf", "nameserver " + ip + "\noptions timeout:10 attempts:1\n");
  return dir + "/resolv.conf";
}

TEST_CASE("slow DNS: a host name resolves off the event loop, the worker's other clients go on") {
  if (skip_in_direct_mode("pgsluice resolves [databases] hosts")) return;
  if (!can_private_mount()) {
    MESSAGE("skipped: no private mount namespace here (resolv.conf cannot be replaced)");
    return;
  }
  const Cluster& cl = cluster();
  std::string ip = dns_ip();
  const double delay = 1.5;
  SlowDns dns(ip, "slow-ok.pgsluice.test", delay);

  Options o;
  o.workers = 1;  // every client on the same event loop
  o.auth_type = "trust";
  o.resolv_conf = resolv_conf_for(ip);
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
  // So is a failure, for dns_nxdomain_ttl (15 s here): the next new pool for that name asks
  // nothing and fails the same way at once.
  auto f0 = Clock::now();
  Msg bad2 = failed_login("slowbad2");
  CHECK(bad2.field('C') == "08006");
  CHECK(seconds_since(f0) < delay * 0.5);
  CHECK(dns.queries() == asked);
  CHECK(pl.alive());
}

TEST_CASE("DNS: a name that resolves elsewhere after dns_max_ttl moves new servers there") {
  if (skip_in_direct_mode("pgsluice resolves [databases] hosts")) return;
  if (!can_private_mount()) {
    MESSAGE("skipped: no private mount namespace here (resolv.conf cannot be replaced)");
    return;
  }
  // One cluster on 127.0.0.1 and 127.0.0.2: inet_server_addr() tells where a server went.
  ClusterSetup cs;
  cs.tag = "pgdns";
  cs.listen_addresses = "127.0.0.1,127.0.0.2";
  cs.hba = "local all all trust\nhost all all 127.0.0.0/8 md5\n";
  Cluster cl = start_cluster(cs);
  std::string ip = dns_ip();
  const std::string name = "moving.pgsluice.test";
  SlowDns dns(ip, name, 0);
  Options o;
  o.auth_type = "trust";
  o.pool_mode = "transaction";
  o.default_pool_size = 40;
  o.resolv_conf = resolv_conf_for(ip);
  o.extra_pgbouncer = "dns_max_ttl = 1\n";
  std::string port = std::to_string(cl.port);
  o.databases = "moving = host=" + name + " port=" + port + " dbname=testdb\n" +
                "local = host=localhost port=" + port + " dbname=testdb\n";
  Pooler pl(o);
  const std::string where = "select host(inet_server_addr())";

  // A client in a transaction on A (127.0.0.1), and one running queries throughout.
  auto first_answer = Clock::now();  // no sooner than this: the name is looked up at login
  Conn busy = connect(pl.conninfo("md5user", "", "moving"));
  exec_ok(busy.get(), "begin");
  CHECK(scalar(busy.get(), where) == "127.0.0.1");
  std::string busy_pid = scalar(busy.get(), "select pg_backend_pid()");
  std::atomic<bool> stop{false};
  std::atomic<int> steady_errors{0}, steady_queries{0};
  std::string steady_err;
  std::thread steady([&] {
    Conn c = connect(pl.conninfo("md5user", "", "moving"));
    while (!stop) {
      std::string err, value;
      if (!exec_nothrow(c.get(), where, &err, &value)) {
        if (steady_errors++ == 0) steady_err = err;
      }
      steady_queries++;
      sleep_ms(20);
    }
  });
  sleep_ms(300);
  auto moved_at = Clock::now();
  dns.set(name, "127.0.0.2");
  // New servers (each round one transaction more at once than the last, so more than the
  // idle servers) until one is on B: the first launch after dns_max_ttl asks DNS again
  // (connecting to A meanwhile), a later one uses the new answer.
  double to_b = -1, answer_age = -1;
  for (int round = 0; round < 20 && to_b < 0; round++) {
    std::vector<Conn> open;
    for (int i = 0; i < round + 2; i++) {
      open.push_back(connect(pl.conninfo("md5user", "", "moving")));
      exec_ok(open.back().get(), "begin");
      std::string a = scalar(open.back().get(), where);
      if (a == "127.0.0.2" && to_b < 0) {
        to_b = seconds_since(moved_at);
        answer_age = seconds_since(first_answer);
      }
    }
    for (auto& c : open) exec_ok(c.get(), "commit");
    sleep_ms(150);
  }
  MESSAGE("first new server on 127.0.0.2 " << to_b << " s after the answer changed, " << answer_age
                                           << " s after the first lookup");
  CHECK(answer_age >= 1);  // not before dns_max_ttl: the first answer was used till then
  CHECK(to_b < 4);
  CHECK(eventually([&] {
    return pl.log().find("host " + name + " now resolves to 127.0.0.2 (was 127.0.0.1)") !=
           std::string::npos;
  }));
  // The busy server on A finishes its transaction, then closes at release; the client stays
  // and its next transaction runs on B.
  CHECK(scalar(busy.get(), where) == "127.0.0.1");
  exec_ok(busy.get(), "commit");
  Conn su = connect(superuser_conninfo(cl, "postgres"));
  CHECK(eventually([&] {
    return scalar(su.get(), "select count(*) from pg_stat_activity where pid = " + busy_pid) == "0";
  }));
  CHECK(scalar(busy.get(), where) == "127.0.0.2");
  // Every server left on A goes at its release: the steady client ends up on B.
  CHECK(eventually([&] {
    std::vector<std::string> got;
    for (int i = 0; i < 10; i++) got.push_back(scalar(busy.get(), where));
    return std::count(got.begin(), got.end(), "127.0.0.2") == 10;
  }));
  stop = true;
  steady.join();
  CHECK(steady_queries > 20);
  CHECK_MESSAGE(steady_errors == 0, steady_err);

  // /etc/hosts is honoured: localhost is answered without asking the DNS server.
  Conn local = connect(pl.conninfo("md5user", "", "local"));
  CHECK(scalar(local.get(), "select 1") == "1");
  CHECK(dns.asked("localhost") == 0);
  // SHOW DNS_HOSTS: the name, its TTL left (at most dns_max_ttl), its address now.
  Conn admin = connect(pl.conninfo("md5user", "", "pgbouncer"));
  Result r = exec_ok(admin.get(), "show dns_hosts");
  bool row = false;
  for (int i = 0; i < PQntuples(r.get()); i++) {
    if (std::string(PQgetvalue(r.get(), i, 0)) != name) continue;
    row = true;
    CHECK(std::atoi(PQgetvalue(r.get(), i, 1)) <= 1);
    CHECK(std::string(PQgetvalue(r.get(), i, 2)) == "127.0.0.2");
  }
  CHECK(row);
  CHECK(pl.alive());
}

TEST_CASE("DNS: NXDOMAIN is remembered for dns_nxdomain_ttl, then the name is asked again") {
  if (skip_in_direct_mode("pgsluice resolves [databases] hosts")) return;
  if (!can_private_mount()) {
    MESSAGE("skipped: no private mount namespace here (resolv.conf cannot be replaced)");
    return;
  }
  const Cluster& cl = cluster();
  std::string ip = dns_ip();
  const std::string name = "later.pgsluice.test";
  SlowDns dns(ip, "unused.pgsluice.test", 0);
  Options o;
  o.auth_type = "trust";
  o.resolv_conf = resolv_conf_for(ip);
  o.extra_pgbouncer = "dns_nxdomain_ttl = 2\n";
  std::string port = std::to_string(cl.port);
  o.databases = "later = host=" + name + " port=" + port + " dbname=testdb\n" +
                "later2 = host=" + name + " port=" + port + " dbname=testdb\n";
  Pooler pl(o);
  auto t0 = Clock::now();
  std::string err;
  Conn c1 = try_connect(pl.conninfo("md5user", "", "later"), &err);
  CHECK(!c1);
  CHECK(err.find("could not resolve host \"" + name + "\"") != std::string::npos);
  int asked = dns.asked(name);
  CHECK(asked >= 1);
  // The name starts to exist; the failure is still remembered: no query, the same error.
  dns.set(name, "127.0.0.1");
  Conn c2 = try_connect(pl.conninfo("md5user", "", "later2"), &err);
  CHECK(!c2);
  CHECK(dns.asked(name) == asked);
  CHECK(seconds_since(t0) < 2);
  // After dns_nxdomain_ttl the next client needing a server waits for a new lookup.
  sleep_ms(static_cast<int>((2.2 - seconds_since(t0)) * 1000));
  Conn c3 = try_connect(pl.conninfo("md5user", "", "later"), &err);
  REQUIRE_MESSAGE(c3, err);
  CHECK(scalar(c3.get(), "select 3") == "3");
  CHECK(dns.asked(name) > asked);
  CHECK(pl.alive());
}

}  // namespace
}  // namespace it
