// libFuzzer target: the auth_hba_file parser (parse_hba) and the matcher on fixed logins.
// The input is the hba file; after a line "----", the rest is what every @file reads as.
#include <arpa/inet.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "hba.h"

namespace {

pgsluice::HbaRequest tcp(const char* ip, bool v6, bool tls, std::string_view db,
                         std::string_view user) {
  pgsluice::HbaRequest r;
  r.ipv6 = v6;
  r.tls = tls;
  r.database = db;
  r.user = user;
  if (inet_pton(v6 ? AF_INET6 : AF_INET, ip, r.addr.data()) != 1) __builtin_trap();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view text = input;
  std::string included = "alice, bob\n";
  size_t sep = input.find("\n----\n");
  if (sep != std::string_view::npos) {
    text = input.substr(0, sep + 1);
    included.assign(input.substr(sep + 6));
  }
  pgsluice::HbaLoader loader = [&](const std::string& path) -> std::optional<std::string> {
    if (path.find("missing") != std::string::npos) return std::nullopt;
    return included;
  };
  pgsluice::HbaFile hba = pgsluice::parse_hba(text, "/etc/pgsluice/hba.conf", loader);

  if (hba.errors.size() > pgsluice::kHbaMaxProblems) __builtin_trap();
  if (hba.warnings.size() > pgsluice::kHbaMaxProblems) __builtin_trap();
  if (hba.error_count < hba.errors.size()) __builtin_trap();
  if (hba.rules.size() > pgsluice::kHbaMaxRules) __builtin_trap();
  int last = 0;
  for (const pgsluice::HbaRule& rule : hba.rules) {
    if (rule.line <= last) __builtin_trap();  // one rule per line, in file order
    last = rule.line;
    if (pgsluice::hba_method_name(rule.method) == "?") __builtin_trap();
    bool is_local = rule.type == pgsluice::HbaConnType::Local;
    if (is_local != (rule.address.kind == pgsluice::HbaAddress::Kind::Unix)) __builtin_trap();
  }

  pgsluice::HbaRequest reqs[6] = {
      tcp("10.0.0.1", false, true, "db", "alice"),
      tcp("::1", true, false, "all", "all"),
      tcp("::ffff:10.0.0.1", true, true, "db", "db"),
      tcp("192.168.1.7", false, false, "replication", "bob"),
  };
  reqs[4].unix_socket = true;
  reqs[4].database = "postgres";
  reqs[4].user = "postgres";
  reqs[5] = reqs[0];
  reqs[5].physical_replication = true;
  for (const pgsluice::HbaRequest& req : reqs) {
    const pgsluice::HbaRule* rule = pgsluice::match_hba(hba, req);
    if (rule != nullptr) {
      if (rule < hba.rules.data() || rule >= hba.rules.data() + hba.rules.size()) __builtin_trap();
      if (req.unix_socket != (rule->type == pgsluice::HbaConnType::Local)) __builtin_trap();
      if (req.physical_replication && !rule->databases.replication) __builtin_trap();
    }
    if (pgsluice::hba_no_match_message(req).rfind("no pg_hba.conf entry for ", 0) != 0) {
      __builtin_trap();
    }
  }
  return 0;
}
