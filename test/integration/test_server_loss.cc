// Issue 12: a server connection that dies while linked (pg_terminate_backend, PostgreSQL
// stopped, a killed backend) costs a transaction-pooling client its transaction, not its
// connection: PostgreSQL's error as ERROR, a ReadyForQuery, an emulated aborted block when
// it was in one; a session-pooling client is disconnected with the error.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

Raw raw_login(const Pooler& p) {
  Raw r = Raw::tcp(p.port());
  REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
  auto msgs = r.read_until('Z');
  REQUIRE(!msgs.empty());
  REQUIRE(msgs.back().type == 'Z');
  return r;
}

std::string q(const std::string& sql) {
  return msg('Q', cstr(sql));
}
std::string parse(const std::string& name, const std::string& sql) {
  return msg('P', cstr(name) + cstr(sql) + be16(0));
}
std::string bind(const std::string& portal, const std::string& stmt) {
  return msg('B', cstr(portal) + cstr(stmt) + be16(0) + be16(0) + be16(0));
}
std::string execute(const std::string& portal) {
  return msg('E', cstr(portal) + be32(0));
}
std::string sync() {
  return msg('S', "");
}

// The first column of the first DataRow in msgs ("" when none).
std::string first_value(const std::vector<Msg>& msgs) {
  for (const Msg& m : msgs) {
    if (m.type != 'D' || m.body.size() < 6) continue;
    uint32_t len = (uint8_t(m.body[2]) << 24) | (uint8_t(m.body[3]) << 16) |
                   (uint8_t(m.body[4]) << 8) | uint8_t(m.body[5]);
    return m.body.substr(6, len);
  }
  return "";
}

// The types of msgs as a string ("CZ"), and the ReadyForQuery status of the last one.
std::string types(const std::vector<Msg>& msgs) {
  std::string t;
  for (const Msg& m : msgs) t.push_back(m.type);
  return t;
}
char status(const std::vector<Msg>& msgs) {
  return !msgs.empty() && msgs.back().type == 'Z' && !msgs.back().body.empty() ? msgs.back().body[0]
                                                                               : '?';
}
const Msg* error_in(const std::vector<Msg>& msgs) {
  for (const Msg& m : msgs)
    if (m.type == 'E') return &m;
  return nullptr;
}

std::string backend_pid(Raw& r, bool in_tx) {
  REQUIRE(r.send_bytes(q(in_tx ? "BEGIN; SELECT pg_backend_pid()" : "SELECT pg_backend_pid()")));
  auto got = r.read_until('Z');
  REQUIRE(status(got) == (in_tx ? 'T' : 'I'));
  std::string pid = first_value(got);
  REQUIRE(!pid.empty());
  return pid;
}

void terminate_backend(const std::string& pid, const Cluster& c = cluster()) {
  Conn su = connect(superuser_conninfo(c));
  CHECK(scalar(su.get(), "SELECT pg_terminate_backend(" + pid + ")") == "t");
  CHECK(eventually([&] {
    return scalar(su.get(), "SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid) == "0";
  }));
}

// The error PostgreSQL sent, at severity ERROR.
void check_terminated(const Msg* e) {
  REQUIRE(e != nullptr);
  CHECK(e->field('C') == "57P01");
  CHECK(e->field('S') == "ERROR");
  CHECK(e->field('V') == "ERROR");
  CHECK(e->field('M') == "terminating connection due to administrator command");
}

std::vector<Msg> ask(Raw& r, const std::string& bytes, char until = 'Z') {
  REQUIRE(r.send_bytes(bytes));
  return r.read_until(until);
}

Options pool_of_one(const std::string& mode = "transaction") {
  Options o;
  o.auth_type = "trust";
  o.default_pool_size = 1;
  o.workers = 1;
  o.pool_mode = mode;
  return o;
}

}  // namespace

TEST_SUITE("server loss") {
  TEST_CASE("PostgreSQL's own answers in an aborted block (what the emulation copies)") {
    Conn c = connect(superuser_conninfo());
    exec_ok(c.get(), "BEGIN");
    CHECK(exec_sqlstate(c.get(), "SELECT 1/0") == "22012");
    CHECK(exec_sqlstate(c.get(), "SELECT 1") == "25P02");
    std::string err;
    CHECK(!exec_nothrow(c.get(), "ROLLBACK TO SAVEPOINT nope", &err));
    CHECK(err.find("savepoint \"nope\" does not exist") != std::string::npos);
    CHECK(exec_sqlstate(c.get(), "ROLLBACK TO SAVEPOINT nope") == "3B001");
    Result r(PQexec(c.get(), "COMMIT"));
    CHECK(std::string(PQcmdStatus(r.get())) == "ROLLBACK");
    CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
  }

  TEST_CASE("idle in a transaction: the error, an aborted block, then a new server") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, true);
    // A second client waits for the only server, held by r's transaction.
    Conn w = connect(p.conninfo());
    REQUIRE(PQsendQuery(w.get(), "SELECT 7") == 1);
    terminate_backend(pid);
    // The waiter gets a new server at once: the slot was freed.
    Result wr(PQgetResult(w.get()));
    CHECK(PQresultStatus(wr.get()) == PGRES_TUPLES_OK);
    while (PGresult* x = PQgetResult(w.get())) PQclear(x);

    auto got = ask(r, q("SELECT 1"));
    CHECK(types(got) == "EZ");
    check_terminated(error_in(got));
    CHECK(status(got) == 'E');
    got = ask(r, q("SELECT 1"));
    CHECK(types(got) == "EZ");
    REQUIRE(error_in(got) != nullptr);
    CHECK(error_in(got)->field('C') == "25P02");
    CHECK(error_in(got)->field('M') ==
          "current transaction is aborted, commands ignored until end of transaction block");
    CHECK(status(got) == 'E');
    got = ask(r, q("ROLLBACK TO SAVEPOINT sp"));
    REQUIRE(error_in(got) != nullptr);
    CHECK(error_in(got)->field('C') == "3B001");
    CHECK(error_in(got)->field('M') == "savepoint \"sp\" does not exist");
    CHECK(status(got) == 'E');
    got = ask(r, q("ROLLBACK AND CHAIN"));
    REQUIRE(error_in(got) != nullptr);
    CHECK(status(got) == 'E');
    got = ask(r, q(""));
    CHECK(types(got) == "IZ");
    CHECK(status(got) == 'E');
    got = ask(r, q(" /* done */ commit work ;"));
    CHECK(types(got) == "CZ");
    CHECK(got[0].body.substr(0, 8) == "ROLLBACK");
    CHECK(status(got) == 'I');
    // Back to normal, on a new backend.
    got = ask(r, q("SELECT pg_backend_pid()"));
    CHECK(status(got) == 'I');
    CHECK(first_value(got) != pid);
    CHECK(!first_value(got).empty());
    got = ask(r, q("SELECT now() = statement_timestamp()"));
    CHECK(first_value(got) == "t");
  }

  TEST_CASE("the aborted block in the extended protocol") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    // A named statement prepared before the loss survives it (remapped, prepared again).
    auto got = ask(r, parse("keep", "SELECT 40 + 2") + sync());
    CHECK(types(got) == "1Z");
    std::string pid = backend_pid(r, true);
    terminate_backend(pid);
    // The first request after the loss gets PostgreSQL's error and skips to its Sync.
    got = ask(r, parse("", "SELECT 1") + bind("", "") + execute("") + sync());
    CHECK(types(got) == "EZ");
    check_terminated(error_in(got));
    CHECK(status(got) == 'E');
    got = ask(r, bind("", "keep") + execute("") + sync());
    CHECK(types(got) == "EZ");
    CHECK(error_in(got)->field('C') == "25P02");
    CHECK(status(got) == 'E');
    // ROLLBACK through Parse/Bind/Describe/Execute, as a driver sends it.
    got = ask(r, parse("rb", "ROLLBACK") + bind("", "rb") + msg('D', "P" + cstr("")) + execute("") +
                     msg('C', "S" + cstr("rb")) + sync());
    CHECK(types(got) == "12nC3Z");
    CHECK(status(got) == 'I');
    got = ask(r, bind("", "keep") + execute("") + sync());
    CHECK(types(got) == "2DCZ");
    CHECK(first_value(got) == "42");
    CHECK(status(got) == 'I');
  }

  TEST_CASE("a query in flight in autocommit: the error, then ReadyForQuery idle") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, false);
    REQUIRE(r.send_bytes(q("SELECT pg_sleep(30)")));
    sleep_ms(300);
    auto t0 = Clock::now();
    terminate_backend(pid);
    auto got = r.read_until('Z');
    CHECK(seconds_since(t0) < 5);
    CHECK(types(got) == "TEZ");  // RowDescription came before pg_sleep began
    check_terminated(error_in(got));
    CHECK(status(got) == 'I');
    got = ask(r, q("SELECT 42"));
    CHECK(first_value(got) == "42");
    CHECK(status(got) == 'I');
  }

  TEST_CASE("statement pooling: a query in flight gets the error and the client stays") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one("statement"));
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, false);
    REQUIRE(r.send_bytes(q("SELECT pg_sleep(30)")));
    sleep_ms(300);
    terminate_backend(pid);
    auto got = r.read_until('Z');
    CHECK(types(got) == "TEZ");
    check_terminated(error_in(got));
    CHECK(status(got) == 'I');
    got = ask(r, q("SELECT 42"));
    CHECK(first_value(got) == "42");
  }

  TEST_CASE("without remapping (max_prepared_statements = 0) the aborted block still answers") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Options o = pool_of_one();
    o.extra_pgbouncer = "max_prepared_statements = 0\n";
    Pooler p(o);
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, true);
    terminate_backend(pid);
    auto got = ask(r, q("SELECT 1"));
    check_terminated(error_in(got));
    CHECK(status(got) == 'E');
    got = ask(r, parse("s1", "SELECT 1") + sync());
    CHECK(types(got) == "EZ");
    CHECK(error_in(got)->field('C') == "25P02");
    got = ask(r, parse("rb", "ROLLBACK") + bind("", "nope") + sync());
    CHECK(types(got) == "1EZ");
    CHECK(error_in(got)->field('C') == "26000");
    CHECK(status(got) == 'E');
    got = ask(r, parse("rb", "ROLLBACK") + sync());
    CHECK(types(got) == "EZ");
    CHECK(error_in(got)->field('C') == "42P05");
    got = ask(r, bind("p", "rb") + execute("") + sync());
    CHECK(types(got) == "2EZ");
    CHECK(error_in(got)->field('C') == "34000");
    got = ask(r, bind("p", "rb") + execute("p") + sync());
    CHECK(types(got) == "2CZ");
    CHECK(status(got) == 'I');
    got = ask(r, q("SELECT 42"));
    CHECK(first_value(got) == "42");
  }

  TEST_CASE("a pipeline in flight: one error per cycle sent, the rest after the Sync") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, false);
    std::string cycle = parse("", "SELECT pg_sleep(30)") + bind("", "") + execute("") + sync();
    std::string second = parse("", "SELECT 2") + bind("", "") + execute("") + sync();
    std::string tail = parse("", "SELECT 3") + bind("", "") + execute("") + msg('H', "");
    REQUIRE(r.send_bytes(cycle + second + tail));
    sleep_ms(300);
    terminate_backend(pid);
    auto got = r.read_until('E');  // the answer to the first cycle starts with its error?
    REQUIRE(!got.empty());
    // 1 (ParseComplete) and 2 (BindComplete) of the first cycle may have come before.
    std::string t = types(got);
    CHECK((t == "12E" || t == "E"));
    check_terminated(&got.back());
    got = r.read_until('Z');
    CHECK(types(got) == "Z");
    CHECK(status(got) == 'I');
    got = r.read_until('Z');
    CHECK(types(got) == "EZ");
    CHECK(error_in(got)->field('C') == "08006");
    // The tail (no Sync yet) has its error now; its Sync gets the ReadyForQuery.
    got = r.read_until('E');
    CHECK(types(got) == "E");
    REQUIRE(r.send_bytes(sync()));
    got = r.read_until('Z');
    CHECK(types(got) == "Z");
    CHECK(status(got) == 'I');
    got = ask(r, parse("", "SELECT 42") + bind("", "") + execute("") + sync());
    CHECK(types(got) == "12DCZ");
    CHECK(first_value(got) == "42");
  }

  TEST_CASE("after an error PostgreSQL ignores a Query before the Sync: so does the answer") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, false);
    REQUIRE(r.send_bytes(parse("", "SELECT 1/0") + bind("", "") + execute("") + q("SELECT 2") +
                         msg('H', "")));
    auto got = r.read_until('E');
    CHECK(types(got) == "1E");  // 1/0 fails when the Bind plans it
    CHECK(error_in(got)->field('C') == "22012");
    terminate_backend(pid);
    got = ask(r, sync());
    CHECK(types(got) == "Z");  // the segment's error was given; the Query was skipped
    CHECK(status(got) == 'I');
    got = ask(r, q("SELECT 42"));
    CHECK(first_value(got) == "42");
  }

  TEST_CASE("COPY FROM STDIN in flight: the rest of the data dropped, the error, no rows") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    ask(r, q("DROP TABLE IF EXISTS it_lost_copy; CREATE TABLE it_lost_copy (n int)"));
    std::string pid = backend_pid(r, false);
    auto got = ask(r, q("COPY it_lost_copy FROM STDIN"), 'G');
    REQUIRE(types(got) == "G");
    REQUIRE(r.send_bytes(msg('d', "1\n2\n")));
    terminate_backend(pid);
    for (int i = 0; i < 100; i++) REQUIRE(r.send_bytes(msg('d', std::to_string(i) + "\n")));
    REQUIRE(r.send_bytes(msg('c', "")));
    got = r.read_until('Z');
    CHECK(types(got) == "EZ");
    check_terminated(error_in(got));
    CHECK(status(got) == 'I');
    got = ask(r, q("SELECT count(*) FROM it_lost_copy"));
    CHECK(types(got) == "TDCZ");
    CHECK(first_value(got) == "0");
  }

  TEST_CASE("a client that does not read: its stream stays well-formed or it is closed") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, false);
    REQUIRE(r.send_bytes(q("SELECT repeat('x', 1000) FROM generate_series(1, 20000)")));
    sleep_ms(500);  // pgsluice and PostgreSQL fill their buffers, and stop
    terminate_backend(pid);
    std::vector<Msg> got;
    Msg m;
    for (;;) {
      if (r.read_msg(&m, 5) != ReadStatus::Ok) break;
      got.push_back(m);
      if (m.type == 'Z') break;
    }
    REQUIRE(!got.empty());
    MESSAGE("not reading: " << got.size() << " messages, the last " << got.back().type);
    if (got.back().type == 'Z') {
      // Rows, then the error and ReadyForQuery: the client may go on.
      const Msg* e = error_in(got);
      REQUIRE(e != nullptr);
      CHECK(e->field('S') == "ERROR");
      CHECK(status(got) == 'I');
      auto again = ask(r, q("SELECT 42"));
      CHECK(first_value(again) == "42");
    } else {
      // Cut mid-message: closed, nothing appended to the half message (no bytes that would
      // be read as the rest of it).
      CHECK(r.wait_closed(5));
      CHECK((r.pending().empty() || r.pending()[0] == 'D'));
    }
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "SELECT 42") == "42");
  }

  TEST_CASE("Terminate right after the loss, and the next client") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one());
    {
      Raw r = raw_login(p);
      std::string pid = backend_pid(r, true);
      terminate_backend(pid);
      REQUIRE(r.send_msg('X', ""));
      CHECK(r.wait_closed(5));
    }
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "SELECT 42") == "42");
    // The lost client is gone from the counts, the dead server's slot too: c's server is idle.
    Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
    CHECK(eventually([&] {
      Result rs(PQexec(admin.get(), "SHOW POOLS"));
      if (PQresultStatus(rs.get()) != PGRES_TUPLES_OK) return false;
      int cl = PQfnumber(rs.get(), "cl_active");
      int sv = PQfnumber(rs.get(), "sv_active");
      int sv_idle = PQfnumber(rs.get(), "sv_idle");
      for (int i = 0; i < PQntuples(rs.get()); i++)
        if (std::string(PQgetvalue(rs.get(), i, 0)) == "testdb")
          return std::string(PQgetvalue(rs.get(), i, cl)) == "1" &&  // c only
                 std::string(PQgetvalue(rs.get(), i, sv)) == "0" &&
                 std::string(PQgetvalue(rs.get(), i, sv_idle)) == "1";
      return false;
    }));
  }

  TEST_CASE("session pooling: the client gets PostgreSQL's FATAL and is disconnected") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Pooler p(pool_of_one("session"));
    Raw r = raw_login(p);
    std::string pid = backend_pid(r, true);
    terminate_backend(pid);
    Msg m;
    REQUIRE(r.read_msg(&m, 5) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    CHECK(m.field('C') == "57P01");
    CHECK(m.field('V') == "FATAL");
    CHECK(r.wait_closed(5));
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "SELECT 42") == "42");
  }

  TEST_CASE("psycopg 3: the connection survives, the transaction does not") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    Options o;
    o.workers = 1;
    Pooler p(o);
    CmdResult r =
        run_shell("/usr/bin/python3 " +
                      shell_quote(checkout_root() + "/test/integration/psycopg_server_loss.py") +
                      " " + shell_quote(p.conninfo()) + " " + shell_quote(superuser_conninfo()),
                  120);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("all checks passed") != std::string::npos);
  }

  TEST_CASE("PostgreSQL restarted (pg_ctl restart -m fast): clients keep their connections") {
    if (skip_in_direct_mode("pooler behaviour")) return;
    ClusterSetup s;
    s.tag = "lost";
    Cluster pg = start_cluster(s);
    Options o = pool_of_one();
    o.default_pool_size = 2;
    o.pg_port = pg.port;
    Pooler p(o);
    Raw in_tx = raw_login(p);
    backend_pid(in_tx, true);
    Conn idle = connect(p.conninfo());
    CHECK(scalar(idle.get(), "SELECT 1") == "1");
    CmdResult rs = run_pg_ctl(pg, "restart -m fast -w -t 60 -l " + pg.dir + "/postgres.log", 90);
    REQUIRE_MESSAGE(rs.exit_code == 0, rs.output);
    auto got = ask(in_tx, q("SELECT 1"));
    CHECK(types(got) == "EZ");
    REQUIRE(error_in(got) != nullptr);
    CHECK(error_in(got)->field('C') == "57P01");
    CHECK(error_in(got)->field('S') == "ERROR");
    CHECK(status(got) == 'E');
    got = ask(in_tx, q("ROLLBACK"));
    CHECK(types(got) == "CZ");
    got = ask(in_tx, q("SELECT 42"));
    CHECK(first_value(got) == "42");
    // The libpq client was not linked: it never noticed.
    CHECK(scalar(idle.get(), "SELECT 2") == "2");
    CHECK(PQstatus(idle.get()) == CONNECTION_OK);
    run_pg_ctl(pg, "stop -m fast -w -t 60");
  }
}

}  // namespace it
