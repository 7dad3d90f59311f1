// libFuzzer target: the session-settings lexer (session_state.cc) reads every simple Query
// and Parse text in transaction and statement pooling, and its statements are sent again to
// other servers. Besides not crashing: the cheap scan and the full lex agree; a restoring
// statement reads back as the same single statement (so no value can carry a second one,
// whatever standard_conforming_strings said); the state machine, fed the statements and
// arbitrary answers, never grows without bound or keeps a transaction's changes past it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "pinning.h"
#include "session_state.h"
#include "state_routines.h"
#include "varcache.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgsluice;
  if (size < 2) return 0;
  const bool scs = (data[0] & 1) == 0;
  const uint8_t script = data[1];
  std::string_view text(reinterpret_cast<const char*>(data) + 2, size - 2);
  text = text.substr(0, text.find('\0'));  // a C string on the wire

  std::vector<SessionStmt> stmts;
  bool changes = lex_session_sql(text, scs, &stmts);
  check(changes == lex_session_sql(text, scs, nullptr));
  bool any = false;
  for (const auto& st : stmts) {
    any = any || changes_settings(st.kind);
    if (st.kind == StmtKind::Set || st.kind == StmtKind::Reset) {
      check(!st.key.empty());
      // What pgsluice sends a server reads back as this one statement, under either
      // standard_conforming_strings (Set's values are written so that both agree).
      for (bool s2 : {true, false}) {
        // U&'...' keeps its backslashes: it reads back only as it was read (PostgreSQL
        // refuses it with standard_conforming_strings off anyway).
        if (s2 != scs &&
            (st.sql.find("U&") != std::string::npos || st.sql.find("u&") != std::string::npos))
          continue;
        std::vector<SessionStmt> again;
        lex_session_sql(st.sql, s2, &again);
        check(again.size() == 1);
        check(again[0].kind == st.kind);
        check(again[0].key == st.key);
        if (st.kind == StmtKind::Set) check(again[0].sql == st.sql);
      }
      std::vector<SessionStmt> r;
      lex_session_sql(reset_statement(st.key), true, &r);
      check(r.size() == 1 && r[0].kind == StmtKind::Reset && r[0].key == st.key);
    }
  }
  check(any == changes);

  // Pinning (pinning.h): the scan is the same twice; any text inside a string literal
  // pins and releases nothing; the check's answer read from arbitrary bytes is a subset.
  PinScan ps = scan_pins(text, scs, (script & 2) != 0);
  PinScan ps2 = scan_pins(text, scs, (script & 2) != 0);
  check(ps.pins == ps2.pins && ps.releases == ps2.releases && ps.names == ps2.names &&
        ps.opaque == ps2.opaque && ps.dirty == ps2.dirty);
  check((ps.pins & ~0x3f) == 0 && (ps.releases & ~3) == 0);
  // Names, opaque and dirty come only with an untracked-setting pin; names are few, and
  // made of the characters a setting's name has (they go into the check query quoted).
  check((ps.pins & kPinUntrackedSetting) != 0 || (ps.names.empty() && !ps.opaque && !ps.dirty));
  check(ps.names.size() <= kPinMaxNames);
  for (const auto& n : ps.names) {
    check(!n.empty() && n.size() <= 128);
    for (char ch : n) check(ch != '\'' && ch != '\\' && ch != '\0' && !(ch >= 'A' && ch <= 'Z'));
  }
  {
    // What the check reads back is quoted whatever it holds.
    std::string v(text.substr(0, 64));
    std::string sql = set_config_statement("app.x", v);
    std::vector<SessionStmt> st;
    check(!lex_session_sql(sql, true, &st) && st.size() == 1);
  }
  {
    std::string lit = "SELECT '";
    for (char ch : text) {
      lit += ch;
      if (ch == '\'') lit += '\'';
    }
    lit += "'";
    PinScan q = scan_pins(lit, true, true);
    check(q.pins == 0 && q.releases == 0 && q.names.empty() && !q.opaque);
  }
  {
    // Routines that make state (state_routines.h): rows read from arbitrary bytes, and a
    // routine whose body is the text; a text calling it makes at least what the body does.
    StateRoutines routines;
    (void)routines.add_row(std::span<const uint8_t>(data, size));
    std::string b;
    auto u32 = [&](uint32_t v) {
      for (int sh = 24; sh >= 0; sh -= 8) b += static_cast<char>((v >> sh) & 255);
    };
    b += '\0';
    b += '\5';
    for (std::string_view col : {std::string_view("f"), std::string_view("16385"),
                                 std::string_view("fz"), std::string_view("plpgsql"), text}) {
      u32(static_cast<uint32_t>(col.size()));
      b.append(col);
    }
    check(routines.add_row(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size())));
    routines.finish();
    PinScan body;
    scan_routine_body(text, body, nullptr, nullptr);
    const PinScan* f = routines.find("fz");
    check((f == nullptr) == (body.pins == 0 && body.releases == 0 && !body.opaque && !body.dirty &&
                             body.names.empty()));
    PinScan call = scan_pins("SELECT fz()", true, false, &routines);
    check((call.pins & body.pins) == body.pins);
    (void)routines.mentioned(text);
    std::vector<std::string> calls;
    bool many = false;
    call_names(text, scs, calls, &many);
    check(calls.size() <= kMaxCallNames);
    (void)scan_pins(text, scs, false, &routines);
  }
  (void)pin_reasons(script);
  check((pin_check_row(std::span<const uint8_t>(data, size), script & 0x3f) & ~0x3f) == 0);

  // The rules: one Query with these statements, answered as the script's bits say.
  TrackedNames tracked;
  SessionState ss(&tracked, (script & 1) != 0);
  ss.note_query(stmts, true);
  size_t n = stmts.size();
  size_t fail_at = (script >> 1) % (n + 2);  // n+1: no error
  for (size_t i = 0; i < n && i < fail_at; i++) {
    std::string tag = (script & 0x40) ? "SET" : "COMMIT";
    tag.push_back('\0');
    ss.on_reply('C',
                std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(tag.data()), tag.size()),
                'Q');
  }
  if (fail_at <= n) ss.on_reply('E', {}, 'Q');
  const char status = (script & 0x80) ? 'T' : 'I';
  ss.on_reply('Z', std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&status), 1), 'Q');
  check(!ss.busy() || status == 'T');
  // The diff against nothing sets exactly what is there.
  std::string pre, sql;
  settings_diff_sql(&ss.settings(), nullptr, false, pre, sql);
  check(pre.empty());
  check(ss.settings().empty() == sql.empty());
  for (const auto& e : ss.settings().entries()) (void)shown_setting(e);
  return 0;
}
