// Host-name lookups: evdns on the resolver thread, answers cached per name with TTLs.
#include "dns.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "log.h"

namespace pgsluice {

namespace {
double monotonic_now() {  // the clock of Worker's now_seconds()
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

bool same_addr(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET)
    return reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in&>(b).sin_addr.s_addr;
  if (a.ss_family == AF_INET6)
    return std::memcmp(&reinterpret_cast<const sockaddr_in6&>(a).sin6_addr,
                       &reinterpret_cast<const sockaddr_in6&>(b).sin6_addr, sizeof(in6_addr)) == 0;
  return std::memcmp(&a, &b, sizeof a) == 0;
}
}  // namespace

bool AddrRecord::has(const sockaddr_storage& a) const {
  for (const auto& x : addrs)
    if (same_addr(x, a)) return true;
  return false;
}

bool AddrRecord::same(const AddrRecord& o) const {
  if (addrs.size() != o.addrs.size() || error != o.error) return false;
  for (const auto& x : o.addrs)
    if (!has(x)) return false;
  return true;
}

std::string addr_text(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (a.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a).sin_addr, buf, sizeof buf);
  else if (a.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(a).sin6_addr, buf, sizeof buf);
  else if (a.ss_family == AF_UNIX)
    return reinterpret_cast<const sockaddr_un&>(a).sun_path;
  return buf;
}

std::string AddrRecord::describe() const {
  std::string out;
  for (const auto& a : addrs) {
    if (!out.empty()) out += ",";
    out += addr_text(a);
  }
  return out;
}

// One lookup handed to evdns (freed by its callback, which evdns_base_free also runs).
struct Resolver::Query {
  Resolver* r;
  DnsName* n;
  evdns_getaddrinfo_request* req = nullptr;  // set once evdns did not answer at once
};

Resolver::Resolver() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) LOG_ERROR("dns: eventfd failed: %s", strerror(errno));
}

Resolver::~Resolver() {
  stop();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Resolver::set_on_resolved(std::function<void(Pool*)> fn) {
  std::lock_guard<std::mutex> g(mu_);
  on_resolved_ = std::move(fn);
}

void Resolver::stop() {
  std::thread t;
  {
    std::lock_guard<std::mutex> g(mu_);
    stopped_ = true;
    queue_.clear();
    on_resolved_ = nullptr;
    for (auto& [k, n] : names_) n->waiters_.clear();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id())
      t = std::move(thread_);
  }
  wake();
  if (t.joinable()) t.join();
}

void Resolver::wake() {
  uint64_t one = 1;
  if (wake_fd_ >= 0 && write(wake_fd_, &one, sizeof one) < 0 && errno != EAGAIN)
    LOG_ERROR("dns: eventfd write failed: %s", strerror(errno));
}

DnsName* Resolver::name(const std::string& host) {
  std::lock_guard<std::mutex> g(mu_);
  auto& n = names_[host];
  if (!n) n = std::make_unique<DnsName>(host);
  return n.get();
}

void Resolver::lookup(DnsName* n, Pool* waiter, double max_ttl, double nxdomain_ttl) {
  std::lock_guard<std::mutex> g(mu_);
  if (stopped_) {
    if (n->current() == nullptr) {  // nobody will answer: its waiters fail, not hang
      auto rec = std::make_unique<AddrRecord>();
      rec->error = "could not resolve host \"" + n->host + "\": shutting down";
      n->take(std::move(rec), monotonic_now(), 0);
    }
    return;
  }
  if (n->in_flight_) {
    if (waiter && std::find(n->waiters_.begin(), n->waiters_.end(), waiter) == n->waiters_.end())
      n->waiters_.push_back(waiter);
    return;
  }
  if (n->current() != nullptr && !n->expired(monotonic_now())) {  // answered meanwhile
    if (waiter && on_resolved_) on_resolved_(waiter);
    return;
  }
  n->in_flight_ = true;
  n->max_ttl_ = max_ttl;
  n->nxdomain_ttl_ = nxdomain_ttl;
  if (waiter) n->waiters_.push_back(waiter);
  queue_.push_back(n);
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  wake();
}

bool Resolver::waits_for(const Pool* p) {
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& [k, n] : names_)
    if (std::find(n->waiters_.begin(), n->waiters_.end(), p) != n->waiters_.end()) return true;
  return false;
}

Resolver::Counts Resolver::counts() {
  std::lock_guard<std::mutex> g(mu_);
  Counts c;
  c.names = static_cast<int>(names_.size());
  c.queries = queries_;
  c.pending = static_cast<int>(queue_.size());
  return c;
}

std::vector<Resolver::HostRow> Resolver::hosts(double now) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<HostRow> out;
  for (const auto& [host, n] : names_) {
    HostRow r;
    r.host = host;
    const AddrRecord* cur = n->current();
    if (cur) r.addrs = cur->describe();
    double left = n->expires_.load(std::memory_order_relaxed) - now;
    r.ttl = cur && left > 0 ? static_cast<long long>(left) : 0;
    out.push_back(std::move(r));
  }
  return out;
}

// ---------------------------------------------------------------- the thread

void Resolver::run() {
  base_ = event_base_new();
  dns_ = base_ ? evdns_base_new(base_, 0) : nullptr;
  if (dns_ == nullptr) {
    LOG_ERROR("dns: could not start the resolver's event loop");
    if (base_) event_base_free(base_);
    base_ = nullptr;
    std::vector<DnsName*> todo;
    {
      std::lock_guard<std::mutex> g(mu_);
      todo.swap(queue_);
      queries_ += static_cast<int>(todo.size());
    }
    for (DnsName* n : todo) {  // their waiters fail rather than hang
      auto rec = std::make_unique<AddrRecord>();
      rec->error = "could not resolve host \"" + n->host + "\": resolver unavailable";
      complete(n, std::move(rec));
    }
    std::lock_guard<std::mutex> g(mu_);
    stopped_ = true;  // lookup() now fails names at once instead of queueing them
    return;
  }
  // Nameservers, search domains and options from resolv.conf; /etc/hosts first, as libc.
  int rc = evdns_base_resolv_conf_parse(dns_, DNS_OPTIONS_ALL, "/etc/resolv.conf");
  if (rc != 0) LOG_WARN("dns: /etc/resolv.conf could not be used (evdns error %d)", rc);
  if (evdns_base_count_nameservers(dns_) == 0)  // libc's default when none is configured
    evdns_base_nameserver_ip_add(dns_, "127.0.0.1");
  event* wake_ev = event_new(base_, wake_fd_, EV_READ | EV_PERSIST, &Resolver::wake_cb, this);
  event_add(wake_ev, nullptr);
  event_base_dispatch(base_);  // until wake_cb sees stopped_
  // Lookups still out: cancelled, their callbacks run (EVUTIL_EAI_CANCEL; nothing written)
  // while evdns is still there, so nothing of theirs is left behind.
  for (Query* q : std::vector<Query*>(live_)) evdns_getaddrinfo_cancel(q->req);
  for (int i = 0; i < 10 && !live_.empty(); i++) event_base_loop(base_, EVLOOP_NONBLOCK);
  evdns_base_free(dns_, 1);
  event_free(wake_ev);
  event_base_free(base_);
  dns_ = nullptr;
  base_ = nullptr;
}

void Resolver::wake_cb(int fd, short, void* arg) {
  auto* self = static_cast<Resolver*>(arg);
  uint64_t v;
  if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN) LOG_ERROR("dns: eventfd read failed");
  std::vector<DnsName*> todo;
  {
    std::lock_guard<std::mutex> g(self->mu_);
    if (self->stopped_) {
      event_base_loopbreak(self->base_);
      return;
    }
    todo.swap(self->queue_);
    self->queries_ += static_cast<int>(todo.size());
  }
  for (DnsName* n : todo) self->start(n);  // not under mu_: evdns may answer at once
}

void Resolver::start(DnsName* n) {
  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  auto* q = new Query{this, n};
  // Null when it answered at once (/etc/hosts, a numeric name) or failed at once: the
  // callback has run (and freed q) then.
  evdns_getaddrinfo_request* req =
      evdns_getaddrinfo(dns_, n->host.c_str(), nullptr, &hints, &Resolver::answer_cb, q);
  if (req) {
    q->req = req;
    live_.push_back(q);
  }
}

void Resolver::answer_cb(int err, addrinfo* res, void* arg) {
  std::unique_ptr<Query> q(static_cast<Query*>(arg));
  auto& live = q->r->live_;
  live.erase(std::remove(live.begin(), live.end(), q.get()), live.end());
  auto rec = std::make_unique<AddrRecord>();
  if (err == 0) {
    for (const evutil_addrinfo* ai = res; ai; ai = ai->ai_next) {
      if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
      if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
      sockaddr_storage a{};
      std::memcpy(&a, ai->ai_addr, ai->ai_addrlen);
      if (rec->has(a)) continue;
      if (a.ss_family == AF_INET) reinterpret_cast<sockaddr_in&>(a).sin_port = 0;
      if (a.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6&>(a).sin6_port = 0;
      rec->addrs.push_back(a);
      rec->lens.push_back(static_cast<socklen_t>(ai->ai_addrlen));
    }
  }
  if (res) evutil_freeaddrinfo(res);
  if (rec->addrs.empty())
    rec->error = "could not resolve host \"" + q->n->host +
                 "\": " + (err != 0 ? evutil_gai_strerror(err) : "no address");
  q->r->complete(q->n, std::move(rec));
}

const AddrRecord* DnsName::take(std::unique_ptr<AddrRecord> rec, double now, double ttl) {
  const AddrRecord* prev = current();
  const AddrRecord* next = prev && prev->same(*rec) ? prev : nullptr;
  for (const auto& r : records_)  // an answer seen before: its record again
    if (next == nullptr && r->same(*rec)) next = r.get();
  if (next == nullptr) {
    records_.push_back(std::move(rec));
    next = records_.back().get();
  }
  expires_.store(now + ttl, std::memory_order_relaxed);
  if (next != prev) current_.store(next, std::memory_order_release);
  return prev;
}

void Resolver::complete(DnsName* n, std::unique_ptr<AddrRecord> rec) {
  std::lock_guard<std::mutex> g(mu_);
  queries_--;
  if (stopped_) return;
  n->in_flight_ = false;
  double ttl = rec->failed() ? n->nxdomain_ttl_ : n->max_ttl_;
  const AddrRecord* prev = n->take(std::move(rec), monotonic_now(), ttl);
  const AddrRecord* next = n->current();
  if (next != prev) {
    if (prev && !prev->failed() && !next->failed())
      LOG_INFO("host %s now resolves to %s (was %s)", n->host.c_str(), next->describe().c_str(),
               prev->describe().c_str());
    else if (next->failed())
      LOG_WARN("DNS lookup failed: %s", next->error.c_str());
    else if (prev)
      LOG_INFO("host %s resolves again, to %s", n->host.c_str(), next->describe().c_str());
  }
  // Under mu_: stop() waits for this, so no worker is kicked once it returned.
  std::vector<Pool*> waiters;
  waiters.swap(n->waiters_);
  if (on_resolved_)
    for (Pool* p : waiters) on_resolved_(p);
}

}  // namespace pgsluice
