// The Prometheus endpoint: /metrics on the main thread, answered when a gather of the
// workers' parts comes back; request size and time limits on every connection.
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/socket.h>

#include <cinttypes>
#include <cstdio>

#include "admin.h"
#include "config.h"
#include "gather.h"
#include "pinning.h"
#include "pool.h"
#include "tls.h"
#include "worker.h"

namespace pgsluice {

namespace {

std::string esc(const std::string& v) {
  std::string o;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') {
      o.push_back('\\');
      o.push_back(ch);
    } else if (ch == '\n') {
      o += "\\n";
    } else {
      o.push_back(ch);
    }
  }
  return o;
}

class Out {
 public:
  void head(const char* name, const char* type, const char* help) {
    char b[512];
    std::snprintf(b, sizeof b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    s += b;
  }
  void line(const std::string& name, const std::string& labels, double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.17g", v);
    s += name;
    if (!labels.empty()) s += "{" + labels + "}";
    s += " ";
    s += b;
    s += "\n";
  }
  void line_u(const std::string& name, const std::string& labels, uint64_t v) {
    s += name;
    if (!labels.empty()) s += "{" + labels + "}";
    s += " " + std::to_string(v) + "\n";
  }
  std::string s;
};

std::string pool_labels(const PoolRow& r) {
  return "database=\"" + esc(r.db) + "\",user=\"" + esc(r.user) + "\"";
}

void histogram(Out& o, const Snapshot& s, const char* name, const char* help,
               const Histogram PoolStats::*field) {
  o.head(name, "histogram", help);
  std::string n = name;
  for (const PoolRow& r : s.pools) {
    const Histogram& h = r.stats.*field;
    std::string lb = pool_labels(r);
    uint64_t cum = 0;
    for (size_t i = 0; i < h.buckets.size(); i++) {
      cum += h.buckets[i];
      char le[32];
      if (i < Histogram::kBoundsUs.size())
        std::snprintf(le, sizeof le, "%g", static_cast<double>(Histogram::kBoundsUs[i]) / 1e6);
      else
        std::snprintf(le, sizeof le, "+Inf");
      o.line_u(n + "_bucket", lb + ",le=\"" + le + "\"", cum);
    }
    o.line(n + "_sum", lb, static_cast<double>(h.sum_us) / 1e6);
    o.line_u(n + "_count", lb, h.count);
  }
}

}  // namespace

std::string render_metrics(const Snapshot& s, const Config& cfg, const MetricsExtra& extra) {
  Out o;
  o.head("pgbouncer_up", "gauge", "The pooler is up and answering.");
  o.line("pgbouncer_up", "", 1);
  o.head("pgbouncer_version_info", "gauge", "The version of pgsluice and of PgBouncer it matches.");
  o.line("pgbouncer_version_info",
         std::string("version=\"") + kPgBouncerCompat + "\",pgsluice=\"" + kPgsluiceVersion + "\"",
         1);
  o.head("pgbouncer_config_max_client_connections", "gauge", "max_client_conn.");
  o.line("pgbouncer_config_max_client_connections", "", cfg.max_client_conn);
  o.head("pgbouncer_config_max_user_connections", "gauge", "max_user_connections.");
  o.line("pgbouncer_config_max_user_connections", "", cfg.max_user_connections);
  o.head("pgsluice_paused", "gauge", "1 while PAUSE, KILL or SUSPEND hold every database.");
  o.line("pgsluice_paused", "", extra.paused ? 1 : 0);
  o.head("pgsluice_shutting_down", "gauge", "1 during a graceful shutdown.");
  o.line("pgsluice_shutting_down", "", extra.shutdown_mode != 0 ? 1 : 0);
  o.head("pgsluice_uptime_seconds", "gauge", "Seconds since start.");
  o.line("pgsluice_uptime_seconds", "", extra.uptime_s);
  o.head("pgsluice_server_tls_handshakes_total", "counter",
         "TLS handshakes with servers that completed.");
  o.line_u("pgsluice_server_tls_handshakes_total", "", extra.server_tls_handshakes);
  o.head("pgsluice_server_tls_handshake_failures_total", "counter",
         "TLS handshakes with servers that failed (the log says why).");
  o.line_u("pgsluice_server_tls_handshake_failures_total", "", extra.server_tls_handshake_failures);
  o.head("pgsluice_server_checks_total", "counter",
         "server_check_query health checks started on idle servers.");
  o.line_u("pgsluice_server_checks_total", "", extra.server_checks);
  o.head("pgsluice_server_checks_failed_total", "counter",
         "server_check_query health checks that failed (the server was closed).");
  o.line_u("pgsluice_server_checks_failed_total", "", extra.server_checks_failed);
  o.head("pgsluice_routine_readings_total", "counter",
         "Reads of a pool's catalog for routines that make session state (pinning).");
  o.line_u("pgsluice_routine_readings_total", "", extra.routine_readings);
  o.head("pgsluice_routine_reading_failures_total", "counter",
         "Such reads that failed (the last reading stays; the log says why).");
  o.line_u("pgsluice_routine_reading_failures_total", "", extra.routine_reading_failures);
  o.head("pgsluice_failovers_total", "counter",
         "Times a pool's new servers moved off a host that could not be reached or no longer "
         "suited target_session_attrs (the log names both hosts).");
  o.line_u("pgsluice_failovers_total", "", extra.failovers);
  static_assert(sizeof(extra.client_pins) / sizeof(extra.client_pins[0]) == kPinReasons);
  o.head("pgsluice_client_pins_total", "counter",
         "Clients pinned to their server by state pgsluice cannot follow, by reason.");
  for (int i = 0; i < kPinReasons; i++)
    o.line_u("pgsluice_client_pins_total", "reason=\"" + std::string(pin_reason_name(i)) + "\"",
             extra.client_pins[i]);
  o.head("pgsluice_pinned_clients", "gauge", "Clients pinned to their server now.");
  o.line("pgsluice_pinned_clients", "", static_cast<double>(extra.pinned_clients));
  o.head("pgsluice_reloads_total", "counter", "Configurations applied by RELOAD or SIGHUP.");
  o.line_u("pgsluice_reloads_total", "", extra.reloads);
  o.head("pgsluice_reload_failures_total", "counter",
         "RELOAD or SIGHUP refused (the running configuration stayed; the log says why).");
  o.line_u("pgsluice_reload_failures_total", "", extra.reload_failures);
  o.head("pgsluice_listen_channels", "gauge",
         "Channels the LISTEN/NOTIFY hubs listen on (counted once per hub: pool and worker).");
  o.line("pgsluice_listen_channels", "", extra.listen_channels);
  o.head("pgsluice_listen_clients", "gauge",
         "Clients listening through a LISTEN/NOTIFY hub (transaction and statement pooling).");
  o.line("pgsluice_listen_clients", "", extra.listen_clients);
  o.head("pgbouncer_used_clients", "gauge", "Client connections open.");
  o.line("pgbouncer_used_clients", "", s.used_clients);
  o.head("pgbouncer_login_clients", "gauge", "Clients still logging in.");
  o.line("pgbouncer_login_clients", "", s.login_clients);
  o.head("pgbouncer_used_servers", "gauge", "Server connections open.");
  o.line("pgbouncer_used_servers", "", s.used_servers);
  o.head("pgsluice_client_tls_handshakes_total", "counter",
         "TLS handshakes with clients that completed.");
  o.line_u("pgsluice_client_tls_handshakes_total", "", extra.client_tls_handshakes);
  o.head("pgsluice_client_tls_handshake_failures_total", "counter",
         "TLS handshakes with clients that failed or were abandoned.");
  o.line_u("pgsluice_client_tls_handshake_failures_total", "", extra.client_tls_handshake_failures);
  o.head("pgbouncer_pools", "gauge", "Pools.");
  o.line("pgbouncer_pools", "", static_cast<double>(s.pools.size()));

  struct PoolGauge {
    const char* name;
    int PoolRow::*field;
    const char* help;
  };
  const PoolGauge gauges[] = {
      {"pgbouncer_pools_client_active_connections", &PoolRow::cl_active,
       "Client connections linked or idle (cl_active)."},
      {"pgbouncer_pools_client_waiting_connections", &PoolRow::cl_waiting,
       "Client connections waiting for a server (cl_waiting)."},
      {"pgbouncer_pools_server_active_connections", &PoolRow::sv_active,
       "Server connections linked to a client (sv_active)."},
      {"pgbouncer_pools_server_active_cancel_connections", &PoolRow::sv_active_cancel,
       "Cancel requests being forwarded (sv_active_cancel)."},
      {"pgbouncer_pools_server_being_canceled_connections", &PoolRow::sv_being_canceled,
       "Servers waiting for a cancel to finish (sv_being_canceled)."},
      {"pgbouncer_pools_server_idle_connections", &PoolRow::sv_idle,
       "Idle server connections (sv_idle)."},
      {"pgbouncer_pools_server_used_connections", &PoolRow::sv_used,
       "Server connections idle and not yet checked (sv_used)."},
      {"pgbouncer_pools_server_testing_connections", &PoolRow::sv_tested,
       "Server connections running the reset query (sv_tested)."},
      {"pgbouncer_pools_server_login_connections", &PoolRow::sv_login,
       "Server connections logging in (sv_login)."},
  };
  for (const PoolGauge& g : gauges) {
    o.head(g.name, "gauge", g.help);
    for (const PoolRow& r : s.pools) o.line(g.name, pool_labels(r), r.*(g.field));
  }
  o.head("pgbouncer_pools_client_maxwait_seconds", "gauge", "Longest wait of a waiting client.");
  for (const PoolRow& r : s.pools)
    o.line("pgbouncer_pools_client_maxwait_seconds", pool_labels(r),
           static_cast<double>(r.maxwait_us) / 1e6);

  auto by_db = stats_by_database(s);
  struct Counter {
    const char* name;
    uint64_t PoolStats::*field;
    double scale;
    const char* help;
  };
  const Counter counters[] = {
      {"pgbouncer_stats_server_assignments_total", &PoolStats::server_assignment_count, 1,
       "Times a server was assigned to a client."},
      {"pgbouncer_stats_sql_transactions_pooled_total", &PoolStats::xact_count, 1,
       "SQL transactions pooled."},
      {"pgbouncer_stats_queries_pooled_total", &PoolStats::query_count, 1, "SQL queries pooled."},
      {"pgbouncer_stats_received_bytes_total", &PoolStats::bytes_received, 1,
       "Bytes received from clients."},
      {"pgbouncer_stats_sent_bytes_total", &PoolStats::bytes_sent, 1, "Bytes sent to clients."},
      {"pgbouncer_stats_server_in_transaction_seconds_total", &PoolStats::xact_time_us, 1e-6,
       "Seconds spent in transactions."},
      {"pgbouncer_stats_queries_duration_seconds_total", &PoolStats::query_time_us, 1e-6,
       "Seconds spent in queries."},
      {"pgbouncer_stats_client_wait_seconds_total", &PoolStats::wait_time_us, 1e-6,
       "Seconds clients waited for a server."},
      {"pgbouncer_stats_client_parses_total", &PoolStats::client_parse_count, 1,
       "Parse messages from clients."},
      {"pgbouncer_stats_server_parses_total", &PoolStats::server_parse_count, 1,
       "Parse messages sent to servers."},
      {"pgbouncer_stats_binds_total", &PoolStats::bind_count, 1, "Bind messages from clients."},
      {"pgsluice_stats_client_logins_total", &PoolStats::client_login_count, 1, "Client logins."},
  };
  for (const Counter& c : counters) {
    o.head(c.name, "counter", c.help);
    for (const auto& [db, st] : by_db) {
      std::string lb = "database=\"" + esc(db) + "\"";
      if (c.scale == 1)
        o.line_u(c.name, lb, st.*(c.field));
      else
        o.line(c.name, lb, static_cast<double>(st.*(c.field)) * c.scale);
    }
  }
  histogram(o, s, "pgsluice_query_duration_seconds", "Query latency (request to ReadyForQuery).",
            &PoolStats::query_hist);
  histogram(o, s, "pgsluice_transaction_duration_seconds", "Transaction latency.",
            &PoolStats::xact_hist);
  histogram(o, s, "pgsluice_client_wait_seconds", "Time clients waited for a server.",
            &PoolStats::wait_hist);
  return o.s;
}

MetricsServer::~MetricsServer() {
  if (http_) evhttp_free(http_);  // frees the waiting requests with their connections
}

Status MetricsServer::start(event_base* base, const std::string& addr, int port) {
  http_ = evhttp_new(base);
  if (http_ == nullptr) return Status::error("metrics: evhttp_new failed");
  evhttp_set_allowed_methods(http_, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_max_headers_size(http_, kMetricsMaxHeaderBytes);
  evhttp_set_max_body_size(http_, kMetricsMaxBodyBytes);
  evhttp_set_timeout(http_, kMetricsIdleTimeout);
  evhttp_set_bevcb(http_, &MetricsServer::make_bev, this);
  evhttp_set_gencb(http_, &MetricsServer::handle, this);
  if (evhttp_bind_socket_with_handle(http_, addr.c_str(), static_cast<uint16_t>(port)) == nullptr)
    return Status::error("metrics: could not listen on " + addr + ":" + std::to_string(port));
  return Status();
}

// Each new connection: evhttp's own kind of bufferevent, plus a watch on its input that
// enforces the whole-request deadline (the idle timeout alone lets a client that sends a
// byte every few seconds hold the connection for ever).
bufferevent* MetricsServer::make_bev(event_base* base, void* arg) {
  auto* self = static_cast<MetricsServer*>(arg);
  bufferevent* bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (bev == nullptr) return nullptr;
  double now = now_seconds();
  if (self->since_.size() >= 4096) {
    // Entries of closed connections are overwritten when malloc reuses their address;
    // drop the old ones now and then. A live connection's entry is never this old: it
    // would have been closed by the deadline or the idle timeout.
    for (auto it = self->since_.begin(); it != self->since_.end();) {
      if (now - it->second.since > 3600)
        it = self->since_.erase(it);
      else
        ++it;
    }
  }
  evbuffer* in = bufferevent_get_input(bev);
  self->since_[in] = HttpConn{now, bev};
  evbuffer_add_cb(in, &MetricsServer::input_cb, self);
  return bev;
}

// Called whenever bytes arrive on a connection (only while it is alive).
void MetricsServer::input_cb(evbuffer* in, const evbuffer_cb_info* info, void* arg) {
  if (info->n_added == 0) return;
  auto* self = static_cast<MetricsServer*>(arg);
  auto it = self->since_.find(in);
  if (it == self->since_.end()) return;
  if (now_seconds() - it->second.since <= kMetricsRequestDeadline) return;
  // Past the deadline: end the connection. evhttp sees the end of the stream at its next
  // read and frees the connection itself.
  evutil_socket_t fd = bufferevent_getfd(it->second.bev);
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

void MetricsServer::handle(evhttp_request* req, void* arg) {
  auto* self = static_cast<MetricsServer*>(arg);
  if (evhttp_connection* conn = evhttp_request_get_connection(req)) {
    if (bufferevent* bev = evhttp_connection_get_bufferevent(conn)) {
      auto it = self->since_.find(bufferevent_get_input(bev));
      if (it != self->since_.end()) it->second.since = now_seconds();  // the next request's
    }
  }
  const char* uri = evhttp_request_get_uri(req);
  std::string path = uri ? uri : "";
  if (size_t q = path.find('?'); q != std::string::npos) path.resize(q);
  if (path != "/metrics" && path != "/") {
    evhttp_send_error(req, HTTP_NOTFOUND, "not found; try /metrics");
    return;
  }
  if (self->pending_.size() >= kMetricsMaxPending) {
    evhttp_send_error(req, HTTP_SERVUNAVAIL, "too many scrapes waiting");
    return;
  }
  self->pending_.push_back(req);
  if (self->gathering_) return;  // answered with the gather in flight
  self->gathering_ = true;
  Runtime* rt = self->rt_;
  std::weak_ptr<int> alive = self->alive_;
  gather_on_main(
      *rt, kSnapPools, kMetricsGatherDeadline, [self, rt, alive](Snapshot& s, bool complete) {
        if (alive.expired()) return;
        self->gathering_ = false;
        if (!complete) {
          LOG_WARN("metrics: not every worker answered within %g s", kMetricsGatherDeadline);
          self->answer_all(nullptr);
          return;
        }
        MetricsExtra ex;
        ex.client_tls_handshakes = rt->client_tls_handshakes.load(std::memory_order_relaxed);
        ex.client_tls_handshake_failures =
            rt->client_tls_handshake_failures.load(std::memory_order_relaxed);
        ex.paused = rt->paused_all.load() || rt->suspended.load();
        ex.shutdown_mode = rt->shutdown_mode.load();
        ex.uptime_s = now_seconds() - rt->start_time;
        ex.server_tls_handshakes = rt->server_tls_handshakes.load(std::memory_order_relaxed);
        ex.server_tls_handshake_failures =
            rt->server_tls_handshake_failures.load(std::memory_order_relaxed);
        ex.server_checks = rt->server_checks.load(std::memory_order_relaxed);
        ex.server_checks_failed = rt->server_checks_failed.load(std::memory_order_relaxed);
        ex.routine_readings = rt->routine_readings.load(std::memory_order_relaxed);
        ex.routine_reading_failures = rt->routine_reading_failures.load(std::memory_order_relaxed);
        ex.failovers = rt->failovers.load(std::memory_order_relaxed);
        for (int i = 0; i < kPinReasons; i++)
          ex.client_pins[i] = rt->client_pins[i].load(std::memory_order_relaxed);
        ex.pinned_clients = rt->pinned_clients.load(std::memory_order_relaxed);
        ex.reloads = rt->reloads.load(std::memory_order_relaxed);
        ex.reload_failures = rt->reload_failures.load(std::memory_order_relaxed);
        ex.listen_channels = rt->listen_channels.load(std::memory_order_relaxed);
        ex.listen_clients = rt->listen_clients.load(std::memory_order_relaxed);
        std::string body = render_metrics(s, *rt->config(), ex);
        self->answer_all(&body);
      });
}

void MetricsServer::answer_all(const std::string* body) {
  std::vector<evhttp_request*> reqs;
  reqs.swap(pending_);
  for (evhttp_request* req : reqs) {
    if (body == nullptr) {
      evhttp_send_error(req, HTTP_SERVUNAVAIL, "workers did not answer in time");
      continue;
    }
    evbuffer* out = evbuffer_new();
    evbuffer_add(out, body->data(), body->size());
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, HTTP_OK, "OK", out);
    evbuffer_free(out);
  }
}

}  // namespace pgsluice
