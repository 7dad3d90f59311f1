// LISTEN/NOTIFY in transaction and statement pooling (notify_hub.h).
#include "notify_hub.h"

#include <algorithm>
#include <iterator>
#include <memory>

#include "client.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {

// PostgreSQL's reserved and type/function-name keywords (pg_get_keywords() catcode R and T):
// an unquoted channel name may not be one of them (ColId).
// clang-format off
constexpr std::string_view kReserved[] = {
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric",
    "authorization", "binary", "both", "case", "cast", "check", "collate", "collation", "column",
    "concurrently", "constraint", "create", "cross", "current_catalog", "current_date",
    "current_role", "current_schema", "current_time", "current_timestamp", "current_user",
    "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "false", "fetch",
    "for", "foreign", "freeze", "from", "full", "grant", "group", "having", "ilike", "in",
    "initially", "inner", "intersect", "into", "is", "isnull", "join", "lateral", "leading",
    "left", "like", "limit", "localtime", "localtimestamp", "natural", "not", "notnull", "null",
    "offset", "on", "only", "or", "order", "outer", "overlaps", "placing", "primary",
    "references", "returning", "right", "select", "session_user", "similar", "some", "symmetric",
    "table", "tablesample", "then", "to", "trailing", "true", "union", "unique", "user", "using",
    "variadic", "verbose", "when", "where", "window", "with",
};
// clang-format on

bool reserved(std::string_view w) {
  return std::binary_search(std::begin(kReserved), std::end(kReserved), w);
}

constexpr size_t kMaxIdent = 63;  // NAMEDATALEN - 1: a longer name PostgreSQL would truncate

bool space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
bool ident_start(char c) {
  auto u = static_cast<unsigned char>(c);
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || u >= 0x80;
}
bool ident_cont(char c) {
  return ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}
char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
bool ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// Skips white space and comments (-- to the end of the line; /* */, nested). False when a
// comment does not end.
bool skip_space(std::string_view s, size_t& i) {
  for (;;) {
    while (i < s.size() && space(s[i])) i++;
    if (s.substr(i, 2) == "--") {
      while (i < s.size() && s[i] != '\n' && s[i] != '\r') i++;
      continue;
    }
    if (s.substr(i, 2) == "/*") {
      int depth = 1;
      i += 2;
      while (i < s.size() && depth > 0) {
        if (s.substr(i, 2) == "/*") {
          depth++;
          i += 2;
        } else if (s.substr(i, 2) == "*/") {
          depth--;
          i += 2;
        } else {
          i++;
        }
      }
      if (depth > 0) return false;
      continue;
    }
    return true;
  }
}

// An unquoted word from i, folded to lower case (empty: none here).
std::string word(std::string_view s, size_t& i) {
  std::string w;
  if (i >= s.size() || !ident_start(s[i])) return w;
  while (i < s.size() && ident_cont(s[i])) w.push_back(lower(s[i++]));
  return w;
}

}  // namespace

NotifyCmd parse_notify_cmd(std::string_view s) {
  NotifyCmd none;
  size_t i = 0;
  if (!skip_space(s, i)) return none;
  std::string kw = word(s, i);
  NotifyCmd cmd;
  if (kw == "listen")
    cmd.kind = NotifyCmd::Kind::Listen;
  else if (kw == "unlisten")
    cmd.kind = NotifyCmd::Kind::Unlisten;
  else
    return none;
  size_t before = i;
  if (!skip_space(s, i) || i == before) {
    // A name must be set apart from the keyword by space or a comment; a quote may touch it.
    if (i >= s.size() || s[i] != '"') return none;
  }
  if (i >= s.size()) return none;
  if (s[i] == '*') {
    if (cmd.kind != NotifyCmd::Kind::Unlisten) return none;
    cmd.kind = NotifyCmd::Kind::UnlistenAll;
    i++;
  } else if (s[i] == '"') {
    i++;
    for (;;) {
      if (i >= s.size()) return none;
      if (s[i] == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') {
          cmd.channel.push_back('"');
          i += 2;
          continue;
        }
        i++;
        break;
      }
      cmd.channel.push_back(s[i++]);
    }
    if (cmd.channel.empty() || cmd.channel.size() > kMaxIdent || !ascii(cmd.channel)) return none;
    if (cmd.channel.find('\0') != std::string::npos) return none;
  } else {
    cmd.channel = word(s, i);
    if (cmd.channel.empty() || cmd.channel.size() > kMaxIdent || !ascii(cmd.channel) ||
        reserved(cmd.channel))
      return none;
  }
  if (!skip_space(s, i)) return none;
  while (i < s.size() && s[i] == ';') {
    i++;
    if (!skip_space(s, i)) return none;
  }
  if (i != s.size()) return none;
  return cmd;
}

std::string quote_channel(std::string_view ch) {
  std::string q = "\"";
  for (char c : ch) {
    if (c == '"') q.push_back('"');
    q.push_back(c);
  }
  q.push_back('"');
  return q;
}

// ---------------------------------------------------------------- the hub

NotifyHub::NotifyHub(Worker* w, LocalPool* lp) : w_(w), lp_(lp) {}

NotifyHub::~NotifyHub() {
  if (retry_ev_ != nullptr) event_free(retry_ev_);
  if (server_ != nullptr) server_->hub_ = nullptr;
}

void NotifyHub::answer(Client* c, std::string_view tag) {
  std::string m;
  wire::Writer(m).begin('C').cstr(tag).end();
  wire::ready_for_query(m, 'I');
  NotifyClient& n = *c->notify_;
  m += n.pending;  // what came while it waited goes after the answer
  n.pending.clear();
  w_->bufs().append(c->out_, m.data(), m.size());
  c->flush();
}

bool NotifyHub::listen(Client* c, const std::string& ch) {
  NotifyClient& n = *c->notify_;
  if (std::find(n.channels.begin(), n.channels.end(), ch) != n.channels.end()) {
    answer(c, "LISTEN");
    return true;
  }
  Runtime* rt = w_->rt();
  if (n.channels.empty()) rt->listen_clients.fetch_add(1, std::memory_order_relaxed);
  n.channels.push_back(ch);
  auto [it, fresh] = chans_.try_emplace(ch);
  if (fresh) rt->listen_channels.fetch_add(1, std::memory_order_relaxed);
  Chan& chan = it->second;
  chan.clients.push_back(c);
  if (chan.confirmed) {
    answer(c, "LISTEN");
    return true;
  }
  // Answered once the hub's own LISTEN is in force, so that every notification sent after
  // the client's LISTEN completed reaches it.
  chan.waiters.push_back(c);
  n.awaiting = ch;
  if (fresh && up_) {
    chan.listen_op = next_op_;
    send("LISTEN " + quote_channel(ch), {ch});
  } else if (server_ == nullptr) {
    open();
  }
  return false;
}

void NotifyHub::unlisten(Client* c, const std::string& ch) {
  NotifyClient& n = *c->notify_;
  auto it = std::find(n.channels.begin(), n.channels.end(), ch);
  if (it != n.channels.end()) {
    n.channels.erase(it);
    if (n.channels.empty()) w_->rt()->listen_clients.fetch_sub(1, std::memory_order_relaxed);
    drop(c, ch);
  }
  answer(c, "UNLISTEN");
}

void NotifyHub::unlisten_all(Client* c) {
  leave_all(c);
  answer(c, "UNLISTEN");
}

void NotifyHub::leave_all(Client* c) {
  NotifyClient& n = *c->notify_;
  std::vector<std::string> chs = std::move(n.channels);
  n.channels.clear();
  if (!chs.empty()) w_->rt()->listen_clients.fetch_sub(1, std::memory_order_relaxed);
  for (const std::string& ch : chs) drop(c, ch);
}

void NotifyHub::drop(Client* c, const std::string& ch) {
  auto it = chans_.find(ch);
  if (it == chans_.end()) return;
  Chan& chan = it->second;
  std::erase(chan.clients, c);
  std::erase(chan.waiters, c);
  if (!chan.clients.empty()) return;
  chans_.erase(it);
  w_->rt()->listen_channels.fetch_sub(1, std::memory_order_relaxed);
  if (server_ == nullptr) return;
  if (chans_.empty()) {
    w_->close_server(server_, "no channel left to listen on");
  } else if (up_) {
    send("UNLISTEN " + quote_channel(ch), {});
  }
}

void NotifyHub::send(const std::string& sql, std::vector<std::string> confirms) {
  ops_.push_back(Op{next_op_++, std::move(confirms)});
  server_->send_internal_query(sql);
  server_->flush();
}

void NotifyHub::open() {
  if (server_ != nullptr) return;
  if (w_->paused(lp_->pool)) {  // PAUSE, SUSPEND: no server; LISTENs wait for RESUME
    arm(1.0);
    return;
  }
  if (!w_->launch_hub(lp_, this)) {
    LOG_WARN("pool %s/%s: could not start the connection that listens for notifications",
             lp_->pool->db_name.c_str(), lp_->pool->user_name.c_str());
    login_failed_ = true;
    arm(0);
  }
}

void NotifyHub::logged_in(Server* s) {
  up_ = true;
  if (chans_.empty()) {
    w_->close_server(s, "no channel left to listen on");
    return;
  }
  std::string sql = "SET application_name = 'pgsluice listen'";
  std::vector<std::string> all;
  for (auto& [ch, chan] : chans_) {
    sql += "; LISTEN " + quote_channel(ch);
    chan.listen_op = next_op_;
    all.push_back(ch);
  }
  send(sql, std::move(all));
}

void NotifyHub::ready(Server* s) {
  (void)s;
  if (ops_.empty()) return;
  Op op = std::move(ops_.front());
  ops_.erase(ops_.begin());
  std::vector<Client*> resume;
  for (const std::string& ch : op.confirms) {
    auto it = chans_.find(ch);
    if (it == chans_.end() || it->second.listen_op != op.serial) continue;
    it->second.confirmed = true;
    for (Client* c : it->second.waiters) resume.push_back(c);
    it->second.waiters.clear();
  }
  for (Client* c : resume) {
    if (c->dead_) continue;
    c->notify_->awaiting.clear();
    answer(c, "LISTEN");
  }
  for (Client* c : resume) {
    if (c->dead_) continue;
    c->want_read(true);
    c->process();  // what it sent after the LISTEN
  }
}

void NotifyHub::notification(std::span<const uint8_t> body) {
  wire::Reader r(body);
  uint32_t pid = 0;
  std::string_view ch;
  if (!r.u32(pid) || !r.cstr(ch)) return;
  auto it = chans_.find(std::string(ch));
  if (it == chans_.end()) return;
  std::string msg;
  wire::Writer(msg).begin('A').bytes(body).end();
  std::vector<Client*> over;
  for (Client* c : it->second.clients) deliver(c, msg, over);
  for (Client* c : over) {
    if (c->dead_) continue;
    LOG_WARN("C-%p: %s/%s notification queue of the client over %zu bytes; disconnecting",
             static_cast<void*>(c), c->db_.c_str(), c->user_.c_str(), kNotifyClientLimit);
    w_->fail_client(c, "54000",
                    "too many notifications queued for this client (it does not read them)",
                    "notification queue full");
  }
}

// Held (in a transaction, waiting for its LISTEN's answer, or while its output is full),
// else sent now. The hub never waits for a client: one that holds too much is cut off.
void NotifyHub::deliver(Client* c, const std::string& msg, std::vector<Client*>& over) {
  if (c->dead_) return;
  NotifyClient& n = *c->notify_;
  if (n.pending.size() + msg.size() > kNotifyClientLimit) {
    n.pending.clear();  // never sent: the FATAL goes right after what the client has
    over.push_back(c);
    return;
  }
  n.pending += msg;
  if (c->server_ == nullptr && n.awaiting.empty()) notify_refill(c);
}

void NotifyHub::closed(Server* s, bool was_up) {
  if (s != server_) return;
  server_ = nullptr;
  up_ = false;
  ops_.clear();
  for (auto& [ch, chan] : chans_) chan.confirmed = false;
  if (chans_.empty()) return;
  if (was_up && s->internal_failed_) {
    // PostgreSQL refused its LISTEN (a standby: 25006): not again at once.
    LOG_WARN("pool %s/%s: the connection that listens for notifications failed; retrying in %.0f s",
             lp_->pool->db_name.c_str(), lp_->pool->user_name.c_str(),
             std::max(w_->cfg().server_login_retry, 1.0));
    login_failed_ = true;
  } else if (was_up) {
    LOG_WARN(
        "pool %s/%s: the connection that listens for notifications was lost; notifications "
        "sent until it is back are lost; reopening it",
        lp_->pool->db_name.c_str(), lp_->pool->user_name.c_str());
  } else {
    login_failed_ = true;
  }
  arm(0);  // from the loop, not from the closing server's stack
}

void NotifyHub::arm(double seconds) {
  if (retry_ev_ == nullptr) retry_ev_ = event_new(w_->base(), -1, 0, retry_cb, this);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  event_add(retry_ev_, &tv);
}

void NotifyHub::retry_cb(evutil_socket_t, short, void* arg) {
  static_cast<NotifyHub*>(arg)->retry();
}

void NotifyHub::retry() {
  if (login_failed_) {
    // The clients whose LISTEN waits get an error instead (their other channels stay); the
    // hub tries again after server_login_retry for the channels confirmed before.
    login_failed_ = false;
    std::vector<Client*> failed;
    for (auto& [ch, chan] : chans_)
      for (Client* c : chan.waiters) failed.push_back(c);
    for (Client* c : failed) {
      if (c->dead_) continue;
      NotifyClient& n = *c->notify_;
      std::string ch = std::move(n.awaiting);
      n.awaiting.clear();
      auto it = std::find(n.channels.begin(), n.channels.end(), ch);
      if (it != n.channels.end()) {
        n.channels.erase(it);
        if (n.channels.empty()) w_->rt()->listen_clients.fetch_sub(1, std::memory_order_relaxed);
      }
      drop(c, ch);
      std::string m;
      wire::error_response(m, "ERROR", "08006",
                           "could not open the connection that listens for notifications");
      wire::ready_for_query(m, 'I');
      m += n.pending;
      n.pending.clear();
      w_->bufs().append(c->out_, m.data(), m.size());
      c->flush();
    }
    for (Client* c : failed) {
      if (c->dead_) continue;
      c->want_read(true);
      c->process();
    }
    if (!chans_.empty() && server_ == nullptr) arm(std::max(w_->cfg().server_login_retry, 1.0));
    return;
  }
  if (!chans_.empty() && server_ == nullptr) open();
}

// ---------------------------------------------------------------- the client doors

namespace {

// Notifications reach the hub in its client_encoding: the pool's default (what its servers
// report at login). A client that asked for another keeps its LISTEN on its own server
// (pinned, pinning.h), where PostgreSQL converts each payload for it.
bool hub_encoding_fits(const Client* c) {
  const TrackedNames& tracked = *c->worker()->rt()->tracked;
  int i = tracked.find("client_encoding");
  if (i < 0 || !c->vars_.has(static_cast<size_t>(i))) return true;  // the default
  std::string_view mine = c->vars_.get(static_cast<size_t>(i));
  if (!c->pool_->welcome_ready()) return false;
  for (const auto& [k, v] : c->pool_->welcome())
    if (iequals(k, "client_encoding")) return iequals(v, mine);
  return false;
}

}  // namespace

int notify_message(Client* c, uint8_t type, size_t len) {
  if (c->notify_ != nullptr && !c->notify_->awaiting.empty()) {
    c->want_read(false);  // NotifyHub::ready resumes it
    return -1;
  }
  if (type != 'Q' || c->server_ != nullptr || c->pool_ == nullptr || c->lp_ == nullptr ||
      c->pool_->mode.load(std::memory_order_relaxed) == PoolMode::Session)
    return 0;
  size_t total = len + 1;
  constexpr size_t kMaxText = 4096;  // longer texts are never read whole here
  if (total > kMaxText + wire::kHeaderLen) return 0;
  if (c->in_.size() < total) {
    c->worker()->bufs().reserve(c->in_, total - c->in_.size());
    return -1;
  }
  std::string_view text(reinterpret_cast<const char*>(c->in_.begin()) + wire::kHeaderLen, len - 4);
  if (text.empty() || text.back() != '\0') return 0;
  text.remove_suffix(1);
  if (text.find('\0') != std::string_view::npos) return 0;
  NotifyCmd cmd = parse_notify_cmd(text);
  if (cmd.kind == NotifyCmd::Kind::None) return 0;
  if (cmd.kind == NotifyCmd::Kind::Listen && !hub_encoding_fits(c)) return 0;
  c->in_.rpos += total;
  LocalPool* lp = c->lp_;
  if (lp->hub == nullptr) lp->hub = std::make_unique<NotifyHub>(c->worker(), lp);
  if (c->notify_ == nullptr) c->notify_ = std::make_unique<NotifyClient>();
  switch (cmd.kind) {
    case NotifyCmd::Kind::Listen:
      if (!lp->hub->listen(c, cmd.channel)) {
        c->want_read(false);
        return -1;
      }
      break;
    case NotifyCmd::Kind::Unlisten:
      lp->hub->unlisten(c, cmd.channel);
      break;
    default:
      lp->hub->unlisten_all(c);
      break;
  }
  return 1;
}

void notify_client_gone(Client* c) {
  if (c->notify_ == nullptr || c->lp_ == nullptr || c->lp_->hub == nullptr) return;
  c->lp_->hub->leave_all(c);
}

void notify_refill(Client* c) {
  NotifyClient* n = c->notify_.get();
  if (n == nullptr || n->pending.empty() || !n->awaiting.empty() || c->server_ != nullptr ||
      c->out_.size() >= kNotifyOutFull)
    return;
  c->worker()->bufs().append(c->out_, n->pending.data(), n->pending.size());
  n->pending.clear();
  c->flush();
}

void notify_after_ready(Client* c, char tx) {
  NotifyClient* n = c->notify_.get();
  if (n == nullptr || tx != 'I' || n->pending.empty() || !n->awaiting.empty()) return;
  c->worker()->bufs().append(c->out_, n->pending.data(), n->pending.size());
  n->pending.clear();
}

}  // namespace pgsluice
