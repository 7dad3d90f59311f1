// Pools shared by all workers, their global slot counters, and the registry.
#include "pool.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstring>

namespace pgsluice {

namespace {
std::atomic<uint64_t> next_pool_uid{1};
}

Pool::Pool(std::string db, std::string user, size_t nworkers)
    : db_name(std::move(db)),
      user_name(std::move(user)),
      uid(next_pool_uid.fetch_add(1, std::memory_order_relaxed)),
      nworkers_(nworkers),
      idle_on_(new std::atomic<int>[nworkers]),
      waiting_on_(new std::atomic<int>[nworkers]) {
  for (size_t i = 0; i < nworkers; i++) {
    idle_on_[i] = 0;
    waiting_on_[i] = 0;
  }
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

bool Pool::try_reserve() {
  if (!take(&servers_, pool_size > 0 ? pool_size : 0)) return false;
  if (!take(db_conns, db_max)) {
    servers_.fetch_sub(1);
    return false;
  }
  if (!take(user_conns, user_max)) {
    servers_.fetch_sub(1);
    if (db_conns) db_conns->fetch_sub(1);
    return false;
  }
  return true;
}

void Pool::unreserve() {
  servers_.fetch_sub(1);
  if (db_conns) db_conns->fetch_sub(1);
  if (user_conns) user_conns->fetch_sub(1);
}

void Pool::set_welcome(std::vector<std::pair<std::string, std::string>> params) {
  std::lock_guard<std::mutex> g(mu_);
  if (welcome_ready_.load()) return;
  welcome_ = std::move(params);
  welcome_ready_.store(true, std::memory_order_release);
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

// Fills p.addr for `host` (a Unix socket directory when empty or starting with '/'). Network
// names go through the registry's address cache; getaddrinfo runs without any lock held.
void Registry::resolve(Pool& p, const Config& cfg, const std::string& host) {
  if (host.empty() || host[0] == '/') {
    std::string dir = host.empty() ? cfg.unix_socket_dir : host;
    std::string path = dir + "/.s.PGSQL." + std::to_string(p.port);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (path.size() >= sizeof un.sun_path) {
      p.resolve_error = "unix socket path too long";
      return;
    }
    std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
    std::memcpy(&p.addr, &un, sizeof un);
    p.addrlen = sizeof un;
    p.host = dir;
    return;
  }
  auto key = std::make_pair(host, p.port);
  {
    std::lock_guard<std::mutex> g(addr_mu_);
    auto it = addrs_.find(key);
    if (it != addrs_.end()) {
      p.addr = it->second.first;
      p.addrlen = it->second.second;
      return;
    }
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = AF_UNSPEC;
  addrinfo* res = nullptr;
  std::string port = std::to_string(p.port);
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    p.resolve_error = std::string("could not resolve host \"") + host + "\": " + gai_strerror(rc);
    return;  // failures are not cached: the next new pool tries again
  }
  std::memcpy(&p.addr, res->ai_addr, res->ai_addrlen);
  p.addrlen = res->ai_addrlen;
  freeaddrinfo(res);
  std::lock_guard<std::mutex> g(addr_mu_);
  addrs_.emplace(key, std::make_pair(p.addr, p.addrlen));
}

Pool* Registry::get(const Config& cfg, const std::string& db, const std::string& user,
                    std::string* err, std::string* sqlstate) {
  const DatabaseDef* def = nullptr;
  auto it = cfg.databases.find(db);
  if (it != cfg.databases.end())
    def = &it->second;
  else if (cfg.fallback_db)
    def = &*cfg.fallback_db;
  if (def == nullptr) {
    *err = "no such database: " + db;
    *sqlstate = "3D000";
    return nullptr;
  }
  std::string pool_user = def->user.empty() ? user : def->user;
  auto key = std::make_pair(db, pool_user);
  auto disabled = [&]() {
    auto st = db_states_.find(db);
    if (st == db_states_.end() || !st->second->disabled.load()) return false;
    *err = "database does not allow connections: " + db;
    *sqlstate = "08P01";
    return true;
  };
  {
    std::lock_guard<std::mutex> g(mu_);
    if (disabled()) return nullptr;
    auto pit = pools_.find(key);
    if (pit != pools_.end()) return pit->second.get();
  }

  // A new pool, built without the registry lock (resolving a host name may block).
  auto p = std::make_unique<Pool>(db, pool_user, nworkers_);
  p->port = def->port;
  p->server_db = def->dbname.empty() ? db : def->dbname;
  const UserDef* udef = nullptr;
  if (auto u = cfg.users.find(pool_user); u != cfg.users.end()) udef = &u->second;
  if (!def->password.empty()) {
    p->secret = def->password;
  } else if (const std::string* s = cfg.userlist.find(pool_user)) {
    p->secret = *s;
  }
  if (udef && udef->pool_mode)
    p->mode = *udef->pool_mode;
  else if (def->pool_mode)
    p->mode = *def->pool_mode;
  else
    p->mode = cfg.pool_mode;
  if (def->pool_size >= 0)
    p->pool_size = def->pool_size;
  else if (udef && udef->pool_size >= 0)
    p->pool_size = udef->pool_size;
  else
    p->pool_size = cfg.default_pool_size;
  p->startup_params.emplace_back("user", pool_user);
  p->startup_params.emplace_back("database", p->server_db);
  if (!def->client_encoding.empty())
    p->startup_params.emplace_back("client_encoding", def->client_encoding);
  if (!def->datestyle.empty()) p->startup_params.emplace_back("datestyle", def->datestyle);
  if (!def->timezone.empty()) p->startup_params.emplace_back("timezone", def->timezone);
  if (!def->application_name.empty())
    p->startup_params.emplace_back("application_name", def->application_name);
  p->connect_query = def->connect_query;
  p->host = def->host;
  resolve(*p, cfg, def->host);

  std::lock_guard<std::mutex> g(mu_);
  if (disabled()) return nullptr;
  auto pit = pools_.find(key);
  if (pit != pools_.end()) return pit->second.get();  // another worker made it meanwhile
  p->state = db_state_locked(db);
  auto& dc = db_counts_[def->name];
  if (!dc) dc = std::make_unique<std::atomic<int>>(0);
  p->db_conns = dc.get();
  p->db_max = def->max_db_connections >= 0 ? def->max_db_connections : cfg.max_db_connections;
  auto& uc = user_counts_[pool_user];
  if (!uc) uc = std::make_unique<std::atomic<int>>(0);
  p->user_conns = uc.get();
  p->user_max = (udef && udef->max_user_connections >= 0) ? udef->max_user_connections
                                                          : cfg.max_user_connections;
  Pool* raw = p.get();
  pools_.emplace(key, std::move(p));
  return raw;
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

}  // namespace pgsluice
