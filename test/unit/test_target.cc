// Target: host lists from [databases] entries, host choice, target_session_attrs.
#include "target.h"

#include <doctest/doctest.h>

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
