// Unit tests for the workers default (cpus.h): machines described by their online CPUs,
// affinity set and cgroup quota.
#include <doctest/doctest.h>

#include "config.h"
#include "cpus.h"

namespace pgsluice {

namespace {

int workers_on(int online, int allowed, double quota = 0) {
  return choose_workers(0, CpuView{online, allowed, quota}).count;
}

}  // namespace

TEST_CASE("cpus: a shared machine gets one worker per two CPUs, at least one") {
  CHECK(workers_on(1, 1) == 1);
  CHECK(workers_on(2, 2) == 1);  // the development machine: PostgreSQL and pgbench beside it
  CHECK(workers_on(3, 3) == 1);
  CHECK(workers_on(4, 4) == 2);
  CHECK(workers_on(16, 16) == 8);
  CHECK(workers_on(64, 64) == 32);
  CHECK(workers_on(4096, 4096) == 1024);  // the setting's bound
  WorkersChoice c = choose_workers(0, CpuView{16, 16, 0});
  CHECK(c.reason.find("shared") != std::string::npos);
  CHECK(c.reason.find("16") != std::string::npos);
}

TEST_CASE("cpus: CPUs of its own (taskset, cpuset) get one worker each") {
  CHECK(workers_on(32, 16) == 16);
  CHECK(workers_on(16, 1) == 1);
  CHECK(workers_on(16, 15) == 15);
  CHECK(workers_on(2, 1) == 1);
  WorkersChoice c = choose_workers(0, CpuView{32, 16, 0});
  CHECK(c.reason.find("16 of the 32") != std::string::npos);
  // A view that cannot be (more allowed than online, nothing online) still gives a worker.
  CHECK(workers_on(8, 12) == 4);
  CHECK(workers_on(0, 0) == 1);
}

TEST_CASE("cpus: a cgroup quota below the CPUs bounds the workers, rounded up") {
  CHECK(workers_on(16, 16, 4) == 4);
  CHECK(workers_on(16, 16, 1.5) == 2);
  CHECK(workers_on(16, 16, 0.2) == 1);
  CHECK(workers_on(16, 8, 4) == 4);    // the quota narrower than the affinity set
  CHECK(workers_on(16, 4, 8) == 4);    // the affinity set narrower than the quota
  CHECK(workers_on(16, 16, 16) == 8);  // a quota of the whole machine: shared, as without
  CHECK(workers_on(16, 16, 40) == 8);
  WorkersChoice c = choose_workers(0, CpuView{16, 16, 1.5});
  CHECK(c.reason.find("quota of 1.5") != std::string::npos);
}

TEST_CASE("cpus: a positive setting is taken as written") {
  CHECK(choose_workers(3, CpuView{2, 2, 0}).count == 3);
  CHECK(choose_workers(1, CpuView{64, 64, 0}).count == 1);
  CHECK(choose_workers(5000, CpuView{2, 2, 0}).count == 1024);
  Config c;
  c.workers = 3;
  CHECK(c.effective_workers() == 3);
  c.workers = 0;
  CHECK(c.effective_workers() == choose_workers(0, machine_cpus()).count);
  CHECK(machine_cpus().online >= 1);
  CHECK(machine_cpus().allowed >= 1);
  CHECK(machine_cpus().allowed <= machine_cpus().online);
}

TEST_CASE("cpus: cgroup quota files") {
  CHECK(parse_cpu_max("max 100000\n") == 0);
  CHECK(parse_cpu_max("200000 100000\n") == 2);
  CHECK(parse_cpu_max("150000 100000") == 1.5);
  CHECK(parse_cpu_max("") == 0);
  CHECK(parse_cpu_max("x 100000") == 0);
  CHECK(parse_cpu_max("100000 0") == 0);
  CHECK(parse_cfs_quota("-1\n", "100000\n") == 0);
  CHECK(parse_cfs_quota("400000\n", "100000\n") == 4);
  CHECK(parse_cfs_quota("50000", "100000") == 0.5);
  CHECK(parse_cfs_quota("", "100000") == 0);
}

}  // namespace pgsluice
