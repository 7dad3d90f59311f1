// Statistics aggregation: stats_period averages (PgBouncer's avg_* columns) and the
// log_stats line. The counters themselves live per worker in LocalPool::stats.
#include "stats.h"

#include <cinttypes>
#include <cstdio>

namespace pgsluice {

namespace {
uint64_t delta(uint64_t cur, uint64_t old) {
  return cur > old ? cur - old : 0;
}
uint64_t per_second(uint64_t cur, uint64_t old, double seconds) {
  return static_cast<uint64_t>(static_cast<double>(delta(cur, old)) / seconds);
}
uint64_t per_event(uint64_t time_cur, uint64_t time_old, uint64_t n) {
  return n == 0 ? 0 : delta(time_cur, time_old) / n;
}
}  // namespace

StatsAverages compute_averages(const PoolStats& cur, const PoolStats& old, double seconds) {
  StatsAverages a;
  if (!(seconds > 0)) return a;
  a.server_assignment_count =
      per_second(cur.server_assignment_count, old.server_assignment_count, seconds);
  a.xact_count = per_second(cur.xact_count, old.xact_count, seconds);
  a.query_count = per_second(cur.query_count, old.query_count, seconds);
  a.bytes_received = per_second(cur.bytes_received, old.bytes_received, seconds);
  a.bytes_sent = per_second(cur.bytes_sent, old.bytes_sent, seconds);
  a.client_parse_count = per_second(cur.client_parse_count, old.client_parse_count, seconds);
  a.server_parse_count = per_second(cur.server_parse_count, old.server_parse_count, seconds);
  a.bind_count = per_second(cur.bind_count, old.bind_count, seconds);
  a.client_login_count = per_second(cur.client_login_count, old.client_login_count, seconds);
  a.xact_time_us =
      per_event(cur.xact_time_us, old.xact_time_us, delta(cur.xact_count, old.xact_count));
  a.query_time_us =
      per_event(cur.query_time_us, old.query_time_us, delta(cur.query_count, old.query_count));
  a.wait_time_us = per_event(cur.wait_time_us, old.wait_time_us,
                             delta(cur.server_assignment_count, old.server_assignment_count));
  return a;
}

std::string stats_log_line(const StatsAverages& a) {
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "stats: %" PRIu64 " xacts/s, %" PRIu64 " queries/s, %" PRIu64 " client parses/s, %" PRIu64
      " server parses/s, %" PRIu64 " binds/s, in %" PRIu64 " B/s, out %" PRIu64
      " B/s, xact %" PRIu64 " us, query %" PRIu64 " us, wait %" PRIu64 " us",
      a.xact_count, a.query_count, a.client_parse_count, a.server_parse_count, a.bind_count,
      a.bytes_received, a.bytes_sent, a.xact_time_us, a.query_time_us, a.wait_time_us);
  return buf;
}

void StatsHistory::record(std::map<std::string, PoolStats> totals, double now) {
  std::lock_guard<std::mutex> g(mu_);
  old_ = std::move(cur_);
  old_t_ = cur_t_;
  cur_ = std::move(totals);
  cur_t_ = now;
}

std::map<std::string, StatsAverages> StatsHistory::averages() const {
  std::lock_guard<std::mutex> g(mu_);
  std::map<std::string, StatsAverages> out;
  if (old_t_ <= 0) return out;
  static const PoolStats kZero;
  for (const auto& [db, cur] : cur_) {
    auto it = old_.find(db);
    out[db] = compute_averages(cur, it == old_.end() ? kZero : it->second, cur_t_ - old_t_);
  }
  return out;
}

StatsAverages StatsHistory::total_averages() const {
  std::lock_guard<std::mutex> g(mu_);
  if (old_t_ <= 0) return {};
  PoolStats c, o;
  for (const auto& [db, s] : cur_) c.merge(s);
  for (const auto& [db, s] : old_) o.merge(s);
  return compute_averages(c, o, cur_t_ - old_t_);
}

}  // namespace pgsluice
