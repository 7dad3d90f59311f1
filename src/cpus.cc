// The CPUs this process may run on, and the number of workers `workers = 0` makes of them.
#include "cpus.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

namespace pgsluice {

namespace {

constexpr int kMaxWorkers = 1024;  // the setting's bound (config.cc)

std::string fmt_cpus(double q) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", q);
  return b;
}

bool to_long(std::string_view s, long long* out) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// A small kernel file (/proc, /sys), or "" when it cannot be read.
std::string read_small(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char b[512];
  ssize_t n = ::read(fd, b, sizeof b);
  ::close(fd);
  return n > 0 ? std::string(b, static_cast<size_t>(n)) : std::string();
}

// The smallest quota (in CPUs) over `dir` + the cgroup path and each of its parents: a parent's
// limit bounds its children. `read` gives one directory's quota (0: none there).
template <typename Read>
double smallest_quota(const std::string& dir, std::string path, Read read) {
  double best = 0;
  for (;;) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    double q = read(dir + (path == "/" ? "" : path));
    if (q > 0 && (best == 0 || q < best)) best = q;
    if (path.empty() || path == "/") break;
    size_t slash = path.rfind('/');
    path = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
  }
  return best;
}

// The cgroup CPU limit of this process: cgroup v2's cpu.max under /sys/fs/cgroup, else v1's
// cfs quota under /sys/fs/cgroup/cpu. In a container with its own cgroup namespace the path is
// "/", and the files at the mount's root are the container's.
double read_quota() {
  std::string cg = read_small("/proc/self/cgroup");
  std::string v2_path, v1_path;
  size_t pos = 0;
  while (pos < cg.size()) {
    size_t end = cg.find('\n', pos);
    if (end == std::string::npos) end = cg.size();
    std::string_view line(cg.data() + pos, end - pos);
    pos = end + 1;
    size_t a = line.find(':');
    size_t b = a == std::string_view::npos ? a : line.find(':', a + 1);
    if (b == std::string_view::npos) continue;
    std::string_view ctrls = line.substr(a + 1, b - a - 1);
    std::string path(line.substr(b + 1));
    if (line.substr(0, a) == "0" && ctrls.empty()) {
      v2_path = path;
      continue;
    }
    for (size_t i = 0; i <= ctrls.size();) {  // "cpu,cpuacct": is "cpu" one of them?
      size_t comma = ctrls.find(',', i);
      if (comma == std::string_view::npos) comma = ctrls.size();
      if (ctrls.substr(i, comma - i) == "cpu") v1_path = path;
      i = comma + 1;
    }
  }
  double q = 0;
  if (!v2_path.empty())
    q = smallest_quota("/sys/fs/cgroup", v2_path, [](const std::string& d) {
      return parse_cpu_max(read_small(d + "/cpu.max"));
    });
  if (q == 0 && !v1_path.empty())
    q = smallest_quota("/sys/fs/cgroup/cpu", v1_path, [](const std::string& d) {
      return parse_cfs_quota(read_small(d + "/cpu.cfs_quota_us"),
                             read_small(d + "/cpu.cfs_period_us"));
    });
  return q;
}

}  // namespace

double parse_cpu_max(std::string_view text) {
  size_t sp = text.find(' ');
  if (sp == std::string_view::npos) return 0;
  long long quota = 0, period = 0;
  if (!to_long(text.substr(0, sp), &quota) || !to_long(text.substr(sp + 1), &period)) return 0;
  if (quota <= 0 || period <= 0) return 0;  // "max": no limit
  return static_cast<double>(quota) / static_cast<double>(period);
}

double parse_cfs_quota(std::string_view quota_us, std::string_view period_us) {
  long long quota = 0, period = 0;
  if (!to_long(quota_us, &quota) || !to_long(period_us, &period)) return 0;
  if (quota <= 0 || period <= 0) return 0;  // -1: no limit
  return static_cast<double>(quota) / static_cast<double>(period);
}

WorkersChoice choose_workers(int setting, const CpuView& v) {
  WorkersChoice c;
  if (setting > 0) {
    c.count = setting > kMaxWorkers ? kMaxWorkers : setting;
    c.reason = "the workers setting";
    return c;
  }
  const int online = v.online > 0 ? v.online : 1;
  int usable = v.allowed > 0 && v.allowed < online ? v.allowed : online;
  bool by_quota = false;
  if (v.quota > 0) {
    double q = std::ceil(v.quota);
    if (q < usable) {
      usable = static_cast<int>(q);
      by_quota = true;
    }
  }
  if (usable < 1) usable = 1;
  if (usable < online) {
    c.count = usable;
    c.reason = by_quota ? "workers = 0: a cgroup CPU quota of " + fmt_cpus(v.quota) +
                              " CPUs on a machine of " + std::to_string(online) +
                              ": one worker per CPU of the quota"
                        : "workers = 0: may run on " + std::to_string(usable) + " of the " +
                              std::to_string(online) +
                              " online CPUs (taskset, cpuset): one worker per CPU of that set";
  } else {
    c.count = usable / 2 > 0 ? usable / 2 : 1;
    c.reason = "workers = 0: may run on all " + std::to_string(online) +
               " CPUs, taken as shared with PostgreSQL and the clients: one worker per two CPUs";
  }
  if (c.count > kMaxWorkers) c.count = kMaxWorkers;
  return c;
}

const CpuView& machine_cpus() {
  static const CpuView view = [] {
    CpuView v;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    v.online = n > 0 ? static_cast<int>(n) : 1;
    // Large enough for any machine: a fixed cpu_set_t holds 1024 CPUs only.
    const int max_cpus = 1 << 16;
    cpu_set_t* set = CPU_ALLOC(max_cpus);
    size_t size = CPU_ALLOC_SIZE(max_cpus);
    v.allowed = v.online;
    if (set != nullptr && sched_getaffinity(0, size, set) == 0) v.allowed = CPU_COUNT_S(size, set);
    if (set != nullptr) CPU_FREE(set);
    v.quota = read_quota();
    return v;
  }();
  return view;
}

}  // namespace pgsluice
