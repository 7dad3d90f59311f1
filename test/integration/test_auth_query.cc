// auth_user/auth_query/auth_dbname and the auth cache (issue 11): secrets looked up in
// PostgreSQL for users not in auth_file, md5 and SCRAM (with pass-through to the server), per
// database settings, a safe search_path for the lookup, the cache (fresh, stale, negative,
// shared lookups, password changes), SHOW/DROP AUTH_CACHE, and auth_cache_file across restarts
// and outages. Auth queries are counted by a SECURITY DEFINER function that bumps a sequence.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"
#include "password.h"
#include "scram.h"

namespace it {
namespace {

TEST_SUITE_BEGIN("auth_query");

// ---------------------------------------------------------------------------------------------
// Fixture: roles (cluster-wide) and, per database, the counting lookup function.

constexpr char kAuthUser[] = "aq_auth";  // auth_user: a plain role, EXECUTE on the lookup only
constexpr char kAuthPass[] = "aq-auth-pass";
constexpr char kAdminUser[] = "aq_admin";  // a superuser, for queries that read pg_authid itself
constexpr char kAdminPass[] = "aq-admin-pass";
// Schema-qualified: the lookup runs with search_path pg_catalog, pg_temp.
constexpr char kLookup[] = "SELECT * FROM public.pgsluice_test_lookup($1)";
constexpr char kSlowLookup[] = "SELECT * FROM public.pgsluice_test_slow_lookup($1)";
constexpr int kBulkUsers = 200;

std::string bulk_user(int i) {
  char buf[32];
  snprintf(buf, sizeof buf, "aq_bulk_%03d", i);
  return buf;
}

// Roles every test may use. md5 secrets where the name says so, SCRAM otherwise.
void create_roles(PGconn* pg, bool bulk) {
  exec_ok(pg, "SET password_encryption = 'scram-sha-256'");
  exec_ok(pg, std::string("CREATE ROLE ") + kAuthUser + " LOGIN PASSWORD '" + kAuthPass + "'");
  exec_ok(pg, std::string("CREATE ROLE ") + kAdminUser + " SUPERUSER LOGIN PASSWORD '" +
                  kAdminPass + "'");
  exec_ok(pg, "CREATE ROLE aq_scram LOGIN PASSWORD 'scram-pw-1'");
  exec_ok(pg, "CREATE ROLE aq_pw_scram LOGIN PASSWORD 'old-scram-pw'");
  exec_ok(pg, "CREATE ROLE aq_evil LOGIN PASSWORD 'evil-pw'");  // SCRAM: not salted by name
  exec_ok(pg, "CREATE ROLE aq_nologin NOLOGIN PASSWORD 'nologin-pw'");
  exec_ok(pg, "SET password_encryption = 'md5'");
  exec_ok(pg, "CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-pw-1'");
  exec_ok(pg, "CREATE ROLE aq_md5b LOGIN PASSWORD 'md5-pw-2'");
  exec_ok(pg, "CREATE ROLE aq_uncached LOGIN PASSWORD 'uncached-pw'");
  exec_ok(pg, "CREATE ROLE aq_victim LOGIN PASSWORD 'victim-pw'");
  exec_ok(pg, "CREATE ROLE aq_pw_md5 LOGIN PASSWORD 'old-md5-pw'");
  exec_ok(pg, "CREATE ROLE aq_expired LOGIN PASSWORD 'expired-pw' VALID UNTIL '2001-01-01'");
  if (bulk)
    exec_ok(pg, "DO $$ BEGIN FOR i IN 0.." + std::to_string(kBulkUsers - 1) +
                    " LOOP EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', "
                    "'aq_bulk_' || lpad(i::text, 3, '0'), 'bulk-pw'); END LOOP; END $$");
  exec_ok(pg, "RESET password_encryption");
}

// The sequence auth_calls counts every run of the lookup functions as it starts (sequences
// ignore transactions: another session sees it at once); the slow one then takes a second,
// for tests that need lookups in flight.
void create_lookup(PGconn* pg) {
  exec_ok(pg, "CREATE SEQUENCE public.auth_calls");
  for (const auto& [name, pause] : std::vector<std::pair<std::string, std::string>>{
           {"pgsluice_test_lookup", ""}, {"pgsluice_test_slow_lookup", "PERFORM pg_sleep(1);"}}) {
    exec_ok(pg, "CREATE FUNCTION public." + name +
                    "(uname text, OUT usename name, OUT passwd text) RETURNS SETOF record "
                    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
                    "$$ BEGIN PERFORM nextval('public.auth_calls'); " +
                    pause +
                    " RETURN QUERY SELECT r.rolname, CASE "
                    "WHEN r.rolvaliduntil < now() THEN NULL ELSE r.rolpassword END FROM pg_authid "
                    "r WHERE r.rolname = uname AND r.rolcanlogin; END $$");
    exec_ok(pg, "REVOKE ALL ON FUNCTION public." + name + "(text) FROM PUBLIC");
    exec_ok(pg, "GRANT EXECUTE ON FUNCTION public." + name + "(text) TO " + kAuthUser);
  }
}

// The objects a hostile owner of a database could plant (the databases evildb and evildb2):
// a public.pg_shadow view that hands out a secret of the attacker's choosing for aq_victim,
// and public.= operators that make `usename = $1` pick aq_evil's row instead of aq_victim's.
// evildb also puts public before pg_catalog in every session's search_path.
void create_traps(const Cluster& c) {
  {
    Conn pg = connect(superuser_conninfo(c, "evildb"));
    // md5 of "hacked" salted with aq_victim: what the victim's secret would be.
    exec_ok(pg.get(),
            "CREATE VIEW public.pg_shadow AS SELECT 'aq_victim'::name AS usename, "
            "'md5' || md5('hacked' || 'aq_victim') AS passwd");
    exec_ok(pg.get(), "ALTER VIEW public.pg_shadow OWNER TO aq_evil");
    exec_ok(pg.get(), "GRANT SELECT ON public.pg_shadow TO PUBLIC");
    exec_ok(pg.get(), "ALTER DATABASE evildb SET search_path = public, pg_catalog");
  }
  {
    Conn pg = connect(superuser_conninfo(c, "evildb2"));
    for (const char* right : {"name", "text"}) {
      std::string fn = std::string("public.aq_eq_") + right;
      exec_ok(pg.get(), "CREATE FUNCTION " + fn + "(name, " + right +
                            ") RETURNS boolean LANGUAGE sql IMMUTABLE AS "
                            "$$ SELECT $1 OPERATOR(pg_catalog.=) 'aq_evil'::name $$");
      exec_ok(pg.get(), std::string("CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = ") +
                            right + ", FUNCTION = " + fn + ")");
      exec_ok(pg.get(), "ALTER FUNCTION " + fn + "(name, " + right + ") OWNER TO aq_evil");
      exec_ok(pg.get(),
              std::string("ALTER OPERATOR public.= (name, ") + right + ") OWNER TO aq_evil");
    }
  }
}

// A cluster of our own (the suite changes roles, and the outage test stops its server): roles,
// the lookup functions in testdb and authdb, the traps in evildb and evildb2.
Cluster make_aq_cluster(const char* tag, bool bulk) {
  ClusterSetup cs;
  cs.tag = tag;
  cs.databases = {"authdb", "evildb", "evildb2"};
  Cluster c = start_cluster(cs);
  {
    Conn pg = connect(superuser_conninfo(c, "postgres"));
    create_roles(pg.get(), bulk);
  }
  for (const char* db : {"testdb", "authdb"}) {
    Conn pg = connect(superuser_conninfo(c, db));
    create_lookup(pg.get());
  }
  create_traps(c);
  return c;
}

const Cluster& aq_cluster() {
  static Cluster* c = nullptr;
  if (c == nullptr) c = new Cluster(make_aq_cluster("pgaq", true));
  return *c;
}

// Runs of the lookup functions so far in db.
long long auth_calls(const Cluster& c, const std::string& db = "testdb") {
  Conn pg = connect(superuser_conninfo(c, db));
  return std::stoll(
      scalar(pg.get(), "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM auth_calls"));
}

std::string pg_target(const Cluster& c) {
  return "host=127.0.0.1 port=" + std::to_string(c.port);
}

// pgsluice in front of c: testdb only, auth_user aq_auth with the counting lookup (global
// settings), aq_auth's password in auth_file, more [pgbouncer] lines in `extra`.
Options aq_options(const Cluster& c, const std::string& extra = "",
                   const std::string& query = kLookup) {
  Options o;
  o.pg_port = c.port;
  o.databases = "testdb = " + pg_target(c) + " dbname=testdb\n";
  o.extra_pgbouncer =
      std::string("auth_user = ") + kAuthUser + "\nauth_query = " + query + "\n" + extra;
  o.extra_userlist = std::string("\"") + kAuthUser + "\" \"" + kAuthPass + "\"\n\"" + kAdminUser +
                     "\" \"" + kAdminPass + "\"\n";
  return o;
}

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// The OS user pgsluice runs as (the harness runs it as postgres when we are root).
bool sluice_ids(uid_t* uid, gid_t* gid) {
  if (geteuid() != 0) return false;
  const char* e = getenv("PGSLUICE_RUN_AS");
  std::string who = e ? e : "postgres";
  if (who == "root") return false;
  passwd* pw = getpwnam(who.c_str());
  REQUIRE(pw != nullptr);
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return true;
}

// A private directory pgsluice may write in (for auth_cache_file).
std::string cache_dir() {
  std::string d = make_temp_dir("aqcache");
  uid_t uid = 0;
  gid_t gid = 0;
  if (sluice_ids(&uid, &gid)) REQUIRE(chown(d.c_str(), uid, gid) == 0);
  REQUIRE(chmod(d.c_str(), 0700) == 0);
  return d;
}

void give_to_sluice(const std::string& path) {
  uid_t uid = 0;
  gid_t gid = 0;
  if (sluice_ids(&uid, &gid)) REQUIRE(lchown(path.c_str(), uid, gid) == 0);
}

// The cache file and its WAL as bytes (names are stored as text in SQLite records).
std::string cache_bytes(const std::string& path) {
  return read_file(path) + read_file(path + "-wal");
}

// ---------------------------------------------------------------------------------------------
// Logins.

// libpq login and a query; the error text when refused.
std::string try_login(const Pooler& p, const std::string& user, const std::string& password,
                      const std::string& db = "testdb") {
  std::string err;
  Conn c = try_connect(p.conninfo(user, password, db) + " connect_timeout=20", &err);
  if (!c) return err.empty() ? "refused" : err;
  std::string who;
  if (!exec_nothrow(c.get(), "select current_user", &err, &who)) return err;
  return who == user ? "" : "logged in as " + who;
}

void login_ok(const Pooler& p, const std::string& user, const std::string& password,
              const std::string& db = "testdb") {
  std::string err = try_login(p, user, password, db);
  CHECK_MESSAGE(err.empty(), "login as " << user << " to " << db << " failed: " << err);
}

// Refused with PostgreSQL's message for a wrong password, through libpq and the raw protocol.
void login_refused(const Pooler& p, const std::string& user, const std::string& password,
                   const std::string& db = "testdb") {
  INFO("refused login as " << user << " to " << db);
  std::string err = try_login(p, user, password, db);
  CHECK_MESSAGE(has(err, "password authentication failed for user \"" + user + "\""), err);
  Msg m = login_with_wrong_password(p.port(), user, db);
  CHECK_MESSAGE(m.type == 'E', "expected an ErrorResponse, got type " << int(m.type));
  CHECK(m.field('S') == "FATAL");
  CHECK(m.field('C') == "28P01");
  CHECK(m.field('M') == "password authentication failed for user \"" + user + "\"");
}

// A raw-protocol login that notes when AuthenticationOk came, then waits for ReadyForQuery or
// an error. Asserts nothing (usable from threads).
struct RawLogin {
  bool connected = false;
  bool auth_ok = false;
  Clock::time_point auth_ok_at;
  Msg end;  // 'Z': logged in; 'E': refused; type 0: closed or timed out
  Clock::time_point end_at;
  Raw conn;
};

RawLogin raw_login(int port, const std::string& user, const std::string& db,
                   const std::string& password, double timeout_s = 10,
                   const std::vector<std::pair<std::string, std::string>>& more_params = {}) {
  RawLogin out;
  // CLOEXEC: a PostgreSQL started meanwhile (pg_ctl from this process) must not inherit it.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return out;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return out;
  }
  out.connected = true;
  out.conn = Raw(fd);
  std::vector<std::pair<std::string, std::string>> params = {{"user", user}, {"database", db}};
  params.insert(params.end(), more_params.begin(), more_params.end());
  if (!out.conn.send_bytes(startup_packet(params))) return out;
  pgsluice::ScramClientSession scram = pgsluice::ScramClientSession::with_password(password);
  auto t0 = Clock::now();
  for (;;) {
    double left = timeout_s - seconds_since(t0);
    Msg m;
    if (left <= 0 || out.conn.read_msg(&m, left) != ReadStatus::Ok) break;
    if (m.type == 'E' || m.type == 'Z') {
      out.end = m;
      break;
    }
    if (m.type != 'R' || m.body.size() < 4) continue;  // ParameterStatus, BackendKeyData...
    uint32_t code = static_cast<uint32_t>(static_cast<uint8_t>(m.body[3]));
    bool sent = true;
    if (code == 0) {
      out.auth_ok = true;
      out.auth_ok_at = Clock::now();
    } else if (code == 3) {
      sent = out.conn.send_msg('p', cstr(password));
    } else if (code == 5 && m.body.size() >= 8) {
      sent = out.conn.send_msg(
          'p', cstr(pgsluice::md5_response(password, user,
                                           reinterpret_cast<const uint8_t*>(m.body.data() + 4))));
    } else if (code == 10) {
      std::string first = scram.client_first();
      sent = out.conn.send_msg(
          'p', cstr("SCRAM-SHA-256") + be32(static_cast<uint32_t>(first.size())) + first);
    } else if (code == 11) {
      auto fin = scram.handle_server_first(m.body.substr(4));
      sent = fin && out.conn.send_msg('p', *fin);
    } else if (code == 12) {
      sent = scram.verify_server_final(m.body.substr(4)).ok();
    } else {
      sent = false;
    }
    if (!sent) break;
  }
  out.end_at = Clock::now();
  return out;
}

// First value of a simple query over a logged-in raw connection ("" on any failure).
std::string raw_scalar(Raw& r, const std::string& sql, double timeout_s = 10) {
  if (!r.send_msg('Q', cstr(sql))) return "";
  std::string value;
  for (const Msg& m : r.read_until('Z', timeout_s)) {
    if (m.type == 'D' && value.empty() && m.body.size() >= 6) {
      uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(m.body[2])) << 24) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(m.body[3])) << 16) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(m.body[4])) << 8) |
                     static_cast<uint32_t>(static_cast<uint8_t>(m.body[5]));
      if (len != 0xffffffffu && 6 + static_cast<size_t>(len) <= m.body.size())
        value = m.body.substr(6, len);
    }
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// The console.

struct CacheRow {
  std::string user, database, source;
  double age = -1;
  long long hits = -1;
};

// SHOW AUTH_CACHE: its columns, and no value that is or contains a secret.
std::vector<CacheRow> show_auth_cache(PGconn* admin) {
  Result r = exec_ok(admin, "SHOW AUTH_CACHE");
  const std::vector<std::string> want = {"user", "database", "source", "age", "hits"};
  REQUIRE(PQnfields(r.get()) == static_cast<int>(want.size()));
  for (int i = 0; i < PQnfields(r.get()); i++) REQUIRE(PQfname(r.get(), i) == want[i]);
  std::vector<CacheRow> rows;
  for (int i = 0; i < PQntuples(r.get()); i++) {
    for (int j = 0; j < PQnfields(r.get()); j++) {
      std::string v = PQgetvalue(r.get(), i, j);
      CHECK_MESSAGE(!has(v, "SCRAM-SHA-256$"), "a SCRAM secret in SHOW AUTH_CACHE");
      bool md5_secret = v.size() == 35 && v.rfind("md5", 0) == 0 &&
                        v.find_first_not_of("0123456789abcdef", 3) == std::string::npos;
      CHECK_MESSAGE(!md5_secret, "an md5 secret in SHOW AUTH_CACHE");
      CHECK_MESSAGE(!has(v, "-pw"), "a password in SHOW AUTH_CACHE");
    }
    CacheRow row;
    row.user = PQgetvalue(r.get(), i, 0);
    row.database = PQgetvalue(r.get(), i, 1);
    row.source = PQgetvalue(r.get(), i, 2);
    row.age = atof(PQgetvalue(r.get(), i, 3));
    row.hits = atoll(PQgetvalue(r.get(), i, 4));
    rows.push_back(row);
  }
  return rows;
}

// The row of user (source "" when there is none).
CacheRow cache_row(PGconn* admin, const std::string& user) {
  for (const CacheRow& r : show_auth_cache(admin))
    if (r.user == user) return r;
  return CacheRow{};
}

Conn admin_console(const Pooler& p) {
  return connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL's own lookups and logins.

TEST_CASE("auth_query: md5 and SCRAM secrets from PostgreSQL; SCRAM keys log the server in") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  // PgBouncer's default auth_query, run by a superuser auth_user: no password of aq_md5 or
  // aq_scram anywhere in pgsluice's files.
  Options o = aq_options(c);
  o.extra_pgbouncer = std::string("auth_user = ") + kAdminUser + "\n";
  Pooler p(o);
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_scram", "scram-pw-1");
  // auth_type md5: an md5 secret gets the md5 challenge; a SCRAM secret gets SCRAM.
  RawLogin m = raw_login(p.port(), "aq_md5", "testdb", "md5-pw-1");
  CHECK(m.end.type == 'Z');
  CHECK(raw_scalar(m.conn, "select current_user") == "aq_md5");
  // The SCRAM user's pool logs in to PostgreSQL with the keys its clients proved: while s2
  // holds one server in a transaction, s's query needs a second server login.
  RawLogin s = raw_login(p.port(), "aq_scram", "testdb", "scram-pw-1");
  REQUIRE(s.end.type == 'Z');
  Conn s2 = connect(p.conninfo("aq_scram", "scram-pw-1"));
  exec_ok(s2.get(), "BEGIN");
  CHECK(raw_scalar(s.conn, "select current_user") == "aq_scram");
  exec_ok(s2.get(), "COMMIT");
  {
    Conn pg = connect(superuser_conninfo(c, "testdb"));
    CHECK(std::stoi(scalar(
              pg.get(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aq_scram'")) >= 2);
  }
  // The challenge each one gets.
  auto first_code = [&](const std::string& user) {
    Raw r = Raw::tcp(p.port());
    REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", "testdb"}})));
    Msg msg;
    if (r.read_msg(&msg, 10) != ReadStatus::Ok || msg.type != 'R' || msg.body.size() < 4) return -1;
    return static_cast<int>(static_cast<uint8_t>(msg.body[3]));
  };
  CHECK(first_code("aq_md5") == 5);
  CHECK(first_code("aq_scram") == 10);
  login_refused(p, "aq_md5", "wrong");
  login_refused(p, "aq_scram", "wrong");
  // auth_file users are not looked up.
  login_ok(p, "md5user", "md5pass");
}

TEST_CASE("auth_query: auth_type scram-sha-256 with a SCRAM secret from PostgreSQL") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Options o = aq_options(c);
  o.auth_type = "scram-sha-256";
  Pooler p(o);
  login_ok(p, "aq_scram", "scram-pw-1");
  login_refused(p, "aq_scram", "wrong");
  login_refused(p, "aq_nosuchuser", "whatever");
}

TEST_CASE("auth_query: unknown users, expired and NOLOGIN roles and wrong passwords look alike") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  for (bool default_query : {true, false}) {
    CAPTURE(default_query);
    Options o = aq_options(c);
    if (default_query) o.extra_pgbouncer = std::string("auth_user = ") + kAdminUser + "\n";
    Pooler p(o);
    login_ok(p, "aq_md5", "md5-pw-1");
    login_refused(p, "aq_md5", "wrong");
    login_refused(p, "aq_scram", "wrong");
    login_refused(p, "aq_nosuchuser", "whatever");
    // VALID UNTIL in the past: the query returns a NULL secret.
    login_refused(p, "aq_expired", "expired-pw");
    // NOLOGIN: no row.
    login_refused(p, "aq_nologin", "nologin-pw");
    // The right password of an unknown user's look-alike does not help either.
    login_refused(p, "aq_md5_", "md5-pw-1");
    CHECK(!has(p.log(), "md5-pw-1"));
  }
}

TEST_CASE(
    "auth_query: per-database auth_user, auth_query and auth_dbname override the global ones") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  const std::string pg = pg_target(c);
  {
    // Global: aq_auth, the counting lookup, run in authdb.
    Options o = aq_options(c, "auth_dbname = authdb\n");
    // auth_dbname names an entry of [databases], as in PgBouncer.
    o.databases = "testdb = " + pg + " dbname=testdb\nauthdb = " + pg + " dbname=authdb\n" +
                  "localq = " + pg + " dbname=testdb auth_dbname=testdb\n" + "adminq = " + pg +
                  " dbname=testdb auth_user=" + kAdminUser +
                  " auth_query='SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1'\n";
    Pooler p(o);
    long long auth0 = auth_calls(c, "authdb"), test0 = auth_calls(c, "testdb");
    login_ok(p, "aq_md5", "md5-pw-1", "testdb");
    CHECK(auth_calls(c, "authdb") == auth0 + 1);  // global auth_dbname
    CHECK(auth_calls(c, "testdb") == test0);
    login_ok(p, "aq_scram", "scram-pw-1", "localq");
    CHECK(auth_calls(c, "authdb") == auth0 + 1);
    CHECK(auth_calls(c, "testdb") == test0 + 1);  // per-database auth_dbname
    login_ok(p, "aq_md5b", "md5-pw-2", "adminq");
    CHECK(auth_calls(c, "authdb") == auth0 + 1);  // per-database auth_user and auth_query
    CHECK(auth_calls(c, "testdb") == test0 + 1);
    login_refused(p, "aq_md5b", "wrong", "adminq");
  }
  {
    // No global auth_user: only the databases that name one look users up.
    Options o = aq_options(c);
    o.extra_pgbouncer = "";
    // An unqualified function in public is found (the lookup's search_path is auth_user's
    // default behind pg_catalog).
    o.databases = "testdb = " + pg + " dbname=testdb\n" + "withq = " + pg +
                  " dbname=testdb auth_user=" + kAuthUser +
                  " auth_query='SELECT * FROM pgsluice_test_lookup($1)'\n";
    Pooler p(o);
    long long test0 = auth_calls(c, "testdb");
    login_ok(p, "aq_md5", "md5-pw-1", "withq");
    CHECK(auth_calls(c, "testdb") == test0 + 1);
    login_refused(p, "aq_md5b", "md5-pw-2", "testdb");
    login_ok(p, "md5user", "md5pass", "testdb");
  }
}

// ---------------------------------------------------------------------------------------------
// search_path: what the query sees is the real catalog, whatever the session's state.

// Whether a login as aq_victim with `password` to db got AuthenticationOk. (A fooled lookup
// may still end at the server's own login check before any AuthenticationOk; what always
// shows it is that the victim's real password stops working: login_ok below.)
bool victim_gets_in(const Pooler& p, const std::string& db, const std::string& password,
                    const std::vector<std::pair<std::string, std::string>>& more = {}) {
  RawLogin l = raw_login(p.port(), "aq_victim", db, password, 15, more);
  return l.auth_ok;
}

TEST_CASE("auth_query: a planted pg_shadow view or = operator does not shadow the catalog") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  const std::string q = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1";
  // The traps work on a session whose search_path puts public first: this is what an
  // unprotected lookup would see.
  {
    Conn pg = connect(superuser_conninfo(c, "evildb"));  // the database's own setting
    CHECK(scalar(pg.get(), "SELECT passwd FROM pg_shadow WHERE usename = 'aq_victim'") ==
          pgsluice::md5_secret("hacked", "aq_victim"));
    Conn pg2 = connect(superuser_conninfo(c, "evildb2"));
    exec_ok(pg2.get(), "SET search_path = public, pg_catalog");
    const char* v[1] = {"aq_victim"};
    Result r(PQexecParams(pg2.get(), (q).c_str(), 1, nullptr, v, nullptr, nullptr, 0));
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    REQUIRE(PQntuples(r.get()) == 1);
    CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "aq_evil");
  }
  const std::string pg = pg_target(c);
  Options o = aq_options(c);
  o.pool_mode = "session";
  o.default_pool_size = 1;
  o.workers = 1;  // the auth_user's session and the lookups share that one server
  // Global settings (PgBouncer 1.18 can stand in: PGSLUICE_BIN=<a wrapper>).
  o.extra_pgbouncer =
      std::string("auth_user = ") + kAdminUser + "\nauth_query = " + q + "\nserver_reset_query =\n";
  o.databases = "evildb = " + pg + " dbname=evildb\nevildb2 = " + pg + " dbname=evildb2\n";
  Pooler p(o);
  // The database's search_path (ALTER DATABASE ... SET) and its planted view.
  CHECK_FALSE(victim_gets_in(p, "evildb", "hacked"));
  login_ok(p, "aq_victim", "victim-pw", "evildb");
  // The client's own search_path in its startup packet.
  CHECK_FALSE(victim_gets_in(p, "evildb2", "evil-pw", {{"search_path", "public, pg_catalog"}}));
  // The auth_user's session, through pgsluice, leaves search_path set on the one server of
  // its pool (session pooling, no reset query).
  {
    Conn a = connect(p.conninfo(kAdminUser, kAdminPass, "evildb2"));
    exec_ok(a.get(), "SET search_path = public, pg_catalog");
    CHECK(scalar(a.get(), "SELECT usename FROM pg_shadow WHERE usename = 'aq_victim'") ==
          "aq_evil");
  }
  CHECK_FALSE(victim_gets_in(p, "evildb2", "evil-pw"));
  login_ok(p, "aq_victim", "victim-pw", "evildb2");
  CHECK_FALSE(victim_gets_in(p, "evildb2", "evil-pw"));
  // ... and a temporary pg_shadow view on that server (temporary relations come first
  // unless search_path places pg_temp).
  {
    Conn a = connect(p.conninfo(kAdminUser, kAdminPass, "evildb2"));
    exec_ok(a.get(),
            "CREATE TEMP VIEW pg_shadow AS SELECT 'aq_victim'::name AS usename, passwd "
            "FROM pg_catalog.pg_shadow WHERE usename OPERATOR(pg_catalog.=) 'aq_evil'");
    exec_ok(a.get(), "RESET search_path");
    CHECK(scalar(a.get(),
                 "SELECT count(*) FROM pg_shadow WHERE usename "
                 "OPERATOR(pg_catalog.=) 'aq_victim' AND passwd LIKE 'SCRAM%'") == "1");
  }
  CHECK_FALSE(victim_gets_in(p, "evildb2", "evil-pw"));
  login_ok(p, "aq_victim", "victim-pw", "evildb2");
  // The server the auth_user left behind still has its search_path: the lookup did not need
  // it reset (and nobody else's session was changed).
  Conn a2 = connect(p.conninfo(kAdminUser, kAdminPass, "evildb2"));
  CHECK_MESSAGE(scalar(a2.get(), "SHOW search_path") == "\"$user\", public",
                "the lookup changed the search_path of a pooled server session");
  CHECK(scalar(a2.get(), "SELECT count(*) FROM pg_temp.pg_shadow") == "1");
}

TEST_CASE("auth_query: a lookup gets the auth_user's server that another worker holds idle") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  // One server for the auth_user's pool in all: after a lookup it sits idle on the worker
  // that ran it, and a lookup on the other worker must be handed it (no new slot is free).
  Options o = aq_options(c);
  o.workers = 2;
  o.default_pool_size = 1;
  Pooler p(o);
  for (int i = 0; i < 8; i++) {
    auto t0 = Clock::now();
    std::string err;
    Conn cn = try_connect(p.conninfo(bulk_user(i), "bulk-pw") + " connect_timeout=5", &err);
    double took = seconds_since(t0);
    CAPTURE(i);
    CHECK_MESSAGE(cn != nullptr, err);
    CHECK(took < 3);
  }
}

// ---------------------------------------------------------------------------------------------
// The cache in memory.

TEST_CASE("auth_query: a fresh entry needs no query; a stale one is used and refreshed behind") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  // The slow lookup takes a second: a login that waits for it is easy to see.
  Pooler p(aq_options(c, "auth_cache_ttl = 2\n", kSlowLookup));
  Conn admin = admin_console(p);
  long long n0 = auth_calls(c);
  auto t0 = Clock::now();
  login_ok(p, "aq_md5", "md5-pw-1");
  double first = seconds_since(t0);
  CHECK(first >= 0.9);  // it waited for the lookup
  CHECK(auth_calls(c) == n0 + 1);
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_md5", "md5-pw-1");
  CHECK(auth_calls(c) == n0 + 1);
  CacheRow row = cache_row(admin.get(), "aq_md5");
  CHECK(row.source == "auth_query");
  CHECK(row.hits >= 2);
  CHECK(row.database != "");
  // Stale: the login goes on at once with the cached verifier; one query runs behind it.
  CHECK(eventually([&] { return cache_row(admin.get(), "aq_md5").age >= 2.5; }, 6));
  t0 = Clock::now();
  login_ok(p, "aq_md5", "md5-pw-1");
  double stale = seconds_since(t0);
  MESSAGE("login with the lookup: " << first << " s; with a stale entry: " << stale << " s");
  CHECK(stale < 0.8);
  CHECK(eventually([&] { return auth_calls(c) == n0 + 2; }, 5));
  CHECK(eventually([&] { return cache_row(admin.get(), "aq_md5").age < 2; }, 5));
  // Refreshed: fresh again, no query.
  login_ok(p, "aq_md5", "md5-pw-1");
  CHECK(auth_calls(c) == n0 + 2);
}

TEST_CASE("auth_query: concurrent logins of one user share one query") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Options o = aq_options(c, "", kSlowLookup);
  o.workers = 1;  // the lookup must not hold up the one event loop
  Pooler p(o);
  long long n0 = auth_calls(c);
  constexpr int kThreads = 8;
  std::vector<std::string> errs(kThreads);
  std::vector<std::thread> th;
  for (int i = 0; i < kThreads; i++)
    th.emplace_back([&, i] {
      std::string err;
      Conn cn = try_connect(p.conninfo("aq_md5b", "md5-pw-2") + " connect_timeout=20", &err);
      std::string v;
      if (cn && !exec_nothrow(cn.get(), "select current_user", &err, &v)) cn.reset();
      errs[i] = cn ? (v == "aq_md5b" ? "" : "as " + v) : (err.empty() ? "refused" : err);
    });
  // While the lookup runs, an auth_file user logs in and is served at once.
  CHECK(eventually([&] { return auth_calls(c) > n0; }, 5));
  auto t0 = Clock::now();
  login_ok(p, "md5user", "md5pass");
  double other = seconds_since(t0);
  for (auto& t : th) t.join();
  MESSAGE("an auth_file user's login and query during a 1 s lookup: " << other << " s");
  CHECK(other < 0.5);
  for (int i = 0; i < kThreads; i++) CHECK_MESSAGE(errs[i].empty(), errs[i]);
  CHECK(auth_calls(c) == n0 + 1);
  // And concurrent logins of an unknown name: one query, all refused alike.
  n0 = auth_calls(c);
  std::vector<Msg> ends(kThreads);
  th.clear();
  for (int i = 0; i < kThreads; i++)
    th.emplace_back([&, i] { ends[i] = raw_login(p.port(), "aq_ghost", "testdb", "x", 20).end; });
  for (auto& t : th) t.join();
  for (int i = 0; i < kThreads; i++) {
    CHECK(ends[i].type == 'E');
    CHECK(ends[i].field('C') == "28P01");
  }
  CHECK(auth_calls(c) == n0 + 1);
}

TEST_CASE("auth_query: unknown names are cached as not found for auth_cache_negative_ttl") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  {
    Pooler p(aq_options(c));  // auth_cache_negative_ttl: default 10 s
    long long n0 = auth_calls(c);
    auto t0 = Clock::now();
    constexpr int kNames = 5;
    for (int i = 0; i < 1000; i++) {
      Msg m =
          login_with_wrong_password(p.port(), "aq_nobody_" + std::to_string(i % kNames), "testdb");
      REQUIRE(m.field('C') == "28P01");
    }
    double took = seconds_since(t0);
    long long repeated = auth_calls(c) - n0;
    MESSAGE("1000 logins of " << kNames << " unknown names: " << repeated << " auth queries, "
                              << took << " s");
    CHECK(took < 10);  // all within the negative TTL
    CHECK(repeated >= kNames);
    CHECK(repeated <= kNames + 3);
    Conn admin = admin_console(p);
    CHECK(cache_row(admin.get(), "aq_nobody_0").source == "not_found");
    // Distinct names each cost one query (no more).
    n0 = auth_calls(c);
    t0 = Clock::now();
    for (int i = 0; i < 1000; i++) {
      Msg m = login_with_wrong_password(p.port(), "aq_stranger_" + std::to_string(i), "testdb");
      REQUIRE(m.field('C') == "28P01");
    }
    long long distinct = auth_calls(c) - n0;
    MESSAGE("1000 logins of distinct unknown names: " << distinct << " auth queries, "
                                                      << seconds_since(t0) << " s");
    CHECK(distinct <= 1000 + 3);
    CHECK(p.alive());
  }
  {
    // A role created after its name was found missing can log in once the entry expires.
    Pooler p(aq_options(c, "auth_cache_negative_ttl = 2\n"));
    login_refused(p, "aq_late", "late-pw");
    {
      Conn pg = connect(superuser_conninfo(c, "postgres"));
      exec_ok(pg.get(), "CREATE ROLE aq_late LOGIN PASSWORD 'late-pw'");
    }
    CHECK(has(try_login(p, "aq_late", "late-pw"), "password authentication failed"));
    CHECK(eventually([&] { return try_login(p, "aq_late", "late-pw").empty(); }, 5));
  }
}

TEST_CASE("auth_query: an md5 password changed in PostgreSQL works at the next login") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Pooler p(aq_options(c));
  Conn admin = admin_console(p);
  login_ok(p, "aq_pw_md5", "old-md5-pw");
  long long n0 = auth_calls(c);
  {
    Conn pg = connect(superuser_conninfo(c, "postgres"));
    exec_ok(pg.get(), "SET password_encryption = 'md5'");
    exec_ok(pg.get(), "ALTER ROLE aq_pw_md5 PASSWORD 'new-md5-pw'");
  }
  // The check against the cached verifier fails, one refresh, the check passes.
  login_ok(p, "aq_pw_md5", "new-md5-pw");
  CHECK(auth_calls(c) == n0 + 1);
  login_refused(p, "aq_pw_md5", "old-md5-pw");
  long long n1 = auth_calls(c);
  login_ok(p, "aq_pw_md5", "new-md5-pw");
  CHECK(auth_calls(c) == n1);  // the cache holds the new verifier
  CHECK(cache_row(admin.get(), "aq_pw_md5").source == "auth_query");
}

TEST_CASE("auth_query: a SCRAM password change: the first new login may fail once, then works") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Pooler p(aq_options(c));
  login_ok(p, "aq_pw_scram", "old-scram-pw");
  {
    Conn pg = connect(superuser_conninfo(c, "postgres"));
    exec_ok(pg.get(), "SET password_encryption = 'scram-sha-256'");
    exec_ok(pg.get(), "ALTER ROLE aq_pw_scram PASSWORD 'new-scram-pw'");
  }
  long long n0 = auth_calls(c);
  // The client's proof was made with the old salt: it cannot be checked against the new
  // verifier. That failure refreshes the entry...
  RawLogin first = raw_login(p.port(), "aq_pw_scram", "testdb", "new-scram-pw");
  CHECK(first.end.type == 'E');
  CHECK(first.end.field('C') == "28P01");
  CHECK(first.end.field('M') == "password authentication failed for user \"aq_pw_scram\"");
  CHECK(auth_calls(c) == n0 + 1);
  // ... so the next login works, and the old password no longer does.
  login_ok(p, "aq_pw_scram", "new-scram-pw");
  login_refused(p, "aq_pw_scram", "old-scram-pw");
  login_ok(p, "aq_pw_scram", "new-scram-pw");
}

TEST_CASE("auth_query: SHOW AUTH_CACHE, DROP AUTH_CACHE, and RELOAD keeps the entries") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Pooler p(aq_options(c));
  Conn admin = admin_console(p);  // md5user: an auth_file user
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_scram", "scram-pw-1");
  login_refused(p, "aq_ghost", "x");
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_md5", "md5-pw-1");
  std::vector<CacheRow> rows = show_auth_cache(admin.get());
  std::map<std::string, CacheRow> by_user;
  for (const CacheRow& r : rows) by_user[r.user] = r;
  CHECK(by_user["aq_md5"].source == "auth_query");
  CHECK(by_user["aq_md5"].hits >= 2);
  CHECK(by_user["aq_md5"].age >= 0);
  CHECK(by_user["aq_scram"].source == "auth_query");
  CHECK(by_user["aq_ghost"].source == "not_found");
  CHECK(by_user["md5user"].source == "auth_file");
  CHECK(by_user.count("aq_nosuch") == 0);
  // RELOAD keeps every entry: no query at the next login.
  exec_ok(admin.get(), "RELOAD");
  CHECK(cache_row(admin.get(), "aq_md5").source == "auth_query");
  CHECK(cache_row(admin.get(), "aq_ghost").source == "not_found");
  long long n0 = auth_calls(c);
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_scram", "scram-pw-1");
  CHECK(auth_calls(c) == n0);
  // DROP AUTH_CACHE user: that entry only.
  exec_ok(admin.get(), "DROP AUTH_CACHE aq_md5");
  CHECK(cache_row(admin.get(), "aq_md5").source == "");
  CHECK(cache_row(admin.get(), "aq_scram").source == "auth_query");
  login_ok(p, "aq_md5", "md5-pw-1");
  CHECK(auth_calls(c) == n0 + 1);
  login_ok(p, "aq_scram", "scram-pw-1");
  CHECK(auth_calls(c) == n0 + 1);
  // DROP AUTH_CACHE: every looked-up entry.
  exec_ok(admin.get(), "DROP AUTH_CACHE");
  for (const CacheRow& r : show_auth_cache(admin.get()))
    CHECK_MESSAGE(r.source == "auth_file", r.user << " kept as " << r.source);
  login_ok(p, "aq_scram", "scram-pw-1");
  CHECK(auth_calls(c) == n0 + 2);
  // auth_file users still log in.
  login_ok(p, "md5user", "md5pass");
}

// ---------------------------------------------------------------------------------------------
// auth_cache_file.

// Logs in every user of `users` (password bulk-pw) over 4 threads; the failures.
std::vector<std::string> bulk_logins(const Pooler& p, int n) {
  std::vector<std::string> errs(static_cast<size_t>(n));
  std::vector<std::thread> th;
  std::atomic<int> next{0};
  for (int t = 0; t < 4; t++)
    th.emplace_back([&] {
      for (int i = next++; i < n; i = next++) {
        std::string err;
        Conn cn = try_connect(p.conninfo(bulk_user(i), "bulk-pw") + " connect_timeout=20", &err);
        if (!cn) errs[static_cast<size_t>(i)] = bulk_user(i) + ": " + err;
      }
    });
  for (auto& t : th) t.join();
  std::vector<std::string> failed;
  for (auto& e : errs)
    if (!e.empty()) failed.push_back(e);
  return failed;
}

TEST_CASE(
    "auth_query: 200 users cached in auth_cache_file log in after a restart with < 5 queries") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  const std::string dir = cache_dir();
  const std::string file = dir + "/auth_cache.db";
  const std::string extra = "auth_cache_file = " + file + "\n";
  long long n0 = auth_calls(c);
  {
    Pooler p(aq_options(c, extra));
    std::vector<std::string> failed = bulk_logins(p, kBulkUsers);
    CHECK_MESSAGE(failed.empty(), failed.size()
                                      << " failed, first: " << (failed.empty() ? "" : failed[0]));
    long long n1 = auth_calls(c);
    CHECK(n1 - n0 >= kBulkUsers);
    CHECK(n1 - n0 <= kBulkUsers + 3);
    // Written behind the logins: wait for every name to reach the file.
    CHECK(eventually(
        [&] {
          std::string b = cache_bytes(file);
          for (int i = 0; i < kBulkUsers; i++)
            if (!has(b, bulk_user(i))) return false;
          return true;
        },
        10));
    struct stat st {};
    REQUIRE(stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    if (stat((file + "-wal").c_str(), &st) == 0) CHECK((st.st_mode & 077) == 0);
    CHECK(read_file(file).rfind("SQLite format 3", 0) == 0);
    // Only verifiers: no password in the file.
    CHECK(!has(cache_bytes(file), "bulk-pw"));
  }
  long long n1 = auth_calls(c);
  Pooler p(aq_options(c, extra));
  auto t0 = Clock::now();
  std::vector<std::string> failed = bulk_logins(p, kBulkUsers);
  double took = seconds_since(t0);
  CHECK_MESSAGE(failed.empty(), failed.size()
                                    << " failed, first: " << (failed.empty() ? "" : failed[0]));
  long long queries = auth_calls(c) - n1;
  MESSAGE(kBulkUsers << " cached users after a restart: " << queries << " auth queries, " << took
                     << " s");
  CHECK(queries < 5);
  Conn admin = admin_console(p);
  int from_file = 0;
  for (const CacheRow& r : show_auth_cache(admin.get()))
    if (r.user.rfind("aq_bulk_", 0) == 0 && r.source == "cache") from_file++;
  CHECK(from_file >= kBulkUsers - 5);
}

TEST_CASE("auth_query: a corrupt auth_cache_file is logged and replaced") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  const std::string dir = cache_dir();
  const std::string file = dir + "/auth_cache.db";
  std::string garbage;
  for (int i = 0; i < 200; i++) garbage += "this is not an SQLite database\n";
  write_file(file, garbage, 0600);
  give_to_sluice(file);
  Pooler p(aq_options(c, "auth_cache_file = " + file + "\n"));
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_scram", "scram-pw-1");
  CHECK(has(p.log(), file));
  CHECK(eventually([&] { return read_file(file).rfind("SQLite format 3", 0) == 0; }, 10));
  CHECK(eventually([&] { return has(cache_bytes(file), "aq_scram"); }, 10));
  CHECK(p.alive());
  // Moved aside, not lost: an operator may want to look at it.
  CHECK(read_file(file + ".corrupt") == garbage);
}

TEST_CASE("auth_query: a symlink at auth_cache_file is refused; memory only") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  const std::string dir = cache_dir();
  const std::string file = dir + "/auth_cache.db";
  const std::string target = dir + "/precious";
  write_file(target, "precious data\n", 0600);
  give_to_sluice(target);
  REQUIRE(symlink(target.c_str(), file.c_str()) == 0);
  give_to_sluice(file);
  Pooler p(aq_options(c, "auth_cache_file = " + file + "\n"));
  long long n0 = auth_calls(c);
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_md5", "md5-pw-1");  // the memory cache still works
  CHECK(auth_calls(c) == n0 + 1);
  CHECK(has(p.log(), file));
  CHECK(p.alive());
  struct stat st {};
  REQUIRE(lstat(file.c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  CHECK(read_file(target) == "precious data\n");
  CHECK(access((target + "-wal").c_str(), F_OK) != 0);
}

TEST_CASE("auth_query: an auth_cache_file owned by someone else is refused; memory only") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  uid_t uid = 0;
  gid_t gid = 0;
  if (!sluice_ids(&uid, &gid)) {
    MESSAGE("skipped: pgsluice runs as this test's own user");
    return;
  }
  const Cluster& c = aq_cluster();
  const std::string dir = cache_dir();
  const std::string file = dir + "/auth_cache.db";
  write_file(file, "", 0666);  // root's, and writable by pgsluice's user
  Pooler p(aq_options(c, "auth_cache_file = " + file + "\n"));
  login_ok(p, "aq_md5", "md5-pw-1");
  CHECK(has(p.log(), file));
  CHECK(p.alive());
  login_ok(p, "aq_md5", "md5-pw-1");
  struct stat st {};
  REQUIRE(stat(file.c_str(), &st) == 0);
  CHECK(st.st_uid == 0);
  CHECK(st.st_size == 0);
}

// pg_ctl on c's data dir, as the postgres OS user.
CmdResult pg_ctl(const Cluster& c, const std::string& args) {
  const char* e = getenv("PG_BINDIR");
  std::string bindir = e && *e ? e : "/usr/lib/postgresql/15/bin";
  std::string as = geteuid() == 0 ? "runuser -u postgres -- " : "";
  return run_shell(as + bindir + "/pg_ctl -w -t 60 -D " + shell_quote(c.dir + "/data") + " -l " +
                       shell_quote(c.dir + "/postgres.log") + " " + args,
                   90);
}

TEST_CASE("auth_query: during an outage cached users authenticate and wait for their server") {
  if (skip_in_direct_mode("the auth cache is pgsluice's")) return;
  // A cluster of its own: this test stops its server.
  Cluster c = make_aq_cluster("pgaqout", false);
  const std::string dir = cache_dir();
  const std::string file = dir + "/auth_cache.db";
  const std::string extra =
      "auth_cache_file = " + file + "\nserver_login_retry = 1\nquery_wait_timeout = 20\n";
  {
    Pooler p(aq_options(c, extra));
    login_ok(p, "aq_md5", "md5-pw-1");
    login_ok(p, "aq_scram", "scram-pw-1");
    CHECK(eventually(
        [&] {
          std::string b = cache_bytes(file);
          return has(b, "aq_md5") && has(b, "aq_scram");
        },
        10));
  }
  CmdResult st = pg_ctl(c, "stop -m fast");
  REQUIRE_MESSAGE(st.exit_code == 0, st.output);
  Pooler p(aq_options(c, extra));
  auto t0 = Clock::now();
  struct Attempt {
    std::string user, password;
    RawLogin login;
    std::string who;  // current_user after the login
  };
  Attempt at[3] = {{"aq_md5", "md5-pw-1", {}, ""},
                   {"aq_scram", "scram-pw-1", {}, ""},
                   {"aq_uncached", "uncached-pw", {}, ""}};
  std::vector<std::thread> th;
  const int port = p.port();
  for (Attempt& a : at) {
    Attempt* ap = &a;
    th.emplace_back([port, ap] {
      ap->login = raw_login(port, ap->user, "testdb", ap->password, 30);
      if (ap->login.end.type == 'Z')
        ap->who = raw_scalar(ap->login.conn, "select current_user", 20);
    });
  }
  // Authenticated against the cache while PostgreSQL is down: each one waits in its pool for
  // a server. (AuthenticationOk itself comes with the welcome, once a server gave the pool
  // its parameters, as in PgBouncer.) The uncached user has no pool.
  Conn admin = admin_console(p);
  auto waiting = [&](const std::string& user) {
    Result r = exec_ok(admin.get(), "SHOW POOLS");
    for (int i = 0; i < PQntuples(r.get()); i++)
      if (user == PQgetvalue(r.get(), i, 1))
        return atoi(PQgetvalue(r.get(), i, 2)) + atoi(PQgetvalue(r.get(), i, 3));
    return 0;
  };
  CHECK(eventually([&] { return waiting("aq_md5") >= 1 && waiting("aq_scram") >= 1; },
                   std::max(0.1, 2.9 - seconds_since(t0))));
  CHECK(waiting("aq_uncached") == 0);
  // PostgreSQL comes back 3 s after pgsluice: a fixed delay is the scenario itself.
  sleep_ms(std::max(0, 3000 - static_cast<int>(seconds_since(t0) * 1000)));
  CmdResult rs = pg_ctl(c, "restart");  // a stopped server: started with its previous options
  CHECK_MESSAGE(rs.exit_code == 0, rs.output);
  for (auto& t : th) t.join();
  for (int i = 0; i < 2; i++) {
    CAPTURE(at[i].user);
    CHECK(at[i].login.auth_ok);
    CHECK_MESSAGE(at[i].login.end.type == 'Z', "refused: " << at[i].login.end.field('M'));
    CHECK(at[i].who == at[i].user);
  }
  // Not in the cache: a clear error, neither a session nor a hang.
  const Attempt& u = at[2];
  CHECK_FALSE(u.login.auth_ok);
  CHECK(u.login.end.type == 'E');
  CHECK(u.login.end.field('S') == "FATAL");
  MESSAGE("uncached user during the outage: "
          << u.login.end.field('C') << " " << u.login.end.field('M') << " after "
          << std::chrono::duration<double>(u.login.end_at - t0).count() << " s");
  // Once they leave, nobody is counted as connected (SIGTERM waits for clients).
  for (Attempt& a : at) a.login.conn.close_fd();
  CHECK(eventually([&] { return waiting("aq_md5") == 0 && waiting("aq_scram") == 0; }));
}

TEST_CASE("auth_query: pool_idle_timeout frees the auth_user's pool once its lookups ended") {
  if (skip_in_direct_mode("auth_query is pgsluice's")) return;
  const Cluster& c = aq_cluster();
  Pooler p(aq_options(c, "pool_idle_timeout = 1\nserver_idle_timeout = 0.5\n"));
  auto pools = [&] {
    Conn admin = admin_console(p);
    Result r = exec_ok(admin.get(), "SHOW POOLS");
    std::vector<std::string> out;
    for (int i = 0; i < PQntuples(r.get()); i++)
      if (std::string(PQgetvalue(r.get(), i, 0)) != "pgbouncer")
        out.push_back(std::string(PQgetvalue(r.get(), i, 0)) + "/" + PQgetvalue(r.get(), i, 1));
    return out;
  };
  login_ok(p, "aq_md5", "md5-pw-1");  // the lookup ran on a server of testdb/aq_auth
  std::vector<std::string> before = pools();
  CHECK(std::find(before.begin(), before.end(), std::string("testdb/") + kAuthUser) !=
        before.end());
  // A lookup that kept its hold would keep the auth_user's pool for ever.
  CHECK(eventually([&] { return pools().empty(); }, 6));
  CHECK(has(p.log(), std::string("pool testdb/") + kAuthUser + " freed"));
  login_ok(p, "aq_md5", "md5-pw-1");
  login_ok(p, "aq_scram", "scram-pw-1");
}

TEST_SUITE_END();

}  // namespace
}  // namespace it
