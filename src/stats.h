// Per-pool statistics that a worker keeps for its own clients and servers: PgBouncer's
// counters plus fixed-bucket latency histograms. Aggregated across workers on demand.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace pgsluice {

// Latency histogram with fixed upper bounds in microseconds (the last bucket is +Inf).
// Bounds: 100us, 250us, 500us, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms,
// 1s, 2.5s, 5s, 10s, +Inf.
struct Histogram {
  static constexpr std::array<uint64_t, 16> kBoundsUs = {
      100,   250,    500,    1000,   2500,    5000,    10000,   25000,
      50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
  std::array<uint64_t, kBoundsUs.size() + 1> buckets{};  // not cumulative
  uint64_t count = 0;
  uint64_t sum_us = 0;

  void add(uint64_t us) {
    size_t i = 0;
    while (i < kBoundsUs.size() && us > kBoundsUs[i]) i++;
    buckets[i]++;
    count++;
    sum_us += us;
  }
  void merge(const Histogram& o) {
    for (size_t i = 0; i < buckets.size(); i++) buckets[i] += o.buckets[i];
    count += o.count;
    sum_us += o.sum_us;
  }
};

// Totals since the pool was created, in PgBouncer's units (times in microseconds).
struct PoolStats {
  uint64_t server_assignment_count = 0;  // a server was linked to a client
  uint64_t xact_count = 0;               // transactions completed (ReadyForQuery 'I')
  uint64_t query_count = 0;              // requests answered by a ReadyForQuery
  uint64_t bytes_received = 0;           // from clients
  uint64_t bytes_sent = 0;               // to clients
  uint64_t xact_time_us = 0;
  uint64_t query_time_us = 0;
  uint64_t wait_time_us = 0;        // clients waiting for a server
  uint64_t client_parse_count = 0;  // Parse messages from clients
  uint64_t server_parse_count = 0;  // Parse messages sent to servers
  uint64_t bind_count = 0;          // Bind messages from clients
  uint64_t client_login_count = 0;
  Histogram query_hist;
  Histogram xact_hist;
  Histogram wait_hist;

  void merge(const PoolStats& o) {
    server_assignment_count += o.server_assignment_count;
    xact_count += o.xact_count;
    query_count += o.query_count;
    bytes_received += o.bytes_received;
    bytes_sent += o.bytes_sent;
    xact_time_us += o.xact_time_us;
    query_time_us += o.query_time_us;
    wait_time_us += o.wait_time_us;
    client_parse_count += o.client_parse_count;
    server_parse_count += o.server_parse_count;
    bind_count += o.bind_count;
    client_login_count += o.client_login_count;
    query_hist.merge(o.query_hist);
    xact_hist.merge(o.xact_hist);
    wait_hist.merge(o.wait_hist);
  }
};

// PgBouncer's avg_* figures over one stats_period: counts and bytes per second; times
// per transaction, per query and per server assignment (wait), in microseconds.
struct StatsAverages {
  uint64_t server_assignment_count = 0;
  uint64_t xact_count = 0;
  uint64_t query_count = 0;
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  uint64_t xact_time_us = 0;
  uint64_t query_time_us = 0;
  uint64_t wait_time_us = 0;
  uint64_t client_parse_count = 0;
  uint64_t server_parse_count = 0;
  uint64_t bind_count = 0;
  uint64_t client_login_count = 0;
};

// Averages between two totals taken `seconds` apart (pure; zero when seconds <= 0).
StatsAverages compute_averages(const PoolStats& cur, const PoolStats& old, double seconds);
// The log_stats line: "stats: N xacts/s, N queries/s, ..." (PgBouncer's wording).
std::string stats_log_line(const StatsAverages& a);

// The per-database totals at the last two stats_period ticks, for SHOW STATS averages.
// Written by the main thread's timer, read by consoles; guarded by a mutex (never on the
// data path).
class StatsHistory {
 public:
  // A tick: the current per-database totals at monotonic time `now`.
  void record(std::map<std::string, PoolStats> totals, double now);
  // Averages per database over the last full period; empty before two ticks.
  std::map<std::string, StatsAverages> averages() const;
  // The totals of all databases over the last period.
  StatsAverages total_averages() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, PoolStats> old_, cur_;
  double old_t_ = 0, cur_t_ = 0;
};

// Microseconds on the monotonic clock.
uint64_t now_us();

}  // namespace pgsluice
