// The admin console: the virtual databases "pgbouncer" and "pgsluice": parsing, access
// control, SHOW commands built from gathered snapshots, and the operator commands.
#include "admin.h"

#include <event2/event.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <map>
#include <memory>
#include <set>
#include <tuple>

#include "client.h"
#include "config.h"
#include "gather.h"
#include "log.h"
#include "pool.h"
#include "rowset.h"
#include "server.h"
#include "target.h"
#include "trace.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

// ---------------------------------------------------------------- parsing

namespace {

bool is_ws(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}
bool is_word_char(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         ch == '_';
}
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out)
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  return out;
}

struct Lexer {
  std::string_view s;
  size_t i = 0;
  void skip_ws() {
    while (i < s.size() && is_ws(s[i])) i++;
  }
  bool at_end() {
    skip_ws();
    return i >= s.size();
  }
  // A word ([0-9a-z_]+) or a "quoted" word with "" escapes. `quoted` tells which.
  bool word(std::string& out, bool* quoted = nullptr) {
    skip_ws();
    out.clear();
    if (i < s.size() && s[i] == '"') {
      size_t j = i + 1;
      for (;;) {
        if (j >= s.size()) return false;
        if (s[j] == '"') {
          if (j + 1 < s.size() && s[j + 1] == '"') {
            out.push_back('"');
            j += 2;
            continue;
          }
          break;
        }
        out.push_back(s[j++]);
      }
      if (out.empty()) return false;
      i = j + 1;
      if (quoted) *quoted = true;
      return true;
    }
    size_t j = i;
    while (j < s.size() && is_word_char(s[j])) j++;
    if (j == i) return false;
    out.assign(s.substr(i, j - i));
    i = j;
    if (quoted) *quoted = false;
    return true;
  }
  bool string_lit(std::string& out) {
    skip_ws();
    if (i >= s.size() || s[i] != '\'') return false;
    size_t j = i + 1;
    out.clear();
    for (;;) {
      if (j >= s.size()) return false;
      if (s[j] == '\'') {
        if (j + 1 < s.size() && s[j + 1] == '\'') {
          out.push_back('\'');
          j += 2;
          continue;
        }
        break;
      }
      out.push_back(s[j++]);
    }
    i = j + 1;
    return true;
  }
  // Optional trailing ';' then the end.
  bool finish() {
    skip_ws();
    if (i < s.size() && s[i] == ';') i++;
    return at_end();
  }
};

}  // namespace

std::optional<AdminStatement> parse_admin_statement(std::string_view q) {
  Lexer lx{q};
  AdminStatement st;
  std::string first;
  bool quoted = false;
  if (!lx.word(first, &quoted)) return std::nullopt;
  if (!quoted && lower(first) == "set") {
    size_t save = lx.i;
    std::string key;
    if (lx.word(key)) {
      lx.skip_ws();
      bool sep = false;
      if (lx.i < q.size() && q[lx.i] == '=') {
        lx.i++;
        sep = true;
      } else {
        std::string to;
        size_t before = lx.i;
        if (lx.word(to) && lower(to) == "to")
          sep = true;
        else
          lx.i = before;
      }
      if (sep) {
        std::string value;
        lx.skip_ws();
        bool ok = (lx.i < q.size() && q[lx.i] == '\'') ? lx.string_lit(value) : lx.word(value);
        if (!ok || !lx.finish()) return std::nullopt;
        st.is_set = true;
        st.key = lower(key);
        st.value = value;
        return st;
      }
    }
    lx.i = save;
  }
  st.cmd = quoted ? first : lower(first);
  if (!lx.at_end() && q[lx.i] != ';') {
    if (!lx.word(st.arg)) return std::nullopt;
  }
  lx.skip_ws();
  if ((st.cmd == "show" || st.cmd == "select") && lower(st.arg) == "client_state" && !lx.at_end() &&
      q[lx.i] != ';') {
    if (!lx.word(st.arg2)) return std::nullopt;  // SHOW CLIENT_STATE <id>
  }
  if (st.cmd == "drop" && lower(st.arg) == "auth_cache" && !lx.at_end() && q[lx.i] != ';') {
    if (!lx.word(st.arg2)) return std::nullopt;  // DROP AUTH_CACHE user: the one two-word form
  }
  if (!lx.finish()) return std::nullopt;
  return st;
}

const std::vector<std::string>& admin_commands() {
  static const std::vector<std::string> v = {
      "SHOW",      "SET",  "RELOAD",      "PAUSE",   "RESUME",   "DISABLE",    "ENABLE",
      "RECONNECT", "KILL", "KILL_CLIENT", "SUSPEND", "SHUTDOWN", "WAIT_CLOSE", "DROP"};
  return v;
}

const std::vector<std::string>& admin_show_commands() {
  static const std::vector<std::string> v = {
      "HELP",           "CONFIG",     "DATABASES",  "POOLS",
      "CLIENTS",        "SERVERS",    "USERS",      "VERSION",
      "PEERS",          "PEER_POOLS", "FDS",        "SOCKETS",
      "ACTIVE_SOCKETS", "LISTS",      "MEM",        "STATE",
      "DNS_HOSTS",      "DNS_ZONES",  "STATS",      "STATS_TOTALS",
      "STATS_AVERAGES", "TOTALS",     "HISTOGRAMS", "AUTH_CACHE",
      "CLIENT_STATE"};
  return v;
}

bool user_in_list(std::string_view list, std::string_view user) {
  size_t i = 0;
  while (i < list.size()) {
    while (i < list.size() && (list[i] == ',' || is_ws(list[i]))) i++;
    size_t j = i;
    while (j < list.size() && list[j] != ',' && !is_ws(list[j])) j++;
    if (j > i && list.substr(i, j - i) == user) return true;
    i = j;
  }
  return false;
}

bool is_admin_database(std::string_view db) {
  return db == "pgbouncer" || db == "pgsluice";
}

bool admin_trusted_peer(const Client* c) {
  if (!c->is_unix_ || c->user_ != "pgbouncer") return false;
  ucred cr{};
  socklen_t len = sizeof cr;
  if (getsockopt(c->fd(), SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return false;
  return cr.uid == getuid();
}

// ---------------------------------------------------------------- replies

namespace {

constexpr uint8_t kRoleStats = 1;
constexpr uint8_t kRoleAdmin = 2;

void send(Client* c, const std::string& m) {
  c->worker()->bufs().append(c->out_, m.data(), m.size());
  c->flush();
}

void reply_ready(Client* c, std::string m) {
  wire::ready_for_query(m, 'I');
  send(c, m);
}

// An ERROR that leaves the console usable (PgBouncer's admin_error).
void reply_error(Client* c, const std::string& msg, const char* sqlstate = "08P01") {
  LOG_WARN("C-%p: %s/%s@%s:%d console error: %s", static_cast<void*>(c), c->db_.c_str(),
           c->user_.c_str(), c->addr_.host.c_str(), c->addr_.port, msg.c_str());
  std::string m;
  wire::error_response(m, "ERROR", sqlstate, msg);
  reply_ready(c, std::move(m));
}

void reply_tag(Client* c, std::string_view tag, const std::string& notice = {}) {
  std::string m;
  if (!notice.empty()) wire::notice_response(m, notice);
  command_complete(m, tag);
  reply_ready(c, std::move(m));
}

void reply_rows(Client* c, const RowSet& rs) {
  std::string m;
  rs.finish(m);
  reply_ready(c, std::move(m));
}

std::optional<std::string> opt(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

// ---------------------------------------------------------------- deferred answers

// Runs `fn` on the console client's worker once a gather finished, if the client still
// exists; then turns its reading back on and processes what it sent meanwhile.
void resume_client(Worker& w, uint64_t id) {
  Client* c = w.find_client(id);
  if (c == nullptr) return;
  c->admin_busy_ = false;
  c->want_read(true);
  if (!c->in_.empty()) c->process();
}

void with_snapshot(Client* c, unsigned parts, std::function<void(Client*, Snapshot&)> fn) {
  uint64_t id = c->id_;
  Worker* w = c->worker();
  c->admin_busy_ = true;
  c->want_read(false);
  gather_async(*w, parts, [w, id, fn](Snapshot& s) {
    Client* cl = w->find_client(id);
    if (cl == nullptr) return;
    fn(cl, s);
    resume_client(*w, id);
  });
}

// Polls `done` every 100 ms on the console's worker, then answers `tag`.
struct Poll {
  Worker* w;
  uint64_t id;
  std::function<bool()> done;
  std::string tag;
};

void poll_cb(evutil_socket_t, short, void* arg) {
  std::unique_ptr<Poll> p(static_cast<Poll*>(arg));
  Client* c = p->w->find_client(p->id);
  if (c == nullptr) return;
  if (!p->done()) {
    timeval tv{0, 100000};
    Poll* again = p.release();
    event_base_once(again->w->base(), -1, EV_TIMEOUT, poll_cb, again, &tv);
    return;
  }
  reply_tag(c, p->tag);
  resume_client(*p->w, p->id);
}

void wait_then_reply(Client* c, std::function<bool()> done, std::string tag) {
  if (done()) {
    reply_tag(c, tag);
    return;
  }
  c->admin_busy_ = true;
  c->want_read(false);
  auto* p = new Poll{c->worker(), c->id_, std::move(done), std::move(tag)};
  timeval tv{0, 100000};
  event_base_once(c->worker()->base(), -1, EV_TIMEOUT, poll_cb, p, &tv);
}

void on_all_workers(Runtime* rt, const std::function<void(Worker&)>& fn) {
  for (auto& w : rt->workers) w->post_call(fn);
}

// ---------------------------------------------------------------- SHOW helpers

// Databases SHOW DATABASES lists: the configured ones, those auto-created from "*".
std::vector<std::string> database_names(Runtime* rt, const Config& cfg) {
  std::set<std::string> names;
  for (const auto& [n, d] : cfg.databases) names.insert(n);
  for (Pool* p : rt->registry->pools()) names.insert(p->db_name);
  names.insert("pgbouncer");
  return {names.begin(), names.end()};
}

void show_help(Client* c) {
  std::string m;
  wire::Writer w(m);
  w.begin('N').u8('S').cstr("NOTICE").u8('V').cstr("NOTICE").u8('C').cstr("00000");
  w.u8('M').cstr("Console usage");
  w.u8('D').cstr(
      "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
      "\tSHOW PEERS|PEER_POOLS\n"
      "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n"
      "\tSHOW DNS_HOSTS|DNS_ZONES\n"
      "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|HISTOGRAMS\n"
      "\tSHOW CLIENT_STATE <client_id>\n"
      "\tSET key = arg\n"
      "\tSET trace = off|all|'client <id>'|'db <name>'\n"
      "\tRELOAD\n"
      "\tPAUSE [<db>]\n"
      "\tRESUME [<db>]\n"
      "\tDISABLE <db>\n"
      "\tENABLE <db>\n"
      "\tRECONNECT [<db>]\n"
      "\tKILL [<db>]\n"
      "\tKILL_CLIENT <client_id>\n"
      "\tSUSPEND\n"
      "\tSHUTDOWN\n"
      "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
      "\tWAIT_CLOSE [<db>]");
  w.u8(0).end();
  command_complete(m, "SHOW");
  reply_ready(c, std::move(m));
}

void show_config(Client* c) {
  auto cfg = c->worker()->rt()->config();
  std::vector<const SettingInfo*> rows;
  for (const SettingInfo& s : settings_table()) rows.push_back(&s);
  std::sort(rows.begin(), rows.end(), [](const SettingInfo* a, const SettingInfo* b) {
    return std::string_view(a->name) < std::string_view(b->name);
  });
  RowSet rs("ssss", {"key", "value", "default", "changeable"});
  for (const SettingInfo* s : rows)
    rs.row({s->name, setting_value(*cfg, s->name).value_or(""), s->default_value,
            s->reloadable ? "yes" : "no"});
  reply_rows(c, rs);
}

void show_databases(Client* c, Snapshot& snap) {
  Runtime* rt = c->worker()->rt();
  auto cfg = rt->config();
  std::map<std::string, int> servers;
  std::map<std::string, std::optional<std::string>> now_on;  // the first pool's current host
  for (Pool* p : rt->registry->pools()) {
    servers[p->db_name] += p->server_count();
    auto& h = now_on[p->db_name];
    if (!h) h = current_host(*p);
  }
  RowSet rs("ssissiiiissiiiiiis",
            {"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
             "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
             "max_connections", "current_connections", "max_client_connections",
             "current_client_connections", "paused", "disabled", "current_host"});
  for (const std::string& name : database_names(rt, *cfg)) {
    if (name == "pgbouncer") {
      rs.row({"pgbouncer", std::nullopt, cell(cfg->listen_port), "pgbouncer", "pgbouncer", "2", "0",
              "0", cell(static_cast<long long>(cfg->server_lifetime)), "statement", std::nullopt,
              cell(cfg->max_db_connections), "0", cell(cfg->max_db_client_connections),
              cell(snap.admin_clients), "0", "0", std::nullopt});
      continue;
    }
    const DatabaseDef* d = cfg->database(name);
    if (d == nullptr) continue;
    DbState* st = rt->registry->db_state(name);
    double life = d->server_lifetime > 0 ? d->server_lifetime : cfg->server_lifetime;
    std::optional<std::string> lb;
    if (d->host.find(',') != std::string::npos)
      lb = d->load_balance_hosts.empty() ? "round-robin" : d->load_balance_hosts;
    rs.row({name, opt(d->host), cell(d->port), d->dbname.empty() ? name : d->dbname, opt(d->user),
            cell(d->pool_size >= 0 ? d->pool_size : cfg->default_pool_size),
            cell(d->min_pool_size >= 0 ? d->min_pool_size : cfg->min_pool_size),
            cell(d->reserve_pool_size >= 0 ? d->reserve_pool_size : cfg->reserve_pool_size),
            cell(static_cast<long long>(life)),
            d->pool_mode ? std::optional<std::string>(pool_mode_name(*d->pool_mode)) : std::nullopt,
            lb, cell(d->max_db_connections >= 0 ? d->max_db_connections : cfg->max_db_connections),
            cell(servers[name]),
            cell(d->max_db_client_connections > 0 ? d->max_db_client_connections
                                                  : cfg->max_db_client_connections),
            cell(rt->registry->db_client_count(name)), cell(st->paused.load() ? 1 : 0),
            cell(st->disabled.load() ? 1 : 0), now_on[name]});
  }
  reply_rows(c, rs);
}

void show_pools(Client* c, Snapshot& snap) {
  RowSet rs("ssiiiiiiiiiiiiisss",
            {"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
             "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
             "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
             "load_balance_hosts", "current_host"});
  bool admin_done = false;
  auto admin_row = [&] {
    rs.row({"pgbouncer", "pgbouncer", cell(snap.admin_clients), "0", "0", "0", "0", "0", "0", "0",
            "0", "0", "0", "0", "0", "statement", std::nullopt, std::nullopt});
    admin_done = true;
  };
  for (const PoolRow& r : snap.pools) {
    if (!admin_done && r.db > "pgbouncer") admin_row();
    rs.row({r.db, r.user, cell(r.cl_active), cell(r.cl_waiting), "0", "0", cell(r.sv_active),
            cell(r.sv_active_cancel), cell(r.sv_being_canceled), cell(r.sv_idle), cell(r.sv_used),
            cell(r.sv_tested), cell(r.sv_login),
            cell(static_cast<long long>(r.maxwait_us / 1000000)),
            cell(static_cast<long long>(r.maxwait_us % 1000000)), r.mode, std::nullopt, r.host});
  }
  if (!admin_done) admin_row();
  reply_rows(c, rs);
}

std::vector<std::string> socket_columns(bool debug) {
  std::vector<std::string> v = {"type",
                                "user",
                                "database",
                                "replication",
                                "state",
                                "addr",
                                "port",
                                "local_addr",
                                "local_port",
                                "connect_time",
                                "request_time",
                                "wait",
                                "wait_us",
                                "close_needed",
                                "ptr",
                                "link",
                                "remote_pid",
                                "tls",
                                "application_name",
                                "prepared_statements",
                                "id"};
  if (debug)
    for (const char* n : {"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain",
                          "pkt_avail", "send_avail"})
      v.push_back(n);
  return v;
}

constexpr const char* kSocketStd = "ssssssisiTTiiississii";
constexpr const char* kSocketDbg = "ssssssisiTTiiississiiiiiiiii";

void socket_row(RowSet& rs, const ConnRow& r, const std::string& state, bool debug,
                const std::string* pinned = nullptr) {
  std::vector<std::optional<std::string>> v = {r.is_server ? "S" : "C",
                                               r.user,
                                               r.db,
                                               "none",
                                               state,
                                               r.addr,
                                               cell(r.port),
                                               r.local_addr,
                                               cell(r.local_port),
                                               cell_time(r.connect_wall),
                                               cell_time(r.request_wall),
                                               cell(static_cast<long long>(r.wait_us / 1000000)),
                                               cell(static_cast<long long>(r.wait_us % 1000000)),
                                               cell(r.close_needed ? 1 : 0),
                                               cell_ptr(r.ptr),
                                               cell_ptr(r.link),
                                               cell(r.remote_pid),
                                               r.tls,
                                               r.app_name,
                                               cell_u(r.prepared),
                                               cell_u(r.id)};
  if (debug)
    for (uint64_t x : {r.recv_pos, r.pkt_pos, r.pkt_remain, r.send_pos, r.send_remain, r.pkt_avail,
                       r.send_avail})
      v.push_back(cell_u(x));
  if (pinned != nullptr) v.push_back(*pinned);
  rs.row(v);
}

// PgBouncer's columns, then pinned (pinning.h): why a client keeps its server.
void show_clients(Client* c, Snapshot& snap) {
  std::vector<std::string> cols = socket_columns(false);
  cols.push_back("pinned");
  RowSet rs("ssssssisiTTiiississiis", cols);
  for (const ConnRow& r : snap.clients)
    if (!r.logging_in) socket_row(rs, r, r.state, false, &r.pinned);
  reply_rows(c, rs);
}

void show_servers(Client* c, Snapshot& snap) {
  RowSet rs(kSocketStd, socket_columns(false));
  for (const ConnRow& r : snap.servers) socket_row(rs, r, r.state, false);
  reply_rows(c, rs);
}

void show_sockets(Client* c, Snapshot& snap, bool only_active) {
  RowSet rs(kSocketDbg, socket_columns(true));
  for (const ConnRow& r : snap.clients) {
    if (only_active && r.pkt_avail == 0 && r.send_avail == 0) continue;
    std::string st = r.logging_in ? "cl_login" : r.state == "waiting" ? "cl_waiting" : "cl_active";
    socket_row(rs, r, st, true);
  }
  for (const ConnRow& r : snap.servers) {
    if (only_active && r.pkt_avail == 0 && r.send_avail == 0) continue;
    std::string st = r.state == "new" ? "sv_login" : "sv_" + r.state;
    socket_row(rs, r, st, true);
  }
  reply_rows(c, rs);
}

// SHOW AUTH_CACHE: auth_file's users, then what auth_query found (never a secret).
void show_auth_cache(Client* c) {
  Runtime* rt = c->worker()->rt();
  auto cfg = rt->config();
  RowSet rs("sssqq", {"user", "database", "source", "age", "hits"});
  for (const auto& [n, s] : cfg->userlist.secrets) rs.row({n, "", "auth_file", {}, {}});
  auto rows = rt->auth_cache->rows();
  std::sort(rows.begin(), rows.end(), [](const AuthCache::Row& a, const AuthCache::Row& b) {
    return std::tie(a.user, a.dbname) < std::tie(b.user, b.dbname);
  });
  for (const AuthCache::Row& r : rows)
    rs.row({r.user, r.dbname, r.source, cell(static_cast<long long>(r.age)),
            cell(static_cast<long long>(r.hits))});
  reply_rows(c, rs);
}

void show_users(Client* c) {
  Runtime* rt = c->worker()->rt();
  auto cfg = rt->config();
  std::set<std::string> names;
  for (const auto& [n, u] : cfg->users) names.insert(n);
  for (const auto& [n, s] : cfg->userlist.secrets) names.insert(n);
  for (Pool* p : rt->registry->pools()) names.insert(p->user_name);
  RowSet rs("ssssiiii",
            {"name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
             "current_connections", "max_user_client_connections", "current_client_connections"});
  auto padded = [](int v) -> std::string {
    if (v < 0) return "";
    char b[16];
    std::snprintf(b, sizeof b, "%9d", v);
    return b;
  };
  for (const std::string& n : names) {
    const UserDef* u = nullptr;
    if (auto it = cfg->users.find(n); it != cfg->users.end()) u = &it->second;
    std::optional<std::string> mode;
    if (u && u->pool_mode) mode = pool_mode_name(*u->pool_mode);
    rs.row({n, padded(u ? u->pool_size : -1), padded(u ? u->reserve_pool_size : -1), mode,
            cell(u && u->max_user_connections >= 0 ? u->max_user_connections
                                                   : cfg->max_user_connections),
            cell(rt->registry->user_server_count(n)),
            cell(u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                         : cfg->max_user_client_connections),
            cell(rt->registry->user_client_count(n))});
  }
  reply_rows(c, rs);
}

void show_version(Client* c) {
  RowSet rs("s", {"version"});
  rs.row({std::string("PgBouncer ") + kPgBouncerCompat + " compatible (pgsluice " +
          kPgsluiceVersion + ")"});
  reply_rows(c, rs);
}

void show_peers(Client* c) {
  auto cfg = c->worker()->rt()->config();
  RowSet rs("isii", {"peer_id", "host", "port", "pool_size"});
  for (const auto& [id, p] : cfg->peers)
    rs.row({cell(id), p.host, cell(p.port),
            cell(p.pool_size >= 0 ? p.pool_size : cfg->default_pool_size)});
  reply_rows(c, rs);
}

void show_peer_pools(Client* c) {
  RowSet rs("iiiii", {"peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req",
                      "sv_active_cancel", "sv_login"});
  reply_rows(c, rs);  // [peers] cancel forwarding is not built: no peer pools
}

void show_fds(Client* c, Snapshot& snap) {
  RowSet rs("issssiqisssssbb", {"fd", "task", "user", "database", "addr", "port", "cancel", "link",
                                "client_encoding", "std_strings", "datestyle", "timezone",
                                "password", "scram_client_key", "scram_server_key"});
  // pgsluice does not pass file descriptors (no online takeover); the rows describe them.
  for (const ConnRow& r : snap.clients)
    rs.row({cell(r.fd), "client", r.user, r.db, r.addr, cell(r.port), "0", cell(r.link_fd),
            std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
            std::nullopt});
  for (const ConnRow& r : snap.servers)
    rs.row({cell(r.fd), "server", r.user, r.db, r.addr, cell(r.port), "0", cell(r.link_fd),
            std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
            std::nullopt});
  reply_rows(c, rs);
}

void show_lists(Client* c, Snapshot& snap) {
  Runtime* rt = c->worker()->rt();
  auto cfg = rt->config();
  std::set<std::string> users;
  for (const auto& [n, u] : cfg->users) users.insert(n);
  for (const auto& [n, s] : cfg->userlist.secrets) users.insert(n);
  RowSet rs("si", {"list", "items"});
  auto pools = rt->registry->pools();
  rs.row({"databases", cell(static_cast<long long>(database_names(rt, *cfg).size()))});
  rs.row({"users", cell(static_cast<long long>(users.size()))});
  rs.row({"peers", cell(static_cast<long long>(cfg->peers.size()))});
  rs.row({"pools", cell(static_cast<long long>(pools.size() + 1))});
  rs.row({"peer_pools", "0"});
  rs.row({"free_clients", "0"});
  rs.row({"used_clients", cell(snap.used_clients)});
  rs.row({"login_clients", cell(snap.login_clients)});
  rs.row({"free_servers", "0"});
  rs.row({"used_servers", cell(snap.used_servers)});
  Resolver::Counts dns = rt->registry->resolver().counts();
  rs.row({"dns_names", cell(static_cast<long long>(dns.names))});
  rs.row({"dns_zones", "0"});  // dns_zone_check_period is not implemented
  rs.row({"dns_queries", cell(static_cast<long long>(dns.queries))});
  rs.row({"dns_pending", cell(static_cast<long long>(dns.pending))});
  reply_rows(c, rs);
}

void show_mem(Client* c, Snapshot& snap) {
  RowSet rs("siiii", {"name", "size", "used", "free", "memtotal"});
  auto row = [&](const char* name, size_t size, long long used, long long free) {
    rs.row({name, cell(static_cast<long long>(size)), cell(used), cell(free),
            cell(static_cast<long long>(size) * (used + free))});
  };
  row("client_cache", sizeof(Client), snap.used_clients, 0);
  row("server_cache", sizeof(Server), snap.used_servers, 0);
  row("iobuf_cache", BufPool::kBlock, 0, static_cast<long long>(snap.free_blocks));
  reply_rows(c, rs);
}

void show_state(Client* c) {
  Runtime* rt = c->worker()->rt();
  bool paused = rt->paused_all.load(), susp = rt->suspended.load();
  RowSet rs("ss", {"key", "value"});
  rs.row({"active", (!paused && !susp) ? "yes" : "no"});
  rs.row({"paused", paused ? "yes" : "no"});
  rs.row({"suspended", susp ? "yes" : "no"});
  reply_rows(c, rs);
}

const std::vector<std::string>& stats_names() {
  static const std::vector<std::string> v = {"server_assignment_count",
                                             "xact_count",
                                             "query_count",
                                             "received",
                                             "sent",
                                             "xact_time",
                                             "query_time",
                                             "wait_time",
                                             "client_parse_count",
                                             "server_parse_count",
                                             "bind_count",
                                             "client_login_count"};
  return v;
}

std::vector<std::string> total_cells(const PoolStats& s) {
  return {cell_u(s.server_assignment_count), cell_u(s.xact_count),   cell_u(s.query_count),
          cell_u(s.bytes_received),          cell_u(s.bytes_sent),   cell_u(s.xact_time_us),
          cell_u(s.query_time_us),           cell_u(s.wait_time_us), cell_u(s.client_parse_count),
          cell_u(s.server_parse_count),      cell_u(s.bind_count),   cell_u(s.client_login_count)};
}
std::vector<std::string> avg_cells(const StatsAverages& a) {
  return {cell_u(a.server_assignment_count), cell_u(a.xact_count),   cell_u(a.query_count),
          cell_u(a.bytes_received),          cell_u(a.bytes_sent),   cell_u(a.xact_time_us),
          cell_u(a.query_time_us),           cell_u(a.wait_time_us), cell_u(a.client_parse_count),
          cell_u(a.server_parse_count),      cell_u(a.bind_count),   cell_u(a.client_login_count)};
}

// Every database with pools, plus the console's own (all zero), as PgBouncer lists it.
std::map<std::string, PoolStats> db_totals(const Snapshot& snap) {
  auto t = stats_by_database(snap);
  t["pgbouncer"];
  return t;
}

enum class StatsKind { Both, Totals, Averages };

void show_stats(Client* c, Snapshot& snap, StatsKind kind) {
  Runtime* rt = c->worker()->rt();
  auto totals = db_totals(snap);
  auto avgs = rt->stats ? rt->stats->averages() : std::map<std::string, StatsAverages>{};
  std::vector<std::string> names = {"database"};
  std::string letters = "s";
  const auto& base = stats_names();
  if (kind != StatsKind::Averages)
    for (const auto& n : base) {
      if (kind == StatsKind::Both)
        names.push_back(n == "received" ? "total_received"
                        : n == "sent"   ? "total_sent"
                                        : "total_" + n);
      else
        names.push_back(n == "received" ? "bytes_received" : n == "sent" ? "bytes_sent" : n);
      letters += 'N';
    }
  if (kind != StatsKind::Totals)
    for (size_t i = 0; i < base.size(); i++) {
      const std::string& n = base[i];
      if (kind == StatsKind::Both)
        names.push_back(n == "received" ? "avg_recv" : "avg_" + n);
      else if (i < 3 || n == "received" || n == "sent" || n.find("time") != std::string::npos)
        names.push_back(n == "received" ? "bytes_received" : n == "sent" ? "bytes_sent" : n);
      else
        names.push_back("avg_" + n);  // PgBouncer's mixed prefixes
      letters += 'N';
    }
  RowSet rs(letters, names);
  for (const auto& [db, t] : totals) {
    std::vector<std::optional<std::string>> row = {db};
    if (kind != StatsKind::Averages)
      for (auto& v : total_cells(t)) row.push_back(v);
    if (kind != StatsKind::Totals)
      for (auto& v : avg_cells(avgs[db])) row.push_back(v);
    rs.row(row);
  }
  reply_rows(c, rs);
}

void show_totals(Client* c, Snapshot& snap) {
  Runtime* rt = c->worker()->rt();
  PoolStats t;
  for (const PoolRow& r : snap.pools) t.merge(r.stats);
  StatsAverages a = rt->stats ? rt->stats->total_averages() : StatsAverages{};
  RowSet rs("sN", {"name", "value"});
  auto tc = total_cells(t);
  auto ac = avg_cells(a);
  const auto& base = stats_names();
  for (size_t i = 0; i < base.size(); i++) rs.row({"total_" + base[i], tc[i]});
  for (size_t i = 0; i < base.size(); i++)
    rs.row({base[i] == "received" ? "avg_recv" : "avg_" + base[i], ac[i]});
  reply_rows(c, rs);
}

void show_histograms(Client* c, Snapshot& snap) {
  RowSet rs("ssssqqq",
            {"database", "user", "histogram", "le_us", "count", "cumulative_count", "sum_us"});
  for (const PoolRow& r : snap.pools) {
    const std::pair<const char*, const Histogram*> hs[] = {
        {"query", &r.stats.query_hist}, {"xact", &r.stats.xact_hist}, {"wait", &r.stats.wait_hist}};
    for (const auto& [name, h] : hs) {
      uint64_t cum = 0;
      for (size_t i = 0; i < h->buckets.size(); i++) {
        cum += h->buckets[i];
        std::string le = i < Histogram::kBoundsUs.size() ? cell_u(Histogram::kBoundsUs[i]) : "+Inf";
        rs.row({r.db, r.user, name, le, cell_u(h->buckets[i]), cell_u(cum), cell_u(h->sum_us)});
      }
    }
  }
  reply_rows(c, rs);
}

// ---------------------------------------------------------------- fake parameters

struct FakeParam {
  const char* name;
  const char* value;
};
constexpr FakeParam kFakeParams[] = {{"client_encoding", "UTF-8"},
                                     {"default_transaction_isolation", "read committed"},
                                     {"standard_conforming_strings", "on"},
                                     {"datestyle", "ISO"},
                                     {"timezone", "GMT"},
                                     {"extra_float_digits", "2"}};

const FakeParam* fake_param(const std::string& name) {
  std::string n = lower(name);
  for (const FakeParam& p : kFakeParams)
    if (n == p.name) return &p;
  return nullptr;
}

// ---------------------------------------------------------------- commands

bool db_known(Runtime* rt, const std::string& db) {
  auto cfg = rt->config();
  if (cfg->databases.count(db) || cfg->fallback_db) return true;
  for (Pool* p : rt->registry->pools())
    if (p->db_name == db) return true;
  return false;
}

// Servers still open for `db` (all databases when empty).
int open_servers(Runtime* rt, const std::string& db) {
  int n = 0;
  for (Pool* p : rt->registry->pools())
    if (db.empty() || p->db_name == db) n += p->server_count();
  return n;
}

void sweep_all(Runtime* rt, const std::string& kill_db = {}) {
  on_all_workers(rt, [kill_db](Worker& w) { w.sweep(kill_db); });
}

void cmd_pause(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  if (rt->paused_all.load() || rt->suspended.load())
    return reply_error(c, "already suspended/paused");
  if (arg.empty()) {
    LOG_INFO("PAUSE command issued");
    rt->paused_all = true;
  } else {
    LOG_INFO("PAUSE '%s' command issued", arg.c_str());
    if (is_admin_database(arg)) return reply_error(c, "cannot pause admin db: " + arg);
    if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
    rt->registry->db_state(arg)->paused = true;
  }
  sweep_all(rt);
  wait_then_reply(
      c, [rt, arg] { return open_servers(rt, arg) == 0; }, "PAUSE");
}

void cmd_resume(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  if (arg.empty()) {
    LOG_INFO("RESUME command issued");
    if (rt->shutdown_mode.load() != 0) return reply_error(c, "pooler is shutting down");
    if (!rt->paused_all.load() && !rt->suspended.load())
      return reply_error(c, "pooler is not paused/suspended");
    rt->paused_all = false;
    rt->suspended = false;
    on_all_workers(rt, [](Worker& w) { w.set_suspended(false); });
  } else {
    LOG_INFO("RESUME '%s' command issued", arg.c_str());
    if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
    DbState* st = rt->registry->db_state(arg);
    if (!st->paused.load()) return reply_error(c, "database " + arg + " is not paused");
    st->paused = false;
  }
  sweep_all(rt);
  reply_tag(c, "RESUME");
}

void cmd_disable(Client* c, const std::string& arg, bool disable) {
  Runtime* rt = c->worker()->rt();
  if (arg.empty()) return reply_error(c, "a database is required");
  LOG_INFO("%s '%s' command issued", disable ? "DISABLE" : "ENABLE", arg.c_str());
  if (is_admin_database(arg))
    return reply_error(
        c, std::string("cannot ") + (disable ? "disable" : "enable") + " admin db: " + arg);
  if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
  rt->registry->db_state(arg)->disabled = disable;
  reply_tag(c, disable ? "DISABLE" : "ENABLE");
}

void cmd_reconnect(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  if (arg.empty()) {
    LOG_INFO("RECONNECT command issued");
    for (const std::string& db : rt->registry->db_names()) rt->registry->db_state(db)->generation++;
  } else {
    LOG_INFO("RECONNECT '%s' command issued", arg.c_str());
    if (is_admin_database(arg)) return reply_error(c, "cannot reconnect admin db: " + arg);
    if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
    rt->registry->db_state(arg)->generation++;
  }
  sweep_all(rt);
  reply_tag(c, "RECONNECT");
}

void cmd_kill(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  if (rt->paused_all.load() || rt->suspended.load())
    return reply_error(c, "already suspended/paused");
  if (arg.empty()) {
    LOG_INFO("KILL command issued");
    rt->paused_all = true;
    sweep_all(rt, "*");
  } else {
    LOG_INFO("KILL '%s' command issued", arg.c_str());
    if (is_admin_database(arg)) return reply_error(c, "cannot kill admin db: " + arg);
    if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
    rt->registry->db_state(arg)->paused = true;
    sweep_all(rt, arg);
  }
  reply_tag(c, "KILL");
}

void cmd_kill_client(Client* c, const std::string& arg) {
  uint64_t id = 0;
  if (arg.empty() || arg.find_first_not_of("0123456789") != std::string::npos ||
      std::sscanf(arg.c_str(), "%" SCNu64, &id) != 1)
    return reply_error(c, "invalid client pointer supplied");
  LOG_INFO("KILL_CLIENT %" PRIu64 " command issued", id);
  struct State {
    size_t left;
    bool found = false;
  };
  Worker* home = c->worker();
  uint64_t me = c->id_;
  auto st = std::make_shared<State>(State{home->rt()->workers.size()});
  c->admin_busy_ = true;
  c->want_read(false);
  for (auto& w : home->rt()->workers) {
    w->post_call([st, home, me, id](Worker& self) {
      bool found = false;
      Client* victim = self.find_client(id);
      if (victim != nullptr && !victim->is_admin_ && !victim->logging_in()) {
        self.fail_client(victim, "08P01", "admin forced disconnect", "admin forced disconnect");
        found = true;
      } else if (victim != nullptr && victim->is_admin_ && victim->id_ != me) {
        self.fail_client(victim, "08P01", "admin forced disconnect", "admin forced disconnect");
        found = true;
      }
      home->post_call([st, me, found](Worker& h) {
        st->found = st->found || found;
        if (--st->left != 0) return;
        Client* cl = h.find_client(me);
        if (cl == nullptr) return;
        if (st->found)
          reply_tag(cl, "KILL_CLIENT");
        else
          reply_error(cl, "client not found");
        resume_client(h, me);
      });
    });
  }
}

// SHOW CLIENT_STATE <id>: the session settings pgsluice follows for that client
// (session_state.h), values only for harmless names (shown_setting).
void show_client_state(Client* c, const std::string& arg) {
  uint64_t id = 0;
  if (arg.empty() || arg.find_first_not_of("0123456789") != std::string::npos ||
      std::sscanf(arg.c_str(), "%" SCNu64, &id) != 1)
    return reply_error(c, "invalid client id supplied");
  struct State {
    size_t left;
    bool found = false;
    std::vector<std::pair<std::string, std::string>> rows;
  };
  Worker* home = c->worker();
  uint64_t me = c->id_;
  auto st = std::make_shared<State>(State{home->rt()->workers.size(), false, {}});
  c->admin_busy_ = true;
  c->want_read(false);
  for (auto& w : home->rt()->workers) {
    w->post_call([st, home, me, id](Worker& self) {
      std::vector<std::pair<std::string, std::string>> rows;
      Client* cl = self.find_client(id);
      bool found = cl != nullptr && !cl->is_admin_;
      if (found && cl->sess_ != nullptr)
        for (const auto& e : cl->sess_->settings().entries())
          rows.emplace_back(e.key, shown_setting(e));
      home->post_call([st, me, found, rows = std::move(rows)](Worker& h) {
        st->found = st->found || found;
        st->rows.insert(st->rows.end(), rows.begin(), rows.end());
        if (--st->left != 0) return;
        Client* con = h.find_client(me);
        if (con == nullptr) return;
        if (!st->found) {
          reply_error(con, "client not found");
        } else {
          RowSet rs("ss", {"name", "value"});
          for (const auto& [n, v] : st->rows) rs.row({n, v});
          reply_rows(con, rs);
        }
        resume_client(h, me);
      });
    });
  }
}

void cmd_shutdown(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  ShutdownMode mode = ShutdownMode::Immediate;
  std::string a = lower(arg);
  if (a == "wait_for_clients")
    mode = ShutdownMode::WaitForClients;
  else if (a == "wait_for_servers")
    mode = ShutdownMode::WaitForServers;
  else if (!a.empty())
    return reply_error(c, "invalid command 'SHUTDOWN " + arg + "', use SHOW HELP;");
  LOG_INFO("SHUTDOWN%s command issued", mode == ShutdownMode::Immediate ? ""
                                        : mode == ShutdownMode::WaitForServers
                                            ? " WAIT_FOR_SERVERS"
                                            : " WAIT_FOR_CLIENTS");
  if (rt->request_shutdown) rt->request_shutdown(static_cast<int>(mode));
  // Immediate: no answer; the connection closes when the process exits (PgBouncer).
  if (mode != ShutdownMode::Immediate) reply_tag(c, "SHUTDOWN");
}

// Runs `change` (RELOAD or SET) on the main thread, the one door for config snapshots, and
// answers the console on its own worker when the main thread is done. The console's
// reading is off meanwhile; the worker's loop never waits.
void change_config_on_main(Client* c, std::function<Status(Runtime*)> change,
                           std::function<void(Client*, const Status&)> answer) {
  Runtime* rt = c->worker()->rt();
  if (!rt->post_main) {
    answer(c, Status::error("configuration changes are not available"));
    return;
  }
  uint64_t id = c->id_;
  Worker* w = c->worker();
  c->admin_busy_ = true;
  c->want_read(false);
  rt->post_main([rt, w, id, change, answer]() {
    Status st = change(rt);
    w->post_call([id, st, answer](Worker& self) {
      Client* cl = self.find_client(id);
      if (cl == nullptr) return;
      answer(cl, st);
      resume_client(self, id);
    });
  });
}

void cmd_reload(Client* c) {
  LOG_INFO("RELOAD command issued");
  change_config_on_main(
      c,
      [](Runtime* rt) {
        return rt->reload ? rt->reload() : Status::error("reload is not available");
      },
      [](Client* cl, const Status& st) {
        if (!st) {
          LOG_ERROR("RELOAD failed: %s", st.message().c_str());
          return reply_error(cl, "RELOAD failed, see logs for additional details", "F0000");
        }
        reply_tag(cl, "RELOAD");
      });
}

void cmd_wait_close(Client* c, const std::string& arg) {
  Runtime* rt = c->worker()->rt();
  if (!arg.empty()) {
    if (is_admin_database(arg)) return reply_error(c, "cannot wait in admin db: " + arg);
    if (!db_known(rt, arg)) return reply_error(c, "no such database: " + arg);
  }
  LOG_INFO("WAIT_CLOSE%s%s command issued", arg.empty() ? "" : " ", arg.c_str());
  uint64_t id = c->id_;
  Worker* w = c->worker();
  c->admin_busy_ = true;
  c->want_read(false);
  // Polls the servers until none of `arg` is marked close_needed.
  auto check = std::make_shared<std::function<void()>>();
  *check = [w, id, arg, check]() {
    gather_async(*w, kSnapServers, [w, id, arg, check](Snapshot& s) {
      Client* cl = w->find_client(id);
      if (cl == nullptr) {
        *check = nullptr;  // break the cycle
        return;
      }
      bool pending = false;
      for (const ConnRow& r : s.servers)
        if (r.close_needed && (arg.empty() || r.db == arg)) pending = true;
      if (!pending) {
        reply_tag(cl, "WAIT_CLOSE");
        auto keep = *check;
        *check = nullptr;
        resume_client(*w, id);
        return;
      }
      struct Tick {
        std::shared_ptr<std::function<void()>> fn;
      };
      timeval tv{0, 100000};
      event_base_once(
          w->base(), -1, EV_TIMEOUT,
          [](evutil_socket_t, short, void* a) {
            std::unique_ptr<Tick> t(static_cast<Tick*>(a));
            if (*t->fn) (*t->fn)();
          },
          new Tick{check}, &tv);
    });
  };
  (*check)();
}

void cmd_set(Client* c, const AdminStatement& st) {
  if (fake_param(st.key)) return reply_tag(c, "SET", "SET ignored");
  if (c->admin_role_ != kRoleAdmin) return reply_error(c, "admin access needed");
  Runtime* rt = c->worker()->rt();
  if (st.key == "trace") {
    TraceTarget t;
    if (!parse_trace_target(st.value, t))
      return reply_error(c, "SET failed: bad trace value: " + st.value);
    LOG_INFO("trace set to %s", st.value.c_str());
    on_all_workers(rt, [t](Worker& w) { w.set_trace(t.mode, t.client_id, t.db); });
    return reply_tag(c, "SET trace=" + st.value);
  }
  const SettingInfo* info = find_setting(st.key);
  if (info == nullptr) return reply_error(c, "SET failed: unknown setting: " + st.key);
  if (!info->reloadable)
    return reply_error(c, "SET failed: " + st.key + " cannot be changed without a restart");
  // The read-modify-write of the snapshot happens on the main thread (Runtime::set_one),
  // serialized with every other SET and RELOAD.
  std::string key = st.key, value = st.value;
  change_config_on_main(
      c,
      [key, value](Runtime* r) {
        return r->set_one ? r->set_one(key, value) : Status::error("SET is not available");
      },
      [key, value](Client* cl, const Status& s) {
        if (!s) return reply_error(cl, "SET failed: " + s.message());
        reply_tag(cl, "SET " + key + "=" + value);
      });
}

// Runs one statement. Returns false when the answer is deferred (reading stays off).
void run_statement(Client* c, const std::string& q) {
  auto parsed = parse_admin_statement(q);
  if (!parsed) return reply_error(c, "invalid command '" + q + "', use SHOW HELP;");
  const AdminStatement& st = *parsed;
  if (st.is_set) return cmd_set(c, st);
  bool admin = c->admin_role_ == kRoleAdmin;
  if (st.cmd == "show" || st.cmd == "select") {
    std::string what = lower(st.arg);
    if (const FakeParam* p = fake_param(what)) {
      RowSet rs("s", {p->name});
      rs.row({p->value});
      return reply_rows(c, rs);
    }
    if (what == "help") return show_help(c);
    if (what == "config") return show_config(c);
    if (what == "version") return show_version(c);
    if (what == "peers") return show_peers(c);
    if (what == "peer_pools") return show_peer_pools(c);
    if (what == "state") return show_state(c);
    if (what == "auth_cache") return show_auth_cache(c);
    if (what == "client_state") return show_client_state(c, st.arg2);
    if (what == "users") return show_users(c);  // the client counts are shared atomics
    if (what == "dns_hosts") {
      RowSet rs("sqs", {"hostname", "ttl", "addrs"});
      for (const auto& h : c->worker()->rt()->registry->resolver().hosts(now_seconds()))
        rs.row({h.host, cell(h.ttl), h.addrs});
      return reply_rows(c, rs);
    }
    if (what == "dns_zones") return reply_rows(c, RowSet("sqi", {"zonename", "serial", "count"}));
    using Fn = void (*)(Client*, Snapshot&);
    struct Entry {
      const char* name;
      unsigned parts;
      Fn fn;
    };
    static const Entry kGathered[] = {
        {"pools", kSnapPools, show_pools},
        {"databases", kSnapPools, show_databases},
        {"clients", kSnapClients, show_clients},
        {"servers", kSnapServers, show_servers},
        {"sockets", kSnapSockets, [](Client* cl, Snapshot& s) { show_sockets(cl, s, false); }},
        {"active_sockets", kSnapSockets,
         [](Client* cl, Snapshot& s) { show_sockets(cl, s, true); }},
        {"lists", kSnapPools, show_lists},
        {"mem", kSnapPools, show_mem},
        {"fds", kSnapClients | kSnapServers, show_fds},
        {"stats", kSnapPools, [](Client* cl, Snapshot& s) { show_stats(cl, s, StatsKind::Both); }},
        {"stats_totals", kSnapPools,
         [](Client* cl, Snapshot& s) { show_stats(cl, s, StatsKind::Totals); }},
        {"stats_averages", kSnapPools,
         [](Client* cl, Snapshot& s) { show_stats(cl, s, StatsKind::Averages); }},
        {"totals", kSnapPools, show_totals},
        {"histograms", kSnapPools, show_histograms},
    };
    for (const Entry& e : kGathered) {
      if (what != e.name) continue;
      if (what == "fds" && !admin) return reply_error(c, "admin access needed");
      Fn fn = e.fn;
      with_snapshot(c, e.parts, [fn](Client* cl, Snapshot& s) { fn(cl, s); });
      return;
    }
    return reply_error(c, "invalid command '" + q + "', use SHOW HELP;");
  }
  static const std::set<std::string> kKnown = {"pause",     "resume", "disable",     "enable",
                                               "reconnect", "kill",   "kill_client", "suspend",
                                               "shutdown",  "reload", "wait_close",  "drop"};
  if (!kKnown.count(st.cmd)) return reply_error(c, "invalid command '" + q + "', use SHOW HELP;");
  if ((st.cmd == "reload" || st.cmd == "suspend") && !st.arg.empty())
    return reply_error(c, "invalid command '" + q + "', use SHOW HELP;");
  if (!admin) return reply_error(c, "admin access needed");
  if (st.cmd == "pause") return cmd_pause(c, st.arg);
  if (st.cmd == "resume") return cmd_resume(c, st.arg);
  if (st.cmd == "disable") return cmd_disable(c, st.arg, true);
  if (st.cmd == "enable") return cmd_disable(c, st.arg, false);
  if (st.cmd == "reconnect") return cmd_reconnect(c, st.arg);
  if (st.cmd == "kill") return cmd_kill(c, st.arg);
  if (st.cmd == "kill_client") return cmd_kill_client(c, st.arg);
  if (st.cmd == "shutdown") return cmd_shutdown(c, st.arg);
  if (st.cmd == "reload") return cmd_reload(c);
  if (st.cmd == "wait_close") return cmd_wait_close(c, st.arg);
  if (st.cmd == "drop") {
    if (lower(st.arg) != "auth_cache")
      return reply_error(c, "invalid command '" + q + "', use SHOW HELP;");
    size_t n = c->worker()->rt()->auth_cache->drop(st.arg2);
    LOG_INFO("DROP AUTH_CACHE %s: %zu entries dropped", st.arg2.empty() ? "(all)" : st.arg2.c_str(),
             n);
    return reply_tag(c, "DROP AUTH_CACHE");
  }
  if (st.cmd == "suspend") {
    Runtime* rt = c->worker()->rt();
    if (rt->paused_all.load() || rt->suspended.load())
      return reply_error(c, "already suspended/paused");
    LOG_INFO("SUSPEND command issued");
    rt->suspended = true;
    sweep_all(rt);
    on_all_workers(rt, [](Worker& w) { w.set_suspended(true); });
    return reply_tag(c, "SUSPEND");
  }
}

}  // namespace

// ---------------------------------------------------------------- entry points

void admin_login(Client* c) {
  c->suspend_exempt_ = true;  // the console that says SUSPEND must be able to say RESUME
  const Config& cfg = c->worker()->cfg();
  uint8_t role = 0;
  if (admin_trusted_peer(c) || user_in_list(cfg.admin_users, c->user_))
    role = kRoleAdmin;
  else if (user_in_list(cfg.stats_users, c->user_) || cfg.auth_type == AuthType::Any)
    role = kRoleStats;  // auth_type=any: read-only unless in admin_users (PgBouncer's source)
  if (role == 0) {
    c->worker()->fail_client(c, "08P01", "not allowed", "not allowed");
    return;
  }
  c->admin_role_ = role;
  std::string m;
  wire::auth_ok(m);
  wire::parameter_status(m, "server_version", std::string(kPgBouncerCompat) + "/bouncer");
  wire::parameter_status(m, "client_encoding", "UTF8");
  wire::parameter_status(m, "server_encoding", "UTF8");
  wire::parameter_status(m, "DateStyle", "ISO");
  wire::parameter_status(m, "TimeZone", "GMT");
  wire::parameter_status(m, "standard_conforming_strings", "on");
  wire::parameter_status(m, "is_superuser", "on");
  wire::backend_key_data(m, c->cancel_pid_,
                         std::string_view(reinterpret_cast<const char*>(c->cancel_key_.data()), 4));
  wire::ready_for_query(m, 'I');
  c->worker()->bufs().append(c->out_, m.data(), m.size());
  c->welcomed_ = true;
  c->worker()->set_state(c, ClientState::Idle);
  c->flush();
}

bool admin_message(Client* c, uint8_t type, std::span<const uint8_t> body) {
  if (type != 'Q') {
    const char* msg = (type == 'P' || type == 'B' || type == 'E')
                          ? "extended query protocol not supported by admin console"
                          : "unsupported packet type for admin console";
    c->worker()->fail_client(c, "08P01", msg, "bad packet");
    return false;
  }
  std::string_view q(reinterpret_cast<const char*>(body.data()), body.size());
  size_t nul = q.find('\0');
  if (nul == std::string_view::npos) {
    c->worker()->fail_client(c, "08P01", "incomplete query", "incomplete query");
    return false;
  }
  q = q.substr(0, nul);
  LOG_DEBUG("C-%p: got admin query: %.*s", static_cast<void*>(c), static_cast<int>(q.size()),
            q.data());
  if (q.find_first_not_of(" \t\r\n;") == std::string_view::npos) {
    std::string m;
    wire::Writer(m).begin('I').end();
    reply_ready(c, std::move(m));
    return !c->dead_;
  }
  run_statement(c, std::string(q));
  return !c->dead_ && !c->admin_busy_;
}

}  // namespace pgsluice
