// The registry's freeing of idle pools (pool.h): holds, retirement under the registry lock,
// and reclamation once every worker passed the epoch; raced by several threads (run it in
// the `make asan` build for use-after-free).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "log.h"
#include "pool.h"

namespace pgsluice {
double now_seconds();  // worker.cc
}

using namespace pgsluice;

namespace {

Config idle_config(double pool_idle_timeout) {
  Config cfg;
  for (const char* name : {"db0", "db1", "db2"}) {
    DatabaseDef d;
    d.name = name;
    d.host = "127.0.0.1";
    d.port = 5432;
    d.dbname = "testdb";
    cfg.databases[name] = d;
  }
  cfg.pool_idle_timeout = pool_idle_timeout;
  return cfg;
}

// Retirement logs a line per pool: kept off stderr here.
struct QuietLog {
  QuietLog() {
    LogSettings s;
    s.quiet = true;
    log_configure(s);
  }
  ~QuietLog() {
    LogSettings s;
    s.quiet = false;
    log_configure(s);
  }
};

bool contains(const std::vector<Pool*>& v, const Pool* p) {
  return std::find(v.begin(), v.end(), p) != v.end();
}

}  // namespace

TEST_CASE("pool: a pool is retired only without holds, then freed once every worker passed") {
  QuietLog quiet;
  Registry reg(2);
  Config cfg = idle_config(1);
  std::string err, sqlstate;
  Pool* p = reg.get(cfg, "db0", "u", &err, &sqlstate);
  REQUIRE(p != nullptr);
  double later = now_seconds() + 10;
  CHECK(reg.retire_idle(cfg, later) == 0);  // held by its "client"
  CHECK(p->try_reserve());                  // a server slot holds it too
  p->unhold();
  CHECK(reg.retire_idle(cfg, later) == 0);
  CHECK(reg.retire_idle(cfg, now_seconds()) == 0);  // the server just closed: not idle yet
  p->unreserve();
  CHECK(reg.retire_idle(cfg, now_seconds()) == 0);  // idle for less than pool_idle_timeout
  Config off = idle_config(0);
  CHECK(reg.retire_idle(off, later) == 0);  // 0: never
  CHECK(reg.retire_idle(cfg, later) == 1);
  CHECK(p->retired());
  CHECK(!p->hold());
  CHECK(!p->try_reserve());
  CHECK(reg.pools().empty());
  // The next login gets a fresh pool (p is still allocated: no worker passed yet).
  Pool* q = reg.get(cfg, "db0", "u", &err, &sqlstate);
  REQUIRE(q != nullptr);
  CHECK(q != p);
  CHECK(!q->retired());
  CHECK(reg.has_retired());
  uint64_t epoch = 0;
  CHECK(contains(reg.retired(&epoch), p));
  reg.reclaim();
  CHECK(contains(reg.retired(&epoch), p));
  reg.passed(0, epoch);
  reg.reclaim();
  CHECK(contains(reg.retired(&epoch), p));  // worker 1 has not passed
  reg.passed(1, epoch);
  reg.reclaim();
  CHECK(reg.retired(&epoch).empty());
  CHECK(!reg.has_retired());
  q->unhold();
}

TEST_CASE("pool: a forced user's pool kept at min_pool_size is never freed by pool_idle_timeout") {
  QuietLog quiet;
  Registry reg(1);
  Config cfg = idle_config(1);
  cfg.databases["db0"].user = "forced";
  cfg.databases["db0"].min_pool_size = 2;
  std::string err, sqlstate;
  Pool* p = reg.get(cfg, "db0", "anyone", &err, &sqlstate);
  REQUIRE(p != nullptr);
  p->unhold();
  CHECK(reg.retire_idle(cfg, now_seconds() + 10) == 0);
  cfg.databases["db0"].min_pool_size = 0;
  CHECK(reg.retire_idle(cfg, now_seconds() + 10) == 1);
}

TEST_CASE("pool: logins racing retirement never get a retired pool, nothing is used after free") {
  QuietLog quiet;
  constexpr size_t kWorkers = 4;
  Registry reg(kWorkers);
  Config cfg = idle_config(1e-9);  // every pool without holds is retired at once
  std::atomic<bool> stop{false};
  std::atomic<long> logins{0}, bad{0}, retired{0};
  std::vector<std::thread> threads;
  for (size_t w = 0; w < kWorkers; w++)
    threads.emplace_back([&, w] {
      std::string err, sqlstate;
      const char* dbs[] = {"db0", "db1", "db2"};
      for (unsigned i = 0; !stop.load(); i++) {
        // The janitor tick: a quiescent point (no Pool* of an earlier turn is kept).
        uint64_t epoch = 0;
        (void)reg.retired(&epoch);
        reg.passed(w, epoch);
        if (w == 0) {
          retired += reg.retire_idle(cfg, now_seconds() + 1);
          reg.reclaim();
        }
        // A "login", then a server slot, then the client leaves.
        Pool* p = reg.get(cfg, dbs[(i + w) % 3], (i & 1) ? "u1" : "u2", &err, &sqlstate);
        if (p == nullptr || p->retired()) {
          bad++;
          continue;
        }
        if (p->try_reserve()) {
          if (p->db_name.empty() || p->server_count() <= 0) bad++;
          p->unreserve();
        } else {
          bad++;  // a held pool cannot be retired: its slots stay available
        }
        p->unhold();
        logins++;
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  stop = true;
  for (auto& t : threads) t.join();
  MESSAGE("logins: " << logins.load() << ", pools retired: " << retired.load());
  CHECK(bad.load() == 0);
  CHECK(logins.load() > 1000);
  CHECK(retired.load() > 10);
  // Everything ends retired and, once every worker passed, freed.
  retired += reg.retire_idle(cfg, now_seconds() + 1);
  uint64_t epoch = 0;
  (void)reg.retired(&epoch);
  for (size_t w = 0; w < kWorkers; w++) reg.passed(w, epoch);
  reg.reclaim();
  CHECK(reg.pools().empty());
  CHECK(reg.retired(&epoch).empty());
}
