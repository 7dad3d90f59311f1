// Protocol features through pgsluice: COPY, extended query, pipelining, suspended portals,
// notices, LISTEN/NOTIFY, large results, cancel requests.
#include <doctest/doctest.h>
#include <poll.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

std::string copy_rows(int n) {
  std::string s;
  for (int i = 1; i <= n; ++i) {
    s += std::to_string(i) + "\tvalue-" + std::to_string(i * 7919) + " \\\\ tab\\t end\t";
    s += (i % 10 == 0) ? "\\N" : std::to_string(i % 97);
    s += "\n";
  }
  return s;
}

void copy_in(PGconn* c, const std::string& data, bool extended) {
  Result r(extended ? PQexecParams(c, "COPY it_copy FROM STDIN", 0, nullptr, nullptr, nullptr,
                                   nullptr, 0)
                    : PQexec(c, "COPY it_copy FROM STDIN"));
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COPY_IN, std::string(PQerrorMessage(c)));
  // Send in uneven chunks so that messages do not line up with rows.
  size_t off = 0;
  size_t chunk = 1;
  while (off < data.size()) {
    size_t n = std::min(chunk, data.size() - off);
    REQUIRE(PQputCopyData(c, data.data() + off, static_cast<int>(n)) == 1);
    off += n;
    chunk = chunk * 3 % 8191 + 1;
  }
  REQUIRE(PQputCopyEnd(c, nullptr) == 1);
  Result done(PQgetResult(c));
  REQUIRE_MESSAGE(PQresultStatus(done.get()) == PGRES_COMMAND_OK, std::string(PQerrorMessage(c)));
  while (PGresult* extra = PQgetResult(c)) PQclear(extra);
}

std::string copy_out(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COPY_OUT, std::string(PQerrorMessage(c)));
  std::string out;
  for (;;) {
    char* buf = nullptr;
    int n = PQgetCopyData(c, &buf, 0);
    if (n == -1) break;
    REQUIRE_MESSAGE(n > 0, std::string(PQerrorMessage(c)));
    out.append(buf, static_cast<size_t>(n));
    PQfreemem(buf);
  }
  Result done(PQgetResult(c));
  CHECK(PQresultStatus(done.get()) == PGRES_COMMAND_OK);
  while (PGresult* extra = PQgetResult(c)) PQclear(extra);
  return out;
}

TEST_CASE("COPY FROM STDIN / TO STDOUT, simple and extended, and a failing COPY") {
  Pooler p;
  Conn c = connect(p.conninfo());
  exec_ok(c.get(), "DROP TABLE IF EXISTS it_copy");
  exec_ok(c.get(), "CREATE TABLE it_copy (id int PRIMARY KEY, t text, n int)");
  const std::string rows = copy_rows(10000);
  const std::string q = "COPY (SELECT * FROM it_copy ORDER BY id) TO STDOUT";

  copy_in(c.get(), rows, false);
  CHECK(scalar(c.get(), "select count(*) from it_copy") == "10000");
  std::string back = copy_out(c.get(), q);
  CHECK(back.size() == rows.size());
  CHECK(back == rows);

  exec_ok(c.get(), "TRUNCATE it_copy");
  copy_in(c.get(), rows, true);
  back = copy_out(c.get(), q);
  CHECK(back == rows);
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);

  // Bad data mid-way: the COPY fails with 22P02 and the connection stays usable.
  exec_ok(c.get(), "TRUNCATE it_copy");
  {
    Result r(PQexec(c.get(), "COPY it_copy FROM STDIN"));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COPY_IN);
    std::string good = copy_rows(500);
    REQUIRE(PQputCopyData(c.get(), good.data(), static_cast<int>(good.size())) == 1);
    std::string bad = "501\tbad\tnot-a-number\n";
    REQUIRE(PQputCopyData(c.get(), bad.data(), static_cast<int>(bad.size())) == 1);
    std::string more = copy_rows(2000).substr(good.size());
    // The server may already have failed; keep sending as a client would.
    PQputCopyData(c.get(), more.data(), static_cast<int>(more.size()));
    PQputCopyEnd(c.get(), nullptr);
    Result done(PQgetResult(c.get()));
    CHECK(PQresultStatus(done.get()) == PGRES_FATAL_ERROR);
    const char* st = PQresultErrorField(done.get(), PG_DIAG_SQLSTATE);
    CHECK(std::string(st ? st : "") == "22P02");
    while (PGresult* extra = PQgetResult(c.get())) PQclear(extra);
  }
  CHECK(scalar(c.get(), "select count(*) from it_copy") == "0");
  // A COPY the client aborts (CopyFail).
  {
    Result r(PQexec(c.get(), "COPY it_copy FROM STDIN"));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COPY_IN);
    std::string good = copy_rows(100);
    REQUIRE(PQputCopyData(c.get(), good.data(), static_cast<int>(good.size())) == 1);
    REQUIRE(PQputCopyEnd(c.get(), "client changed its mind") == 1);
    Result done(PQgetResult(c.get()));
    CHECK(PQresultStatus(done.get()) == PGRES_FATAL_ERROR);
    CHECK(std::string(PQresultErrorMessage(done.get())).find("client changed its mind") !=
          std::string::npos);
    while (PGresult* extra = PQgetResult(c.get())) PQclear(extra);
  }
  CHECK(scalar(c.get(), "select count(*) from it_copy") == "0");
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
  // Another client sees a clean server.
  Conn d = connect(p.conninfo());
  CHECK(scalar(d.get(), "select 5") == "5");
  exec_ok(c.get(), "DROP TABLE it_copy");
}

TEST_CASE("extended query: unnamed and named prepared statements, parameters") {
  Pooler p;
  Conn c = connect(p.conninfo());
  // Unnamed statement: Parse+Sync then Bind/Execute+Sync; the transaction keeps the server.
  exec_ok(c.get(), "BEGIN");
  {
    Result r(PQprepare(c.get(), "", "select $1::int * 2, $2::text", 2, nullptr));
    REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COMMAND_OK,
                    std::string(PQerrorMessage(c.get())));
  }
  for (int i = 0; i < 5; ++i) {
    std::string a = std::to_string(i);
    std::string b = "row" + a;
    const char* params[2] = {a.c_str(), b.c_str()};
    Result r(PQexecPrepared(c.get(), "", 2, params, nullptr, nullptr, 0));
    REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK,
                    std::string(PQerrorMessage(c.get())));
    CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == std::to_string(i * 2));
    CHECK(std::string(PQgetvalue(r.get(), 0, 1)) == b);
  }
  {
    Result r(PQdescribePrepared(c.get(), ""));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
    CHECK(PQnparams(r.get()) == 2);
    CHECK(PQnfields(r.get()) == 2);
  }
  exec_ok(c.get(), "COMMIT");
  // Parse/Bind/Execute/Sync in one go, outside a transaction, with binary results.
  for (int i = 0; i < 20; ++i) {
    std::string a = std::to_string(i);
    const char* params[1] = {a.c_str()};
    Result r(PQexecParams(c.get(), "select $1::int + 1000", 1, nullptr, params, nullptr, nullptr,
                          i % 2));
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    if (i % 2 == 0)
      CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == std::to_string(i + 1000));
    else
      CHECK(PQgetlength(r.get(), 0, 0) == 4);
  }
  // An error in the extended protocol leaves the connection usable.
  {
    Result r(PQexecParams(c.get(), "select 1/$1::int", 1, nullptr,
                          std::vector<const char*>{"0"}.data(), nullptr, nullptr, 0));
    CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
  }
  CHECK(scalar(c.get(), "select 'ok'") == "ok");
}

TEST_CASE("pipeline mode: several syncs in flight, an error mid-pipeline") {
  Pooler p;
  Conn c = connect(p.conninfo());
  PGconn* pc = c.get();
  REQUIRE(PQenterPipelineMode(pc) == 1);
  auto send = [&](const char* sql) {
    REQUIRE(PQsendQueryParams(pc, sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
  };
  send("select 1");
  send("select 2");
  REQUIRE(PQpipelineSync(pc) == 1);
  send("select 1/0");
  send("select 4");  // skipped: same segment as the error
  REQUIRE(PQpipelineSync(pc) == 1);
  send("select 5");
  send("select 6");
  REQUIRE(PQpipelineSync(pc) == 1);
  // Expected sequence of result kinds; "T:v" = tuples with first value v.
  std::vector<std::string> expect = {"T:1",     "null", "T:2",     "null", "SYNC",
                                     "E:22012", "null", "ABORTED", "null", "SYNC",
                                     "T:5",     "null", "T:6",     "null", "SYNC"};
  std::vector<std::string> got;
  auto t0 = Clock::now();
  while (got.size() < expect.size() && seconds_since(t0) < 10) {
    PGresult* res = PQgetResult(pc);
    if (!res) {
      got.push_back("null");
      continue;
    }
    Result r(res);
    switch (PQresultStatus(res)) {
      case PGRES_TUPLES_OK:
        got.push_back(std::string("T:") + PQgetvalue(res, 0, 0));
        break;
      case PGRES_PIPELINE_SYNC:
        got.push_back("SYNC");
        break;
      case PGRES_PIPELINE_ABORTED:
        got.push_back("ABORTED");
        break;
      case PGRES_FATAL_ERROR: {
        const char* st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        got.push_back(std::string("E:") + (st ? st : "?"));
        break;
      }
      default:
        got.push_back(std::string("other:") + PQresStatus(PQresultStatus(res)));
    }
  }
  CHECK(got == expect);
  REQUIRE(PQexitPipelineMode(pc) == 1);
  CHECK(scalar(pc, "select 'after pipeline'") == "after pipeline");

  // A bigger pipeline: 200 queries in 20 sync segments, sent before reading anything.
  REQUIRE(PQenterPipelineMode(pc) == 1);
  REQUIRE(PQsetnonblocking(pc, 1) == 0);
  for (int i = 0; i < 200; ++i) {
    std::string a = std::to_string(i);
    const char* params[1] = {a.c_str()};
    REQUIRE(PQsendQueryParams(pc, "select $1::int", 1, nullptr, params, nullptr, nullptr, 0) == 1);
    if (i % 10 == 9) REQUIRE(PQpipelineSync(pc) == 1);
  }
  int next = 0, syncs = 0;
  t0 = Clock::now();
  while (syncs < 20 && seconds_since(t0) < 10) {
    PQflush(pc);
    pollfd pf{PQsocket(pc), POLLIN, 0};
    poll(&pf, 1, 100);
    REQUIRE(PQconsumeInput(pc) == 1);
    while (!PQisBusy(pc)) {
      PGresult* res = PQgetResult(pc);
      if (!res) continue;  // end of one query's results
      Result r(res);
      if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
        ++syncs;
        if (syncs == 20) break;
        continue;
      }
      REQUIRE(PQresultStatus(res) == PGRES_TUPLES_OK);
      CHECK(std::string(PQgetvalue(res, 0, 0)) == std::to_string(next));
      ++next;
    }
  }
  CHECK(next == 200);
  CHECK(syncs == 20);
  REQUIRE(PQsetnonblocking(pc, 0) == 0);
  REQUIRE(PQexitPipelineMode(pc) == 1);
  CHECK(scalar(pc, "select 'done'") == "done");
}

std::string parse_msg(const std::string& name, const std::string& sql) {
  return cstr(name) + cstr(sql) + be16(0);
}
std::string bind_msg(const std::string& portal, const std::string& stmt) {
  return cstr(portal) + cstr(stmt) + be16(0) + be16(0) + be16(0);
}
std::string execute_msg(const std::string& portal, uint32_t max_rows) {
  return cstr(portal) + be32(max_rows);
}

std::string types(const std::vector<Msg>& ms) {
  std::string s;
  std::string errors;
  for (const auto& m : ms) {
    s.push_back(m.type ? m.type : '?');
    if (m.type == 'E') errors += " [" + m.field('C') + " " + m.field('M') + "]";
  }
  return s + errors;
}

// Number of the first DataRow column as text, and the second (pg_backend_pid) column.
std::string row_col(const Msg& m, int col) {
  const std::string& b = m.body;
  size_t pos = 2;
  for (int i = 0; i <= col; ++i) {
    if (pos + 4 > b.size()) return "?";
    uint32_t len = (static_cast<uint32_t>(static_cast<unsigned char>(b[pos])) << 24) |
                   (static_cast<uint32_t>(static_cast<unsigned char>(b[pos + 1])) << 16) |
                   (static_cast<uint32_t>(static_cast<unsigned char>(b[pos + 2])) << 8) |
                   static_cast<uint32_t>(static_cast<unsigned char>(b[pos + 3]));
    pos += 4;
    if (i == col) return b.substr(pos, len);
    pos += len;
  }
  return "?";
}

// Waits (bounded) for the async query on c to finish; returns its first value or "" on error.
std::string finish_async(PGconn* c, double timeout_s, bool* done) {
  auto t0 = Clock::now();
  *done = false;
  while (seconds_since(t0) < timeout_s) {
    if (!PQconsumeInput(c)) break;
    if (!PQisBusy(c)) {
      *done = true;
      break;
    }
    pollfd pf{PQsocket(c), POLLIN, 0};
    poll(&pf, 1, 50);
  }
  if (!*done) return "";
  std::string v;
  while (PGresult* res = PQgetResult(c)) {
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0) v = PQgetvalue(res, 0, 0);
    PQclear(res);
  }
  return v;
}

TEST_CASE("raw protocol: Execute with max_rows, Flush without Sync, PortalSuspended") {
  // Pool size 1: while our portal is open (no Sync yet) the only server must stay ours, so
  // another client's query waits until our Sync.
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  Raw r = Raw::from_libpq(holder.get());
  Conn other = connect(p.conninfo());
  CHECK(scalar(other.get(), "select 1") == "1");

  REQUIRE(r.send_bytes(msg('P', parse_msg("",
                                          "select g, pg_backend_pid() from "
                                          "generate_series(1, 7) g")) +
                       msg('B', bind_msg("", "")) + msg('E', execute_msg("", 2)) + msg('H', "")));
  auto ms = r.read_until('s', 5);
  REQUIRE(types(ms) == "12DDs");
  CHECK(row_col(ms[2], 0) == "1");
  CHECK(row_col(ms[3], 0) == "2");
  const std::string server_pid = row_col(ms[2], 1);

  // Another client asks for the (only) server now.
  REQUIRE(PQsendQuery(other.get(), "select 'other ran'") == 1);
  sleep_ms(300);
  REQUIRE(PQconsumeInput(other.get()) == 1);
  if (!p.direct())
    CHECK_MESSAGE(PQisBusy(other.get()) == 1,
                  "the server was handed to another client before Sync");

  REQUIRE(r.send_bytes(msg('E', execute_msg("", 2)) + msg('H', "")));
  ms = r.read_until('s', 5);
  CHECK(types(ms) == "DDs");
  if (ms.size() == 3) {
    CHECK(row_col(ms[0], 0) == "3");
    CHECK(row_col(ms[1], 1) == server_pid);
  }
  REQUIRE(r.send_bytes(msg('E', execute_msg("", 0)) + msg('S', "")));
  ms = r.read_until('Z', 5);
  CHECK(types(ms) == "DDDCZ");
  if (ms.size() == 5) {
    CHECK(row_col(ms[2], 0) == "7");
    CHECK(row_col(ms[2], 1) == server_pid);
    CHECK(ms[3].body.substr(0, 8) == "SELECT 3");
    CHECK(ms[4].body == "I");
  }
  // After our Sync the other client gets the server.
  bool done = false;
  CHECK(finish_async(other.get(), 5, &done) == "other ran");
  CHECK(done);

  // A simple query on the raw connection still works.
  REQUIRE(r.send_msg('Q', cstr("select 'raw ok'")));
  ms = r.read_until('Z', 5);
  CHECK(types(ms) == "TDCZ");
  // Describe of a statement, then Close, all before one Sync.
  REQUIRE(r.send_bytes(msg('P', parse_msg("s1", "select $1::int as x")) +
                       msg('D', "S" + cstr("s1")) + msg('C', "S" + cstr("s1")) + msg('S', "")));
  ms = r.read_until('Z', 5);
  CHECK(types(ms) == "1tT3Z");
  // An error before Sync: the rest is skipped until Sync, then the session is usable.
  REQUIRE(r.send_bytes(msg('P', parse_msg("", "select 1 / (g - 1) from generate_series(1, 2) g")) +
                       msg('B', bind_msg("", "")) + msg('E', execute_msg("", 0)) +
                       msg('P', parse_msg("", "select 2")) + msg('S', "")));
  ms = r.read_until('Z', 5);
  CHECK(types(ms).substr(0, 4) == "12EZ");
  REQUIRE(r.send_msg('Q', cstr("select 'after error'")));
  ms = r.read_until('Z', 5);
  CHECK(types(ms) == "TDCZ");
  CHECK(scalar(other.get(), "select 'other again'") == "other again");
  r.send_msg('X', "");
}

TEST_CASE("NoticeResponse reaches the client") {
  Pooler p;
  Conn c = connect(p.conninfo());
  struct Seen {
    int count = 0;
    std::string text;
  } seen;
  PQsetNoticeReceiver(
      c.get(),
      [](void* arg, const PGresult* res) {
        auto* s = static_cast<Seen*>(arg);
        ++s->count;
        s->text = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
      },
      &seen);
  exec_ok(c.get(), "DO $$ BEGIN RAISE NOTICE 'hi'; END $$");
  CHECK(seen.count == 1);
  CHECK(seen.text == "hi");
  exec_ok(c.get(), "DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$");
  CHECK(seen.count == 2);
  CHECK(seen.text == "careful 42");
}

TEST_CASE("LISTEN/NOTIFY in session mode") {
  Options o;
  o.pool_mode = "session";
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo("scramuser", "scrampass"));
  exec_ok(a.get(), "LISTEN it_chan");
  exec_ok(b.get(), "NOTIFY it_chan, 'hello from b'");
  exec_ok(b.get(), "SELECT pg_notify('it_chan', 'second')");
  std::vector<std::string> got;
  auto t0 = Clock::now();
  while (got.size() < 2 && seconds_since(t0) < 5) {
    pollfd pf{PQsocket(a.get()), POLLIN, 0};
    poll(&pf, 1, 100);
    REQUIRE(PQconsumeInput(a.get()) == 1);
    while (PGnotify* n = PQnotifies(a.get())) {
      CHECK(std::string(n->relname) == "it_chan");
      got.push_back(n->extra);
      PQfreemem(n);
    }
  }
  REQUIRE(got.size() == 2);
  CHECK(got[0] == "hello from b");
  CHECK(got[1] == "second");
}

TEST_CASE("large result is streamed, not buffered (VmRSS bounded)") {
  Pooler p;
  Conn c = connect(p.conninfo());
  const long rss0 = p.direct() ? 0 : vm_rss_kb(p.pid());
  std::atomic<bool> stop{false};
  std::atomic<long> rss_max{rss0};
  std::thread sampler([&] {
    while (!stop && !p.direct()) {
      long v = vm_rss_kb(p.pid());
      if (v > rss_max) rss_max = v;
      sleep_ms(20);
    }
  });
  REQUIRE(PQsendQuery(c.get(), "SELECT repeat('x', 1000) FROM generate_series(1, 200000)") == 1);
  REQUIRE(PQsetSingleRowMode(c.get()) == 1);
  long rows = 0;
  bool bad_value = false;
  bool ok = false;
  auto t0 = Clock::now();
  while (PGresult* res = PQgetResult(c.get())) {
    Result r(res);
    auto st = PQresultStatus(res);
    if (st == PGRES_SINGLE_TUPLE) {
      ++rows;
      if (PQgetlength(res, 0, 0) != 1000) bad_value = true;
      if (rows == 1000) sleep_ms(1500);  // a slow reader: the pooler must not read ahead
    } else if (st == PGRES_TUPLES_OK) {
      ok = true;
    } else {
      FAIL_CHECK("large query failed: " << std::string(PQerrorMessage(c.get())));
    }
  }
  stop = true;
  sampler.join();
  MESSAGE("streamed " << rows << " rows in " << seconds_since(t0) << " s; pooler VmRSS " << rss0
                      << " kB -> max " << rss_max.load() << " kB");
  CHECK(ok);
  CHECK(rows == 200000);
  CHECK_FALSE(bad_value);
  if (!p.direct()) {
    CHECK(rss0 > 0);
    CHECK(rss_max.load() - rss0 <= 16 * 1024);
    long rss_after = vm_rss_kb(p.pid());
    CHECK(rss_after - rss0 <= 16 * 1024);
  }
  CHECK(scalar(c.get(), "select 'after'") == "after");
}

std::string cancel(PGconn* c) {
  PGcancel* cn = PQgetCancel(c);
  REQUIRE(cn != nullptr);
  char err[256] = {0};
  int ok = PQcancel(cn, err, sizeof err);
  PQfreeCancel(cn);
  return ok ? "" : std::string("PQcancel failed: ") + err;
}

TEST_CASE("cancel a running query") {
  Pooler p;
  Conn c = connect(p.conninfo());
  REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(10)") == 1);
  sleep_ms(500);
  auto t0 = Clock::now();
  CHECK(cancel(c.get()) == "");
  // Wait for the result with a bound.
  bool ready = false;
  while (seconds_since(t0) < 5) {
    REQUIRE(PQconsumeInput(c.get()) == 1);
    if (!PQisBusy(c.get())) {
      ready = true;
      break;
    }
    pollfd pf{PQsocket(c.get()), POLLIN, 0};
    poll(&pf, 1, 50);
  }
  double took = seconds_since(t0);
  REQUIRE_MESSAGE(ready, "no result within 5 s of the cancel");
  CHECK(took < 2.0);
  Result r(PQgetResult(c.get()));
  CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
  const char* st = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  CHECK(std::string(st ? st : "") == "57014");
  while (PGresult* extra = PQgetResult(c.get())) PQclear(extra);
  CHECK(scalar(c.get(), "select 1") == "1");
  // The same works inside a transaction, which then is in the failed state.
  exec_ok(c.get(), "BEGIN");
  REQUIRE(PQsendQuery(c.get(), "SELECT pg_sleep(10)") == 1);
  sleep_ms(300);
  CHECK(cancel(c.get()) == "");
  Result r2(PQgetResult(c.get()));
  const char* st2 = PQresultErrorField(r2.get(), PG_DIAG_SQLSTATE);
  CHECK(std::string(st2 ? st2 : "") == "57014");
  while (PGresult* extra = PQgetResult(c.get())) PQclear(extra);
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
  exec_ok(c.get(), "ROLLBACK");
  CHECK(scalar(c.get(), "select 2") == "2");
}

TEST_CASE("cancel of an idle client does not hit another client's query (pool_size 1)") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  CHECK(scalar(a.get(), "select 1") == "1");  // A has used, then released, the only server
  REQUIRE(PQsendQuery(b.get(), "SELECT pg_sleep(1), 'b done'") == 1);
  sleep_ms(200);
  CHECK(cancel(a.get()) == "");
  sleep_ms(100);
  CHECK(cancel(a.get()) == "");
  Result r(PQgetResult(b.get()));
  CHECK_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, std::string(PQerrorMessage(b.get())));
  if (PQresultStatus(r.get()) == PGRES_TUPLES_OK)
    CHECK(std::string(PQgetvalue(r.get(), 0, 1)) == "b done");
  while (PGresult* extra = PQgetResult(b.get())) PQclear(extra);
  CHECK(scalar(a.get(), "select 'a fine'") == "a fine");
  CHECK(scalar(b.get(), "select 'b fine'") == "b fine");
  // A bogus cancel key is ignored too.
  Raw bogus = Raw::tcp(p.port());
  REQUIRE(bogus.send_bytes(be32(16) + be32(80877102) + be32(12345) + be32(67890)));
  CHECK(bogus.wait_closed(5));
  REQUIRE(PQsendQuery(b.get(), "SELECT pg_sleep(0.3), 'b again'") == 1);
  Result r2(PQgetResult(b.get()));
  CHECK(PQresultStatus(r2.get()) == PGRES_TUPLES_OK);
  while (PGresult* extra = PQgetResult(b.get())) PQclear(extra);
}

}  // namespace
}  // namespace it
