// A pool's target: its hosts, how a new server picks one, and what servers log in with.
#include "target.h"

#include <errno.h>
#include <netinet/in.h>
#include <unistd.h>

#include "config.h"
#include "stream.h"

namespace pgsluice {

void TargetHost::set_addr(const sockaddr_storage& a, socklen_t len) {
  own_ = std::make_unique<AddrRecord>();
  own_->addrs.push_back(a);
  own_->lens.push_back(len);
}

void TargetHost::set_resolve_error(std::string err) {
  own_ = std::make_unique<AddrRecord>();
  own_->error = std::move(err);
}

AddrState TargetHost::addr_state() const {
  const AddrRecord* r = addr();
  return r == nullptr ? AddrState::Pending : r->failed() ? AddrState::Failed : AddrState::Ready;
}

std::string TargetHost::resolve_error() const {
  const AddrRecord* r = addr();
  return r ? r->error : std::string();
}

socklen_t TargetHost::next_addr(const AddrRecord& r, sockaddr_storage* out) const {
  size_t i =
      r.addrs.size() == 1 ? 0 : r.next.fetch_add(1, std::memory_order_relaxed) % r.addrs.size();
  *out = r.addrs[i];
  auto p = htons(static_cast<uint16_t>(port));
  if (out->ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(out)->sin_port = p;
  if (out->ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(out)->sin6_port = p;
  return r.lens[i];
}

bool TargetHost::moved_away(const AddrRecord* r, const sockaddr_storage& peer) const {
  if (name_ == nullptr || r == nullptr) return false;
  const AddrRecord* cur = name_->current();
  return cur != r && cur != nullptr && !cur->failed() && !cur->has(peer);
}

void TargetHost::hold(double until, HostDown why) {
  held_until.store(until, std::memory_order_relaxed);
  down.store(why, std::memory_order_relaxed);
}

void TargetHost::serving() {
  held_until.store(0, std::memory_order_relaxed);
  down.store(HostDown::No, std::memory_order_relaxed);
}

const char* host_down_name(HostDown d) {
  switch (d) {
    case HostDown::No:
      return "up";
    case HostDown::Unreachable:
      return "could not be reached";
    case HostDown::WrongRole:
      return "does not suit target_session_attrs";
  }
  return "?";
}

namespace {
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t from = 0;
  for (;;) {
    size_t at = s.find(',', from);
    out.push_back(s.substr(from, at == std::string::npos ? std::string::npos : at - from));
    if (at == std::string::npos) return out;
    from = at + 1;
  }
}
}  // namespace

std::unique_ptr<Target> Target::from_config(const Config& cfg, const DatabaseDef& def,
                                            const std::string& db, const std::string& login_user) {
  auto t = std::make_unique<Target>();
  std::vector<std::string> names = split_commas(def.host);
  for (size_t i = 0; i < names.size(); i++) {
    auto h = std::make_unique<TargetHost>();
    h->host = names[i].empty() ? cfg.unix_socket_dir : names[i];
    // One port for every host, or one per host (checked when the entry was read).
    h->port = def.ports.size() == names.size() ? def.ports[i] : def.port;
    t->hosts.push_back(std::move(h));
  }
  t->round_robin = def.load_balance_hosts != "disable";
  const std::string& a = def.target_session_attrs;
  t->attrs = a == "read-write"       ? SessionAttrs::ReadWrite
             : a == "read-only"      ? SessionAttrs::ReadOnly
             : a == "primary"        ? SessionAttrs::Primary
             : a == "standby"        ? SessionAttrs::Standby
             : a == "prefer-standby" ? SessionAttrs::PreferStandby
                                     : SessionAttrs::Any;
  t->server_db = def.dbname.empty() ? db : def.dbname;
  t->startup_params.emplace_back("user", login_user);
  t->startup_params.emplace_back("database", t->server_db);
  if (!def.client_encoding.empty())
    t->startup_params.emplace_back("client_encoding", def.client_encoding);
  if (!def.datestyle.empty()) t->startup_params.emplace_back("datestyle", def.datestyle);
  if (!def.timezone.empty()) t->startup_params.emplace_back("timezone", def.timezone);
  if (!def.application_name.empty())
    t->startup_params.emplace_back("application_name", def.application_name);
  t->connect_query = def.connect_query;
  if (!def.connect_query.empty()) {
    std::vector<SessionStmt> stmts;
    lex_session_sql(def.connect_query, true, &stmts);
    for (const SessionStmt& st : stmts) t->connect_settings.apply(st);
  }
  return t;
}

bool Target::same_as(const Target& o) const {
  if (hosts.size() != o.hosts.size()) return false;
  for (size_t i = 0; i < hosts.size(); i++)
    if (hosts[i]->host != o.hosts[i]->host || hosts[i]->port != o.hosts[i]->port) return false;
  return round_robin == o.round_robin && attrs == o.attrs && server_db == o.server_db &&
         startup_params == o.startup_params && connect_query == o.connect_query;
}

AddrState Target::addr_state() const {
  bool pending = false;
  for (const auto& h : hosts) {
    AddrState st = h->addr_state();
    if (st == AddrState::Ready) return AddrState::Ready;
    if (st == AddrState::Pending) pending = true;
  }
  return pending ? AddrState::Pending : AddrState::Failed;
}

std::string Target::resolve_error() const {
  for (const auto& h : hosts)
    if (h->addr_state() == AddrState::Failed) return h->resolve_error();
  return {};
}

const AddrRecord* Target::usable_host(const TargetHost& h, double now) const {
  const AddrRecord* r = h.addr();
  if (r == nullptr || r->failed()) return nullptr;
  double until = h.held_until.load(std::memory_order_relaxed);
  return until == 0 || now >= until ? r : nullptr;
}

bool Target::usable(double now, const TargetHost* except) const {
  for (const auto& h : hosts)
    if (h.get() != except && usable_host(*h, now)) return true;
  return false;
}

bool Target::accepts(const std::vector<std::pair<std::string, std::string>>& params, bool others,
                     std::string* why) const {
  if (attrs == SessionAttrs::Any) return true;
  const std::string* standby = nullptr;
  const std::string* read_only = nullptr;
  for (const auto& [k, v] : params) {
    if (k == "in_hot_standby") standby = &v;
    if (k == "default_transaction_read_only") read_only = &v;
  }
  if (standby == nullptr || read_only == nullptr) {
    *why = "the server does not report in_hot_standby (PostgreSQL 14 or later is needed)";
    return false;
  }
  bool hot = *standby == "on", ro = *read_only == "on";
  bool ok = true;
  switch (attrs) {
    case SessionAttrs::Any:
      break;
    case SessionAttrs::ReadWrite:
      ok = !hot && !ro;
      break;
    case SessionAttrs::ReadOnly:
      ok = hot || ro;
      break;
    case SessionAttrs::Primary:
      ok = !hot;
      break;
    case SessionAttrs::Standby:
      ok = hot;
      break;
    case SessionAttrs::PreferStandby:
      ok = hot || !others;
      break;
  }
  if (!ok)
    *why = std::string(hot ? "a standby" : "a primary") + (ro ? ", read-only" : ", read-write");
  return ok;
}

TargetHost* Target::pick(double now, const TargetHost** moved_from, const AddrRecord** rec) {
  if (moved_from) *moved_from = nullptr;
  const AddrRecord* dummy = nullptr;
  if (rec == nullptr) rec = &dummy;
  const auto n = static_cast<uint32_t>(hosts.size());
  if (n == 1) return (*rec = usable_host(*hosts[0], now)) ? hosts[0].get() : nullptr;
  uint32_t start = round_robin ? next_.fetch_add(1, std::memory_order_relaxed) % n
                               : next_.load(std::memory_order_relaxed) % n;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = (start + i) % n;
    if (!(*rec = usable_host(*hosts[k], now))) continue;
    if (!round_robin && k != start) {
      // disable: the first usable host after the current one becomes current.
      uint32_t expect = start;
      if (next_.compare_exchange_strong(expect, k) && moved_from) *moved_from = hosts[start].get();
    }
    return hosts[k].get();
  }
  return nullptr;
}

std::string Target::describe() const {
  std::string out;
  for (const auto& h : hosts) {
    if (!out.empty()) out += ",";
    out += h->host + ":" + std::to_string(h->port);
  }
  return out;
}

Dial dial(const sockaddr_storage& addr, socklen_t len, const Config& tune) {
  Dial d;
  d.fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (d.fd < 0) {
    d.err = errno;
    return d;
  }
  if (addr.ss_family != AF_UNIX) tune_tcp_socket(d.fd, tune);
  if (::connect(d.fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0)
    d.done = true;
  else if (errno != EINPROGRESS && errno != EAGAIN)
    d.err = errno;
  return d;
}

}  // namespace pgsluice
