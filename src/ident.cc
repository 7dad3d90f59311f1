// auth_ident_file parser and map check.
#include "ident.h"

#include <regex.h>

namespace pgsluice {

struct IdentRegex {
  regex_t re{};
  bool ok = false;
  explicit IdentRegex(const std::string& pattern)
      : ok(regcomp(&re, pattern.c_str(), REG_EXTENDED) == 0) {}
  ~IdentRegex() {
    if (ok) regfree(&re);
  }
  IdentRegex(const IdentRegex&) = delete;
  IdentRegex& operator=(const IdentRegex&) = delete;
};

namespace {

struct Field {
  std::string text;
  bool quoted = false;
};

bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

// Splits one line into fields; false (and *why) on an unterminated quote.
bool split_fields(std::string_view line, std::vector<Field>& out, std::string* why) {
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_blank(line[i])) i++;
    if (i >= line.size() || line[i] == '#') break;
    Field f;
    while (i < line.size() && !is_blank(line[i]) && line[i] != '#') {
      if (line[i] == '"') {
        f.quoted = true;
        i++;
        for (;;) {
          if (i >= line.size()) {
            *why = "unterminated quoted string";
            return false;
          }
          if (line[i] == '"') {
            if (i + 1 < line.size() && line[i + 1] == '"') {
              f.text += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          f.text += line[i++];
        }
      } else {
        f.text += line[i++];
      }
    }
    out.push_back(std::move(f));
  }
  return true;
}

bool is_quantifier(char c) {
  return c == '*' || c == '+' || c == '?' || c == '{';
}

// A repeating quantifier (*, +, {}) applied to something that already repeats: two in a row
// (a++, a*{2}), or one on a group whose content may end with a quantified element ((a*)+,
// (a|b+)*). Such patterns are what makes regular-expression matching blow up; pg_ident.conf
// lines do not need them. An optional part (x)? is fine: it matches at most once.
bool stacked_quantifier(std::string_view p) {
  std::vector<bool> group_repeats;  // per open group: some branch ends with a quantifier
  bool prev_quantified = false;     // the previous element may end with a repetition
  for (size_t i = 0; i < p.size(); i++) {
    char c = p[i];
    if (c == '\\') {
      i++;
      prev_quantified = false;
    } else if (c == '[') {  // a bracket expression is one element
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') j++;
      if (j < p.size() && p[j] == ']') j++;
      while (j < p.size() && p[j] != ']') j++;
      i = j;
      prev_quantified = false;
    } else if (is_quantifier(c)) {
      if (prev_quantified && c != '?') return true;  // ? repeats nothing: at most once
      if (c == '{')
        while (i < p.size() && p[i] != '}') i++;
      prev_quantified = true;
    } else if (c == '(') {
      group_repeats.push_back(false);
      prev_quantified = false;
    } else if (c == ')') {
      bool inner = prev_quantified;
      if (!group_repeats.empty()) {
        inner = inner || group_repeats.back();
        group_repeats.pop_back();
      }
      prev_quantified = inner;
    } else if (c == '|') {
      if (!group_repeats.empty() && prev_quantified) group_repeats.back() = true;
      prev_quantified = false;
    } else {
      prev_quantified = false;
    }
  }
  return false;
}

}  // namespace

bool IdentFile::has_map(std::string_view map) const {
  for (const IdentEntry& e : entries)
    if (e.map == map) return true;
  return false;
}

IdentFile parse_ident(std::string_view text) {
  IdentFile file;
  int line_no = 0;
  size_t at = 0;
  while (at <= text.size()) {
    size_t nl = text.find('\n', at);
    std::string_view line = text.substr(at, nl == std::string_view::npos ? text.npos : nl - at);
    at = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    line_no++;
    auto problem = [&](std::string msg) { file.errors.push_back({line_no, std::move(msg)}); };
    if (line.size() > kIdentMaxLineLength) {
      problem("line too long");
      continue;
    }
    if (line.find('\0') != std::string_view::npos) {
      problem("NUL byte in line");
      continue;
    }
    std::vector<Field> f;
    std::string why;
    if (!split_fields(line, f, &why)) {
      problem(why);
      continue;
    }
    if (f.empty()) continue;
    if (f.size() != 3) {
      problem("expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME, got " +
              std::to_string(f.size()) + " fields");
      continue;
    }
    if (file.entries.size() >= kIdentMaxEntries) {
      problem("too many lines");
      break;
    }
    IdentEntry e;
    e.map = f[0].text;
    e.line = line_no;
    if (f[2].text.empty() || f[0].text.empty() || f[1].text.empty()) {
      problem("empty field");
      continue;
    }
    if (!f[2].quoted && f[2].text == "all") {
      e.db_all = true;
    } else if (!f[2].quoted && (f[2].text[0] == '+' || f[2].text[0] == '/')) {
      problem("group (+) and regular-expression database user names are not supported");
      continue;
    } else {
      e.db_user = f[2].text;
    }
    if (!f[1].quoted && f[1].text[0] == '/') {
      e.system_user = f[1].text.substr(1);
      if (e.system_user.size() > kIdentMaxPattern) {
        problem("regular expression too long");
        continue;
      }
      if (stacked_quantifier(e.system_user)) {
        problem("regular expression \"" + e.system_user +
                "\" repeats a repetition (like a++ or (a*)+): refused, it can take exponential "
                "time to match");
        continue;
      }
      auto re = std::make_shared<const IdentRegex>(e.system_user);
      if (!re->ok) {
        problem("invalid regular expression \"" + e.system_user + "\"");
        continue;
      }
      e.regex = std::move(re);
    } else {
      e.system_user = f[1].text;
      if (e.db_user.find("\\1") != std::string::npos) {
        problem("\\1 in the database user name needs a regular expression");
        continue;
      }
    }
    file.entries.push_back(std::move(e));
  }
  return file;
}

bool ident_allows(const IdentFile& file, std::string_view map, std::string_view system_user,
                  std::string_view db_user) {
  for (const IdentEntry& e : file.entries) {
    if (e.map != map) continue;
    if (e.regex == nullptr) {
      if (e.system_user != system_user) continue;
      if (e.db_all || e.db_user == db_user) return true;
      continue;
    }
    if (system_user.size() > kIdentMaxMatchedName) continue;
    if (system_user.find('\0') != std::string_view::npos) continue;
    const std::string name(system_user);
    regmatch_t m[2];
    if (regexec(&e.regex->re, name.c_str(), 2, m, 0) != 0) continue;
    if (e.db_all) return true;
    std::string want = e.db_user;
    size_t pos = want.find("\\1");
    if (pos != std::string::npos) {
      if (m[1].rm_so < 0) continue;  // PostgreSQL: no group 1, no match
      want.replace(pos, 2,
                   name.substr(static_cast<size_t>(m[1].rm_so),
                               static_cast<size_t>(m[1].rm_eo - m[1].rm_so)));
    }
    if (want == db_user) return true;
  }
  return false;
}

}  // namespace pgsluice
