// Named prepared statements in transaction and statement pooling: registry, client map,
// server LRU.
#include "prepared.h"

namespace pgsluice {

StmtRegistry& stmt_registry() {
  static StmtRegistry r;
  return r;
}

std::shared_ptr<const StmtEntry> StmtRegistry::get(std::string_view body) {
  std::lock_guard<std::mutex> g(mu_);
  std::string key(body);
  auto it = by_body_.find(key);
  if (it != by_body_.end()) {
    if (auto e = it->second.lock()) return e;
  }
  auto e = std::make_shared<StmtEntry>();
  e->id = ++next_id_;
  e->server_name = "PGSLUICE_" + std::to_string(e->id);
  e->body = key;
  // Drop expired entries now and then so the map does not grow with dead keys.
  if (by_body_.size() > 1024 && (next_id_ & 1023) == 0) {
    for (auto i = by_body_.begin(); i != by_body_.end();)
      i = i->second.expired() ? by_body_.erase(i) : std::next(i);
  }
  by_body_[std::move(key)] = e;
  return e;
}

size_t StmtRegistry::size() {
  std::lock_guard<std::mutex> g(mu_);
  size_t n = 0;
  for (auto& [k, w] : by_body_)
    if (!w.expired()) n++;
  return n;
}

const std::shared_ptr<const StmtEntry>* ClientStmts::find(std::string_view name) const {
  auto it = map_.find(name);
  return it == map_.end() ? nullptr : &it->second;
}

void ClientStmts::set(std::string_view name, std::shared_ptr<const StmtEntry> e) {
  map_[std::string(name)] = std::move(e);
}

bool ClientStmts::erase(std::string_view name) {
  auto it = map_.find(name);
  if (it == map_.end()) return false;
  map_.erase(it);
  return true;
}

bool ServerStmts::touch(uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  if (it->second != lru_.begin()) lru_.splice(lru_.begin(), lru_, it->second);
  return true;
}

void ServerStmts::add(std::shared_ptr<const StmtEntry> e) {
  if (touch(e->id)) return;
  uint64_t id = e->id;
  lru_.push_front(std::move(e));
  index_[id] = lru_.begin();
}

void ServerStmts::remove(uint64_t id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  lru_.erase(it->second);
  index_.erase(it);
}

std::shared_ptr<const StmtEntry> ServerStmts::lru() const {
  return lru_.empty() ? nullptr : lru_.back();
}

std::string rename_in_message(std::string_view msg, std::string_view from, std::string_view to) {
  std::string quoted = "\"" + std::string(from) + "\"";
  size_t pos = msg.find(quoted);
  if (pos == std::string_view::npos) return std::string(msg);
  std::string out(msg.substr(0, pos));
  out += '"';
  out += to;
  out += '"';
  out += msg.substr(pos + quoted.size());
  return out;
}

}  // namespace pgsluice
