// Session settings: the SET/RESET lexer, PostgreSQL's transaction rules, the restoring SQL.
#include "session_state.h"

#include <algorithm>

#include "log.h"
#include "state_routines.h"
#include "varcache.h"

namespace pgsluice {

namespace {

enum class Tok : uint8_t { End, Semi, Word, Ident, String, Op };

struct Token {
  Tok kind = Tok::End;
  std::string_view text;  // as written (quotes included)
  bool space_before = false;
  bool open = false;  // a quote not closed before the end of the text
};

bool word_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
bool word_char(unsigned char c) {
  return word_start(c) || (c >= '0' && c <= '9') || c == '$';
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

// Reads SQL tokens as PostgreSQL's scanner splits them, as far as statement boundaries
// and the shapes of SET/RESET need: whitespace and comments are skipped (remembered as a
// space), strings, quoted identifiers and dollar quotes are single tokens.
class Lexer {
 public:
  Lexer(std::string_view t, bool scs) : t_(t), scs_(scs) {}
  Token next() {
    Token tk;
    tk.space_before = skip_space();
    if (p_ >= t_.size()) {
      done_ = true;
      return tk;
    }
    size_t s = p_;
    auto c = static_cast<unsigned char>(t_[p_]);
    if (c == ';') {
      p_++;
      tk.kind = Tok::Semi;
      done_ = true;
    } else if (c == '\'') {
      tk.open = !quoted('\'', !scs_);
      tk.kind = Tok::String;
    } else if (c == '"') {
      tk.open = !quoted('"', false);
      tk.kind = Tok::Ident;
    } else if (c == '$' && dollar(&tk.open)) {
      tk.kind = Tok::String;
    } else if ((c == 'e' || c == 'E') && p_ + 1 < t_.size() && t_[p_ + 1] == '\'') {
      p_++;
      tk.open = !quoted('\'', true);
      tk.kind = Tok::String;
    } else if (word_start(c)) {
      while (p_ < t_.size() && word_char(static_cast<unsigned char>(t_[p_]))) p_++;
      tk.kind = Tok::Word;
      // B'..', X'..', N'..', U&'..' are strings with a prefix: the prefix word stays apart.
    } else if (c >= '0' && c <= '9') {
      while (p_ < t_.size() && (word_char(static_cast<unsigned char>(t_[p_])) || t_[p_] == '.'))
        p_++;
      tk.kind = Tok::Word;
    } else {
      p_++;
      tk.kind = Tok::Op;
    }
    tk.text = t_.substr(s, p_ - s);
    return tk;
  }
  bool scs() const { return scs_; }
  // Whether the current statement's ';' (or the text's end) was read.
  void begin_statement() { done_ = false; }
  bool statement_done() const { return done_; }
  // Skips to the end of the statement (past its ';'); false at the end of the text.
  void skip_statement() {
    for (;;) {
      Token tk = next();
      if (tk.kind == Tok::End || tk.kind == Tok::Semi) return;
    }
  }

 private:
  bool skip_space() {
    bool any = false;
    while (p_ < t_.size()) {
      char c = t_[p_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
        p_++;
      } else if (c == '-' && p_ + 1 < t_.size() && t_[p_ + 1] == '-') {
        size_t e = t_.find('\n', p_);
        p_ = e == std::string_view::npos ? t_.size() : e + 1;
      } else if (c == '/' && p_ + 1 < t_.size() && t_[p_ + 1] == '*') {
        int depth = 1;  // PostgreSQL's block comments nest
        p_ += 2;
        while (p_ < t_.size() && depth > 0) {
          if (t_[p_] == '/' && p_ + 1 < t_.size() && t_[p_ + 1] == '*') {
            depth++;
            p_ += 2;
          } else if (t_[p_] == '*' && p_ + 1 < t_.size() && t_[p_ + 1] == '/') {
            depth--;
            p_ += 2;
          } else {
            p_++;
          }
        }
      } else {
        break;
      }
      any = true;
    }
    return any;
  }
  // From an opening quote to its closing one ('' or "" inside are the quote itself); false
  // when the text ends first.
  bool quoted(char q, bool backslash) {
    p_++;
    while (p_ < t_.size()) {
      char c = t_[p_];
      if (backslash && c == '\\') {
        p_ += 2;
        continue;
      }
      p_++;
      if (c == q) {
        if (p_ < t_.size() && t_[p_] == q) {
          p_++;
          continue;
        }
        return true;
      }
    }
    p_ = t_.size();
    return false;
  }
  // $tag$ ... $tag$; false (nothing consumed) when the '$' starts no dollar quote; *open
  // when the text ends before the closing tag.
  bool dollar(bool* open) {
    size_t i = p_ + 1;
    if (i < t_.size() && t_[i] != '$') {
      if (!word_start(static_cast<unsigned char>(t_[i])) || t_[i] == '$') return false;
      while (i < t_.size() && t_[i] != '$') {
        auto c = static_cast<unsigned char>(t_[i]);
        if (!word_start(c) && !(c >= '0' && c <= '9')) return false;
        i++;
      }
    }
    if (i >= t_.size()) return false;
    std::string_view tag = t_.substr(p_, i + 1 - p_);
    size_t e = t_.find(tag, i + 1);
    *open = e == std::string_view::npos;
    p_ = *open ? t_.size() : e + tag.size();
    return true;
  }
  std::string_view t_;
  bool scs_;
  size_t p_ = 0;
  bool done_ = false;
};

bool is_word(const Token& t, std::string_view w) {
  return t.kind == Tok::Word && iequals(t.text, w);
}

// The rest of a statement as one value text: tokens as written, one space where the
// client had whitespace or a comment. `first` is its first token.
// v ends with U& (the prefix of a Unicode-escape string, whose backslashes stay as they are).
bool unicode_prefix(std::string_view v) {
  if (v.size() < 2 || v.back() != '&' || (v[v.size() - 2] | 0x20) != 'u') return false;
  return v.size() == 2 || !word_char(static_cast<unsigned char>(v[v.size() - 3]));
}

std::string value_text(Lexer& lx, Token first, size_t* ntok = nullptr, Token* last = nullptr) {
  std::string v;
  size_t n = 0;
  bool bad = false;
  for (Token tk = first; tk.kind != Tok::End && tk.kind != Tok::Semi; tk = lx.next()) {
    if (n > 0 && tk.space_before) v += ' ';
    if (tk.kind == Tok::String && tk.text[0] == '\'' &&
        tk.text.find('\\') != std::string_view::npos && !unicode_prefix(v)) {
      // A backslash in a plain string means what standard_conforming_strings said when
      // the client sent it; written E'...' it means the same under either (U&'...' stays).
      if (!v.empty() && v.back() != ' ') v += ' ';  // an E glued to a word would join it
      v += 'E';
      if (lx.scs()) {
        for (char ch : tk.text) {
          v += ch;
          if (ch == '\\') v += '\\';
        }
      } else {
        v.append(tk.text);
      }
    } else {
      v.append(tk.text);
    }
    n++;
    if (last != nullptr) *last = tk;
    if (tk.open) bad = true;
  }
  // A quote left open is a syntax error (PostgreSQL refuses the statement): no value.
  if (ntok != nullptr) *ntok = bad ? 0 : n;
  return v;
}

// A savepoint or parameter name token, folded as PostgreSQL folds identifiers (a
// parameter's name is then lower-cased whole: GUC names are case-insensitive).
std::string ident_key(const Token& t) {
  if (t.kind == Tok::Ident) {
    std::string r;
    std::string_view in = t.text.substr(1, t.text.size() >= 2 ? t.text.size() - 2 : 0);
    for (size_t i = 0; i < in.size(); i++) {
      r += in[i];
      if (in[i] == '"' && i + 1 < in.size() && in[i + 1] == '"') i++;
    }
    return r;
  }
  return lower(t.text);
}

// The value of SET ROLE / SESSION AUTHORIZATION / TIME ZONE / ...: "special" (NONE,
// DEFAULT, LOCAL, as asked) alone means a reset.
void set_special(SessionStmt& st, Lexer& lx, std::string_view key, std::string_view prefix,
                 std::string_view reset_sql, std::string_view reset_word1,
                 std::string_view reset_word2) {
  Token first = lx.next();
  size_t n = 0;
  Token last;
  std::string v = value_text(lx, first, &n, &last);
  st.key = std::string(key);
  if (n == 0) {
    st.kind = StmtKind::Other;  // a syntax error: PostgreSQL refuses it
    return;
  }
  if (n == 1 &&
      (is_word(first, reset_word1) || (!reset_word2.empty() && is_word(first, reset_word2)))) {
    st.kind = StmtKind::Reset;
    st.sql = std::string(reset_sql);
    return;
  }
  st.kind = StmtKind::Set;
  st.sql = std::string(prefix) + " " + v;
}

// Reads a (possibly dotted) parameter name from `first`; returns it as written and its key.
// A name PostgreSQL accepts: a word, or a closed, non-empty quoted identifier.
bool name_token(const Token& t) {
  return t.kind == Tok::Word || (t.kind == Tok::Ident && !t.open && t.text.size() > 2);
}

bool read_name(Lexer& lx, Token first, std::string& written, std::string& key, Token& after) {
  if (!name_token(first)) return false;
  written.assign(first.text);
  key = lower(ident_key(first));
  for (;;) {
    after = lx.next();
    if (after.kind != Tok::Op || after.text != "." || after.space_before) return true;
    Token part = lx.next();
    if (!name_token(part)) return false;
    written += '.';
    written.append(part.text);
    key += '.';
    key += lower(ident_key(part));
  }
}

// SET SESSION CHARACTERISTICS AS TRANSACTION <one mode>: the default_transaction_* setting
// it sets. Several modes at once are Unknown (one statement, one setting here).
void set_characteristics(SessionStmt& st, Lexer& lx) {
  st.kind = StmtKind::Unknown;
  if (!is_word(lx.next(), "as") || !is_word(lx.next(), "transaction")) return;
  std::vector<Token> w;
  for (Token t = lx.next(); t.kind != Tok::End && t.kind != Tok::Semi; t = lx.next()) {
    if (t.kind != Tok::Word || w.size() == 4) return;
    w.push_back(t);
  }
  auto set = [&](const char* key, const char* value) {
    st.kind = StmtKind::Set;
    st.key = key;
    st.sql = std::string("SET ") + key + " TO '" + value + "'";
  };
  if (w.size() >= 3 && is_word(w[0], "isolation") && is_word(w[1], "level")) {
    if (w.size() == 3 && is_word(w[2], "serializable"))
      set("default_transaction_isolation", "serializable");
    if (w.size() == 4 && is_word(w[2], "repeatable") && is_word(w[3], "read"))
      set("default_transaction_isolation", "repeatable read");
    if (w.size() == 4 && is_word(w[2], "read") && is_word(w[3], "committed"))
      set("default_transaction_isolation", "read committed");
    if (w.size() == 4 && is_word(w[2], "read") && is_word(w[3], "uncommitted"))
      set("default_transaction_isolation", "read uncommitted");
  } else if (w.size() == 2 && is_word(w[0], "read") && is_word(w[1], "only")) {
    set("default_transaction_read_only", "on");
  } else if (w.size() == 2 && is_word(w[0], "read") && is_word(w[1], "write")) {
    set("default_transaction_read_only", "off");
  } else if (w.size() == 1 && is_word(w[0], "deferrable")) {
    set("default_transaction_deferrable", "on");
  } else if (w.size() == 2 && is_word(w[0], "not") && is_word(w[1], "deferrable")) {
    set("default_transaction_deferrable", "off");
  }
}

// SET after its first word (and SESSION, when given).
void classify_set(SessionStmt& st, Lexer& lx) {
  Token t = lx.next();
  if (is_word(t, "session")) {
    Token u = lx.next();
    if (is_word(u, "characteristics")) {
      set_characteristics(st, lx);
      return;
    }
    if (is_word(u, "authorization")) {
      set_special(st, lx, "session_authorization", "SET SESSION AUTHORIZATION",
                  "RESET SESSION AUTHORIZATION", "default", "");
      return;
    }
    t = u;                        // SET SESSION name ...
    if (is_word(t, "session")) {  // SET SESSION SESSION AUTHORIZATION
      Token w = lx.next();
      if (!is_word(w, "authorization")) return;
      set_special(st, lx, "session_authorization", "SET SESSION AUTHORIZATION",
                  "RESET SESSION AUTHORIZATION", "default", "");
      return;
    }
  } else if (is_word(t, "local") || is_word(t, "transaction") || is_word(t, "constraints")) {
    st.kind = StmtKind::Local;
    return;
  }
  if (is_word(t, "time")) {
    Token z = lx.next();
    if (!is_word(z, "zone")) return;
    set_special(st, lx, "timezone", "SET TIME ZONE", "RESET TIME ZONE", "default", "local");
    return;
  }
  if (is_word(t, "role")) {
    set_special(st, lx, "role", "SET ROLE", "RESET ROLE", "none", "");
    return;
  }
  if (is_word(t, "schema")) {
    set_special(st, lx, "search_path", "SET SCHEMA", "RESET search_path", "", "");
    return;
  }
  if (is_word(t, "names")) {
    set_special(st, lx, "client_encoding", "SET NAMES", "RESET client_encoding", "default", "");
    return;
  }
  if (is_word(t, "xml")) {
    Token o = lx.next();
    if (!is_word(o, "option")) return;
    set_special(st, lx, "xmloption", "SET XML OPTION", "RESET xmloption", "", "");
    return;
  }
  if (is_word(t, "catalog")) return;  // SET CATALOG: the current database or an error
  std::string written, key;
  Token after;
  if (!read_name(lx, t, written, key, after)) return;
  if (!(is_word(after, "to") || (after.kind == Tok::Op && after.text == "="))) return;
  Token first = lx.next();
  size_t n = 0;
  std::string v = value_text(lx, first, &n);
  if (n == 0) return;  // a syntax error
  st.key = key;
  if (n == 1 && is_word(first, "default")) {
    st.kind = StmtKind::Reset;
    st.sql = "RESET " + written;
    return;
  }
  st.kind = StmtKind::Set;
  st.sql = "SET " + written + " TO " + v;
}

void classify_reset(SessionStmt& st, Lexer& lx) {
  Token t = lx.next();
  if (is_word(t, "all")) {
    Token e = lx.next();
    if (e.kind == Tok::End || e.kind == Tok::Semi) st.kind = StmtKind::ResetAll;
    return;
  }
  if (is_word(t, "time")) {
    if (is_word(lx.next(), "zone")) {
      st.kind = StmtKind::Reset;
      st.key = "timezone";
      st.sql = "RESET TIME ZONE";
    }
    return;
  }
  if (is_word(t, "session")) {
    if (is_word(lx.next(), "authorization")) {
      st.kind = StmtKind::Reset;
      st.key = "session_authorization";
      st.sql = "RESET SESSION AUTHORIZATION";
    }
    return;
  }
  if (is_word(t, "transaction")) {
    st.kind = StmtKind::Local;
    return;
  }
  std::string written, key;
  Token after;
  if (!read_name(lx, t, written, key, after)) return;
  if (after.kind != Tok::End && after.kind != Tok::Semi) return;
  st.kind = StmtKind::Reset;
  st.key = key;
  st.sql = "RESET " + written;
}

// COMMIT/ROLLBACK [WORK|TRANSACTION] [AND [NO] CHAIN]; ROLLBACK ... TO [SAVEPOINT] name.
void classify_end(SessionStmt& st, Lexer& lx, bool commit) {
  Token t = lx.next();
  if (is_word(t, "prepared")) return;  // COMMIT/ROLLBACK PREPARED: outside any block
  if (is_word(t, "work") || is_word(t, "transaction")) t = lx.next();
  if (!commit && is_word(t, "to")) {
    Token n = lx.next();
    if (is_word(n, "savepoint")) n = lx.next();
    if (!name_token(n)) return;
    st.kind = StmtKind::RollbackTo;
    st.key = ident_key(n);
    return;
  }
  st.kind = commit ? StmtKind::Commit : StmtKind::Rollback;
  if (is_word(t, "and")) {
    Token c = lx.next();
    if (is_word(c, "chain")) st.kind = commit ? StmtKind::CommitChain : StmtKind::RollbackChain;
  }
}

SessionStmt classify(Lexer& lx, const Token& first) {
  SessionStmt st;
  if (is_word(first, "set")) {
    classify_set(st, lx);
  } else if (is_word(first, "reset")) {
    classify_reset(st, lx);
  } else if (is_word(first, "discard")) {
    Token t = lx.next();
    if (is_word(t, "all")) st.kind = StmtKind::DiscardAll;
  } else if (is_word(first, "begin")) {
    st.kind = StmtKind::Begin;
  } else if (is_word(first, "start")) {
    if (is_word(lx.next(), "transaction")) st.kind = StmtKind::Begin;
  } else if (is_word(first, "commit") || is_word(first, "end")) {
    classify_end(st, lx, true);
  } else if (is_word(first, "rollback") || is_word(first, "abort")) {
    classify_end(st, lx, false);
  } else if (is_word(first, "savepoint") || is_word(first, "release")) {
    bool sp = is_word(first, "savepoint");
    Token n = lx.next();
    if (!sp && is_word(n, "savepoint")) n = lx.next();
    if (name_token(n)) {
      st.kind = sp ? StmtKind::Savepoint : StmtKind::Release;
      st.key = ident_key(n);
    }
  } else if (is_word(first, "prepare")) {
    if (is_word(lx.next(), "transaction")) st.kind = StmtKind::Commit;
  }
  return st;
}

// The first letters of the words that begin a statement classify() looks at.
bool may_classify(const Token& t) {
  if (t.kind != Tok::Word) return false;
  switch (t.text[0] | 0x20) {
    case 's':
    case 'r':
    case 'd':
    case 'b':
    case 'c':
    case 'e':
    case 'a':
    case 'p':
      return true;
    default:
      return false;
  }
}

}  // namespace

bool lex_session_sql(std::string_view text, bool scs, std::vector<SessionStmt>* out) {
  Lexer lx(text, scs);
  bool changes = false;
  for (bool at_start = true;; at_start = false) {
    lx.begin_statement();
    Token first = lx.next();
    if (first.kind == Tok::End) break;
    if (first.kind == Tok::Semi) continue;  // an empty statement
    if (out == nullptr && at_start && !is_word(first, "set") && !is_word(first, "reset") &&
        !is_word(first, "discard")) {
      // The common case, read without lexing it all: one statement (no ';' but a last one),
      // which changes nothing.
      size_t semi = text.find(';');
      if (semi == std::string_view::npos ||
          text.find_first_not_of(" \t\r\n\f\v", semi + 1) == std::string_view::npos)
        return false;
    }
    SessionStmt st;
    if (may_classify(first)) st = classify(lx, first);
    if (!lx.statement_done()) lx.skip_statement();
    changes = changes || changes_settings(st.kind);
    if (out != nullptr) out->push_back(std::move(st));
  }
  return changes;
}

bool contains_ci(std::string_view text, std::string_view needle) {
  if (needle.empty() || needle.size() > text.size()) return false;
  auto low = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c | 0x20) : c; };
  for (size_t i = 0; i + needle.size() <= text.size(); i++) {
    if (low(text[i]) != needle[0]) continue;
    size_t k = 1;
    while (k < needle.size() && low(text[i + k]) == needle[k]) k++;
    if (k == needle.size()) return true;
  }
  return false;
}

// ---- Pinning scan ----

namespace {

// The words that begin a statement scan_pins() looks into.
bool pin_first_word(const Token& t) {
  static constexpr std::string_view kWords[] = {
      "create", "declare",    "listen", "do",  "prepare",  "drop",  "discard", "close", "unlisten",
      "reset",  "deallocate", "commit", "end", "rollback", "abort", "select",  "alter"};
  if (t.kind != Tok::Word) return false;
  for (auto w : kWords)
    if (iequals(t.text, w)) return true;
  return false;
}

bool is_session_lock_fn(std::string_view w) {
  return iequals(w, "pg_advisory_lock") || iequals(w, "pg_advisory_lock_shared") ||
         iequals(w, "pg_try_advisory_lock") || iequals(w, "pg_try_advisory_lock_shared");
}

bool is_unlock_fn(std::string_view w) {
  return w.size() >= 18 && iequals(w.substr(0, 18), "pg_advisory_unlock");
}

// The text of a string constant ('...', E'...', $tag$...$tag$) when it holds no backslash
// (an escape, or a character whose meaning standard_conforming_strings decides); false for
// anything else.
bool string_value(const Token& t, std::string& out) {
  if (t.kind != Tok::String || t.open) return false;
  std::string_view v = t.text;
  if (v[0] == '$') {
    size_t e = v.find('$', 1);
    if (e == std::string_view::npos || v.size() < 2 * (e + 1)) return false;
    out.assign(v.substr(e + 1, v.size() - 2 * (e + 1)));
    return true;
  }
  if (v[0] == 'e' || v[0] == 'E') v.remove_prefix(1);
  if (v.size() < 2 || v.front() != '\'' || v.back() != '\'') return false;
  v = v.substr(1, v.size() - 2);
  if (v.find('\\') != std::string_view::npos) return false;
  out.clear();
  for (size_t i = 0; i < v.size(); i++) {
    out += v[i];
    if (v[i] == '\'') i++;  // '' is one quote
  }
  return true;
}

// A setting's name as set_config takes it: letters, digits, '_', '$' and the '.' of a
// custom name (anything else is not a name pgsluice reads back).
bool setting_name(std::string_view n) {
  if (n.empty() || n.size() > 128) return false;
  for (char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '$' || c == '.'))
      return false;
  return true;
}

// One argument of a call: a constant (written alone or with a ::type cast) or anything else.
struct CallArg {
  Token first;
  int tokens = 0;
  bool cast = false;  // first then ':' ':' type name
  bool constant() const { return tokens == 1 || (tokens == 4 && cast); }
};

// Reads the arguments of a call after its '(' up to its ')' (false: the statement ends
// first, or a set_config call is nested in them). Keeps the first three.
bool call_args(Lexer& lx, CallArg (&args)[3], int& nargs) {
  int depth = 0;
  nargs = 1;
  Token prev;
  for (Token t = lx.next();; prev = t, t = lx.next()) {
    if (t.kind == Tok::End || t.kind == Tok::Semi) return false;
    if (t.kind == Tok::Op && (t.text == "(" || t.text == "[")) {
      if (prev.kind == Tok::Word && iequals(prev.text, "set_config")) return false;
      depth++;
    } else if (t.kind == Tok::Op && (t.text == ")" || t.text == "]")) {
      if (depth == 0) return true;
      depth--;
    } else if (depth == 0 && t.kind == Tok::Op && t.text == ",") {
      nargs++;
      continue;
    }
    if (nargs > 3) continue;
    CallArg& a = args[nargs - 1];
    a.tokens++;
    if (a.tokens == 1) a.first = t;
    if (a.tokens == 2 || a.tokens == 3) a.cast = (a.tokens == 2 || a.cast) && t.text == ":";
    if (a.tokens == 4) a.cast = a.cast && t.kind == Tok::Word;
  }
}

// A constant PostgreSQL reads as boolean true (is_local of set_config).
bool true_constant(const CallArg& a) {
  if (!a.constant()) return false;
  if (a.first.kind == Tok::Word) return iequals(a.first.text, "true");
  std::string v;
  if (!string_value(a.first, v)) return false;
  size_t b = v.find_first_not_of(" \t\r\n\f\v");
  size_t e = v.find_last_not_of(" \t\r\n\f\v");
  if (b == std::string::npos) return false;
  v = lower(v.substr(b, e + 1 - b));
  auto prefix_of = [&](std::string_view w) {
    return v.size() <= w.size() && w.substr(0, v.size()) == v;
  };
  return prefix_of("true") || prefix_of("yes") || v == "on" || v == "1";
}

void watch_name(PinScan& r, std::string name) {
  if (std::find(r.names.begin(), r.names.end(), name) != r.names.end()) return;
  if (r.names.size() >= kPinMaxNames) {
    r.opaque = true;
    r.dirty = true;
    return;
  }
  r.names.push_back(std::move(name));
}

void untracked_setting(PinScan& r) {
  r.pins |= kPinUntrackedSetting;
  r.releases |= kReleaseAny;  // the check right after tells what is left
}

// A set_config call, after its '(': a local one (is_local a true constant) changes nothing
// past its transaction; one with a constant name is read back by the check; any other is
// opaque.
void scan_set_config(Lexer& lx, PinScan& r) {
  CallArg args[3];
  int nargs = 0;
  bool closed = call_args(lx, args, nargs);
  if (closed && nargs == 3 && true_constant(args[2])) return;
  untracked_setting(r);
  std::string name;
  if (closed && nargs == 3 && args[0].constant() && string_value(args[0].first, name) &&
      setting_name(name)) {
    watch_name(r, lower(name));
  } else {
    r.opaque = true;
    r.dirty = true;
  }
}

// Whether dynamic SQL may set something: a string EXECUTEd that begins with SET or RESET or
// calls set_config.
bool dynamic_set(std::string_view v) {
  size_t b = v.find_first_not_of(" \t\r\n\f\v(");
  if (b == std::string_view::npos) return false;
  v.remove_prefix(b);
  auto starts = [&](std::string_view w) {
    return v.size() >= w.size() && iequals(v.substr(0, w.size()), w) &&
           (v.size() == w.size() || !word_char(static_cast<unsigned char>(v[w.size()])));
  };
  return starts("set") || starts("reset") || contains_ci(v, "set_config");
}

// A word that may begin a PL/pgSQL statement's text (after ';', BEGIN, THEN, ELSE, LOOP).
bool statement_start(const Token& prev) {
  return prev.kind == Tok::Semi || is_word(prev, "begin") || is_word(prev, "then") ||
         is_word(prev, "else") || is_word(prev, "loop");
}

// What a call or a relation named in a text runs, when the pool knows it may make state.
void routine_word(const StateRoutines* routines, const Token& t, PinScan& r) {
  if (routines == nullptr || (t.kind != Tok::Word && t.kind != Tok::Ident)) return;
  std::string w = t.kind == Tok::Ident ? ident_key(t) : lower(t.text);
  if (const PinScan* f = routines->find(w)) pin_merge(r, *f);
}

// DO [LANGUAGE name] 'body' [LANGUAGE name], after DO.
void scan_do(Lexer& lx, PinScan& r, const StateRoutines* routines) {
  untracked_setting(r);
  r.dirty = true;  // the check sees the settings pg_settings lists, not custom ones
  std::string body;
  bool plpgsql = true, found = false;
  for (Token t = lx.next(); t.kind != Tok::End && t.kind != Tok::Semi; t = lx.next()) {
    if (is_word(t, "language")) {
      Token l = lx.next();
      plpgsql = is_word(l, "plpgsql") || (l.kind == Tok::String && l.text == "'plpgsql'");
      if (l.kind == Tok::End || l.kind == Tok::Semi) break;
    } else if (!found && t.kind == Tok::String) {
      found = string_value(t, body);
      if (!found) {
        r.opaque = true;
        return;
      }
    }
  }
  if (!found || !plpgsql) {
    r.opaque = true;  // another language's body is not read
    return;
  }
  scan_routine_body(body, r, routines, nullptr);
}

}  // namespace

void call_names(std::string_view text, bool scs, std::vector<std::string>& out, bool* many) {
  Lexer lx(text, scs);
  Token prev;
  for (Token t = lx.next(); t.kind != Tok::End; prev = t, t = lx.next()) {
    if (t.kind != Tok::Op || t.text != "(") continue;
    if (prev.kind != Tok::Word && prev.kind != Tok::Ident) continue;
    std::string w = prev.kind == Tok::Ident ? ident_key(prev) : lower(prev.text);
    if (std::find(out.begin(), out.end(), w) != out.end()) continue;
    if (out.size() >= kMaxCallNames) {
      *many = true;
      return;
    }
    out.push_back(std::move(w));
  }
}

void pin_merge(PinScan& into, const PinScan& from) {
  into.pins |= from.pins;
  into.releases |= from.releases;
  into.opaque = into.opaque || from.opaque;
  into.dirty = into.dirty || from.dirty;
  into.catalog = into.catalog || from.catalog;
  for (const auto& n : from.names) watch_name(into, n);
}

void scan_routine_body(std::string_view body, PinScan& r, const StateRoutines* routines,
                       std::vector<std::string>* calls) {
  Lexer b(body, true);
  bool exec = false;
  Token prev, prev2;
  prev.kind = Tok::Semi;
  for (Token t = b.next(); t.kind != Tok::End; prev2 = prev, prev = t, t = b.next()) {
    if (t.kind == Tok::Semi) {
      exec = false;
      continue;
    }
    if (is_word(t, "execute")) {
      exec = true;
    } else if (t.kind == Tok::String) {
      std::string v;
      if (exec && (!string_value(t, v) || dynamic_set(v))) {
        untracked_setting(r);
        r.opaque = r.dirty = true;
      }
    } else if (t.kind == Tok::Op && t.text == "(" && prev.kind == Tok::Word) {
      if (is_session_lock_fn(prev.text)) {
        r.pins |= kPinAdvisoryLock;
        if ((prev.text[3] | 0x20) == 't') r.releases |= kReleaseAny;
      } else if (iequals(prev.text, "set_config")) {
        scan_set_config(b, r);
        t.kind = Tok::Op;
        t.text = ")";
      } else if (is_unlock_fn(prev.text)) {
        r.releases |= kReleaseAny;
      } else if (calls != nullptr) {
        calls->push_back(lower(prev.text));
      }
    } else if ((is_word(t, "temp") || is_word(t, "temporary")) &&
               (is_word(prev, "create") || is_word(prev, "into") || is_word(prev, "replace") ||
                ((is_word(prev, "global") || is_word(prev, "local")) &&
                 is_word(prev2, "create")))) {
      r.pins |= kPinTempTable;
    } else if (is_word(t, "hold") && is_word(prev, "with")) {
      r.pins |= kPinHoldCursor;
    } else if (is_word(t, "listen") && statement_start(prev)) {
      r.pins |= kPinListen;
    } else if ((is_word(t, "set") || is_word(t, "reset")) && statement_start(prev)) {
      SessionStmt st;
      if (is_word(t, "set"))
        classify_set(st, b);
      else
        classify_reset(st, b);
      if ((st.kind == StmtKind::Set || st.kind == StmtKind::Reset) && setting_name(st.key)) {
        untracked_setting(r);
        watch_name(r, st.key);
      } else if (st.kind != StmtKind::Local && st.kind != StmtKind::Other) {
        // RESET ALL, SET SESSION CHARACTERISTICS, a name PostgreSQL refuses or one not read
        untracked_setting(r);
        r.opaque = r.dirty = true;
      }
      exec = false;
      t.kind = Tok::Semi;  // classify read to the statement's end
    } else {
      routine_word(routines, t, r);  // a routine, or a relation whose trigger, view, ... runs one
    }
  }
}

PinScan scan_pins(std::string_view text, bool scs, bool sql_prepare,
                  const StateRoutines* routines) {
  PinScan r;
  // Calls and SELECT ... INTO TEMP may be anywhere in a statement: only then is every
  // token read; otherwise only each statement's first words.
  if (routines != nullptr && routines->empty()) routines = nullptr;
  const bool deep = contains_ci(text, "advisory") || contains_ci(text, "set_config") ||
                    contains_ci(text, "temp") || (routines != nullptr && routines->mentioned(text));
  Lexer lx(text, scs);
  for (bool at_start = true;; at_start = false) {
    lx.begin_statement();
    Token first = lx.next();
    if (first.kind == Tok::End) break;
    if (first.kind == Tok::Semi) continue;
    const bool look = pin_first_word(first);
    if (!deep && !look && at_start) {
      // The common case: one statement that does none of it.
      size_t semi = text.find(';');
      if (semi == std::string_view::npos ||
          text.find_first_not_of(" \t\r\n\f\v", semi + 1) == std::string_view::npos)
        return r;
    }
    if (look) {
      if (is_word(first, "create") || is_word(first, "alter") || is_word(first, "drop")) {
        // CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP ... pins. A function, procedure, trigger,
        // view, rule, policy, table or extension created, changed or dropped may change what
        // runs a routine: the pool's StateRoutines are read again (not for a temporary one).
        static constexpr std::string_view kSkip[] = {
            "or",      "replace",    "global",       "local", "unlogged", "constraint",
            "trusted", "procedural", "materialized", "if",    "exists"};
        static constexpr std::string_view kObjects[] = {
            "function", "procedure", "routine",   "trigger",   "view",
            "rule",     "policy",    "extension", "aggregate", "table"};
        bool temp = false;
        Token t = lx.next();
        for (int i = 0; i < 5 && t.kind == Tok::Word; i++, t = lx.next()) {
          if (is_word(t, "temp") || is_word(t, "temporary")) {
            temp = true;
            continue;
          }
          bool object = false, skip = false;
          for (auto w : kObjects) object = object || iequals(t.text, w);
          for (auto w : kSkip) skip = skip || iequals(t.text, w);
          if (object) r.catalog = !temp;
          if (!skip) break;
        }
        if (temp && is_word(first, "create")) r.pins |= kPinTempTable;
        if (is_word(first, "drop")) r.releases |= kReleaseAny;
        if (t.kind == Tok::Semi || t.kind == Tok::End) continue;
      } else if (is_word(first, "listen")) {
        r.pins |= kPinListen;
      } else if (is_word(first, "do")) {
        scan_do(lx, r, routines);
      } else if (is_word(first, "prepare")) {
        Token t = lx.next();
        if (sql_prepare && !is_word(t, "transaction") && t.kind != Tok::End && t.kind != Tok::Semi)
          r.pins |= kPinPrepare;
      } else if (is_word(first, "commit") || is_word(first, "end") || is_word(first, "rollback") ||
                 is_word(first, "abort")) {
        r.releases |= kReleaseTxEnd;
      } else if (!is_word(first, "declare") && !is_word(first, "select")) {
        r.releases |= kReleaseAny;  // DROP, DISCARD, CLOSE, UNLISTEN, RESET, DEALLOCATE
      }
    }
    if (lx.statement_done()) continue;
    if (!deep && !is_word(first, "declare")) {
      lx.skip_statement();
      continue;
    }
    // Every token of the statement: calls (a word then '('), WITH HOLD, INTO TEMP.
    const bool select = is_word(first, "select");
    const bool declare = is_word(first, "declare");
    Token prev = first;
    for (Token t = lx.next(); t.kind != Tok::End && t.kind != Tok::Semi; prev = t, t = lx.next()) {
      routine_word(routines, t, r);
      if (t.kind == Tok::Op && t.text == "(" && prev.kind == Tok::Word) {
        if (is_session_lock_fn(prev.text)) {
          r.pins |= kPinAdvisoryLock;
          // pg_try_advisory_lock may take nothing: the check after it tells.
          if ((prev.text[3] | 0x20) == 't') r.releases |= kReleaseAny;
        } else if (iequals(prev.text, "set_config")) {
          scan_set_config(lx, r);
          if (lx.statement_done()) break;  // the call was not closed
          t.kind = Tok::Op;
          t.text = ")";
        } else if (is_unlock_fn(prev.text))
          r.releases |= kReleaseAny;
      } else if (declare && is_word(prev, "with") && is_word(t, "hold")) {
        r.pins |= kPinHoldCursor;
      } else if (select && is_word(prev, "into") &&
                 (is_word(t, "temp") || is_word(t, "temporary"))) {
        r.pins |= kPinTempTable;
      }
    }
  }
  return r;
}

std::string set_config_statement(std::string_view key, std::string_view value) {
  auto lit = [](std::string_view v) {
    bool bs = v.find('\\') != std::string_view::npos;
    std::string s = bs ? "E'" : "'";
    for (char c : v) {
      if (c == '\'' || (bs && c == '\\')) s += c;
      s += c;
    }
    s += '\'';
    return s;
  };
  return "SELECT pg_catalog.set_config(" + lit(key) + ", " + lit(value) + ", false)";
}

// ---- SessionSettings ----

const SessionSettings::Entry* SessionSettings::find(std::string_view key) const {
  for (const auto& e : entries_)
    if (e.key == key) return &e;
  return nullptr;
}

void SessionSettings::erase(std::string_view key) {
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const Entry& e) { return e.key == key; }),
                 entries_.end());
}

void SessionSettings::apply(const SessionStmt& s) {
  switch (s.kind) {
    case StmtKind::Set:
    case StmtKind::Reset: {
      // A new session user resets the role (SetSessionAuthorization: current user = it).
      if (s.key == "session_authorization") erase("role");
      erase(s.key);
      if (s.kind == StmtKind::Set) entries_.push_back(Entry{s.key, s.sql});
      break;
    }
    case StmtKind::ResetAll:
      entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                    [](const Entry& e) {
                                      return e.key != "role" && e.key != "session_authorization";
                                    }),
                     entries_.end());
      break;
    case StmtKind::DiscardAll:
      entries_.clear();
      break;
    default:
      break;
  }
}

bool SessionSettings::operator==(const SessionSettings& o) const {
  if (entries_.size() != o.entries_.size()) return false;
  for (const auto& e : entries_) {
    const Entry* f = o.find(e.key);
    if (f == nullptr || f->sql != e.sql) return false;
  }
  return true;
}

std::string reset_statement(std::string_view key) {
  std::string r = "RESET \"";
  for (char ch : key) {
    r += ch;
    if (ch == '"') r += '"';
  }
  r += '"';
  return r;
}

void settings_diff_sql(const SessionSettings* client, const SessionSettings* server, bool unknown,
                       std::string& reset_prefix, std::string& sql, const SessionSettings* base) {
  static const SessionSettings none;
  const SessionSettings& c = client != nullptr ? *client : none;
  const SessionSettings& s = (server != nullptr && !unknown) ? *server : none;
  const SessionSettings& b = base != nullptr ? *base : none;
  if (unknown) {
    reset_prefix = "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;";
    // Back to what connect_query made, before the reported parameters' SETs.
    for (const auto& e : b.entries()) {
      reset_prefix += e.sql;
      reset_prefix += ';';
    }
  } else if (c == s) {
    return;
  }
  auto put = [&](const std::string& stmt) {
    sql += stmt;
    sql += ';';
  };
  // A setting taken away: back to base's value, or PostgreSQL's default.
  auto restore = [&](const std::string& key) {
    const auto* e = b.find(key);
    put(e != nullptr ? e->sql : reset_statement(key));
  };
  // The session user first (it resets the role), then the role, then the rest.
  const auto* csa = c.find("session_authorization");
  const auto* ssa = s.find("session_authorization");
  bool sa_changed = (csa == nullptr) != (ssa == nullptr) || (csa && csa->sql != ssa->sql);
  if (sa_changed) {
    if (csa != nullptr)
      put(csa->sql);
    else
      restore("session_authorization");
  }
  const auto* cr = c.find("role");
  const auto* sr = s.find("role");
  if (sa_changed || (cr == nullptr) != (sr == nullptr) || (cr && cr->sql != sr->sql)) {
    if (cr != nullptr)
      put(cr->sql);
    else if (const auto* br = b.find("role"); br != nullptr && (sr != nullptr || sa_changed))
      put(br->sql);  // a new session user reset the role too
    else if (sr != nullptr && !sa_changed)
      put("RESET ROLE");
  }
  for (const auto& e : s.entries()) {
    if (e.key == "role" || e.key == "session_authorization") continue;
    if (c.find(e.key) == nullptr) restore(e.key);
  }
  for (const auto& e : c.entries()) {
    if (e.key == "role" || e.key == "session_authorization") continue;
    const auto* f = s.find(e.key);
    if (f == nullptr || f->sql != e.sql) put(e.sql);
  }
}

std::string shown_setting(const SessionSettings::Entry& e) {
  static constexpr std::string_view kShown[] = {"search_path",
                                                "statement_timeout",
                                                "lock_timeout",
                                                "idle_in_transaction_session_timeout",
                                                "idle_session_timeout",
                                                "work_mem",
                                                "maintenance_work_mem",
                                                "temp_buffers",
                                                "role",
                                                "session_authorization",
                                                "timezone",
                                                "datestyle",
                                                "intervalstyle",
                                                "xmloption",
                                                "extra_float_digits",
                                                "bytea_output",
                                                "client_min_messages",
                                                "synchronous_commit",
                                                "default_transaction_isolation",
                                                "default_transaction_read_only",
                                                "jit",
                                                "random_page_cost",
                                                "seq_page_cost",
                                                "effective_cache_size",
                                                "constraint_exclusion",
                                                "max_parallel_workers_per_gather",
                                                "transaction_timeout"};
  bool shown = e.key.rfind("enable_", 0) == 0;
  for (auto k : kShown) shown = shown || e.key == k;
  if (!shown) return "(hidden)";
  static constexpr std::string_view kPrefixes[] = {"SET SESSION AUTHORIZATION ", "SET ROLE ",
                                                   "SET TIME ZONE ", "SET SCHEMA ",
                                                   "SET XML OPTION "};
  std::string_view sql = e.sql;
  if (sql.rfind("SELECT pg_catalog.set_config(", 0) == 0) {
    // A value read back (set_config_statement): its second literal, unquoted.
    Lexer lx(sql, true);
    std::string v;
    int lits = 0;
    for (Token t = lx.next(); t.kind != Tok::End; t = lx.next()) {
      if (t.kind != Tok::String || ++lits != 2) continue;
      std::string_view q = t.text;
      bool esc = q[0] == 'E';
      if (esc) q.remove_prefix(1);
      q = q.substr(1, q.size() >= 2 ? q.size() - 2 : 0);
      for (size_t i = 0; i < q.size(); i++) {
        if (q[i] == '\\' && esc && i + 1 < q.size())
          i++;
        else if (q[i] == '\'' && i + 1 < q.size())
          i++;
        v += q[i];
      }
      return v;
    }
    return std::string(sql);
  }
  for (auto p : kPrefixes)
    if (sql.rfind(p, 0) == 0) return std::string(sql.substr(p.size()));
  size_t to = sql.find(" TO ");
  return to == std::string_view::npos ? std::string(sql) : std::string(sql.substr(to + 4));
}

bool reported_and_tracked(const TrackedNames* tracked, std::string_view name) {
  static constexpr std::string_view kReported[] = {"client_encoding",
                                                   "datestyle",
                                                   "timezone",
                                                   "standard_conforming_strings",
                                                   "application_name",
                                                   "intervalstyle",
                                                   "integer_datetimes",
                                                   "is_superuser",
                                                   "server_encoding",
                                                   "server_version",
                                                   "default_transaction_read_only",
                                                   "in_hot_standby",
                                                   "scram_iterations"};
  bool reported = false;
  for (auto r : kReported) reported = reported || iequals(r, name);
  return reported && tracked != nullptr && tracked->find(name) >= 0;
}

// ---- SessionState ----

const SessionStmt* SessionState::stmt_of(std::string_view portal) const {
  for (const auto& [n, s] : portals_)
    if (n == portal) return &s;
  return nullptr;
}

void SessionState::note_parse(std::string_view name, const std::vector<SessionStmt>& stmts) {
  auto it =
      std::find_if(stmts_.begin(), stmts_.end(), [&](const auto& p) { return p.first == name; });
  const bool interesting = stmts.size() == 1 && stmts[0].kind != StmtKind::Other;
  if (it != stmts_.end()) {
    if (interesting)
      it->second = stmts[0];
    else
      stmts_.erase(it);
  } else if (interesting) {
    stmts_.emplace_back(std::string(name), stmts[0]);
  }
}

void SessionState::note_bind(std::string_view portal, std::string_view stmt) {
  auto s =
      std::find_if(stmts_.begin(), stmts_.end(), [&](const auto& p) { return p.first == stmt; });
  auto it = std::find_if(portals_.begin(), portals_.end(),
                         [&](const auto& p) { return p.first == portal; });
  if (s == stmts_.end()) {
    if (it != portals_.end()) portals_.erase(it);
    return;
  }
  if (it != portals_.end())
    it->second = s->second;
  else
    portals_.emplace_back(std::string(portal), s->second);
}

void SessionState::note_close(uint8_t kind, std::string_view name) {
  auto& v = kind == 'S' ? stmts_ : portals_;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& p) { return p.first == name; }),
          v.end());
}

bool SessionState::busy() const {
  return !units_.empty() || in_block_ || !implicit_.empty();
}

void SessionState::note_query(std::vector<SessionStmt> stmts, bool lexed) {
  Unit u{'Q', lexed, std::move(stmts), 0};
  units_.push_back(std::move(u));
}

bool SessionState::note_execute(const std::string_view* portal) {
  const SessionStmt* s = portal != nullptr ? stmt_of(*portal) : nullptr;
  if (!busy() && s == nullptr && (portal != nullptr || portals_.empty())) return false;
  Unit u{'E', portal != nullptr, {}, 0};
  if (s != nullptr) u.stmts.push_back(*s);
  units_.push_back(std::move(u));
  return true;
}

void SessionState::note_sync() {
  units_.push_back(Unit{'S', true, {}, 0});
}

void SessionState::mark_lost(const char* why) {
  if (!lost_) LOG_DEBUG("session settings not followed exactly: %s", why);
  lost_ = true;
}

void SessionState::change(const SessionStmt& s) {
  if ((s.kind == StmtKind::Set || s.kind == StmtKind::Reset) &&
      reported_and_tracked(tracked_, s.key))
    return;  // ParameterStatus tells both sides (varcache.h)
  if (s.kind == StmtKind::Unknown) {
    mark_lost("SET SESSION CHARACTERISTICS");
    return;
  }
  (in_block_ ? journal_ : implicit_).push_back(s);
}

void SessionState::commit(const SessionStmt& s) {
  committed_.apply(s);
  changes_++;
  if (s.kind == StmtKind::ResetAll || s.kind == StmtKind::DiscardAll) resets_++;
}

void SessionState::adopt(const std::string& key, std::string sql) {
  SessionStmt s;
  s.kind = sql.empty() ? StmtKind::Reset : StmtKind::Set;
  s.key = key;
  s.sql = std::move(sql);
  committed_.apply(s);
  changes_++;
}

void SessionState::commit_tx() {
  for (const auto& s : implicit_) commit(s);
  if (!aborted_)
    for (const auto& s : journal_) commit(s);
  implicit_.clear();
  journal_.clear();
  savepoints_.clear();
  in_block_ = false;
  aborted_ = false;
}

void SessionState::rollback_tx() {
  implicit_.clear();
  journal_.clear();
  savepoints_.clear();
  in_block_ = false;
  aborted_ = false;
}

void SessionState::completed(const SessionStmt& s, std::string_view tag) {
  StmtKind k = s.kind;
  if (k == StmtKind::Other) {
    // What the lexer did not see (a statement of an unknown portal, an odd shape): the
    // command tag tells the transaction statements; any other change is not followed.
    if (tag == "COMMIT" || tag == "PREPARE TRANSACTION")
      k = StmtKind::Commit;
    else if (tag == "BEGIN" || tag == "START TRANSACTION")
      k = StmtKind::Begin;
    else if (tag == "ROLLBACK") {
      if (!savepoints_.empty()) mark_lost("a ROLLBACK not read");
      k = StmtKind::Rollback;
    } else if (tag == "SET" || tag == "RESET" || tag == "DISCARD ALL" || tag == "SAVEPOINT" ||
               tag == "RELEASE") {
      mark_lost("a statement not read");
      return;
    }
  }
  switch (k) {
    case StmtKind::Set:
    case StmtKind::Reset:
    case StmtKind::ResetAll:
    case StmtKind::DiscardAll:
    case StmtKind::Unknown:
      change(s);
      break;
    case StmtKind::Begin:
      if (!in_block_) {
        in_block_ = true;
        journal_ = std::move(implicit_);  // an implicit transaction becomes the block
        implicit_.clear();
      }
      break;
    case StmtKind::Commit:
      if (tag == "ROLLBACK") aborted_ = true;  // COMMIT of a failed transaction
      commit_tx();
      break;
    case StmtKind::Rollback:
      rollback_tx();
      break;
    case StmtKind::CommitChain:
      if (tag == "ROLLBACK") aborted_ = true;
      commit_tx();
      in_block_ = true;
      break;
    case StmtKind::RollbackChain:
      rollback_tx();
      in_block_ = true;
      break;
    case StmtKind::Savepoint:
      if (in_block_) savepoints_.emplace_back(s.key, journal_.size());
      break;
    case StmtKind::Release:
    case StmtKind::RollbackTo: {
      size_t i = savepoints_.size();
      while (i > 0 && savepoints_[i - 1].first != s.key) i--;
      if (i == 0) {  // not known here: a savepoint made before this was followed
        if (!journal_.empty()) mark_lost("an unknown savepoint");
        break;
      }
      if (k == StmtKind::Release) {
        savepoints_.resize(i - 1);
      } else {
        journal_.resize(savepoints_[i - 1].second);
        savepoints_.resize(i);
        aborted_ = false;
      }
      break;
    }
    default:
      break;
  }
}

void SessionState::unlinked() {
  units_.clear();
  portals_.clear();
  if (in_block_ || !implicit_.empty()) rollback_tx();
}

void SessionState::error() {
  if (in_block_)
    aborted_ = true;
  else
    implicit_.clear();  // the implicit transaction rolls back
}

void SessionState::end_unit(char status) {
  switch (status) {
    case 'I':
      if (in_block_ && !journal_.empty()) mark_lost("a transaction ended unseen");
      commit_tx();
      break;
    case 'T':
    case 'E':
      if (!in_block_) {
        in_block_ = true;
        journal_.insert(journal_.end(), implicit_.begin(), implicit_.end());
        implicit_.clear();
      }
      if (status == 'E') aborted_ = true;
      break;
    default:
      mark_lost("an unknown transaction status");
      break;
  }
}

void SessionState::on_reply(uint8_t type, std::span<const uint8_t> body, uint8_t front) {
  switch (type) {
    case 'C':
    case 'I':
    case 's': {
      if (front == 0) return;
      std::string_view tag;
      if (type == 'C' && !body.empty())
        tag = std::string_view(reinterpret_cast<const char*>(body.data()), body.size() - 1);
      static const SessionStmt other;
      if (front == 'E') {
        while (!units_.empty() && units_.front().type == 'Q') units_.pop_front();
        if (units_.empty() || units_.front().type != 'E') return mark_lost("answers out of step");
        Unit u = std::move(units_.front());
        units_.pop_front();
        const SessionStmt& s = u.stmts.empty() ? other : u.stmts[0];
        if (!u.lexed && tag == "SET") mark_lost("an Execute not read");
        if (type != 'I') completed(s, tag);
        return;
      }
      if (units_.empty() || units_.front().type != 'Q') return mark_lost("answers out of step");
      if (type != 'C') return;
      Unit& u = units_.front();
      if (!u.lexed) {
        completed(other, tag);
        return;
      }
      if (u.next < u.stmts.size())
        completed(u.stmts[u.next], tag);
      else
        completed(other, tag);
      u.next++;
      return;
    }
    case 'E':
      error();
      if (front == 'E' || front == 'Q') {
        // PostgreSQL skips the rest of this query, or every Execute up to the Sync.
        if (front == 'E')
          while (!units_.empty() && units_.front().type == 'E') units_.pop_front();
        else if (!units_.empty() && units_.front().type == 'Q')
          units_.front().next = units_.front().stmts.size() + 1;  // counts no more
      }
      return;
    case 'Z': {
      char status = body.empty() ? '?' : static_cast<char>(body[0]);
      if (front == 'Q' || front == 'S') {
        // Executes before this Sync were skipped after an error; this unit ends here.
        while (!units_.empty() && units_.front().type != front) units_.pop_front();
        if (!units_.empty()) {
          const Unit& u = units_.front();
          if (u.type == 'Q' && u.lexed && u.next != u.stmts.size() &&
              u.next != u.stmts.size() + 1) {
            for (const auto& s : u.stmts)
              if (s.kind != StmtKind::Other && s.kind != StmtKind::Local)
                mark_lost("statements and answers differ");
          }
          units_.pop_front();
        }
      }
      end_unit(status);
      return;
    }
    default:
      return;
  }
}

}  // namespace pgsluice
