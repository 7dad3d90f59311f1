// The client's side of session settings (session_state.h): what it tells its SessionState
// of the messages it sends to a server.
#include "client.h"
#include "server.h"
#include "session_state.h"
#include "wire.h"
#include "worker.h"

namespace pgsluice {

// Session settings (session_state.h). Only transaction and statement pooling follow them:
// a session client keeps its server. A client that never changes a setting pays a scan of
// its Query and Parse texts (no allocation); one that does pays the following of its
// statements while it has anything pending or a transaction block open.
namespace {

// The SQL text of a Parse body (after the name) or of a Query body.
std::string_view c_text(std::span<const uint8_t> b) {
  std::string_view t(reinterpret_cast<const char*>(b.data()), b.size());
  size_t z = t.find('\0');
  return z == std::string_view::npos ? t : t.substr(0, z);
}

}  // namespace

bool Client::session_scs(std::string_view text) const {
  if (text.find('\\') == std::string_view::npos) return true;  // the same either way
  const TrackedNames& tracked = *worker_->rt()->tracked;
  int i = tracked.find("standard_conforming_strings");
  return i < 0 || !vars_.has(static_cast<size_t>(i)) ||
         !iequals(vars_.get(static_cast<size_t>(i)), "off");
}

bool Client::session_sql_changes(std::string_view body) const {
  std::string_view text =
      c_text(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
  return lex_session_sql(text, session_scs(text), nullptr);
}

// A RESET, RESET ALL or DISCARD ALL takes a server's settings to PostgreSQL's defaults, away
// from what connect_query made: the server is reset (and connect_query's SETs made again)
// before its next client (Worker::link).
void Client::note_connect_resets(const std::vector<SessionStmt>& stmts) {
  if (settings_dirty_ || pool_ == nullptr || pool_->target()->connect_settings.empty()) return;
  for (const SessionStmt& st : stmts)
    if (st.kind == StmtKind::Reset || st.kind == StmtKind::ResetAll ||
        st.kind == StmtKind::DiscardAll)
      settings_dirty_ = true;
}

void Client::note_session_parse(std::string_view name, std::string_view body) {
  std::vector<SessionStmt> stmts;
  std::string_view text =
      c_text(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
  lex_session_sql(text, session_scs(text), &stmts);
  note_connect_resets(stmts);
  if (sess_ == nullptr)
    sess_ = std::make_unique<SessionState>(worker_->rt()->tracked.get(),
                                           server_ != nullptr && server_->tx_ != 'I');
  sess_->note_parse(name, stmts);
}

void Client::session_message(uint8_t type, size_t len, bool sent) {
  const bool whole = in_.size() > len;
  if (!sent) {
    if (!whole && type != 'B') return;  // remapping reads these whole (Bind: its names)
    wire::Reader r(in_.begin() + wire::kHeaderLen,
                   (whole ? len + 1 : in_.size()) - wire::kHeaderLen);
    std::string_view a, b;
    uint8_t kind = 0;
    switch (type) {
      case 'P': {
        if (!r.cstr(a)) return;
        auto rest = r.rest();
        std::string_view body(reinterpret_cast<const char*>(rest.data()), rest.size());
        if (sess_ != nullptr || session_sql_changes(body)) note_session_parse(a, body);
        return;
      }
      case 'B':
        if (sess_ != nullptr && r.cstr(a) && r.cstr(b)) sess_->note_bind(a, b);
        return;
      case 'C':
        if (sess_ != nullptr && r.u8(kind) && r.cstr(a)) sess_->note_close(kind, a);
        return;
      default:
        return;
    }
  }
  Server* s = server_;
  switch (type) {
    case 'Q': {
      if (sess_ != nullptr) {  // a simple query drops the unnamed statement and portal
        sess_->note_close('S', {});
        sess_->note_close('P', {});
      }
      std::string_view text;
      if (whole) {
        text = c_text(std::span<const uint8_t>(in_.begin() + wire::kHeaderLen, len - 4));
        bool scs = session_scs(text);
        bool changes = lex_session_sql(text, scs, nullptr);
        if (changes && sess_ == nullptr)
          sess_ = std::make_unique<SessionState>(worker_->rt()->tracked.get(), s->tx_ != 'I');
        if (sess_ == nullptr || !(changes || sess_->busy())) return;
        std::vector<SessionStmt> stmts;
        lex_session_sql(text, scs, &stmts);
        note_connect_resets(stmts);
        sess_->note_query(std::move(stmts), true);
      } else {
        // Larger than remapping reads whole: its statements are not read (ARCHITECTURE.md).
        if (sess_ == nullptr || !sess_->busy()) return;
        sess_->note_query({}, false);
      }
      s->queue_.flag_back();
      return;
    }
    case 'E': {
      if (sess_ == nullptr) return;
      std::string_view portal;
      bool named = whole && wire::Reader(in_.begin() + wire::kHeaderLen, len - 4).cstr(portal);
      if (sess_->note_execute(named ? &portal : nullptr)) s->queue_.flag_back();
      return;
    }
    case 'S':
      if (sess_ == nullptr || copy_in_ || !sess_->busy()) return;
      sess_->note_sync();
      s->queue_.flag_back();
      return;
    default:
      return;
  }
}

}  // namespace pgsluice
