// Named prepared statements in transaction and statement pooling: registry, client map,
// server LRU.
#include "prepared.h"

#include <array>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "password.h"

namespace pgsluice {

const std::string& stmt_namespace() {
  static const std::string ns = [] {
    uint8_t r[8] = {};
    if (!random_bytes(r, sizeof r)) {  // never in practice; still not a constant
      uint64_t t =
          static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      std::memcpy(r, &t, sizeof r);
    }
    char hex[17];
    for (size_t i = 0; i < sizeof r; i++) std::snprintf(hex + 2 * i, 3, "%02X", r[i]);
    return "PGSLUICE_" + std::string(hex, 16) + "_";
  }();
  return ns;
}

std::string stmt_server_name(uint64_t id) {
  return stmt_namespace() + std::to_string(id);
}

void StmtEntry::accept(uint64_t pool_uid) const {
  std::lock_guard<std::mutex> g(mu_);
  for (uint64_t u : accepted_)
    if (u == pool_uid) return;
  if (accepted_.size() < 64) accepted_.push_back(pool_uid);  // beyond: asked of a server
}

bool StmtEntry::accepted(uint64_t pool_uid) const {
  std::lock_guard<std::mutex> g(mu_);
  for (uint64_t u : accepted_)
    if (u == pool_uid) return true;
  return false;
}

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
  e->server_name = stmt_server_name(e->id);
  e->body = key;
  e->touches_stmts = (sql_scan(key) & SqlScan::kTouchesStmts) != 0;
  // Drop expired entries now and then so the map does not grow with dead keys.
  if (by_body_.size() > 1024 && (next_id_ & 1023) == 0) {
    for (auto i = by_body_.begin(); i != by_body_.end();)
      i = i->second.expired() ? by_body_.erase(i) : std::next(i);
  }
  by_body_[std::move(key)] = e;
  return e;
}

std::shared_ptr<const StmtEntry> StmtRegistry::find(std::string_view body) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = by_body_.find(std::string(body));
  return it == by_body_.end() ? nullptr : it->second.lock();
}

size_t StmtRegistry::size() {
  std::lock_guard<std::mutex> g(mu_);
  size_t n = 0;
  for (auto& [k, w] : by_body_)
    if (!w.expired()) n++;
  return n;
}

const std::shared_ptr<const StmtEntry>* ClientStmts::find(std::string_view name) const {
  if (!map_) return nullptr;
  auto it = map_->find(name);
  return it == map_->end() ? nullptr : &it->second;
}

void ClientStmts::set(std::string_view name, std::shared_ptr<const StmtEntry> e) {
  if (!map_) map_ = std::make_unique<Map>();
  (*map_)[std::string(name)] = std::move(e);
}

const StmtEntry* ClientStmts::find_by_id(uint64_t id, int32_t tag, std::string_view* name) const {
  if (!map_) return nullptr;
  for (const auto& [n, e] : *map_) {
    if (e->id == id && name_tag(n) == tag) {
      *name = n;
      return e.get();
    }
  }
  return nullptr;
}

bool ClientStmts::erase(std::string_view name) {
  if (!map_) return false;
  auto it = map_->find(name);
  if (it == map_->end()) return false;
  map_->erase(it);
  return true;
}

bool ServerStmts::touch(uint64_t id, bool* verified) {
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  if (it->second.it != lru_.begin()) lru_.splice(lru_.begin(), lru_, it->second.it);
  if (verified != nullptr) *verified = it->second.epoch == epoch_;
  return true;
}

void ServerStmts::add(std::shared_ptr<const StmtEntry> e) {
  auto it = index_.find(e->id);
  if (it != index_.end()) {
    touch(e->id);
    it->second.epoch = epoch_;
    return;
  }
  uint64_t id = e->id;
  lru_.push_front(std::move(e));
  index_[id] = Slot{lru_.begin(), epoch_};
}

void ServerStmts::remove(uint64_t id) {
  pending_.erase(id);
  confirmed_.erase(id);
  auto it = index_.find(id);
  if (it == index_.end()) return;
  lru_.erase(it->second.it);
  index_.erase(it);
}

std::string ServerStmts::check_sql() {
  // pgsluice prepares SQL-level statements by SQL too: those it holds are left out of the
  // check and prepared again before their next use, which replaces whatever is there.
  std::string ids;
  for (const auto& e : lru_) {
    if (!is_sql_stmt(*e)) continue;
    unverify(e->id);
    if (!ids.empty()) ids += ',';
    ids += std::to_string(e->id);
  }
  // Every name and operator is qualified with pg_catalog, or is a key word: a session's
  // search_path may put the client's own objects first. A plain SELECT (no DO block to
  // compile): its tag says SELECT 0 when all is well (Server::process).
  std::string q =
      "SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql AND "
      "pg_catalog.starts_with(name, 'PGSLUICE_')";
  if (!ids.empty()) {
    q += " AND pg_catalog.array_position('{" + ids +
         "}'::pg_catalog.text[], pg_catalog.substr(name, " +
         std::to_string(stmt_namespace().size() + 1) + ")) IS NULL";
  }
  q += " LIMIT 1";
  return q;
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

namespace pgsluice {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
constexpr bool is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
constexpr bool is_ident(char c) {
  return is_ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}
constexpr char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

struct Lexer {
  std::string_view s;
  size_t i = 0;
  void skip_space() {
    while (i < s.size() && is_space(s[i])) i++;
  }
  // A keyword (case-insensitive), followed by a non-identifier character.
  bool keyword(std::string_view kw) {
    skip_space();
    if (s.size() - i < kw.size()) return false;
    for (size_t k = 0; k < kw.size(); k++)
      if (lower(s[i + k]) != kw[k]) return false;
    if (i + kw.size() < s.size() && is_ident(s[i + kw.size()])) return false;
    i += kw.size();
    return true;
  }
  bool identifier(std::string& out) {
    skip_space();
    out.clear();
    if (i < s.size() && s[i] == '"') {
      for (i++; i < s.size(); i++) {
        if (s[i] == '"') {
          if (i + 1 < s.size() && s[i + 1] == '"') {
            out.push_back('"');
            i++;
          } else {
            i++;
            return !out.empty();
          }
        } else {
          out.push_back(s[i]);
        }
      }
      return false;
    }
    if (i >= s.size() || !is_ident_start(s[i])) return false;
    while (i < s.size() && is_ident(s[i])) out.push_back(lower(s[i++]));
    return true;
  }
  // A parenthesised group, quotes respected; returns it with the parentheses.
  bool group(std::string& out) {
    skip_space();
    if (i >= s.size() || s[i] != '(') return false;
    size_t start = i;
    int depth = 0;
    char quote = 0;
    for (; i < s.size(); i++) {
      char c = s[i];
      if (quote) {
        if (c == quote) quote = 0;
      } else if (c == '\'' || c == '"') {
        quote = c;
      } else if (c == '(') {
        depth++;
      } else if (c == ')' && --depth == 0) {
        i++;
        out.assign(s.substr(start, i - start));
        return true;
      }
    }
    return false;
  }
};

// The text with a trailing ';' and white space removed; false when a ';' outside quotes
// and dollar quotes remains (several statements: left alone).
bool single_statement(std::string_view t, std::string& out) {
  while (!t.empty() && (is_space(t.back()) || t.back() == ';')) t.remove_suffix(1);
  char quote = 0;
  for (size_t i = 0; i < t.size(); i++) {
    char c = t[i];
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if ((c == '$' && i + 1 < t.size() && (t[i + 1] == '$' || is_ident_start(t[i + 1]))) ||
               c == ';' || (c == '-' && i + 1 < t.size() && t[i + 1] == '-') ||
               (c == '/' && i + 1 < t.size() && t[i + 1] == '*')) {
      return false;  // dollar quotes, comments and several statements: not ours to touch
    }
  }
  if (quote) return false;
  out.assign(t);
  return true;
}

// Case-insensitive: does `word` (lower case) start at s[i]?
bool word_at(std::string_view s, size_t i, std::string_view word) {
  if (s.size() - i < word.size()) return false;
  for (size_t k = 0; k < word.size(); k++)
    if (lower(s[i + k]) != word[k]) return false;
  return true;
}

}  // namespace

void SqlScan::feed(std::string_view piece) {
  if (tail_.empty()) {
    flags |= sql_scan(piece);
  } else {
    std::string joined = tail_ + std::string(piece);
    flags |= sql_scan(joined);
    piece = joined;
    tail_.clear();
    size_t keep = piece.size() < 40 ? piece.size() : 40;
    tail_.assign(piece.substr(piece.size() - keep));
    return;
  }
  size_t keep = piece.size() < 40 ? piece.size() : 40;  // longer than any pattern
  tail_.assign(piece.substr(piece.size() - keep));
}

namespace {
// sql_scan's byte classes: what may start a match, and what continues an identifier
// (is_ident). One table lookup per byte; the comparisons run only at a 'p', 'd' or 'e'.
constexpr uint8_t kScanIdent = 1, kScanP = 2, kScanDE = 4;
constexpr std::array<uint8_t, 256> kScanClass = [] {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; c++) {
    char ch = static_cast<char>(c);
    uint8_t v = is_ident(ch) ? kScanIdent : 0;
    char l = lower(ch);
    if (l == 'p') v |= kScanP;
    if (l == 'd' || l == 'e') v |= kScanDE;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}();
}  // namespace

uint8_t sql_scan(std::string_view s) {
  static constexpr std::string_view kWords[] = {"prepare", "deallocate", "discard", "execute"};
  uint8_t flags = 0;
  bool prev_ident = false;  // is_ident(s[i - 1])
  for (size_t i = 0; i < s.size(); i++) {
    uint8_t k = kScanClass[static_cast<unsigned char>(s[i])];
    if (!(k & (kScanP | kScanDE))) {
      prev_ident = k & kScanIdent;
      continue;
    }
    // Both pg_prepared_statement and the namespace ("PGSLUICE_...") start with "pg", and
    // are found anywhere, not only at the start of a word.
    if ((k & kScanP) && i + 1 < s.size() && lower(s[i + 1]) == 'g') {
      if (word_at(s, i, "pg_prepared_statement")) flags |= SqlScan::kTouchesStmts;
      const std::string& ns = stmt_namespace();
      if (s.size() - i >= ns.size()) {
        bool same = true;
        for (size_t n = 0; n < ns.size() && same; n++) same = lower(s[i + n]) == lower(ns[n]);
        if (same) flags |= SqlScan::kNamesNamespace;
      }
    }
    if (!prev_ident) {  // a word starts here
      char c = lower(s[i]);
      for (std::string_view w : kWords) {
        if (w[0] != c || !word_at(s, i, w)) continue;
        size_t end = i + w.size();
        if (end == s.size() || !is_ident(s[end])) flags |= SqlScan::kTouchesStmts;
      }
    }
    prev_ident = true;  // p, d and e are identifier characters
  }
  return flags;
}

int sql_prepared_prefix(std::string_view text, bool complete, size_t* resume) {
  size_t i = resume != nullptr && *resume <= text.size() ? *resume : 0;
  while (i < text.size() && is_space(text[i])) i++;
  size_t start = i;  // white space before it is settled; the word is re-read (12 bytes at most)
  std::string word;
  while (i < text.size() && is_ident(text[i]) && word.size() < 12) word.push_back(lower(text[i++]));
  if (i == text.size() && !complete && word.size() < 11) {
    if (resume != nullptr) *resume = start;
    return -1;
  }
  return (word == "prepare" || word == "execute" || word == "deallocate") ? 1 : 0;
}

SqlPrepared parse_sql_prepared(std::string_view text) {
  SqlPrepared r;
  std::string body;
  if (!single_statement(text, body)) return r;
  Lexer lx{body};
  if (lx.keyword("prepare")) {
    if (!lx.identifier(r.name)) return r;
    size_t save = lx.i;
    if (!lx.group(r.types)) lx.i = save;
    if (!lx.keyword("as")) return r;
    lx.skip_space();
    r.statement.assign(body.substr(lx.i));
    if (r.statement.empty()) return r;
    r.kind = SqlPrepared::Kind::Prepare;
  } else if (lx.keyword("execute")) {
    if (!lx.identifier(r.name)) return r;
    size_t save = lx.i;
    if (!lx.group(r.args)) lx.i = save;
    lx.skip_space();
    if (lx.i != body.size()) return r;
    r.kind = SqlPrepared::Kind::Execute;
  } else if (lx.keyword("deallocate")) {
    lx.keyword("prepare");
    if (lx.keyword("all")) return r;  // DEALLOCATE ALL: the server's tag clears everything
    if (!lx.identifier(r.name)) return r;
    lx.skip_space();
    if (lx.i != body.size()) return r;
    r.kind = SqlPrepared::Kind::Deallocate;
  }
  return r;
}

std::string sql_stmt_key(std::string_view types, std::string_view statement) {
  // The length of the types first: any byte but NUL may appear in either part.
  std::string k = "\x01";
  k += std::to_string(types.size());
  k += '\x02';
  k += types;
  k += statement;
  return k;
}

bool is_sql_stmt(const StmtEntry& e) {
  // A Parse body always holds its query's NUL; a query text (and so this key) never does.
  return !e.body.empty() && e.body[0] == '\x01' && e.body.find('\0') == std::string::npos;
}

std::string sql_prepare_text(const StmtEntry& e) {
  std::string_view b(e.body);  // "\x01" <length of types> "\x02" types statement
  size_t sep = b.find('\x02');
  size_t n = 0;
  std::from_chars(b.data() + 1, b.data() + sep, n);
  std::string_view types = b.substr(sep + 1, n);
  std::string_view stmt = b.substr(sep + 1 + types.size());
  // Quoted: unquoted, PostgreSQL would fold it to lower case, and the protocol-level Close
  // that evicts it or prepares it afresh (Server::make_room, close_if_stale) names it as is.
  std::string t = "PREPARE \"" + e.server_name + "\"";
  if (!types.empty()) {
    t += ' ';
    t += types;
  }
  t += " AS ";
  t += stmt;
  return t;
}

}  // namespace pgsluice
