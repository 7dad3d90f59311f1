// The reply bookkeeping of one server connection (see replies.h): pure, no sockets.
#include "replies.h"

#include "wire.h"

namespace pgsluice {

void RequestQueue::drop_syncs_after_front() {
  if (empty()) return;
  size_t w = head_ + 1;
  for (size_t r = head_ + 1; r < q_.size(); r++)
    if (q_[r].type != 'S') q_[w++] = q_[r];
  q_.resize(w);
  syncs_ = q_[head_].type == 'S';
}

std::string rename_error(std::span<const uint8_t> body, std::string_view from,
                         std::string_view to) {
  std::string out;
  wire::Writer w(out);
  w.begin('E');
  wire::Reader r(body);
  std::string_view sqlstate;
  for (;;) {
    uint8_t code = 0;
    std::string_view v;
    if (!r.u8(code) || code == 0 || !r.cstr(v)) break;
    if (from.empty() && (code == 'W' || code == 'q' || code == 'p')) continue;  // DO-block context
    if (code == 'C') sqlstate = v;
    if (code == 'M' && !from.empty() && to.empty() && sqlstate == "26000")
      w.u8(code).cstr("unnamed prepared statement does not exist");  // PostgreSQL's wording
    else
      w.u8(code).cstr(code == 'M' && !from.empty() ? rename_in_message(v, from, to)
                                                   : std::string(v));
  }
  w.u8(0).end();
  return out;
}

bool ReplyBook::name_unresolved(std::string_view name) const {
  bool segment_ended = false;  // a Sync/Query/FunctionCall lies between r and the end
  for (size_t i = queue_.size(); i-- > 0;) {
    const Request& r = queue_.at(i);
    if (r.type == 'S' || r.type == 'Q' || r.type == 'F') segment_ended = true;
    if (!segment_ended || r.client_name < 0) continue;
    if (queue_.undos[r.client_name].name == name) return true;
  }
  return false;
}

void ReplyBook::take_fakes(std::string& out, ClientStmts* names) {
  while (!queue_.empty() && queue_.front().action == ReqAction::Fake) {
    const Request& r = queue_.front();
    if (skip_to_sync_) {  // PostgreSQL skips it too: no answer, and its change is undone
      unwind(r, false, names);
      queue_.pop();
      continue;
    }
    if (names != nullptr) {
      if (r.type == 'Q') {  // a whole simple-query answer: its tag, then ReadyForQuery
        wire::Writer(out).begin('C').cstr(queue_.renames[r.tag].first).end();
        wire::ready_for_query(out, tx_);
      } else {
        const char msg[5] = {r.type == 'P' ? '1' : '3', 0, 0, 0, 4};
        out.append(msg, sizeof msg);
      }
    }
    queue_.pop();
  }
}

void ReplyBook::unwind_to_sync(bool front_failed, ClientStmts* names) {
  size_t n = 0;
  while (n < queue_.size()) {
    uint8_t t = queue_.at(n).type;
    if (t == 'S' || (!skip_to_sync_ && (t == 'Q' || t == 'F'))) break;
    n++;
  }
  for (size_t i = n; i-- > 0;) unwind(queue_.at(i), front_failed && i == 0, names);
  for (size_t i = 0; i < n; i++) queue_.pop();
}

void ReplyBook::unwind(const Request& r, bool failed, ClientStmts* names) {
  if (r.type == 'P' && r.tag == kUnnamedParse) {
    // A failed unnamed Parse leaves none, a skipped one what was there: not known here.
    unnamed_client_ = 0;
    if (failed && names != nullptr) names->has_unnamed = false;
  }
  if (r.client_name >= 0 && names != nullptr) {
    // The client's name goes back to what it was before this request; a failed unnamed
    // Parse leaves no unnamed statement at all (PostgreSQL drops the old one first).
    const NameUndo& u = queue_.undos[r.client_name];
    // A kept name still maps to what it did before this request.
    if (failed && r.type == 'P' && u.name.empty()) {
      names->erase(u.name);
    } else if (!u.kept) {
      if (u.prev == nullptr)
        names->erase(u.name);
      else
        names->set(u.name, u.prev);
    }
  }
  if ((r.type == 'P' || r.type == 'Q') && r.stmt != 0) {
    // A failed Parse left nothing. A skipped one (and the Close skipped before it) left the
    // server as it was: the statement is there if PostgreSQL acknowledged it earlier.
    if (failed || !stmts_.confirmed(r.stmt)) {
      stmts_.remove(r.stmt);
    } else {
      stmts_.drop_pending(r.stmt);
      stmts_.unverify(r.stmt);  // its re-Parse (and Close) did not run: as it was before
    }
  } else if (r.type == 'C' && r.action == ReqAction::Skip && r.stmt != 0) {
    auto it = evicting_.find(r.stmt);  // the eviction was skipped: still prepared here
    if (it != evicting_.end()) {
      stmts_.add(it->second);
      stmts_.unverify(r.stmt);  // as it was, whatever that was: prepared again before use
      evicting_.erase(it);
    }
  }
}

ReplyVerdict ReplyBook::on_reply(uint8_t type, std::span<const uint8_t> body, ClientStmts& names,
                                 bool segment_saved) {
  using Kind = ReplyVerdict::Kind;
  ReplyVerdict v;
  switch (type) {
    case 'Z': {
      uint8_t st = body.empty() ? 0 : body[0];
      if (st != 'I' && st != 'T' && st != 'E') {
        v.kind = Kind::Close;
        v.why = "invalid ReadyForQuery status from server";
        return v;
      }
      tx_ = static_cast<char>(st);
      copy_ = false;
      // Requests still unanswered here were sent after the segment's error was handled
      // (before its Sync): PostgreSQL skipped them too.
      unwind_to_sync(false, &names);
      skip_to_sync_ = false;
      if (!queue_.empty()) queue_.pop();
      v.ready = true;
      if (retry_pending_) {
        retry_pending_ = false;
        retried_ = true;
        v.kind = Kind::Replay;
        v.replay_stmt = retry_stmt_;
        return v;
      }
      retried_ = false;
      seg_out_ = 0;
      return v;
    }
    case '1':
      if (!queue_.empty() && queue_.front_type() == 'P') {
        if (queue_.front().stmt != 0) stmts_.confirm(queue_.front().stmt, pool_uid_);
        if (queue_.front().action == ReqAction::Skip) v.kind = Kind::Swallow;
        queue_.pop();
      }
      break;
    case '2':
      if (!queue_.empty() && queue_.front_type() == 'B') queue_.pop();
      break;
    case '3':
      if (!queue_.empty() && queue_.front_type() == 'C') {
        if (queue_.front().action == ReqAction::Skip) {
          v.kind = Kind::Swallow;
          evicting_.erase(queue_.front().stmt);
        }
        queue_.pop();
      }
      break;
    case 'n':
    case 'T':
      if (!queue_.empty() && queue_.front_type() == 'D') queue_.pop();
      break;
    case 'C':
    case 'I':
    case 's':
      if (type == 'C' && !queue_.empty() && queue_.front_type() == 'Q' &&
          queue_.front().swallow_c > 0) {
        queue_.front().swallow_c--;  // the PREPARE pgsluice put before the client's EXECUTE
        v.kind = Kind::Swallow;
        return v;
      }
      if (!queue_.empty() && queue_.front_type() == 'E') queue_.pop();
      if (type == 'C') {
        v.copy_in = 0;
        copy_ = false;
        // DEALLOCATE ALL / DISCARD ALL dropped every statement of this session.
        std::string_view tag(reinterpret_cast<const char*>(body.data()),
                             body.empty() ? 0 : body.size() - 1);
        if (tag == "DEALLOCATE ALL" || tag == "DISCARD ALL") {
          unverify();
          names.clear();
        }
      }
      break;
    case 'E':
      v.copy_in = 0;
      copy_ = false;
      if (body.empty()) {
        // Streamed (too long to read whole): passed on as PostgreSQL wrote it.
      } else if (!queue_.empty() && queue_.front().stmt != 0 && queue_.front().rename < 0) {
        // 26000 for a statement pgsluice believed this server held, or 42P05 for one it
        // believed absent: some SQL changed pgsluice's statements behind its back.
        std::string st = wire::parse_error(body).sqlstate;
        uint8_t ft = queue_.front_type();
        if ((st == "26000" && (ft == 'B' || ft == 'D')) || (st == "42P05" && ft == 'P')) {
          unverify();
          st = "stale";
        }
        if (!retried_ && segment_saved && seg_out_ == 0 && queue_.single_segment() &&
            ((st == "0A000" && ft == 'B') || st == "stale")) {
          // "cached plan must not change result type" after DDL, or a statement lost as
          // above, and the client has seen nothing of this segment: replay it once (at
          // its ReadyForQuery), which prepares it afresh.
          retry_pending_ = true;
          retry_stmt_ = st == "stale" ? 0 : queue_.front().stmt;
          v.kind = Kind::Swallow;
        }
      }
      if (body.empty()) {
      } else if (v.kind == Kind::Forward && !queue_.empty() && queue_.front().rename >= 0) {
        // An error pgsluice provoked on the client's behalf: name the client's statement.
        const auto& rn = queue_.renames[queue_.front().rename];
        if (rn.first == kRefused)
          wire::error_response(v.rewritten, "ERROR", "42501", rn.second);
        else
          v.rewritten = rename_error(body, rn.first, rn.second);
        v.kind = Kind::Rewrite;
      } else if (v.kind == Kind::Forward && !queue_.empty() && queue_.front().stmt != 0 &&
                 (queue_.front_type() == 'B' || queue_.front_type() == 'D')) {
        // An error that names a remapped statement ("bind message supplies 1 parameters,
        // but prepared statement ... requires 2"): name it as the client does.
        // The name is looked up by the statement and a fingerprint of the name (no copy
        // on the Bind path); the unnamed statement may have been replaced meanwhile.
        const Request& r = queue_.front();
        std::string_view name;
        const StmtEntry* e = names.find_by_id(r.stmt, r.tag, &name);
        if (e != nullptr || r.tag == name_tag({})) {
          v.rewritten = rename_error(body, stmt_server_name(r.stmt), name);
          v.kind = Kind::Rewrite;
        }
      }
      if (!queue_.empty() && queue_.front_type() == 'Q') {
        unwind(queue_.front(), true, &names);  // a PREPARE that failed did not create anything
        queue_.front().stmt = 0;
        queue_.forget_undo();
        queue_.front().swallow_c = 0;
      }
      // Extended protocol: the server skips everything up to the next Sync, simple
      // queries included.
      if (!queue_.empty() && queue_.front_type() != 'Q' && queue_.front_type() != 'F' &&
          queue_.front_type() != 'S')
        skip_to_sync_ = true;
      unwind_to_sync(true, &names);  // the front raised the error; the rest were skipped
      break;
    case 'G':
      copy_ = true;
      if (!queue_.empty() && queue_.front_type() == 'E') {
        // Extended protocol: PostgreSQL ignores the Syncs sent during COPY and wants one
        // after it, so the implicit transaction stays open until the client sends it.
        queue_.drop_syncs_after_front();
        unsynced_ = true;
        v.copy_in = 1;
      }
      break;
    case 'H':
    case 'W':
      copy_ = true;
      break;
    case 'K':
    case 'R':
      v.kind = Kind::Close;
      v.why = "unexpected login message from server";
      return v;
    default:
      break;
  }
  return v;
}

}  // namespace pgsluice
