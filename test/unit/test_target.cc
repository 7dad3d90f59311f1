// Target: host lists from [databases] entries, host choice, target_session_attrs.
#include "target.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "config.h"
#include "connstr.h"

namespace pgsluice {

namespace {
std::unique_ptr<Target> target_of(const std::string& connstr) {
  Config cfg;
  DatabaseDef d;
  REQUIRE(apply_database_connstr(d, connstr, nullptr));
  return Target::from_config(cfg, d, "db", "u");
}
void ready(Target& t) {
  for (auto& h : t.hosts) h->set_addr(sockaddr_storage{}, 0);
}
using Params = std::vector<std::pair<std::string, std::string>>;
Params server(bool standby, bool read_only) {
  return {{"in_hot_standby", standby ? "on" : "off"},
          {"default_transaction_read_only", read_only ? "on" : "off"}};
}
}  // namespace

TEST_CASE("target: hosts and ports from the entry") {
  auto t = target_of("host=a,b,c port=5432");
  REQUIRE(t->hosts.size() == 3);
  CHECK(t->hosts[2]->host == "c");
  CHECK(t->hosts[2]->port == 5432);
  auto u = target_of("host=a,b port=1,2 load_balance_hosts=disable");
  CHECK(u->hosts[1]->port == 2);
  CHECK(!u->round_robin);
  CHECK(u->describe() == "a:1,b:2");
  CHECK(!t->same_as(*u));
  CHECK(t->same_as(*target_of("host=a,b,c port=5432")));
}

TEST_CASE("target: round-robin alternates; a failed host is skipped for the retry time") {
  auto t = target_of("host=a,b");
  CHECK(t->pick(100) == nullptr);  // no address yet
  ready(*t);
  TargetHost* first = t->pick(100);
  TargetHost* second = t->pick(100);
  CHECK(first != second);
  t->hosts[0]->hold(115, HostDown::Unreachable);
  for (int i = 0; i < 4; i++) CHECK(t->pick(101) == t->hosts[1].get());
  CHECK(t->usable(101));
  t->hosts[1]->hold(115, HostDown::Unreachable);
  CHECK(!t->usable(101));
  CHECK(t->pick(101) == nullptr);
  CHECK(t->usable(115));  // once held_until has come, both may be tried again
}

TEST_CASE("target: disable keeps the first host until it fails, then moves") {
  auto t = target_of("host=a,b load_balance_hosts=disable");
  ready(*t);
  for (int i = 0; i < 3; i++) CHECK(t->pick(100) == t->hosts[0].get());
  t->hosts[0]->hold(115, HostDown::Unreachable);
  const TargetHost* left = nullptr;
  CHECK(t->pick(101, &left) == t->hosts[1].get());
  CHECK(left == t->hosts[0].get());
  CHECK(t->pick(200, &left) == t->hosts[1].get());  // stays on b even once a may be tried
  CHECK(left == nullptr);
}

TEST_CASE("target: target_session_attrs as libpq reads in_hot_standby and read-only") {
  std::string why;
  auto rw = target_of("host=a target_session_attrs=read-write");
  CHECK(rw->accepts(server(false, false), true, &why));
  CHECK(!rw->accepts(server(true, true), true, &why));
  CHECK(why == "a standby, read-only");
  CHECK(!rw->accepts(server(false, true), true, &why));
  auto ro = target_of("host=a target_session_attrs=read-only");
  CHECK(ro->accepts(server(false, true), true, &why));
  CHECK(!ro->accepts(server(false, false), true, &why));
  auto pri = target_of("host=a target_session_attrs=primary");
  CHECK(pri->accepts(server(false, true), true, &why));
  CHECK(!pri->accepts(server(true, true), true, &why));
  auto sb = target_of("host=a target_session_attrs=standby");
  CHECK(sb->accepts(server(true, true), true, &why));
  CHECK(!sb->accepts(server(false, false), true, &why));
  auto pref = target_of("host=a target_session_attrs=prefer-standby");
  CHECK(pref->accepts(server(true, true), true, &why));
  CHECK(!pref->accepts(server(false, false), true, &why));  // another host may be a standby
  CHECK(pref->accepts(server(false, false), false, &why));  // none left: a primary will do
  auto any = target_of("host=a");
  CHECK(any->accepts({}, true, &why));
  CHECK(!rw->accepts({}, true, &why));  // PostgreSQL < 14 does not say: refused, not guessed
  DatabaseDef d;
  CHECK(!apply_database_connstr(d, "target_session_attrs=writable", nullptr));
}

}  // namespace pgsluice

namespace pgsluice {
namespace {
sockaddr_storage v4(const char* ip) {
  sockaddr_storage a{};
  auto* in = reinterpret_cast<sockaddr_in*>(&a);
  in->sin_family = AF_INET;
  REQUIRE(inet_pton(AF_INET, ip, &in->sin_addr) == 1);
  return a;
}
std::unique_ptr<AddrRecord> answer(std::vector<const char*> ips) {
  auto r = std::make_unique<AddrRecord>();
  for (const char* ip : ips) {
    r->addrs.push_back(v4(ip));
    r->lens.push_back(sizeof(sockaddr_in));
  }
  if (ips.empty()) r->error = "could not resolve host \"h\": no address";
  return r;
}
int port_of(const sockaddr_storage& a) {
  return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
}
}  // namespace

TEST_CASE("target: a host name's answers: TTL, changes, servers left on an old address") {
  DnsName n("db.example");
  TargetHost h;
  h.host = "db.example";
  h.port = 6432;
  h.set_name(&n);
  CHECK(h.addr_state() == AddrState::Pending);
  CHECK(n.expired(0));
  // First answer: two addresses, good for 15 s; new servers take them in turn, with the port.
  CHECK(n.take(answer({"10.0.0.1", "10.0.0.2"}), 100, 15) == nullptr);
  const AddrRecord* a = h.addr();
  REQUIRE(a != nullptr);
  CHECK(h.addr_state() == AddrState::Ready);
  CHECK(a->describe() == "10.0.0.1,10.0.0.2");
  CHECK(!n.expired(114.9));
  CHECK(n.expired(115));
  sockaddr_storage s1{}, s2{}, s3{};
  CHECK(h.next_addr(*a, &s1) == sizeof(sockaddr_in));
  h.next_addr(*a, &s2);
  h.next_addr(*a, &s3);
  CHECK(port_of(s1) == 6432);
  CHECK(addr_text(s1) != addr_text(s2));
  CHECK(addr_text(s1) == addr_text(s3));
  // The same addresses in another order: the same record (round-robin DNS moves nobody).
  CHECK(n.take(answer({"10.0.0.2", "10.0.0.1"}), 115, 15) == a);
  CHECK(h.addr() == a);
  CHECK(!n.expired(129));
  CHECK(!h.moved_away(a, s1));
  // 10.0.0.2 went: servers on it must go, those on 10.0.0.1 stay.
  n.take(answer({"10.0.0.1", "10.0.0.3"}), 130, 15);
  const AddrRecord* b = h.addr();
  CHECK(b != a);
  sockaddr_storage on1 = v4("10.0.0.1"), on2 = v4("10.0.0.2");
  CHECK(!h.moved_away(a, on1));
  CHECK(h.moved_away(a, on2));
  CHECK(!h.moved_away(b, on2));  // connected through the current answer: kept
  CHECK(!h.moved_away(nullptr, on2));
  // A failure (cached for its own TTL) moves nobody, and new servers fail meanwhile.
  n.take(answer({}), 145, 5);
  CHECK(h.addr_state() == AddrState::Failed);
  CHECK(h.resolve_error() == "could not resolve host \"h\": no address");
  CHECK(!h.moved_away(a, on2));
  CHECK(n.expired(150));
  // Back to an earlier answer: its record again (records are kept, not piled up).
  n.take(answer({"10.0.0.2", "10.0.0.1"}), 150, 15);
  CHECK(h.addr() == a);
  // A host of its own (numeric): never moves, never expires.
  TargetHost num;
  num.port = 5432;
  num.set_addr(v4("127.0.0.1"), sizeof(sockaddr_in));
  CHECK(num.name() == nullptr);
  CHECK(!num.moved_away(num.addr(), on2));
}

TEST_CASE("target: the resolver answers /etc/hosts names, reuses answers, stops cleanly") {
  Resolver r;
  std::mutex mu;
  std::condition_variable cv;
  int kicks = 0;
  r.set_on_resolved([&](Pool*) {
    std::lock_guard<std::mutex> g(mu);
    kicks++;
    cv.notify_all();
  });
  auto* waiter = reinterpret_cast<Pool*>(uintptr_t{16});  // only handed back
  DnsName* n = r.name("localhost");
  CHECK(r.name("localhost") == n);
  r.lookup(n, waiter, 15, 15);
  {
    std::unique_lock<std::mutex> lk(mu);
    REQUIRE(cv.wait_for(lk, std::chrono::seconds(10), [&] { return kicks == 1; }));
  }
  const AddrRecord* a = n->current();
  REQUIRE(a != nullptr);
  CHECK_MESSAGE(!a->failed(), a->error);
  CHECK((a->has(v4("127.0.0.1")) || a->describe().find("::1") != std::string::npos));
  // Answered and not expired: a new waiter is kicked at once, nothing is asked.
  r.lookup(n, waiter, 15, 15);
  CHECK(kicks == 2);
  CHECK(r.counts().names == 1);
  auto rows = r.hosts(0);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].host == "localhost");
  CHECK(rows[0].addrs == a->describe());
  r.stop();
  // After stop: a name never answered fails at once (its waiters would wait for nobody).
  DnsName* m = r.name("other.invalid");
  r.lookup(m, waiter, 15, 15);
  REQUIRE(m->current() != nullptr);
  CHECK(m->current()->failed());
  CHECK(kicks == 2);  // and nobody is kicked any more
}

}  // namespace pgsluice
