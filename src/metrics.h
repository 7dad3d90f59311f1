// The Prometheus endpoint: libevent's HTTP server on the main thread serving /metrics in
// the text exposition format, with pgbouncer_exporter's metric names where the same
// figure exists and pgsluice_* latency histograms.
#pragma once

#include <string>

#include "common.h"

struct event_base;
struct evhttp;
struct evhttp_request;

namespace pgsluice {

struct Config;
struct Runtime;
struct Snapshot;

// Figures that are not in a snapshot.
struct MetricsExtra {
  bool paused = false;
  int shutdown_mode = 0;
  double uptime_s = 0;
};

// The exposition text for a merged snapshot (pure; unit-tested).
std::string render_metrics(const Snapshot& s, const Config& cfg, const MetricsExtra& extra);

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
  Runtime* rt_;
  evhttp* http_ = nullptr;
};

}  // namespace pgsluice
