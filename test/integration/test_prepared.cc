// Prepared statements that survive transaction pooling (issue 4): protocol-level statements
// remapped per server, their errors as PostgreSQL gives them, SQL PREPARE/EXECUTE, and the
// retry after "cached plan must not change result type". Where it makes sense the same
// sequence runs against PostgreSQL directly and the two are compared.
#include <doctest/doctest.h>
#include <unistd.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

// ---------------------------------------------------------------------------------------------
// Helpers.

std::string admin_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "pgbouncer");
}

// md5user over TCP straight to PostgreSQL, bypassing any pooler.
std::string direct_conninfo(const std::string& extra = "") {
  std::string s = "host=127.0.0.1 port=" + std::to_string(cluster().port) +
                  " user=md5user password=md5pass dbname=testdb connect_timeout=10";
  if (!extra.empty()) s += " " + extra;
  return s;
}

// Value of `col` in the row whose `key_col` is `key` ("" when absent).
std::string cell(PGresult* r, const std::string& key_col, const std::string& key,
                 const std::string& col) {
  int k = PQfnumber(r, key_col.c_str()), c = PQfnumber(r, col.c_str());
  if (k < 0 || c < 0) return "";
  for (int i = 0; i < PQntuples(r); i++)
    if (PQgetvalue(r, i, k) == key) return PQgetvalue(r, i, c);
  return "";
}

std::string sqlstate_of(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return s ? s : "";
}

std::string primary_of(const PGresult* r) {
  const char* s = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  return s ? s : "";
}

void prepare_ok(PGconn* c, const std::string& name, const std::string& sql, int nparams = 0) {
  Result r(PQprepare(c, name.c_str(), sql.c_str(), nparams, nullptr));
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_COMMAND_OK,
                  "PQprepare " << name << ": " << std::string(PQerrorMessage(c)));
}

Result exec_prepared(PGconn* c, const std::string& name, const std::vector<std::string>& params) {
  std::vector<const char*> v;
  for (const auto& s : params) v.push_back(s.c_str());
  return Result(
      PQexecPrepared(c, name.c_str(), static_cast<int>(v.size()), v.data(), nullptr, nullptr, 0));
}

// Executes a prepared statement that must succeed; returns the first row's values.
std::vector<std::string> run_prepared(PGconn* c, const std::string& name,
                                      const std::vector<std::string>& params = {}) {
  Result r = exec_prepared(c, name, params);
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK,
                  "PQexecPrepared " << name << ": " << std::string(PQerrorMessage(c)));
  REQUIRE(PQntuples(r.get()) >= 1);
  std::vector<std::string> row;
  for (int i = 0; i < PQnfields(r.get()); i++) row.push_back(PQgetvalue(r.get(), 0, i));
  return row;
}

// SQLSTATE of an execute of a prepared statement ("" when it succeeded).
std::string prepared_sqlstate(PGconn* c, const std::string& name,
                              const std::vector<std::string>& params = {}) {
  Result r = exec_prepared(c, name, params);
  if (PQresultStatus(r.get()) == PGRES_TUPLES_OK || PQresultStatus(r.get()) == PGRES_COMMAND_OK)
    return "";
  return sqlstate_of(r.get());
}

int backend_pid(PGconn* c) {
  return std::stoi(scalar(c, "select pg_backend_pid()"));
}

// Pins servers with two holder clients so that the caller's next transaction (run by fn,
// which returns the backend pid it saw) lands on a server other than `avoid`. Needs a pool of
// exactly 2 servers. In direct mode there is only one backend: fn just runs.
class Mover {
 public:
  explicit Mover(const Pooler& p) : p_(p) {
    if (p.direct()) return;
    h1_ = connect(p.conninfo());
    h2_ = connect(p.conninfo());
  }
  // Returns fn's pid; CHECKs it differs from avoid (pooler only).
  int run_elsewhere(int avoid, const std::function<int()>& fn) {
    if (p_.direct()) return fn();
    exec_ok(h1_.get(), "BEGIN");
    int pid1 = backend_pid(h1_.get());
    int got = 0;
    if (pid1 == avoid) {
      got = fn();  // h1 pins `avoid`: the caller gets the other server
      exec_ok(h1_.get(), "COMMIT");
    } else {
      // h1 holds the other server; h2 takes `avoid`, then h1 lets its server go.
      exec_ok(h2_.get(), "BEGIN");
      int pid2 = backend_pid(h2_.get());
      CHECK(pid2 == avoid);
      exec_ok(h1_.get(), "COMMIT");
      got = fn();
      exec_ok(h2_.get(), "COMMIT");
    }
    CHECK_MESSAGE(got != avoid, "the transaction was expected on another server");
    return got;
  }

 private:
  const Pooler& p_;
  Conn h1_, h2_;
};

// One token per libpq result in pipeline mode: "T:v1,v2", "C:tag", "E:sqlstate:primary",
// "SYNC", "ABORTED", "null".
std::vector<std::string> drain_pipeline(PGconn* pc, int syncs) {
  std::vector<std::string> got;
  int seen = 0;
  auto t0 = Clock::now();
  while (seen < syncs && seconds_since(t0) < 10) {
    PGresult* res = PQgetResult(pc);
    if (!res) {
      got.push_back("null");
      continue;
    }
    std::string tok;
    switch (PQresultStatus(res)) {
      case PGRES_TUPLES_OK: {
        tok = "T:";
        for (int i = 0; i < PQnfields(res); i++)
          tok += (i ? "," : "") + std::string(PQntuples(res) ? PQgetvalue(res, 0, i) : "-");
        break;
      }
      case PGRES_COMMAND_OK:
        tok = "C:" + std::string(PQcmdStatus(res));
        break;
      case PGRES_FATAL_ERROR:
        tok = "E:" + sqlstate_of(res) + ":" + primary_of(res);
        break;
      case PGRES_PIPELINE_SYNC:
        tok = "SYNC";
        seen++;
        break;
      case PGRES_PIPELINE_ABORTED:
        tok = "ABORTED";
        break;
      default:
        tok = std::string("?") + PQresStatus(PQresultStatus(res));
    }
    got.push_back(tok);
    PQclear(res);
  }
  return got;
}

// Raw-protocol message builders.
std::string parse_msg(const std::string& name, const std::string& sql) {
  return msg('P', cstr(name) + cstr(sql) + be16(0));
}
std::string bind_msg(const std::string& stmt, const std::vector<std::string>& params = {}) {
  std::string b = cstr("") + cstr(stmt) + be16(0) + be16(static_cast<uint16_t>(params.size()));
  for (const auto& p : params) b += be32(static_cast<uint32_t>(p.size())) + p;
  b += be16(0);
  return msg('B', b);
}
std::string execute_msg() {
  return msg('E', cstr("") + be32(0));
}
std::string sync_msg() {
  return msg('S', "");
}
std::string close_stmt_msg(const std::string& name) {
  return msg('C', "S" + cstr(name));
}
std::string describe_stmt_msg(const std::string& name) {
  return msg('D', "S" + cstr(name));
}

// First column of a DataRow body.
std::string datarow_first(const Msg& m) {
  const std::string& b = m.body;
  if (b.size() < 6) return "?";
  uint32_t len = (static_cast<uint8_t>(b[2]) << 24) | (static_cast<uint8_t>(b[3]) << 16) |
                 (static_cast<uint8_t>(b[4]) << 8) | static_cast<uint8_t>(b[5]);
  if (len == 0xffffffffu) return "NULL";
  return b.substr(6, len);
}

// Sends bytes and reads until `syncs` ReadyForQuery; one token per message:
// "1", "2", "3", "n", "t", "T", "D:v", "C:tag", "E:sqlstate:message", "Z:status".
std::vector<std::string> raw_exchange(Raw& r, const std::string& bytes, int syncs) {
  REQUIRE(r.send_bytes(bytes));
  std::vector<std::string> out;
  int z = 0;
  while (z < syncs) {
    Msg m;
    ReadStatus st = r.read_msg(&m, 5);
    if (st != ReadStatus::Ok) {
      out.push_back("<read failed>");
      break;
    }
    std::string tok(1, m.type);
    switch (m.type) {
      case 'D':
        tok += ":" + datarow_first(m);
        break;
      case 'C':
        tok += ":" + std::string(m.body.c_str());
        break;
      case 'E':
        tok += ":" + m.field('C') + ":" + m.field('M');
        break;
      case 'Z':
        tok += ":" + m.body;
        z++;
        break;
      case 'N':
      case 'S':
        continue;  // notices and parameter status are not part of the comparison
      default:
        break;
    }
    out.push_back(tok);
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += "[" + x + "] ";
  return s;
}

// One raw connection through the pooler and one straight to PostgreSQL, fed the same bytes.
struct SideBySide {
  Conn via_holder, direct_holder;
  Raw via, direct;
  explicit SideBySide(const Pooler& p)
      : via_holder(connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"))),
        direct_holder(connect(direct_conninfo("sslmode=disable"))),
        via(Raw::from_libpq(via_holder.get())),
        direct(Raw::from_libpq(direct_holder.get())) {}
  // Sends bytes both ways, CHECKs that the answers match and returns PostgreSQL's.
  std::vector<std::string> exchange(const std::string& bytes, int syncs) {
    std::vector<std::string> got = raw_exchange(via, bytes, syncs);
    std::vector<std::string> want = raw_exchange(direct, bytes, syncs);
    INFO("through the pooler: " << join(got));
    INFO("direct:             " << join(want));
    CHECK(join(got) == join(want));
    return want;
  }
};

long long stat_total(PGconn* admin, const std::string& col) {
  Result r = exec_ok(admin, "SHOW STATS");
  std::string v = cell(r.get(), "database", "testdb", col);
  return v.empty() ? -1 : std::stoll(v);
}

// ---------------------------------------------------------------------------------------------
// 1. pgbench -M prepared

TEST_CASE("prepared: pgbench -M prepared -S, 32 clients over 4 servers, few server parses") {
  Options o;
  o.default_pool_size = 4;
  Pooler p(o);
  PgbenchRun r = run_pgbench(p, "-M prepared -S -c 32 -j 2 -T 4", 40);
  INFO("pgbench output:\n" << r.output);
  CHECK(r.exit_code == 0);
  REQUIRE(r.processed >= 0);
  long long xacts = r.processed;
  CHECK(xacts > 0);
  REQUIRE(r.failed >= 0);
  CHECK(r.failed == 0);
  CHECK(r.output.find("error") == std::string::npos);
  if (skip_in_direct_mode("parse counters are on the pooler's console")) return;
  Conn admin = connect(admin_conninfo(p));
  long long client = stat_total(admin.get(), "total_client_parse_count");
  long long server = stat_total(admin.get(), "total_server_parse_count");
  MESSAGE("client parses " << client << ", server parses " << server << ", xacts " << xacts);
  // pgbench -S prepares one statement per connection: 32 client Parses. The registry keys on
  // the Parse body, so each of the (at most 4) servers needs it once.
  CHECK(client >= 32);
  CHECK(server >= 1);
  CHECK(server <= 8);
  CHECK(server < client);
}

// ---------------------------------------------------------------------------------------------
// 2. Prepare once, execute in later transactions on other servers; eviction.

TEST_CASE("prepared: statement prepared once runs in later transactions on other servers") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn a = connect(p.conninfo());
  prepare_ok(a.get(), "triple", "select $1::int * 3, pg_backend_pid()", 1);
  int last = std::stoi(run_prepared(a.get(), "triple", {"1"})[1]);
  Mover mv(p);
  std::set<int> pids{last};
  for (int i = 2; i < 12; i++) {
    CAPTURE(i);
    last = mv.run_elsewhere(last, [&] {
      auto row = run_prepared(a.get(), "triple", {std::to_string(i)});
      CHECK(row[0] == std::to_string(i * 3));
      return std::stoi(row[1]);
    });
    pids.insert(last);
  }
  if (!p.direct()) CHECK(pids.size() >= 2);
  // Inside an explicit transaction, with a Describe first.
  exec_ok(a.get(), "BEGIN");
  {
    Result d(PQdescribePrepared(a.get(), "triple"));
    REQUIRE(PQresultStatus(d.get()) == PGRES_COMMAND_OK);
    CHECK(PQnparams(d.get()) == 1);
    CHECK(PQnfields(d.get()) == 2);
  }
  CHECK(run_prepared(a.get(), "triple", {"100"})[0] == "300");
  exec_ok(a.get(), "COMMIT");
}

TEST_CASE("prepared: max_prepared_statements = 2 with five statements round-robin") {
  Options o;
  o.default_pool_size = 2;
  o.extra_pgbouncer = "max_prepared_statements = 2\n";
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  for (int k = 0; k < 5; k++) {
    std::string sql = "select $1::int + " + std::to_string(k * 1000) + ", pg_backend_pid()";
    prepare_ok(a.get(), "st" + std::to_string(k), sql, 1);
    // b shares two of the texts (same registry entries) under its own names.
    if (k % 2 == 0) prepare_ok(b.get(), "mine" + std::to_string(k), sql, 1);
  }
  Mover mv(p);
  int last = 0;
  int max_seen = 0;
  for (int i = 0; i < 40; i++) {
    CAPTURE(i);
    int k = i % 5;
    std::string name = "st" + std::to_string(k);
    auto check_row = [&](const std::vector<std::string>& row) {
      CHECK(row[0] == std::to_string(i + k * 1000));
      return std::stoi(row[1]);
    };
    if (i % 7 == 3) {
      last = mv.run_elsewhere(
          last, [&] { return check_row(run_prepared(a.get(), name, {std::to_string(i)})); });
    } else if (i % 4 == 1) {
      // In the same transaction as the execute, the server's own view of what it holds.
      exec_ok(a.get(), "BEGIN");
      last = check_row(run_prepared(a.get(), name, {std::to_string(i)}));
      int n = std::stoi(scalar(a.get(), "select count(*) from pg_prepared_statements"));
      max_seen = std::max(max_seen, n);
      if (!p.direct()) {
        CHECK(n >= 1);
        CHECK(n <= 2);
        CHECK(scalar(a.get(),
                     "select count(*) from pg_prepared_statements"
                     " where name not like 'PGSLUICE\\_%'") == "0");
      }
      exec_ok(a.get(), "COMMIT");
    } else {
      last = check_row(run_prepared(a.get(), name, {std::to_string(i)}));
    }
    if (k % 2 == 0) {
      auto row = run_prepared(b.get(), "mine" + std::to_string(k), {"7"});
      CHECK(row[0] == std::to_string(7 + k * 1000));
    }
  }
  // All five in one transaction: every one but two must be re-prepared on this server.
  exec_ok(a.get(), "BEGIN");
  for (int k = 0; k < 5; k++)
    CHECK(run_prepared(a.get(), "st" + std::to_string(k), {"1"})[0] ==
          std::to_string(1 + k * 1000));
  int n = std::stoi(scalar(a.get(), "select count(*) from pg_prepared_statements"));
  exec_ok(a.get(), "COMMIT");
  if (p.direct()) {
    CHECK(n == 5);
  } else {
    CHECK(n <= 2);
    CHECK(max_seen <= 2);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Name reuse, unknown names.

TEST_CASE("prepared: name reuse gives 42P05, an unknown name 26000, the session goes on") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn c = connect(p.conninfo());
  Conn other = connect(p.conninfo());
  prepare_ok(c.get(), "s1", "select 1");
  {
    Result r(PQprepare(c.get(), "s1", "select 2", 0, nullptr));
    CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
    CHECK(sqlstate_of(r.get()) == "42P05");
    CHECK(primary_of(r.get()) == "prepared statement \"s1\" already exists");
    CHECK(std::string(PQresultErrorMessage(r.get())).find("PGSLUICE") == std::string::npos);
  }
  CHECK(PQstatus(c.get()) == CONNECTION_OK);
  CHECK(run_prepared(c.get(), "s1")[0] == "1");  // the first one is untouched
  CHECK(scalar(c.get(), "select 5") == "5");
  // The same text under the same name again is still a reuse.
  {
    Result r(PQprepare(c.get(), "s1", "select 1", 0, nullptr));
    CHECK(sqlstate_of(r.get()) == "42P05");
  }
  {
    Result r = exec_prepared(c.get(), "nope", {});
    CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
    CHECK(sqlstate_of(r.get()) == "26000");
    CHECK(primary_of(r.get()) == "prepared statement \"nope\" does not exist");
    CHECK(std::string(PQresultErrorMessage(r.get())).find("PGSLUICE") == std::string::npos);
  }
  {
    Result d(PQdescribePrepared(c.get(), "nope2"));
    CHECK(sqlstate_of(d.get()) == "26000");
    CHECK(primary_of(d.get()) == "prepared statement \"nope2\" does not exist");
  }
  CHECK(scalar(c.get(), "select 6") == "6");
  CHECK(scalar(other.get(), "select 7") == "7");
  // In an explicit transaction the error aborts it, as PostgreSQL does.
  exec_ok(c.get(), "BEGIN");
  CHECK(prepared_sqlstate(c.get(), "nope") == "26000");
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_INERROR);
  CHECK(exec_sqlstate(c.get(), "select 1") == "25P02");
  exec_ok(c.get(), "ROLLBACK");
  CHECK(run_prepared(c.get(), "s1")[0] == "1");
  exec_ok(c.get(), "BEGIN");
  exec_ok(c.get(), "select 1");
  {
    Result r(PQprepare(c.get(), "s1", "select 3", 0, nullptr));
    CHECK(sqlstate_of(r.get()) == "42P05");
  }
  CHECK(exec_sqlstate(c.get(), "select 1") == "25P02");
  exec_ok(c.get(), "ROLLBACK");
  CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
  CHECK(run_prepared(c.get(), "s1")[0] == "1");
  // Protocol-level statements are not transactional: one prepared in a transaction that
  // rolls back survives.
  exec_ok(c.get(), "BEGIN");
  prepare_ok(c.get(), "in_tx", "select 'kept'");
  exec_ok(c.get(), "ROLLBACK");
  CHECK(run_prepared(c.get(), "in_tx")[0] == "kept");
  // Another client may use the same name for its own statement.
  prepare_ok(other.get(), "s1", "select 'other'");
  CHECK(run_prepared(other.get(), "s1")[0] == "other");
  CHECK(run_prepared(c.get(), "s1")[0] == "1");
}

// ---------------------------------------------------------------------------------------------
// 4. Close then re-Parse (raw protocol: PQclosePrepared needs libpq 17).

TEST_CASE("prepared: Close then re-Parse under the same name (raw protocol)") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn busy = connect(p.conninfo());  // a second client of the pool
  Conn holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  Raw r = Raw::from_libpq(holder.get());
  std::vector<std::string> got = raw_exchange(r, parse_msg("s1", "select 'one'") + sync_msg(), 1);
  CHECK(join(got) == join({"1", "Z:I"}));
  CHECK(scalar(busy.get(), "select 1") == "1");
  got = raw_exchange(r, bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"2", "D:one", "C:SELECT 1", "Z:I"}));
  got = raw_exchange(r, close_stmt_msg("s1") + sync_msg(), 1);
  CHECK(join(got) == join({"3", "Z:I"}));
  // Closed: Bind fails with 26000 under the client's name.
  got = raw_exchange(r, bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"E:26000:prepared statement \"s1\" does not exist", "Z:I"}));
  got = raw_exchange(
      r, parse_msg("s1", "select 'two'") + bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"1", "2", "D:two", "C:SELECT 1", "Z:I"}));
  CHECK(scalar(busy.get(), "select 2") == "2");
  // Close and re-Parse with the original text (the server may still hold it), all in one
  // pipeline segment; closing a name that never existed is not an error.
  got = raw_exchange(r,
                     close_stmt_msg("s1") + parse_msg("s1", "select 'one'") + bind_msg("s1") +
                         execute_msg() + close_stmt_msg("never") + sync_msg(),
                     1);
  CHECK(join(got) == join({"3", "1", "2", "D:one", "C:SELECT 1", "3", "Z:I"}));
  got = raw_exchange(r, bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"2", "D:one", "C:SELECT 1", "Z:I"}));
}

// ---------------------------------------------------------------------------------------------
// 5. DEALLOCATE ALL, DISCARD ALL.

TEST_CASE("prepared: DEALLOCATE ALL and DISCARD ALL forget the names; re-preparing works") {
  Options o;
  o.default_pool_size = 1;  // a and b share the one server
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  prepare_ok(a.get(), "d1", "select 11");
  prepare_ok(b.get(), "b1", "select 99");
  CHECK(run_prepared(a.get(), "d1")[0] == "11");
  exec_ok(a.get(), "DEALLOCATE ALL");
  CHECK(prepared_sqlstate(a.get(), "d1") == "26000");
  // The same text again: the server's copy went with DEALLOCATE ALL, so it must be parsed anew.
  prepare_ok(a.get(), "d1", "select 11");
  CHECK(run_prepared(a.get(), "d1")[0] == "11");
  // b's statement lived on the same server: b still owns its name (a pooler property; in
  // PostgreSQL itself b is another session and is not affected either).
  CHECK(run_prepared(b.get(), "b1")[0] == "99");
  exec_ok(a.get(), "DISCARD ALL");
  CHECK(prepared_sqlstate(a.get(), "d1") == "26000");
  prepare_ok(a.get(), "d1", "select 11");
  CHECK(run_prepared(a.get(), "d1")[0] == "11");
  CHECK(run_prepared(b.get(), "b1")[0] == "99");
  prepare_ok(a.get(), "d2", "select 12");
  exec_ok(a.get(), "DISCARD ALL");
  CHECK(prepared_sqlstate(a.get(), "d1") == "26000");
  CHECK(prepared_sqlstate(a.get(), "d2") == "26000");
  prepare_ok(a.get(), "d2", "select 13");
  CHECK(run_prepared(a.get(), "d2")[0] == "13");
  CHECK(run_prepared(b.get(), "b1")[0] == "99");
  // b's DEALLOCATE ALL does not touch a's names.
  exec_ok(b.get(), "deallocate all");
  CHECK(run_prepared(a.get(), "d2")[0] == "13");
  CHECK(prepared_sqlstate(b.get(), "b1") == "26000");
}

// ---------------------------------------------------------------------------------------------
// 6. An error mid-pipeline where pgsluice injects the Parse.

std::vector<std::string> dropped_table_pipeline(const std::string& a_ci, const std::string& table,
                                                const std::function<void()>& fresh_server) {
  Conn ddl = connect(direct_conninfo());
  exec_ok(ddl.get(), "DROP TABLE IF EXISTS " + table);
  exec_ok(ddl.get(), "CREATE TABLE " + table + " (a int)");
  exec_ok(ddl.get(), "INSERT INTO " + table + " VALUES (7)");
  Conn a = connect(a_ci);
  std::vector<std::string> seq;
  prepare_ok(a.get(), "s1", "select a from " + table);
  seq.push_back("T:" + run_prepared(a.get(), "s1")[0]);
  exec_ok(ddl.get(), "DROP TABLE " + table);
  fresh_server();
  PGconn* pc = a.get();
  REQUIRE(PQenterPipelineMode(pc) == 1);
  REQUIRE(PQsendQueryPrepared(pc, "s1", 0, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQsendQueryParams(pc, "select 'skipped'", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQpipelineSync(pc) == 1);
  REQUIRE(PQsendQueryParams(pc, "select 'after'", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQpipelineSync(pc) == 1);
  REQUIRE(PQsendQueryPrepared(pc, "s1", 0, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQpipelineSync(pc) == 1);
  for (const auto& t : drain_pipeline(pc, 3)) seq.push_back(t);
  REQUIRE(PQexitPipelineMode(pc) == 1);
  // The table comes back with the same column type: the statement works again.
  exec_ok(ddl.get(), "CREATE TABLE " + table + " (a int)");
  exec_ok(ddl.get(), "INSERT INTO " + table + " VALUES (8)");
  Result r = exec_prepared(pc, "s1", {});
  seq.push_back(PQresultStatus(r.get()) == PGRES_TUPLES_OK
                    ? "T:" + std::string(PQgetvalue(r.get(), 0, 0))
                    : "E:" + sqlstate_of(r.get()) + ":" + primary_of(r.get()));
  seq.push_back("after:" + scalar(pc, "select 'ok'"));
  exec_ok(ddl.get(), "DROP TABLE " + table);
  return seq;
}

TEST_CASE("prepared: error mid-pipeline on an injected Parse matches PostgreSQL") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  auto fresh = [&] {
    if (p.direct()) return;
    Conn admin = connect(admin_conninfo(p));
    exec_ok(admin.get(), "RECONNECT testdb");
    exec_ok(admin.get(), "WAIT_CLOSE testdb");
  };
  std::vector<std::string> via = dropped_table_pipeline(p.conninfo(), "t_drop_pooled", fresh);
  std::vector<std::string> direct =
      dropped_table_pipeline(direct_conninfo(), "t_drop_pooled", [] {});
  INFO("through the pooler: " << join(via));
  INFO("direct:            " << join(direct));
  CHECK(via == direct);
  // The shape itself: error then skip to Sync, the next segment runs, the statement recovers.
  REQUIRE(direct.size() >= 10);
  CHECK(direct[1] == "E:42P01:relation \"t_drop_pooled\" does not exist");
  CHECK(via.size() == direct.size());
  if (via.size() >= 2) CHECK(via[1] == direct[1]);
  CHECK(std::find(via.begin(), via.end(), "T:after") != via.end());
  CHECK(via.back() == "after:ok");
  CHECK(via[via.size() - 2] == "T:8");
}

// ---------------------------------------------------------------------------------------------
// 7. A query text over 64 kB.

TEST_CASE("prepared: a query text over 64 kB and a 100 kB parameter, on two servers") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  std::string big =
      "select length($1::text) + 0 * length('" + std::string(70000, 'x') + "'), pg_backend_pid()";
  prepare_ok(a.get(), "big", big, 1);
  auto row = run_prepared(a.get(), "big", {"abcd"});
  CHECK(row[0] == "4");
  int last = std::stoi(row[1]);
  Mover mv(p);
  for (int i = 0; i < 3; i++) {
    last = mv.run_elsewhere(last, [&] {
      auto r = run_prepared(a.get(), "big", {std::string(100000 + i, 'y')});
      CHECK(r[0] == std::to_string(100000 + i));
      return std::stoi(r[1]);
    });
  }
  // Another client, same text under another name; and a long statement name.
  prepare_ok(b.get(), "big_too", big, 1);
  CHECK(run_prepared(b.get(), "big_too", {"xyz"})[0] == "3");
  std::string longname(63, 'n');
  prepare_ok(b.get(), longname, big + " -- other", 1);
  CHECK(run_prepared(b.get(), longname, {"12"})[0] == "2");
  {
    Result r(PQprepare(a.get(), "big", big.c_str(), 1, nullptr));
    CHECK(sqlstate_of(r.get()) == "42P05");
  }
  CHECK(run_prepared(a.get(), "big", {"ab"})[0] == "2");
}

// ---------------------------------------------------------------------------------------------
// 8. libpq pipeline mode with PQsendPrepare / PQsendQueryPrepared.

TEST_CASE("prepared: libpq pipeline with PQsendPrepare and several syncs in flight") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn c = connect(p.conninfo());
  Conn others[3] = {connect(p.conninfo()), connect(p.conninfo()), connect(p.conninfo())};
  PGconn* pc = c.get();
  auto qp = [&](const char* name, const std::string& v) {
    const char* params[1] = {v.c_str()};
    REQUIRE(PQsendQueryPrepared(pc, name, 1, params, nullptr, nullptr, 0) == 1);
  };
  REQUIRE(PQenterPipelineMode(pc) == 1);
  REQUIRE(PQsendPrepare(pc, "p1", "select $1::int * 10", 1, nullptr) == 1);
  REQUIRE(PQsendPrepare(pc, "p2", "select $1::text || '!'", 1, nullptr) == 1);
  qp("p1", "4");
  REQUIRE(PQpipelineSync(pc) == 1);
  qp("p2", "hi");
  qp("p1", "7");
  REQUIRE(PQpipelineSync(pc) == 1);
  qp("p_unknown", "1");
  qp("p1", "8");  // skipped after the error
  REQUIRE(PQpipelineSync(pc) == 1);
  REQUIRE(PQsendPrepare(pc, "p3", "select $1::int - 1", 1, nullptr) == 1);
  qp("p3", "100");
  qp("p2", "yo");
  REQUIRE(PQsendPrepare(pc, "p1", "select 0", 0, nullptr) == 1);  // reuse: 42P05
  qp("p3", "5");                                                  // skipped
  REQUIRE(PQpipelineSync(pc) == 1);
  qp("p3", "6");
  qp("p1", "9");
  REQUIRE(PQpipelineSync(pc) == 1);
  std::vector<std::string> expect = {"C:",
                                     "null",
                                     "C:",
                                     "null",
                                     "T:40",
                                     "null",
                                     "SYNC",
                                     "T:hi!",
                                     "null",
                                     "T:70",
                                     "null",
                                     "SYNC",
                                     "E:26000:prepared statement \"p_unknown\" does not exist",
                                     "null",
                                     "ABORTED",
                                     "null",
                                     "SYNC",
                                     "C:",
                                     "null",
                                     "T:99",
                                     "null",
                                     "T:yo!",
                                     "null",
                                     "E:42P05:prepared statement \"p1\" already exists",
                                     "null",
                                     "ABORTED",
                                     "null",
                                     "SYNC",
                                     "T:5",
                                     "null",
                                     "T:90",
                                     "null",
                                     "SYNC"};
  std::vector<std::string> got = drain_pipeline(pc, 5);
  CHECK(join(got) == join(expect));
  REQUIRE(PQexitPipelineMode(pc) == 1);
  // Later transactions, while other clients keep the two servers busy.
  for (int i = 0; i < 10; i++) {
    CAPTURE(i);
    Conn& o2 = others[i % 3];
    exec_ok(o2.get(), "BEGIN");
    exec_ok(o2.get(), "select 1");
    CHECK(run_prepared(pc, "p1", {std::to_string(i)})[0] == std::to_string(i * 10));
    CHECK(run_prepared(pc, "p2", {"x"})[0] == "x!");
    CHECK(run_prepared(pc, "p3", {std::to_string(i)})[0] == std::to_string(i - 1));
    exec_ok(o2.get(), "COMMIT");
  }
  // Pipelines from two clients at once.
  Conn& d = others[0];
  prepare_ok(d.get(), "p1", "select $1::int * 10");
  REQUIRE(PQenterPipelineMode(pc) == 1);
  REQUIRE(PQenterPipelineMode(d.get()) == 1);
  for (int i = 0; i < 20; i++) {
    const char* v[1] = {"3"};
    REQUIRE(PQsendQueryPrepared(pc, "p1", 1, v, nullptr, nullptr, 0) == 1);
    REQUIRE(PQsendQueryPrepared(d.get(), "p1", 1, v, nullptr, nullptr, 0) == 1);
    if (i % 5 == 4) {
      REQUIRE(PQpipelineSync(pc) == 1);
      REQUIRE(PQpipelineSync(d.get()) == 1);
    }
  }
  for (PGconn* x : {pc, d.get()}) {
    auto res = drain_pipeline(x, 4);
    int ok = 0;
    for (const auto& t : res) ok += t == "T:30";
    CHECK(ok == 20);
    CHECK(std::count(res.begin(), res.end(), "SYNC") == 4);
    REQUIRE(PQexitPipelineMode(x) == 1);
  }
}

// ---------------------------------------------------------------------------------------------
// 9. Raw-protocol pipeline: exactly PostgreSQL's answer.

TEST_CASE("prepared: raw pipeline with errors gives exactly PostgreSQL's messages") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn busy = connect(p.conninfo());
  std::string bytes =
      parse_msg("s1", "select $1::int + 1") + bind_msg("s1", {"41"}) + execute_msg() +
      sync_msg() +  // 1 2 D C Z
      parse_msg("s1", "select 2") + bind_msg("s1", {"1"}) + execute_msg() + sync_msg() +  // E Z
      describe_stmt_msg("s1") + sync_msg() +                                              // t T Z
      bind_msg("nope") + execute_msg() + sync_msg() +                                     // E Z
      parse_msg("s2", "select 'b'") + describe_stmt_msg("s2") + bind_msg("s2") + execute_msg() +
      parse_msg("s2", "select 'c'") + bind_msg("s2") + execute_msg() + sync_msg() +  // ... E Z
      bind_msg("s2") + execute_msg() + sync_msg() +         // s2 survived its reuse error: 2 D C Z
      close_stmt_msg("s1") + sync_msg() +                   // 3 Z
      bind_msg("s1", {"1"}) + execute_msg() + sync_msg() +  // E Z
      parse_msg("", "select 'u'") + bind_msg("") + execute_msg() + sync_msg();  // 1 2 D C Z
  const int syncs = 9;
  SideBySide sb(p);
  std::vector<std::string> want = sb.exchange(bytes, syncs);
  // What PostgreSQL answers, spelled out.
  std::vector<std::string> expect = {"1",
                                     "2",
                                     "D:42",
                                     "C:SELECT 1",
                                     "Z:I",
                                     "E:42P05:prepared statement \"s1\" already exists",
                                     "Z:I",
                                     "t",
                                     "T",
                                     "Z:I",
                                     "E:26000:prepared statement \"nope\" does not exist",
                                     "Z:I",
                                     "1",
                                     "t",
                                     "T",
                                     "2",
                                     "D:b",
                                     "C:SELECT 1",
                                     "E:42P05:prepared statement \"s2\" already exists",
                                     "Z:I",
                                     "2",
                                     "D:b",
                                     "C:SELECT 1",
                                     "Z:I",
                                     "3",
                                     "Z:I",
                                     "E:26000:prepared statement \"s1\" does not exist",
                                     "Z:I",
                                     "1",
                                     "2",
                                     "D:u",
                                     "C:SELECT 1",
                                     "Z:I"};
  CHECK(join(want) == join(expect));
  CHECK(scalar(busy.get(), "select 3") == "3");
  // The same bytes once more on the pooled connection (names now exist differently): the
  // session is still in step with PostgreSQL's answers to a second direct run.
  sb.exchange(bytes, syncs);
}

TEST_CASE("prepared: Bind right after the client's own failed Parse gives 26000, as PostgreSQL") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  // One write: the Bind is read before the Parse's error comes back, so pgsluice must not
  // prepare the statement again on its own (that would repeat 42601 instead of 26000).
  std::string bytes = parse_msg("bad1", "selec 1") + sync_msg() + bind_msg("bad1") + execute_msg() +
                      sync_msg() + parse_msg("bad1", "select 'ok'") + bind_msg("bad1") +
                      execute_msg() + sync_msg();
  SideBySide sb(p);
  std::vector<std::string> want = sb.exchange(bytes, 3);
  CHECK(join(want) == join({"E:42601:syntax error at or near \"selec\"", "Z:I",
                            "E:26000:prepared statement \"bad1\" does not exist", "Z:I", "1", "2",
                            "D:ok", "C:SELECT 1", "Z:I"}));
  // The name reused within one segment, after a Parse that succeeds and one that fails:
  // pgsluice waits for the first answer (it sends a Flush so it comes before the Sync).
  bytes = parse_msg("s2", "select 'a'") + parse_msg("s2", "select 'b'") + sync_msg() +
          parse_msg("bad2", "selec") + parse_msg("bad2", "select 'c'") + sync_msg() +
          parse_msg("bad2", "select 'd'") + bind_msg("bad2") + execute_msg() + sync_msg();
  want = sb.exchange(bytes, 3);
  CHECK(join(want) == join({"1", "E:42P05:prepared statement \"s2\" already exists", "Z:I",
                            "E:42601:syntax error at or near \"selec\"", "Z:I", "1", "2", "D:d",
                            "C:SELECT 1", "Z:I"}));
}

TEST_CASE("prepared: a Close or Parse skipped after an error leaves the statement as it was") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  SideBySide sb(p);
  std::vector<std::string> want =
      sb.exchange(parse_msg("s3", "select 3") + sync_msg() +                                  // 1 Z
                      bind_msg("nope") + execute_msg() + close_stmt_msg("s3") + sync_msg() +  // E Z
                      bind_msg("s3") + execute_msg() + sync_msg() +  // 2 D:3 C Z
                      bind_msg("nope") + execute_msg() + close_stmt_msg("s3") +
                      parse_msg("s3", "select 33") + sync_msg() +    // E Z
                      bind_msg("s3") + execute_msg() + sync_msg() +  // 2 D:3 C Z
                      close_stmt_msg("s3") + parse_msg("s3", "select 33") + bind_msg("s3") +
                      execute_msg() + sync_msg(),  // 3 1 2 D:33 C Z
                  6);
  CHECK(join(want) ==
        join({"1",          "Z:I", "E:26000:prepared statement \"nope\" does not exist",
              "Z:I",        "2",   "D:3",
              "C:SELECT 1", "Z:I", "E:26000:prepared statement \"nope\" does not exist",
              "Z:I",        "2",   "D:3",
              "C:SELECT 1", "Z:I", "3",
              "1",          "2",   "D:33",
              "C:SELECT 1", "Z:I"}));
}

TEST_CASE("prepared: after an extended-protocol error everything up to Sync is skipped") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  SideBySide sb(p);
  // PostgreSQL ignores a simple Query after a failed Bind until the Sync; a Parse and a
  // DEALLOCATE pgsluice would answer itself must be skipped as well.
  std::vector<std::string> want = sb.exchange(
      parse_msg("s9", "select 9") + sync_msg() +  // 1 Z
          bind_msg("nope") + execute_msg() + msg('Q', cstr("select 'q'")) +
          parse_msg("s10", "select 9") + msg('Q', cstr("DEALLOCATE s9")) + sync_msg() +  // E Z
          bind_msg("s10") + execute_msg() + sync_msg() +                                 // E Z
          bind_msg("s9") + execute_msg() + sync_msg() +  // 2 D:9 C Z
          msg('Q', cstr("select 'after'")),              // T D C Z
      5);
  CHECK(join(want) == join({"1", "Z:I", "E:26000:prepared statement \"nope\" does not exist", "Z:I",
                            "E:26000:prepared statement \"s10\" does not exist", "Z:I", "2", "D:9",
                            "C:SELECT 1", "Z:I", "T", "D:after", "C:SELECT 1", "Z:I"}));
  // The only server went back to the pool: another client gets it.
  Conn other = connect(p.conninfo("md5user", "md5pass", "testdb", "connect_timeout=5"));
  CHECK(scalar(other.get(), "select 1") == "1");
}

TEST_CASE("prepared: cache_unnamed_statements keeps the unnamed statement's semantics") {
  Options o;
  o.default_pool_size = 1;
  o.extra_pgbouncer = "cache_unnamed_statements = 1\n";
  Pooler p(o);
  std::string bytes =
      parse_msg("", "select $1::int + 1") + bind_msg("", {"41"}) + execute_msg() +
      sync_msg() +                                        // 1 2 D C Z
      bind_msg("", {"1"}) + execute_msg() + sync_msg() +  // 2 D:2 C Z (kept across Syncs)
      parse_msg("", "select 'x'") + bind_msg("") + execute_msg() + sync_msg() +  // 1 2 D:x C Z
      msg('Q', cstr("select 'q'")) +               // T D C Z: drops the unnamed one
      bind_msg("") + execute_msg() + sync_msg() +  // E:26000 Z
      parse_msg("", "select $1::int") + bind_msg("") + execute_msg() + sync_msg() +  // 1 E Z
      parse_msg("", "selec bad") + sync_msg() +                                      // E:42601 Z
      bind_msg("") + execute_msg() + sync_msg() +  // E:26000 Z (the failed one is gone)
      parse_msg("", "select 'y'") + sync_msg() +   // 1 Z
      close_stmt_msg("") + sync_msg() +            // 3 Z
      bind_msg("") + execute_msg() + sync_msg() +  // E:26000 Z
      parse_msg("", "select 'z'") + describe_stmt_msg("") + sync_msg() +  // 1 t T Z
      parse_msg("n1", "select $1::int") + sync_msg() +                    // 1 Z
      bind_msg("n1") + execute_msg() + sync_msg() +                       // E:08P01 under "n1" Z
      parse_msg("", "select $1::int + 1") + bind_msg("", {"1"}) + execute_msg() +
      parse_msg("", "select 'x'") + bind_msg("") + execute_msg() + sync_msg();  // 1 2 D 1 2 D Z
  const int syncs = 15;
  SideBySide sb(p);
  std::vector<std::string> want = sb.exchange(bytes, syncs);
  std::vector<std::string> expect = {
      "1",
      "2",
      "D:42",
      "C:SELECT 1",
      "Z:I",  //
      "2",
      "D:2",
      "C:SELECT 1",
      "Z:I",  //
      "1",
      "2",
      "D:x",
      "C:SELECT 1",
      "Z:I",  //
      "T",
      "D:q",
      "C:SELECT 1",
      "Z:I",  //
      "E:26000:unnamed prepared statement does not exist",
      "Z:I",  //
      "1",
      "E:08P01:bind message supplies 0 parameters, but prepared statement \"\" requires 1",
      "Z:I",  //
      "E:42601:syntax error at or near \"selec\"",
      "Z:I",  //
      "E:26000:unnamed prepared statement does not exist",
      "Z:I",  //
      "1",
      "Z:I",
      "3",
      "Z:I",  //
      "E:26000:unnamed prepared statement does not exist",
      "Z:I",  //
      "1",
      "t",
      "T",
      "Z:I",  //
      "1",
      "Z:I",  //
      "E:08P01:bind message supplies 0 parameters, but prepared statement \"n1\" requires 1",
      "Z:I",  //
      "1",
      "2",
      "D:2",
      "C:SELECT 1",
      "1",
      "2",
      "D:x",
      "C:SELECT 1",
      "Z:I"};
  CHECK(join(want) == join(expect));
  // An unnamed Parse skipped after an error leaves the previous unnamed statement.
  want = sb.exchange(parse_msg("", "select 'old'") + sync_msg() + bind_msg("nope") + execute_msg() +
                         parse_msg("", "select 'new'") + sync_msg() + bind_msg("") + execute_msg() +
                         sync_msg(),
                     3);
  CHECK(join(want) == join({"1", "Z:I", "E:26000:prepared statement \"nope\" does not exist", "Z:I",
                            "2", "D:old", "C:SELECT 1", "Z:I"}));
  // The same text again (the name keeps its entry, nothing to put back): skipped after an
  // error it leaves the statement; failed (its table dropped meanwhile) it leaves none.
  want = sb.exchange(bind_msg("nope") + execute_msg() + parse_msg("", "select 'old'") + sync_msg() +
                         bind_msg("") + execute_msg() + sync_msg() +
                         msg('Q', cstr("create table unnamed_kept(a int)")) +
                         parse_msg("", "select a from unnamed_kept") + sync_msg() +
                         parse_msg("drop_kept", "drop table unnamed_kept") + bind_msg("drop_kept") +
                         execute_msg() + sync_msg() + parse_msg("", "select a from unnamed_kept") +
                         sync_msg() + bind_msg("") + execute_msg() + sync_msg(),
                     7);
  CHECK(join(want) ==
        join({"E:26000:prepared statement \"nope\" does not exist", "Z:I", "2", "D:old",
              "C:SELECT 1", "Z:I", "C:CREATE TABLE", "Z:I", "1", "Z:I", "1", "2", "C:DROP TABLE",
              "Z:I", "E:42P01:relation \"unnamed_kept\" does not exist", "Z:I",
              "E:26000:unnamed prepared statement does not exist", "Z:I"}));
  // A second client, same texts: its unnamed Parses are answered from the server's cache.
  if (skip_in_direct_mode("parse counters are on the pooler's console")) return;
  Conn admin = connect(admin_conninfo(p));
  long long server_before = stat_total(admin.get(), "total_server_parse_count");
  long long client_before = stat_total(admin.get(), "total_client_parse_count");
  Conn other_holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  Raw other = Raw::from_libpq(other_holder.get());
  std::string again = parse_msg("", "select $1::int + 1") + bind_msg("", {"41"}) + execute_msg() +
                      sync_msg() + parse_msg("", "select 'x'") + bind_msg("") + execute_msg() +
                      sync_msg();
  CHECK(join(raw_exchange(other, again, 2)) ==
        "[1] [2] [D:42] [C:SELECT 1] [Z:I] [1] [2] [D:x] [C:SELECT 1] [Z:I] ");
  CHECK(stat_total(admin.get(), "total_client_parse_count") == client_before + 2);
  CHECK(stat_total(admin.get(), "total_server_parse_count") == server_before);
}

TEST_CASE("prepared: pgbench -M extended with cache_unnamed_statements parses once per server") {
  if (skip_in_direct_mode("parse counters are on the pooler's console")) return;
  for (int cache = 0; cache <= 1; cache++) {
    CAPTURE(cache);
    Options o;
    o.default_pool_size = 4;
    o.extra_pgbouncer = "cache_unnamed_statements = " + std::to_string(cache) + "\n";
    Pooler p(o);
    PgbenchRun r = run_pgbench(p, "-M extended -S -c 16 -j 2 -T 3", 40);
    INFO("pgbench output:\n" << r.output);
    CHECK(r.exit_code == 0);
    REQUIRE(r.failed >= 0);
    CHECK(r.failed == 0);
    REQUIRE(r.processed >= 0);
    long long xacts = r.processed;
    Conn admin = connect(admin_conninfo(p));
    long long client = stat_total(admin.get(), "total_client_parse_count");
    long long server = stat_total(admin.get(), "total_server_parse_count");
    MESSAGE("cache " << cache << ": xacts " << xacts << ", client parses " << client
                     << ", server parses " << server);
    CHECK(client >= xacts);
    if (cache) {
      CHECK(server >= 1);
      CHECK(server <= 8);  // one per server connection (at most 4), with room for a reconnect
    } else {
      CHECK(server == client);  // every unnamed Parse goes to PostgreSQL
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 10. SQL-level PREPARE / EXECUTE / DEALLOCATE.

TEST_CASE("prepared: SQL PREPARE, EXECUTE and DEALLOCATE across transactions") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Mover mv(p);
  exec_ok(a.get(), "PREPARE q(int) AS select $1 + 1");
  int last = backend_pid(a.get());
  std::set<int> pids;
  for (int i = 0; i < 6; i++) {
    CAPTURE(i);
    last = mv.run_elsewhere(last, [&] {
      exec_ok(a.get(), "BEGIN");
      std::string v = scalar(a.get(), "EXECUTE q(41)");
      CHECK(v == "42");
      int pid = backend_pid(a.get());
      exec_ok(a.get(), "COMMIT");
      return pid;
    });
    pids.insert(last);
    CHECK(scalar(a.get(), "execute q (" + std::to_string(i) + ")") == std::to_string(i + 1));
  }
  if (!p.direct()) CHECK(pids.size() >= 2);
  CHECK(exec_sqlstate(a.get(), "PREPARE q(int) AS select 0") == "42P05");
  exec_ok(a.get(), "DEALLOCATE q");
  CHECK(exec_sqlstate(a.get(), "EXECUTE q(1)") == "26000");
  last = mv.run_elsewhere(last, [&] {
    exec_ok(a.get(), "BEGIN");
    CHECK(exec_sqlstate(a.get(), "EXECUTE q(1)") == "26000");
    exec_ok(a.get(), "ROLLBACK");
    return backend_pid(a.get());
  });
  // Re-PREPARE with another text; DEALLOCATE PREPARE spelling.
  exec_ok(a.get(), "PREPARE q(int) AS select $1 * 100");
  last = mv.run_elsewhere(last, [&] {
    CHECK(scalar(a.get(), "EXECUTE q(5)") == "500");
    return backend_pid(a.get());
  });
  exec_ok(a.get(), "DEALLOCATE PREPARE q");
  CHECK(exec_sqlstate(a.get(), "EXECUTE q(1)") == "26000");
}

// ---------------------------------------------------------------------------------------------
// 11. "cached plan must not change result type".

TEST_CASE("prepared: 0A000 after ALTER COLUMN TYPE is retried once outside a transaction") {
  Options o;
  o.default_pool_size = 1;  // the statement stays prepared on the one server
  Pooler p(o);
  Conn ddl = connect(direct_conninfo());
  exec_ok(ddl.get(), "DROP TABLE IF EXISTS t0a");
  exec_ok(ddl.get(), "CREATE TABLE t0a (a int)");
  exec_ok(ddl.get(), "INSERT INTO t0a VALUES (1)");
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  prepare_ok(a.get(), "s", "select * from t0a");
  prepare_ok(b.get(), "same_text", "select * from t0a");
  {
    Result r = exec_prepared(a.get(), "s", {});
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    CHECK(PQftype(r.get(), 0) == 23);  // int4
  }
  CHECK(run_prepared(b.get(), "same_text")[0] == "1");
  exec_ok(ddl.get(), "ALTER TABLE t0a ALTER COLUMN a TYPE text");
  {
    Result r = exec_prepared(a.get(), "s", {});
    if (p.direct()) {
      // What PostgreSQL does by itself, and why the pooler retries.
      CHECK(sqlstate_of(r.get()) == "0A000");
      CHECK(primary_of(r.get()) == "cached plan must not change result type");
    } else {
      INFO("error: " << std::string(PQresultErrorMessage(r.get())));
      REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
      CHECK(PQnfields(r.get()) == 1);
      CHECK(PQftype(r.get(), 0) == 25);  // text
      CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "1");
    }
  }
  CHECK(scalar(a.get(), "select 'a ok'") == "a ok");
  if (!p.direct()) {
    // The other client sharing the text is served the new shape too.
    Result r = exec_prepared(b.get(), "same_text", {});
    INFO("error: " << std::string(PQresultErrorMessage(r.get())));
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    CHECK(PQftype(r.get(), 0) == 25);
    // And Describe tells the new shape.
    Result d(PQdescribePrepared(a.get(), "s"));
    REQUIRE(PQresultStatus(d.get()) == PGRES_COMMAND_OK);
    CHECK(PQftype(d.get(), 0) == 25);
  }
  // Again, now with a simple-protocol query just before the execute (still outside any
  // transaction block: the retry must not depend on what the previous request was).
  exec_ok(ddl.get(), "ALTER TABLE t0a ALTER COLUMN a TYPE bigint USING a::bigint");
  CHECK(scalar(a.get(), "select 'simple first'") == "simple first");
  {
    Result r = exec_prepared(a.get(), "s", {});
    if (p.direct()) {
      CHECK(sqlstate_of(r.get()) == "0A000");
    } else {
      INFO("after a simple query: " << std::string(PQresultErrorMessage(r.get())));
      CHECK(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
      CHECK(PQftype(r.get(), 0) == 20);  // int8
    }
  }
  // Inside a transaction block the error may come back as PostgreSQL gives it; the session
  // must stay usable after ROLLBACK.
  exec_ok(ddl.get(), "ALTER TABLE t0a ALTER COLUMN a TYPE int USING a::int");
  exec_ok(a.get(), "BEGIN");
  {
    Result r = exec_prepared(a.get(), "s", {});
    std::string st = sqlstate_of(r.get());
    CHECK((PQresultStatus(r.get()) == PGRES_TUPLES_OK || st == "0A000"));
  }
  exec_ok(a.get(), "ROLLBACK");
  CHECK(PQtransactionStatus(a.get()) == PQTRANS_IDLE);
  CHECK(scalar(a.get(), "select 'still ok'") == "still ok");
  prepare_ok(a.get(), "other", "select 'other'");  // an extended-protocol request in between
  CHECK(run_prepared(a.get(), "other")[0] == "other");
  if (!p.direct()) {
    Result r = exec_prepared(a.get(), "s", {});
    INFO("error: " << std::string(PQresultErrorMessage(r.get())));
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    CHECK(PQftype(r.get(), 0) == 23);
  }
  exec_ok(ddl.get(), "DROP TABLE t0a");
}

// ---------------------------------------------------------------------------------------------
// 12. Regression: a skipped re-prepare.

// Found with the libpq pipeline test: a statement whose Parse is still unconfirmed when a
// later segment uses it gets Close+Parse injected there; when an earlier error in that later
// segment makes PostgreSQL skip both, the server still holds the statement.
TEST_CASE("prepared: re-prepare skipped after an error in a later pipeline segment") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn busy = connect(p.conninfo());
  Conn holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  Raw r = Raw::from_libpq(holder.get());
  // Both segments in one write: s1's ParseComplete has not come back when B(s1) is read.
  std::vector<std::string> got =
      raw_exchange(r,
                   parse_msg("s1", "select 'one'") + sync_msg() + bind_msg("nope") + execute_msg() +
                       bind_msg("s1") + execute_msg() + sync_msg(),
                   2);
  CHECK(join(got) ==
        join({"1", "Z:I", "E:26000:prepared statement \"nope\" does not exist", "Z:I"}));
  got = raw_exchange(r, bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"2", "D:one", "C:SELECT 1", "Z:I"}));
  CHECK(scalar(busy.get(), "select 1") == "1");
  got = raw_exchange(r, bind_msg("s1") + execute_msg() + sync_msg(), 1);
  CHECK(join(got) == join({"2", "D:one", "C:SELECT 1", "Z:I"}));
}

// ---------------------------------------------------------------------------------------------
// 13. A server that vanishes: mid-transaction, and idle while holding a client's statement.

// The remote_pid of every server on the console.
std::set<int> server_pids(PGconn* admin) {
  Result r = exec_ok(admin, "SHOW SERVERS");
  std::set<int> pids;
  int c = PQfnumber(r.get(), "remote_pid");
  for (int i = 0; c >= 0 && i < PQntuples(r.get()); i++)
    pids.insert(std::stoi(PQgetvalue(r.get(), i, c)));
  return pids;
}

TEST_CASE("prepared: servers terminated mid-transaction and while idle; other sessions go on") {
  if (skip_in_direct_mode("pool behaviour")) return;
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  Conn admin = connect(admin_conninfo(p));
  Conn killer = connect(direct_conninfo());  // same role: may terminate its backends
  Conn a = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  Conn bystander = connect(p.conninfo());
  // b holds one server inside a transaction; a prepares on the other, which goes idle.
  exec_ok(b.get(), "BEGIN");
  exec_ok(b.get(), "CREATE TEMP TABLE vanish_t (x int)");
  int b_pid = backend_pid(b.get());
  prepare_ok(a.get(), "plus", "select $1::int + 1, pg_backend_pid()", 1);
  int a_pid = std::stoi(run_prepared(a.get(), "plus", {"1"})[1]);
  REQUIRE(a_pid != b_pid);

  // PostgreSQL terminates b's backend in the middle of b's transaction.
  CHECK(scalar(killer.get(), "select pg_terminate_backend(" + std::to_string(b_pid) + ")") == "t");
  {
    Result r(PQexec(b.get(), "INSERT INTO vanish_t VALUES (1)"));
    CHECK(PQresultStatus(r.get()) != PGRES_COMMAND_OK);  // the error, not a hang
    // PostgreSQL's own FATAL reaches b as it would without a pooler.
    std::string err = PQerrorMessage(b.get());
    INFO("b got: " << err);
    CHECK(err.find("terminating connection due to administrator command") != std::string::npos);
  }
  // Transaction pooling: b keeps its connection, its transaction aborted (issue 12).
  CHECK(PQstatus(b.get()) == CONNECTION_OK);
  CHECK(PQtransactionStatus(b.get()) == PQTRANS_INERROR);
  exec_ok(b.get(), "ROLLBACK");

  // a's statement was prepared on a server that is now killed while idle in the pool.
  CHECK(scalar(killer.get(), "select pg_terminate_backend(" + std::to_string(a_pid) + ")") == "t");
  for (int i = 0; i < 100 && server_pids(admin.get()).count(a_pid) > 0; i++) usleep(50 * 1000);
  REQUIRE(server_pids(admin.get()).count(a_pid) == 0);
  REQUIRE(server_pids(admin.get()).count(b_pid) == 0);

  // Everyone else goes on: a's statement is prepared again on a new server, unseen.
  auto row = run_prepared(a.get(), "plus", {"41"});
  CHECK(row[0] == "42");
  CHECK(std::stoi(row[1]) != a_pid);
  CHECK(scalar(bystander.get(), "select 7") == "7");
  // b's transaction is gone with its backend: its temp table never reached anyone.
  CHECK(scalar(bystander.get(), "select count(*) from pg_class where relname = 'vanish_t'") == "0");
  Conn b2 = connect(p.conninfo());
  CHECK(scalar(b2.get(), "select 1") == "1");
  CHECK(p.alive());
}

// ---------------------------------------------------------------------------------------------
// 14. A Parse of a statement PostgreSQL already accepted needs no server.

// pgbench -M prepared prepares each statement with a blocking PQprepare. With more clients
// than servers, the clients of one pgbench thread hold every server inside their
// transactions while another client of that thread blocks in PQprepare for BEGIN: without a
// server for that Parse nothing moves again (PgBouncer 1.18 hangs the same way).
TEST_CASE("prepared: pgbench -M prepared TPC-B with more clients than servers completes") {
  Options o;
  o.default_pool_size = 2;
  o.workers = 1;
  Pooler p(o);
  PgbenchRun r = run_pgbench(p, "-M prepared -c 6 -j 1 -t 30", 60);
  INFO("pgbench output:\n" << r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(r.processed == 6 * 30);
  CHECK(r.failed == 0);
}

TEST_CASE("prepared: a known statement is prepared while every server is busy") {
  if (skip_in_direct_mode("needs a pool smaller than the clients")) return;
  Options o;
  o.default_pool_size = 1;
  o.extra_pgbouncer = "query_wait_timeout = 5\n";
  Pooler p(o);
  Conn a = connect(p.conninfo());
  Conn holder = connect(p.conninfo());
  Conn b = connect(p.conninfo());
  const std::string text = "select $1::int * 2";
  prepare_ok(a.get(), "twice", text, 1);
  CHECK(run_prepared(a.get(), "twice", {"21"})[0] == "42");
  exec_ok(holder.get(), "BEGIN");  // the only server is now taken
  int held = backend_pid(holder.get());
  // b prepares the same text under its own name: answered at once (before, it waited for
  // the server until query_wait_timeout ended it).
  prepare_ok(b.get(), "mine", text, 1);
  exec_ok(holder.get(), "COMMIT");
  auto row = run_prepared(b.get(), "mine", {"5"});
  CHECK(row[0] == "10");
  CHECK(backend_pid(b.get()) == held);
  Conn admin = connect(admin_conninfo(p));
  CHECK(stat_total(admin.get(), "total_client_parse_count") >= 2);
  CHECK(stat_total(admin.get(), "total_server_parse_count") == 1);
}

TEST_CASE("prepared: a statement PostgreSQL has not accepted yet is not answered by pgsluice") {
  if (skip_in_direct_mode("needs a pool smaller than the clients")) return;
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn x = connect(p.conninfo());
  Conn y = connect(p.conninfo());
  // x's Parse of a bad text waits in PostgreSQL behind a sleep, so pgsluice knows the text
  // but not yet PostgreSQL's verdict when y prepares the same text.
  REQUIRE(PQenterPipelineMode(x.get()) == 1);
  REQUIRE(PQsendQueryParams(x.get(), "select pg_sleep(0.5)", 0, nullptr, nullptr, nullptr, nullptr,
                            0) == 1);
  REQUIRE(PQsendPrepare(x.get(), "bad", "selec 1", 0, nullptr) == 1);
  REQUIRE(PQpipelineSync(x.get()) == 1);
  REQUIRE(PQflush(x.get()) == 0);
  usleep(150 * 1000);
  REQUIRE(PQsendPrepare(y.get(), "bad_too", "selec 1", 0, nullptr) == 1);
  // x: the sleep's result, then PostgreSQL's 42601 for the Parse, then the Sync.
  std::vector<std::string> seen;
  for (int i = 0; i < 8; i++) {
    PGresult* r = PQgetResult(x.get());
    if (r == nullptr) continue;
    ExecStatusType st = PQresultStatus(r);
    seen.push_back(st == PGRES_PIPELINE_SYNC ? "sync"
                   : st == PGRES_TUPLES_OK   ? "rows"
                                             : sqlstate_of(r));
    PQclear(r);
    if (st == PGRES_PIPELINE_SYNC) break;
  }
  CHECK(join(seen) == join({"rows", "42601", "sync"}));
  // y gets PostgreSQL's own answer, not a ParseComplete from pgsluice.
  Result ry(PQgetResult(y.get()));
  CHECK(sqlstate_of(ry.get()) == "42601");
  while (PGresult* rest = PQgetResult(y.get())) PQclear(rest);
}

// ---------------------------------------------------------------------------------------------
// Issue 9: statement hardening.

// The server-side name of the statement whose text is `text`, as a client sharing the session
// reads it in pg_prepared_statements.
std::string server_name_of(PGconn* c, const std::string& text) {
  return scalar(c, "select coalesce((select name from pg_prepared_statements where statement = " +
                       std::string("'") + text + "'), '-')");
}

TEST_CASE("prepared: no client can drop, replace or run another client's statement (#10)") {
  if (skip_in_direct_mode("pgsluice's own statements")) return;
  Options o;
  o.default_pool_size = 1;  // victim and attacker share the one server
  Pooler p(o);
  Conn victim = connect(p.conninfo());
  Conn attacker = connect(p.conninfo());
  prepare_ok(victim.get(), "mine", "select 1 as mine");
  CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  // The attacker reads the name (it shares the server's session) ...
  std::string name = server_name_of(attacker.get(), "select 1 as mine");
  REQUIRE(name.rfind("PGSLUICE_", 0) == 0);
  // ... which holds 64 random bits: "PGSLUICE_" 16 hex digits "_" id.
  CHECK(name.size() >= std::string("PGSLUICE_0123456789ABCDEF_1").size());
  CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  const std::string q = "\"" + name + "\"";
  std::string lower;
  for (char ch : name) lower.push_back(static_cast<char>(tolower(ch)));
  struct Attack {
    std::string what;
    std::vector<std::string> sql;
  };
  std::vector<Attack> attacks = {
      {"-- comments (the issue's own)",
       {"DEALLOCATE " + q + " -- x", "PREPARE " + q + " AS SELECT 666 -- x"}},
      {"nested /* */ comments",
       {"/* a /* b */ c */ DEALLOCATE " + q, "PREPARE " + q + " /* x */ AS SELECT 666"}},
      {"dollar quotes",
       {"DEALLOCATE " + q + "; SELECT $$x$$", "PREPARE " + q + " AS SELECT $q$666$q$::int"}},
      {"two statements in one query", {"DEALLOCATE " + q + "; PREPARE " + q + " AS SELECT 666"}},
      {"lower case, quoted and not",
       {"deallocate \"" + lower + "\"; deallocate " + lower,
        "prepare " + lower + " as select 666"}},
      {"a DO block naming it",
       {"DO $$ BEGIN EXECUTE 'DEALLOCATE " + q + "'; EXECUTE 'PREPARE " + q +
        " AS SELECT 666'; END $$"}},
      {"a DO block that finds the names itself",
       {"DO $$ DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_prepared_statements LOOP "
        "EXECUTE format('DEALLOCATE %I', n); EXECUTE format('PREPARE %I AS SELECT 666', n); "
        "END LOOP; END $$"}},
      {"an SQL function that drops everything, called later",
       {"CREATE FUNCTION pg_temp.drop_all() RETURNS void LANGUAGE sql AS 'DEALLOCATE ALL'",
        "SELECT 1", "SELECT pg_temp.drop_all()"}},
  };
  for (const auto& a : attacks) {
    INFO("attack: " << a.what);
    for (const auto& sql : a.sql) {
      Result r(PQexec(attacker.get(), sql.c_str()));
      // A text naming pgsluice's statements is refused (42501); the rest runs.
      if (sql.find(name) != std::string::npos || sql.find(lower) != std::string::npos)
        CHECK(sqlstate_of(r.get()) == "42501");
      REQUIRE(PQstatus(attacker.get()) == CONNECTION_OK);
    }
    CHECK(run_prepared(victim.get(), "mine")[0] == "1");
    CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  }
  // The same through the extended protocol (an unnamed Parse): the dynamic DO block runs,
  // and the victim's statement is prepared afresh before its next use.
  {
    Result r(PQexecParams(attacker.get(),
                          "DO $$ DECLARE n text; BEGIN FOR n IN SELECT name FROM "
                          "pg_prepared_statements LOOP EXECUTE format('DEALLOCATE %I', n); "
                          "EXECUTE format('PREPARE %I AS SELECT 666', n); END LOOP; END $$",
                          0, nullptr, nullptr, nullptr, nullptr, 0));
    CHECK(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
    CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  }
  // A named statement whose text drops everything, run by the attacker.
  prepare_ok(attacker.get(), "boom", "DEALLOCATE ALL");
  {
    Result r(PQexecPrepared(attacker.get(), "boom", 0, nullptr, nullptr, nullptr, 0));
    CHECK(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
  }
  CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  // A Parse whose text names pgsluice's statements is refused too (42501); the session goes on.
  {
    std::string sql = "DEALLOCATE " + q;
    Result r(PQexecParams(attacker.get(), sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
    CHECK(sqlstate_of(r.get()) == "42501");
    Result r2(
        PQprepare(attacker.get(), "x", ("PREPARE " + q + " AS SELECT 666").c_str(), 0, nullptr));
    CHECK(sqlstate_of(r2.get()) == "42501");
    CHECK(scalar(attacker.get(), "select 'still here'") == "still here");
  }
  CHECK(run_prepared(victim.get(), "mine")[0] == "1");
  // A Bind of a name the victim never prepared gives 26000, even when someone prepared the
  // name pgsluice uses for "no such statement".
  Conn attacker2 = connect(p.conninfo());
  exec_ok(attacker2.get(),
          "DO $$ BEGIN EXECUTE format('PREPARE %I AS SELECT 666', (SELECT left(name, 26) || '0' "
          "FROM pg_prepared_statements LIMIT 1)); END $$");
  CHECK(prepared_sqlstate(victim.get(), "never_prepared") == "26000");
  CHECK(run_prepared(victim.get(), "mine")[0] == "1");
}

TEST_CASE("prepared: a statement accepted in one pool is not answered locally in another (#11)") {
  if (skip_in_direct_mode("pgsluice's own answers")) return;
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn ddl = connect(direct_conninfo());
  exec_ok(ddl.get(), "DROP TABLE IF EXISTS t_only_in_testdb");
  exec_ok(ddl.get(), "CREATE TABLE t_only_in_testdb (a int)");
  const std::string text = "select a from t_only_in_testdb";
  // Pool (testdb, md5user): PostgreSQL accepts the text.
  Conn a = connect(p.conninfo());
  prepare_ok(a.get(), "s", text);
  // Pool (postgres, md5user): the table does not exist there.
  Conn b = connect(p.conninfo("md5user", "md5pass", "postgres"));
  Result r(PQprepare(b.get(), "s", text.c_str(), 0, nullptr));
  CHECK(sqlstate_of(r.get()) == "42P01");
  CHECK(prepared_sqlstate(b.get(), "s") == "26000");
  CHECK(scalar(b.get(), "select 1") == "1");
  exec_ok(ddl.get(), "DROP TABLE t_only_in_testdb");
}

void statements_survive_other_clients_reset(const std::string& reset, bool extended) {
  INFO("reset: " << reset << (extended ? " (extended protocol)" : " (simple query)"));
  Options o;
  o.default_pool_size = 1;  // both clients on the one server
  Pooler p(o);
  Conn c1 = connect(p.conninfo());
  Conn c2 = connect(p.conninfo());
  // The same text and, as psycopg does, the same name in both clients.
  prepare_ok(c1.get(), "_pg3_0", "SELECT 1");
  prepare_ok(c2.get(), "_pg3_0", "SELECT 1");
  CHECK(run_prepared(c1.get(), "_pg3_0")[0] == "1");
  CHECK(run_prepared(c2.get(), "_pg3_0")[0] == "1");
  if (extended) {
    Result r(PQexecParams(c1.get(), reset.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
  } else {
    exec_ok(c1.get(), reset);
  }
  // c1's statement is gone, as in PostgreSQL; c2's is not.
  CHECK(prepared_sqlstate(c1.get(), "_pg3_0") == "26000");
  CHECK(run_prepared(c2.get(), "_pg3_0")[0] == "1");
  CHECK(run_prepared(c2.get(), "_pg3_0")[0] == "1");
  prepare_ok(c1.get(), "_pg3_0", "SELECT 1");
  CHECK(run_prepared(c1.get(), "_pg3_0")[0] == "1");
  CHECK(run_prepared(c2.get(), "_pg3_0")[0] == "1");
}

TEST_CASE("prepared: DEALLOCATE ALL / DISCARD ALL drop only that client's statements (#14)") {
  if (skip_in_direct_mode("two clients on one server")) return;
  for (const char* reset : {"DEALLOCATE ALL", "DISCARD ALL", "deallocate prepare all"})
    for (bool extended : {false, true}) statements_survive_other_clients_reset(reset, extended);
}

// What PQprepare, PQdescribePrepared and PQexecPrepared of a statement named `name` give.
std::vector<std::string> long_name_sequence(const std::string& conninfo, const std::string& name) {
  Conn c = connect(conninfo);
  std::vector<std::string> seq;
  auto tok = [&](PGresult* r) {
    std::string t = PQresStatus(PQresultStatus(r));
    if (PQresultStatus(r) == PGRES_FATAL_ERROR) t += ":" + sqlstate_of(r) + ":" + primary_of(r);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
      t += ":" + std::string(PQgetvalue(r, 0, 0));
    if (PQresultStatus(r) == PGRES_COMMAND_OK) t += ":" + std::to_string(PQnparams(r));
    seq.push_back(t);
    PQclear(r);
  };
  tok(PQprepare(c.get(), name.c_str(), "select $1::int + 1", 1, nullptr));
  const char* v[1] = {"41"};
  tok(PQexecPrepared(c.get(), name.c_str(), 1, v, nullptr, nullptr, 0));
  tok(PQexecPrepared(c.get(), name.c_str(), 1, v, nullptr, nullptr, 0));
  // A Describe (or Close) is limited to 10000 bytes by PostgreSQL itself (FATAL).
  tok(PQdescribePrepared(c.get(), name.c_str()));
  seq.push_back(PQstatus(c.get()) == CONNECTION_OK ? "connected" : "closed");
  return seq;
}

TEST_CASE("prepared: a 16 KiB statement name works as in PostgreSQL (#16)") {
  // PQprepare and PQexecPrepared work; PQdescribePrepared is refused by PostgreSQL 15 too
  // (a Describe is one of its "small" messages), so pgsluice's limits are PostgreSQL's.
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  const std::string name(16 * 1024, 'n');
  std::vector<std::string> via = long_name_sequence(p.conninfo(), name);
  std::vector<std::string> direct = long_name_sequence(direct_conninfo(), name);
  INFO("through the pooler: " << join(via));
  INFO("direct:             " << join(direct));
  CHECK(join(via) == join(direct));
  CHECK(join(direct) == join({"PGRES_COMMAND_OK:0", "PGRES_TUPLES_OK:42", "PGRES_TUPLES_OK:42",
                              "PGRES_FATAL_ERROR::", "closed"}));
}

TEST_CASE("prepared: a pipeline that re-prepares after a failed Parse matches PostgreSQL (#15)") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  Conn busy = connect(p.conninfo());
  // psycopg 3's pattern: statements prepared in flight; one fails at Parse; after the Sync
  // the client prepares again what PostgreSQL skipped, in the same flight.
  std::string bytes =
      parse_msg("_pg3_0", "select * from no_such_table_15") + bind_msg("_pg3_0") + execute_msg() +
      sync_msg() + parse_msg("_pg3_0", "select 1") + bind_msg("_pg3_0") + execute_msg() +
      sync_msg() +  //
      parse_msg("_pg3_1", "select * from no_such_table_15") + parse_msg("_pg3_2", "select 2") +
      bind_msg("_pg3_2") + execute_msg() + sync_msg() + parse_msg("_pg3_1", "select 11") +
      parse_msg("_pg3_2", "select 2") + bind_msg("_pg3_1") + execute_msg() + bind_msg("_pg3_2") +
      execute_msg() + sync_msg() +  //
      bind_msg("_pg3_0") + execute_msg() + bind_msg("_pg3_1") + execute_msg() + sync_msg();
  SideBySide sb(p);
  std::vector<std::string> want = sb.exchange(bytes, 5);
  CHECK(join(want) == join({"E:42P01:relation \"no_such_table_15\" does not exist",
                            "Z:I",
                            "1",
                            "2",
                            "D:1",
                            "C:SELECT 1",
                            "Z:I",
                            "E:42P01:relation \"no_such_table_15\" does not exist",
                            "Z:I",
                            "1",
                            "1",
                            "2",
                            "D:11",
                            "C:SELECT 1",
                            "2",
                            "D:2",
                            "C:SELECT 1",
                            "Z:I",
                            "2",
                            "D:1",
                            "C:SELECT 1",
                            "2",
                            "D:11",
                            "C:SELECT 1",
                            "Z:I"}));
  CHECK(scalar(busy.get(), "select 3") == "3");
}

TEST_CASE("prepared: lowering max_prepared_statements bounds the statements already kept (#17)") {
  if (skip_in_direct_mode("a pooler setting")) return;
  Options o;
  o.default_pool_size = 1;
  o.extra_pgbouncer = "max_prepared_statements = 10\n";
  Pooler p(o);
  Conn c = connect(p.conninfo());
  for (int i = 0; i < 6; i++) {
    prepare_ok(c.get(), "s" + std::to_string(i), "select " + std::to_string(i) + " as n17");
    CHECK(run_prepared(c.get(), "s" + std::to_string(i))[0] == std::to_string(i));
  }
  const std::string count =
      "select count(*) from pg_prepared_statements where statement like 'select % as n17'";
  CHECK(scalar(c.get(), count) == "6");
  Conn admin = connect(admin_conninfo(p));
  exec_ok(admin.get(), "SET max_prepared_statements = 2");
  CHECK(run_prepared(c.get(), "s5")[0] == "5");
  CHECK(std::stoi(scalar(c.get(), count)) <= 2);
  // Every statement still works, within the new bound.
  for (int i = 0; i < 6; i++)
    CHECK(run_prepared(c.get(), "s" + std::to_string(i))[0] == std::to_string(i));
  CHECK(std::stoi(scalar(c.get(), count)) <= 2);
}

void unnamed_survives_sync(bool cache) {
  INFO("cache_unnamed_statements = " << cache);
  Options o;
  o.default_pool_size = 1;  // A and B take turns on the one server
  o.extra_pgbouncer = "cache_unnamed_statements = " + std::to_string(cache) + "\n";
  Pooler p(o);
  SideBySide sb(p);
  Conn b = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
  sb.exchange(parse_msg("", "select 'a'") + sync_msg(), 1);
  // B: an unnamed statement of its own, then a simple query (which drops B's unnamed
  // statement, and the server session's).
  {
    Result r(PQexecParams(b.get(), "select 'b'", 0, nullptr, nullptr, nullptr, nullptr, 0));
    CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "b");
  }
  CHECK(scalar(b.get(), "select 1") == "1");
  std::vector<std::string> got = sb.exchange(
      bind_msg("") + execute_msg() + sync_msg() + describe_stmt_msg("") + sync_msg(), 2);
  CHECK(join(got) == join({"2", "D:a", "C:SELECT 1", "Z:I", "t", "T", "Z:I"}));
  // A client that never parsed an unnamed statement does not get another client's.
  Raw rb = Raw::from_libpq(b.get());
  std::vector<std::string> none = raw_exchange(rb, bind_msg("") + execute_msg() + sync_msg(), 1);
  CHECK(join(none) == join({"E:26000:unnamed prepared statement does not exist", "Z:I"}));
  // A simple query of A's own drops it, as in PostgreSQL.
  sb.exchange(msg('Q', cstr("select 'q'")) + bind_msg("") + execute_msg() + sync_msg(), 2);
}

TEST_CASE("prepared: the unnamed statement survives its Sync as in PostgreSQL (#18)") {
  for (bool cache : {false, true}) unnamed_survives_sync(cache);
}

}  // namespace
}  // namespace it
