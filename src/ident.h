// auth_ident_file: user name maps (PostgreSQL's pg_ident.conf format) for the map= option of
// peer and cert lines in auth_hba_file, and the check "may this system user log in as this
// database user".
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pgsluice {

// A compiled POSIX extended regular expression (regcomp), freed with the last entry that
// uses it.
struct IdentRegex;

// One line: MAPNAME SYSTEM-USERNAME DATABASE-USERNAME.
struct IdentEntry {
  std::string map;
  std::string system_user;  // a name, or (regex set) the pattern after the leading '/'
  std::shared_ptr<const IdentRegex> regex;
  std::string db_user;  // a name; with a regex it may hold \1 (the first captured group)
  bool db_all = false;  // the keyword all (unquoted)
  int line = 0;
};

struct IdentProblem {
  int line = 0;
  std::string message;
};

struct IdentFile {
  std::vector<IdentEntry> entries;
  std::vector<IdentProblem> errors;  // malformed lines (the caller refuses the file)
  bool has_map(std::string_view map) const;
};

inline constexpr size_t kIdentMaxLineLength = 1 << 16;
inline constexpr size_t kIdentMaxEntries = 100000;
inline constexpr size_t kIdentMaxPattern = 1024;  // bytes of one regular expression
// Longest system user name (OS user or certificate CN) a regular expression is run on.
inline constexpr size_t kIdentMaxMatchedName = 256;

// Parses the text of an ident file. Fields are separated by blanks; a field may be
// double-quoted ("" inside quotes is a quote; a quoted all is a name); # starts a comment.
// A system user name that starts with / (unquoted) is a regular expression: POSIX extended
// syntax (the part of PostgreSQL's own regex flavour that pg_ident.conf files use: ^, $, .,
// [], groups, alternation, quantifiers), matched anywhere in the name as PostgreSQL does, so
// anchors are the file's to write. glibc's matcher does not backtrack exponentially, so a
// pattern like (.*)+x cannot stall a login.
IdentFile parse_ident(std::string_view text);

// Whether map `map` lets the system user (peer's OS user, or a certificate's CN) log in as
// `db_user`: some line of that map names the system user (or its regex matches it) and
// names db_user (or all, or with a regex the name \1 becomes).
bool ident_allows(const IdentFile& file, std::string_view map, std::string_view system_user,
                  std::string_view db_user);

}  // namespace pgsluice
