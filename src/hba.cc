// auth_hba_file: PgBouncer's subset of pg_hba.conf, parsed into rules, and the first-match lookup.
//
// The behaviour follows PgBouncer's hba.c (which is what auth_hba_file users have today);
// where it differs from PostgreSQL's pg_hba.conf, the comment says so. Summary:
// - record types local, host, hostssl, hostnossl; anything else (hostgssenc, include, ...)
//   makes the line an error;
// - no line continuation (a trailing backslash is part of a token) and no length limit in
//   PgBouncer; here lines are bounded (kHbaMaxLineLength);
// - a token ends at white space, ',', '#' or '"'; a double-quoted token is a plain name
//   (`"all"` is the database "all"), with "" for a quote inside it;
// - a bad line is skipped and the others are kept (see HbaFile in hba.h).
#include "hba.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace pgsluice {

namespace {

// ---- tokens -------------------------------------------------------------------------------

enum class Tok {
  Ident,   // unquoted word
  String,  // double-quoted word, quotes removed
  Comma,
  Eol,   // end of line or a '#' comment
  Fail,  // unterminated quote
};

bool is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

// Splits one line into tokens the way PgBouncer does: an unquoted word stops at a quote, so
// `ab"cd"` is two tokens (PostgreSQL would read it as one word "abcd").
class Lexer {
 public:
  explicit Lexer(std::string_view line) : line_(line) { advance(); }

  Tok kind() const { return kind_; }
  const std::string& text() const { return text_; }
  bool is_word(std::string_view word) const { return kind_ == Tok::Ident && text_ == word; }

  void advance() {
    if (kind_ == Tok::Eol || kind_ == Tok::Fail) return;
    text_.clear();
    while (pos_ < line_.size() && is_space(line_[pos_])) pos_++;
    if (pos_ == line_.size() || line_[pos_] == '#') {
      kind_ = Tok::Eol;
      return;
    }
    char ch = line_[pos_];
    if (ch == ',') {
      kind_ = Tok::Comma;
      pos_++;
      return;
    }
    if (ch == '"') {
      size_t i = pos_ + 1;
      while (i < line_.size()) {
        if (line_[i] == '"') {
          if (i + 1 < line_.size() && line_[i + 1] == '"') {
            text_.push_back('"');
            i += 2;
            continue;
          }
          break;
        }
        text_.push_back(line_[i]);
        i++;
      }
      if (i >= line_.size()) {
        kind_ = Tok::Fail;
        text_.clear();
        return;
      }
      pos_ = i + 1;
      kind_ = Tok::String;
      return;
    }
    size_t end = pos_ + 1;
    while (end < line_.size()) {
      char c = line_[end];
      if (c == ',' || c == '#' || c == '"' || is_space(c)) break;
      end++;
    }
    text_.assign(line_.substr(pos_, end - pos_));
    pos_ = end;
    kind_ = Tok::Ident;
  }

 private:
  std::string_view line_;
  size_t pos_ = 0;
  Tok kind_ = Tok::Comma;  // anything but Eol/Fail, so the first advance() reads a token
  std::string text_;
};

std::string describe(const Lexer& lx) {
  switch (lx.kind()) {
    case Tok::Ident:
      return "\"" + lx.text() + "\"";
    case Tok::String:
      return "quoted \"" + lx.text() + "\"";
    case Tok::Comma:
      return "','";
    case Tok::Eol:
      return "end of line";
    case Tok::Fail:
      return "an unterminated quoted string";
  }
  return "?";
}

// Calls fn(line_text, line_number) for each line of text; a final line without '\n' counts.
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  size_t start = 0;
  int lineno = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    lineno++;
    if (!fn(text.substr(start, end - start), lineno)) return;
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
}

// Why a line cannot be tokenized at all, or empty.
std::string line_problem(std::string_view line) {
  if (line.size() > kHbaMaxLineLength) {
    return "line longer than " + std::to_string(kHbaMaxLineLength) + " bytes";
  }
  // PgBouncer reads lines as C strings, so a NUL silently ends its line; an error here.
  if (line.find('\0') != std::string_view::npos) return "NUL byte in line";
  return {};
}

// PgBouncer's rule: an absolute name is used as is, a relative one is taken from the
// directory of the file that names it.
std::string join_dir(const std::string& parent, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  size_t slash = parent.rfind('/');
  if (slash == std::string::npos) return name;
  return parent.substr(0, slash + 1) + name;
}

// ---- fields --------------------------------------------------------------------------------

class Parser {
 public:
  Parser(const HbaLoader& loader, size_t bytes_used) : loader_(loader), bytes_used_(bytes_used) {}

  // Reads a comma-separated name list (database or user field) starting at the current
  // token; on return the lexer is on the token after the list. `parent` is the file whose
  // line is being read (for @file names); `depth` counts @file nesting.
  //
  // Like PgBouncer, both fields take the database keywords: `sameuser` in the user field
  // matches when the user name equals the database name, and `replication` in the user field
  // matches no user (PostgreSQL would read both as role names there).
  bool names(Lexer& lx, HbaNames& out, const std::string& parent, int depth, std::string& err,
             const char* field) {
    for (;;) {
      if (lx.kind() == Tok::Ident) {
        const std::string& word = lx.text();
        if (word == "all") {
          out.all = true;
        } else if (word == "sameuser") {
          out.sameuser = true;
        } else if (word == "samerole" || word == "samegroup") {
          err = word + " is not supported";
          return false;
        } else if (word == "replication") {
          out.replication = true;
        } else if (word[0] == '+') {
          // PgBouncer does not look up role membership: the line is an error.
          err = "group names (" + word + ") are not supported";
          return false;
        } else if (word[0] == '@') {
          if (!include(word.substr(1), out, parent, depth, err, field)) return false;
        } else {
          out.names.insert(word);
        }
      } else if (lx.kind() == Tok::String) {
        out.names.insert(lx.text());
      } else {
        err = std::string("expected a ") + field + " name, found " + describe(lx);
        return false;
      }
      lx.advance();
      if (lx.kind() != Tok::Comma) return true;
      lx.advance();
    }
  }

 private:
  // @name: the names listed in another file, separated by commas or white space, with blank
  // and '#' lines allowed. PgBouncer stops reading an @file line at the first name not
  // followed by a comma (dropping the rest silently) and fails the rule on a blank line;
  // this follows PostgreSQL there, which is what such a file means.
  bool include(const std::string& name, HbaNames& out, const std::string& parent, int depth,
               std::string& err, const char* field) {
    if (name.empty()) {
      err = "empty @file name";
      return false;
    }
    // PgBouncer has no limit (a file naming itself recurses until the stack overflows).
    if (depth >= kHbaMaxIncludeDepth) {
      err = "@file nesting deeper than " + std::to_string(kHbaMaxIncludeDepth) + " (a loop?)";
      return false;
    }
    std::string path = join_dir(parent, name);
    std::optional<std::string> text = loader_ ? loader_(path) : std::nullopt;
    if (!text) {
      err = "could not read @file \"" + path + "\"";
      return false;
    }
    if (text->size() > kHbaMaxTotalBytes - bytes_used_) {
      err =
          "hba file and its @files are larger than " + std::to_string(kHbaMaxTotalBytes) + " bytes";
      bytes_used_ = kHbaMaxTotalBytes;
      return false;
    }
    bytes_used_ += text->size();
    bool ok = true;
    for_each_line(*text, [&](std::string_view line, int lineno) {
      std::string why = line_problem(line);
      if (why.empty()) {
        Lexer lx(line);
        while (lx.kind() != Tok::Eol) {
          if (!names(lx, out, path, depth + 1, why, field)) break;
        }
      }
      if (!why.empty()) {
        err = "@file \"" + path + "\" line " + std::to_string(lineno) + ": " + why;
        ok = false;
      }
      return ok;
    });
    return ok;
  }

  const HbaLoader& loader_;
  size_t bytes_used_;
};

bool parse_cidr_bits(std::string_view digits, unsigned max, unsigned& bits) {
  // PgBouncer uses strtoul, which also takes "" (as 0), "+8" and leading blanks; only
  // plain digits here, so "10.0.0.0/" is an error and not 0.0.0.0/0.
  if (digits.empty() || digits.size() > 3) return false;
  unsigned v = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + static_cast<unsigned>(ch - '0');
  }
  if (v > max) return false;
  bits = v;
  return true;
}

void set_mask_bits(std::array<uint8_t, 16>& mask, unsigned bits) {
  mask.fill(0);
  for (unsigned i = 0; i < bits / 8; i++) mask[i] = 0xff;
  if (bits % 8 != 0) mask[bits / 8] = static_cast<uint8_t>(0xff << (8 - bits % 8));
}

std::string address_text(bool v6, const std::array<uint8_t, 16>& bytes) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof buf) == nullptr) return "?";
  return buf;
}

// The address field (and the netmask field after it when the address has no /bits).
bool parse_address(Lexer& lx, HbaAddress& out, std::string& err, std::string& warning) {
  if (lx.is_word("all")) {
    out.kind = HbaAddress::Kind::All;
    lx.advance();
    return true;
  }
  if (lx.kind() != Tok::Ident) {
    err = "expected an address, found " + describe(lx);
    return false;
  }
  std::string word = lx.text();
  if (word == "samehost" || word == "samenet") {
    err = word + " is not supported";
    return false;
  }
  size_t slash = word.find('/');
  std::string host = word.substr(0, slash);
  if (inet_pton(AF_INET6, host.c_str(), out.addr.data()) == 1) {
    out.kind = HbaAddress::Kind::V6;
  } else if (inet_pton(AF_INET, host.c_str(), out.addr.data()) == 1) {
    out.kind = HbaAddress::Kind::V4;
  } else {
    // PgBouncer does not resolve host names (nor .domain suffixes) in hba rules.
    err = "invalid IP address \"" + host + "\" (host names are not supported)";
    return false;
  }
  bool v6 = out.kind == HbaAddress::Kind::V6;
  lx.advance();
  if (slash != std::string::npos) {
    unsigned bits = 0;
    if (!parse_cidr_bits(std::string_view(word).substr(slash + 1), v6 ? 128 : 32, bits)) {
      err = "invalid CIDR mask in \"" + word + "\"";
      return false;
    }
    set_mask_bits(out.mask, bits);
  } else {
    if (lx.kind() != Tok::Ident) {
      err = "expected a netmask after \"" + word + "\", found " + describe(lx);
      return false;
    }
    // Like PgBouncer (and PostgreSQL), the mask must be of the address's family and need not
    // be contiguous.
    if (inet_pton(v6 ? AF_INET6 : AF_INET, lx.text().c_str(), out.mask.data()) != 1) {
      err = "invalid netmask \"" + lx.text() + "\"";
      return false;
    }
    lx.advance();
  }
  size_t n = v6 ? 16 : 4;
  for (size_t i = 0; i < n; i++) {
    if ((out.addr[i] & ~out.mask[i]) != 0) {
      // PgBouncer keeps such a rule with a warning, and compares the client's masked address
      // with the unmasked one, so the rule never matches. PostgreSQL masks both sides
      // (10.1.2.3/8 is 10.0.0.0/8). Followed PgBouncer: a `reject` line like this refuses
      // nobody, which is why it is reported.
      warning = "address " + address_text(v6, out.addr) + " has bits outside mask " +
                address_text(v6, out.mask) + "; the line matches no address";
      break;
    }
  }
  return true;
}

bool parse_method(Lexer& lx, HbaMethod& out, std::string& err) {
  struct Name {
    std::string_view word;
    HbaMethod method;
  };
  static constexpr Name kMethods[] = {
      {"trust", HbaMethod::Trust},
      {"reject", HbaMethod::Reject},
      {"md5", HbaMethod::Md5},
      {"password", HbaMethod::Password},
      {"peer", HbaMethod::Peer},
      {"cert", HbaMethod::Cert},
      {"scram-sha-256", HbaMethod::ScramSha256},
  };
  if (lx.kind() != Tok::Ident) {
    err = "expected an authentication method, found " + describe(lx);
    return false;
  }
  for (const Name& n : kMethods) {
    if (lx.text() == n.word) {
      out = n.method;
      lx.advance();
      return true;
    }
  }
  // PgBouncer accepts ldap (with the rest of the line as its options) only when built with
  // LDAP; pgsluice has no LDAP.
  err = "unsupported authentication method \"" + lx.text() + "\"";
  return false;
}

// Everything after the method: PgBouncer takes one optional map=NAME and nothing else.
// (PgBouncer also fails the line when NAME is not a map of auth_ident_file; the caller,
// which has that file, checks it.)
bool parse_options(Lexer& lx, HbaRule& rule, std::string& err) {
  if (lx.kind() == Tok::Ident && lx.text().rfind("map=", 0) == 0) {
    rule.map = lx.text().substr(4);
    if (rule.map.empty()) {
      err = "empty map= option";
      return false;
    }
    lx.advance();
  }
  if (lx.kind() != Tok::Eol) {
    err = "unsupported option " + describe(lx);
    return false;
  }
  return true;
}

// One line of the hba file: true with `rule` filled, false with `err` set, or true with
// rule.line == 0 for a blank or comment line.
bool parse_rule_line(Lexer& lx, Parser& parser, const std::string& path, HbaRule& rule,
                     std::string& err, std::string& warning) {
  if (lx.kind() == Tok::Eol) return true;
  if (lx.is_word("local")) {
    rule.type = HbaConnType::Local;
  } else if (lx.is_word("host")) {
    rule.type = HbaConnType::Host;
  } else if (lx.is_word("hostssl")) {
    rule.type = HbaConnType::HostSsl;
  } else if (lx.is_word("hostnossl")) {
    rule.type = HbaConnType::HostNoSsl;
  } else {
    // hostgssenc, hostnogssenc and include* lines are errors in PgBouncer too.
    err = "unknown connection type " + describe(lx);
    return false;
  }
  lx.advance();
  if (!parser.names(lx, rule.databases, path, 0, err, "database")) return false;
  if (!parser.names(lx, rule.users, path, 0, err, "user")) return false;
  if (rule.type != HbaConnType::Local) {
    if (!parse_address(lx, rule.address, err, warning)) return false;
  }
  if (!parse_method(lx, rule.method, err)) return false;
  return parse_options(lx, rule, err);
}

void add_problem(std::vector<HbaProblem>& list, int line, std::string message) {
  if (list.size() < kHbaMaxProblems) list.push_back(HbaProblem{line, std::move(message)});
}

bool names_match(const HbaNames& n, std::string_view name, std::string_view other) {
  if (n.all) return true;
  if (n.sameuser && name == other) return true;
  return n.names.find(name) != n.names.end();
}

bool address_match(const HbaAddress& a, const HbaRequest& req) {
  size_t n = 0;
  switch (a.kind) {
    case HbaAddress::Kind::All:
      return true;
    case HbaAddress::Kind::Unix:
      return false;
    case HbaAddress::Kind::V4:
      // Families must agree, as in PostgreSQL and PgBouncer: an IPv4-mapped IPv6 peer
      // (::ffff:10.0.0.1) does not match 10.0.0.0/8; it needs a ::ffff:10.0.0.0/104 rule.
      if (req.ipv6) return false;
      n = 4;
      break;
    case HbaAddress::Kind::V6:
      if (!req.ipv6) return false;
      n = 16;
      break;
  }
  for (size_t i = 0; i < n; i++) {
    if ((req.addr[i] & a.mask[i]) != a.addr[i]) return false;
  }
  return true;
}

}  // namespace

HbaFile parse_hba(std::string_view text, const std::string& path, const HbaLoader& loader) {
  HbaFile out;
  if (text.size() > kHbaMaxTotalBytes) {
    out.error_count = 1;
    add_problem(out.errors, 0,
                "file larger than " + std::to_string(kHbaMaxTotalBytes) + " bytes; no rules read");
    return out;
  }
  Parser parser(loader, text.size());
  for_each_line(text, [&](std::string_view line, int lineno) {
    std::string err = line_problem(line);
    std::string warning;
    HbaRule rule;
    bool is_rule = false;
    if (err.empty()) {
      Lexer lx(line);
      is_rule = lx.kind() != Tok::Eol;
      if (is_rule && out.rules.size() >= kHbaMaxRules) {
        err = "more than " + std::to_string(kHbaMaxRules) + " rules; the rest are ignored";
        out.error_count++;
        add_problem(out.errors, lineno, std::move(err));
        return false;
      }
      if (is_rule) parse_rule_line(lx, parser, path, rule, err, warning);
    }
    if (!err.empty()) {
      out.error_count++;
      add_problem(out.errors, lineno, std::move(err));
      return true;
    }
    if (!is_rule) return true;
    if (!warning.empty()) add_problem(out.warnings, lineno, std::move(warning));
    rule.line = lineno;
    out.rules.push_back(std::move(rule));
    return true;
  });
  return out;
}

const HbaRule* match_hba(const HbaFile& hba, const HbaRequest& req) {
  for (const HbaRule& rule : hba.rules) {
    if (req.unix_socket) {
      if (rule.type != HbaConnType::Local) continue;
    } else {
      if (rule.type == HbaConnType::Local) continue;
      if (rule.type == HbaConnType::HostSsl && !req.tls) continue;
      if (rule.type == HbaConnType::HostNoSsl && req.tls) continue;
      if (!address_match(rule.address, req)) continue;
    }
    if (req.physical_replication) {
      // Only the `replication` keyword admits a physical replication connection; `all` and
      // a database literally named "replication" do not (as PostgreSQL).
      if (!rule.databases.replication) continue;
    } else if (!names_match(rule.databases, req.database, req.user)) {
      continue;
    }
    if (!names_match(rule.users, req.user, req.database)) continue;
    return &rule;
  }
  return nullptr;
}

std::string_view hba_method_name(HbaMethod method) {
  switch (method) {
    case HbaMethod::Trust:
      return "trust";
    case HbaMethod::Reject:
      return "reject";
    case HbaMethod::Password:
      return "password";
    case HbaMethod::Md5:
      return "md5";
    case HbaMethod::ScramSha256:
      return "scram-sha-256";
    case HbaMethod::Cert:
      return "cert";
    case HbaMethod::Peer:
      return "peer";
  }
  return "?";
}

namespace {

// `host "...", user "...", database "...", SSL encryption` as PostgreSQL 15 describes a
// connection in its hba messages (replication connections name no database).
std::string describe_connection(const HbaRequest& req) {
  std::string host = req.unix_socket ? "[local]" : address_text(req.ipv6, req.addr);
  // PostgreSQL 15 wording (12 to 14 said "SSL on"/"SSL off"); no GSS encryption here.
  const char* encryption = req.tls ? "SSL encryption" : "no encryption";
  std::string d = "host \"" + host + "\", user \"" + std::string(req.user) + "\", ";
  if (!req.physical_replication) d += "database \"" + std::string(req.database) + "\", ";
  return d + encryption;
}

}  // namespace

std::string hba_no_match_message(const HbaRequest& req) {
  return std::string(req.physical_replication
                         ? "no pg_hba.conf entry for replication connection from "
                         : "no pg_hba.conf entry for ") +
         describe_connection(req);
}

std::string hba_reject_message(const HbaRequest& req) {
  return std::string(req.physical_replication ? "pg_hba.conf rejects replication connection for "
                                              : "pg_hba.conf rejects connection for ") +
         describe_connection(req);
}

}  // namespace pgsluice
