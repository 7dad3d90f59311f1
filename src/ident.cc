// auth_ident_file parser and map check.
#include "ident.h"

namespace pgsluice {

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
      try {
        e.regex = std::make_shared<const std::regex>(e.system_user, std::regex::ECMAScript);
      } catch (const std::regex_error&) {
        problem("invalid regular expression \"" + e.system_user + "\"");
        continue;
      }
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
    std::match_results<std::string_view::const_iterator> m;
    if (!std::regex_search(system_user.begin(), system_user.end(), m, *e.regex)) continue;
    if (e.db_all) return true;
    std::string want = e.db_user;
    size_t pos = want.find("\\1");
    if (pos != std::string::npos) {
      if (m.size() < 2 || !m[1].matched) continue;  // PostgreSQL: no group 1, no match
      want.replace(pos, 2, m[1].str());
    }
    if (want == db_user) return true;
  }
  return false;
}

}  // namespace pgsluice
