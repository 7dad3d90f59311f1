// The auth_file reader: `"user" "secret"` lines into a user -> secret map.
#include "userlist.h"

#include <cstddef>

#include "config.h"

namespace pgsluice {

namespace {

bool is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

size_t skip_spaces(std::string_view line, size_t pos) {
  while (pos < line.size() && is_space(line[pos])) pos++;
  return pos;
}

// Reads one double-quoted field starting at line[pos] == '"'. On success stores the
// unescaped field and returns the position after the closing quote; npos when the field
// is not terminated on this line.
size_t read_quoted(std::string_view line, size_t pos, std::string& field) {
  field.clear();
  pos++;  // opening quote
  while (pos < line.size()) {
    char ch = line[pos];
    if (ch == '"') {
      if (pos + 1 < line.size() && line[pos + 1] == '"') {
        field.push_back('"');
        pos += 2;
        continue;
      }
      return pos + 1;
    }
    field.push_back(ch);
    pos++;
  }
  return std::string_view::npos;
}

void warn(std::vector<std::string>* warnings, const std::string& path, size_t lineno,
          const char* what) {
  if (warnings == nullptr) return;
  warnings->push_back(path + ":" + std::to_string(lineno) + ": " + what);
}

}  // namespace

const std::string* Userlist::find(std::string_view user) const {
  auto it = secrets.find(user);
  return it == secrets.end() ? nullptr : &it->second;
}

Status parse_userlist(std::string_view text, Userlist& out, std::vector<std::string>* warnings,
                      const std::string& path) {
  size_t lineno = 0;
  size_t start = 0;
  std::string user;
  std::string secret;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(start, end - start);
    start = nl == std::string_view::npos ? text.size() : nl + 1;
    lineno++;

    if (lineno == 1 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);  // UTF-8 BOM
    size_t pos = skip_spaces(line, 0);
    if (pos == line.size() || line[pos] == ';' || line[pos] == '#') continue;
    if (line.find('\0') != std::string_view::npos) {
      warn(warnings, path, lineno, "NUL byte in line, line ignored");
      continue;
    }
    if (line[pos] != '"') {
      warn(warnings, path, lineno, "expected a double-quoted user name, line ignored");
      continue;
    }
    pos = read_quoted(line, pos, user);
    if (pos == std::string_view::npos) {
      warn(warnings, path, lineno, "unterminated quoted user name, line ignored");
      continue;
    }
    size_t next = skip_spaces(line, pos);
    if (next == pos || next == line.size() || line[next] != '"') {
      warn(warnings, path, lineno, "expected a double-quoted secret after the user, line ignored");
      continue;
    }
    pos = read_quoted(line, next, secret);
    if (pos == std::string_view::npos) {
      warn(warnings, path, lineno, "unterminated quoted secret, line ignored");
      continue;
    }
    if (user.empty()) {
      warn(warnings, path, lineno, "empty user name, line ignored");
      continue;
    }
    out.secrets.insert_or_assign(user, secret);
  }
  return Status();
}

Result<Userlist> load_userlist(const std::string& path) {
  return load_userlist(path, nullptr);
}

Result<Userlist> load_userlist(const std::string& path, std::vector<std::string>* warnings) {
  Result<std::string> text = read_config_file(path);
  if (!text) return Status::error("auth_file: " + text.status().message());
  Userlist list;
  Status st = parse_userlist(*text, list, warnings, path);
  if (!st) return st;
  return list;
}

}  // namespace pgsluice
