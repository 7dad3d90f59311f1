// Connection strings of [databases], [users] and [peers]: `key=value key='quoted value'`.
#include "connstr.h"

#include <climits>
#include <cstddef>
#include <optional>

namespace pgsluice {

namespace {

bool is_blank(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

size_t skip_blanks(std::string_view s, size_t pos) {
  while (pos < s.size() && is_blank(s[pos])) pos++;
  return pos;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

Status bad_value(std::string_view key, std::string_view value, const char* what) {
  return Status::error("invalid value '" + std::string(value) + "' for '" + std::string(key) +
                       "': " + what);
}

// Integer in [lo, hi].
Status set_int(int& dst, std::string_view key, std::string_view value, long long lo, long long hi) {
  std::optional<long long> v = parse_int_value(value);
  if (!v) return bad_value(key, value, "expected an integer");
  if (*v < lo || *v > hi) {
    return bad_value(key, value,
                     ("out of range " + std::to_string(lo) + ".." + std::to_string(hi)).c_str());
  }
  dst = static_cast<int>(*v);
  return Status();
}

Status set_seconds(double& dst, std::string_view key, std::string_view value) {
  std::optional<double> v = parse_seconds_value(value);
  if (!v) return bad_value(key, value, "expected a number of seconds");
  dst = *v;
  return Status();
}

Status set_pool_mode(std::optional<PoolMode>& dst, std::string_view key, std::string_view value) {
  std::optional<PoolMode> m = parse_pool_mode(value);
  if (!m) return bad_value(key, value, "expected session, transaction or statement");
  dst = m;
  return Status();
}

void warn_unknown(std::vector<std::string>* warnings, std::string_view key) {
  if (warnings != nullptr) {
    warnings->push_back("unknown connection parameter '" + std::string(key) + "' ignored");
  }
}

constexpr long long kMaxCount = INT_MAX;

}  // namespace

Result<ConnstrPairs> parse_connstr(std::string_view s) {
  ConnstrPairs out;
  size_t pos = skip_blanks(s, 0);
  while (pos < s.size()) {
    // key: up to '=' or a blank
    size_t key_start = pos;
    while (pos < s.size() && s[pos] != '=' && !is_blank(s[pos])) pos++;
    std::string key(s.substr(key_start, pos - key_start));
    pos = skip_blanks(s, pos);
    if (key.empty()) return Status::error("connection string: empty parameter name");
    if (pos >= s.size() || s[pos] != '=') {
      return Status::error("connection string: expected '=' after '" + key + "'");
    }
    pos = skip_blanks(s, pos + 1);

    std::string value;
    if (pos < s.size() && s[pos] == '\'') {
      pos++;
      bool closed = false;
      while (pos < s.size()) {
        char ch = s[pos];
        if ((ch == '\'' || ch == '\\') && pos + 1 < s.size() && s[pos + 1] == '\'') {
          value.push_back('\'');
          pos += 2;
          continue;
        }
        if (ch == '\'') {
          closed = true;
          pos++;
          break;
        }
        value.push_back(ch);
        pos++;
      }
      if (!closed) {
        return Status::error("connection string: unterminated quoted value for '" + key + "'");
      }
      if (pos < s.size() && !is_blank(s[pos])) {
        return Status::error("connection string: missing blank after quoted value for '" + key +
                             "'");
      }
    } else {
      size_t value_start = pos;
      while (pos < s.size() && !is_blank(s[pos])) pos++;
      value.assign(s.substr(value_start, pos - value_start));
    }
    if (value.empty()) return Status::error("connection string: empty value for '" + key + "'");
    out.emplace_back(std::move(key), std::move(value));
    pos = skip_blanks(s, pos);
  }
  return out;
}

Status apply_database_connstr(DatabaseDef& d, std::string_view s,
                              std::vector<std::string>* warnings) {
  Result<ConnstrPairs> pairs = parse_connstr(s);
  if (!pairs) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    std::string_view k = key;
    Status st;
    if (iequals(k, "host")) {
      d.host = value;
    } else if (iequals(k, "port")) {
      d.ports.clear();
      if (value.find(',') == std::string::npos) {
        st = set_int(d.port, k, value, 1, 65535);
      } else {
        size_t from = 0;
        for (;;) {
          size_t at = value.find(',', from);
          int one = 0;
          st = set_int(one, k, value.substr(from, at == std::string::npos ? at : at - from), 1,
                       65535);
          if (!st) break;
          d.ports.push_back(one);
          if (at == std::string::npos) break;
          from = at + 1;
        }
        if (st) d.port = d.ports.front();
      }
    } else if (iequals(k, "dbname")) {
      d.dbname = value;
    } else if (iequals(k, "user")) {
      d.user = value;
    } else if (iequals(k, "password")) {
      d.password = value;
    } else if (iequals(k, "auth_user")) {
      d.auth_user = value;
    } else if (iequals(k, "auth_query")) {
      d.auth_query = value;
    } else if (iequals(k, "auth_dbname")) {
      d.auth_dbname = value;
    } else if (iequals(k, "pool_size")) {
      st = set_int(d.pool_size, k, value, 0, kMaxCount);
    } else if (iequals(k, "min_pool_size")) {
      st = set_int(d.min_pool_size, k, value, 0, kMaxCount);
    } else if (iequals(k, "reserve_pool_size") || iequals(k, "reserve_pool")) {
      st = set_int(d.reserve_pool_size, k, value, 0, kMaxCount);
    } else if (iequals(k, "max_db_connections")) {
      st = set_int(d.max_db_connections, k, value, 0, kMaxCount);
    } else if (iequals(k, "max_db_client_connections")) {
      st = set_int(d.max_db_client_connections, k, value, 0, kMaxCount);
    } else if (iequals(k, "server_lifetime")) {
      st = set_seconds(d.server_lifetime, k, value);
    } else if (iequals(k, "query_wait_timeout")) {
      st = set_seconds(d.query_wait_timeout, k, value);
    } else if (iequals(k, "pool_mode")) {
      st = set_pool_mode(d.pool_mode, k, value);
    } else if (iequals(k, "load_balance_hosts")) {
      if (iequals(value, "round-robin")) {
        d.load_balance_hosts = "round-robin";
      } else if (iequals(value, "disable")) {
        d.load_balance_hosts = "disable";
      } else {
        st = bad_value(k, value, "expected round-robin or disable");
      }
    } else if (iequals(k, "target_session_attrs")) {
      st = bad_value(k, value,
                     "expected any, read-write, read-only, primary, standby or prefer-standby");
      for (const char* v :
           {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"})
        if (iequals(value, v)) {
          d.target_session_attrs = v;
          st = Status();
        }
    } else if (iequals(k, "client_encoding")) {
      d.client_encoding = value;
    } else if (iequals(k, "datestyle")) {
      d.datestyle = value;
    } else if (iequals(k, "timezone")) {
      d.timezone = value;
    } else if (iequals(k, "application_name")) {
      d.application_name = value;
    } else if (iequals(k, "connect_query")) {
      d.connect_query = value;
    } else {
      warn_unknown(warnings, k);
    }
    if (!st) return st;
  }
  if (!d.ports.empty()) {  // PgBouncer 1.24: one port for every host, or one per host
    size_t hosts = 1;
    for (char ch : d.host) hosts += ch == ',' ? 1 : 0;
    if (d.ports.size() != hosts)
      return Status::error("port: " + std::to_string(d.ports.size()) + " ports for " +
                           std::to_string(hosts) + " hosts; give one port, or one per host");
  }
  return Status();
}

Status apply_user_connstr(UserDef& u, std::string_view s, std::vector<std::string>* warnings) {
  Result<ConnstrPairs> pairs = parse_connstr(s);
  if (!pairs) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    std::string_view k = key;
    Status st;
    if (iequals(k, "pool_size")) {
      st = set_int(u.pool_size, k, value, 0, kMaxCount);
    } else if (iequals(k, "reserve_pool_size") || iequals(k, "reserve_pool")) {
      st = set_int(u.reserve_pool_size, k, value, 0, kMaxCount);
    } else if (iequals(k, "max_user_connections")) {
      st = set_int(u.max_user_connections, k, value, 0, kMaxCount);
    } else if (iequals(k, "max_user_client_connections")) {
      st = set_int(u.max_user_client_connections, k, value, 0, kMaxCount);
    } else if (iequals(k, "pool_mode")) {
      st = set_pool_mode(u.pool_mode, k, value);
    } else if (iequals(k, "query_timeout")) {
      st = set_seconds(u.query_timeout, k, value);
    } else if (iequals(k, "query_wait_timeout")) {
      st = set_seconds(u.query_wait_timeout, k, value);
    } else if (iequals(k, "idle_transaction_timeout")) {
      st = set_seconds(u.idle_transaction_timeout, k, value);
    } else if (iequals(k, "transaction_timeout")) {
      st = set_seconds(u.transaction_timeout, k, value);
    } else if (iequals(k, "client_idle_timeout")) {
      st = set_seconds(u.client_idle_timeout, k, value);
    } else {
      warn_unknown(warnings, k);
    }
    if (!st) return st;
  }
  return Status();
}

Status apply_peer_connstr(PeerDef& p, std::string_view s, std::vector<std::string>* warnings) {
  Result<ConnstrPairs> pairs = parse_connstr(s);
  if (!pairs) return pairs.status();
  for (const auto& [key, value] : *pairs) {
    std::string_view k = key;
    Status st;
    if (iequals(k, "host")) {
      p.host = value;
    } else if (iequals(k, "port")) {
      st = set_int(p.port, k, value, 1, 65535);
    } else if (iequals(k, "pool_size")) {
      st = set_int(p.pool_size, k, value, 0, kMaxCount);
    } else {
      warn_unknown(warnings, k);
    }
    if (!st) return st;
  }
  return Status();
}

}  // namespace pgsluice
