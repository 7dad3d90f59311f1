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

// SHOW SOCKETS / ACTIVE_SOCKETS: the same row plus the buffer columns.
inline std::vector<std::string> with_debug(std::vector<std::string> v) {
  for (const char* n :
       {"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail"})
    v.push_back(n);
  return v;
}

}  // namespace it
