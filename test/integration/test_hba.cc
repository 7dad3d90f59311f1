// auth_type = hba (issue 11): auth_hba_file's first matching line picks the method for each
// login, over TCP and the Unix socket; reject and no-match lines get PostgreSQL's messages;
// peer takes the Unix socket's OS user; a RELOAD with a broken file keeps the running rules.
// Real libpq against real PostgreSQL.
#include <doctest/doctest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "integration/harness.h"

using namespace it;  // NOLINT: test file

namespace {

// The OS user this test runs as: the peer user pgsluice sees on its Unix socket.
std::string os_user() {
  passwd* pw = getpwuid(getuid());
  REQUIRE(pw != nullptr);
  return pw->pw_name;
}

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("hba: the first matching line picks the method; reject and no match are refused") {
  if (skip_in_direct_mode("auth_hba_file is pgsluice's")) return;
  const std::string me = os_user();
  std::string dir = make_temp_dir("hba");
  REQUIRE(chmod(dir.c_str(), 0755) == 0);  // pgsluice may run as another OS user
  std::string hba_path = dir + "/pg_hba.conf";
  write_file(dir + "/consoleusers", "md5user\n");
  const std::string rules =
      "# pgsluice test rules\n"
      "local   all       " +
      me +
      "               peer\n"
      "local   all       all                   peer\n"
      "host    pgbouncer @consoleusers 127.0.0.1/32 md5\n"
      "host    all       blocked   127.0.0.1/32  reject\n"
      "host    testdb    md5user   127.0.0.1/32  md5\n"
      "host    all       scramuser 127.0.0.1/32  scram-sha-256\n"
      "host    all       plainuser 127.0.0.1/32  password\n"
      "hostssl all       all       127.0.0.1/32  md5\n";
  write_file(hba_path, rules);
  const Cluster& c = cluster();
  std::string pg = "host=127.0.0.1 port=" + std::to_string(c.port);
  Options o;
  o.auth_type = "hba";
  o.extra_pgbouncer = "auth_hba_file = " + hba_path + "\n";
  // peerdb logs in to the server as md5user, whoever the client is.
  o.databases = "testdb = " + pg + " dbname=testdb\npeerdb = " + pg +
                " dbname=testdb user=md5user\nblocked = " + pg + " dbname=testdb\n";
  o.extra_userlist = "\"" + me + "\" \"\"\n\"blocked\" \"blockedpass\"\n";
  Pooler p(o);

  // md5 for md5user on testdb; the wrong password is still refused.
  Conn a = connect(p.conninfo("md5user", "md5pass", "testdb"));
  CHECK(scalar(a.get(), "select current_user") == "md5user");
  std::string err;
  CHECK(try_connect(p.conninfo("md5user", "wrong", "testdb"), &err) == nullptr);
  CHECK(has(err, "password authentication failed for user \"md5user\""));

  // scram-sha-256 and password lines.
  Conn s = connect(p.conninfo("scramuser", "scrampass", "testdb"));
  CHECK(scalar(s.get(), "select current_user") == "scramuser");
  Conn pl = connect(p.conninfo("plainuser", "plainpass", "testdb"));
  CHECK(scalar(pl.get(), "select 1") == "1");

  // reject: PostgreSQL's message, before any password is asked for.
  CHECK(try_connect(p.conninfo("blocked", "blockedpass", "testdb"), &err) == nullptr);
  CHECK(has(err,
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"blocked\", "
            "database \"testdb\", no encryption"));

  // No line for md5user on peerdb over TCP without TLS.
  CHECK(try_connect(p.conninfo("md5user", "md5pass", "peerdb"), &err) == nullptr);
  CHECK(has(err,
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"md5user\", database "
            "\"peerdb\", no encryption"));

  // peer on the Unix socket: this process's OS user logs in without a password...
  Conn u = connect(p.unix_conninfo(me, "", "peerdb"));
  CHECK(scalar(u.get(), "select current_user") == "md5user");
  // ... and another user name over the same socket is refused, whatever its password.
  CHECK(try_connect(p.unix_conninfo("md5user", "md5pass", "testdb"), &err) == nullptr);
  CHECK(has(err, "Peer authentication failed for user \"md5user\""));
  CHECK(has(p.log(),
            "provided user name (md5user) and authenticated user name (" + me + ") do not match"));

  // The console obeys the rules too (@file include).
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
  exec_ok(admin.get(), "SHOW POOLS");

  // A broken file at RELOAD is refused as a whole; the running rules stay.
  write_file(hba_path, rules + "host all all 127.0.0.1/32 nosuchmethod\n");
  Result r(PQexec(admin.get(), "RELOAD"));
  CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
  CHECK(has(p.log(), "RELOAD failed: " + hba_path + ":10: unsupported authentication method"));
  Conn a2 = connect(p.conninfo("md5user", "md5pass", "testdb"));
  CHECK(scalar(a2.get(), "select 1") == "1");
  CHECK(try_connect(p.conninfo("blocked", "blockedpass", "testdb"), &err) == nullptr);

  // A good file at RELOAD applies to new logins: blocked may come in now.
  write_file(hba_path, "host all blocked 127.0.0.1/32 trust\n" + rules);
  exec_ok(admin.get(), "RELOAD");
  std::string e2;
  Conn b = try_connect(p.conninfo("blocked", "", "blocked"), &e2);
  CAPTURE(e2);
  // trust lets blocked in; its server login then fails (no such role in PostgreSQL), which
  // shows as a server error, not as an hba refusal.
  if (b == nullptr) CHECK_FALSE(has(e2, "pg_hba.conf"));
}

TEST_CASE("hba: map= with auth_ident_file lets the Unix socket's OS user log in as another") {
  if (skip_in_direct_mode("auth_hba_file is pgsluice's")) return;
  const std::string me = os_user();
  std::string dir = make_temp_dir("hba");
  REQUIRE(chmod(dir.c_str(), 0755) == 0);  // pgsluice may run as another OS user
  write_file(dir + "/pg_hba.conf", "local all all peer map=staff\nhost all all 127.0.0.1/32 md5\n");
  write_file(dir + "/pg_ident.conf", "# MAP SYSTEM PG\nstaff " + me + " md5user\n");
  Options o;
  o.auth_type = "hba";
  o.extra_pgbouncer =
      "auth_hba_file = " + dir + "/pg_hba.conf\nauth_ident_file = " + dir + "/pg_ident.conf\n";
  Pooler p(o);
  // The OS user may be md5user, through the map, without a password...
  Conn u = connect(p.unix_conninfo("md5user", "", "testdb"));
  CHECK(scalar(u.get(), "select current_user") == "md5user");
  // ... but not scramuser, and not itself.
  std::string err;
  CHECK(try_connect(p.unix_conninfo("scramuser", "scrampass", "testdb"), &err) == nullptr);
  CHECK(has(err, "Peer authentication failed for user \"scramuser\""));
  CHECK(has(p.log(), "no match in usermap \"staff\" for user \"scramuser\" authenticated as \"" +
                         me + "\""));
  // TCP still goes by its md5 line.
  Conn t = connect(p.conninfo("scramuser", "scrampass", "testdb"));
  CHECK(scalar(t.get(), "select 1") == "1");
}

TEST_CASE("hba: the same rules give the same answers as PostgreSQL's own pg_hba.conf") {
  if (skip_in_direct_mode("auth_hba_file is pgsluice's")) return;
  const std::string rules =
      "host    testdb   md5user    127.0.0.1/32  md5\n"
      "host    all      md5user    127.0.0.1/32  reject\n"
      "host    otherdb  scramuser  127.0.0.1/32  scram-sha-256\n"
      "host    testdb   scramuser  127.0.0.1/32  md5\n"
      "host    all      plainuser  127.0.0.1/32  password\n"
      "host    testdb   all        127.0.0.1/32  scram-sha-256\n";
  ClusterSetup cs;
  cs.tag = "pghba";
  cs.hba = "local all all trust\n" + rules;  // the harness sets the cluster up over the socket
  cs.databases = {"otherdb"};
  Cluster pgc = start_cluster(cs);
  std::string dir = make_temp_dir("hba");
  REQUIRE(chmod(dir.c_str(), 0755) == 0);
  write_file(dir + "/pg_hba.conf", rules);
  std::string pg = "host=127.0.0.1 port=" + std::to_string(pgc.port);
  Options o;
  o.auth_type = "hba";
  o.extra_pgbouncer = "auth_hba_file = " + dir + "/pg_hba.conf\n";
  // pgsluice's servers are the same cluster: its rules apply to them too, with the
  // client's own user name, so whatever pgsluice lets in PostgreSQL lets in as well.
  o.databases = "testdb = " + pg + " dbname=testdb\notherdb = " + pg + " dbname=otherdb\n";
  Pooler p(o);
  // What follows "FATAL:  " in libpq's message, or "ok".
  auto answer = [](const std::string& conninfo) {
    std::string err;
    Conn c = try_connect(conninfo + " connect_timeout=10", &err);
    if (c)
      return std::string("ok ") + scalar(c.get(), "select current_user||'@'||current_database()");
    size_t at = err.find("FATAL:  ");
    std::string msg = at == std::string::npos ? err : err.substr(at + 8);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return msg;
  };
  const std::pair<const char*, const char*> users[] = {
      {"md5user", "md5pass"}, {"scramuser", "scrampass"}, {"plainuser", "plainpass"}};
  int same = 0, refused = 0;
  for (const auto& [user, pass] : users) {
    for (bool right : {true, false}) {
      for (const char* db : {"testdb", "otherdb"}) {
        std::string pw = right ? pass : "wrong";
        std::string tail =
            std::string(" user=") + user + " password=" + pw + " dbname=" + db + " sslmode=disable";
        std::string direct = answer(pg + tail);
        std::string pooled = answer("host=127.0.0.1 port=" + std::to_string(p.port()) + tail);
        CAPTURE(user);
        CAPTURE(right);
        CAPTURE(db);
        CHECK(pooled == direct);
        if (pooled == direct) same++;
        if (direct.rfind("ok ", 0) != 0) refused++;
      }
    }
  }
  MESSAGE(same << " of 12 logins answered as PostgreSQL does (" << refused << " refused)");
  CHECK(refused >= 6);
  CHECK(refused < 12);
}
