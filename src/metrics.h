// The Prometheus endpoint: libevent's HTTP server on the main thread serving /metrics in
// the text exposition format, with pgbouncer_exporter's metric names where the same
// figure exists and pgsluice_* latency histograms.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"

struct bufferevent;
struct evbuffer;
struct evbuffer_cb_info;
struct event_base;
struct evhttp;
struct evhttp_request;

namespace pgsluice {

struct Config;
struct Runtime;
struct Snapshot;

// Figures that are not in a snapshot.
struct MetricsExtra {
  uint64_t client_tls_handshakes = 0;  // Runtime::client_tls_handshakes
  uint64_t client_tls_handshake_failures = 0;
  bool paused = false;
  int shutdown_mode = 0;
  double uptime_s = 0;
  uint64_t server_tls_handshakes = 0;          // Runtime::server_tls_handshakes
  uint64_t server_tls_handshake_failures = 0;  // Runtime::server_tls_handshake_failures
  uint64_t server_checks = 0;                  // Runtime::server_checks
  uint64_t server_checks_failed = 0;           // Runtime::server_checks_failed
  uint64_t routine_readings = 0;               // Runtime::routine_readings
  uint64_t routine_reading_failures = 0;       // Runtime::routine_reading_failures
  uint64_t failovers = 0;                      // Runtime::failovers
  uint64_t client_pins[7] = {};                // Runtime::client_pins, by reason (pinning.h)
  int64_t pinned_clients = 0;                  // Runtime::pinned_clients
  uint64_t reloads = 0;                        // Runtime::reloads
  uint64_t reload_failures = 0;                // Runtime::reload_failures
  int listen_channels = 0;                     // Runtime::listen_channels
  int listen_clients = 0;                      // Runtime::listen_clients
};

// The exposition text for a merged snapshot (pure; unit-tested).
std::string render_metrics(const Snapshot& s, const Config& cfg, const MetricsExtra& extra);

// Limits of the endpoint: a request must fit kMetricsMaxHeaderBytes (request line and
// headers) and kMetricsMaxBodyBytes, and arrive whole within kMetricsRequestDeadline seconds
// of the connection's start (or of its previous request); a connection that sends nothing
// for kMetricsIdleTimeout seconds is closed. Scrapes arriving while a gather is in flight
// share it (at most kMetricsMaxPending wait; more get 503), and a gather not answered by
// every worker within kMetricsGatherDeadline seconds gives 503.
inline constexpr long kMetricsMaxHeaderBytes = 8192;
inline constexpr long kMetricsMaxBodyBytes = 1024;
inline constexpr int kMetricsRequestDeadline = 5;
inline constexpr int kMetricsIdleTimeout = 5;
inline constexpr size_t kMetricsMaxPending = 64;
inline constexpr double kMetricsGatherDeadline = 2.0;

// Served on the main thread; nothing in it blocks: the snapshot comes from gather_on_main.
class MetricsServer {
 public:
  explicit MetricsServer(Runtime* rt) : rt_(rt) {}
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  // Listens on addr:port with the main thread's base.
  Status start(event_base* base, const std::string& addr, int port);

 private:
  static void handle(::evhttp_request* req, void* arg);
  static ::bufferevent* make_bev(::event_base* base, void* arg);
  static void input_cb(::evbuffer* buf, const ::evbuffer_cb_info* info, void* arg);
  void answer_all(const std::string* body);  // nullptr: 503 to every waiting scrape
  Runtime* rt_;
  evhttp* http_ = nullptr;
  std::vector<::evhttp_request*> pending_;  // scrapes waiting for the gather in flight
  bool gathering_ = false;
  // Per connection, by its input buffer: when its current request began (monotonic
  // seconds). Entries of closed connections are overwritten when the address is reused and
  // pruned by age.
  struct HttpConn {
    double since;
    ::bufferevent* bev;
  };
  std::unordered_map<::evbuffer*, HttpConn> since_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // the gather's check on `this`
};

}  // namespace pgsluice
