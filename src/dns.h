// Host names of [databases] entries: looked up with libevent's evdns on the resolver's own
// thread and event loop, an answer reused for dns_max_ttl, a failure for dns_nxdomain_ttl.
#pragma once

#include <netdb.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct event_base;
struct evdns_base;
struct event;
struct evdns_getaddrinfo_request;

namespace pgsluice {

class Pool;

// One answer for a host: its addresses (in the order they came), or why there is none.
// Immutable once published; never freed before its owner (the DnsName or the TargetHost),
// so a Server may keep a plain pointer to the record it connected through.
struct AddrRecord {
  std::vector<sockaddr_storage> addrs;  // a name's: port 0 (TargetHost::next_addr adds it)
  std::vector<socklen_t> lens;
  std::string error;  // no address: why (for clients' 08006)
  bool failed() const { return addrs.empty(); }
  // Whether `a` is one of the addresses (family and address; the port is not compared).
  bool has(const sockaddr_storage& a) const;
  // The same addresses in any order, or the same error.
  bool same(const AddrRecord& o) const;
  // "10.0.0.1,10.0.0.2" (a failure: "").
  std::string describe() const;
  // Round-robin over addrs for new servers (PgBouncer does the same).
  mutable std::atomic<uint32_t> next{0};
};

// "10.0.0.1" / "::1" / a Unix socket's path.
std::string addr_text(const sockaddr_storage& a);

// A host name, for the whole process (every TargetHost naming it points here).
class DnsName {
 public:
  explicit DnsName(std::string h) : host(std::move(h)) {}
  const std::string host;
  // The latest answer; null until the first one came. Replaced (never by null) when an
  // answer differs from it; the records it was stay alive with this name.
  const AddrRecord* current() const { return current_.load(std::memory_order_acquire); }
  // True when the answer is older than its TTL (a new server then asks for a new one).
  bool expired(double now) const { return now >= expires_.load(std::memory_order_relaxed); }
  // Takes an answer at `now`, good for `ttl` seconds: publishes it unless it is the current
  // answer (the same addresses in any order, or the same error), reusing the record of an
  // earlier equal answer. Returns the answer before. The Resolver's, under its lock (tests).
  const AddrRecord* take(std::unique_ptr<AddrRecord> rec, double now, double ttl);

 private:
  friend class Resolver;
  std::atomic<const AddrRecord*> current_{nullptr};
  std::atomic<double> expires_{0};  // monotonic seconds
  // Resolver::mu_:
  bool in_flight_ = false;
  double max_ttl_ = 15, nxdomain_ttl_ = 15;           // of the config that asked for the lookup
  std::vector<Pool*> waiters_;                        // kicked when the lookup in flight ends
  std::vector<std::unique_ptr<AddrRecord>> records_;  // every record published
};

// The lookups. Its thread (started at the first lookup) runs an event_base with an
// evdns_base configured from /etc/resolv.conf and /etc/hosts; any number of names may be
// in flight at once, one lookup per name.
class Resolver {
 public:
  Resolver();
  ~Resolver();  // stop()
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Called on the resolver thread when a lookup a pool waits for ended (Ready or Failed),
  // so the workers serve its waiting clients. Must not block.
  void set_on_resolved(std::function<void(Pool*)> fn);
  // No name is written and on_resolved is not called after this returns; the thread is
  // joined (unless called from it). Idempotent.
  void stop();

  // The entry of `host`, made on first use; lives as long as the Resolver.
  DnsName* name(const std::string& host);
  // Asks for a new answer for n unless one is on its way. `waiter` (may be null) is kicked
  // when that lookup ends, or at once when n has an unexpired answer already. The TTLs are
  // those of the caller's config snapshot; the answer is then good for them.
  void lookup(DnsName* n, Pool* waiter, double max_ttl, double nxdomain_ttl);
  // Whether a lookup on its way will kick p: such a pool is not freed (pool_idle_timeout),
  // as the resolver keeps no other Pool* and kicks under its lock.
  bool waits_for(const Pool* p);

  // SHOW LISTS: names known, lookups running, lookups queued but not yet started.
  struct Counts {
    int names = 0, queries = 0, pending = 0;
  };
  Counts counts();
  // SHOW DNS_HOSTS: each name, seconds its answer is still good for, its addresses.
  struct HostRow {
    std::string host;
    long long ttl = 0;
    std::string addrs;
  };
  std::vector<HostRow> hosts(double now);

 private:
  struct Query;
  void run();
  void start(DnsName* n);
  void complete(DnsName* n, std::unique_ptr<AddrRecord> rec);
  void wake();
  static void wake_cb(int fd, short what, void* arg);
  static void answer_cb(int err, addrinfo* res, void* arg);  // evutil_addrinfo

  std::mutex mu_;  // everything below but the thread-only part
  bool stopped_ = false;
  std::function<void(Pool*)> on_resolved_;
  std::map<std::string, std::unique_ptr<DnsName>> names_;
  std::vector<DnsName*> queue_;  // to start on the thread
  int queries_ = 0;              // started, not answered yet
  std::thread thread_;
  int wake_fd_ = -1;  // eventfd: the thread's loop wakes to start queue_ or stop
  // The thread's own.
  event_base* base_ = nullptr;
  evdns_base* dns_ = nullptr;
  std::vector<Query*> live_;  // lookups evdns has not answered yet (cancelled at stop)
};

}  // namespace pgsluice
