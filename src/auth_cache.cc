#include "auth_cache.h"

#include <algorithm>
#include <ctime>

#include "auth_store.h"
#include "log.h"
#include "password.h"

namespace pgsluice {

namespace {
constexpr char kSep = '\x1f';  // between the parts of a scope key (never in a config value)
// Negative entries are swept (the expired ones dropped) after this many new entries, so
// that a flood of distinct unknown names leaves at most this many behind it.
constexpr size_t kSweepEvery = 4096;
}  // namespace

double wall_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

std::string LookupScope::key() const {
  std::string k;
  k.reserve(dbname.size() + auth_user.size() + query.size() + 2);
  k.append(dbname).push_back(kSep);
  k.append(auth_user).push_back(kSep);
  k.append(query);
  return k;
}

AuthCache::AuthCache() = default;
AuthCache::~AuthCache() {
  std::unique_ptr<AuthStore> store;
  {
    std::lock_guard<std::mutex> g(mu_);
    store = std::move(store_);
  }
  // ~AuthStore writes what is queued.
}

std::string AuthCache::entry_key(const std::string& scope_key, const std::string& user) {
  std::string k = scope_key;
  k.push_back('\0');
  k.append(user);
  return k;
}

void AuthCache::open_file(const std::string& path) {
  std::unique_ptr<AuthStore> old;
  std::unique_ptr<AuthStore> store;
  std::vector<StoredSecret> rows;
  if (!path.empty()) {
    std::string err;
    store = AuthStore::open(path, &err);
    if (store == nullptr) {
      LOG_WARN("auth_cache_file %s cannot be used, the auth cache stays in memory: %s",
               path.c_str(), err.c_str());
    } else {
      rows = store->load();
      store->start();
    }
  }
  std::lock_guard<std::mutex> g(mu_);
  old = std::move(store_);
  store_ = std::move(store);
  path_ = store_ != nullptr ? path : std::string();
  size_t loaded = 0;
  for (auto& r : rows) {
    // scope: dbname, auth_user, query
    size_t a = r.scope.find(kSep);
    size_t b = a == std::string::npos ? a : r.scope.find(kSep, a + 1);
    if (b == std::string::npos) continue;
    std::string k = entry_key(r.scope, r.user);
    Entry& e = entries_[k];
    if (e.has_result && e.fetched >= static_cast<double>(r.fetched_at)) continue;
    e.dbname = r.scope.substr(0, a);
    e.auth_user = r.scope.substr(a + 1, b - a - 1);
    e.query = r.scope.substr(b + 1);
    e.user = r.user;
    e.secret = std::move(r.secret);
    e.fetched = static_cast<double>(r.fetched_at);
    e.found = true;
    e.has_result = true;
    e.from_file = true;
    loaded++;
  }
  if (store_ != nullptr) LOG_INFO("auth cache: %zu entries loaded from %s", loaded, path_.c_str());
}

AuthCache::Answer AuthCache::get(const LookupScope& scope, const std::string& user, size_t worker,
                                 double ttl, double negative_ttl, bool force) {
  Answer a;
  double now = wall_seconds();
  std::lock_guard<std::mutex> g(mu_);
  auto [it, inserted] = entries_.try_emplace(entry_key(scope.key(), user));
  Entry& e = it->second;
  if (inserted) {
    e.dbname = scope.dbname;
    e.auth_user = scope.auth_user;
    e.query = scope.query;
    e.user = user;
    if (++inserts_since_sweep_ >= kSweepEvery) {
      inserts_since_sweep_ = 0;
      sweep_negatives(now, negative_ttl);
    }
  }
  bool usable = e.has_result && !e.must_refresh && !force;
  if (usable && !e.found && now - e.fetched >= negative_ttl) usable = false;  // expired negative
  if (usable) {
    e.hits++;
    if (!e.found) {
      a.kind = Answer::Kind::NotFound;
      return a;
    }
    a.kind = Answer::Kind::Found;
    a.secret = e.secret;
    if (now - e.fetched >= ttl && !e.in_flight) {  // stale: used, and refreshed behind
      e.in_flight = true;
      a.refresh = true;
    }
    return a;
  }
  if (std::find(e.waiters.begin(), e.waiters.end(), worker) == e.waiters.end())
    e.waiters.push_back(worker);
  if (e.in_flight) {
    a.kind = Answer::Kind::Wait;
    return a;
  }
  e.in_flight = true;
  a.kind = Answer::Kind::Run;
  return a;
}

std::vector<size_t> AuthCache::complete(const LookupScope& scope, const std::string& user,
                                        const Outcome& out) {
  std::vector<size_t> waiters;
  std::lock_guard<std::mutex> g(mu_);
  auto it = entries_.find(entry_key(scope.key(), user));
  if (it == entries_.end()) return waiters;  // dropped meanwhile, and nobody waits
  Entry& e = it->second;
  e.in_flight = false;
  waiters.swap(e.waiters);
  if (out.kind == Outcome::Kind::Failed) {
    // An outage keeps what was cached; an entry that never had a result goes.
    if (!e.has_result) entries_.erase(it);
    return waiters;
  }
  e.has_result = true;
  e.must_refresh = false;
  e.from_file = false;
  e.fetched = wall_seconds();
  e.found = out.kind == Outcome::Kind::Found;
  e.secret = e.found ? out.secret : std::string();
  if (store_ != nullptr) {
    // Only verifiers go to disk: a plain-text password (a custom auth_query may return one)
    // stays in memory.
    if (e.found && secret_kind(e.secret) != SecretKind::Plain)
      store_->put(StoredSecret{scope.key(), user, e.secret, static_cast<int64_t>(e.fetched)});
    else
      store_->erase(scope.key(), user);
  }
  return waiters;
}

void AuthCache::invalidate_user(const std::string& user) {
  std::lock_guard<std::mutex> g(mu_);
  for (auto& [k, e] : entries_)
    if (e.user == user) e.must_refresh = true;
}

size_t AuthCache::drop(const std::string& user) {
  std::lock_guard<std::mutex> g(mu_);
  size_t n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = it->second;
    if (!user.empty() && e.user != user) {
      ++it;
      continue;
    }
    if (e.in_flight) {  // completes later; its waiters are still told
      if (e.has_result) n++;
      e.has_result = false;
      e.found = false;
      e.secret.clear();
      ++it;
      continue;
    }
    if (e.has_result) n++;
    it = entries_.erase(it);
  }
  if (store_ != nullptr) {
    if (user.empty())
      store_->erase_all();
    else
      store_->erase_user(user);
  }
  return n;
}

void AuthCache::sweep_negatives(double now, double negative_ttl) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    const Entry& e = it->second;
    if (e.has_result && !e.found && !e.in_flight && now - e.fetched >= negative_ttl)
      it = entries_.erase(it);
    else
      ++it;
  }
}

std::vector<AuthCache::Row> AuthCache::rows() const {
  std::vector<Row> out;
  double now = wall_seconds();
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& [k, e] : entries_) {
    if (!e.has_result) continue;
    Row r;
    r.user = e.user;
    r.dbname = e.dbname;
    r.source = !e.found ? "not_found" : e.from_file ? "cache" : "auth_query";
    r.age = now - e.fetched;
    r.hits = e.hits;
    out.push_back(std::move(r));
  }
  return out;
}

bool AuthCache::sync() {
  AuthStore* s;
  {
    std::lock_guard<std::mutex> g(mu_);
    s = store_.get();
  }
  return s != nullptr && s->sync();
}

}  // namespace pgsluice
