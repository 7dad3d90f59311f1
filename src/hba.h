// auth_hba_file: PgBouncer's subset of pg_hba.conf, parsed into rules, and the first-match lookup.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace pgsluice {

// The first field of a rule line.
enum class HbaConnType {
  Local,      // `local`: Unix-socket connections only
  Host,       // `host`: any TCP connection
  HostSsl,    // `hostssl`: TCP connections that use TLS
  HostNoSsl,  // `hostnossl`: TCP connections without TLS
};

// The method field. Anything else on a line makes that line an error.
enum class HbaMethod {
  Trust,
  Reject,
  Password,     // `password`: clear-text password
  Md5,          // `md5` (PgBouncer, like PostgreSQL, upgrades it to SCRAM for SCRAM secrets)
  ScramSha256,  // `scram-sha-256`
  Cert,         // client certificate (TLS); may carry map=
  Peer,         // SO_PEERCRED on the Unix socket; may carry map=
};

// A database or user field: keywords plus literal names (from the line and from @files).
struct HbaNames {
  bool all = false;          // keyword `all`
  bool sameuser = false;     // keyword `sameuser`
  bool replication = false;  // keyword `replication` (matches physical replication only)
  std::set<std::string, std::less<>> names;
};

// The address field of a host* rule.
struct HbaAddress {
  enum class Kind { Unix, All, V4, V6 };
  Kind kind = Kind::Unix;  // Unix for `local` rules (no address field)
  // Network address and mask in network byte order; V4 uses the first 4 bytes.
  std::array<uint8_t, 16> addr{};
  std::array<uint8_t, 16> mask{};
};

struct HbaRule {
  HbaConnType type = HbaConnType::Host;
  HbaNames databases;
  HbaNames users;
  HbaAddress address;
  HbaMethod method = HbaMethod::Reject;
  std::string map;  // the map= option, empty when absent (names an auth_ident_file map)
  int line = 0;     // 1-based line in the hba file
};

// One problem found while parsing; `line` is the line of the hba file (0: the file as a whole).
struct HbaProblem {
  int line = 0;
  std::string message;
};

// A parsed hba file. PgBouncer logs a bad line and skips it, keeping the other rules; the
// same happens here (`rules` holds every good line), but every skipped line is listed in
// `errors` so that the caller can refuse the whole file instead: skipping a `reject` line
// lets the following lines match connections it was meant to refuse.
struct HbaFile {
  std::vector<HbaRule> rules;
  std::vector<HbaProblem> errors;    // lines that were skipped (at most kHbaMaxProblems kept)
  std::vector<HbaProblem> warnings;  // lines kept that probably do not do what was meant
  size_t error_count = 0;            // every error, also those past kHbaMaxProblems
};

// Bounds that keep a hostile or runaway file from using unbounded memory or recursion.
inline constexpr size_t kHbaMaxLineLength = 1 << 20;    // bytes in one line
inline constexpr size_t kHbaMaxRules = 100000;          // rules in one file
inline constexpr size_t kHbaMaxTotalBytes = 64u << 20;  // the file plus every @file read
inline constexpr int kHbaMaxIncludeDepth = 10;          // @file inside @file ...
inline constexpr size_t kHbaMaxProblems = 100;          // errors/warnings kept in the lists

// Reads the @file named by a path (already joined with the including file's directory);
// nullopt when it cannot be read. Keeps the parser free of file access.
using HbaLoader = std::function<std::optional<std::string>(const std::string& path)>;

// Parses the text of the hba file found at `path` (used to resolve relative @file names).
HbaFile parse_hba(std::string_view text, const std::string& path, const HbaLoader& loader);

// What the matcher needs to know about a login.
struct HbaRequest {
  bool unix_socket = false;  // came in on the Unix socket (then addr is unused)
  bool tls = false;
  bool ipv6 = false;               // addr holds 16 bytes of IPv6, else 4 bytes of IPv4
  std::array<uint8_t, 16> addr{};  // peer address in network byte order
  std::string_view database;
  std::string_view user;
  bool physical_replication = false;  // startup had replication=true (not replication=database)
};

// The first rule that matches, or nullptr: no rule matches, the login is refused.
const HbaRule* match_hba(const HbaFile& hba, const HbaRequest& req);

// The method's keyword as written in the file.
std::string_view hba_method_name(HbaMethod method);

// The text PostgreSQL 15 sends (FATAL, SQLSTATE 28000) when no line matches, e.g.
// `no pg_hba.conf entry for host "10.0.0.1", user "u", database "d", SSL encryption`.
// ("[local]" for the Unix socket; physical replication has its own wording.) PgBouncer
// itself says only "no authentication method is found".
std::string hba_no_match_message(const HbaRequest& req);
// PostgreSQL 15's text (FATAL, 28000) when the matching line's method is `reject`, e.g.
// `pg_hba.conf rejects connection for host "10.0.0.1", user "u", database "d", no encryption`.
std::string hba_reject_message(const HbaRequest& req);
inline constexpr std::string_view kHbaNoMatchSqlstate = "28000";

}  // namespace pgsluice
