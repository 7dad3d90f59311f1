// The auth_file reader: `"user" "secret"` lines into a user -> secret map.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common.h"

namespace pgsluice {

// The contents of an auth_file (PgBouncer's userlist.txt).
struct Userlist {
  // user -> secret (plain, "md5"+32hex, or "SCRAM-SHA-256$iter:salt$stored:server")
  std::map<std::string, std::string, std::less<>> secrets;
  // The secret of `user`, or nullptr when the file does not list it.
  const std::string* find(std::string_view user) const;
};

// Parses auth_file text. Each line is `"user" "secret"` (more fields ignored, `""` is a
// quote inside a field); blank lines and lines starting with ';' or '#' are comments. A
// malformed line is skipped with a warning "path:line: ..." (when `warnings` is not null);
// a user listed twice keeps the later secret. Entries are added to `out`.
Status parse_userlist(std::string_view text, Userlist& out, std::vector<std::string>* warnings,
                      const std::string& path);

// Reads and parses the file at `path`; an unreadable file is an error.
Result<Userlist> load_userlist(const std::string& path);
// Same, collecting the malformed-line warnings into `warnings` (may be null).
Result<Userlist> load_userlist(const std::string& path, std::vector<std::string>* warnings);

}  // namespace pgsluice
