// PgBouncer's SHOW CLIENTS/SERVERS row (PGBOUNCER-COMPAT §3), shared by the console tests.
#pragma once

#include <string>
#include <vector>

namespace it {

// The 21 columns of SHOW CLIENTS and SHOW SERVERS, in PgBouncer's order.
inline const std::vector<std::string> kSocketCols = {"type",
                                                     "user",
                                                     "database",
                                                     "replication",
                                                     "state",
                                                     "addr",
                                                     "port",
                                                     "local_addr",
                                                     "local_port",
                                                     "connect_time",
                                                     "request_time",
                                                     "wait",
                                                     "wait_us",
                                                     "close_needed",
                                                     "ptr",
                                                     "link",
                                                     "remote_pid",
                                                     "tls",
                                                     "application_name",
                                                     "prepared_statements",
                                                     "id"};

// SHOW CLIENTS: PgBouncer's columns, then pgsluice's pinned (the pinning reasons) last.
inline std::vector<std::string> client_columns() {
  std::vector<std::string> v = kSocketCols;
  v.push_back("pinned");
  return v;
}

// SHOW SOCKETS / ACTIVE_SOCKETS: the same row plus the buffer columns.
inline std::vector<std::string> with_debug(std::vector<std::string> v) {
  for (const char* n :
       {"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail"})
    v.push_back(n);
  return v;
}

// SHOW STATS: database, then total_* and avg_* of PgBouncer's twelve counters.
inline std::vector<std::string> show_stats_columns() {
  const std::vector<std::string> base = {"server_assignment_count",
                                         "xact_count",
                                         "query_count",
                                         "received",
                                         "sent",
                                         "xact_time",
                                         "query_time",
                                         "wait_time",
                                         "client_parse_count",
                                         "server_parse_count",
                                         "bind_count",
                                         "client_login_count"};
  std::vector<std::string> stats = {"database"};
  for (const auto& n : base)
    stats.push_back(n == "received" ? "total_received" : n == "sent" ? "total_sent" : "total_" + n);
  for (const auto& n : base) stats.push_back(n == "received" ? "avg_recv" : "avg_" + n);
  return stats;
}
}  // namespace it
