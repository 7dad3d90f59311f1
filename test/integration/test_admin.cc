// The admin console, statistics, metrics and trace: SHOW shapes (names, order, type OIDs)
// as PGBOUNCER-COMPAT.md §3, rows that follow the pools, operator commands, access
// control, the Prometheus endpoint and the wire trace.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/admin_columns.h"
#include "integration/harness.h"

namespace it {
namespace {

constexpr Oid kText = 25, kInt4 = 23, kInt8 = 20, kBytea = 17, kNumeric = 1700;

Oid oid_of(char letter) {
  switch (letter) {
    case 'i':
      return kInt4;
    case 'q':
      return kInt8;
    case 'b':
      return kBytea;
    case 'N':
      return kNumeric;
    default:
      return kText;
  }
}

// Checks a result's column names and type OIDs against PgBouncer's tupdesc letters.
void check_shape(PGresult* r, const std::vector<std::string>& names, const std::string& letters) {
  REQUIRE(names.size() == letters.size());
  REQUIRE(PQnfields(r) == static_cast<int>(names.size()));
  for (int i = 0; i < PQnfields(r); i++) {
    CAPTURE(i);
    CHECK(std::string(PQfname(r, i)) == names[static_cast<size_t>(i)]);
    CHECK(PQftype(r, i) == oid_of(letters[static_cast<size_t>(i)]));
  }
}

std::string admin_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// Value of `col` in the row whose `key_col` is `key` ("" when absent).
std::string cell(PGresult* r, const std::string& key_col, const std::string& key,
                 const std::string& col) {
  int k = PQfnumber(r, key_col.c_str()), c = PQfnumber(r, col.c_str());
  if (k < 0 || c < 0) return "";
  for (int i = 0; i < PQntuples(r); i++)
    if (PQgetvalue(r, i, k) == key) return PQgetvalue(r, i, c);
  return "";
}

// SHOW POOLS value for testdb/md5user.
int pool_value(PGconn* admin, const std::string& col) {
  Result r = exec_ok(admin, "SHOW POOLS");
  int d = PQfnumber(r.get(), "database"), u = PQfnumber(r.get(), "user"),
      c = PQfnumber(r.get(), col.c_str());
  REQUIRE(c >= 0);
  for (int i = 0; i < PQntuples(r.get()); i++)
    if (std::string(PQgetvalue(r.get(), i, d)) == "testdb" &&
        std::string(PQgetvalue(r.get(), i, u)) == "md5user")
      return std::atoi(PQgetvalue(r.get(), i, c));
  return -1;
}

// A second pgsluice started from a Pooler's config on another port, for tests that end
// the process (the Pooler itself must outlive its test).
class Second {
 public:
  Second(const Pooler& p, const std::string& extra = "") {
    port_ = free_port();
    std::string ini = read_file(p.dir() + "/pgsluice.ini");
    auto set_line = [&](const std::string& key, const std::string& value) {
      size_t at = ini.find("\n" + key + " ");
      REQUIRE(at != std::string::npos);
      size_t eol = ini.find('\n', at + 1);
      ini.replace(at + 1, eol - at - 1, key + " = " + value);
    };
    set_line("listen_port", std::to_string(port_));
    set_line("logfile", p.dir() + "/second.log");
    set_line("pidfile", p.dir() + "/second.pid");
    ini += "\n[pgbouncer]\n" + extra;
    path_ = p.dir() + "/second.ini";
    write_file(path_, ini);
    log_ = p.dir() + "/second.log";
    std::string bin = pgsluice_binary();
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      execl(bin.c_str(), bin.c_str(), "-q", path_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    REQUIRE(eventually([&] {
      std::string e;
      Conn c = try_connect(conninfo("md5user", "md5pass", "pgbouncer"), &e);
      return c != nullptr;
    }));
  }
  ~Second() {
    if (!exited()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::string conninfo(const std::string& user = "md5user", const std::string& pw = "md5pass",
                       const std::string& db = "testdb") const {
    return "host=127.0.0.1 port=" + std::to_string(port_) + " user=" + user + " password=" + pw +
           " dbname=" + db + " sslmode=disable connect_timeout=5";
  }
  pid_t pid() const { return pid_; }
  bool exited() {
    if (done_) return true;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      done_ = true;
      status_ = st;
    }
    return done_;
  }
  int status() const { return status_; }
  std::string log() const { return read_file(log_); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string path_, log_;
  bool done_ = false;
  int status_ = 0;
};

struct Shape {
  const char* cmd;
  std::vector<std::string> names;
  std::string letters;
};

std::vector<Shape> shapes() {
  const std::vector<std::string> stats = show_stats_columns();
  return {
      {"SHOW POOLS",
       {"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
        "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
        "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
        "load_balance_hosts", "current_host"},
       "ssiiiiiiiiiiiiisss"},
      {"SHOW CLIENTS", client_columns(), "ssssssisissiiississiis"},
      {"SHOW SERVERS", kSocketCols, "ssssssisissiiississii"},
      {"SHOW SOCKETS", with_debug(kSocketCols), "ssssssisissiiississiiiiiiiii"},
      {"SHOW ACTIVE_SOCKETS", with_debug(kSocketCols), "ssssssisissiiississiiiiiiiii"},
      {"SHOW DATABASES",
       {"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
        "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
        "max_connections", "current_connections", "max_client_connections",
        "current_client_connections", "paused", "disabled", "current_host"},
       "ssissiiiissiiiiiis"},
      {"SHOW USERS",
       {"name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
        "current_connections", "max_user_client_connections", "current_client_connections"},
       "ssssiiii"},
      {"SHOW STATS", stats, "sNNNNNNNNNNNNNNNNNNNNNNNN"},
      {"SHOW STATS_TOTALS",
       {"database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
        "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
        "server_parse_count", "bind_count", "client_login_count"},
       "sNNNNNNNNNNNN"},
      {"SHOW STATS_AVERAGES",
       {"database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
        "bytes_sent", "xact_time", "query_time", "wait_time", "avg_client_parse_count",
        "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"},
       "sNNNNNNNNNNNN"},
      {"SHOW TOTALS", {"name", "value"}, "sN"},
      {"SHOW LISTS", {"list", "items"}, "si"},
      {"SHOW CONFIG", {"key", "value", "default", "changeable"}, "ssss"},
      {"SHOW MEM", {"name", "size", "used", "free", "memtotal"}, "siiii"},
      {"SHOW STATE", {"key", "value"}, "ss"},
      {"SHOW VERSION", {"version"}, "s"},
      {"SHOW FDS",
       {"fd", "task", "user", "database", "addr", "port", "cancel", "link", "client_encoding",
        "std_strings", "datestyle", "timezone", "password", "scram_client_key", "scram_server_key"},
       "issssiqisssssbb"},
      {"SHOW DNS_HOSTS", {"hostname", "ttl", "addrs"}, "sqs"},
      {"SHOW DNS_ZONES", {"zonename", "serial", "count"}, "sqi"},
      {"SHOW PEERS", {"peer_id", "host", "port", "pool_size"}, "isii"},
      {"SHOW PEER_POOLS",
       {"peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"},
       "iiiii"},
      {"SHOW HISTOGRAMS",
       {"database", "user", "histogram", "le_us", "count", "cumulative_count", "sum_us"},
       "ssssqqq"},
  };
}

}  // namespace

TEST_CASE("admin console: every SHOW has PgBouncer's column names, order and type OIDs") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 1") == "1");
  Conn admin = connect(admin_conninfo(p));
  for (const Shape& s : shapes()) {
    CAPTURE(s.cmd);
    Result r = exec_ok(admin.get(), s.cmd);
    check_shape(r.get(), s.names, s.letters);
  }
  // SELECT is an alias of SHOW; lower case and a trailing ';' are fine.
  Result r = exec_ok(admin.get(), "select pools;");
  CHECK(PQnfields(r.get()) == 18);  // PgBouncer's 17 and current_host
  Result st = exec_ok(admin.get(), "SHOW STATE");
  CHECK(cell(st.get(), "key", "active", "value") == "yes");
  CHECK(cell(st.get(), "key", "paused", "value") == "no");
  Result lists = exec_ok(admin.get(), "SHOW LISTS");
  CHECK(PQntuples(lists.get()) == 14);
  Result ver = exec_ok(admin.get(), "SHOW VERSION");
  CHECK(std::string(PQgetvalue(ver.get(), 0, 0)).find("pgsluice") != std::string::npos);
  // CONFIG rows are sorted by key and come from the settings table.
  Result cfg = exec_ok(admin.get(), "SHOW CONFIG");
  CHECK(PQntuples(cfg.get()) > 90);
  for (int i = 1; i < PQntuples(cfg.get()); i++)
    CHECK(std::string(PQgetvalue(cfg.get(), i - 1, 0)) < std::string(PQgetvalue(cfg.get(), i, 0)));
  CHECK(cell(cfg.get(), "key", "default_pool_size", "value") == "4");
  CHECK(cell(cfg.get(), "key", "listen_port", "changeable") == "no");
}

TEST_CASE("admin console: SHOW CLIENTS gives each client's application_name") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  Conn a = connect(p.conninfo() + " application_name=app_one");
  Conn b = connect(p.conninfo() + " application_name=app_two");
  exec_ok(b.get(), "SET application_name = 'app_three'");
  Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
  int app = PQfnumber(cl.get(), "application_name"), db = PQfnumber(cl.get(), "database");
  REQUIRE(app >= 0);
  std::multiset<std::string> apps;
  for (int i = 0; i < PQntuples(cl.get()); i++)
    if (std::string(PQgetvalue(cl.get(), i, db)) == "testdb")
      apps.insert(PQgetvalue(cl.get(), i, app));
  CHECK(apps == std::multiset<std::string>{"app_one", "app_three"});
}

TEST_CASE("admin console: SHOW CLIENTS gives each TCP client's own address and port") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  auto local_port = [](PGconn* c) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    REQUIRE(getsockname(PQsocket(c), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    REQUIRE(ss.ss_family == AF_INET);
    return std::to_string(ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port));
  };
  Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
  int addr = PQfnumber(cl.get(), "addr"), port = PQfnumber(cl.get(), "port"),
      db = PQfnumber(cl.get(), "database");
  std::set<std::string> ports;
  for (int i = 0; i < PQntuples(cl.get()); i++)
    if (std::string(PQgetvalue(cl.get(), i, db)) == "testdb") {
      CHECK(std::string(PQgetvalue(cl.get(), i, addr)) == "127.0.0.1");
      ports.insert(PQgetvalue(cl.get(), i, port));
    }
  CHECK(ports == std::set<std::string>{local_port(a.get()), local_port(b.get())});
}

TEST_CASE("admin console: fake parameters, SHOW HELP notice, errors keep the session") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  CHECK(scalar(admin.get(), "SHOW client_encoding") == "UTF-8");
  CHECK(scalar(admin.get(), "show TimeZone") == "GMT");
  Result set(PQexec(admin.get(), "SET datestyle = 'ISO'"));
  CHECK(PQresultStatus(set.get()) == PGRES_COMMAND_OK);
  std::vector<std::string> notices;
  PQsetNoticeProcessor(
      admin.get(),
      [](void* arg, const char* m) { static_cast<std::vector<std::string>*>(arg)->push_back(m); },
      &notices);
  Result help(PQexec(admin.get(), "SHOW HELP"));
  CHECK(PQresultStatus(help.get()) == PGRES_COMMAND_OK);
  REQUIRE(notices.size() == 1);
  CHECK(notices[0].find("Console usage") != std::string::npos);
  CHECK(notices[0].find("KILL_CLIENT") != std::string::npos);
  CHECK(exec_sqlstate(admin.get(), "SHOW NONSENSE") == "08P01");
  CHECK(exec_sqlstate(admin.get(), "DROP TABLE x") == "08P01");
  CHECK(scalar(admin.get(), "SHOW VERSION").size() > 5);  // still usable
  // The extended protocol is refused (and the session ends, as PgBouncer does).
  Conn admin2 = connect(admin_conninfo(p));
  Result ext(PQexecParams(admin2.get(), "SHOW POOLS", 0, nullptr, nullptr, nullptr, nullptr, 0));
  CHECK(PQresultStatus(ext.get()) == PGRES_FATAL_ERROR);
}

TEST_CASE("admin console: access for admin_users, stats_users and others") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Options o;
  o.extra_pgbouncer = "stats_users = plainuser\n";
  Pooler p(o);
  Conn stats = connect(p.conninfo("plainuser", "plainpass", "pgbouncer"));
  CHECK(PQntuples(exec_ok(stats.get(), "SHOW POOLS").get()) >= 1);
  exec_ok(stats.get(), "SHOW STATS");
  exec_ok(stats.get(), "SHOW CLIENTS");
  for (const char* cmd :
       {"SHOW FDS", "KILL_CLIENT 1", "PAUSE", "RESUME", "RELOAD", "SHUTDOWN", "KILL",
        "SET default_pool_size = 5", "SET trace = all", "DISABLE testdb"}) {
    CAPTURE(cmd);
    Result r(PQexec(stats.get(), cmd));
    CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
    CHECK(std::string(PQresultErrorMessage(r.get())).find("admin access needed") !=
          std::string::npos);
  }
  CHECK(p.alive());
  // A user in neither list is refused at login.
  std::string err;
  Conn other = try_connect(p.conninfo("scramuser", "scrampass", "pgsluice"), &err);
  CHECK(other == nullptr);
  CHECK(err.find("not allowed") != std::string::npos);
  // The admin may run everything; the console is also reachable as "pgsluice".
  Conn admin = connect(p.conninfo("md5user", "md5pass", "pgsluice"));
  exec_ok(admin.get(), "SHOW FDS");
}

TEST_CASE(
    "admin console: SHOW POOLS/CLIENTS/SERVERS follow clients that connect, wait, run and leave") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn admin = connect(admin_conninfo(p));
  Conn a = connect(p.conninfo());
  exec_ok(a.get(), "select 1");
  CHECK(eventually([&] { return pool_value(admin.get(), "sv_idle") == 1; }));
  CHECK(pool_value(admin.get(), "cl_active") == 1);
  CHECK(pool_value(admin.get(), "sv_active") == 0);
  // a holds the only server in a transaction; b waits.
  exec_ok(a.get(), "begin");
  exec_ok(a.get(), "select 1");
  CHECK(pool_value(admin.get(), "sv_active") == 1);
  Conn b = connect(p.conninfo());
  REQUIRE(PQsendQuery(b.get(), "select 42") == 1);
  CHECK(eventually([&] { return pool_value(admin.get(), "cl_waiting") == 1; }));
  sleep_ms(1100);
  CHECK(pool_value(admin.get(), "maxwait") >= 1);
  {
    Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
    int st = PQfnumber(cl.get(), "state"), db = PQfnumber(cl.get(), "database"),
        ty = PQfnumber(cl.get(), "type");
    std::map<std::string, int> states;
    for (int i = 0; i < PQntuples(cl.get()); i++) {
      CHECK(std::string(PQgetvalue(cl.get(), i, ty)) == "C");
      if (std::string(PQgetvalue(cl.get(), i, db)) == "testdb")
        states[PQgetvalue(cl.get(), i, st)]++;
    }
    CHECK(states["active"] == 1);
    CHECK(states["waiting"] == 1);
    Result sv = exec_ok(admin.get(), "SHOW SERVERS");
    REQUIRE(PQntuples(sv.get()) == 1);
    CHECK(std::string(PQgetvalue(sv.get(), 0, PQfnumber(sv.get(), "state"))) == "active");
    CHECK(std::atoi(PQgetvalue(sv.get(), 0, PQfnumber(sv.get(), "remote_pid"))) > 0);
    CHECK(std::string(PQgetvalue(sv.get(), 0, PQfnumber(sv.get(), "link"))).rfind("0x", 0) == 0);
  }
  exec_ok(a.get(), "commit");
  Result got(PQgetResult(b.get()));
  CHECK(std::string(PQgetvalue(got.get(), 0, 0)) == "42");
  while (PGresult* extra = PQgetResult(b.get())) PQclear(extra);
  CHECK(eventually([&] {
    return pool_value(admin.get(), "cl_waiting") == 0 && pool_value(admin.get(), "sv_idle") == 1;
  }));
  a.reset();
  b.reset();
  CHECK(eventually([&] { return pool_value(admin.get(), "cl_active") == 0; }));
  // The console's own pool row.
  Result pools = exec_ok(admin.get(), "SHOW POOLS");
  CHECK(cell(pools.get(), "database", "pgbouncer", "cl_active") == "1");
  CHECK(cell(pools.get(), "database", "pgbouncer", "pool_mode") == "statement");
}

TEST_CASE(
    "admin console: statistics count transactions, queries and bytes; histograms are cumulative") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Options o;
  o.extra_pgbouncer = "stats_period = 1\n";
  Pooler p(o);
  Conn c = connect(p.conninfo());
  for (int i = 0; i < 20; i++) exec_ok(c.get(), "select " + std::to_string(i));
  exec_ok(c.get(), "begin");
  exec_ok(c.get(), "select 1");
  exec_ok(c.get(), "commit");
  Conn admin = connect(admin_conninfo(p));
  Result st = exec_ok(admin.get(), "SHOW STATS_TOTALS");
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "query_count")) >= 23);
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "xact_count")) >= 21);
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "bytes_received")) > 100);
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "bytes_sent")) > 100);
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "query_time")) > 0);
  CHECK(std::stoll(cell(st.get(), "database", "testdb", "client_login_count")) >= 1);
  Result tot = exec_ok(admin.get(), "SHOW TOTALS");
  CHECK(std::stoll(cell(tot.get(), "name", "total_query_count", "value")) >= 23);
  // Averages appear after a stats_period with traffic in it.
  for (int i = 0; i < 50; i++) exec_ok(c.get(), "select 1");
  CHECK(eventually(
      [&] {
        Result av = exec_ok(admin.get(), "SHOW STATS_AVERAGES");
        std::string q = cell(av.get(), "database", "testdb", "query_count");
        return !q.empty() && std::stoll(q) > 0;
      },
      4));
  Result h = exec_ok(admin.get(), "SHOW HISTOGRAMS");
  std::map<std::string, long long> last_cum, total_count;
  int hist = PQfnumber(h.get(), "histogram"), le = PQfnumber(h.get(), "le_us"),
      cnt = PQfnumber(h.get(), "count"), cum = PQfnumber(h.get(), "cumulative_count"),
      db = PQfnumber(h.get(), "database");
  for (int i = 0; i < PQntuples(h.get()); i++) {
    if (std::string(PQgetvalue(h.get(), i, db)) != "testdb") continue;
    std::string k = PQgetvalue(h.get(), i, hist);
    long long cv = std::stoll(PQgetvalue(h.get(), i, cum));
    CHECK(cv >= last_cum[k]);  // cumulative
    total_count[k] += std::stoll(PQgetvalue(h.get(), i, cnt));
    CHECK(cv == total_count[k]);
    last_cum[k] = cv;
    if (std::string(PQgetvalue(h.get(), i, le)) == "+Inf") CHECK(cv >= 1);
  }
  CHECK(last_cum["query"] >= 73);
  CHECK(last_cum["xact"] >= 71);
  CHECK(p.log().find("stats: ") != std::string::npos);  // log_stats line every stats_period
}

TEST_CASE("admin console: PAUSE holds new queries until RESUME; RESUME releases them") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  Conn c = connect(p.conninfo());
  exec_ok(c.get(), "select 1");
  // PAUSE waits for the open transaction to end.
  exec_ok(c.get(), "begin");
  exec_ok(c.get(), "select 1");
  REQUIRE(PQsendQuery(admin.get(), "PAUSE testdb") == 1);
  sleep_ms(300);
  PQconsumeInput(admin.get());
  CHECK(PQisBusy(admin.get()) == 1);  // still waiting for the transaction
  exec_ok(c.get(), "commit");
  Result pr(PQgetResult(admin.get()));
  CHECK(PQresultStatus(pr.get()) == PGRES_COMMAND_OK);
  CHECK(std::string(PQcmdStatus(pr.get())) == "PAUSE");
  while (PGresult* x = PQgetResult(admin.get())) PQclear(x);
  CHECK(count_backends("testdb", "md5user") == 0);  // servers closed once released
  Result dbs = exec_ok(admin.get(), "SHOW DATABASES");
  CHECK(cell(dbs.get(), "name", "testdb", "paused") == "1");
  // A new query waits.
  REQUIRE(PQsendQuery(c.get(), "select 7") == 1);
  sleep_ms(400);
  PQconsumeInput(c.get());
  CHECK(PQisBusy(c.get()) == 1);
  CHECK(pool_value(admin.get(), "cl_waiting") == 1);
  exec_ok(admin.get(), "RESUME testdb");
  Result got(PQgetResult(c.get()));
  CHECK(std::string(PQgetvalue(got.get(), 0, 0)) == "7");
  while (PGresult* x = PQgetResult(c.get())) PQclear(x);
  // Global PAUSE / RESUME and their errors.
  exec_ok(admin.get(), "PAUSE");
  CHECK(cell(exec_ok(admin.get(), "SHOW STATE").get(), "key", "paused", "value") == "yes");
  CHECK(exec_sqlstate(admin.get(), "PAUSE") == "08P01");  // already paused
  exec_ok(admin.get(), "RESUME");
  CHECK(exec_sqlstate(admin.get(), "RESUME") == "08P01");  // not paused
  CHECK(scalar(c.get(), "select 8") == "8");
  CHECK(exec_sqlstate(admin.get(), "PAUSE pgbouncer") == "08P01");
}

TEST_CASE("admin console: DISABLE/ENABLE, RECONNECT, KILL, KILL_CLIENT, WAIT_CLOSE") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  exec_ok(admin.get(), "DISABLE testdb");
  std::string err;
  Conn refused = try_connect(p.conninfo(), &err);
  CHECK(refused == nullptr);
  CHECK(err.find("does not allow connections") != std::string::npos);
  exec_ok(admin.get(), "ENABLE testdb");
  Conn c = connect(p.conninfo());
  std::string pid1 = scalar(c.get(), "select pg_backend_pid()");
  // RECONNECT: the idle server is replaced.
  exec_ok(admin.get(), "RECONNECT testdb");
  exec_ok(admin.get(), "WAIT_CLOSE testdb");
  std::string pid2 = scalar(c.get(), "select pg_backend_pid()");
  CHECK(pid1 != pid2);
  // KILL_CLIENT by id from SHOW CLIENTS.
  Result cl = exec_ok(admin.get(), "SHOW CLIENTS");
  std::string id;
  for (int i = 0; i < PQntuples(cl.get()); i++)
    if (std::string(PQgetvalue(cl.get(), i, PQfnumber(cl.get(), "database"))) == "testdb")
      id = PQgetvalue(cl.get(), i, PQfnumber(cl.get(), "id"));
  REQUIRE(!id.empty());
  Result k = exec_ok(admin.get(), "KILL_CLIENT " + id);
  CHECK(std::string(PQcmdStatus(k.get())) == "KILL_CLIENT");
  Result dead(PQexec(c.get(), "select 1"));
  CHECK(PQresultStatus(dead.get()) != PGRES_TUPLES_OK);
  CHECK(exec_sqlstate(admin.get(), "KILL_CLIENT " + id) == "08P01");  // gone now
  CHECK(exec_sqlstate(admin.get(), "KILL_CLIENT abc") == "08P01");
  // KILL drops every client of the database and holds new ones until RESUME.
  Conn d = connect(p.conninfo());
  exec_ok(d.get(), "select 1");
  exec_ok(admin.get(), "KILL testdb");
  Result gone(PQexec(d.get(), "select 1"));
  CHECK(PQresultStatus(gone.get()) != PGRES_TUPLES_OK);
  exec_ok(admin.get(), "RESUME testdb");
  Conn e = connect(p.conninfo());
  CHECK(scalar(e.get(), "select 3") == "3");
}

TEST_CASE(
    "admin console: RELOAD picks up default_pool_size for a new pool; SET shows in SHOW CONFIG") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  // SET of a reloadable key.
  Result s = exec_ok(admin.get(), "SET query_wait_timeout = 33");
  CHECK(std::string(PQcmdStatus(s.get())) == "SET query_wait_timeout=33");
  Result cfg = exec_ok(admin.get(), "SHOW CONFIG");
  CHECK(cell(cfg.get(), "key", "query_wait_timeout", "value") == "33");
  exec_ok(admin.get(), "SET server_reset_query = 'DISCARD ALL'");
  CHECK(exec_sqlstate(admin.get(), "SET listen_port = 7000") == "08P01");  // needs a restart
  CHECK(exec_sqlstate(admin.get(), "SET nosuchsetting = 1") == "08P01");
  CHECK(exec_sqlstate(admin.get(), "SET default_pool_size = many") == "08P01");
  // RELOAD with a changed default_pool_size: a new pool (scramuser) gets it.
  std::string ini = read_file(p.dir() + "/pgsluice.ini");
  size_t at = ini.find("default_pool_size");
  REQUIRE(at != std::string::npos);
  size_t eol = ini.find('\n', at);
  ini.replace(at, eol - at, "default_pool_size = 7");
  write_file(p.dir() + "/pgsluice.ini", ini);
  Result r = exec_ok(admin.get(), "RELOAD");
  CHECK(std::string(PQcmdStatus(r.get())) == "RELOAD");
  cfg = exec_ok(admin.get(), "SHOW CONFIG");
  CHECK(cell(cfg.get(), "key", "default_pool_size", "value") == "7");
  CHECK(cell(cfg.get(), "key", "query_wait_timeout", "value") == "120");  // the file's value again
  Result dbs = exec_ok(admin.get(), "SHOW DATABASES");
  CHECK(cell(dbs.get(), "name", "testdb", "pool_size") == "7");
  // A broken file: RELOAD reports it and keeps the old config.
  write_file(p.dir() + "/pgsluice.ini", ini + "\n[pgbouncer]\nlisten_port = notanumber\n");
  CHECK(exec_sqlstate(admin.get(), "RELOAD") == "F0000");
  CHECK(p.alive());
}

TEST_CASE("metrics endpoint: valid exposition, pgbouncer_exporter names, cumulative histograms") {
  if (skip_in_direct_mode("the metrics endpoint is a pooler feature")) return;
  int mport = free_port();
  Options o;
  o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) + "\n";
  Pooler p(o);
  Conn c = connect(p.conninfo());
  for (int i = 0; i < 10; i++) exec_ok(c.get(), "select 1");
  CmdResult r =
      run_shell("curl -sS -D - http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
  REQUIRE(r.exit_code == 0);
  const std::string& out = r.output;
  CHECK(out.find("200 OK") != std::string::npos);
  CHECK(out.find("text/plain; version=0.0.4") != std::string::npos);
  std::string body = out.substr(out.find("\r\n\r\n") + 4);
  for (const char* name :
       {"pgbouncer_up 1",
        "pgbouncer_pools_client_active_connections{database=\"testdb\",user=\"md5user\"} 1",
        "pgbouncer_pools_server_idle_connections{",
        "pgbouncer_stats_queries_pooled_total{database=\"testdb\"}",
        "# TYPE pgsluice_query_duration_seconds histogram"})
    CHECK_MESSAGE(body.find(name) != std::string::npos, name);
  // Every line is a comment or `name{labels} value`; histogram buckets are cumulative and
  // the +Inf bucket equals _count.
  std::istringstream in(body);
  std::string line;
  std::map<std::string, double> last_bucket, inf_bucket, counts;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    REQUIRE(sp != std::string::npos);
    std::string key = line.substr(0, sp);
    double v = std::stod(line.substr(sp + 1));
    CHECK(key.find_first_of(" \t") == std::string::npos);
    samples++;
    if (key.find("_bucket{") != std::string::npos) {
      std::string series = key.substr(0, key.find(",le="));
      CHECK(v >= last_bucket[series]);
      last_bucket[series] = v;
      if (key.find("le=\"+Inf\"") != std::string::npos) inf_bucket[series] = v;
    } else if (key.find("_count{") != std::string::npos) {
      std::string series =
          key.substr(0, key.find("_count{")) + "_bucket{" + key.substr(key.find("_count{") + 7);
      series = series.substr(0, series.size() - 1);
      counts[series] = v;
    }
  }
  CHECK(samples > 30);
  REQUIRE(!counts.empty());
  for (const auto& [series, n] : counts) {
    CAPTURE(series);
    CHECK(inf_bucket[series] == n);
  }
  CHECK(counts["pgsluice_query_duration_seconds_bucket{database=\"testdb\",user=\"md5user\""] >=
        10);
  // Graceful shutdown: the endpoint keeps answering while clients hold the process.
  int mport2 = free_port();
  Second two(p, "metrics_port = " + std::to_string(mport2) + "\n");
  Conn c2 = connect(two.conninfo());
  CHECK(scalar(c2.get(), "select 1") == "1");
  REQUIRE(kill(two.pid(), SIGTERM) == 0);
  sleep_ms(300);
  CHECK_FALSE(two.exited());
  CmdResult r2 = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport2) + "/metrics", 10);
  CHECK(r2.output.find("pgsluice_shutting_down 1") != std::string::npos);
  CHECK(scalar(c2.get(), "select 5") == "5");  // the existing client still works
  c2.reset();
  CHECK(eventually([&] { return two.exited(); }, 5));
  CHECK(WIFEXITED(two.status()));
}

TEST_CASE(
    "trace: switched on and off from the console while pgbench runs; no values or passwords") {
  if (skip_in_direct_mode("the trace is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  std::string conn =
      "host=127.0.0.1 port=" + std::to_string(p.port()) + " user=md5user dbname=testdb";
  CmdResult init = run_shell("PGPASSWORD=md5pass pgbench -i -q -s 1 '" + conn + "' 2>&1", 120);
  REQUIRE_MESSAGE(init.exit_code == 0, init.output);
  exec_ok(admin.get(), "SET trace = 'db testdb'");
  std::thread bench([&] {
    run_shell("PGPASSWORD=md5pass pgbench -n -T 2 -c 2 -M extended '" + conn + "' 2>&1", 60);
  });
  Conn c = connect(p.conninfo());
  exec_ok(c.get(), "select 'sekrit-value-123'");
  Result prm(PQexecParams(c.get(), "select $1::text", 1, nullptr,
                          std::vector<const char*>{"param-value-456"}.data(), nullptr, nullptr, 0));
  CHECK(PQresultStatus(prm.get()) == PGRES_TUPLES_OK);
  bench.join();
  exec_ok(admin.get(), "SET trace = off");
  std::string lg = p.log();
  size_t traced = 0;
  for (size_t at = lg.find(" trace id="); at != std::string::npos;
       at = lg.find(" trace id=", at + 1))
    traced++;
  CHECK(traced > 50);
  CHECK(lg.find("C->S 'Q' len=") != std::string::npos);
  CHECK(lg.find("S->C 'Z' len=6") != std::string::npos);
  CHECK(lg.find("C->S 'B' len=") != std::string::npos);
  CHECK(lg.find("sekrit-value-123") == std::string::npos);
  CHECK(lg.find("param-value-456") == std::string::npos);
  CHECK(lg.find("md5pass") == std::string::npos);
  // Off again: no more trace lines.
  size_t before = traced;
  for (int i = 0; i < 10; i++) exec_ok(c.get(), "select 1");
  lg = p.log();
  size_t after = 0;
  for (size_t at = lg.find(" trace id="); at != std::string::npos;
       at = lg.find(" trace id=", at + 1))
    after++;
  CHECK(after == before);
  CHECK(exec_sqlstate(admin.get(), "SET trace = 'bogus'") == "08P01");
}

TEST_CASE(
    "signals: SIGUSR1 pauses, SIGUSR2 resumes, SIGINT waits for servers, a second one is "
    "immediate") {
  if (skip_in_direct_mode("signals are a pooler feature")) return;
  Pooler p;
  Second two(p);
  Conn admin = connect(two.conninfo("md5user", "md5pass", "pgbouncer"));
  Conn c = connect(two.conninfo());
  exec_ok(c.get(), "select 1");
  REQUIRE(kill(two.pid(), SIGUSR1) == 0);
  CHECK(eventually([&] {
    return cell(exec_ok(admin.get(), "SHOW STATE").get(), "key", "paused", "value") == "yes";
  }));
  REQUIRE(kill(two.pid(), SIGUSR2) == 0);
  CHECK(eventually([&] {
    return cell(exec_ok(admin.get(), "SHOW STATE").get(), "key", "paused", "value") == "no";
  }));
  CHECK(scalar(c.get(), "select 2") == "2");
  // SIGINT: waits while a transaction holds a server, exits once it is released.
  exec_ok(c.get(), "begin");
  exec_ok(c.get(), "select 1");
  REQUIRE(kill(two.pid(), SIGINT) == 0);
  sleep_ms(400);
  CHECK_FALSE(two.exited());
  exec_ok(c.get(), "commit");
  CHECK(eventually([&] { return two.exited(); }, 5));
  CHECK(WIFEXITED(two.status()));
  // A second SIGINT means now.
  Second three(p);
  Conn c3 = connect(three.conninfo());
  exec_ok(c3.get(), "begin");
  exec_ok(c3.get(), "select 1");
  REQUIRE(kill(three.pid(), SIGINT) == 0);
  sleep_ms(200);
  CHECK_FALSE(three.exited());
  REQUIRE(kill(three.pid(), SIGINT) == 0);
  CHECK(eventually([&] { return three.exited(); }, 5));
}

TEST_CASE(
    "signals: SIGTERM waits for clients, SHUTDOWN WAIT_FOR_CLIENTS answers, second SIGTERM is "
    "immediate") {
  if (skip_in_direct_mode("signals are a pooler feature")) return;
  Pooler p;
  Second two(p);
  Conn admin = connect(two.conninfo("md5user", "md5pass", "pgbouncer"));
  Conn c = connect(two.conninfo());
  Result r = exec_ok(admin.get(), "SHUTDOWN WAIT_FOR_CLIENTS");
  CHECK(std::string(PQcmdStatus(r.get())) == "SHUTDOWN");
  sleep_ms(300);
  CHECK_FALSE(two.exited());
  CHECK(scalar(c.get(), "select 4") == "4");
  // New TCP clients are no longer accepted.
  std::string err;
  Conn late = try_connect(two.conninfo(), &err);
  CHECK(late == nullptr);
  REQUIRE(kill(two.pid(), SIGTERM) == 0);  // the second one: at once
  CHECK(eventually([&] { return two.exited(); }, 5));
  // SHUTDOWN (immediate) from the console.
  Second three(p);
  Conn admin3 = connect(three.conninfo("md5user", "md5pass", "pgbouncer"));
  PQsendQuery(admin3.get(), "SHUTDOWN");
  CHECK(eventually([&] { return three.exited(); }, 5));
}

}  // namespace it

namespace it {
namespace {

TEST_CASE("admin console: SUSPEND stops reading every socket until RESUME") {
  if (skip_in_direct_mode("the admin console is a pooler feature")) return;
  Pooler p;
  Conn admin = connect(admin_conninfo(p));
  Conn c = connect(p.conninfo());
  // Inside a transaction: PAUSE would let this client go on; SUSPEND must not.
  exec_ok(c.get(), "begin");
  exec_ok(c.get(), "select 1");
  exec_ok(admin.get(), "SUSPEND");
  CHECK(cell(exec_ok(admin.get(), "SHOW STATE").get(), "key", "suspended", "value") == "yes");
  REQUIRE(PQsendQuery(c.get(), "select 41 + 1") == 1);
  sleep_ms(500);
  PQconsumeInput(c.get());
  CHECK(PQisBusy(c.get()) == 1);  // not read, so not answered
  // No new connection is accepted while suspended.
  std::string err;
  auto t0 = Clock::now();
  Conn late = try_connect(p.conninfo() + " connect_timeout=1", &err);
  CHECK_FALSE(late);
  CHECK(seconds_since(t0) >= 0.9);
  exec_ok(admin.get(), "RESUME");
  Result got(PQgetResult(c.get()));
  REQUIRE(PQresultStatus(got.get()) == PGRES_TUPLES_OK);
  CHECK(std::string(PQgetvalue(got.get(), 0, 0)) == "42");
  while (PGresult* x = PQgetResult(c.get())) PQclear(x);
  exec_ok(c.get(), "commit");
  CHECK(scalar(c.get(), "select 'after'") == "after");
  Conn again = connect(p.conninfo());
  CHECK(scalar(again.get(), "select 1") == "1");
}

}  // namespace
}  // namespace it
