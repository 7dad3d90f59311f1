// Pinning: session state pgsluice cannot follow (session advisory locks, temporary tables,
// WITH HOLD cursors, LISTEN, set_config and DO, SQL PREPARE without remapping) keeps a
// client in transaction pooling on its server until the state is gone (ARCHITECTURE.md,
// "Pinning"). The lexer's half is scan_pins() (session_state.h); this is the rest: the
// reasons' names, the check query that tells when the state is gone, and its answer.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgsluice {

inline constexpr int kPinReasons = 7;
inline constexpr int kPinCheckCounts = 6;  // the check's counts: every reason but unread

// The name of reason bit i (0..kPinReasons-1): "advisory_lock", "temp_table", ...
std::string_view pin_reason_name(int i);
// The reasons in `pins`, comma-separated (SHOW CLIENTS); empty when none.
std::string pin_reasons(uint8_t pins);
// The 0A000 message when pin_on_untracked_state = off refuses the first reason in `pins`.
std::string pin_refusal(uint8_t pins, bool statement_mode);

// The check query (one row, one count per reason, then the value of each watched setting)
// and what its DataRow says: the reasons still present. `known`: the settings pgsluice
// follows for this client (lower case); a setting of source 'session' under any other name
// is an untracked one. `watch`: settings a set_config or DO block named (PinScan::names),
// read back with current_setting(name, true). `pinned`: the reasons the client had
// (untracked settings and SQL-prepared statements count only for a client pinned for them:
// remapping has its own check, server_check_prepared). `values`, when given, receives one
// value per watched name (nullopt: NULL, no such setting); left empty when the row is not
// understood (then nothing changes).
// `prepared`: count SQL-prepared statements (only for a client pinned for them; 0 otherwise,
// so a revoked pg_prepared_statements does not fail every check).
std::string pin_check_sql(const std::vector<std::string>& known,
                          const std::vector<std::string>& watch = {}, bool prepared = true);
uint8_t pin_check_row(std::span<const uint8_t> body, uint8_t pinned, size_t nwatch = 0,
                      std::vector<std::optional<std::string>>* values = nullptr);

}  // namespace pgsluice
