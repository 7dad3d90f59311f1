// Unit tests for the settings table and the ini reader (config.h).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <string>

#include "config.h"
#include "hba.h"
#include "ident.h"

namespace pgsluice {

namespace {

// A scratch file removed at the end of the test.
struct TempFile {
  std::string path;
  TempFile(const std::string& name, const std::string& body)
      : path("/tmp/pgsluice_test_" + std::to_string(::getpid()) + "_" + name) {
    std::ofstream f(path, std::ios::binary);
    f << body;
  }
  ~TempFile() { std::remove(path.c_str()); }
};

bool has_warning(const Config& c, const std::string& text) {
  for (const auto& w : c.warnings) {
    if (w == text) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("config: every row's default text is what a default Config shows") {
  Config c;
  std::set<std::string> names;
  for (const SettingInfo& row : settings_table()) {
    std::string name = row.name;
    CAPTURE(name);
    std::optional<std::string> v = setting_value(c, row.name);
    REQUIRE(v.has_value());
    CHECK(*v == row.default_value);
    CHECK(names.insert(row.name).second);  // no duplicate rows
    CHECK(std::string(row.doc).size() > 5);
    CHECK(find_setting(row.name) == &row);
  }
  // every setting field of Config: 101 [pgbouncer] keys plus config_file (conffile)
  CHECK(settings_table().size() == 108);
  for (const char* n : {"listen_port", "auth_type", "pool_mode", "workers", "server_lifetime",
                        "max_packet_size", "unix_socket_mode", "client_tls_sslmode",
                        "tcp_user_timeout", "scram_iterations", "query_wait_notify", "conffile"}) {
    CHECK_MESSAGE(find_setting(n) != nullptr, n);
  }
  CHECK_FALSE(find_setting("listen_port")->reloadable);
  CHECK_FALSE(find_setting("workers")->reloadable);
  CHECK(find_setting("pool_mode")->reloadable);
  CHECK(find_setting("nope") == nullptr);
  CHECK_FALSE(setting_value(c, "nope").has_value());
}

TEST_CASE("config: defaults are PgBouncer's") {
  Config c;
  CHECK(*setting_value(c, "listen_port") == "6432");
  CHECK(*setting_value(c, "unix_socket_mode") == "0777");
  CHECK(*setting_value(c, "auth_type") == "md5");
  CHECK(*setting_value(c, "pool_mode") == "session");
  CHECK(*setting_value(c, "server_lifetime") == "3600");
  CHECK(*setting_value(c, "reserve_pool_timeout") == "5");
  CHECK(*setting_value(c, "tcp_keepalive") == "1");
  CHECK(*setting_value(c, "server_tls_sslmode") == "prefer");
  CHECK(*setting_value(c, "max_packet_size") == "2147483647");
  CHECK(*setting_value(c, "server_check_query") == "<empty>");
  CHECK(c.effective_workers() >= 1);
  c.workers = 3;
  CHECK(c.effective_workers() == 3);
}

TEST_CASE("config: names of pool modes and auth types round-trip") {
  for (PoolMode m : {PoolMode::Session, PoolMode::Transaction, PoolMode::Statement}) {
    CHECK(parse_pool_mode(pool_mode_name(m)) == m);
  }
  for (AuthType t : {AuthType::Any, AuthType::Trust, AuthType::Plain, AuthType::Md5,
                     AuthType::ScramSha256, AuthType::Cert, AuthType::Hba, AuthType::Peer}) {
    CHECK(parse_auth_type(auth_type_name(t)) == t);
  }
  CHECK(std::string(auth_type_name(AuthType::ScramSha256)) == "scram-sha-256");
  CHECK(parse_pool_mode("Transaction") == PoolMode::Transaction);
  CHECK_FALSE(parse_pool_mode("pooled").has_value());
  CHECK_FALSE(parse_auth_type("pam").has_value());
  CHECK_FALSE(parse_auth_type("").has_value());
}

TEST_CASE("config: set_setting parses each type and rejects bad values") {
  Config c;
  CHECK(set_setting(c, "listen_port", "7000").ok());
  CHECK(c.listen_port == 7000);
  CHECK(set_setting(c, "LISTEN_PORT", " 7001 ").ok());
  CHECK(c.listen_port == 7001);
  for (const char* t : {"1", "yes", "on", "true", "TRUE", "Yes"}) {
    c.syslog = false;
    CHECK(set_setting(c, "syslog", t).ok());
    CHECK(c.syslog);
  }
  for (const char* f : {"0", "no", "off", "false"}) {
    c.syslog = true;
    CHECK(set_setting(c, "syslog", f).ok());
    CHECK_FALSE(c.syslog);
  }
  CHECK(set_setting(c, "server_lifetime", "0.25").ok());
  CHECK(c.server_lifetime == doctest::Approx(0.25));
  CHECK(*setting_value(c, "server_lifetime") == "0.25");
  CHECK(set_setting(c, "unix_socket_mode", "0700").ok());
  CHECK(c.unix_socket_mode == 0700);
  CHECK(*setting_value(c, "unix_socket_mode") == "0700");
  CHECK(set_setting(c, "auth_type", "scram-sha-256").ok());
  CHECK(c.auth_type == AuthType::ScramSha256);
  CHECK(set_setting(c, "pool_mode", "statement").ok());
  CHECK(c.pool_mode == PoolMode::Statement);
  CHECK(set_setting(c, "client_tls_sslmode", "Verify-Full").ok());
  CHECK(c.client_tls_sslmode == "verify-full");
  CHECK(set_setting(c, "max_packet_size", "1048576").ok());
  CHECK(c.max_packet_size == 1048576);
  CHECK(set_setting(c, "logfile", "").ok());
  CHECK(set_setting(c, "admin_users", "admin, root").ok());
  CHECK(c.admin_users == "admin, root");

  Config before = c;
  struct Bad {
    const char* key;
    const char* value;
  };
  for (Bad b :
       {Bad{"listen_port", "abc"}, Bad{"listen_port", "70000"}, Bad{"listen_port", ""},
        Bad{"listen_port", "12 34"}, Bad{"max_client_conn", "-5"},
        Bad{"max_client_conn", "99999999999999999999"}, Bad{"syslog", "maybe"},
        Bad{"server_lifetime", "-1"}, Bad{"server_lifetime", "1e10"}, Bad{"server_lifetime", "inf"},
        Bad{"server_lifetime", "10s"}, Bad{"unix_socket_mode", "0789"}, Bad{"auth_type", "pam"},
        Bad{"pool_mode", "none"}, Bad{"client_tls_sslmode", "strict"}, Bad{"peer_id", "16384"},
        Bad{"stats_period", "0"}, Bad{"max_packet_size", "4294967296"}}) {
    std::string key = b.key;
    std::string value = b.value;
    CAPTURE(key);
    CAPTURE(value);
    Status st = set_setting(c, b.key, b.value);
    REQUIRE_FALSE(st.ok());
    CHECK(st.message().find(b.key) != std::string::npos);
    CHECK(st.message().find(std::string("'") + b.value + "'") != std::string::npos);
  }
  CHECK(settings_needing_restart(before, c).empty());  // failed sets changed nothing
  CHECK(c.listen_port == 7001);
  CHECK_FALSE(set_setting(c, "no_such_key", "1").ok());
}

TEST_CASE("config: settings_needing_restart lists changed restart-only keys") {
  Config a;
  Config b;
  REQUIRE(set_setting(b, "listen_port", "7000").ok());
  REQUIRE(set_setting(b, "pool_mode", "transaction").ok());
  REQUIRE(set_setting(b, "workers", "4").ok());
  std::vector<std::string> n = settings_needing_restart(a, b);
  CHECK(n == std::vector<std::string>{"listen_port", "workers"});
}

TEST_CASE("config: a full realistic pgbouncer.ini") {
  TempFile users("users.txt",
                 "\"admin\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n"
                 "\"app\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n"
                 "oops\n");
  const std::string ini =
      "; pgbouncer configuration\n"
      "# hash comment\n"
      "[databases]\n"
      "appdb = host=10.1.2.3 port=5433 dbname=app_production pool_size=30 "
      "pool_mode=transaction\n"
      "  reports = host=replica.internal dbname=reports user=reporter password='s3cr''et x' "
      "connect_query='SET search_path = reports, public'\n"
      "\"my-db.v2\" = host=/var/run/postgresql\n"
      "CaseDb = dbname=casedb\n"
      "emptydb =\n"
      "pgbouncer = host=evil\n"
      "* = host=fallback.internal port=5432\n"
      "\n"
      "[users]\n"
      "app = pool_size=10 pool_mode=session max_user_connections=50\n"
      "\n"
      "[peers]\n"
      "1 = host=/tmp/peer1 port=6433\n"
      "2 = host=10.0.0.2\n"
      "\n"
      "[PgBouncer]\n"
      "listen_addr = *\n"
      "listen_port = 6543\n"
      "Auth_Type = scram-sha-256\n"
      "auth_file = " +
      users.path +
      "\n"
      "admin_users = admin\n"
      "pool_mode = transaction\n"
      "server_reset_query =\n"
      "server_lifetime = 1800.5\n"
      "ignore_startup_parameters = extra_float_digits, options\n"
      "frobnicate = 1\n"
      "service_name = pgb\n"
      "max_client_conn=500\r\n"
      "stats_users = a ; not a comment\n"
      "[pgsluice]\n"
      "workers = 2\n";
  TempFile conf("pgbouncer.ini", ini);
  Result<std::shared_ptr<Config>> r = load_config(conf.path);
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  const Config& c = **r;
  CHECK(c.config_file == conf.path);

  REQUIRE(c.databases.size() == 5);
  const DatabaseDef& app = c.databases.at("appdb");
  CHECK(app.name == "appdb");
  CHECK(app.host == "10.1.2.3");
  CHECK(app.port == 5433);
  CHECK(app.dbname == "app_production");
  CHECK(app.pool_size == 30);
  CHECK(app.pool_mode == PoolMode::Transaction);
  const DatabaseDef& rep = c.databases.at("reports");
  CHECK(rep.user == "reporter");
  CHECK(rep.password == "s3cr'et x");
  CHECK(rep.connect_query == "SET search_path = reports, public");
  CHECK(c.databases.at("my-db.v2").host == "/var/run/postgresql");
  CHECK(c.databases.count("CaseDb") == 1);
  CHECK(c.databases.count("casedb") == 0);  // database names are case-sensitive
  CHECK(c.databases.at("emptydb").host.empty());
  CHECK(c.databases.count("pgbouncer") == 0);
  REQUIRE(c.fallback_db.has_value());
  CHECK(c.fallback_db->name == "*");
  CHECK(c.fallback_db->host == "fallback.internal");

  REQUIRE(c.users.size() == 1);
  CHECK(c.users.at("app").pool_size == 10);
  CHECK(c.users.at("app").max_user_connections == 50);
  CHECK(c.users.at("app").pool_mode == PoolMode::Session);

  REQUIRE(c.peers.size() == 2);
  CHECK(c.peers.at(1).peer_id == 1);
  CHECK(c.peers.at(1).host == "/tmp/peer1");
  CHECK(c.peers.at(1).port == 6433);
  CHECK(c.peers.at(2).port == 6432);

  CHECK(c.listen_addr == "*");
  CHECK(c.listen_port == 6543);
  CHECK(c.auth_type == AuthType::ScramSha256);
  CHECK(c.admin_users == "admin");
  CHECK(c.pool_mode == PoolMode::Transaction);
  CHECK(c.server_reset_query.empty());
  CHECK(c.server_lifetime == doctest::Approx(1800.5));
  CHECK(c.ignore_startup_parameters == "extra_float_digits, options");
  CHECK(c.max_client_conn == 500);
  CHECK(c.stats_users == "a ; not a comment");
  CHECK(c.workers == 2);

  REQUIRE(c.userlist.secrets.size() == 2);
  CHECK(*c.userlist.find("admin") == "md5d41d8cd98f00b204e9800998ecf8427e");
  CHECK(c.userlist.find("app")->rfind("SCRAM-SHA-256$", 0) == 0);

  CHECK(has_warning(c, conf.path + ":9: database name 'pgbouncer' is reserved for the admin "
                                   "console, entry ignored"));
  CHECK(has_warning(c, conf.path + ":29: unknown setting 'frobnicate'"));
  CHECK(has_warning(c, conf.path + ":30: setting 'service_name' is not supported, ignored"));
  CHECK(has_warning(c, users.path + ":3: expected a double-quoted user name, line ignored"));
  CHECK(c.warnings.size() == 4);
}

TEST_CASE("config: unknown key warning carries file:line; parsing continues") {
  Config c;
  REQUIRE(
      parse_config_text(c, "[pgbouncer]\n\nbogus_key = 1\nlisten_port = 7000\n", "my.ini").ok());
  REQUIRE(c.warnings.size() == 1);
  CHECK(c.warnings[0] == "my.ini:3: unknown setting 'bogus_key'");
  CHECK(c.listen_port == 7000);
}

TEST_CASE("config: comments only at line start; empty values; CRLF") {
  Config c;
  REQUIRE(parse_config_text(c,
                            "  ; indented comment\r\n"
                            "\t# indented hash comment\r\n"
                            "[pgbouncer]\r\n"
                            "server_reset_query = DISCARD ALL; # keep\r\n"
                            "logfile =\r\n"
                            ";listen_port = 1\r\n"
                            "#listen_port = 2\r\n",
                            "c.ini")
              .ok());
  CHECK(c.server_reset_query == "DISCARD ALL; # keep");
  CHECK(c.logfile.empty());
  CHECK(c.listen_port == 6432);
  CHECK(c.warnings.empty());
}

TEST_CASE("config: a 5000-character line") {
  std::string longval(5000, 'x');
  std::string longdb = "host=h connect_query='SELECT ''" + std::string(5000, 'q') + "'''";
  Config c;
  REQUIRE(parse_config_text(
              c, "[pgbouncer]\nadmin_users = " + longval + "\n[databases]\nd = " + longdb + "\n",
              "long.ini")
              .ok());
  CHECK(c.admin_users == longval);
  CHECK(c.databases.at("d").connect_query == "SELECT '" + std::string(5000, 'q') + "'");
}

TEST_CASE("config: %include is relative to the cwd, nests, and loops are stopped") {
  TempFile inner("inner.ini", "listen_port = 7777\n[databases]\nincdb = host=inc\n");
  TempFile outer("outer.ini", "[pgbouncer]\n%include " + inner.path + "\nafter = host=a\n");
  Config c;
  REQUIRE(parse_config_text(c, "%include " + outer.path + "\n", "main.ini").ok());
  CHECK(c.listen_port == 7777);
  CHECK(c.databases.at("incdb").host == "inc");
  // the section set inside the include carries on after it, as in a textual include
  CHECK(c.databases.at("after").host == "a");
  CHECK(c.warnings.empty());

  Config bad;
  TempFile broken("broken.ini", "[pgbouncer]\n\nlisten_port = x\n");
  Status st = parse_config_text(bad, "%include " + broken.path + "\n", "main.ini");
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().rfind(broken.path + ":3: ", 0) == 0);  // errors name the included file
}

TEST_CASE("config: include loop and missing include are errors") {
  std::string loop_path = "/tmp/pgsluice_test_" + std::to_string(::getpid()) + "_loop.ini";
  TempFile loop("loop.ini", "%include " + loop_path + "\n");
  Config c;
  Status st = parse_config_text(c, "%include " + loop.path + "\n", "main.ini");
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("nested") != std::string::npos);

  Config c2;
  Status st2 = parse_config_text(c2, "[pgbouncer]\n%include /nonexistent/x.ini\n", "m.ini");
  CHECK_FALSE(st2.ok());
  CHECK(st2.message().rfind("m.ini:2: ", 0) == 0);
  CHECK_FALSE(parse_config_text(c2, "%include\n", "m.ini").ok());
  CHECK_FALSE(parse_config_text(c2, "%frob x\n", "m.ini").ok());
}

TEST_CASE("config: bad values and syntax errors are rejected with file:line") {
  struct Case {
    const char* text;
    const char* where;
  };
  for (Case k :
       {Case{"[pgbouncer]\nlisten_port = http\n", "x.ini:2: "},
        Case{"[pgbouncer]\npool_mode = sometimes\n", "x.ini:2: "},
        Case{"[pgbouncer]\n\nlog_stats = perhaps\n", "x.ini:3: "},
        Case{"[pgbouncer]\njust a line\n", "x.ini:2: "}, Case{"[pgbouncer\n", "x.ini:1: "},
        Case{"[pgbouncer] trailing\n", "x.ini:1: "},
        Case{"[databases]\nd = port=nope\n", "x.ini:2: "},
        Case{"[databases]\nd = host='open\n", "x.ini:2: "},
        Case{"[databases]\n\"d = host=x\n", "x.ini:2: "},
        Case{"[databases]\n = host=x\n", "x.ini:2: "},
        Case{"[users]\nu = pool_mode=x\n", "x.ini:2: "},
        Case{"[peers]\nzero = host=x\n", "x.ini:2: "}, Case{"[peers]\n0 = host=x\n", "x.ini:2: "},
        Case{"[peers]\n3 = port=1\n", "x.ini:2: "}}) {
    std::string text = k.text;
    CAPTURE(text);
    Config c;
    Status st = parse_config_text(c, k.text, "x.ini");
    CHECK_FALSE(st.ok());
    CHECK(st.message().rfind(k.where, 0) == 0);
  }
}

TEST_CASE("config: NUL inside a line is an error") {
  Config c;
  std::string text = std::string("[pgbouncer]\nlogfile = a") + '\0' + "b\n";
  CHECK_FALSE(parse_config_text(c, text, "n.ini").ok());
}

TEST_CASE("config: sections, keys outside sections, unknown sections") {
  Config c;
  REQUIRE(parse_config_text(c,
                            "stray = 1\n"
                            "[weird]\n"
                            "anything = goes\n"
                            "[ DATABASES ]\n"
                            "x = host=y\n",
                            "s.ini")
              .ok());
  CHECK(c.databases.count("x") == 1);
  REQUIRE(c.warnings.size() == 2);
  CHECK(c.warnings[0].rfind("s.ini:1: ", 0) == 0);
  CHECK(c.warnings[1] == "s.ini:2: unknown section [weird] ignored");
}

TEST_CASE("config: load_config errors") {
  CHECK_FALSE(load_config("/nonexistent/pgbouncer.ini").ok());
  TempFile conf("noauth.ini", "[pgbouncer]\nauth_file = /nonexistent/userlist.txt\n");
  Result<std::shared_ptr<Config>> r = load_config(conf.path);
  CHECK_FALSE(r.ok());
  CHECK(r.status().message().find("/nonexistent/userlist.txt") != std::string::npos);
}

TEST_CASE("config: every TLS mode loads (what it needs is checked when contexts are built)") {
  for (const char* key : {"client_tls_sslmode", "server_tls_sslmode"}) {
    for (const char* mode : {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}) {
      CAPTURE(key);
      CAPTURE(mode);
      Config c;
      CHECK(set_setting(c, key, mode).ok());
    }
    Config c;
    CHECK_FALSE(set_setting(c, key, "sometimes").ok());
  }
  TempFile g("tls2.ini",
             "[pgbouncer]\nserver_tls_sslmode = verify-full\nclient_tls_sslmode = require\n");
  auto r = load_config(g.path);
  REQUIRE(r.ok());
  CHECK(r.value()->server_tls_sslmode == "verify-full");
  CHECK(r.value()->client_tls_sslmode == "require");
  CHECK(r.value()->tls == nullptr);  // built by make_tls_contexts when committed (tls.h)
}

TEST_CASE("config: value parsers") {
  CHECK(parse_int_value("42") == 42);
  CHECK(parse_int_value(" -7 ") == -7);
  CHECK_FALSE(parse_int_value("").has_value());
  CHECK_FALSE(parse_int_value("4 2").has_value());
  CHECK_FALSE(parse_int_value("0x10").has_value());
  CHECK(parse_seconds_value("0.5") == 0.5);
  CHECK(parse_seconds_value("15") == 15.0);
  CHECK(parse_seconds_value("1e3") == 1000.0);
  CHECK(parse_seconds_value("0.0000001") == 0.0);  // below a microsecond
  CHECK(parse_seconds_value("1.0000004") == 1.0);
  CHECK_FALSE(parse_seconds_value("-0.5").has_value());
  CHECK_FALSE(parse_seconds_value("nan").has_value());
  CHECK_FALSE(parse_seconds_value("1e99").has_value());
  CHECK(parse_bool_value("On") == true);
  CHECK_FALSE(parse_bool_value("2").has_value());
}

}  // namespace pgsluice

namespace pgsluice {
namespace {

TEST_CASE("config: load_hba_rules reads auth_hba_file (and its maps) or refuses them") {
  std::shared_ptr<const HbaFile> hba;
  std::shared_ptr<const IdentFile> ident;
  auto load = [&](const Config& c) { return load_hba_rules(c, &hba, &ident); };
  Config c;
  REQUIRE(load(c).ok());
  CHECK(hba == nullptr);  // not hba: nothing read
  c.auth_type = AuthType::Hba;
  CHECK(load(c).message() == "auth_type = hba needs auth_hba_file");
  c.auth_hba_file = "/nonexistent/pg_hba.conf";
  CHECK_FALSE(load(c).ok());

  TempFile users("hba_users", "alice\nbob\n");
  TempFile good("hba_good", "# comment\nlocal all all peer\nhost all @" + users.path +
                                " 10.0.0.0/8 md5\nhostssl all all ::1/128 scram-sha-256\n");
  c.auth_hba_file = good.path;
  Status ok = load(c);
  REQUIRE_MESSAGE(ok.ok(), ok.message());
  REQUIRE(hba != nullptr);
  CHECK(hba->rules.size() == 3);
  CHECK(hba->rules[1].users.names.count("bob") == 1);
  CHECK(ident == nullptr);  // no map=: the ident file is not needed

  TempFile bad("hba_bad",
               "host all all 10.0.0.0/8 md5\nhost all all 10.0.0.0/8 nosuchmethod\n"
               "host all all all reject\nhost all all 10.0.0.0/33 md5\n");
  c.auth_hba_file = bad.path;
  Status refused = load(c);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.message().rfind(bad.path + ":2: ", 0) == 0);
  CHECK(refused.message().find("(and 1 more)") != std::string::npos);
  CHECK(hba == nullptr);

  TempFile bits("hba_bits", "host all all 10.1.2.3/8 reject\nhost all all all trust\n");
  c.auth_hba_file = bits.path;
  Status b = load(c);
  REQUIRE_FALSE(b.ok());
  CHECK(b.message().rfind(bits.path + ":1: ", 0) == 0);

  TempFile map("hba_map", "local all all peer map=m\n");
  c.auth_hba_file = map.path;
  CHECK(load(c).message() == map.path + ":1: map=m needs auth_ident_file");
  TempFile other("ident_other", "n root postgres\n");
  c.auth_ident_file = other.path;
  CHECK(load(c).message() == map.path + ":1: map \"m\" is not in " + other.path);
  TempFile broken("ident_broken", "m root\n");
  c.auth_ident_file = broken.path;
  CHECK(load(c).message().rfind(broken.path + ":1: expected MAPNAME", 0) == 0);
  TempFile maps("ident_maps", "# maps\nm root postgres\nm /^(.*)@example\\.com$ \\1\n");
  c.auth_ident_file = maps.path;
  REQUIRE(load(c).ok());
  REQUIRE(ident != nullptr);
  CHECK(ident_allows(*ident, "m", "root", "postgres"));
  CHECK(ident_allows(*ident, "m", "ann@example.com", "ann"));
  CHECK_FALSE(ident_allows(*ident, "m", "ann@example.org", "ann"));
}

}  // namespace
}  // namespace pgsluice
