// Start-up: command line, config, logging, workers, signals, and shutdown.
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "admin.h"
#include "auth_cache.h"
#include "config.h"
#include "cpus.h"
#include "gather.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "password.h"
#include "pool.h"
#include "tls.h"
#include "worker.h"

using namespace pgsluice;  // NOLINT: main.cc only

namespace {

const std::string kVersion = std::string("pgsluice ") + kPgsluiceVersion;

void usage(FILE* f) {
  std::fprintf(f,
               "%s is a PostgreSQL connection pooler.\n\n"
               "Usage:\n  pgsluice [OPTION]... CONFIG_FILE\n\n"
               "Options:\n"
               "  -d, --daemon         run in the background (needs pidfile)\n"
               "  -q, --quiet          log nothing to stderr\n"
               "  -v, --verbose        more logging (repeat for more)\n"
               "  -u, --user=USERNAME  accepted for compatibility; not implemented\n"
               "  -V, --version        print the version and exit\n"
               "  -h, --help           print this help and exit\n",
               kVersion.c_str());
}

struct Main {
  Runtime rt;
  event_base* base = nullptr;
  std::string pidfile;
  std::string unix_path;
  int graceful_signals = 0;                   // SIGINT/SIGTERM seen (a second one is immediate)
  std::atomic<int> requested{0};              // ShutdownMode asked by a console, for on_request
  event* request_ev = nullptr;                // wakes the main loop from a worker thread
  event* watch_ev = nullptr;                  // graceful shutdown: checks every 100 ms
  event* stats_ev = nullptr;                  // stats_period tick
  event* post_ev = nullptr;                   // runs the functions posted to the main thread
  std::mutex post_mu;                         // guards posted
  std::vector<std::function<void()>> posted;  // Runtime::post_main, for post_ev
  std::unique_ptr<MetricsServer> metrics;     // Prometheus endpoint (off by default)
};

// systemd's notify protocol, without libsystemd: one datagram to $NOTIFY_SOCKET.
void sd_notify_msg(const char* msg) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  size_t n = std::strlen(path);
  if (n >= sizeof un.sun_path) return;
  std::memcpy(un.sun_path, path, n);
  if (un.sun_path[0] == '@') un.sun_path[0] = 0;  // abstract namespace
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  ssize_t r = sendto(fd, msg, std::strlen(msg), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&un),
                     static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n));
  (void)r;
  ::close(fd);
}

// Server connections the configured pools may open at once (PgBouncer's estimate: each
// database's pool size, times the auth_file users unless the database forces a user).
long long expected_servers(const Config& c) {
  long long users = std::max<long long>(1, static_cast<long long>(c.userlist.secrets.size()));
  long long total = 0;
  auto add = [&](const DatabaseDef& d) {
    long long size = d.pool_size >= 0 ? d.pool_size : c.default_pool_size;
    size += d.reserve_pool_size >= 0 ? d.reserve_pool_size : c.reserve_pool_size;
    long long n = d.user.empty() ? size * users : size;
    int cap = d.max_db_connections >= 0 ? d.max_db_connections : c.max_db_connections;
    if (cap > 0 && n > cap) n = cap;
    total += n;
  };
  for (const auto& [name, d] : c.databases) add(d);
  if (c.fallback_db) add(*c.fallback_db);
  return total;
}

// Raises the open-file limit as far as the hard limit allows, and warns when the clients
// (max_client_conn and the listener's spare) and the servers may not fit in it.
void raise_fd_limit(const Config& c) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    LOG_WARN("could not get RLIMIT_NOFILE: %s", strerror(errno));
    return;
  }
  if (lim.rlim_cur != lim.rlim_max) {
    rlimit want = lim;
    want.rlim_cur = lim.rlim_max;
    if (want.rlim_cur == RLIM_INFINITY) want.rlim_cur = 1 << 20;  // the kernel's nr_open default
    if (setrlimit(RLIMIT_NOFILE, &want) == 0)
      lim.rlim_cur = want.rlim_cur;
    else
      LOG_WARN("could not raise RLIMIT_NOFILE to %llu: %s",
               static_cast<unsigned long long>(want.rlim_cur), strerror(errno));
  }
  long long servers = expected_servers(c);
  long long need = servers + 10 + 4LL * c.effective_workers();
  if (c.max_client_conn > 0) need += Listener::hard_cap(c);
  LOG_INFO(
      "kernel file descriptor limit: %llu (hard: %llu); max_client_conn: %d, max expected fd use: "
      "%lld",
      static_cast<unsigned long long>(lim.rlim_cur), static_cast<unsigned long long>(lim.rlim_max),
      c.max_client_conn, need);
  if (lim.rlim_cur != RLIM_INFINITY && static_cast<unsigned long long>(need) > lim.rlim_cur)
    LOG_WARN(
        "file descriptor limit %llu is below the %lld that max_client_conn (%d) and the "
        "pools (up to %lld servers) may need: raise the hard limit (ulimit -n, LimitNOFILE=) "
        "or lower max_client_conn; at the limit new connections wait",
        static_cast<unsigned long long>(lim.rlim_cur), need, c.max_client_conn, servers);
}

void stop_workers(Main* m) {
  for (auto& w : m->rt.workers)
    w->post(InboxMsg{InboxMsg::Kind::Stop, -1, false, nullptr, nullptr, 0, {}, {}});
  event_base_loopbreak(m->base);
}

// Runtime::post_main: queue fn for the main thread and wake its loop (any thread).
void post_main(Main* m, std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> g(m->post_mu);
    m->posted.push_back(std::move(fn));
  }
  event_active(m->post_ev, EV_TIMEOUT, 0);
}

void post_cb(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  std::vector<std::function<void()>> run;
  {
    std::lock_guard<std::mutex> g(m->post_mu);
    run.swap(m->posted);
  }
  for (auto& fn : run) fn();
}

// The one door for a new config snapshot after start (RELOAD, SIGHUP, console SET), on the
// main thread only, so changes are serialized and none is lost. Refuses what pgsluice
// cannot honour (TLS contexts that cannot be built: the running snapshot stays), publishes
// the snapshot and has every worker adopt it at once.
Status commit_config(Main* m, std::shared_ptr<Config> next, bool reopen_log) {
  std::shared_ptr<const Config> cur = m->rt.config();
  // New TLS contexts (certificates re-read); any error keeps the running config and its
  // contexts, so a bad key or certificate never leaves pgsluice without TLS.
  Result<std::shared_ptr<const TlsContexts>> tls = make_tls_contexts(*next, cur->tls.get());
  if (!tls) return tls.status();
  // The hba rules and maps are read again too; a file that cannot be used keeps the
  // running ones.
  std::shared_ptr<const HbaFile> hba;
  std::shared_ptr<const IdentFile> ident;
  if (Status st = load_hba_rules(*next, &hba, &ident); !st) return st;
  next->tls = *tls;
  next->hba = std::move(hba);
  next->ident = std::move(ident);
  // Another auth_cache_file: the entries in memory stay, the new file's are added.
  if (next->auth_cache_file != cur->auth_cache_file)
    m->rt.auth_cache->open_file(next->auth_cache_file);
  m->rt.set_config(next);
  if (reopen_log) {
    LogSettings ls = log_settings(*next);
    if (!log_configure(ls)) LOG_ERROR("cannot open logfile %s", ls.logfile.c_str());
  }
  // Existing pools adopt the new [databases] entries (new targets, pool_size, pool_mode);
  // each worker then closes its idle servers of an old target and serves its waiters.
  int moved = m->rt.registry ? m->rt.registry->retarget(*next) : 0;
  for (auto& w : m->rt.workers)
    w->post_call([moved](Worker& self) {
      self.refresh_config();
      if (moved > 0) self.sweep();
    });
  return Status();
}

// Re-reads the config file and auth_file, reopens the log; workers adopt it at once. The
// file's values replace everything, console SETs included (PgBouncer's RELOAD).
Status reload(Main* m) {
  sd_notify_msg("RELOADING=1");
  auto cur = m->rt.config();
  auto next = load_config(cur->config_file);
  if (!next) {
    m->rt.reload_failures.fetch_add(1, std::memory_order_relaxed);
    sd_notify_msg("READY=1");
    return next.status();
  }
  for (const auto& w : next.value()->warnings) LOG_WARN("%s", w.c_str());
  next.value()->config_file = cur->config_file;
  for (const std::string& k : settings_needing_restart(*cur, *next.value()))
    LOG_WARN("setting %s changed in the config file: it needs a restart, ignored", k.c_str());
  Status st = commit_config(m, next.value(), true);
  (st ? m->rt.reloads : m->rt.reload_failures).fetch_add(1, std::memory_order_relaxed);
  sd_notify_msg("READY=1");
  return st;
}

// Console SET of one reloadable setting: read-modify-write of the current snapshot.
Status set_one(Main* m, const std::string& key, const std::string& value) {
  auto next = std::make_shared<Config>(*m->rt.config());
  Status s = set_setting(*next, key, value);
  if (!s) return s;
  bool logging =
      key == "logfile" || key == "verbose" || key == "log_format" || key.rfind("syslog", 0) == 0;
  s = commit_config(m, next, logging);
  if (s) LOG_INFO("SET %s = %s", key.c_str(), value.c_str());
  return s;
}

void arm_watch(Main* m) {
  timeval tv{0, 100000};
  evtimer_add(m->watch_ev, &tv);
}

void watch_done(Main* m) {
  LOG_INFO("graceful shutdown: nothing left to wait for");
  stop_workers(m);
}

void watch_cb(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  auto mode = static_cast<ShutdownMode>(m->rt.shutdown_mode.load());
  if (mode == ShutdownMode::WaitForServers) {
    if (m->rt.registry->server_total() == 0) return watch_done(m);
  } else if (mode == ShutdownMode::WaitForClients) {
    // Non-admin clients still connected, gathered without blocking the main loop.
    gather_on_main(m->rt, kSnapPools, 2.0, [m](Snapshot& s, bool complete) {
      int n = s.login_clients;
      for (const PoolRow& r : s.pools) n += r.cl_active + r.cl_waiting;
      if (complete && n == 0) return watch_done(m);
      arm_watch(m);
    });
    return;
  }
  arm_watch(m);
}

void start_shutdown(Main* m, ShutdownMode mode) {
  int cur = m->rt.shutdown_mode.load();
  if (mode == ShutdownMode::Immediate || cur != 0) {
    sd_notify_msg("STOPPING=1");
    m->rt.shutdown_mode = static_cast<int>(ShutdownMode::Immediate);
    stop_workers(m);
    return;
  }
  sd_notify_msg("STOPPING=1");
  m->rt.shutdown_mode = static_cast<int>(mode);
  if (mode == ShutdownMode::WaitForServers) m->rt.paused_all = true;
  for (auto& w : m->rt.workers)
    w->post_call([](Worker& self) {
      self.stop_listening_tcp();
      self.sweep();
    });
  watch_cb(-1, 0, m);
}

void request_cb(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  int mode = m->requested.exchange(0);
  if (mode != 0) start_shutdown(m, static_cast<ShutdownMode>(mode));
}

void schedule_stats(Main* m) {
  timeval tv{m->rt.config()->stats_period, 0};
  evtimer_add(m->stats_ev, &tv);
}

// Every stats_period: totals per database for the averages, and the log_stats line. The
// gather answers later on the main thread; a period whose workers did not all answer within
// 2 s is skipped rather than recorded with missing parts.
void stats_cb(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  gather_on_main(m->rt, kSnapPools, 2.0, [m](Snapshot& s, bool complete) {
    if (complete) {
      m->rt.stats->record(stats_by_database(s), now_seconds());
      if (m->rt.config()->log_stats)
        LOG_INFO("%s", stats_log_line(m->rt.stats->total_averages()).c_str());
    } else {
      LOG_WARN("stats: not every worker answered within 2 s; this period is skipped");
    }
    schedule_stats(m);
  });
}

void for_all_workers(Main* m, std::function<void(Worker&)> fn) {
  for (auto& w : m->rt.workers) w->post_call(fn);
}

void on_signal(evutil_socket_t sig, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  switch (sig) {
    case SIGHUP: {
      LOG_INFO("got SIGHUP, re-reading config");
      Status st = reload(m);
      if (!st) LOG_ERROR("reload failed: %s", st.message().c_str());
      break;
    }
    case SIGINT:
    case SIGTERM:
      if (++m->graceful_signals > 1) {
        LOG_INFO("got signal %d again, exiting at once", static_cast<int>(sig));
        start_shutdown(m, ShutdownMode::Immediate);
      } else if (sig == SIGINT) {
        LOG_INFO("got SIGINT, shutting down, waiting for servers");
        start_shutdown(m, ShutdownMode::WaitForServers);
      } else {
        LOG_INFO("got SIGTERM, shutting down, waiting for clients");
        start_shutdown(m, ShutdownMode::WaitForClients);
      }
      break;
    case SIGQUIT:
      LOG_INFO("got SIGQUIT, fast exit");
      start_shutdown(m, ShutdownMode::Immediate);
      break;
    case SIGUSR1:
      LOG_INFO("got SIGUSR1, pausing all activity");
      m->rt.paused_all = true;
      for_all_workers(m, [](Worker& w) { w.sweep(); });
      break;
    case SIGUSR2:
      LOG_INFO("got SIGUSR2, continuing");
      if (m->rt.shutdown_mode.load() == 0) {
        m->rt.paused_all = false;
        m->rt.suspended = false;
        for_all_workers(m, [](Worker& w) {
          w.set_suspended(false);
          w.sweep();
        });
      }
      break;
    default:
      break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool daemon = false, quiet = false;
  int verbose = 0;
  std::string config_path;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "-d" || a == "--daemon") {
      daemon = true;
    } else if (a == "-q" || a == "--quiet") {
      quiet = true;
    } else if (a == "-V" || a == "--version") {
      std::printf("%s\n", kVersion.c_str());
      return 0;
    } else if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "-u" || a == "--user") {
      i++;
    } else if (a.rfind("--user=", 0) == 0) {
    } else if (a.size() > 1 && a[0] == '-' && a.find_first_not_of('v', 1) == std::string::npos) {
      verbose += static_cast<int>(a.size() - 1);
    } else if (a == "--verbose") {
      verbose++;
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "pgsluice: unknown option %s\n", a.c_str());
      usage(stderr);
      return 1;
    } else {
      config_path = a;
    }
  }
  if (config_path.empty()) {
    usage(stderr);
    return 1;
  }

  auto loaded = load_config(config_path);
  if (!loaded) {
    std::fprintf(stderr, "pgsluice: %s\n", loaded.status().message().c_str());
    return 1;
  }
  std::shared_ptr<Config> cfg = loaded.value();
  cfg->config_file = config_path;
  Result<std::shared_ptr<const TlsContexts>> tls = make_tls_contexts(*cfg, nullptr);
  if (!tls) {
    std::fprintf(stderr, "pgsluice: %s\n", tls.status().message().c_str());
    return 1;
  }
  cfg->tls = *tls;
  if (Status st = load_hba_rules(*cfg, &cfg->hba, &cfg->ident); !st) {
    std::fprintf(stderr, "pgsluice: %s\n", st.message().c_str());
    return 1;
  }
  if (verbose > cfg->verbose) cfg->verbose = verbose;

  LogSettings ls = log_settings(*cfg);
  ls.quiet = quiet || daemon;
  if (!log_configure(ls)) {
    std::fprintf(stderr, "pgsluice: cannot open logfile %s: %s\n", cfg->logfile.c_str(),
                 strerror(errno));
    return 1;
  }
  for (const auto& w : cfg->warnings) LOG_WARN("%s", w.c_str());
  if (daemon && cfg->pidfile.empty()) {
    std::fprintf(stderr, "pgsluice: -d needs a pidfile in the config\n");
    return 1;
  }

  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();

  raise_fd_limit(*cfg);

  Main m;
  m.rt.set_config(cfg);
  // SHOW CONFIG keeps the setting as written (0); the log says what it became and why.
  const CpuView& cpus = machine_cpus();
  WorkersChoice wc = choose_workers(cfg->workers, cpus);
  char quota[32] = "none";
  if (cpus.quota > 0) std::snprintf(quota, sizeof quota, "%g CPUs", cpus.quota);
  LOG_INFO("%d worker thread%s (%s; CPUs online: %d, in the affinity set: %d, cgroup quota: %s)",
           wc.count, wc.count == 1 ? "" : "s", wc.reason.c_str(), cpus.online, cpus.allowed, quota);
  size_t nworkers = static_cast<size_t>(wc.count);
  m.rt.registry = std::make_unique<Registry>(nworkers);
  m.rt.auth_cache = std::make_unique<AuthCache>();
  m.rt.tracked = std::make_unique<TrackedNames>(cfg->track_extra_parameters);
  uint8_t nonce[16];
  random_bytes(nonce, sizeof nonce);
  m.rt.scram_nonce.assign(reinterpret_cast<char*>(nonce), sizeof nonce);
  for (size_t i = 0; i < nworkers; i++) m.rt.workers.push_back(std::make_unique<Worker>(&m.rt, i));
  for (auto& w : m.rt.workers) {
    Status st = w->listen();
    if (!st) {
      LOG_ERROR("%s", st.message().c_str());
      return 1;
    }
  }

  // Drop root once the listening sockets are open (`user =`, as PgBouncer).
  if (!cfg->user.empty() && geteuid() == 0) {
    struct passwd* pw = getpwnam(cfg->user.c_str());
    if (pw == nullptr) {
      LOG_ERROR("user \"%s\" does not exist", cfg->user.c_str());
      return 1;
    }
    if (!m.unix_path.empty() || !cfg->unix_socket_dir.empty()) {
      std::string sock = cfg->unix_socket_dir + "/.s.PGSQL." + std::to_string(cfg->listen_port);
      if (!cfg->unix_socket_dir.empty() && chown(sock.c_str(), pw->pw_uid, pw->pw_gid) != 0)
        LOG_WARN("could not chown %s: %s", sock.c_str(), strerror(errno));
    }
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
        setuid(pw->pw_uid) != 0) {
      LOG_ERROR("could not become user \"%s\": %s", cfg->user.c_str(), strerror(errno));
      return 1;
    }
  }

  if (daemon) {
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid > 0) _exit(0);
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
      if (devnull > 2) close(devnull);
    }
  }
  if (!cfg->pidfile.empty()) {
    m.pidfile = cfg->pidfile;
    FILE* f = std::fopen(m.pidfile.c_str(), "w");
    if (f) {
      std::fprintf(f, "%d\n", static_cast<int>(getpid()));
      std::fclose(f);
    }
  }
  if (!crypto_start()) {
    LOG_ERROR("OpenSSL could not give random bytes or an md5 digest: not starting");
    return 1;
  }
  // After the fork and the change of user (the file is the running user's; an SQLite
  // connection must not cross a fork), before any worker runs.
  m.rt.auth_cache->open_file(cfg->auth_cache_file);
  if (!cfg->unix_socket_dir.empty())
    m.unix_path = cfg->unix_socket_dir + "/.s.PGSQL." + std::to_string(cfg->listen_port);

  m.base = event_base_new();
  m.rt.start_time = now_seconds();
  m.rt.stats = std::make_unique<StatsHistory>();
  m.rt.stats->record({}, now_seconds());
  m.rt.main_base = m.base;
  m.post_ev = event_new(m.base, -1, 0, post_cb, &m);
  m.rt.post_main = [&m](std::function<void()> fn) { post_main(&m, std::move(fn)); };
  m.rt.reload = [&m]() { return reload(&m); };
  m.rt.set_one = [&m](const std::string& key, const std::string& value) {
    return set_one(&m, key, value);
  };
  m.request_ev = event_new(m.base, -1, 0, request_cb, &m);
  m.rt.request_shutdown = [&m](int mode) {
    m.requested = mode;
    event_active(m.request_ev, EV_TIMEOUT, 0);
  };
  m.watch_ev = evtimer_new(m.base, watch_cb, &m);
  m.stats_ev = evtimer_new(m.base, stats_cb, &m);
  schedule_stats(&m);
  if (cfg->metrics_port > 0) {
    m.metrics = std::make_unique<MetricsServer>(&m.rt);
    Status st = m.metrics->start(m.base, cfg->metrics_listen_addr, cfg->metrics_port);
    if (!st) {
      LOG_ERROR("%s", st.message().c_str());
      return 1;
    }
  }
  event* sigs[6];
  int signums[6] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2};
  for (int i = 0; i < 6; i++) {
    sigs[i] = evsignal_new(m.base, signums[i], on_signal, &m);
    event_add(sigs[i], nullptr);
  }
  for (auto& w : m.rt.workers) w->start();
  sd_notify_msg("READY=1");
  LOG_INFO("%s listening on %s:%d with %zu workers", kVersion.c_str(),
           cfg->listen_addr.empty() ? "(unix only)" : cfg->listen_addr.c_str(), cfg->listen_port,
           nworkers);
  event_base_dispatch(m.base);

  for (auto& w : m.rt.workers) w->join();
  m.metrics.reset();
  m.rt.workers.clear();
  for (auto* e : sigs) event_free(e);
  event_free(m.request_ev);
  event_free(m.post_ev);
  event_free(m.watch_ev);
  event_free(m.stats_ev);
  event_base_free(m.base);
  if (!m.unix_path.empty()) ::unlink(m.unix_path.c_str());
  if (!m.pidfile.empty()) ::unlink(m.pidfile.c_str());
  LOG_INFO("shutdown complete");
  return 0;
}
