// libFuzzer target: query texts from the network. The SQL-level PREPARE/EXECUTE/DEALLOCATE
// lexer (prepared.cc) reads every simple Query in transaction mode, the console parser
// (admin.cc) every console query, parse_trace_target (trace.cc) the value of SET trace,
// sql_scan (prepared.cc) every Query and Parse text in transaction mode.
// Besides not crashing, the lexer must keep the promises the data path relies on; a
// broken promise aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "admin.h"
#include "lost_server.h"
#include "prepared.h"
#include "trace.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgsluice;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // A Query's text is a C string: the data path never sees a NUL inside it.
  text = text.substr(0, text.find('\0'));
  size = text.size();

  (void)parse_admin_statement(text);
  // A lost server's aborted block (lost_server.h): a savepoint name only for ToSavepoint.
  std::string savepoint;
  TxExit exit_kind = classify_tx_exit(text, &savepoint);
  check(exit_kind == TxExit::ToSavepoint || savepoint.empty());
  TraceTarget target;
  (void)parse_trace_target(text, target);  // SET trace = '...' on the console

  // A query too large to read whole is scanned in pieces (Client::scan_streamed): that may
  // see more (a word cut at a piece's end), never less than a scan of the whole text.
  uint8_t all = sql_scan(text);
  SqlScan pieces;
  size_t step = 1 + size % 13;
  for (size_t at = 0; at < size; at += step) pieces.feed(text.substr(at, step));
  check((pieces.flags & all) == all);
  check((pieces.flags & SqlScan::kNamesNamespace) == (all & SqlScan::kNamesNamespace));

  // Client::remap_need() decides from the first bytes whether to buffer a whole query:
  // a decision taken on a prefix must stand once the rest arrives, and a query that
  // parses as one of the three statements must be recognised from its start.
  int whole = sql_prepared_prefix(text, true);
  check(whole == 0 || whole == 1);
  for (size_t k = 0; k <= size && k <= 64; k++) {
    int part = sql_prepared_prefix(text.substr(0, k), false);
    check(part == -1 || part == whole);
  }
  SqlPrepared sp = parse_sql_prepared(text);
  if (sp.kind == SqlPrepared::Kind::None) return 0;
  check(whole == 1);
  check(!sp.name.empty());

  if (sp.kind == SqlPrepared::Kind::Prepare) {
    // What pgsluice sends a server is "PREPARE \"PGSLUICE_<id>\" [types] AS statement":
    // it must read back as the same statement under the new name.
    StmtEntry e;
    e.body = sql_stmt_key(sp.types, sp.statement);
    e.server_name = "PGSLUICE_7";
    check(is_sql_stmt(e));
    SqlPrepared again = parse_sql_prepared(sql_prepare_text(e));
    check(again.kind == SqlPrepared::Kind::Prepare);
    check(again.name == "PGSLUICE_7");  // quoted: not folded to lower case
    check(again.types == sp.types);
    check(again.statement == sp.statement);
  }

  // Error messages name the client's statement instead of the server's.
  (void)rename_in_message(text, sp.name, "x");
  return 0;
}
