// Pool limits with PgBouncer's semantics: client counts per database and user, the reserve
// pool, min_pool_size kept warm, server_round_robin, server_fast_close, and the TCP options
// of pgsluice's own sockets (read back from its fds through pidfd_getfd).
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

std::string pg_target() {
  return "host=127.0.0.1 port=" + std::to_string(cluster().port) + " dbname=testdb";
}

std::string admin_of(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// Backends whose application_name is `app` (each test's pools set their own).
int backends_named(const std::string& app) {
  Conn su = connect(superuser_conninfo("postgres"));
  return std::stoi(
      scalar(su.get(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app +
                           "' AND backend_type = 'client backend'"));
}

std::set<std::string> backend_pids(const std::string& app) {
  Conn su = connect(superuser_conninfo("postgres"));
  Result r = exec_ok(su.get(), "SELECT pid FROM pg_stat_activity WHERE application_name = '" + app +
                                   "' AND backend_type = 'client backend'");
  std::set<std::string> out;
  for (int i = 0; i < PQntuples(r.get()); i++) out.insert(PQgetvalue(r.get(), i, 0));
  return out;
}

// Sends a query without waiting; finished_within() then tells whether its answer came.
void send_query(PGconn* c, const std::string& sql) {
  REQUIRE(PQsendQuery(c, sql.c_str()) == 1);
}

bool finished_within(PGconn* c, double s) {
  auto t0 = Clock::now();
  while (seconds_since(t0) < s) {
    if (PQconsumeInput(c) == 0) return true;  // the connection broke: an answer of a kind
    if (PQisBusy(c) == 0) return true;
    sleep_ms(20);
  }
  return false;
}

// Drains the answers of a sent query; "" when it succeeded, else the error text.
std::string collect(PGconn* c) {
  std::string err;
  while (PGresult* r = PQgetResult(c)) {
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) err = PQresultErrorMessage(r);
    PQclear(r);
  }
  return err;
}

// A trust login over a raw socket: the SQLSTATE and message of the ErrorResponse that ends
// it, or "ok" when it reached ReadyForQuery (the socket is kept open in `keep`).
std::pair<std::string, std::string> raw_login(int port, const std::string& user,
                                              const std::string& db, std::vector<Raw>* keep) {
  Raw r = Raw::tcp(port);
  if (!r.send_bytes(startup_packet({{"user", user}, {"database", db}}))) return {"send", ""};
  for (;;) {
    Msg m;
    if (r.read_msg(&m) != ReadStatus::Ok) return {"closed", ""};
    if (m.type == 'E') return {m.field('C'), m.field('M')};
    if (m.type == 'Z') {
      keep->push_back(std::move(r));
      return {"ok", ""};
    }
  }
}

// The value in column `col` of the row whose first column is `key`, from a SHOW command.
std::string show_cell(PGconn* admin, const std::string& cmd, const std::string& key,
                      const std::string& col) {
  Result r = exec_ok(admin, cmd);
  int ci = PQfnumber(r.get(), col.c_str());
  REQUIRE(ci >= 0);
  for (int i = 0; i < PQntuples(r.get()); i++)
    if (key == PQgetvalue(r.get(), i, 0)) return PQgetvalue(r.get(), i, ci);
  return "(no row)";
}

// ---- pgsluice's sockets, read through duplicates of its fds ----

struct FdCopy {
  int fd = -1;
  FdCopy() = default;
  explicit FdCopy(int f) : fd(f) {}
  FdCopy(FdCopy&& o) noexcept : fd(o.fd) { o.fd = -1; }
  FdCopy& operator=(FdCopy&&) = delete;
  ~FdCopy() {
    if (fd >= 0) ::close(fd);
  }
};

std::vector<FdCopy> sockets_of(pid_t pid) {
  std::vector<FdCopy> out;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  REQUIRE_MESSAGE(pidfd >= 0, "pidfd_open: " << strerror(errno));
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code ec2;
    std::string target = std::filesystem::read_symlink(e.path(), ec2).string();
    if (ec2 || target.rfind("socket:", 0) != 0) continue;
    int n = std::stoi(e.path().filename().string());
    int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, n, 0));
    if (fd >= 0) out.emplace_back(fd);
  }
  ::close(pidfd);
  return out;
}

int port_of(int fd, bool peer) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0 || ss.ss_family != AF_INET) return -1;
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

int opt(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) != 0) return -1;
  return v;
}

// The socket of pgsluice's whose peer (or own, for a listener) TCP port is `port`.
int find_socket(const std::vector<FdCopy>& socks, int port, bool peer) {
  for (const FdCopy& s : socks) {
    if (port_of(s.fd, peer) != port) continue;
    if (!peer && opt(s.fd, SOL_SOCKET, SO_ACCEPTCONN) != 1) continue;
    return s.fd;
  }
  return -1;
}

}  // namespace

TEST_SUITE("pool limits") {
  TEST_CASE(
      "tcp_keepalive, keepidle/keepintvl/keepcnt, user_timeout, socket buffer, backlog, "
      "defer_accept") {
    if (skip_in_direct_mode("socket options of pgsluice's own sockets")) return;
    SUBCASE("set") {
      Options o;
      o.extra_pgbouncer =
          "tcp_keepalive = 1\ntcp_keepidle = 31\ntcp_keepintvl = 7\ntcp_keepcnt = 4\n"
          "tcp_user_timeout = 2500\ntcp_socket_buffer = 65536\nlisten_backlog = 37\n"
          "tcp_defer_accept = 1\n";
      Pooler p(o);
      Conn c = connect(p.conninfo());
      CHECK(scalar(c.get(), "SELECT 1") == "1");
      auto socks = sockets_of(p.pid());
      int client = find_socket(socks, local_port(c.get()), true);
      int server = find_socket(socks, cluster().port, true);
      int listener = find_socket(socks, p.port(), false);
      REQUIRE(client >= 0);
      REQUIRE(server >= 0);
      REQUIRE(listener >= 0);
      for (int fd : {client, server}) {
        CAPTURE(fd == client ? "client" : "server");
        CHECK(opt(fd, SOL_SOCKET, SO_KEEPALIVE) == 1);
        CHECK(opt(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 31);
        CHECK(opt(fd, IPPROTO_TCP, TCP_KEEPINTVL) == 7);
        CHECK(opt(fd, IPPROTO_TCP, TCP_KEEPCNT) == 4);
        CHECK(opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT) == 2500);
        CHECK(opt(fd, SOL_SOCKET, SO_RCVBUF) == 2 * 65536);  // the kernel doubles it
        CHECK(opt(fd, SOL_SOCKET, SO_SNDBUF) == 2 * 65536);
        CHECK(opt(fd, IPPROTO_TCP, TCP_NODELAY) == 1);
      }
      CHECK(opt(listener, IPPROTO_TCP, TCP_DEFER_ACCEPT) > 0);
      // listen(2)'s backlog is the Send-Q column of a listening socket.
      CmdResult ss = run_shell("ss -Hltn 'sport = :" + std::to_string(p.port()) + "'");
      CAPTURE(ss.output);
      CHECK(ss.output.find(" 37 ") != std::string::npos);
    }
    SUBCASE("off") {
      Options o;
      o.extra_pgbouncer = "tcp_keepalive = 0\ntcp_keepidle = 31\ntcp_defer_accept = 0\n";
      Pooler p(o);
      Conn c = connect(p.conninfo());
      CHECK(scalar(c.get(), "SELECT 1") == "1");
      auto socks = sockets_of(p.pid());
      int client = find_socket(socks, local_port(c.get()), true);
      int server = find_socket(socks, cluster().port, true);
      int listener = find_socket(socks, p.port(), false);
      REQUIRE(client >= 0);
      REQUIRE(server >= 0);
      REQUIRE(listener >= 0);
      CHECK(opt(client, SOL_SOCKET, SO_KEEPALIVE) == 0);
      CHECK(opt(server, SOL_SOCKET, SO_KEEPALIVE) == 0);
      CHECK(opt(client, IPPROTO_TCP, TCP_USER_TIMEOUT) == 0);
      CHECK(opt(listener, IPPROTO_TCP, TCP_DEFER_ACCEPT) == 0);
      // A reload (here the console's SET) applies tcp_defer_accept to the open sockets.
      Conn admin = connect(admin_of(p));
      exec_ok(admin.get(), "SET tcp_defer_accept = 1");
      CHECK(eventually([&] { return opt(listener, IPPROTO_TCP, TCP_DEFER_ACCEPT) > 0; }, 3));
      // Accepted clients take their options from the listening socket: a reload reaches
      // the clients that come after it, and a setting set back to 0 gives them the
      // kernel's default again.
      auto next_client = [&](int want_keepalive, int want_idle, int want_timeout) {
        return eventually(
            [&] {
              Conn n = connect(p.conninfo());
              if (scalar(n.get(), "SELECT 1") != "1") return false;
              auto now = sockets_of(p.pid());
              int fd = find_socket(now, local_port(n.get()), true);
              return fd >= 0 && opt(fd, SOL_SOCKET, SO_KEEPALIVE) == want_keepalive &&
                     opt(fd, IPPROTO_TCP, TCP_KEEPIDLE) == want_idle &&
                     opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT) == want_timeout &&
                     opt(fd, IPPROTO_TCP, TCP_NODELAY) == 1;
            },
            5);
      };
      int kernel_idle = std::stoi(read_file("/proc/sys/net/ipv4/tcp_keepalive_time"));
      CHECK(next_client(0, 31, 0));
      exec_ok(admin.get(), "SET tcp_keepalive = 1");
      exec_ok(admin.get(), "SET tcp_keepidle = 45");
      exec_ok(admin.get(), "SET tcp_user_timeout = 1500");
      CHECK(next_client(1, 45, 1500));
      exec_ok(admin.get(), "SET tcp_keepidle = 0");
      exec_ok(admin.get(), "SET tcp_user_timeout = 0");
      CHECK(next_client(1, kernel_idle, 0));
      // Clients accepted before a reload keep what they had.
      CHECK(opt(client, SOL_SOCKET, SO_KEEPALIVE) == 0);
    }
  }

  TEST_CASE("max_db_client_connections and max_user_client_connections: exact, PgBouncer's error") {
    if (skip_in_direct_mode("pgsluice's client limits")) return;
    const std::string db_msg = "client connections exceeded (max_db_client_connections)";
    const std::string user_msg = "client connections exceeded (max_user_client_connections)";
    SUBCASE("global per database, across two workers, counts drop when clients leave") {
      Options o;
      o.auth_type = "trust";
      o.workers = 2;
      o.extra_pgbouncer = "max_db_client_connections = 5\n";
      Pooler p(o);
      // 16 logins at once over two workers: exactly 5 get in.
      std::vector<Raw> kept;
      std::mutex mu;
      std::vector<std::pair<std::string, std::string>> outcomes;
      std::vector<std::thread> ts;
      for (int i = 0; i < 16; i++)
        ts.emplace_back([&] {
          std::vector<Raw> mine;
          auto r = raw_login(p.port(), "md5user", "testdb", &mine);
          std::lock_guard<std::mutex> g(mu);
          outcomes.push_back(r);
          for (Raw& x : mine) kept.push_back(std::move(x));
        });
      for (auto& t : ts) t.join();
      int ok = 0;
      for (auto& [code, m] : outcomes) {
        if (code == "ok") {
          ok++;
          continue;
        }
        CHECK(code == "08P01");
        CHECK(m == db_msg);
      }
      CHECK(ok == 5);
      // The global value applies to each database on its own.
      std::vector<Raw> other;
      CHECK(raw_login(p.port(), "md5user", "postgres", &other).first == "ok");
      // Clients that leave give their place back.
      kept.clear();
      std::vector<Raw> again;
      CHECK(eventually([&] {
        again.clear();
        for (int i = 0; i < 5; i++)
          if (raw_login(p.port(), "md5user", "testdb", &again).first != "ok") return false;
        return true;
      }));
      CHECK(raw_login(p.port(), "plainuser", "testdb", &again).second == db_msg);
    }
    SUBCASE("per database and per user override the global values") {
      Options o;
      o.auth_type = "trust";
      o.databases =
          "testdb = " + pg_target() + " max_db_client_connections=2\n* = " + pg_target() + "\n";
      o.extra_pgbouncer =
          "max_db_client_connections = 10\nmax_user_client_connections = 4\n"
          "[users]\nplainuser = max_user_client_connections=1\n";
      Pooler p(o);
      std::vector<Raw> kept;
      CHECK(raw_login(p.port(), "md5user", "testdb", &kept).first == "ok");
      CHECK(raw_login(p.port(), "plainuser", "testdb", &kept).first == "ok");
      auto third = raw_login(p.port(), "md5user", "testdb", &kept);
      CHECK(third.first == "08P01");
      CHECK(third.second == db_msg);
      // plainuser: one client, whatever the database.
      auto second = raw_login(p.port(), "plainuser", "postgres", &kept);
      CHECK(second.first == "08P01");
      CHECK(second.second == user_msg);
      // md5user: the global 4 (one is in testdb, three more elsewhere, then refused).
      for (int i = 0; i < 3; i++)
        CHECK(raw_login(p.port(), "md5user", "postgres", &kept).first == "ok");
      CHECK(raw_login(p.port(), "md5user", "postgres", &kept).second == user_msg);
      // The console is not counted; it shows the counts the limits use.
      Conn admin = connect(admin_of(p));
      CHECK(show_cell(admin.get(), "SHOW DATABASES", "testdb", "current_client_connections") ==
            "2");
      CHECK(show_cell(admin.get(), "SHOW DATABASES", "testdb", "max_client_connections") == "2");
      CHECK(show_cell(admin.get(), "SHOW USERS", "md5user", "current_client_connections") == "4");
      CHECK(show_cell(admin.get(), "SHOW USERS", "plainuser", "current_client_connections") == "1");
      CHECK(show_cell(admin.get(), "SHOW USERS", "plainuser", "max_user_client_connections") ==
            "1");
      kept.clear();
      CHECK(eventually([&] {
        return show_cell(admin.get(), "SHOW USERS", "md5user", "current_client_connections") ==
                   "0" &&
               show_cell(admin.get(), "SHOW DATABASES", "testdb", "current_client_connections") ==
                   "0";
      }));
    }
    SUBCASE("clients count once authenticated: stalled and failed logins take no place") {
      Options o;
      o.workers = 2;
      o.extra_pgbouncer = "max_user_client_connections = 2\nmax_db_client_connections = 2\n";
      Pooler p(o);
      std::vector<Raw> stalled;
      for (int i = 0; i < 4; i++) {
        Raw r = Raw::tcp(p.port());
        REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
        Msg m;
        REQUIRE(r.read_msg(&m) == ReadStatus::Ok);
        REQUIRE(m.type == 'R');
        stalled.push_back(std::move(r));
      }
      for (int i = 0; i < 3; i++) {
        std::string err;
        Conn bad = try_connect(p.conninfo("md5user", "wrong"), &err);
        CHECK(!bad);
      }
      Conn a = connect(p.conninfo());
      Conn b = connect(p.conninfo());
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      CHECK(!c);
      CHECK(err.find("client connections exceeded (max_db_client_connections)") !=
            std::string::npos);
      a.reset();
      CHECK(eventually([&] {
        Conn d = try_connect(p.conninfo(), &err);
        return static_cast<bool>(d);
      }));
    }
  }

  TEST_CASE("min_pool_size: opened ahead of need, kept after RECONNECT and killed servers") {
    if (skip_in_direct_mode("pgsluice's min_pool_size")) return;
    SUBCASE("forced user: no client needed; per-database value") {
      Options o;
      o.workers = 2;
      o.databases = "warm = " + pg_target() +
                    " user=md5user application_name=warm min_pool_size=3\n"
                    "testdb = " +
                    pg_target() + "\n";
      o.extra_pgbouncer = "min_pool_size = 1\nserver_login_retry = 0.5\n";
      Pooler p(o);
      CHECK(eventually([] { return backends_named("warm") == 3; }, 4));
      sleep_ms(1500);
      CHECK(backends_named("warm") == 3);  // kept, not more
      auto before = backend_pids("warm");
      // RECONNECT: the idle servers are replaced, and the pool is warm again within ticks.
      Conn admin = connect(admin_of(p));
      exec_ok(admin.get(), "RECONNECT warm");
      CHECK(eventually(
          [&] {
            auto now = backend_pids("warm");
            if (now.size() != 3) return false;
            for (const auto& pid : now)
              if (before.count(pid)) return false;
            return true;
          },
          4));
      // Killed servers (a PostgreSQL restart's effect) are replaced too.
      Conn su = connect(superuser_conninfo("postgres"));
      exec_ok(su.get(),
              "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
              "'warm'");
      CHECK(eventually([] { return backends_named("warm") == 0; }, 2));
      CHECK(eventually([] { return backends_named("warm") == 3; }, 4));
      // The servers serve clients of the database.
      Conn c = connect(p.conninfo("md5user", "md5pass", "warm"));
      CHECK(scalar(c.get(), "SELECT current_setting('application_name')") == "warm");
      // The client's worker may open one of its own rather than wait for a hand-over.
      int n = backends_named("warm");
      CHECK(n >= 3);
      CHECK(n <= 4);
    }
    SUBCASE("no forced user: only while a client is connected; capped at pool_size") {
      Options o;
      o.workers = 2;
      o.default_pool_size = 2;
      o.databases = "testdb = " + pg_target() + " application_name=minpool\n";
      o.extra_pgbouncer = "min_pool_size = 5\n";
      Pooler p(o);
      sleep_ms(1500);
      CHECK(backends_named("minpool") == 0);
      Conn c = connect(p.conninfo());
      CHECK(eventually([] { return backends_named("minpool") == 2; }, 4));
      sleep_ms(1500);
      CHECK(backends_named("minpool") == 2);
      c.reset();
      Conn su = connect(superuser_conninfo("postgres"));
      exec_ok(su.get(),
              "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
              "'minpool'");
      CHECK(eventually([] { return backends_named("minpool") == 0; }, 2));
      sleep_ms(2500);  // no client any more: nothing is reopened
      CHECK(backends_named("minpool") == 0);
    }
  }

  TEST_CASE("reserve_pool_size after reserve_pool_timeout; pool limits exact across workers") {
    if (skip_in_direct_mode("pgsluice's reserve pool")) return;
    SUBCASE("global, per database, per user") {
      struct Case {
        const char* name;
        std::string db_extra, pgb_extra;
      };
      std::vector<Case> cases = {
          {"global", "", "reserve_pool_size = 1\n"},
          {"per database", " reserve_pool_size=1", ""},
          {"per user", "", "reserve_pool_size = 0\n[users]\nmd5user = reserve_pool_size=1\n"},
      };
      for (const Case& k : cases) {
        CAPTURE(k.name);
        Options o;
        o.workers = 2;
        o.default_pool_size = 1;
        o.databases = "testdb = " + pg_target() + " application_name=resv" + k.db_extra + "\n";
        o.extra_pgbouncer = "reserve_pool_timeout = 1\n" + k.pgb_extra;
        Pooler p(o);
        Conn a = connect(p.conninfo());
        exec_ok(a.get(), "BEGIN");
        exec_ok(a.get(), "SELECT 1");  // holds the pool's one server
        Conn b = connect(p.conninfo());
        auto t0 = Clock::now();
        send_query(b.get(), "BEGIN; SELECT 2");
        CHECK(!finished_within(b.get(), 0.7));  // waits while under reserve_pool_timeout
        CHECK(finished_within(b.get(), 3));     // then gets a reserve server
        double waited = seconds_since(t0);
        CHECK(waited >= 0.9);
        CHECK(collect(b.get()).empty());
        CHECK(backends_named("resv") == 2);
        // The reserve is used up: a third waits until a server is released.
        Conn c = connect(p.conninfo());
        send_query(c.get(), "SELECT 3");
        CHECK(!finished_within(c.get(), 2.5));
        CHECK(backends_named("resv") == 2);
        exec_ok(a.get(), "COMMIT");
        CHECK(finished_within(c.get(), 3));
        CHECK(collect(c.get()).empty());
        CHECK(p.log().find("taking connection from reserve_pool") != std::string::npos);
      }
    }
    SUBCASE("without a reserve the waiter waits") {
      Options o;
      o.default_pool_size = 1;
      o.databases = "testdb = " + pg_target() + " application_name=resv\n";
      o.extra_pgbouncer = "reserve_pool_timeout = 1\n";
      Pooler p(o);
      Conn a = connect(p.conninfo());
      exec_ok(a.get(), "BEGIN");
      exec_ok(a.get(), "SELECT 1");
      Conn b = connect(p.conninfo());
      send_query(b.get(), "SELECT 2");
      CHECK(!finished_within(b.get(), 2.5));
      CHECK(backends_named("resv") == 1);
      exec_ok(a.get(), "COMMIT");
      CHECK(finished_within(b.get(), 3));
      CHECK(collect(b.get()).empty());
    }
    SUBCASE("16 waiting clients on two workers: pool_size + reserve_pool_size, never more") {
      Options o;
      o.workers = 2;
      o.default_pool_size = 2;
      o.databases = "testdb = " + pg_target() + " application_name=resv\n";
      o.extra_pgbouncer = "reserve_pool_timeout = 0.5\nreserve_pool_size = 3\n";
      Pooler p(o);
      std::vector<Conn> cs;
      for (int i = 0; i < 16; i++) cs.push_back(connect(p.conninfo()));
      for (auto& c : cs) send_query(c.get(), "SELECT pg_sleep(3)");
      int most = 0;
      auto t0 = Clock::now();
      while (seconds_since(t0) < 3) {
        most = std::max(most, backends_named("resv"));
        sleep_ms(100);
      }
      CHECK(most == 5);
      cs.clear();  // closing mid-query closes those servers
    }
  }

  TEST_CASE("server_round_robin: idle servers are used in turn instead of the last one") {
    if (skip_in_direct_mode("pgsluice's idle-server order")) return;
    for (bool rr : {false, true}) {
      CAPTURE(rr);
      Options o;
      o.workers = 1;
      o.default_pool_size = 3;
      o.extra_pgbouncer = std::string("server_round_robin = ") + (rr ? "1" : "0") + "\n";
      Pooler p(o);
      std::vector<Conn> cs;
      for (int i = 0; i < 3; i++) {
        cs.push_back(connect(p.conninfo()));
        exec_ok(cs.back().get(), "BEGIN");
        exec_ok(cs.back().get(), "SELECT 1");
      }
      for (auto& c : cs) exec_ok(c.get(), "COMMIT");
      std::set<std::string> pids;
      for (int i = 0; i < 6; i++) pids.insert(scalar(cs[0].get(), "SELECT pg_backend_pid()"));
      CHECK(pids.size() == (rr ? 3u : 1u));
    }
  }

  TEST_CASE("server_fast_close: session servers close at RECONNECT once between transactions") {
    if (skip_in_direct_mode("pgsluice's server_fast_close")) return;
    for (bool fast : {false, true}) {
      CAPTURE(fast);
      Options o;
      o.workers = 1;
      o.pool_mode = "session";
      o.extra_pgbouncer = std::string("server_fast_close = ") + (fast ? "1" : "0") + "\n";
      Pooler p(o);
      Conn idle = connect(p.conninfo());
      CHECK(scalar(idle.get(), "SELECT 1") == "1");
      Conn busy = connect(p.conninfo());
      exec_ok(busy.get(), "BEGIN");
      exec_ok(busy.get(), "SELECT 1");
      Conn admin = connect(admin_of(p));
      exec_ok(admin.get(), "RECONNECT testdb");
      sleep_ms(2500);
      std::string err;
      bool idle_ok = exec_nothrow(idle.get(), "SELECT 1", &err);
      if (fast) {
        CHECK(!idle_ok);
        CHECK(err.find("database configuration changed") != std::string::npos);
      } else {
        CHECK(idle_ok);
      }
      // A transaction is never cut: it goes on, and ends the session after its COMMIT.
      CHECK(exec_nothrow(busy.get(), "SELECT 2", &err));
      CHECK(exec_nothrow(busy.get(), "COMMIT", &err));
      sleep_ms(2500);
      CHECK(exec_nothrow(busy.get(), "SELECT 3", &err) == !fast);
    }
  }
}

}  // namespace it
