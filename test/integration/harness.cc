// Integration-test harness: PostgreSQL cluster, pgsluice launcher, libpq/raw/process helpers.
#include "integration/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <doctest/doctest.h>

namespace it {

namespace {

// ---------------------------------------------------------------------------------------------
// Cleanup registry: everything started is stopped and removed at exit, on a signal, or when
// the watchdog fires.

std::mutex g_reg_mu;
std::set<pid_t> g_children;          // pgsluice processes
std::vector<std::string> g_dirs;     // temp dirs to remove
std::vector<std::string> g_pg_data;  // data dirs of the running clusters
std::atomic<bool> g_current_failed{false};

std::string pg_bindir() {
  const char* e = getenv("PG_BINDIR");
  return e && *e ? e : "/usr/lib/postgresql/15/bin";
}

bool is_root() {
  return geteuid() == 0;
}

// Prefix that runs a command as the postgres OS user when we are root.
std::string as_postgres() {
  return is_root() ? "runuser -u postgres -- " : "";
}

void stop_cluster_locked() {
  for (const auto& data : g_pg_data) {
    std::string cmd = as_postgres() + pg_bindir() + "/pg_ctl stop -m immediate -w -t 10 -D " +
                      shell_quote(data) + " >/dev/null 2>&1";
    if (system(cmd.c_str()) != 0) fprintf(stderr, "[it] pg_ctl stop failed\n");
  }
  g_pg_data.clear();
}

void cleanup_all() {
  std::lock_guard<std::mutex> lk(g_reg_mu);
  for (pid_t p : g_children) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
  g_children.clear();
  stop_cluster_locked();
  const char* keep = getenv("PGSLUICE_KEEP");
  for (const auto& d : g_dirs) {
    if (keep && *keep == '1')
      fprintf(stderr, "[it] kept %s\n", d.c_str());
    else
      remove_tree(d);
  }
  g_dirs.clear();
}

void on_signal(int sig) {
  fprintf(stderr, "\n[it] signal %d: cleaning up\n", sig);
  cleanup_all();
  _exit(128 + sig);
}

struct ProcessSetup {
  ProcessSetup() {
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    atexit(cleanup_all);
  }
} g_process_setup;

// ---------------------------------------------------------------------------------------------
// Watchdog: a test case that runs longer than the limit aborts the run (after cleanup), so a
// hung pooler never hangs the suite.

std::mutex g_wd_mu;
std::string g_wd_test;
Clock::time_point g_wd_start;
bool g_wd_active = false;

int test_timeout_s() {
  const char* e = getenv("PGSLUICE_IT_TEST_TIMEOUT");
  return e && atoi(e) > 0 ? atoi(e) : 90;
}

void watchdog_loop() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    std::lock_guard<std::mutex> lk(g_wd_mu);
    if (g_wd_active && seconds_since(g_wd_start) > test_timeout_s()) {
      fprintf(stderr, "\n[it] WATCHDOG: test case \"%s\" ran longer than %d s; aborting run\n",
              g_wd_test.c_str(), test_timeout_s());
      std::cout.flush();
      fflush(stdout);
      cleanup_all();
      _exit(3);
    }
  }
}

struct Watchdog : doctest::IReporter {
  explicit Watchdog(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override { std::thread(watchdog_loop).detach(); }
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& d) override {
    std::lock_guard<std::mutex> lk(g_wd_mu);
    g_wd_test = d.m_name;
    g_wd_start = Clock::now();
    g_wd_active = true;
    g_current_failed = false;
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& st) override {
    std::lock_guard<std::mutex> lk(g_wd_mu);
    std::cout.flush();
    fprintf(stderr, "[it] %-60s %6.1f s %s\n", g_wd_test.c_str(), seconds_since(g_wd_start),
            st.failure_flags ? "FAILED" : "ok");
    g_wd_active = false;
  }
  void test_case_exception(const doctest::TestCaseException&) override { g_current_failed = true; }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& a) override {
    if (a.m_failed) g_current_failed = true;
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

std::string repo_root() {
  char buf[4096];
  if (!getcwd(buf, sizeof buf)) return ".";
  std::string d = buf;
  for (;;) {
    if (access((d + "/Makefile").c_str(), R_OK) == 0 && access((d + "/src").c_str(), X_OK) == 0)
      return d;
    auto slash = d.rfind('/');
    if (slash == std::string::npos || d == "/") break;
    d = slash == 0 ? "/" : d.substr(0, slash);
  }
  return buf;
}

bool postgres_ids(uid_t* uid, gid_t* gid) {
  struct passwd* pw = getpwnam("postgres");
  if (!pw) return false;
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return true;
}

// OS user pgsluice runs as when we are root ("" = stay root). PgBouncer refuses to run as
// root, so by default a drop-in replacement is run as postgres.
std::string sluice_run_as() {
  if (!is_root()) return "";
  const char* e = getenv("PGSLUICE_RUN_AS");
  if (e) return strcmp(e, "root") == 0 ? "" : e;
  return "postgres";
}

// initdb runs once per run, into a template data dir that every cluster copies (a copy takes
// a tenth of initdb's time). The template is never started.
std::string initdb_template() {
  static std::mutex mu;
  static std::string tmpl;
  std::lock_guard<std::mutex> lk(mu);
  if (!tmpl.empty()) return tmpl;
  std::string dir = make_temp_dir("pg-initdb");
  if (is_root()) {
    uid_t uid = 0;
    gid_t gid = 0;
    REQUIRE_MESSAGE(postgres_ids(&uid, &gid), "no postgres OS user");
    REQUIRE(chown(dir.c_str(), uid, gid) == 0);
  }
  REQUIRE(chmod(dir.c_str(), 0755) == 0);
  auto r = run_shell(as_postgres() + pg_bindir() + "/initdb -D " + shell_quote(dir + "/data") +
                         " -U postgres --auth-local=trust --auth-host=md5 -E UTF8 --locale=C"
                         " --no-sync",
                     120);
  REQUIRE_MESSAGE(r.exit_code == 0, "initdb failed:\n" << r.output);
  tmpl = dir + "/data";
  return tmpl;
}

// Makes c->dir with a copy of the template data dir, appends `conf` to postgresql.conf,
// replaces pg_hba.conf by `hba` when non-empty, and starts PostgreSQL on a free port.
// Starts PostgreSQL on c->port in data dir `data` (server log in c->dir); REQUIREs success.
void pg_start(const Cluster& c, const std::string& data, const std::string& listen = "127.0.0.1") {
  std::string opts = "-p " + std::to_string(c.port) + " -k " + c.dir +
                     " -c listen_addresses=" + listen +
                     " -c max_connections=300 -c fsync=off"
                     " -c shared_buffers=64MB -c synchronous_commit=off"
                     " -c full_page_writes=off -c log_min_messages=warning";
  auto r =
      run_shell(as_postgres() + pg_bindir() + "/pg_ctl start -w -t 60 -D " + shell_quote(data) +
                    " -l " + shell_quote(c.dir + "/postgres.log") + " -o " + shell_quote(opts),
                90);
  if (r.exit_code != 0) {
    std::string log = read_file(c.dir + "/postgres.log");
    REQUIRE_MESSAGE(false, "pg_ctl start failed:\n" << r.output << "\n" << log);
  }
  std::lock_guard<std::mutex> lk(g_reg_mu);
  g_pg_data.push_back(data);
}

// A temp dir the postgres OS user owns, for a cluster's data, socket and log.
std::string cluster_dir(const char* tag) {
  std::string dir = make_temp_dir(tag);
  if (is_root()) {
    uid_t uid = 0;
    gid_t gid = 0;
    REQUIRE_MESSAGE(postgres_ids(&uid, &gid), "no postgres OS user");
    REQUIRE(chown(dir.c_str(), uid, gid) == 0);
  }
  REQUIRE(chmod(dir.c_str(), 0755) == 0);
  return dir;
}

void start_postgres(Cluster* c, const char* tag, const std::string& conf, const std::string& hba,
                    const std::string& listen = "127.0.0.1") {
  std::string tmpl = initdb_template();
  c->dir = cluster_dir(tag);
  c->port = free_port();
  std::string data = c->dir + "/data";
  auto r = run_shell(as_postgres() + "cp -a " + shell_quote(tmpl) + " " + shell_quote(data), 60);
  REQUIRE_MESSAGE(r.exit_code == 0, "copying the initdb template failed:\n" << r.output);
  // Existing files keep their owner (postgres) when rewritten by root.
  if (!conf.empty())
    write_file(data + "/postgresql.conf", read_file(data + "/postgresql.conf") + "\n" + conf + "\n",
               0600);
  if (!hba.empty()) write_file(data + "/pg_hba.conf", hba, 0600);
  pg_start(*c, data, listen);
}

std::string cluster_su(const Cluster& c, const std::string& db) {
  return "host=" + c.dir + " port=" + std::to_string(c.port) + " user=postgres dbname=" + db;
}

Cluster* start_main_cluster() {
  auto* c = new Cluster;
  start_postgres(c, "pg", "", "");
  {
    Conn pg = connect(cluster_su(*c, "postgres"));
    exec_ok(pg.get(), "SET password_encryption = 'md5'");
    exec_ok(pg.get(), "CREATE ROLE md5user LOGIN PASSWORD 'md5pass'");
    exec_ok(pg.get(), "SET password_encryption = 'scram-sha-256'");
    exec_ok(pg.get(), "CREATE ROLE scramuser LOGIN PASSWORD 'scrampass'");
    exec_ok(pg.get(), "CREATE ROLE plainuser LOGIN PASSWORD 'plainpass'");
    exec_ok(pg.get(), "CREATE DATABASE testdb OWNER md5user");
    c->md5_secret = scalar(pg.get(), "SELECT rolpassword FROM pg_authid WHERE rolname='md5user'");
    c->scram_secret =
        scalar(pg.get(), "SELECT rolpassword FROM pg_authid WHERE rolname='scramuser'");
  }
  // "md5" + md5("md5pass" + "md5user"), computed with md5sum.
  REQUIRE(c->md5_secret == "md57541d4e65fae11bd07f18dc6fe2b02bc");
  REQUIRE(c->scram_secret.rfind("SCRAM-SHA-256$", 0) == 0);
  auto r = run_shell("pgbench -i -s 1 -q -h " + shell_quote(c->dir) + " -p " +
                         std::to_string(c->port) + " -U postgres testdb",
                     120);
  REQUIRE_MESSAGE(r.exit_code == 0, "pgbench -i failed:\n" << r.output);
  {
    Conn pg = connect(cluster_su(*c, "testdb"));
    exec_ok(pg.get(), "GRANT ALL ON SCHEMA public TO md5user, scramuser, plainuser");
    exec_ok(pg.get(), "GRANT ALL ON ALL TABLES IN SCHEMA public TO md5user, scramuser, plainuser");
  }
  return c;
}

}  // namespace

Cluster start_cluster(const ClusterSetup& s) {
  const Cluster& main = cluster();
  auto t0 = Clock::now();
  Cluster c;
  start_postgres(&c, s.tag.c_str(), s.conf, s.hba, s.listen_addresses);
  c.md5_secret = main.md5_secret;
  c.scram_secret = main.scram_secret;
  {
    Conn m = connect(cluster_su(main, "postgres"));
    std::string plain =
        scalar(m.get(), "SELECT rolpassword FROM pg_authid WHERE rolname='plainuser'");
    Conn pg = connect(cluster_su(c, "postgres"));
    // Stored secrets pass through CREATE ROLE unchanged: the same userlist works for both.
    exec_ok(pg.get(), "CREATE ROLE md5user LOGIN PASSWORD '" + c.md5_secret + "'");
    exec_ok(pg.get(), "CREATE ROLE scramuser LOGIN PASSWORD '" + c.scram_secret + "'");
    exec_ok(pg.get(), "CREATE ROLE plainuser LOGIN PASSWORD '" + plain + "'");
    exec_ok(pg.get(), "CREATE DATABASE testdb OWNER md5user");
    REQUIRE(scalar(pg.get(), "SELECT rolpassword FROM pg_authid WHERE rolname='scramuser'") ==
            c.scram_secret);
    for (const auto& db : s.databases)
      exec_ok(pg.get(), "CREATE DATABASE " + db + " OWNER md5user");
  }
  {
    Conn pg = connect(cluster_su(c, "testdb"));
    exec_ok(pg.get(), "GRANT ALL ON SCHEMA public TO md5user, scramuser, plainuser");
    if (!s.setup_sql.empty()) exec_ok(pg.get(), s.setup_sql);
  }
  fprintf(stderr, "[it] PostgreSQL cluster %s in %s on port %d (%.1f s)\n", s.tag.c_str(),
          c.dir.c_str(), c.port, seconds_since(t0));
  return c;
}

Cluster start_standby(const Cluster& primary, const std::string& tag) {
  auto t0 = Clock::now();
  Cluster c = primary;
  c.dir = cluster_dir(tag.c_str());
  c.port = free_port();
  std::string data = c.dir + "/data";
  auto r = run_shell(as_postgres() + pg_bindir() + "/pg_basebackup -R -X stream -c fast -D " +
                         shell_quote(data) + " -h " + shell_quote(primary.dir) + " -p " +
                         std::to_string(primary.port) + " -U postgres",
                     120);
  REQUIRE_MESSAGE(r.exit_code == 0, "pg_basebackup failed:\n" << r.output);
  pg_start(c, data);
  fprintf(stderr, "[it] PostgreSQL standby %s of port %d in %s on port %d (%.1f s)\n", tag.c_str(),
          primary.port, c.dir.c_str(), c.port, seconds_since(t0));
  return c;
}

CmdResult run_pg_ctl(const Cluster& c, const std::string& args, int timeout_s) {
  std::string data = c.dir + "/data";
  CmdResult r = run_shell(
      as_postgres() + pg_bindir() + "/pg_ctl " + args + " -D " + shell_quote(data) + " 2>&1",
      timeout_s);
  if (r.exit_code == 0 && args.rfind("stop", 0) == 0) {  // nothing left to stop at exit
    std::lock_guard<std::mutex> lk(g_reg_mu);
    g_pg_data.erase(std::remove(g_pg_data.begin(), g_pg_data.end(), data), g_pg_data.end());
  }
  return r;
}

std::string checkout_root() {
  return repo_root();
}

REGISTER_LISTENER("it_watchdog", 1, Watchdog);

// ---------------------------------------------------------------------------------------------

const Cluster& cluster() {
  static std::mutex mu;
  static Cluster* c = nullptr;
  std::lock_guard<std::mutex> lk(mu);
  if (!c) {
    auto t0 = Clock::now();
    c = start_main_cluster();
    fprintf(stderr, "[it] PostgreSQL cluster in %s on port %d (%.1f s)\n", c->dir.c_str(), c->port,
            seconds_since(t0));
  }
  return *c;
}

std::string superuser_conninfo(const std::string& db) {
  return cluster_su(cluster(), db);
}

std::string superuser_conninfo(const Cluster& c, const std::string& db) {
  return cluster_su(c, db);
}

bool direct_mode() {
  const char* e = getenv("PGSLUICE_TARGET");
  return e && strcmp(e, "direct") == 0;
}

bool skip_in_direct_mode(const char* why) {
  if (!direct_mode()) return false;
  MESSAGE("skipped in direct mode: " << std::string(why));
  return true;
}

std::string pgsluice_binary() {
  const char* e = getenv("PGSLUICE_BIN");
  std::string bin = (e && *e) ? std::string(e) : repo_root() + "/pgsluice";
  if (sluice_run_as().empty()) return bin;
  // pgsluice runs as another user: execute a copy from a world-readable temp dir, because
  // the checkout may sit below a directory that user cannot enter (/root on a CI machine).
  static std::mutex mu;
  static std::string copy;
  std::lock_guard<std::mutex> lk(mu);
  if (copy.empty() && access(bin.c_str(), X_OK) == 0) {
    std::string dir = make_temp_dir("bin");
    REQUIRE(chmod(dir.c_str(), 0755) == 0);
    std::string target = dir + "/pgsluice";
    std::error_code ec;
    std::filesystem::copy_file(bin, target, ec);
    REQUIRE_MESSAGE(!ec, "copy " << bin << ": " << ec.message());
    REQUIRE(chmod(target.c_str(), 0755) == 0);
    copy = target;
  }
  return copy.empty() ? bin : copy;
}

// ---------------------------------------------------------------------------------------------
// Pooler

bool can_private_mount() {
  pid_t p = fork();
  if (p < 0) return false;
  if (p == 0) {
    bool ok = unshare(CLONE_NEWNS) == 0 &&
              mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  if (waitpid(p, &st, 0) != p) return false;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

Pooler::Pooler(Options o) {
  const Cluster& c = cluster();
  int pg_port = o.pg_port > 0 ? o.pg_port : c.port;
  if (direct_mode()) {
    port_ = pg_port;
    dir_ = c.dir;
    return;
  }
  std::string bin = pgsluice_binary();
  REQUIRE_MESSAGE(access(bin.c_str(), X_OK) == 0,
                  "pgsluice binary not found at " << bin
                                                  << " (run `make pgsluice`, set PGSLUICE_BIN, or "
                                                     "PGSLUICE_TARGET=direct)");
  dir_ = make_temp_dir("sluice");
  port_ = free_port();
  std::string pg = "host=127.0.0.1 port=" + std::to_string(pg_port);
  std::string userlist = "\"md5user\" \"" + c.md5_secret + "\"\n\"scramuser\" \"" + c.scram_secret +
                         "\"\n\"plainuser\" \"plainpass\"\n" + o.extra_userlist;
  std::string dbs =
      o.databases.empty() ? "testdb = " + pg + " dbname=testdb\n* = " + pg + "\n" : o.databases;
  std::ostringstream ini;
  ini << "[databases]\n"
      << dbs << "\n[pgbouncer]\n"
      << "listen_addr = 127.0.0.1\n"
      << "listen_port = " << port_ << "\n"
      << "unix_socket_dir = " << dir_ << "\n"
      << "auth_type = " << o.auth_type << "\n"
      << "auth_file = " << dir_ << "/userlist.txt\n"
      << "pool_mode = " << o.pool_mode << "\n"
      << "default_pool_size = " << o.default_pool_size << "\n"
      << "workers = " << o.workers << "\n"
      << "logfile = " << dir_ << "/pgsluice.log\n"
      << "pidfile = " << dir_ << "/pgsluice.pid\n"
      << "admin_users = md5user\n"
      // Connections that send nothing reach accept() at once, as the tests of the paths
      // before login expect; the default (1, TCP_DEFER_ACCEPT) would hold them in the
      // kernel. extra_pgbouncer may set it again (a later line wins).
      << "tcp_defer_accept = 0\n"
      << o.extra_pgbouncer;
  std::string ini_path = dir_ + "/pgsluice.ini";
  write_file(ini_path, ini.str(), 0600);
  write_file(dir_ + "/userlist.txt", userlist, 0600);
  std::string run_as = sluice_run_as();
  uid_t uid = 0;
  gid_t gid = 0;
  if (!run_as.empty()) {
    struct passwd* pw = getpwnam(run_as.c_str());
    REQUIRE_MESSAGE(pw != nullptr, "no OS user " << run_as);
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    REQUIRE(chown(dir_.c_str(), uid, gid) == 0);
    REQUIRE(chown(ini_path.c_str(), uid, gid) == 0);
    REQUIRE(chown((dir_ + "/userlist.txt").c_str(), uid, gid) == 0);
  }
  std::string out_path = dir_ + "/stdout.log";
  pid_t p = fork();
  REQUIRE(p >= 0);
  if (p == 0) {
    int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    if (!o.resolv_conf.empty()) {
      if (unshare(CLONE_NEWNS) != 0 ||
          mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          mount(o.resolv_conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0)
        _exit(125);
    }
    if (!run_as.empty()) {
      if (setgid(gid) != 0 || setuid(uid) != 0) _exit(126);
    }
    if (o.nofile > 0) {
      rlimit lim{static_cast<rlim_t>(o.nofile), static_cast<rlim_t>(o.nofile)};
      if (setrlimit(RLIMIT_NOFILE, &lim) != 0) _exit(126);
    }
    if (chdir(dir_.c_str()) != 0) _exit(126);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    execl(bin.c_str(), bin.c_str(), ini_path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  pid_ = p;
  {
    std::lock_guard<std::mutex> lk(g_reg_mu);
    g_children.insert(p);
  }
  auto t0 = Clock::now();
  bool up = false;
  while (seconds_since(t0) < 10) {
    if (!alive()) break;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    if (ok) {
      up = true;
      break;
    }
    sleep_ms(20);
  }
  if (!up) {
    std::string why = alive() ? "did not accept on its port within 10 s" : exit_desc_;
    std::string lg = log();
    stop();
    REQUIRE_MESSAGE(false, "pgsluice failed to start (" << why << "); config:\n"
                                                        << ini.str() << "\nlog:\n"
                                                        << lg);
  }
}

bool Pooler::alive() {
  if (pid_ <= 0) return false;
  if (!exit_desc_.empty()) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    if (WIFEXITED(st))
      exit_desc_ = "exited with status " + std::to_string(WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
      exit_desc_ = "killed by signal " + std::to_string(WTERMSIG(st)) +
                   (WCOREDUMP(st) ? " (core dumped)" : "");
    else
      exit_desc_ = "gone";
    std::lock_guard<std::mutex> lk(g_reg_mu);
    g_children.erase(pid_);
  } else {
    exit_desc_ = "waitpid failed";
  }
  return false;
}

std::string Pooler::log() const {
  if (direct()) return "";
  std::string lf = read_file(dir_ + "/pgsluice.log");
  std::string out = read_file(dir_ + "/stdout.log");
  if (lf.empty()) return out;
  if (out.empty() || lf.find(out.substr(0, 200)) != std::string::npos) return lf;
  return lf + "\n--- stdout/stderr ---\n" + out;
}

void Pooler::stop() {
  if (pid_ <= 0) return;
  if (alive()) {
    kill(pid_, SIGTERM);
    auto t0 = Clock::now();
    while (alive() && seconds_since(t0) < 5) sleep_ms(20);
    if (alive()) {
      fprintf(stderr, "[it] pgsluice %d ignored SIGTERM for 5 s; SIGKILL\n", pid_);
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      std::lock_guard<std::mutex> lk(g_reg_mu);
      g_children.erase(pid_);
    }
  }
  pid_ = -1;
}

// Waits (bounded) until PostgreSQL has no client backends of the test roles left, so that
// the next test starts from a clean server (backends exit asynchronously).
static void wait_backends_gone() {
  Conn su = try_connect(superuser_conninfo("postgres"), nullptr);
  if (!su) return;
  auto t0 = Clock::now();
  while (seconds_since(t0) < 5) {
    Result r(PQexec(su.get(),
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND usename IN ('md5user', 'scramuser', 'plainuser')"));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || atoi(PQgetvalue(r.get(), 0, 0)) == 0) return;
    sleep_ms(20);
  }
  fprintf(stderr, "[it] test backends still present 5 s after the test\n");
}

Pooler::~Pooler() {
  if (direct()) {
    wait_backends_gone();
    return;
  }
  bool crashed = !alive();
  if (crashed) {
    CHECK_MESSAGE(false, "pgsluice died during the test: " << exit_desc_);
  }
  std::string lg = log();
  stop();
  if (crashed || g_current_failed) {
    // Show the tail of the log to explain the failure.
    size_t pos = lg.size();
    for (int n = 0; n < 60 && pos > 0; ++n) {
      pos = lg.rfind('\n', pos - 1);
      if (pos == std::string::npos) {
        pos = 0;
        break;
      }
    }
    fprintf(stderr, "----- pgsluice log tail (%s) -----\n%s\n-----\n", dir_.c_str(),
            lg.substr(pos).c_str());
  }
  wait_backends_gone();
  const char* keep = getenv("PGSLUICE_KEEP");
  if (!(keep && *keep == '1')) {
    remove_tree(dir_);
    std::lock_guard<std::mutex> lk(g_reg_mu);
    std::erase(g_dirs, dir_);
  }
}

std::string Pooler::conninfo(const std::string& user, const std::string& password,
                             const std::string& db, const std::string& extra) const {
  std::string s = "host=" + host_ + " port=" + std::to_string(port_) + " user=" + user +
                  " dbname=" + db + " connect_timeout=10";
  if (!password.empty()) s += " password=" + password;
  if (!extra.empty()) s += " " + extra;
  return s;
}

std::string Pooler::unix_conninfo(const std::string& user, const std::string& password,
                                  const std::string& db) const {
  std::string s = "host=" + dir_ + " port=" + std::to_string(port_) + " user=" + user +
                  " dbname=" + db + " connect_timeout=10";
  if (!password.empty()) s += " password=" + password;
  return s;
}

// ---------------------------------------------------------------------------------------------
// libpq helpers

static void quiet_notices(void*, const char*) {}

Conn try_connect(const std::string& conninfo, std::string* error) {
  Conn c(PQconnectdb(conninfo.c_str()));
  if (c) PQsetNoticeProcessor(c.get(), quiet_notices, nullptr);
  if (!c || PQstatus(c.get()) != CONNECTION_OK) {
    if (error) *error = c ? PQerrorMessage(c.get()) : "out of memory";
    return nullptr;
  }
  return c;
}

Conn connect(const std::string& conninfo) {
  std::string err;
  Conn c = try_connect(conninfo, &err);
  REQUIRE_MESSAGE(c != nullptr, "connect failed (" << conninfo << "): " << err);
  return c;
}

int query_timeout_s() {
  const char* e = getenv("PGSLUICE_IT_QUERY_TIMEOUT");
  return e && atoi(e) > 0 ? atoi(e) : 20;
}

// Like PQexec, but bounded: a pooler that never answers fails the query instead of hanging
// the run. *timed_out tells which happened.
Result exec_bounded(PGconn* c, const std::string& sql, bool* timed_out) {
  *timed_out = false;
  if (!PQsendQuery(c, sql.c_str())) return Result(PQmakeEmptyPGresult(c, PGRES_FATAL_ERROR));
  auto t0 = Clock::now();
  Result last;
  for (;;) {
    while (PQisBusy(c)) {
      if (seconds_since(t0) > query_timeout_s()) {
        *timed_out = true;
        return Result(PQmakeEmptyPGresult(c, PGRES_FATAL_ERROR));
      }
      pollfd pf{PQsocket(c), POLLIN, 0};
      poll(&pf, 1, 100);
      if (!PQconsumeInput(c)) break;
    }
    PGresult* r = PQgetResult(c);
    if (!r) break;
    auto st = PQresultStatus(r);
    bool copy = st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH;
    // Keep the first error, else the last result (as PQexec does).
    if (!last || PQresultStatus(last.get()) != PGRES_FATAL_ERROR)
      last.reset(r);
    else
      PQclear(r);
    if (copy) break;
  }
  if (!last) last.reset(PQmakeEmptyPGresult(c, PGRES_FATAL_ERROR));
  return last;
}

Result exec_ok(PGconn* c, const std::string& sql) {
  bool timed_out = false;
  Result r = exec_bounded(c, sql, &timed_out);
  REQUIRE_MESSAGE(!timed_out, "no answer within " << query_timeout_s() << " s to: " << sql);
  auto st = PQresultStatus(r.get());
  REQUIRE_MESSAGE((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK),
                  "query failed: " << sql << ": " << std::string(PQerrorMessage(c)));
  return r;
}

std::string scalar(PGconn* c, const std::string& sql) {
  Result r = exec_ok(c, sql);
  REQUIRE_MESSAGE(PQntuples(r.get()) >= 1, "no rows from " << sql);
  return PQgetisnull(r.get(), 0, 0) ? "<NULL>" : PQgetvalue(r.get(), 0, 0);
}

std::string exec_sqlstate(PGconn* c, const std::string& sql) {
  bool timed_out = false;
  Result r = exec_bounded(c, sql, &timed_out);
  REQUIRE_MESSAGE(!timed_out, "no answer within " << query_timeout_s() << " s to: " << sql);
  auto st = PQresultStatus(r.get());
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return "";
  const char* s = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  return s ? s : "(no sqlstate: " + std::string(PQerrorMessage(c)) + ")";
}

bool exec_nothrow(PGconn* c, const std::string& sql, std::string* err, std::string* first_value) {
  bool timed_out = false;
  Result r = exec_bounded(c, sql, &timed_out);
  if (timed_out) {
    if (err) *err = sql + ": no answer within " + std::to_string(query_timeout_s()) + " s";
    return false;
  }
  auto st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    if (err) *err = sql + ": " + PQerrorMessage(c);
    return false;
  }
  if (first_value) {
    if (PQntuples(r.get()) < 1) {
      if (err) *err = sql + ": no rows";
      return false;
    }
    *first_value = PQgetvalue(r.get(), 0, 0);
  }
  return true;
}

int local_port(PGconn* c) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(PQsocket(c), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  if (ss.ss_family != AF_INET) return 0;
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

int count_backends(const std::string& db, const std::string& user, const std::string& state) {
  struct Holder {
    Conn c;
  };
  thread_local Holder h;
  if (!h.c || PQstatus(h.c.get()) != CONNECTION_OK) {
    std::string err;
    h.c = try_connect(superuser_conninfo("postgres"), &err);
    if (!h.c) return -1;
  }
  std::string sql =
      "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
      " AND backend_type = 'client backend' AND datname = $1 AND usename = $2";
  const char* params[3] = {db.c_str(), user.c_str(), state.c_str()};
  int n = 2;
  if (!state.empty()) {
    sql += " AND state = $3";
    n = 3;
  }
  Result r(PQexecParams(h.c.get(), sql.c_str(), n, nullptr, params, nullptr, nullptr, 0));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) return -1;
  return atoi(PQgetvalue(r.get(), 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Processes and files

long vm_rss_kb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return atol(line.c_str() + 6);
  }
  return -1;
}

double cpu_seconds(pid_t pid) {
  std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
  size_t p = st.rfind(')');
  if (p == std::string::npos) return -1;
  std::istringstream in(st.substr(p + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // Fields after the command: state(3) ... utime(14) stime(15).
  for (int i = 3; i <= 15 && in >> field; i++) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int open_fds(pid_t pid) {
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char ch : s) {
    if (ch == '\'')
      o += "'\\''";
    else
      o += ch;
  }
  return o + "'";
}

PgbenchRun run_pgbench(const Pooler& p, const std::string& args, int timeout_s) {
  CmdResult r = run_shell("PGPASSWORD=md5pass PGCONNECT_TIMEOUT=10 pgbench -n -h 127.0.0.1 -p " +
                              std::to_string(p.port()) + " -U md5user " + args + " testdb",
                          timeout_s);
  PgbenchRun run;
  run.exit_code = r.exit_code;
  run.output = std::move(r.output);
  std::smatch m;
  if (std::regex_search(run.output, m,
                        std::regex(R"(number of transactions actually processed: (\d+))")))
    run.processed = std::stoll(m[1]);
  if (std::regex_search(run.output, m, std::regex(R"(number of failed transactions: (\d+))")))
    run.failed = std::stoll(m[1]);
  return run;
}

CmdResult run_pgsluice_config(const std::string& ini, int timeout_s) {
  std::string dir = make_temp_dir("sluice-once");
  std::string text = ini;
  for (size_t at = text.find("{dir}"); at != std::string::npos; at = text.find("{dir}", at))
    text.replace(at, 5, dir);
  write_file(dir + "/pgsluice.ini", text, 0600);
  return run_shell("cd " + shell_quote(dir) + " && exec " + shell_quote(pgsluice_binary()) + " " +
                       shell_quote(dir + "/pgsluice.ini"),
                   timeout_s);
}

CmdResult run_shell(const std::string& cmd, int timeout_s) {
  CmdResult res;
  std::string full =
      "timeout -k 5 " + std::to_string(timeout_s) + " sh -c " + shell_quote(cmd) + " 2>&1";
  FILE* f = popen(full.c_str(), "r");
  if (!f) return res;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) res.output.append(buf, n);
  int st = pclose(f);
  if (st != -1 && WIFEXITED(st)) res.exit_code = WEXITSTATUS(st);
  return res;
}

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

std::string make_temp_dir(const char* tag) {
  std::string tmpl = std::string("/tmp/pgsluice-it-") + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  REQUIRE_MESSAGE(mkdtemp(buf.data()) != nullptr, "mkdtemp: " << std::string(strerror(errno)));
  std::string d = buf.data();
  std::lock_guard<std::mutex> lk(g_reg_mu);
  g_dirs.push_back(d);
  return d;
}

void remove_tree(const std::string& dir) {
  if (dir.rfind("/tmp/pgsluice-it-", 0) != 0) return;  // never anything else
  std::string cmd = "rm -rf " + shell_quote(dir);
  if (system(cmd.c_str()) != 0) fprintf(stderr, "[it] could not remove %s\n", dir.c_str());
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& text, int mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  REQUIRE_MESSAGE(fd >= 0, "open " << path << ": " << std::string(strerror(errno)));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t w = write(fd, text.data() + off, text.size() - off);
    REQUIRE(w > 0);
    off += static_cast<size_t>(w);
  }
  fchmod(fd, static_cast<mode_t>(mode));
  close(fd);
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// ---------------------------------------------------------------------------------------------
// Raw protocol

std::string Msg::field(char code) const {
  size_t i = 0;
  while (i < body.size() && body[i] != '\0') {
    char c = body[i++];
    size_t end = body.find('\0', i);
    if (end == std::string::npos) break;
    if (c == code) return body.substr(i, end - i);
    i = end + 1;
  }
  return "";
}

Raw::~Raw() {
  close_fd();
}

Raw& Raw::operator=(Raw&& o) noexcept {
  if (this != &o) {
    close_fd();
    fd_ = o.fd_;
    buf_ = std::move(o.buf_);
    o.fd_ = -1;
  }
  return *this;
}

void Raw::close_fd() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void Raw::shutdown_write() {
  if (fd_ >= 0) shutdown(fd_, SHUT_WR);
}

Raw Raw::tcp(int port, double) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (rc != 0) {
    int e = errno;
    close(fd);
    REQUIRE_MESSAGE(false, "connect to port " << port << ": " << std::string(strerror(e)));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return Raw(fd);
}

Raw Raw::from_libpq(PGconn* conn, double) {
  REQUIRE(PQstatus(conn) == CONNECTION_OK);
  REQUIRE_MESSAGE(PQsslInUse(conn) == 0, "raw protocol needs sslmode=disable");
  int fd = fcntl(PQsocket(conn), F_DUPFD_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  return Raw(fd);
}

bool Raw::send_bytes(std::string_view bytes) {
  size_t off = 0;
  auto t0 = Clock::now();
  while (off < bytes.size()) {
    ssize_t w = send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (seconds_since(t0) > 10) return false;
      pollfd p{fd_, POLLOUT, 0};
      poll(&p, 1, 100);
      continue;
    }
    return false;
  }
  return true;
}

bool Raw::send_msg(char type, std::string_view body) {
  return send_bytes(msg(type, body));
}

ReadStatus Raw::read_msg(Msg* out, double timeout_s) {
  *out = Msg{};
  auto t0 = Clock::now();
  for (;;) {
    if (buf_.size() >= 5) {
      uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(buf_[1])) << 24) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(buf_[2])) << 16) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(buf_[3])) << 8) |
                     static_cast<uint32_t>(static_cast<uint8_t>(buf_[4]));
      if (len < 4 || len > (64u << 20)) return ReadStatus::Error;
      if (buf_.size() >= 1 + static_cast<size_t>(len)) {
        out->type = buf_[0];
        out->body = buf_.substr(5, len - 4);
        buf_.erase(0, 1 + static_cast<size_t>(len));
        return ReadStatus::Ok;
      }
    }
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) return ReadStatus::Timeout;
    pollfd p{fd_, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left * 1000) + 1);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
    if (n == 0) return ReadStatus::Closed;
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return errno == ECONNRESET ? ReadStatus::Closed : ReadStatus::Error;
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

std::vector<Msg> Raw::read_until(char until, double timeout_s) {
  std::vector<Msg> out;
  auto t0 = Clock::now();
  for (;;) {
    Msg m;
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) break;
    if (read_msg(&m, left) != ReadStatus::Ok) break;
    out.push_back(m);
    if (m.type == until) break;
  }
  return out;
}

bool Raw::wait_closed(double timeout_s) {
  auto t0 = Clock::now();
  for (;;) {
    double left = timeout_s - seconds_since(t0);
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left * 1000) + 1);
    if (pr <= 0) continue;
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return true;  // reset counts as closed
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  s[0] = static_cast<char>((v >> 24) & 0xff);
  s[1] = static_cast<char>((v >> 16) & 0xff);
  s[2] = static_cast<char>((v >> 8) & 0xff);
  s[3] = static_cast<char>(v & 0xff);
  return s;
}

std::string be16(uint16_t v) {
  std::string s(2, '\0');
  s[0] = static_cast<char>((v >> 8) & 0xff);
  s[1] = static_cast<char>(v & 0xff);
  return s;
}

std::string cstr(std::string_view s) {
  std::string o(s);
  o.push_back('\0');
  return o;
}

std::string msg(char type, std::string_view body) {
  std::string o(1, type);
  o += be32(static_cast<uint32_t>(body.size() + 4));
  o += body;
  return o;
}

std::string startup_packet(const std::vector<std::pair<std::string, std::string>>& params,
                           uint32_t version) {
  std::string body = be32(version);
  for (const auto& [k, v] : params) body += cstr(k) + cstr(v);
  body.push_back('\0');
  return be32(static_cast<uint32_t>(body.size() + 4)) + body;
}

Msg login_with_wrong_password(int port, const std::string& user, const std::string& db) {
  Raw r = Raw::tcp(port);
  REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", db}})));
  std::string client_nonce = "rOprNGfwEbeRWgbNEkqO0123";
  for (int step = 0; step < 6; ++step) {
    Msg m;
    ReadStatus st = r.read_msg(&m, 5);
    if (st != ReadStatus::Ok) return Msg{};
    if (m.type != 'R' || m.body.size() < 4) return m;
    uint32_t code = static_cast<uint32_t>(static_cast<uint8_t>(m.body[3]));
    if (code == 0) return m;  // AuthenticationOk: nothing refused
    if (code == 3) {
      REQUIRE(r.send_msg('p', cstr("definitely-wrong")));
    } else if (code == 5) {
      REQUIRE(r.send_msg('p', cstr("md5" + std::string(32, '0'))));
    } else if (code == 10) {
      std::string first = "n,,n=,r=" + client_nonce;
      REQUIRE(r.send_msg(
          'p', cstr("SCRAM-SHA-256") + be32(static_cast<uint32_t>(first.size())) + first));
    } else if (code == 11) {
      std::string server_first = m.body.substr(4);
      std::string nonce;
      size_t p = server_first.find("r=");
      if (p != std::string::npos) {
        size_t e = server_first.find(',', p);
        nonce = server_first.substr(p + 2, e == std::string::npos ? e : e - p - 2);
      }
      std::string final_msg = "c=biws,r=" + nonce + ",p=" + std::string(43, 'A') + "=";
      REQUIRE(r.send_msg('p', final_msg));
    } else {
      return m;  // some other method; report it as is
    }
  }
  return Msg{};
}

}  // namespace it
