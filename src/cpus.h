// The CPUs this process may run on, and the number of workers `workers = 0` makes of them.
#pragma once

#include <string>
#include <string_view>

namespace pgsluice {

// What the machine lets this process use.
struct CpuView {
  int online = 1;    // CPUs online on the machine (sysconf _SC_NPROCESSORS_ONLN)
  int allowed = 1;   // CPUs in this process's affinity set (sched_getaffinity; a cpuset narrows it)
  double quota = 0;  // the cgroup's CPU bandwidth limit in CPUs (cpu.max, or v1 cfs quota/period);
                     // 0: none
};

// How many workers run, and why (logged at start).
struct WorkersChoice {
  int count = 1;
  std::string reason;
};

// The number of workers for the `workers` setting on a machine seen as `v` (pure).
// A positive setting is taken as it is. 0: the CPUs this process may use are its affinity set,
// bounded by the cgroup quota (rounded up). When that is fewer than the machine's online CPUs,
// the operator gave the pooler CPUs of its own (taskset, a cpuset, a container's CPU limit): one
// worker per such CPU. Otherwise the pooler shares the machine, typically with PostgreSQL and
// the application, which spend several times the pooler's CPU per transaction: one worker per
// two CPUs, at least one. At most 1024 (the setting's own bound).
WorkersChoice choose_workers(int setting, const CpuView& v);

// A cgroup v2 cpu.max ("200000 100000", "max 100000") in CPUs; 0 when unlimited or unreadable.
double parse_cpu_max(std::string_view text);
// A cgroup v1 pair cpu.cfs_quota_us ("-1" unlimited) / cpu.cfs_period_us, in CPUs; 0 likewise.
double parse_cfs_quota(std::string_view quota_us, std::string_view period_us);

// This process's view, read once (sysconf, sched_getaffinity, /proc/self/cgroup and the quota
// files of its cgroup and every parent, the smallest of them) and kept.
const CpuView& machine_cpus();

}  // namespace pgsluice
