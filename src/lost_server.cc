// A server lost while linked: the client's answer to what it had sent, and the aborted
// transaction block it is then kept in, answered without a server (see lost_server.h).
#include "lost_server.h"

#include "client.h"
#include "log.h"
#include "pool.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {

constexpr const char* kAborted =
    "current transaction is aborted, commands ignored until end of transaction block";
constexpr const char* kLost = "server connection was lost";
// Messages up to this size are read whole in the emulated block; a larger one cannot be a
// transaction-exit statement (nor its Bind, Describe, Execute or Close).
constexpr size_t kLostWhole = 8 * 1024;
constexpr size_t kLostNames = 64;  // LostState::names (no remapping)

bool blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool ident_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
bool ident_char(unsigned char c) {
  return ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}

// One token of the few a transaction-exit statement is made of.
struct Tok {
  enum Kind : uint8_t { Word, Quoted, String, Semi, Bad } kind;
  std::string text;  // Word: lower-cased; Quoted: the name; String: raw
};

// Splits sql into tokens; false on anything an exit statement cannot hold.
bool lex(std::string_view s, std::vector<Tok>* out) {
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (blank(c)) {
      i++;
    } else if (c == '-' && i + 1 < s.size() && s[i + 1] == '-') {
      while (i < s.size() && s[i] != '\n' && s[i] != '\r') i++;
    } else if (c == '/' && i + 1 < s.size() && s[i + 1] == '*') {
      int depth = 0;
      while (i < s.size()) {
        if (s[i] == '/' && i + 1 < s.size() && s[i + 1] == '*') {
          depth++;
          i += 2;
        } else if (s[i] == '*' && i + 1 < s.size() && s[i + 1] == '/') {
          i += 2;
          if (--depth == 0) break;
        } else {
          i++;
        }
      }
      if (depth != 0) return false;  // unterminated: PostgreSQL's syntax error
    } else if (c == ';') {
      out->push_back(Tok{Tok::Semi, {}});
      i++;
    } else if (c == '"' || c == '\'') {
      std::string v;
      size_t j = i + 1;
      bool closed = false;
      while (j < s.size()) {
        if (s[j] == c) {
          if (j + 1 < s.size() && s[j + 1] == c) {
            v.push_back(c);
            j += 2;
            continue;
          }
          closed = true;
          j++;
          break;
        }
        v.push_back(s[j++]);
      }
      if (!closed || (c == '"' && v.empty())) return false;
      if (c == '\'' && v.find('\\') != std::string::npos) return false;  // leave it to others
      out->push_back(Tok{c == '"' ? Tok::Quoted : Tok::String, std::move(v)});
      i = j;
    } else if (ident_start(static_cast<unsigned char>(c))) {
      size_t j = i;
      std::string w;
      while (j < s.size() && ident_char(static_cast<unsigned char>(s[j]))) {
        char d = s[j++];
        w.push_back(d >= 'A' && d <= 'Z' ? static_cast<char>(d - 'A' + 'a') : d);
      }
      // A word followed at once by a quote is a prefixed literal (E'', U&"", B'', X''):
      // not part of any exit statement.
      if (j < s.size() && (s[j] == '\'' || s[j] == '"' || s[j] == '&')) return false;
      out->push_back(Tok{Tok::Word, std::move(w)});
      i = j;
    } else {
      return false;
    }
  }
  return true;
}

bool is_word(const std::vector<Tok>& t, size_t i, std::string_view w) {
  return i < t.size() && t[i].kind == Tok::Word && t[i].text == w;
}

void add_error(std::string& out, std::string_view sqlstate, std::string_view msg) {
  wire::error_response(out, "ERROR", sqlstate, msg);
}

// The text of a Parse body (the statement name already read): up to its NUL.
std::string_view parse_text(wire::Reader& r) {
  std::string_view text;
  if (!r.cstr(text)) return {};
  return text;
}

std::string quoted(std::string_view what, std::string_view name, std::string_view tail) {
  return std::string(what) + " \"" + std::string(name) + "\" " + std::string(tail);
}

}  // namespace

TxExit classify_tx_exit(std::string_view sql, std::string* savepoint) {
  std::vector<Tok> all;
  if (!lex(sql, &all)) return TxExit::Other;
  // Statements: only one may be non-empty.
  std::vector<Tok> t;
  bool seen = false;
  for (size_t i = 0; i < all.size(); i++) {
    if (all[i].kind == Tok::Semi) {
      if (!t.empty()) seen = true;
      continue;
    }
    if (seen) return TxExit::Other;  // a second statement
    t.push_back(std::move(all[i]));
  }
  if (t.empty()) return TxExit::Empty;
  size_t i = 1;
  const std::string& w = t[0].kind == Tok::Word ? t[0].text : std::string();
  if (w == "prepare")
    return is_word(t, 1, "transaction") && t.size() == 3 && t[2].kind == Tok::String
               ? TxExit::End
               : TxExit::Other;
  bool rollback = w == "rollback" || w == "abort";
  if (!rollback && w != "commit" && w != "end") return TxExit::Other;
  if (is_word(t, i, "work") || is_word(t, i, "transaction")) i++;
  if (w == "rollback" && is_word(t, i, "to")) {
    i++;
    if (is_word(t, i, "savepoint") && i + 1 < t.size()) i++;
    if (i + 1 != t.size() || (t[i].kind != Tok::Word && t[i].kind != Tok::Quoted))
      return TxExit::Other;
    if (savepoint != nullptr) *savepoint = t[i].text;
    return TxExit::ToSavepoint;
  }
  bool chain = false;
  if (is_word(t, i, "and")) {
    i++;
    bool no = is_word(t, i, "no");
    if (no) i++;
    if (!is_word(t, i, "chain")) return TxExit::Other;
    i++;
    chain = !no;
  }
  if (i != t.size()) return TxExit::Other;
  return chain ? TxExit::Chain : TxExit::End;
}

std::string error_as_error(std::span<const uint8_t> body) {
  std::string out;
  wire::Writer w(out);
  w.begin('E');
  wire::Reader r(body);
  for (;;) {
    uint8_t code = 0;
    std::string_view v;
    if (!r.u8(code) || code == 0 || !r.cstr(v)) break;
    w.u8(code).cstr(code == 'S' || code == 'V' ? std::string_view("ERROR") : v);
  }
  w.u8(0).end();
  return out;
}

bool error_is_fatal(std::span<const uint8_t> body) {
  std::string sev = wire::parse_error(body).severity;
  return sev == "FATAL" || sev == "PANIC";
}

// ---------------------------------------------------------------- the client's side

void Client::server_lost(const LostServer& l) {
  const bool block = l.tx == 'T' || l.tx == 'E';
  std::string first = l.error;
  if (first.empty()) add_error(first, "08006", kLost);
  std::string later;
  add_error(later, block ? "25P02" : "08006", block ? kAborted : kLost);
  const char z = block ? 'E' : 'I';
  lost_ = std::make_unique<LostState>();
  std::string m;
  // Each cycle already sent gets one error and its ReadyForQuery; a segment whose Sync has
  // not been sent gets its error now, and the rest of it is skipped up to that Sync.
  for (size_t i = 0; i < l.cycles; i++) {
    if (i > 0 || !l.answered) m += i == 0 ? first : later;
    wire::ready_for_query(m, z);
  }
  if (l.tail) {
    if (l.cycles > 0 || !l.answered) m += l.cycles == 0 ? first : later;
    lost_->skip = true;
  }
  // Idle in a transaction block: the next request learns it.
  if (l.cycles == 0 && !l.tail && block) lost_->error = std::move(first);
  lost_->tx = block ? 'E' : 0;
  lost_->copy = copy_in_;  // the rest of its COPY data is dropped, as PostgreSQL does
  copy_in_ = false;
  lost_->drop = fwd_remaining_;  // the rest of a message half sent to the dead server
  fwd_remaining_ = 0;
  qscan_active_ = false;
  stalled_ = false;
  seg_fresh_ = true;
  seg_ok_ = false;
  scan_restart();
  LOG_WARN("C-%p: %s/%s@%s:%d server connection lost; the client stays connected%s",
           static_cast<void*>(this), db_.c_str(), user_.c_str(), addr_.host.c_str(), addr_.port,
           block ? " in an aborted transaction block" : "");
  lost_settle();  // nothing owed (autocommit, every cycle answered): back to normal
  worker_->bufs().append(out_, m.data(), m.size());
  want_read(true);
  flush();
  if (in_.empty()) return;
  if (forwarding_)
    reforward_ = true;  // the pass under way ends first
  else
    process();
}

void Client::lost_drop(size_t total) {
  size_t n = in_.size() < total ? in_.size() : total;
  in_.rpos += n;
  lost_->drop = total - n;
}

void Client::lost_answer(std::string_view sqlstate, std::string_view msg, uint8_t type) {
  std::string m;
  add_error(m, sqlstate, msg);
  if (type == 'Q' || type == 'F' || type == 'S')
    wire::ready_for_query(m, lost_->tx == 'E' ? 'E' : 'I');
  else
    lost_->skip = true;  // extended protocol: skip to the Sync
  worker_->bufs().append(out_, m.data(), m.size());
}

const std::string* Client::lost_stmt_text(std::string_view name, std::string* buf) const {
  for (const auto& [n, text] : lost_->names)
    if (n == name) return &text;
  if (!remap_) return nullptr;
  if (name.empty() && !cache_unnamed_) {
    if (!stmts_.has_unnamed) return nullptr;
    if (remap_state_ == nullptr) return nullptr;
    buf->assign(remap_state_->unnamed_body.c_str());  // up to its NUL
    return buf;
  }
  const auto* e = stmts_.find(name);
  if (e == nullptr) return nullptr;
  buf->assign((*e)->body.c_str());
  return buf;
}

int Client::lost_message(uint8_t type, size_t len) {
  int r = lost_step(type, len);
  if (r >= 0) lost_settle();
  return r;
}

int Client::lost_step(uint8_t type, size_t len) {
  const size_t total = len + 1;
  if (type == 'd' || type == 'c' || type == 'f') {
    // COPY data with no COPY running: PostgreSQL drops it (after a failed COPY above all).
    if (type != 'd') lost_->copy = false;
    lost_drop(total);
    return 1;
  }
  lost_->copy = false;
  if (lost_->skip) {
    lost_drop(total);
    if (type == 'S') {
      lost_->skip = false;
      std::string m;
      wire::ready_for_query(m, lost_->tx == 'E' ? 'E' : 'I');
      worker_->bufs().append(out_, m.data(), m.size());
      if (lost_->tx == 'I') lost_->tx = 0;
    }
    return 1;
  }
  if (!lost_->error.empty()) {
    if (type == 'H') {
      lost_drop(total);
      return 1;
    }
    worker_->bufs().append(out_, lost_->error.data(), lost_->error.size());
    lost_->error.clear();
    lost_drop(total);
    if (type == 'Q' || type == 'F' || type == 'S') {
      std::string m;
      wire::ready_for_query(m, lost_->tx == 'E' ? 'E' : 'I');
      worker_->bufs().append(out_, m.data(), m.size());
    } else {
      lost_->skip = true;
    }
    return 1;
  }
  if (lost_->tx == 0) return 0;
  if (lost_->tx == 'I') {
    // Rolled back by an Execute in this segment: its Sync says so; anything else goes on
    // to a server as usual.
    if (type != 'S') {
      lost_->tx = 0;
      lost_->names.clear();
      return 0;
    }
    lost_drop(total);
    lost_->tx = 0;
    lost_->names.clear();
    std::string m;
    wire::ready_for_query(m, 'I');
    worker_->bufs().append(out_, m.data(), m.size());
    return 1;
  }
  // The aborted block ('E').
  if (total > kLostWhole) {
    lost_drop(total);
    lost_answer("25P02", kAborted, type);
    return 1;
  }
  if (in_.size() < total) {
    worker_->bufs().reserve(in_, total - in_.size());
    return -1;
  }
  wire::Reader r(in_.begin() + wire::kHeaderLen, len - 4);
  std::string m;
  std::string buf;
  switch (type) {
    case 'Q': {
      std::string_view text;
      (void)r.cstr(text);
      if (remap_) {  // a simple query drops the unnamed statement, even here
        if (cache_unnamed_) stmts_.erase(std::string_view());
        stmts_.has_unnamed = false;
        ++unnamed_gen_;
      }
      std::erase_if(lost_->names, [](const auto& p) { return p.first.empty(); });
      in_.rpos += total;
      std::string sp;
      switch (classify_tx_exit(text, &sp)) {
        case TxExit::End:
          wire::Writer(m).begin('C').cstr("ROLLBACK").end();
          wire::ready_for_query(m, 'I');
          lost_->tx = 0;
          lost_->names.clear();
          worker_->bufs().append(out_, m.data(), m.size());
          return 1;
        case TxExit::Empty:
          wire::Writer(m).begin('I').end();
          wire::ready_for_query(m, 'E');
          worker_->bufs().append(out_, m.data(), m.size());
          return 1;
        case TxExit::ToSavepoint:
          lost_answer("3B001", quoted("savepoint", sp, "does not exist"), type);
          return 1;
        case TxExit::Chain:
          lost_answer("0A000",
                      "a transaction lost with its server connection cannot be chained; "
                      "end it with ROLLBACK",
                      type);
          return 1;
        case TxExit::Other:
          lost_answer("25P02", kAborted, type);
          return 1;
      }
      return 1;
    }
    case 'P': {
      std::string_view name;
      (void)r.cstr(name);
      auto rest = r.rest();
      std::string_view body(reinterpret_cast<const char*>(rest.data()), rest.size());
      std::string_view text = parse_text(r);
      std::string name_s(name);
      in_.rpos += total;
      if (classify_tx_exit(text) == TxExit::Other) {
        lost_answer("25P02", kAborted, type);
        return 1;
      }
      if (!name.empty() && lost_stmt_text(name, &buf) != nullptr) {
        lost_answer("42P05", quoted("prepared statement", name_s, "already exists"), type);
        return 1;
      }
      if (remap_ && (!name_s.empty() || cache_unnamed_)) {
        stmts_.set(name_s, stmt_registry().get(body));  // prepared on its next server
      } else if (remap_) {
        remap_state().unnamed_body.assign(body);
        stmts_.has_unnamed = true;
        ++unnamed_gen_;
      } else {
        // Without remapping the names live on servers: kept here until the block ends,
        // a few at most (a scan per message).
        std::erase_if(lost_->names, [&](const auto& p) { return p.first == name_s; });
        if (lost_->names.size() >= kLostNames) {
          lost_answer("54000", "too many statements prepared after the server connection was lost",
                      type);
          return 1;
        }
        lost_->names.emplace_back(name_s, std::string(text));
      }
      wire::Writer(m).begin('1').end();
      break;
    }
    case 'B': {
      std::string_view portal, name;
      (void)r.cstr(portal);
      (void)r.cstr(name);
      std::string portal_s(portal), name_s(name);
      in_.rpos += total;
      const std::string* text = lost_stmt_text(name_s, &buf);
      if (text == nullptr) {
        lost_answer("26000",
                    name_s.empty() ? std::string("unnamed prepared statement does not exist")
                                   : quoted("prepared statement", name_s, "does not exist"),
                    type);
        return 1;
      }
      std::string sp;
      TxExit k = classify_tx_exit(*text, &sp);
      if (k == TxExit::Other) {
        lost_answer("25P02", kAborted, type);
        return 1;
      }
      lost_->portal_set = true;
      lost_->portal = portal_s;
      lost_->portal_kind = k;
      lost_->portal_savepoint = sp;
      wire::Writer(m).begin('2').end();
      break;
    }
    case 'E': {
      std::string_view portal;
      (void)r.cstr(portal);
      in_.rpos += total;
      if (!lost_->portal_set || lost_->portal != portal) {
        lost_answer("34000", quoted("portal", portal, "does not exist"), type);
        return 1;
      }
      lost_->portal_set = false;
      switch (lost_->portal_kind) {
        case TxExit::End:
          wire::Writer(m).begin('C').cstr("ROLLBACK").end();
          lost_->tx = 'I';  // until the Sync
          break;
        case TxExit::Empty:
          wire::Writer(m).begin('I').end();
          break;
        case TxExit::ToSavepoint:
          lost_answer("3B001", quoted("savepoint", lost_->portal_savepoint, "does not exist"),
                      type);
          return 1;
        default:
          lost_answer("0A000",
                      "a transaction lost with its server connection cannot be chained; "
                      "end it with ROLLBACK",
                      type);
          return 1;
      }
      break;
    }
    case 'D': {
      uint8_t kind = 0;
      std::string_view name;
      (void)r.u8(kind);
      (void)r.cstr(name);
      std::string name_s(name);
      in_.rpos += total;
      if (kind == 'P') {
        if (!lost_->portal_set || lost_->portal != name_s) {
          lost_answer("34000", quoted("portal", name_s, "does not exist"), type);
          return 1;
        }
        wire::Writer(m).begin('n').end();
        break;
      }
      const std::string* text = lost_stmt_text(name_s, &buf);
      if (text == nullptr) {
        lost_answer("26000",
                    name_s.empty() ? std::string("unnamed prepared statement does not exist")
                                   : quoted("prepared statement", name_s, "does not exist"),
                    type);
        return 1;
      }
      if (classify_tx_exit(*text) == TxExit::Other) {
        lost_answer("25P02", kAborted, type);
        return 1;
      }
      wire::Writer(m).begin('t').i16(0).end();
      wire::Writer(m).begin('n').end();
      break;
    }
    case 'C': {
      uint8_t kind = 0;
      std::string_view name;
      (void)r.u8(kind);
      (void)r.cstr(name);
      std::string name_s(name);
      in_.rpos += total;
      if (kind == 'P') {
        if (lost_->portal_set && lost_->portal == name_s) lost_->portal_set = false;
      } else {
        std::erase_if(lost_->names, [&](const auto& p) { return p.first == name_s; });
        if (remap_ && (!name_s.empty() || cache_unnamed_))
          stmts_.erase(name_s);
        else if (remap_)
          stmts_.has_unnamed = false;
      }
      wire::Writer(m).begin('3').end();
      break;
    }
    case 'S':
      in_.rpos += total;
      wire::ready_for_query(m, 'E');
      break;
    case 'H':
      in_.rpos += total;
      break;
    default:  // 'F', and anything else PostgreSQL would refuse here
      in_.rpos += total;
      lost_answer("25P02", kAborted, type);
      return 1;
  }
  if (!m.empty()) worker_->bufs().append(out_, m.data(), m.size());
  return 1;
}

}  // namespace pgsluice
