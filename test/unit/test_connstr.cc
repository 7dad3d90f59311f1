// Unit tests for connection strings of [databases], [users] and [peers] (connstr.h).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "connstr.h"

namespace pgsluice {

namespace {
ConnstrPairs pairs_of(std::string_view s) {
  Result<ConnstrPairs> r = parse_connstr(s);
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  return *r;
}
}  // namespace

TEST_CASE("connstr: plain pairs keep their order") {
  ConnstrPairs p = pairs_of("host=db1 port=5433 dbname=app");
  REQUIRE(p.size() == 3);
  CHECK(p[0] == std::pair<std::string, std::string>("host", "db1"));
  CHECK(p[1] == std::pair<std::string, std::string>("port", "5433"));
  CHECK(p[2] == std::pair<std::string, std::string>("dbname", "app"));
}

TEST_CASE("connstr: quoting, escapes and blanks") {
  ConnstrPairs p = pairs_of(
      "  password='it''s a secret'   user = bob\tapplication_name='x\\'y' "
      "connect_query='SELECT 1' path=C:\\dir\\x q='back\\slash' ");
  REQUIRE(p.size() == 6);
  CHECK(p[0].second == "it's a secret");
  CHECK(p[1] == std::pair<std::string, std::string>("user", "bob"));
  CHECK(p[2].second == "x'y");
  CHECK(p[3].second == "SELECT 1");
  CHECK(p[4].second == "C:\\dir\\x");   // backslash is literal outside quotes
  CHECK(p[5].second == "back\\slash");  // and inside, unless it precedes a quote
  CHECK(pairs_of("a='='")[0].second == "=");
  CHECK(pairs_of("a=''''")[0].second == "'");
  CHECK(pairs_of("a='#;[x]'")[0].second == "#;[x]");
}

TEST_CASE("connstr: empty and blank strings give no pairs") {
  CHECK(pairs_of("").empty());
  CHECK(pairs_of("   \t ").empty());
}

TEST_CASE("connstr: garbage is an error") {
  CHECK_FALSE(parse_connstr("host").ok());
  CHECK_FALSE(parse_connstr("host db").ok());
  CHECK_FALSE(parse_connstr("=x").ok());
  CHECK_FALSE(parse_connstr("host=").ok());
  CHECK_FALSE(parse_connstr("host= ").ok());
  CHECK_FALSE(parse_connstr("host=''").ok());
  CHECK_FALSE(parse_connstr("host='unterminated").ok());
  CHECK_FALSE(parse_connstr("host='a\\'").ok());
  CHECK_FALSE(parse_connstr("host='a'b").ok());
  CHECK_FALSE(parse_connstr("a=1 b").ok());
}

TEST_CASE("connstr: database entry") {
  DatabaseDef d;
  std::vector<std::string> w;
  REQUIRE(apply_database_connstr(
              d,
              "host=10.0.0.1,10.0.0.2 port=6000 dbname=real user=forced password='p w' "
              "auth_user=au pool_size=7 min_pool_size=2 reserve_pool=3 max_db_connections=40 "
              "max_db_client_connections=400 server_lifetime=12.5 pool_mode=transaction "
              "client_encoding=UTF8 datestyle='ISO, MDY' timezone=UTC application_name=app "
              "connect_query='SET x = 1' auth_query='SELECT usename, passwd FROM pg_shadow "
              "WHERE usename=$1' auth_dbname=authdb load_balance_hosts=disable "
              "query_wait_timeout=30 frobnicate=1",
              &w)
              .ok());
  CHECK(d.host == "10.0.0.1,10.0.0.2");
  CHECK(d.port == 6000);
  CHECK(d.dbname == "real");
  CHECK(d.user == "forced");
  CHECK(d.password == "p w");
  CHECK(d.auth_user == "au");
  CHECK(d.pool_size == 7);
  CHECK(d.min_pool_size == 2);
  CHECK(d.reserve_pool_size == 3);
  CHECK(d.max_db_connections == 40);
  CHECK(d.max_db_client_connections == 400);
  CHECK(d.server_lifetime == doctest::Approx(12.5));
  REQUIRE(d.pool_mode.has_value());
  CHECK(*d.pool_mode == PoolMode::Transaction);
  CHECK(d.client_encoding == "UTF8");
  CHECK(d.datestyle == "ISO, MDY");
  CHECK(d.timezone == "UTC");
  CHECK(d.application_name == "app");
  CHECK(d.connect_query == "SET x = 1");
  CHECK(d.auth_query == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1");
  CHECK(d.auth_dbname == "authdb");
  CHECK(d.load_balance_hosts == "disable");
  CHECK(d.query_wait_timeout == doctest::Approx(30));
  REQUIRE(w.size() == 1);
  CHECK(w[0].find("frobnicate") != std::string::npos);

  DatabaseDef d2;
  REQUIRE(apply_database_connstr(d2, "reserve_pool_size=4", nullptr).ok());
  CHECK(d2.reserve_pool_size == 4);
  CHECK(d2.pool_size == -1);  // untouched overrides stay unset
  CHECK(d2.port == 5432);
  CHECK_FALSE(d2.pool_mode.has_value());
}

TEST_CASE("connstr: bad database values are errors naming the key") {
  DatabaseDef d;
  Status st = apply_database_connstr(d, "host=x port=abc", nullptr);
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("port") != std::string::npos);
  CHECK_FALSE(apply_database_connstr(d, "port=70000", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "port=0", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "pool_size=-1", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "pool_size=99999999999", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "pool_size=5x", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "pool_mode=banana", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "server_lifetime=-3", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "server_lifetime=nan", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "load_balance_hosts=random", nullptr).ok());
  CHECK_FALSE(apply_database_connstr(d, "host='open", nullptr).ok());
}

TEST_CASE("connstr: user entry") {
  UserDef u;
  std::vector<std::string> w;
  REQUIRE(apply_user_connstr(u,
                             "pool_size=3 reserve_pool_size=1 pool_mode=statement "
                             "max_user_connections=9 max_user_client_connections=90 "
                             "query_timeout=1.5 query_wait_timeout=2 idle_transaction_timeout=3 "
                             "transaction_timeout=4 client_idle_timeout=5 host=nope",
                             &w)
              .ok());
  CHECK(u.pool_size == 3);
  CHECK(u.reserve_pool_size == 1);
  CHECK(*u.pool_mode == PoolMode::Statement);
  CHECK(u.max_user_connections == 9);
  CHECK(u.max_user_client_connections == 90);
  CHECK(u.query_timeout == doctest::Approx(1.5));
  CHECK(u.query_wait_timeout == doctest::Approx(2));
  CHECK(u.idle_transaction_timeout == doctest::Approx(3));
  CHECK(u.transaction_timeout == doctest::Approx(4));
  CHECK(u.client_idle_timeout == doctest::Approx(5));
  CHECK(w.size() == 1);  // host is not a [users] key
  CHECK_FALSE(apply_user_connstr(u, "pool_mode=sessions", nullptr).ok());
  CHECK_FALSE(apply_user_connstr(u, "max_user_connections=many", nullptr).ok());
}

TEST_CASE("connstr: peer entry") {
  PeerDef p;
  REQUIRE(apply_peer_connstr(p, "host=/var/run/pgb2 port=6433 pool_size=4", nullptr).ok());
  CHECK(p.host == "/var/run/pgb2");
  CHECK(p.port == 6433);
  CHECK(p.pool_size == 4);
  CHECK_FALSE(apply_peer_connstr(p, "port=x", nullptr).ok());
  std::vector<std::string> w;
  CHECK(apply_peer_connstr(p, "host=h dbname=x", &w).ok());
  CHECK(w.size() == 1);
}

TEST_CASE("connstr: host lists take one port for all hosts or one per host") {
  DatabaseDef d;
  REQUIRE(apply_database_connstr(d, "host=a,b,c port=6432", nullptr));
  CHECK(d.host == "a,b,c");
  CHECK(d.port == 6432);
  CHECK(d.ports.empty());
  DatabaseDef e;
  REQUIRE(apply_database_connstr(e, "host=a,b port=5433,5434", nullptr));
  CHECK(e.port == 5433);
  CHECK(e.ports == std::vector<int>{5433, 5434});
  DatabaseDef f;
  Status st = apply_database_connstr(f, "host=a,b,c port=5433,5434", nullptr);
  CHECK(!st);
  CHECK(st.message().find("one per host") != std::string::npos);
  DatabaseDef g;
  CHECK(!apply_database_connstr(g, "host=a,b port=5433,x", nullptr));
}

}  // namespace pgsluice
