// A server goes back to the pool only when PostgreSQL is idle and clean (Server::clean):
// a client that leaves mid-COPY, mid-pipeline or before its Sync never hands the next
// client a server that is still skipping to a Sync, in COPY, or in an implicit transaction.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>

#include <string>

#include "integration/harness.h"

namespace it {
namespace {

// Logs in over a raw socket (auth_type=trust) and reads up to the first ReadyForQuery.
Raw raw_login(const Pooler& p) {
  Raw r = Raw::tcp(p.port());
  REQUIRE(r.send_bytes(startup_packet({{"user", "md5user"}, {"database", "testdb"}})));
  auto msgs = r.read_until('Z');
  REQUIRE(!msgs.empty());
  REQUIRE(msgs.back().type == 'Z');
  return r;
}

std::string parse(const std::string& name, const std::string& sql) {
  return msg('P', cstr(name) + cstr(sql) + be16(0));
}
std::string bind(const std::string& portal, const std::string& stmt) {
  return msg('B', cstr(portal) + cstr(stmt) + be16(0) + be16(0) + be16(0));
}
std::string execute(const std::string& portal, uint32_t max_rows = 0) {
  return msg('E', cstr(portal) + be32(max_rows));
}
std::string sync() {
  return msg('S', "");
}

// Leaves without a goodbye: RST (SO_LINGER 0), or a Terminate message then close.
void leave(Raw& r, bool abrupt) {
  if (abrupt) {
    linger lg{1, 0};
    setsockopt(r.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  } else {
    r.send_msg('X', "");
  }
  r.close_fd();
}

// The next client on the pool of one gets a clean server: an answer at once, no open
// transaction, nothing left of the previous session.
void next_client_gets_clean_server(const Pooler& p) {
  std::string err;
  Conn c = try_connect(p.conninfo() + " connect_timeout=5", &err);
  REQUIRE_MESSAGE(c != nullptr, err);
  // A server that discards what it is sent would never answer: wait 5 s at most.
  REQUIRE(PQsendQuery(c.get(), "select 42") == 1);
  auto start = Clock::now();
  while (PQisBusy(c.get())) {
    REQUIRE_MESSAGE(seconds_since(start) < 5, "no answer to select 42 within 5 s");
    pollfd pfd{PQsocket(c.get()), POLLIN, 0};
    poll(&pfd, 1, 100);
    REQUIRE(PQconsumeInput(c.get()) == 1);
  }
  Result r(PQgetResult(c.get()));
  REQUIRE_MESSAGE(PQresultStatus(r.get()) == PGRES_TUPLES_OK, PQerrorMessage(c.get()));
  CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "42");
  while (PGresult* extra = PQgetResult(c.get())) PQclear(extra);
  // now() is the transaction's start: equal to the statement's only outside a transaction.
  CHECK(scalar(c.get(), "select now() = statement_timestamp()") == "t");
  CHECK(scalar(c.get(), "select count(*) from pg_class where relnamespace = pg_my_temp_schema()") ==
        "0");
  CHECK(scalar(c.get(), "show application_name") == "");
}

struct Step {
  const char* name;
  std::string before;   // sent first
  char wait_for = 0;    // read until this message type (0: do not wait)
  std::string after;    // then sent
  char wait_after = 0;  // then read until this type (0: do not wait)
};

}  // namespace

TEST_CASE("a client that leaves mid-protocol never leaves a dirty server in the pool") {
  if (skip_in_direct_mode("pool of one")) return;
  Options o;
  o.auth_type = "trust";
  o.default_pool_size = 1;
  o.workers = 1;
  Pooler p(o);
  {
    Conn c = connect(p.conninfo());
    exec_ok(c.get(), "DROP TABLE IF EXISTS it_clean");
    exec_ok(c.get(), "CREATE TABLE it_clean (n int)");
  }
  const std::string copy_in =
      parse("", "COPY it_clean FROM STDIN") + bind("", "") + execute("") + sync();
  const std::vector<Step> steps = {
      // Issue 9 item 2: extended COPY, CopyFail, gone without the second Sync. PostgreSQL
      // then discards everything until a Sync.
      {"extended COPY IN, CopyFail, no Sync", copy_in, 'G', msg('f', cstr("no")), 'E'},
      {"extended COPY IN, data, no CopyDone", copy_in, 'G', msg('d', "1\n"), 0},
      {"extended COPY IN, CopyDone, no Sync", copy_in, 'G',
       msg('d', "1\n") + msg('c', "") + msg('H', ""), 'C'},
      {"simple COPY IN, data", msg('Q', cstr("COPY it_clean FROM STDIN")), 'G', msg('d', "1\n"), 0},
      {"Parse/Bind/Execute without Sync", parse("", "select 1") + bind("", "") + execute(""), 0,
       msg('H', ""), 'C'},
      {"error before Sync", parse("", "select nope") + bind("", "") + execute(""), 0, msg('H', ""),
       'E'},
      {"row-limited Execute, then gone",
       parse("", "select generate_series(1, 10)") + bind("", "") + execute("", 2) + msg('H', ""),
       's', "", 0},
      {"open transaction with a temp table and a SET",
       msg('Q', cstr("BEGIN; CREATE TEMP TABLE t_gone (x int); SET application_name = 'x'")), 'Z',
       "", 0},
      {"query sent, answer never read", msg('Q', cstr("select pg_sleep(0.2)")), 0, "", 0},
      {"half a message", std::string("Q") + be32(100) + "select", 0, "", 0},
  };
  for (bool abrupt : {true, false}) {
    for (const Step& st : steps) {
      std::string step = st.name;
      CAPTURE(step);
      CAPTURE(abrupt);
      {
        Raw r = raw_login(p);
        REQUIRE(r.send_bytes(st.before));
        if (st.wait_for != 0) {
          auto got = r.read_until(st.wait_for, 5);
          REQUIRE(!got.empty());
          CHECK(got.back().type == st.wait_for);
        }
        if (!st.after.empty()) REQUIRE(r.send_bytes(st.after));
        if (st.wait_after != 0) {
          auto got = r.read_until(st.wait_after, 5);
          REQUIRE(!got.empty());
          CHECK(got.back().type == st.wait_after);
        }
        leave(r, abrupt);
      }
      next_client_gets_clean_server(p);
    }
  }
  Conn c = connect(p.conninfo());
  exec_ok(c.get(), "DROP TABLE it_clean");
}

}  // namespace it
