// Pools shared by all workers, their global slot counters, and the registry.
#include "pool.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

#include "log.h"

namespace pgsluice {

double now_seconds();  // worker.cc: monotonic seconds

namespace {
std::atomic<uint64_t> next_pool_uid{1};
}

Pool::Pool(std::string db, std::string user, size_t nworkers)
    : db_name(std::move(db)),
      user_name(std::move(user)),
      uid(next_pool_uid.fetch_add(1, std::memory_order_relaxed)),
      last_used_(now_seconds()),
      nworkers_(nworkers),
      per_worker_(new PerWorker[nworkers]) {}

bool Pool::hold() {
  int cur = holds_.load();
  while (cur >= 0)
    if (holds_.compare_exchange_weak(cur, cur + 1)) return true;
  return false;
}

void Pool::unhold() {
  last_used_.store(now_seconds(), std::memory_order_relaxed);  // published by the release below
  holds_.fetch_sub(1);
}

static bool take(std::atomic<int>* c, int max) {
  if (c == nullptr || max <= 0) {
    if (c) c->fetch_add(1);
    return true;
  }
  int cur = c->load();
  while (cur < max)
    if (c->compare_exchange_weak(cur, cur + 1)) return true;
  return false;
}

bool Pool::try_reserve_within(int limit) {
  // A full pool (the usual case for a client that finds no idle server) answers with loads
  // only: no hold() and undo on holds_, a line every worker writes.
  if (limit > 0 && servers_.load(std::memory_order_relaxed) >= limit) return false;
  if (!hold()) return false;  // retired: its last user is gone, nothing connects for it
  if (!take(&servers_, limit > 0 ? limit : 0)) {
    holds_.fetch_sub(1);  // not a use
    return false;
  }
  if (!take(db_conns, db_max.load(std::memory_order_relaxed))) {
    servers_.fetch_sub(1);
    holds_.fetch_sub(1);
    return false;
  }
  if (!take(user_conns, user_max.load(std::memory_order_relaxed))) {
    servers_.fetch_sub(1);
    if (db_conns) db_conns->fetch_sub(1);
    holds_.fetch_sub(1);
    return false;
  }
  return true;
}

void Pool::unreserve() {
  servers_.fetch_sub(1);
  if (db_conns) db_conns->fetch_sub(1);
  if (user_conns) user_conns->fetch_sub(1);
  unhold();
}

void Pool::set_welcome(std::vector<std::pair<std::string, std::string>> params) {
  std::lock_guard<std::mutex> g(mu_);
  if (welcome_ready_.load()) return;
  welcome_ = std::move(params);
  welcome_ready_.store(true, std::memory_order_release);
}

std::string Pool::login_secret() const {
  std::lock_guard<std::mutex> g(mu_);
  return config_secret_.empty() ? looked_up_secret_ : config_secret_;
}

void Pool::set_looked_up_secret(const std::string& s) {
  std::lock_guard<std::mutex> g(mu_);
  if (looked_up_secret_ != s) looked_up_secret_ = s;
}

void Pool::set_scram_keys(const std::array<uint8_t, 32>& ck, const std::array<uint8_t, 32>& sk) {
  std::lock_guard<std::mutex> g(mu_);
  client_key_ = ck;
  server_key_ = sk;
  have_keys_ = true;
}

bool Pool::scram_keys(std::array<uint8_t, 32>& ck, std::array<uint8_t, 32>& sk) const {
  std::lock_guard<std::mutex> g(mu_);
  if (!have_keys_) return false;
  ck = client_key_;
  sk = server_key_;
  return true;
}

void Pool::set_target(std::unique_ptr<Target> t) {
  std::lock_guard<std::mutex> g(mu_);
  targets_.push_back(std::move(t));
  target_.store(targets_.back().get(), std::memory_order_release);
}

std::string Pool::config_secret() const {
  std::lock_guard<std::mutex> g(mu_);
  return config_secret_;
}

void Pool::set_config_secret(const std::string& s) {
  std::lock_guard<std::mutex> g(mu_);
  config_secret_ = s;
}

Registry::Registry(size_t nworkers)
    : dns_(std::make_unique<Resolver>()),
      nworkers_(nworkers),
      passed_(new std::atomic<uint64_t>[nworkers]) {
  for (size_t i = 0; i < nworkers; i++) passed_[i].store(0);
}

Registry::~Registry() {
  stop_resolver();
}

bool Registry::resolve_now(Target& target) {
  bool all = true;
  for (auto& hp : target.hosts) {
    TargetHost& t = *hp;
    const std::string& host = t.host;
    if (host.empty() || host[0] == '/') {
      std::string path = host + "/.s.PGSQL." + std::to_string(t.port);
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      if (path.size() >= sizeof un.sun_path) {
        t.set_resolve_error("unix socket path too long");
        continue;
      }
      std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
      sockaddr_storage a{};
      std::memcpy(&a, &un, sizeof un);
      t.set_addr(a, sizeof un);
      continue;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;  // never a lookup: numeric or nothing
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) == 0 && res &&
        res->ai_addrlen <= sizeof(sockaddr_storage)) {
      sockaddr_storage a{};
      std::memcpy(&a, res->ai_addr, res->ai_addrlen);
      t.set_addr(a, res->ai_addrlen);
      freeaddrinfo(res);
      continue;
    }
    if (res) freeaddrinfo(res);
    t.set_name(dns_->name(host));  // looked up (and refreshed) by the resolver
    if (t.addr() == nullptr) all = false;
  }
  return all;
}

// Asks for the names of t that were never answered; p is kicked when they are. p and t must
// be published (the kick serves p's waiters).
void Registry::start_lookup(Pool* p, Target* target, const Config& cfg) {
  for (auto& h : target->hosts)
    if (h->name() && h->addr() == nullptr)
      dns_->lookup(h->name(), p, cfg.dns_max_ttl, cfg.dns_nxdomain_ttl);
}

bool Registry::refresh(Pool* p, Target& t, const Config& cfg, double now) {
  bool waiting = false;
  for (auto& h : t.hosts) {
    DnsName* n = h->name();
    if (n == nullptr || !n->expired(now)) continue;
    const AddrRecord* cur = n->current();
    bool none = cur == nullptr || cur->failed();
    dns_->lookup(n, none ? p : nullptr, cfg.dns_max_ttl, cfg.dns_nxdomain_ttl);
    waiting = waiting || none;
  }
  return waiting;
}

namespace {

std::string pool_user_of(const DatabaseDef& def, const std::string& user) {
  return def.user.empty() ? user : def.user;
}

// The settings RELOAD changes in place: secret, pool_mode, pool_size, max_db_connections,
// max_user_connections.
// `login_user`: the user servers log in as (the pool's, or the entry's user= after RELOAD).
void apply_settings(Pool& p, const Config& cfg, const DatabaseDef& def,
                    const std::string& login_user) {
  const UserDef* udef = nullptr;
  if (auto u = cfg.users.find(login_user); u != cfg.users.end()) udef = &u->second;
  if (!def.password.empty()) {
    p.set_config_secret(def.password);
  } else if (const std::string* s = cfg.userlist.find(login_user)) {
    p.set_config_secret(*s);
  } else {
    p.set_config_secret({});
  }
  if (udef && udef->pool_mode)
    p.mode = *udef->pool_mode;
  else if (def.pool_mode)
    p.mode = *def.pool_mode;
  else
    p.mode = cfg.pool_mode;
  if (def.pool_size >= 0)
    p.pool_size = def.pool_size;
  else if (udef && udef->pool_size >= 0)
    p.pool_size = udef->pool_size;
  else
    p.pool_size = cfg.default_pool_size;
  p.db_max = def.max_db_connections >= 0 ? def.max_db_connections : cfg.max_db_connections;
  p.user_max = (udef && udef->max_user_connections >= 0) ? udef->max_user_connections
                                                         : cfg.max_user_connections;
}

}  // namespace

Pool* Registry::get(const Config& cfg, const std::string& db, const std::string& user,
                    std::string* err, std::string* sqlstate) {
  const DatabaseDef* def = cfg.database(db);
  if (def == nullptr) {
    *err = "no such database: " + db;
    *sqlstate = "3D000";
    return nullptr;
  }
  std::string pool_user = pool_user_of(*def, user);
  auto key = std::make_pair(db, pool_user);
  auto disabled = [&]() {
    auto st = db_states_.find(db);
    if (st == db_states_.end() || !st->second->disabled.load()) return false;
    *err = "database does not allow connections: " + db;
    *sqlstate = "08P01";
    return true;
  };
  // A pool in the map is not retired (retire_idle unlinks under mu_), so its hold is taken.
  auto found = [&](Pool* p) {
    if (!p->hold()) PGS_BUG("a registered pool was retired");
    return p;
  };
  {
    std::lock_guard<std::mutex> g(mu_);
    if (disabled()) return nullptr;
    auto pit = pools_.find(key);
    if (pit != pools_.end()) return found(pit->second.get());
  }

  // A new pool, built without the registry lock.
  auto p = std::make_unique<Pool>(db, pool_user, nworkers_);
  apply_settings(*p, cfg, *def, pool_user);
  std::unique_ptr<Target> t = Target::from_config(cfg, *def, db, pool_user);
  bool ready = resolve_now(*t);
  Target* target = t.get();
  p->set_target(std::move(t));

  std::lock_guard<std::mutex> g(mu_);
  if (disabled()) return nullptr;
  auto pit = pools_.find(key);
  if (pit != pools_.end()) return found(pit->second.get());  // another worker made it meanwhile
  p->state = db_state_locked(db);
  auto& dc = db_counts_[def->name];
  if (!dc) dc = std::make_unique<std::atomic<int>>(0);
  p->db_conns = dc.get();
  auto& dcc = db_client_counts_[db];
  if (!dcc) dcc = std::make_unique<std::atomic<int>>(0);
  p->db_clients = dcc.get();
  auto& ucc = user_client_counts_[pool_user];
  if (!ucc) ucc = std::make_unique<std::atomic<int>>(0);
  p->user_clients = ucc.get();
  auto& uc = user_counts_[pool_user];
  if (!uc) uc = std::make_unique<std::atomic<int>>(0);
  p->user_conns = uc.get();
  Pool* raw = p.get();
  (void)raw->hold();
  pools_.emplace(key, std::move(p));
  if (!ready) start_lookup(raw, target, cfg);  // registered now: its kick finds it
  return raw;
}

int Registry::retarget(const Config& cfg) {
  int moved = 0;
  // Held: the main thread is not a worker, and a held pool is not retired meanwhile.
  std::vector<Pool*> held = held_pools();
  for (Pool* p : held) {
    const DatabaseDef* def = cfg.database(p->db_name);
    if (def == nullptr) continue;  // removed from the config: the pool keeps what it had
    std::string login_user = pool_user_of(*def, p->user_name);
    apply_settings(*p, cfg, *def, login_user);
    std::unique_ptr<Target> t = Target::from_config(cfg, *def, p->db_name, login_user);
    Target* cur = p->target();
    if (t->same_as(*cur)) continue;
    t->gen = cur->gen + 1;
    LOG_INFO("pool %s/%s: target changed by RELOAD: %s dbname=%s -> %s dbname=%s",
             p->db_name.c_str(), p->user_name.c_str(), cur->describe().c_str(),
             cur->server_db.c_str(), t->describe().c_str(), t->server_db.c_str());
    bool ready = resolve_now(*t);
    Target* raw = t.get();
    p->set_target(std::move(t));
    if (!ready) start_lookup(p, raw, cfg);
    moved++;
  }
  release_held(held);
  return moved;
}

DbState* Registry::db_state_locked(const std::string& db) {
  auto& st = db_states_[db];
  if (!st) st = std::make_unique<DbState>();
  return st.get();
}

DbState* Registry::db_state(const std::string& db) {
  std::lock_guard<std::mutex> g(mu_);
  return db_state_locked(db);
}

std::vector<Pool*> Registry::pools() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<Pool*> out;
  out.reserve(pools_.size());
  for (auto& [k, p] : pools_) out.push_back(p.get());
  return out;
}

std::vector<Pool*> Registry::held_pools() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<Pool*> out;
  out.reserve(pools_.size());
  for (auto& [k, p] : pools_)
    if (p->hold()) out.push_back(p.get());
  return out;
}

void Registry::release_held(const std::vector<Pool*>& pools) {
  for (Pool* p : pools) p->holds_.fetch_sub(1);  // not a use: last_used stays
}

int Registry::server_total() {
  std::lock_guard<std::mutex> g(mu_);
  int n = 0;
  for (auto& [k, p] : pools_) n += p->server_count();
  return n;
}

bool Registry::lookup_pending(const Pool* p) {
  return dns_->waits_for(p);
}

int Registry::retire_idle(const Config& cfg, double now) {
  double pool_idle = cfg.pool_idle_timeout;
  double autodb_idle = cfg.fallback_db ? cfg.autodb_idle_timeout : 0;
  if (pool_idle <= 0 && autodb_idle <= 0) return 0;
  std::lock_guard<std::mutex> g(mu_);
  // Databases made from "*": the last use of any of their pools; -1 while one is held
  // (PgBouncer: an auto-database is active while a pool has a client or a server).
  // holds_ is read before last_used_: the load sees the unhold that stamped it.
  std::map<std::string, double> auto_used;
  if (autodb_idle > 0)
    for (auto& [k, p] : pools_) {
      if (cfg.databases.count(p->db_name) != 0) continue;
      bool held = p->holds_.load() != 0;
      auto [a, fresh] = auto_used.emplace(p->db_name, held ? -1 : p->last_used());
      if (held)
        a->second = -1;
      else if (a->second >= 0)
        a->second = std::max(a->second, p->last_used());
    }
  int n = 0;
  for (auto it = pools_.begin(); it != pools_.end();) {
    Pool* p = it->second.get();
    if (p->holds_.load() != 0) {
      ++it;
      continue;
    }
    const char* why = nullptr;
    double age = now - p->last_used();
    const DatabaseDef* def = cfg.database(p->db_name);
    int min_size = def == nullptr            ? 0
                   : def->min_pool_size >= 0 ? def->min_pool_size
                                             : cfg.min_pool_size;
    // PgBouncer never frees a forced user's pool kept at min_pool_size: the janitor would
    // make it again at once (tend_pools).
    bool kept = def != nullptr && !def->user.empty() && min_size > 0;
    if (pool_idle > 0 && age > pool_idle && !kept) why = "pool_idle_timeout";
    if (why == nullptr && autodb_idle > 0) {
      auto a = auto_used.find(p->db_name);
      if (a != auto_used.end() && a->second >= 0 && now - a->second > autodb_idle &&
          !p->state->paused.load())
        why = "autodb_idle_timeout";
    }
    int zero = 0;
    if (why == nullptr || lookup_pending(p) ||
        !p->holds_.compare_exchange_strong(zero, Pool::kRetired)) {
      ++it;
      continue;
    }
    LOG_INFO("pool %s/%s freed: unused for %.0f s (%s)", p->db_name.c_str(), p->user_name.c_str(),
             age, why);
    retired_.push_back(Retired{std::move(it->second), epoch_ + 1});
    it = pools_.erase(it);
    n++;
  }
  if (n > 0) {
    epoch_++;
    has_retired_.store(true);
  }
  return n;
}

std::vector<Pool*> Registry::retired(uint64_t* epoch) {
  std::lock_guard<std::mutex> g(mu_);
  *epoch = epoch_;
  std::vector<Pool*> out;
  for (const Retired& r : retired_) out.push_back(r.pool.get());
  return out;
}

void Registry::passed(size_t w, uint64_t epoch) {
  if (w < nworkers_) passed_[w].store(epoch, std::memory_order_release);
}

void Registry::reclaim() {
  if (!has_retired()) return;
  std::lock_guard<std::mutex> g(mu_);
  uint64_t all = epoch_;
  for (size_t w = 0; w < nworkers_; w++)
    all = std::min(all, passed_[w].load(std::memory_order_acquire));
  // A lookup started on a pool between a snapshot and its retirement would still write it.
  std::erase_if(retired_,
                [&](const Retired& r) { return r.epoch <= all && !lookup_pending(r.pool.get()); });
  has_retired_.store(!retired_.empty());
}

std::vector<std::string> Registry::db_names() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<std::string> out;
  for (auto& [k, v] : db_states_) out.push_back(k);
  return out;
}

int Registry::user_server_count(const std::string& user) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = user_counts_.find(user);
  return it == user_counts_.end() ? 0 : it->second->load();
}

std::atomic<int>* Registry::user_client_counter(const std::string& user) {
  std::lock_guard<std::mutex> g(mu_);
  auto& c = user_client_counts_[user];
  if (!c) c = std::make_unique<std::atomic<int>>(0);
  return c.get();
}

int Registry::db_client_count(const std::string& db) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = db_client_counts_.find(db);
  return it == db_client_counts_.end() ? 0 : it->second->load();
}

int Registry::user_client_count(const std::string& user) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = user_client_counts_.find(user);
  return it == user_client_counts_.end() ? 0 : it->second->load();
}

}  // namespace pgsluice
