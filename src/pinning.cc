// Pinning: reason names, the refusal message, the check query and its answer.
#include "pinning.h"

#include <algorithm>

#include "client.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "session_state.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

namespace {

constexpr std::string_view kNames[kPinReasons] = {
    "advisory_lock",     "temp_table", "hold_cursor", "listen",
    "untracked_setting", "prepare",    "unread"};
constexpr std::string_view kWhat[kPinReasons] = {"session advisory locks",
                                                 "temporary tables",
                                                 "WITH HOLD cursors",
                                                 "LISTEN",
                                                 "untracked session settings (set_config, DO)",
                                                 "SQL PREPARE",
                                                 "statements not read"};

}  // namespace

std::string_view pin_reason_name(int i) {
  return i >= 0 && i < kPinReasons ? kNames[i] : std::string_view();
}

std::string pin_reasons(uint8_t pins) {
  std::string r;
  for (int i = 0; i < kPinReasons; i++) {
    if ((pins & (1u << i)) == 0) continue;
    if (!r.empty()) r += ',';
    r += kNames[i];
  }
  return r;
}

std::string pin_refusal(uint8_t pins, bool statement_mode) {
  int i = 0;
  while (i < kPinReasons - 1 && (pins & (1u << i)) == 0) i++;
  std::string m(kWhat[i]);
  m += i == 3 ? " is" : " are";
  if (statement_mode)
    m += " not supported in statement pooling";
  else
    m += " not supported in transaction pooling (pin_on_untracked_state = off)";
  return m;
}

// One count per reason, in bit order; the settings' count stands for untracked_setting.
std::string pin_check_sql(const std::vector<std::string>& known,
                          const std::vector<std::string>& watch, bool prepared) {
  std::string names;
  for (const auto* list : {&known, &watch})
    for (const auto& n : *list) {
      if (!names.empty()) names += ',';
      names += wire::sql_literal(n);
    }
  if (names.empty()) names = "''";
  std::string sql =
      "SELECT "
      "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND "
      "pid = pg_catalog.pg_backend_pid()),"
      "(SELECT count(*) FROM pg_catalog.pg_class WHERE "
      "relnamespace = pg_catalog.pg_my_temp_schema()),"
      "(SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable),"
      "(SELECT count(*) FROM pg_catalog.pg_listening_channels()),"
      "(SELECT count(*) FROM pg_catalog.pg_settings WHERE source = 'session' AND "
      "lower(name) <> ALL (ARRAY[" +
      names + "]::text[]))," +
      std::string(prepared
                      ? "(SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
                      : "0");
  for (const auto& n : watch)
    sql += ",pg_catalog.current_setting(" + wire::sql_literal(n) + ", true)";
  return sql;
}

uint8_t pin_check_row(std::span<const uint8_t> body, uint8_t pinned, size_t nwatch,
                      std::vector<std::optional<std::string>>* values) {
  if (values != nullptr) values->clear();
  wire::Reader r(body.data(), body.size());
  uint16_t n = 0;
  if (!r.u16(n) || n != kPinCheckCounts + nwatch) return pinned;  // not understood: no change
  uint8_t still = 0;
  std::vector<std::optional<std::string>> vals;
  for (size_t i = 0; i < n; i++) {
    uint32_t len = 0;
    if (!r.u32(len)) return pinned;
    std::span<const uint8_t> v;
    if (len != 0xffffffffu && !r.bytes(len, v)) return pinned;
    if (i >= kPinCheckCounts) {
      if (len == 0xffffffffu)
        vals.emplace_back();
      else
        vals.emplace_back(std::string(reinterpret_cast<const char*>(v.data()), v.size()));
      continue;
    }
    if (len == 0xffffffffu) continue;  // NULL
    bool zero = len == 1 && v[0] == '0';
    if (zero) continue;
    const unsigned bit = 1u << i;
    // Untracked settings count for a client pinned for them or for a text not read.
    if (bit == kPinUntrackedSetting && (pinned & (bit | kPinUnread)) == 0) continue;
    if (bit == kPinPrepare && (pinned & bit) == 0) continue;
    still |= static_cast<uint8_t>(bit);
  }
  if (values != nullptr) *values = std::move(vals);
  return still;
}

// ---- The client's and the server's side ----

namespace {

constexpr size_t kPinScanWhole = 64 * 1024;  // larger texts are not read (unread_text)

}  // namespace

void Client::set_pins(uint8_t pins) {
  if (pins == pins_) return;
  Runtime* rt = worker_->rt();
  for (int i = 0; i < kPinReasons; i++)
    if ((pins & (1u << i)) != 0 && (pins_ & (1u << i)) == 0)
      rt->client_pins[i].fetch_add(1, std::memory_order_relaxed);
  if ((pins_ == 0) != (pins == 0)) rt->pinned_clients.fetch_add(pins != 0 ? 1 : -1);
  LOG_DEBUG("C-%p: pinned: %s", static_cast<void*>(this),
            pins == 0 ? "no longer" : pin_reasons(pins).c_str());
  pins_ = pins;
  if (pins == 0) pin_check_due_ = false;
}

void Client::pin_apply(const PinScan& ps) {
  if (ps.catalog) catalog_changed_ = true;  // the pool reads its routines again (unlink)
  set_pins(pins_ | ps.pins);
  pin_fresh_ |= ps.pins;
  if (ps.dirty) settings_dirty_ = true;
  if (ps.opaque && !pin_opaque_) {
    pin_opaque_ = true;
    pin_opaque_resets_ = sess_ != nullptr ? sess_->resets() : 0;
  }
  for (const auto& n : ps.names) {
    if (pin_watch_ == nullptr) pin_watch_ = std::make_unique<std::vector<std::string>>();
    std::vector<std::string>& watch = *pin_watch_;
    if (std::find(watch.begin(), watch.end(), n) != watch.end()) continue;
    if (watch.size() >= kPinMaxNames) {
      settings_dirty_ = true;
      if (!pin_opaque_) pin_opaque_resets_ = sess_ != nullptr ? sess_->resets() : 0;
      pin_opaque_ = true;
      break;
    }
    watch.push_back(n);
  }
  if ((ps.releases & kReleaseAny) != 0 ||
      ((ps.releases & kReleaseTxEnd) != 0 && (pins_ & kPinTempTable) != 0))
    pin_check_due_ = pins_ != 0;
}

void Client::pin_checked(uint8_t found, const std::vector<std::string>& names,
                         const std::vector<std::optional<std::string>>& values) {
  const TrackedNames* tracked = worker_->rt()->tracked.get();
  if (!names.empty() && values.size() == names.size()) {
    for (size_t i = 0; i < names.size(); i++) {
      if (pin_watch_ != nullptr) {
        auto it = std::find(pin_watch_->begin(), pin_watch_->end(), names[i]);
        if (it != pin_watch_->end()) pin_watch_->erase(it);
      }
      if (reported_and_tracked(tracked, names[i])) continue;  // ParameterStatus tells
      if (sess_ == nullptr) sess_ = std::make_unique<SessionState>(tracked, false);
      sess_->adopt(names[i],
                   values[i] ? set_config_statement(names[i], *values[i]) : std::string());
    }
  }
  if (pin_opaque_) {
    if (sess_ != nullptr && sess_->resets() != pin_opaque_resets_)
      pin_opaque_ = false;  // a RESET ALL or DISCARD ALL took effect since
    else
      found |= kPinUntrackedSetting;
  }
  // Pinned since the check was sent (a statement that ran after it): kept until the next.
  found |= pin_fresh_;
  if (pin_watch_ != nullptr && pin_watch_->empty()) pin_watch_.reset();
  if (pin_watch_ != nullptr)
    found |= kPinUntrackedSetting;  // named since: the next check reads them
  set_pins(found);
}

namespace {

constexpr size_t kPinNameWait = 4096;  // bytes of a message read for its statement names
constexpr size_t kPinMaxStmts = 1000;  // statements whose text pins, per client
constexpr std::string_view kTooManyPinning =
    "too many prepared statements that pin or release session state (1000)";

// A text not read (larger than kPinScanWhole): it may make any state, so the check right
// after it tells what it left (every reason a check can see), and its server is reset
// before another client uses it.
PinScan unread_text(bool sql_prepare) {
  PinScan ps;
  ps.pins = kPinUnread | (sql_prepare ? kPinPrepare : 0);
  ps.releases = kReleaseAny;
  ps.dirty = true;
  return ps;
}

}  // namespace

std::vector<std::string> Client::pin_check_sent() {
  pin_check_due_ = false;
  pin_fresh_ = 0;
  return pin_watch_ != nullptr ? *pin_watch_ : std::vector<std::string>();
}

int Client::pin_message(uint8_t type, size_t len) {
  const size_t total = len + 1;
  if (type == 'B' && pool_ != nullptr && pool_->mode != PoolMode::Session &&
      pool_->routines_unknown()) {
    pin_apply(unread_text(false));  // as a Query that calls something (below)
    if (pool_->state != nullptr) pool_->state->routines.needed();
  }
  if (type == 'B' && ((pin_stmts_ != nullptr && !pin_stmts_->empty()) || pin_stmts_full_)) {
    // A Bind of a statement whose text pins (or releases) does it again. Only its names are
    // read: they come first, and its parameters may be of any size.
    const size_t body = len - 4, have = in_.size() - wire::kHeaderLen;
    wire::Reader b(in_.begin() + wire::kHeaderLen, have < body ? have : body);
    std::string_view portal, stmt;
    if (!(b.cstr(portal) && b.cstr(stmt))) {
      if (have < body && have < kPinNameWait) {
        worker_->bufs().reserve(in_, body - have < BufPool::kBlock ? body - have : BufPool::kBlock);
        return -1;
      }
      if (have < body) pin_apply(unread_text(!remap_));  // names longer than read: any
      return 0;                                          // malformed: PostgreSQL answers it
    }
    const PinStmt* kept = nullptr;
    if (pin_stmts_ != nullptr) {
      auto it = pin_stmts_->find(stmt);
      if (it != pin_stmts_->end()) kept = &it->second;
    }
    if (kept == nullptr) {
      if (pin_stmts_full_) pin_apply(unread_text(!remap_));  // not kept: judged as unread
      return 0;
    }
    const PinStmt& p = *kept;
    pin_apply(p.scan);
    // What it calls, with the routines known now (one may have been replaced since).
    if (p.many_calls) {
      pin_apply(unread_text(false));
    } else if (const StateRoutines* rt = pool_->routines()) {
      for (const auto& c : p.calls)
        if (const PinScan* f = rt->find(c)) pin_apply(*f);
    }
    return 0;
  }
  if ((type != 'Q' && type != 'P') || pool_ == nullptr || pool_->mode == PoolMode::Session)
    return 0;
  std::string_view name;
  PinScan ps;
  std::string_view body, text;
  size_t z = 0;
  if (total > kPinScanWhole) {
    // Not read whole (ARCHITECTURE.md, "Pinning"): a Query counts as making anything; a
    // Parse is kept under its name, read from the start of the message.
    ps = unread_text(!remap_);
    if (type == 'Q') {
      pin_apply(ps);
      return 0;
    }
    const size_t have = in_.size() - wire::kHeaderLen;
    wire::Reader r(in_.begin() + wire::kHeaderLen, have);
    if (!r.cstr(name)) {
      if (have < kPinNameWait) {
        worker_->bufs().reserve(in_, BufPool::kBlock);
        return -1;
      }
      pin_apply(ps);  // a name longer than read: pinned now, checked after
      return 0;
    }
  } else {
    if (in_.size() < total) {
      size_t more = total - in_.size();
      worker_->bufs().reserve(in_, more < BufPool::kBlock ? more : BufPool::kBlock);
      return -1;
    }
    wire::Reader r(in_.begin() + wire::kHeaderLen, len - 4);
    if (type == 'P' && !r.cstr(name)) return 0;
    auto rest = r.rest();
    body = std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size());
    z = body.find('\0');
    if (z == std::string_view::npos) return 0;  // malformed: PostgreSQL answers it
    text = body.substr(0, z);
    if (text.rfind("DO $pgsluice$", 0) == 0) {  // a refusal written below, read again
      if (text == raise_sql("54000", kTooManyPinning)) return 0;
      for (int i = 0; i < kPinReasons; i++)
        for (bool sm : {false, true})
          if (text == raise_sql("0A000", pin_refusal(static_cast<uint8_t>(1u << i), sm))) return 0;
    }
    ps = scan_pins(text, session_scs(text), !remap_, pool_->routines());
  }
  const bool statement_mode = pool_->mode == PoolMode::Statement;
  const bool unread = total > kPinScanWhole;
  bool refuse =
      !unread && ps.pins != 0 && (statement_mode || !worker_->cfg().pin_on_untracked_state);
  std::string sql;
  if (type == 'P') {
    if (pin_stmts_ != nullptr) {
      auto it = pin_stmts_->find(name);
      if (it != pin_stmts_->end()) pin_stmts_->erase(it);
    }
    PinStmt entry;
    if (!unread && text.find('(') != std::string_view::npos)
      call_names(text, session_scs(text), entry.calls, &entry.many_calls);
    const bool calls = !entry.calls.empty() || entry.many_calls;
    if ((ps.pins != 0 || ps.releases != 0 || calls) && !refuse) {
      if (pin_stmts_ == nullptr) pin_stmts_ = std::make_unique<PinStmts>();
      if (pin_stmts_->size() < kPinMaxStmts) {
        entry.scan = std::move(ps);
        pin_stmts_->emplace(std::string(name), std::move(entry));
      } else if (ps.pins == 0 && ps.releases == 0) {
        pin_stmts_full_ = true;  // only calls: Binds of statements not kept count as unread
      } else if (unread) {
        pin_apply(ps);  // cannot be rewritten unread: pinned now, checked after the Parse
      } else {
        refuse = true;  // its Binds could not be followed
        sql = raise_sql("54000", kTooManyPinning);
      }
    }
  }
  if (!refuse) {
    // A Parse alone runs nothing: its Bind does (above). A Query runs now.
    if (type == 'Q') {
      // Which routines make state is not known now (the pool's first reading has not
      // ended, or a client changed a routine since the last): a text that may call one
      // counts as one that may make any state, checked after it (not refused: it may make
      // none). A Bind does the same then (above).
      if (text.find('(') != std::string_view::npos && pool_->routines_unknown()) {
        pin_merge(ps, unread_text(false));
        if (pool_->state != nullptr) pool_->state->routines.needed();
      }
      pin_apply(ps);
    }
    return 0;
  }
  // Refused: PostgreSQL raises 0A000 in its place (a DO block), so the transaction state
  // and the extended protocol's skipping to Sync are PostgreSQL's own.
  LOG_DEBUG("C-%p: refused a statement making %s", static_cast<void*>(this),
            pin_reasons(ps.pins).c_str());
  if (sql.empty()) sql = raise_sql("0A000", pin_refusal(ps.pins, statement_mode));
  std::string m;
  wire::Writer w(m);
  w.begin(type);
  if (type == 'P') w.cstr(name);
  w.cstr(sql);
  if (type == 'P') w.bytes(body.substr(z + 1));
  w.end();
  std::string after(reinterpret_cast<const char*>(in_.begin()) + total, in_.size() - total);
  in_.rpos = in_.wpos;
  worker_->bufs().append(in_, m.data(), m.size());
  worker_->bufs().append(in_, after.data(), after.size());
  scan_restart();
  return 1;
}

void Server::maybe_pin_check() {
  Client* c = client_;
  // Not while the client has bytes not passed on: a statement read (and pinned) but not sent
  // yet would run after the check, which must tell what it left.
  if (c == nullptr || !c->pin_check_due_ || c->pins_ == 0 || state_ != ServerState::Active ||
      !clean() || c->fwd_remaining_ != 0 || c->copy_in_ || !c->in_.empty())
    return;
  pin_names_ = c->pin_check_sent();
  pin_checking_ = true;
  pin_found_ = c->pins_;
  // The names pgsluice follows: the client's settings, connect_query's (every server of the
  // pool has them, a server they were taken from is reset: Worker::link) and the tracked
  // parameters.
  std::vector<std::string> known;
  if (c->sess_ != nullptr)
    for (const auto& e : c->sess_->settings().entries()) known.push_back(e.key);
  for (const auto& e : target_->connect_settings.entries()) known.push_back(e.key);
  const TrackedNames& tracked = *worker_->rt()->tracked;
  for (size_t i = 0; i < tracked.size(); i++) {
    std::string n = tracked.name(i);
    for (char& ch : n)
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    known.push_back(std::move(n));
  }
  send_internal_query(pin_check_sql(known, pin_names_, (c->pins_ & kPinPrepare) != 0));
  flush();
}

}  // namespace pgsluice
