// Start-up: command line, config, logging, workers, signals, and shutdown.
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "config.h"
#include "log.h"
#include "password.h"
#include "worker.h"

using namespace pgsluice;  // NOLINT: main.cc only

namespace {

constexpr const char* kVersion = "pgsluice 0.1.0";

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
               kVersion);
}

struct Main {
  Runtime rt;
  event_base* base = nullptr;
  std::string pidfile;
  std::string unix_path;
  int stops = 0;
};

void stop_workers(Main* m) {
  for (auto& w : m->rt.workers) w->post(InboxMsg{InboxMsg::Kind::Stop, -1, false, nullptr, nullptr, 0, {}, {}});
  event_base_loopbreak(m->base);
}

void on_signal(evutil_socket_t sig, short, void* arg) {
  auto* m = static_cast<Main*>(arg);
  switch (sig) {
    case SIGHUP: {
      LOG_INFO("got SIGHUP, reloading config");
      auto cur = m->rt.config();
      auto next = load_config(cur->config_file);
      if (!next) {
        LOG_ERROR("reload failed: %s", next.status().message().c_str());
        return;
      }
      for (const auto& w : next.value()->warnings) LOG_WARN("%s", w.c_str());
      next.value()->config_file = cur->config_file;
      m->rt.set_config(next.value());
      LogSettings ls;
      ls.logfile = next.value()->logfile;
      ls.verbose = next.value()->verbose;
      log_configure(ls);
      break;
    }
    case SIGINT:
    case SIGTERM:
    case SIGQUIT:
      LOG_INFO("got signal %d, shutting down", static_cast<int>(sig));
      stop_workers(m);
      break;
    case SIGUSR1:
    case SIGUSR2:
      LOG_WARN("got signal %d: pause/resume is not implemented yet, ignored", static_cast<int>(sig));
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
      std::printf("%s\n", kVersion);
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
  if (verbose > cfg->verbose) cfg->verbose = verbose;

  LogSettings ls;
  ls.logfile = cfg->logfile;
  ls.verbose = cfg->verbose;
  ls.quiet = quiet || daemon;
  if (!log_configure(ls)) {
    std::fprintf(stderr, "pgsluice: cannot open logfile %s: %s\n", cfg->logfile.c_str(), strerror(errno));
    return 1;
  }
  for (const auto& w : cfg->warnings) LOG_WARN("%s", w.c_str());
  if (daemon && cfg->pidfile.empty()) {
    std::fprintf(stderr, "pgsluice: -d needs a pidfile in the config\n");
    return 1;
  }

  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();

  Main m;
  m.rt.set_config(cfg);
  size_t nworkers = static_cast<size_t>(cfg->effective_workers());
  m.rt.registry = std::make_unique<Registry>(nworkers);
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
  if (!cfg->unix_socket_dir.empty())
    m.unix_path = cfg->unix_socket_dir + "/.s.PGSQL." + std::to_string(cfg->listen_port);

  m.base = event_base_new();
  event* sigs[6];
  int signums[6] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2};
  for (int i = 0; i < 6; i++) {
    sigs[i] = evsignal_new(m.base, signums[i], on_signal, &m);
    event_add(sigs[i], nullptr);
  }
  for (auto& w : m.rt.workers) w->start();
  LOG_INFO("%s listening on %s:%d with %zu workers", kVersion,
           cfg->listen_addr.empty() ? "(unix only)" : cfg->listen_addr.c_str(), cfg->listen_port,
           nworkers);
  event_base_dispatch(m.base);

  for (auto& w : m.rt.workers) w->join();
  m.rt.workers.clear();
  for (auto* e : sigs) event_free(e);
  event_base_free(m.base);
  if (!m.unix_path.empty()) ::unlink(m.unix_path.c_str());
  if (!m.pidfile.empty()) ::unlink(m.pidfile.c_str());
  LOG_INFO("shutdown complete");
  return 0;
}
