// The console's pure pieces: statement parsing, result-set encoding, trace selection,
// stats averages, the metrics text; and the documentation of every setting and command.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "admin.h"
#include "config.h"
#include "gather.h"
#include "metrics.h"
#include "pool.h"
#include "rowset.h"
#include "stats.h"
#include "trace.h"
#include "wire.h"

using namespace pgsluice;  // NOLINT: test file

namespace {

std::string read_doc(const std::string& rel) {
  for (const std::string& base : {std::string(""), std::string("../"), std::string("../../")}) {
    std::ifstream f(base + rel);
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      return ss.str();
    }
  }
  return "";
}

}  // namespace

TEST_CASE("admin: statements parse as PgBouncer's grammar") {
  auto s = parse_admin_statement("SHOW POOLS");
  REQUIRE(s);
  CHECK_FALSE(s->is_set);
  CHECK(s->cmd == "show");
  CHECK(s->arg == "POOLS");
  s = parse_admin_statement("  show\tstats_totals ;  ");
  REQUIRE(s);
  CHECK(s->arg == "stats_totals");
  s = parse_admin_statement("RELOAD;");
  REQUIRE(s);
  CHECK(s->cmd == "reload");
  CHECK(s->arg.empty());
  s = parse_admin_statement("pause \"my db\"");
  REQUIRE(s);
  CHECK(s->arg == "my db");
  s = parse_admin_statement("KILL_CLIENT 42");
  REQUIRE(s);
  CHECK(s->cmd == "kill_client");
  CHECK(s->arg == "42");
  s = parse_admin_statement("SET default_pool_size = 7");
  REQUIRE(s);
  CHECK(s->is_set);
  CHECK(s->key == "default_pool_size");
  CHECK(s->value == "7");
  s = parse_admin_statement("set Server_Reset_Query TO 'DISCARD ALL; select ''x'''");
  REQUIRE(s);
  CHECK(s->key == "server_reset_query");
  CHECK(s->value == "DISCARD ALL; select 'x'");
  s = parse_admin_statement("SET trace = 'client 5';");
  REQUIRE(s);
  CHECK(s->value == "client 5");
  CHECK_FALSE(parse_admin_statement("SHOW POOLS STATS"));
  CHECK_FALSE(parse_admin_statement("SHOW POOLS; SHOW STATS"));
  CHECK_FALSE(parse_admin_statement("SET x = 'unterminated"));
  CHECK_FALSE(parse_admin_statement("\"\""));
  CHECK_FALSE(parse_admin_statement(""));
  CHECK_FALSE(parse_admin_statement("drop table x"));
}

TEST_CASE("admin: user lists") {
  CHECK(user_in_list("admin, bob", "bob"));
  CHECK(user_in_list("admin,bob", "admin"));
  CHECK_FALSE(user_in_list("admin,bob", "bo"));
  CHECK_FALSE(user_in_list("", "admin"));
}

TEST_CASE("rowset: RowDescription carries PgBouncer's type OIDs, DataRow NULLs, CommandComplete") {
  RowSet rs("sqib", {"name", "big", "small", "bytes"});
  rs.row({"a", "1", "2", std::nullopt});
  std::string out;
  rs.finish(out);
  REQUIRE(out.size() > 10);
  CHECK(out[0] == 'T');
  size_t len = wire::get_u32(reinterpret_cast<const uint8_t*>(out.data()) + 1);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(out.data()) + 5;
  CHECK(((p[0] << 8) | p[1]) == 4);
  p += 2;
  std::vector<uint32_t> oids;
  for (int i = 0; i < 4; i++) {
    while (*p) p++;
    p++;
    p += 6;  // table oid, column number
    oids.push_back(wire::get_u32(p));
    p += 12;  // type oid, size, modifier, format
  }
  CHECK(oids == std::vector<uint32_t>{25, 20, 23, 17});
  size_t d = 1 + len;
  CHECK(out[d] == 'D');
  CHECK(out.find(std::string("\xff\xff\xff\xff", 4), d) != std::string::npos);  // the NULL
  CHECK(out.substr(out.size() - 10) == std::string("C\0\0\0\x09SHOW\0", 10));
  CHECK(cell_time(0).empty());
  CHECK(cell_time(86400) == "1970-01-02 00:00:00 UTC");
  CHECK(cell_ptr(nullptr).empty());
}

TEST_CASE("trace: target values") {
  TraceTarget t;
  CHECK(parse_trace_target("off", t));
  CHECK(t.mode == 0);
  CHECK(parse_trace_target("ALL", t));
  CHECK(t.mode == 3);
  CHECK(parse_trace_target("client 17", t));
  CHECK(t.mode == 1);
  CHECK(t.client_id == 17);
  CHECK(parse_trace_target("client:18", t));
  CHECK(t.client_id == 18);
  CHECK(parse_trace_target("db appdb", t));
  CHECK(t.mode == 2);
  CHECK(t.db == "appdb");
  CHECK(parse_trace_target("database=x", t));
  CHECK(t.db == "x");
  CHECK_FALSE(parse_trace_target("client abc", t));
  CHECK_FALSE(parse_trace_target("client", t));
  CHECK_FALSE(parse_trace_target("bogus", t));
}

TEST_CASE("stats: averages per second and per event; the log line") {
  PoolStats old, cur;
  cur.xact_count = 100;
  cur.query_count = 200;
  cur.bytes_received = 1000;
  cur.xact_time_us = 5000;
  cur.query_time_us = 4000;
  cur.server_assignment_count = 10;
  cur.wait_time_us = 300;
  StatsAverages a = compute_averages(cur, old, 10);
  CHECK(a.xact_count == 10);
  CHECK(a.query_count == 20);
  CHECK(a.bytes_received == 100);
  CHECK(a.xact_time_us == 50);
  CHECK(a.query_time_us == 20);
  CHECK(a.wait_time_us == 30);
  CHECK(compute_averages(cur, old, 0).xact_count == 0);
  CHECK(stats_log_line(a).rfind("stats: 10 xacts/s, 20 queries/s,", 0) == 0);
  StatsHistory h;
  CHECK(h.averages().empty());
  h.record({{"db", old}}, 1);
  h.record({{"db", cur}}, 11);
  CHECK(h.averages()["db"].query_count == 20);
  CHECK(h.total_averages().xact_count == 10);
  Histogram hist;
  hist.add(50);
  hist.add(100);
  hist.add(101);
  hist.add(20000000);
  CHECK(hist.buckets[0] == 2);
  CHECK(hist.buckets[1] == 1);
  CHECK(hist.buckets.back() == 1);
  CHECK(hist.count == 4);
}

TEST_CASE("metrics: exposition text with pgbouncer_exporter names and cumulative buckets") {
  Snapshot s;
  PoolRow r;
  r.uid = 1;
  r.db = "appdb";
  r.user = "app";
  r.cl_active = 3;
  r.sv_idle = 2;
  r.stats.query_count = 5;
  r.stats.query_hist.add(50);
  r.stats.query_hist.add(3000);
  s.pools.push_back(r);
  Config cfg;
  std::string t = render_metrics(s, cfg, MetricsExtra{});
  CHECK(t.find("pgbouncer_pools_client_active_connections{database=\"appdb\",user=\"app\"} 3\n") !=
        std::string::npos);
  CHECK(t.find("pgbouncer_pools_server_idle_connections{database=\"appdb\",user=\"app\"} 2\n") !=
        std::string::npos);
  CHECK(t.find("pgbouncer_stats_queries_pooled_total{database=\"appdb\"} 5\n") !=
        std::string::npos);
  CHECK(t.find("pgsluice_query_duration_seconds_bucket{database=\"appdb\",user=\"app\",le=\"0."
               "0001\"} 1\n") != std::string::npos);
  CHECK(t.find("pgsluice_query_duration_seconds_bucket{database=\"appdb\",user=\"app\",le=\"0."
               "005\"} 2\n") != std::string::npos);
  CHECK(t.find("pgsluice_query_duration_seconds_bucket{database=\"appdb\",user=\"app\",le=\"+Inf\"}"
               " 2\n") != std::string::npos);
  CHECK(t.find("pgsluice_query_duration_seconds_count{database=\"appdb\",user=\"app\"} 2\n") !=
        std::string::npos);
  CHECK(t.find("# TYPE pgsluice_query_duration_seconds histogram\n") != std::string::npos);
}

TEST_CASE("docs: every setting is in pgsluice(5), every console command in pgsluice(1)") {
  std::string man5 = read_doc("man/pgsluice.5");
  std::string man1 = read_doc("man/pgsluice.1");
  REQUIRE(!man5.empty());
  REQUIRE(!man1.empty());
  for (const SettingInfo& row : settings_table()) {
    std::string name = row.name;
    if (name == "conffile") continue;  // the command-line path, documented in pgsluice(1)
    CAPTURE(name);
    CHECK(man5.find(".B " + name + "\n") != std::string::npos);
  }
  for (const std::string& cmd : admin_commands()) {
    CAPTURE(cmd);
    CHECK(man1.find(cmd) != std::string::npos);
  }
  for (const std::string& sub : admin_show_commands()) {
    CAPTURE(sub);
    CHECK(man1.find("SHOW " + sub) != std::string::npos);
  }
}
