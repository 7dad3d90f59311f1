// Connection strings of [databases], [users] and [peers]: `key=value key='quoted value'`.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common.h"
#include "config.h"

namespace pgsluice {

using ConnstrPairs = std::vector<std::pair<std::string, std::string>>;

// Splits a connection string into (key, value) pairs in order. Pairs are separated by
// spaces or tabs; spaces may surround '='. A value is either a run of non-blank characters
// or single-quoted, where '' and \' stand for a quote (any other backslash is literal) and
// the closing quote must be followed by a blank or the end. Empty keys and empty values
// are errors, as in PgBouncer. An empty or all-blank string gives no pairs.
Result<ConnstrPairs> parse_connstr(std::string_view s);

// Fill one [databases] / [users] / [peers] entry from its connection string. Only the
// keys present are set. Unknown keys are skipped with a warning (when `warnings` is not
// null); a bad number, duration, pool_mode or load_balance_hosts is an error naming the key.
Status apply_database_connstr(DatabaseDef& d, std::string_view s,
                              std::vector<std::string>* warnings);
Status apply_user_connstr(UserDef& u, std::string_view s, std::vector<std::string>* warnings);
Status apply_peer_connstr(PeerDef& p, std::string_view s, std::vector<std::string>* warnings);

}  // namespace pgsluice
