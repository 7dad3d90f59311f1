// Fault tests (issue 9): a client that leaves at any point of any protocol flow hands the next
// client a clean server; a minute of random disconnects and terminated backends leaves the pools
// idle and consistent with no cross-talk; pre-login, pipelined and never-reading clients keep
// the pooler's memory bounded. Run alone with `build/integration_tests -ts=faults`.
//
// Knobs (environment, for longer runs): FAULTS_CHECK_TIMEOUT (s, next-client checks, 3),
// FAULTS_MAX_FAILURES (per matrix case, 12), FAULTS_MATRIX_SECONDS (per matrix case, 50),
// FAULTS_SEED, FAULTS_SOAK_SECONDS (20), FAULTS_SOAK_CLIENTS (64), FAULTS_SOAK_POOL (8),
// FAULTS_KILL_MS (200), FAULTS_QUERY_TIMEOUT (s, soak queries, 15), FAULTS_SETTLE_SECONDS (10),
// FAULTS_XTALK_CLIENTS (64), FAULTS_XTALK_TXNS (300), FAULTS_PRELOGIN_CONNS (200),
// FAULTS_PIPELINE_SYNCS (600000), FAULTS_FLOOD_SECONDS (4), FAULTS_EXTRA_CONFIG (lines added
// to [pgbouncer] for the disconnect matrix, e.g. $'cache_unnamed_statements = 1\n').
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

TEST_SUITE_BEGIN("faults");

int env_int(const char* name, int def) {
  const char* e = getenv(name);
  return e && *e ? atoi(e) : def;
}

double env_double(const char* name, double def) {
  const char* e = getenv(name);
  return e && *e ? atof(e) : def;
}

// ---------------------------------------------------------------------------------------------
// Sockets: leaving without Terminate, and raw access to an authenticated session.

// Makes a libpq connection's socket go away without libpq sending Terminate on it: the fd
// number libpq holds is pointed at a throwaway socketpair first, so PQfinish writes its 'X'
// there. With rst, SO_LINGER 0 turns the close into a TCP RST.
void drop_conn(Conn& c, bool rst) {
  if (!c) return;
  int fd = PQsocket(c.get());
  if (fd >= 0) {
    if (rst) {
      linger l{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0) {
      dup2(sp[0], fd);  // closes the TCP socket (its last reference)
      close(sp[0]);
      c.reset();
      close(sp[1]);
      return;
    }
    shutdown(fd, SHUT_RDWR);
  }
  c.reset();
}

// Takes over a libpq connection's authenticated socket as the only reference to it (unlike
// Raw::from_libpq, closing the Raw really closes the connection, and no Terminate is sent).
Raw take_socket(Conn c) {
  int fd = dup(PQsocket(c.get()));
  REQUIRE(fd >= 0);
  int sp[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
  dup2(sp[0], PQsocket(c.get()));
  close(sp[0]);
  c.reset();
  close(sp[1]);
  return Raw(fd);
}

// Leaves a raw session: abruptly (RST) or politely (Terminate, then close).
void hang_up(Raw& r, bool rst) {
  if (r.fd() < 0) return;
  if (rst) {
    linger l{1, 0};
    setsockopt(r.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  } else {
    (void)r.send_msg('X', "");
  }
  r.close_fd();
}

void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

// ---------------------------------------------------------------------------------------------
// Bounded libpq requests (a pooler that never answers fails the check instead of hanging).

struct Reply {
  bool timed_out = false;
  bool ok = false;               // every result COMMAND_OK / TUPLES_OK
  bool conn_bad = false;         // the connection is gone afterwards
  bool copy = false;             // a COPY started (the reply stops there)
  std::string sqlstate;          // of the first error
  std::string error;             // message of the first error
  std::vector<std::string> row;  // first row of the last result with rows
  std::string value() const { return row.empty() ? "<no row>" : row[0]; }
  std::string describe() const {
    if (timed_out) return "no answer (timeout)";
    if (!ok) return "error " + sqlstate + ": " + error;
    std::string s;
    for (size_t i = 0; i < row.size(); ++i) s += (i ? "|" : "") + row[i];
    return row.empty() ? "<no row>" : s;
  }
};

// Collects the results of what was just sent with a PQsend* call.
Reply await_reply(PGconn* c, double timeout_s) {
  Reply out;
  auto t0 = Clock::now();
  bool first_error = true;
  bool any = false;
  for (;;) {
    while (PQisBusy(c)) {
      double left = timeout_s - seconds_since(t0);
      if (left <= 0) {
        out.timed_out = true;
        out.ok = false;
        return out;
      }
      pollfd pf{PQsocket(c), POLLIN, 0};
      poll(&pf, 1, std::min(100, static_cast<int>(left * 1000) + 1));
      if (!PQconsumeInput(c)) break;
    }
    PGresult* res = PQgetResult(c);
    if (!res) break;
    Result r(res);
    any = true;
    auto st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK && PQntuples(res) > 0) {
      out.row.clear();
      for (int i = 0; i < PQnfields(res); ++i)
        out.row.push_back(PQgetisnull(res, 0, i) ? "<NULL>" : PQgetvalue(res, 0, i));
    } else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && first_error) {
      first_error = false;
      const char* s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      out.sqlstate = s ? s : "";
      out.error = PQresultErrorMessage(res);
      if (out.error.empty()) out.error = PQerrorMessage(c);
      while (!out.error.empty() && out.error.back() == '\n') out.error.pop_back();
    }
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      out.copy = true;
      break;
    }
  }
  out.ok = any && first_error;
  if (!any) {
    out.error = PQerrorMessage(c);
    while (!out.error.empty() && out.error.back() == '\n') out.error.pop_back();
  }
  out.conn_bad = PQstatus(c) == CONNECTION_BAD;
  return out;
}

Reply query(PGconn* c, const std::string& sql, double timeout_s) {
  if (!PQsendQuery(c, sql.c_str())) {
    Reply r;
    r.error = std::string("send failed: ") + PQerrorMessage(c);
    r.conn_bad = PQstatus(c) == CONNECTION_BAD;
    return r;
  }
  return await_reply(c, timeout_s);
}

Reply query_params(PGconn* c, const std::string& sql, const std::vector<std::string>& params,
                   double timeout_s) {
  std::vector<const char*> v;
  for (const auto& p : params) v.push_back(p.c_str());
  if (!PQsendQueryParams(c, sql.c_str(), static_cast<int>(v.size()), nullptr, v.data(), nullptr,
                         nullptr, 0)) {
    Reply r;
    r.error = std::string("send failed: ") + PQerrorMessage(c);
    r.conn_bad = PQstatus(c) == CONNECTION_BAD;
    return r;
  }
  return await_reply(c, timeout_s);
}

// Collects up to 10 messages from many threads, and counts all.
struct Errors {
  std::mutex mu;
  std::vector<std::string> list;
  std::atomic<int> count{0};
  void add(const std::string& e) {
    if (count++ < 10) {
      std::lock_guard<std::mutex> lk(mu);
      list.push_back(e);
    }
  }
  std::string text() {
    std::lock_guard<std::mutex> lk(mu);
    std::string s;
    for (const auto& e : list) s += "  " + e + "\n";
    return s;
  }
};

// Terminates every backend of md5user in testdb (recovery after a poisoned pool).
void terminate_test_backends() {
  std::string err;
  Conn su = try_connect(superuser_conninfo("postgres"), &err);
  if (!su) return;
  Result r(PQexec(su.get(),
                  "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = "
                  "'md5user' AND backend_type = 'client backend'"));
}

// Samples a process's VmRSS every 10 ms and keeps the maximum.
class RssSampler {
 public:
  explicit RssSampler(pid_t pid) : pid_(pid) {
    if (pid_ <= 0) return;
    max_ = vm_rss_kb(pid_);
    th_ = std::thread([this] {
      while (!stop_) {
        long v = vm_rss_kb(pid_);
        if (v > max_) max_ = v;
        sleep_ms(10);
      }
    });
  }
  ~RssSampler() { stop(); }
  long stop() {
    stop_ = true;
    if (th_.joinable()) th_.join();
    return max_;
  }
  long max() const { return max_; }

 private:
  pid_t pid_;
  std::atomic<bool> stop_{false};
  std::atomic<long> max_{0};
  std::thread th_;
};

// ---------------------------------------------------------------------------------------------
// 1. Disconnect matrix.

std::string m_query(const std::string& sql) {
  return msg('Q', cstr(sql));
}
std::string m_parse(const std::string& name, const std::string& sql) {
  return msg('P', cstr(name) + cstr(sql) + be16(0));
}
std::string m_bind(const std::string& stmt, const std::vector<std::string>& params = {}) {
  std::string b = cstr("") + cstr(stmt) + be16(0) + be16(static_cast<uint16_t>(params.size()));
  for (const auto& p : params) b += be32(static_cast<uint32_t>(p.size())) + p;
  return msg('B', b + be16(0));
}
std::string m_describe_portal() {
  return msg('D', "P" + cstr(""));
}
std::string m_execute(uint32_t max_rows = 0) {
  return msg('E', cstr("") + be32(max_rows));
}
std::string m_sync() {
  return msg('S', "");
}
std::string m_flush() {
  return msg('H', "");
}

// One client message (or a pure read) of the scripted session.
struct Step {
  std::string label;
  std::string bytes;   // what the client sends ("" = nothing, only read)
  std::string until;   // answer message types to read up to, in order ("" = read nothing)
  std::string expect;  // types of the answer in a complete run, ParameterStatus and Notice
                       // left out; a leading '~' compares with runs of a type collapsed
};

// The session's rows in fx_copy carry `mark` (unique per cut) so that the next client can
// tell which of them PostgreSQL committed.
std::vector<Step> session_script(const std::string& mark) {
  const std::string copy_out_small = "copy (select g from generate_series(1, 3) g) to stdout";
  const std::string copy_out_big =
      "copy (select g, repeat('x', 300) from generate_series(1, 5000) g) to stdout";
  const std::string tmp_insert = "insert into fx_tmp values (1)";
  // Large messages sent in two halves: a cut between them leaves a partial message.
  const std::string big(300000, 'x');
  const std::string big_query = m_query("select length('" + big + "')");
  const std::string big_bind = m_bind("", {big});
  const std::string big_copy = msg('d', "5\t" + big + "\n");
  auto half1 = [](const std::string& m) { return m.substr(0, m.size() / 2); };
  auto half2 = [](const std::string& m) { return m.substr(m.size() / 2); };
  std::vector<Step> s = {
      // A. Simple query.
      {"Q select 1", m_query("select 1"), "Z", "TDCZ"},
      {"big Q, first half", half1(big_query), "", ""},
      {"big Q, second half", half2(big_query), "Z", "TDCZ"},
      // B. Extended query, one segment.
      {"P unnamed", m_parse("", "select $1::int + 1"), "", ""},
      {"B", m_bind("", {"41"}), "", ""},
      {"D portal", m_describe_portal(), "", ""},
      {"E", m_execute(), "", ""},
      {"S", m_sync(), "Z", "12TDCZ"},
      {"P length($1)", m_parse("", "select length($1)"), "", ""},
      {"big B, first half", half1(big_bind), "", ""},
      {"big B, second half", half2(big_bind), "", ""},
      {"E length($1)", m_execute(), "", ""},
      {"S length($1)", m_sync(), "Z", "12DCZ"},
      // C. A pipeline of two segments sent before reading.
      {"pipeline P #1", m_parse("", "select 2"), "", ""},
      {"pipeline B #1", m_bind(""), "", ""},
      {"pipeline E #1", m_execute(), "", ""},
      {"pipeline S #1", m_sync(), "", ""},
      {"pipeline P #2", m_parse("", "select 3"), "", ""},
      {"pipeline B #2", m_bind(""), "", ""},
      {"pipeline E #2", m_execute(), "", ""},
      {"pipeline S #2", m_sync(), "ZZ", "12DCZ12DCZ"},
      // D. A named statement, Flush without Sync.
      {"P fx_stmt", m_parse("fx_stmt", "select 'stmt'::text"), "", ""},
      {"H after P", m_flush(), "1", "1"},
      {"B fx_stmt", m_bind("fx_stmt"), "", ""},
      {"E fx_stmt", m_execute(), "", ""},
      {"H after E", m_flush(), "C", "2DC"},
      {"S after flushes", m_sync(), "Z", "Z"},
      // An INSERT executed in the implicit transaction, flushed but not yet synced: a client
      // leaving here must not have it committed (PostgreSQL rolls it back).
      {"P unsynced insert", m_parse("", "insert into fx_copy values (0, '" + mark + "-ins')"), "",
       ""},
      {"B unsynced insert", m_bind(""), "", ""},
      {"E unsynced insert", m_execute(), "", ""},
      {"H unsynced insert", m_flush(), "C", "12C"},
      {"S unsynced insert", m_sync(), "Z", "Z"},
      // E. Row-limited Execute: PortalSuspended, then more.
      {"P 5 rows", m_parse("", "select g from generate_series(1, 5) g"), "", ""},
      {"B 5 rows", m_bind(""), "", ""},
      {"E max 2", m_execute(2), "", ""},
      {"H suspended #1", m_flush(), "s", "12DDs"},
      {"E max 2 again", m_execute(2), "", ""},
      {"H suspended #2", m_flush(), "s", "DDs"},
      {"E rest", m_execute(0), "", ""},
      {"S after portal", m_sync(), "Z", "DCZ"},
      // F. An error inside a pipeline, then messages PostgreSQL skips until Sync.
      {"P failing", m_parse("", "select 1 / (g - 1) from generate_series(1, 2) g"), "", ""},
      {"B failing", m_bind(""), "", ""},
      {"E failing", m_execute(), "", ""},
      {"H error", m_flush(), "E", "12E"},
      {"P skipped", m_parse("", "select 99"), "", ""},
      {"B skipped", m_bind(""), "", ""},
      {"E skipped", m_execute(), "", ""},
      {"S after error", m_sync(), "Z", "Z"},
      // G. A transaction with a temp table, settings, an SQL PREPARE and an error.
      {"Q begin", m_query("begin"), "Z", "CZ"},
      {"Q create temp table", m_query("create temp table fx_tmp (a int) on commit drop"), "Z",
       "CZ"},
      {"Q set search_path", m_query("set search_path = fx_nowhere, public"), "Z", "CZ"},
      {"Q set application_name", m_query("set application_name = 'fx_leak'"), "Z", "CZ"},
      {"P insert (in tx)", m_parse("", tmp_insert), "", ""},
      {"B insert (in tx)", m_bind(""), "", ""},
      {"E insert (in tx)", m_execute(), "", ""},
      {"S insert (in tx)", m_sync(), "Z", "12CZ"},
      {"Q prepare fx_sqlprep", m_query("prepare fx_sqlprep as select 'sqlprep'::text"), "Z", "CZ"},
      {"Q error in tx", m_query("select 1/0"), "Z", "EZ"},
      {"Q rollback", m_query("rollback"), "Z", "CZ"},
      // H. COPY FROM STDIN, simple protocol: CopyDone, then CopyFail.
      {"Q copy from stdin", m_query("copy fx_copy from stdin"), "G", "G"},
      {"CopyData", msg('d', "1\t" + mark + "-c1\n"), "", ""},
      {"big CopyData, first half", half1(big_copy), "", ""},
      {"big CopyData, second half", half2(big_copy), "", ""},
      {"CopyDone", msg('c', ""), "Z", "CZ"},
      {"Q copy from stdin (to fail)", m_query("copy fx_copy from stdin"), "G", "G"},
      {"CopyData (to fail)", msg('d', "2\t" + mark + "-c2\n"), "", ""},
      {"CopyFail", msg('f', cstr("fx abort")), "Z", "EZ"},
      // I. COPY FROM STDIN, extended protocol (the Sync sent with Execute is ignored in copy
      // mode; a second Sync ends the command): CopyDone, then CopyFail.
      {"P copy", m_parse("", "copy fx_copy from stdin"), "", ""},
      {"B copy", m_bind(""), "", ""},
      {"E copy", m_execute(), "", ""},
      {"S copy (ignored)", m_sync(), "G", "12G"},
      {"ext CopyData", msg('d', "3\t" + mark + "-c3\n"), "", ""},
      {"ext CopyDone", msg('c', ""), "", ""},  // CommandComplete waits for a flush
      {"ext S after CopyDone", m_sync(), "Z", "CZ"},
      {"P copy (to fail)", m_parse("", "copy fx_copy from stdin"), "", ""},
      {"B copy (to fail)", m_bind(""), "", ""},
      {"E copy (to fail)", m_execute(), "", ""},
      {"S copy (to fail, ignored)", m_sync(), "G", "12G"},
      {"ext CopyData (to fail)", msg('d', "4\t" + mark + "-c4\n"), "", ""},
      {"ext CopyFail", msg('f', cstr("fx abort")), "E", "E"},
      {"ext S after CopyFail", m_sync(), "Z", "Z"},
      // J. COPY TO STDOUT: simple, extended, and one left mid-stream.
      {"Q copy to stdout", m_query(copy_out_small), "Z", "HdddcCZ"},
      {"P copy out", m_parse("", copy_out_small), "", ""},
      {"B copy out", m_bind(""), "", ""},
      {"E copy out", m_execute(), "", ""},
      {"S copy out", m_sync(), "Z", "12HdddcCZ"},
      {"Q big copy to stdout", m_query(copy_out_big), "H", "H"},
      {"(read the big copy)", "", "Z", "~dcCZ"},
      // K. A query whose answer the client does not wait for.
      {"Q pg_sleep, unread", m_query("select pg_sleep(0.1)"), "", ""},
      {"(read pg_sleep)", "", "Z", "TDCZ"},
      // L. The named statement again, in a later transaction.
      {"B fx_stmt again", m_bind("fx_stmt"), "", ""},
      {"E fx_stmt again", m_execute(), "", ""},
      {"S fx_stmt again", m_sync(), "Z", "2DCZ"},
      // M. A multi-statement query that leaves a transaction open.
      {"Q begin; create temp; select",
       m_query("begin; create temp table fx_tmp2 (a int); select 1"), "Z", "CCTDCZ"},
      {"Q rollback #2", m_query("rollback"), "Z", "CZ"},
  };
  return s;
}

std::string collapse_runs(const std::string& s) {
  std::string o;
  for (char ch : s)
    if (o.empty() || o.back() != ch) o.push_back(ch);
  return o;
}

struct SessionRun {
  std::vector<std::string> answers;  // per step sent, types read (S/N left out)
  std::vector<std::string> details;  // per step, the ErrorResponses read
  std::string problem;               // first missing answer or send failure ("" = none)
};

// Sends the first k steps of the script, reading each step's answers as told.
SessionRun run_prefix(Raw& r, const std::vector<Step>& steps, size_t k, double timeout_s) {
  SessionRun out;
  for (size_t i = 0; i < k && i < steps.size(); ++i) {
    const Step& st = steps[i];
    if (!st.bytes.empty() && !r.send_bytes(st.bytes)) {
      out.problem = "send failed at step " + std::to_string(i) + " (" + st.label + ")";
      break;
    }
    std::string got, detail;
    bool stop = false;
    for (char u : st.until) {
      for (;;) {
        Msg m;
        ReadStatus rs = r.read_msg(&m, timeout_s);
        if (rs != ReadStatus::Ok) {
          out.problem =
              std::string(rs == ReadStatus::Timeout ? "no '" : "connection lost before '") + u +
              "' after step " + std::to_string(i) + " (" + st.label + "); read so far: " + got +
              detail;
          stop = true;
          break;
        }
        if (m.type != 'S' && m.type != 'N') got.push_back(m.type);
        if (m.type == 'E') detail += " [" + m.field('C') + " " + m.field('M') + "]";
        if (m.type == u) break;
        // An error or ReadyForQuery ends what can come before the awaited message.
        if (u != 'Z' && u != 'E' && (m.type == 'Z' || m.type == 'E')) break;
        if (u == 'E' && m.type == 'Z') break;
      }
      if (stop) break;
    }
    out.answers.push_back(got);
    out.details.push_back(detail);
    if (stop) break;
  }
  return out;
}

size_t step_index(const std::vector<Step>& steps, const std::string& label) {
  for (size_t i = 0; i < steps.size(); ++i)
    if (steps[i].label == label) return i;
  FAIL("no step " << label);
  return 0;
}

// The marked rows PostgreSQL has committed once the first k steps were sent and answered
// ("b=count,..." in order of b, "<NULL>" for none): an implicit transaction commits at its
// Sync, a COPY at CopyDone (simple) or at the Sync after it (extended); a CopyFail commits
// nothing, nor does a client that leaves before those points.
std::string committed_rows(const std::vector<Step>& steps, size_t k, const std::string& mark) {
  std::vector<std::pair<std::string, std::string>> commits = {
      {"c1", "CopyDone"}, {"c3", "ext S after CopyDone"}, {"ins", "S unsynced insert"}};
  std::string out;
  for (const auto& [suffix, label] : commits) {
    if (k <= step_index(steps, label)) continue;
    out += (out.empty() ? "" : ",") + mark + "-" + suffix + "=1";
  }
  return out.empty() ? "<NULL>" : out;
}

struct Baseline {
  std::string search_path;
  std::string application_name;
};

std::string next_conninfo(const Pooler& p) {
  return p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable connect_timeout=5");
}

// What the next client on a pool of one must find: a prompt answer, no open transaction, no
// temp table, default settings, and no statement of the previous client under its name.
// Returns the failed checks ("" = clean).
std::string check_next_client(const Pooler& p, const Baseline& base, double timeout_s,
                              const std::string& mark, const std::string& want_rows) {
  std::string err;
  auto t0 = Clock::now();
  Conn c = try_connect(next_conninfo(p), &err);
  if (!c) return "connect failed after " + std::to_string(seconds_since(t0)) + " s: " + err;
  PGconn* pc = c.get();
  std::string bad;
  Reply r = query(pc, "select 42", timeout_s);
  if (r.timed_out) return "select 42: no answer within " + std::to_string(timeout_s) + " s";
  if (!r.ok || r.value() != "42") bad += "select 42 -> " + r.describe() + "; ";
  if (PQtransactionStatus(pc) != PQTRANS_IDLE)
    bad += "transaction status after select 42 is " + std::to_string(PQtransactionStatus(pc)) +
           " (not idle); ";
  r = query(pc, "select pg_current_xact_id_if_assigned() is null, now() = statement_timestamp()",
            timeout_s);
  if (r.timed_out) return bad + "xact check: no answer";
  if (!r.ok || r.row != std::vector<std::string>{"t", "t"})
    bad +=
        "open transaction (xid unassigned, now()=statement_timestamp()) -> " + r.describe() + "; ";
  r = query(pc, "select count(*) from pg_class where relnamespace = pg_my_temp_schema()",
            timeout_s);
  if (r.timed_out) return bad + "temp check: no answer";
  if (!r.ok || r.value() != "0") bad += "temp tables left -> " + r.describe() + "; ";
  r = query(pc, "select current_setting('search_path'), current_setting('application_name')",
            timeout_s);
  if (r.timed_out) return bad + "settings check: no answer";
  if (!r.ok || r.row != std::vector<std::string>{base.search_path, base.application_name})
    bad += "settings (search_path|application_name) -> " + r.describe() + ", expected " +
           base.search_path + "|" + base.application_name + "; ";
  r = query(pc, "execute fx_sqlprep", timeout_s);
  if (r.timed_out) return bad + "execute fx_sqlprep: no answer";
  if (r.sqlstate != "26000") bad += "execute fx_sqlprep -> " + r.describe() + " (want 26000); ";
  if (!PQsendQueryPrepared(pc, "fx_stmt", 0, nullptr, nullptr, nullptr, 0)) {
    bad += std::string("send Bind fx_stmt failed: ") + PQerrorMessage(pc) + "; ";
  } else {
    r = await_reply(pc, timeout_s);
    if (r.timed_out) return bad + "Bind fx_stmt: no answer";
    if (r.sqlstate != "26000") bad += "Bind fx_stmt -> " + r.describe() + " (want 26000); ";
  }
  r = query_params(pc,
                   "select string_agg(b || '=' || n, ',' order by b) from (select b, count(*) n "
                   "from fx_copy where b like $1 group by b) s",
                   {mark + "-%"}, timeout_s);
  if (r.timed_out) return bad + "rows check: no answer";
  if (!r.ok || r.value() != want_rows)
    bad += "committed rows -> " + r.describe() + ", expected " + want_rows + "; ";
  r = query(pc, "select 'still fine'", timeout_s);
  if (r.timed_out) return bad + "final select: no answer";
  if (!r.ok || r.value() != "still fine") bad += "final select -> " + r.describe() + "; ";
  return bad;
}

std::string mode_name(const Options& o, bool rst) {
  return o.pool_mode + "/" + (rst ? "RST" : "Terminate");
}

// Runs the scripted session cut after every step (0..N), leaving abruptly or politely, and
// checks the next client each time. A failure restarts the pooler so that later cuts are
// judged on their own.
void disconnect_matrix(const std::string& pool_mode, bool rst) {
  Options o;
  o.pool_mode = pool_mode;
  o.default_pool_size = 1;
  if (const char* extra = getenv("FAULTS_EXTRA_CONFIG")) o.extra_pgbouncer = extra;
  const double check_timeout = env_double("FAULTS_CHECK_TIMEOUT", 3);
  const int max_failures = env_int("FAULTS_MAX_FAILURES", 12);
  const double budget_s = env_double("FAULTS_MATRIX_SECONDS", 50);  // under the 90 s watchdog
  const std::string mode = mode_name(o, rst);
  auto pooler = std::make_unique<Pooler>(o);
  const std::vector<Step> steps = session_script("full");
  Baseline base;
  {
    Conn c = connect(next_conninfo(*pooler));
    exec_ok(c.get(), "create table if not exists fx_copy (a int, b text)");
    base.search_path = scalar(c.get(), "select current_setting('search_path')");
    base.application_name = scalar(c.get(), "select current_setting('application_name')");
  }
  // The complete session, read to the end: every answer as PostgreSQL gives it.
  size_t usable = steps.size();
  {
    Raw r = take_socket(connect(next_conninfo(*pooler)));
    SessionRun run = run_prefix(r, steps, steps.size(), 5);
    for (size_t i = 0; i < run.answers.size(); ++i) {
      const Step& st = steps[i];
      std::string got = run.answers[i];
      std::string want = st.expect;
      if (!want.empty() && want[0] == '~') {
        got = collapse_runs(got);
        want = want.substr(1);
      }
      CHECK_MESSAGE(got == want, "[" << mode << "] complete session, step " << i << " (" << st.label
                                     << "): answer " << run.answers[i] << run.details[i]
                                     << ", expected " << st.expect);
    }
    if (!run.problem.empty()) {
      FAIL_CHECK("[" << mode << "] complete session: " << run.problem);
      usable = run.answers.size();
    }
    hang_up(r, false);
    std::string bad = check_next_client(*pooler, base, check_timeout, "full",
                                        committed_rows(steps, steps.size(), "full"));
    CHECK_MESSAGE(bad.empty(), "[" << mode << "] after the complete session: " << bad);
    if (!bad.empty()) {
      pooler.reset();
      terminate_test_backends();
      pooler = std::make_unique<Pooler>(o);
    }
  }
  std::vector<std::string> failures;
  size_t cuts = 0;
  auto t0 = Clock::now();
  for (size_t k = 0; k <= usable; ++k) {
    if (static_cast<int>(failures.size()) >= max_failures || seconds_since(t0) > budget_s) {
      failures.push_back("stopped after " + std::to_string(failures.size()) + " failures and " +
                         std::to_string(seconds_since(t0)) + " s; cuts after step " +
                         std::to_string(k) + ".." + std::to_string(usable) + " not run");
      break;
    }
    ++cuts;
    std::string where =
        k == 0 ? std::string("right after login")
               : "after step " + std::to_string(k - 1) + " (" + steps[k - 1].label + ")";
    std::string err;
    Conn c = try_connect(next_conninfo(*pooler), &err);
    std::string bad;
    if (!c) {
      bad = "the session's own login failed: " + err;
    } else {
      const std::string mark = "k" + std::to_string(k);
      const std::vector<Step> cut_steps = session_script(mark);
      Raw r = take_socket(std::move(c));
      SessionRun run = run_prefix(r, cut_steps, k, check_timeout);
      hang_up(r, rst);
      if (!run.problem.empty()) bad = "session: " + run.problem + "; ";
      bad +=
          check_next_client(*pooler, base, check_timeout, mark, committed_rows(cut_steps, k, mark));
    }
    if (!bad.empty()) {
      failures.push_back("[" + mode + "] cut " + where + ": " + bad);
      pooler.reset();
      terminate_test_backends();
      pooler = std::make_unique<Pooler>(o);
    }
  }
  std::ostringstream all;
  for (const auto& f : failures) all << "  " << f << "\n";
  MESSAGE("[" << mode << "] " << cuts << " cuts of a " << steps.size() << "-step session in "
              << seconds_since(t0) << " s: " << failures.size() << " failed\n"
              << all.str());
  CHECK_MESSAGE(failures.empty(), "[" << mode << "] next client found an unclean server after "
                                      << failures.size() << " of " << cuts << " cuts:\n"
                                      << all.str());
  Conn c = connect(next_conninfo(*pooler));
  exec_ok(c.get(), "drop table if exists fx_copy");
}

TEST_CASE("faults: disconnect matrix, transaction mode, abrupt close (RST)") {
  disconnect_matrix("transaction", true);
}

TEST_CASE("faults: disconnect matrix, transaction mode, polite Terminate") {
  disconnect_matrix("transaction", false);
}

TEST_CASE("faults: disconnect matrix, session mode, abrupt close (RST)") {
  disconnect_matrix("session", true);
}

TEST_CASE("faults: disconnect matrix, session mode, polite Terminate") {
  disconnect_matrix("session", false);
}

// The known defect of issue 9 item 2, on its own for a readable failure: extended COPY FROM
// STDIN, CopyFail, disconnect without the second Sync; the next client's select 42 must answer.
TEST_CASE("faults: extended COPY, CopyFail, leave before Sync: the next client is answered") {
  Options o;
  o.default_pool_size = 1;
  Pooler p(o);
  {
    Conn c = connect(next_conninfo(p));
    exec_ok(c.get(), "create table if not exists fx_copy1 (a int, b text)");
  }
  for (bool rst : {false, true}) {
    CAPTURE(rst);
    Raw r = take_socket(connect(next_conninfo(p)));
    REQUIRE(r.send_bytes(m_parse("", "copy fx_copy1 from stdin") + m_bind("") + m_execute() +
                         m_sync()));
    Msg m;
    std::string types;
    while (r.read_msg(&m, 5) == ReadStatus::Ok) {
      types.push_back(m.type);
      if (m.type == 'G' || m.type == 'E' || m.type == 'Z') break;
    }
    REQUIRE(types == "12G");
    REQUIRE(r.send_bytes(msg('d', "1\tx\n") + msg('f', cstr("changed my mind"))));
    REQUIRE(r.read_msg(&m, 5) == ReadStatus::Ok);
    CHECK(m.type == 'E');
    hang_up(r, rst);
    Conn c = connect(next_conninfo(p));
    Reply q = query(c.get(), "select 42", 5);
    CHECK_MESSAGE(!q.timed_out, "select 42 hangs after the previous client's CopyFail ("
                                    << (rst ? "RST" : "Terminate") << ")");
    CHECK(q.value() == "42");
    if (q.timed_out) break;
  }
  Conn c = connect(next_conninfo(p));
  Reply q = query(c.get(), "drop table if exists fx_copy1", 5);
  CHECK(q.ok);
}

// ---------------------------------------------------------------------------------------------
// 2. Fault soak, then idle pools and a cross-talk check.

struct SoakStats {
  std::atomic<long> ok_actions{0}, reconnects{0}, aborts{0}, kills{0}, connect_failures{0};
  std::atomic<long> slow_actions{0};  // took over a second
  std::atomic<long> max_action_ms{0};
  std::mutex slow_mu;
  std::map<std::string, long> slow_by_kind;  // action kind -> count over a second
  void timed(const std::string& kind, double secs) {
    long ms = static_cast<long>(secs * 1000);
    long cur = max_action_ms.load();
    while (ms > cur && !max_action_ms.compare_exchange_weak(cur, ms)) {
    }
    if (secs > 1) {
      ++slow_actions;
      std::lock_guard<std::mutex> lk(slow_mu);
      ++slow_by_kind[kind];
    }
  }
  std::string slow_text() {
    std::lock_guard<std::mutex> lk(slow_mu);
    std::string s;
    for (const auto& [k, v] : slow_by_kind) s += " " + k + "=" + std::to_string(v);
    return s;
  }
  std::mutex mu;
  std::map<std::string, long> tolerated;  // sqlstate (or "conn lost") -> count
  void tolerate(const std::string& what) {
    std::lock_guard<std::mutex> lk(mu);
    ++tolerated[what];
  }
  std::string tolerated_text() {
    std::lock_guard<std::mutex> lk(mu);
    std::string s;
    for (const auto& [k, v] : tolerated) s += " " + k + "=" + std::to_string(v);
    return s.empty() ? " none" : s;
  }
};

// Errors a client may see while its server is terminated under it.
bool tolerated_error(const Reply& r) {
  if (r.conn_bad) return true;
  static const char* ok[] = {"57P01", "08006", "08003", "08000", "57P02", "57P03"};
  for (const char* s : ok)
    if (r.sqlstate == s) return true;
  return r.sqlstate.empty();  // libpq's own (connection lost)
}

// The soak's actions by the range of their random number (see SoakClient::act).
std::string kind_name(int a) {
  static const std::pair<int, const char*> kinds[] = {
      {18, "simple"},       {36, "extended"},        {50, "transaction"},
      {56, "error"},        {64, "pipeline"},        {70, "copy_in"},
      {76, "copy_out"},     {82, "leave_tx_abrupt"}, {88, "leave_pipeline"},
      {95, "leave_unread"}, {100, "leave_tx_polite"}};
  for (const auto& [limit, name] : kinds)
    if (a < limit) return name;
  return "?";
}

struct SoakClient {
  int id;
  std::mt19937_64 rng;
  const Pooler& p;
  double qt;
  SoakStats& st;
  Errors& errs;  // cross-talk, hangs, unexpected errors
  Conn c;
  long n = 0;
  std::string last_kind;

  std::string tag() { return "c" + std::to_string(id) + "-" + std::to_string(n); }
  int pick(int k) { return static_cast<int>(rng() % static_cast<uint64_t>(k)); }

  bool connect_now() {
    std::string err;
    auto t0 = Clock::now();
    c = try_connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"), &err);
    if (!c) {
      ++st.connect_failures;
      if (seconds_since(t0) >= 9.5)
        errs.add("client " + std::to_string(id) + " login hang: " + err);
      return false;
    }
    return true;
  }

  // Judges one reply; false when the connection is to be replaced.
  bool judge(const Reply& r, const std::string& what, const std::string& want_value = "",
             const std::string& want_state = "") {
    if (r.timed_out) {
      errs.add(tag() + " " + what + ": no answer within " + std::to_string(qt) + " s");
      return false;
    }
    if (!want_state.empty() && r.sqlstate == want_state) return true;
    if (r.ok) {
      if (!want_state.empty()) {
        errs.add(tag() + " " + what + ": succeeded, want error " + want_state);
        return false;
      }
      if (!want_value.empty() && r.value() != want_value) {
        errs.add("CROSS-TALK " + tag() + " " + what + ": got '" + r.value() + "', want '" +
                 want_value + "'");
        return false;
      }
      return true;
    }
    if (tolerated_error(r)) {
      st.tolerate(r.conn_bad ? "conn lost" : r.sqlstate.empty() ? "no sqlstate" : r.sqlstate);
      return false;
    }
    errs.add(tag() + " " + what + ": unexpected " + r.describe());
    return false;
  }

  void drop(bool rst) {
    drop_conn(c, rst);
    ++st.aborts;
  }

  // One action; false when the connection is gone (dropped on purpose or lost).
  bool act() {
    ++n;
    PGconn* pc = c.get();
    const std::string t = tag();
    int a = pick(100);
    last_kind = kind_name(a);
    if (a < 18) {  // simple
      return judge(query(pc, "select '" + t + "'::text", qt), "simple", t);
    }
    if (a < 36) {  // extended
      return judge(query_params(pc, "select $1::text", {t}, qt), "extended", t);
    }
    if (a < 50) {  // transaction, separate round trips
      if (!judge(query(pc, "begin", qt), "begin")) return false;
      if (!judge(query(pc,
                       "insert into fx_soak values (" + std::to_string(id) + ", " +
                           std::to_string(n) + ", 'committed')",
                       qt),
                 "insert"))
        return false;
      if (!judge(query_params(pc, "select $1::text", {t}, qt), "select in tx", t)) return false;
      if (!judge(query(pc, "commit", qt), "commit")) return false;
      if (PQtransactionStatus(pc) != PQTRANS_IDLE) {
        errs.add(t + ": not idle after commit");
        return false;
      }
      return true;
    }
    if (a < 56) {  // an error, then the session goes on
      if (!judge(query(pc, "select 1 / (g - 1) from generate_series(1, 2) g", qt), "error", "",
                 "22012"))
        return false;
      return judge(query(pc, "select '" + t + "'::text", qt), "after error", t);
    }
    if (a < 64) {  // pipeline, read completely
      return pipeline(false);
    }
    if (a < 70) {  // COPY FROM STDIN (simple or extended), completed or left mid-copy
      return copy_in();
    }
    if (a < 76) {  // COPY TO STDOUT, read completely or left mid-stream
      return copy_out();
    }
    if (a < 82) {  // leave mid-transaction, abruptly
      if (!judge(query(pc, "begin", qt), "begin")) return false;
      if (!judge(query(pc,
                       "insert into fx_soak values (" + std::to_string(id) + ", " +
                           std::to_string(n) + ", 'aborted')",
                       qt),
                 "insert"))
        return false;
      drop(pick(2) == 0);
      return false;
    }
    if (a < 88) {  // leave mid-pipeline
      return pipeline(true);
    }
    if (a < 95) {  // send without reading the answer, then leave (abrupt or polite)
      const char* sql = pick(2) ? "select pg_sleep(0.02), 'unread'"
                                : "select repeat('x', 1000) from generate_series(1, 2000)";
      PQsendQuery(pc, sql);
      PQflush(pc);
      if (pick(2)) sleep_ms(pick(20));
      if (pick(3) == 0) {
        c.reset();  // Terminate
        ++st.aborts;
      } else {
        drop(pick(2) == 0);
      }
      return false;
    }
    // leave mid-transaction politely (Terminate)
    if (!judge(query(pc, "begin", qt), "begin")) return false;
    if (!judge(query(pc,
                     "insert into fx_soak values (" + std::to_string(id) + ", " +
                         std::to_string(n) + ", 'aborted')",
                     qt),
               "insert"))
      return false;
    c.reset();
    ++st.aborts;
    return false;
  }

  // Leaves at once: Terminate, FIN without Terminate, or RST.
  void leave_somehow() {
    int how = pick(3);
    if (how == 0) {
      c.reset();
      ++st.aborts;
    } else {
      drop(how == 1);
    }
  }

  bool copy_in() {
    PGconn* pc = c.get();
    const bool finish = pick(3) == 0;
    const char* sql = "copy fx_soak from stdin";
    int sent = pick(2) ? PQsendQueryParams(pc, sql, 0, nullptr, nullptr, nullptr, nullptr, 0)
                       : PQsendQuery(pc, sql);
    if (!sent) {
      st.tolerate("conn lost");
      return false;
    }
    Reply r = await_reply(pc, qt);
    if (!r.copy) {
      judge(r, "copy in start");
      return false;
    }
    std::string rows;
    for (int i = 0; i < 3; ++i)
      rows += std::to_string(id) + "\t" + std::to_string(n) + "\t" +
              (finish ? "copied" : "aborted") + "\n";
    PQsetnonblocking(pc, 1);
    PQputCopyData(pc, rows.data(), static_cast<int>(rows.size()));
    PQflush(pc);
    if (!finish) {
      if (pick(2)) sleep_ms(pick(10));
      leave_somehow();
      return false;
    }
    PQputCopyEnd(pc, nullptr);
    auto t0 = Clock::now();
    while (PQflush(pc) == 1 && seconds_since(t0) < qt) {
      pollfd pf{PQsocket(pc), POLLOUT, 0};
      poll(&pf, 1, 50);
    }
    PQsetnonblocking(pc, 0);
    return judge(await_reply(pc, qt), "copy in end");
  }

  bool copy_out() {
    PGconn* pc = c.get();
    const bool finish = pick(3) == 0;
    if (!PQsendQuery(
            pc, "copy (select g, repeat('x', 200) from generate_series(1, 5000) g) to stdout")) {
      st.tolerate("conn lost");
      return false;
    }
    Reply r = await_reply(pc, qt);
    if (!r.copy) {
      judge(r, "copy out start");
      return false;
    }
    int want = finish ? 1 << 30 : pick(50);  // finish: up to the end of the data
    int rows = 0;
    auto t0 = Clock::now();
    while (rows < want) {
      if (seconds_since(t0) > qt) {
        errs.add(tag() + " copy out: " + std::to_string(rows) + " rows in " + std::to_string(qt) +
                 " s");
        return false;
      }
      char* buf = nullptr;
      int got = PQgetCopyData(pc, &buf, 1);
      if (got > 0) {
        PQfreemem(buf);
        ++rows;
        continue;
      }
      if (got == 0) {
        pollfd pf{PQsocket(pc), POLLIN, 0};
        poll(&pf, 1, 50);
        if (!PQconsumeInput(pc)) break;
        continue;
      }
      break;  // -1: done early, -2: error
    }
    if (!finish) {
      leave_somehow();
      return false;
    }
    Reply done = await_reply(pc, qt);
    if (!judge(done, "copy out end")) return false;
    if (rows != 5000) {
      errs.add(tag() + " copy out: " + std::to_string(rows) + " rows, want 5000");
      return false;
    }
    return true;
  }

  // A libpq pipeline of two segments; with leave, the client goes away before reading it all
  // (the second segment opens a transaction that is never closed).
  bool pipeline(bool leave) {
    PGconn* pc = c.get();
    const std::string t = tag();
    if (PQenterPipelineMode(pc) != 1) return false;
    std::vector<std::string> want = {t + "a", t + "b"};
    for (const auto& v : want) {
      const char* pv[1] = {v.c_str()};
      PQsendQueryParams(pc, "select $1::text", 1, nullptr, pv, nullptr, nullptr, 0);
    }
    PQpipelineSync(pc);
    if (leave) {
      PQsendQueryParams(pc, "begin", 0, nullptr, nullptr, nullptr, nullptr, 0);
      std::string ins = "insert into fx_soak values (" + std::to_string(id) + ", " +
                        std::to_string(n) + ", 'aborted')";
      PQsendQueryParams(pc, ins.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0);
      PQsendFlushRequest(pc);
      PQflush(pc);
      sleep_ms(pick(10));
      if (pick(3) == 0) {
        c.reset();
        ++st.aborts;
      } else {
        drop(pick(2) == 0);
      }
      return false;
    }
    // Expect: T, null, T, null, SYNC.
    size_t got = 0;
    bool sync = false;
    auto t0 = Clock::now();
    while (!sync) {
      if (seconds_since(t0) > qt) {
        errs.add(t + " pipeline: no complete answer within " + std::to_string(qt) + " s");
        return false;
      }
      if (!PQconsumeInput(pc)) {
        st.tolerate("conn lost");
        return false;
      }
      int nulls = 0;
      while (!sync && !PQisBusy(pc)) {
        PGresult* res = PQgetResult(pc);
        if (!res) {
          if (++nulls > 4) break;
          continue;
        }
        nulls = 0;
        Result r(res);
        auto s = PQresultStatus(res);
        if (s == PGRES_PIPELINE_SYNC) {
          sync = true;
        } else if (s == PGRES_TUPLES_OK && got < want.size()) {
          std::string v = PQntuples(res) ? PQgetvalue(res, 0, 0) : "<no row>";
          if (v != want[got]) {
            errs.add("CROSS-TALK " + t + " pipeline: got '" + v + "', want '" + want[got] + "'");
            return false;
          }
          ++got;
        } else {
          Reply rep;
          const char* ss = PQresultErrorField(res, PG_DIAG_SQLSTATE);
          rep.sqlstate = ss ? ss : "";
          rep.error = PQresultErrorMessage(res);
          rep.conn_bad = PQstatus(pc) == CONNECTION_BAD;
          if (s == PGRES_PIPELINE_ABORTED) rep.sqlstate = "aborted pipeline";
          if (tolerated_error(rep)) {
            st.tolerate(rep.conn_bad ? "conn lost" : rep.sqlstate);
          } else {
            errs.add(t + " pipeline: unexpected " + rep.describe());
          }
          return false;
        }
      }
      if (PQstatus(pc) == CONNECTION_BAD) {
        st.tolerate("conn lost");
        return false;
      }
      if (!sync) {
        pollfd pf{PQsocket(pc), POLLIN, 0};
        poll(&pf, 1, 50);
      }
    }
    if (got != want.size()) {
      errs.add(t + " pipeline: " + std::to_string(got) + " results before the sync");
      return false;
    }
    return PQexitPipelineMode(pc) == 1;
  }

  void run(Clock::time_point deadline) {
    while (Clock::now() < deadline) {
      if (!c) {
        if (!connect_now()) {
          sleep_ms(20);
          continue;
        }
        ++st.reconnects;
      }
      auto t0 = Clock::now();
      bool ok = act();
      st.timed(last_kind, seconds_since(t0));
      if (ok) {
        ++st.ok_actions;
      } else {
        c.reset();
      }
    }
    c.reset();
  }
};

struct PoolRow {
  std::map<std::string, long> v;
  long get(const std::string& k) const {
    auto it = v.find(k);
    return it == v.end() ? 0 : it->second;
  }
  std::string text() const {
    std::string s;
    for (const char* k :
         {"cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"})
      s += std::string(" ") + k + "=" + std::to_string(get(k));
    return s;
  }
};

// SHOW POOLS row of testdb/md5user (found=false when absent or the console failed).
PoolRow show_pools(PGconn* admin, bool* found) {
  PoolRow row;
  *found = false;
  if (!PQsendQuery(admin, "SHOW POOLS")) return row;
  Result r;
  auto t0 = Clock::now();
  for (;;) {
    while (PQisBusy(admin)) {
      if (seconds_since(t0) > 5) return row;  // the console does not answer
      pollfd pf{PQsocket(admin), POLLIN, 0};
      poll(&pf, 1, 100);
      if (!PQconsumeInput(admin)) break;
    }
    PGresult* res = PQgetResult(admin);
    if (!res) break;
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
      r.reset(res);
    else
      PQclear(res);
  }
  if (!r) return row;
  int d = PQfnumber(r.get(), "database"), u = PQfnumber(r.get(), "user");
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    if (std::string(PQgetvalue(r.get(), i, d)) != "testdb" ||
        std::string(PQgetvalue(r.get(), i, u)) != "md5user")
      continue;
    for (int f = 0; f < PQnfields(r.get()); ++f)
      row.v[PQfname(r.get(), f)] = atol(PQgetvalue(r.get(), i, f));
    *found = true;
  }
  return row;
}

// Runs the cross-talk check: clients x txns transactions, every answer must be the client's.
void cross_talk(const Pooler& p, int clients, int txns, double qt) {
  Errors errs;
  std::atomic<long> done{0};
  std::vector<std::thread> th;
  auto t0 = Clock::now();
  for (int i = 0; i < clients; ++i) {
    th.emplace_back([&, i] {
      std::string err;
      Conn c = try_connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"), &err);
      if (!c) {
        errs.add("xtalk client " + std::to_string(i) + " connect: " + err);
        return;
      }
      PGconn* pc = c.get();
      for (int s = 0; s < txns; ++s) {
        std::string t = std::to_string(i) + ":" + std::to_string(s);
        std::string where = "xtalk " + t;
        Reply r;
        if (s % 3 == 0) {
          r = query(pc, "select '" + t + "'::text, " + std::to_string(i), qt);
        } else if (s % 3 == 1) {
          r = query_params(pc, "select $1::text", {t}, qt);
        } else {
          Reply b = query(pc, "begin", qt);
          if (!b.ok) {
            errs.add(where + " begin: " + b.describe());
            return;
          }
          Reply set = query_params(pc, "select set_config('fx.tag', $1, true)", {t}, qt);
          if (!set.ok) {
            errs.add(where + " set_config: " + set.describe());
            return;
          }
          r = query(pc, "select current_setting('fx.tag')", qt);
          Reply e = query(pc, "commit", qt);
          if (!e.ok) {
            errs.add(where + " commit: " + e.describe());
            return;
          }
        }
        if (!r.ok) {
          errs.add(where + ": " + r.describe());
          return;
        }
        if (r.value() != t) {
          errs.add("CROSS-TALK " + where + ": got '" + r.value() + "'");
          return;
        }
        if (PQtransactionStatus(pc) != PQTRANS_IDLE) {
          errs.add(where + ": not idle");
          return;
        }
        ++done;
      }
    });
  }
  for (auto& x : th) x.join();
  MESSAGE("cross-talk: " << done.load() << " of " << clients * txns << " transactions in "
                         << seconds_since(t0) << " s");
  CHECK_MESSAGE(errs.count.load() == 0, "cross-talk check: " << errs.count.load() << " problems:\n"
                                                             << errs.text());
  CHECK(done.load() == static_cast<long>(clients) * txns);
}

TEST_CASE(
    "faults: soak with random disconnects and terminated backends, then idle and no "
    "cross-talk") {
  const int pool = env_int("FAULTS_SOAK_POOL", 8);
  const int nclients = env_int("FAULTS_SOAK_CLIENTS", 64);
  const double seconds = env_double("FAULTS_SOAK_SECONDS", 20);
  const double qt = env_double("FAULTS_QUERY_TIMEOUT", 15);
  const int kill_ms = env_int("FAULTS_KILL_MS", 200);
  const char* seed_env = getenv("FAULTS_SEED");
  uint64_t seed = seed_env ? strtoull(seed_env, nullptr, 10) : 0;
  if (seed == 0) seed = static_cast<uint64_t>(time(nullptr)) ^ static_cast<uint64_t>(getpid());
  MESSAGE("soak seed: FAULTS_SEED=" << seed);
  Options o;
  o.default_pool_size = pool;
  o.workers = 2;
  Pooler p(o);
  {
    Conn c = connect(p.conninfo());
    exec_ok(c.get(), "drop table if exists fx_soak");
    exec_ok(c.get(), "create table fx_soak (client int, seq int, kind text)");
  }
  SoakStats st;
  Errors errs;
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(seconds * 1000));
  std::atomic<bool> stop_killer{false};
  std::thread killer([&] {
    std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
    std::string err;
    Conn su = try_connect(superuser_conninfo("postgres"), &err);
    if (!su) {
      errs.add("killer connect: " + err);
      return;
    }
    while (!stop_killer) {
      sleep_ms(kill_ms);
      Result r(PQexec(su.get(),
                      "SELECT pid FROM pg_stat_activity WHERE datname = 'testdb' AND usename = "
                      "'md5user' AND backend_type = 'client backend'"));
      if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) == 0) continue;
      int i = static_cast<int>(rng() % static_cast<uint64_t>(PQntuples(r.get())));
      std::string sql =
          std::string("SELECT pg_terminate_backend(") + PQgetvalue(r.get(), i, 0) + ")";
      Result k(PQexec(su.get(), sql.c_str()));
      if (PQresultStatus(k.get()) == PGRES_TUPLES_OK) ++st.kills;
    }
  });
  std::vector<std::thread> th;
  std::vector<std::unique_ptr<SoakClient>> clients;
  for (int i = 0; i < nclients; ++i) {
    clients.push_back(std::unique_ptr<SoakClient>(
        new SoakClient{i, std::mt19937_64(seed + static_cast<uint64_t>(i) * 7919), p, qt, st, errs,
                       nullptr, 0, std::string()}));
  }
  auto t0 = Clock::now();
  for (auto& cl : clients) th.emplace_back([&cl, deadline] { cl->run(deadline); });
  for (auto& x : th) x.join();
  stop_killer = true;
  killer.join();
  double load_s = seconds_since(t0);
  MESSAGE("soak: " << nclients << " clients for " << load_s << " s (pool " << pool
                   << "): " << st.ok_actions.load() << " actions ok, " << st.aborts.load()
                   << " deliberate disconnects, " << st.reconnects.load() << " logins, "
                   << st.connect_failures.load() << " failed logins, " << st.kills.load()
                   << " backends terminated; tolerated errors:" << st.tolerated_text()
                   << "; actions over 1 s: " << st.slow_actions.load() << " (by kind:"
                   << st.slow_text() << "), slowest " << st.max_action_ms.load() << " ms");
  CHECK_MESSAGE(errs.count.load() == 0, "soak (seed " << seed << "): " << errs.count.load()
                                                      << " problems (hangs, cross-talk, "
                                                         "unexpected errors):\n"
                                                      << errs.text());
  CHECK(st.ok_actions.load() > 0);
  CHECK(bool(p.direct() || p.alive()));

  // The pool goes back to idle within a few seconds.
  const double settle = env_double("FAULTS_SETTLE_SECONDS", 10);
  auto ts = Clock::now();
  int busy = -1, idle_tx = -1, total = -1;
  PoolRow row;
  bool found = false;
  bool clean = false;
  Conn admin;
  if (!p.direct()) {
    std::string err;
    admin = try_connect(p.conninfo("md5user", "md5pass", "pgbouncer"), &err);
    CHECK_MESSAGE(admin != nullptr, "console login: " << err);
  }
  while (seconds_since(ts) < settle) {
    busy = count_backends("testdb", "md5user", "active");
    idle_tx = count_backends("testdb", "md5user", "idle in transaction") +
              count_backends("testdb", "md5user", "idle in transaction (aborted)");
    total = count_backends("testdb", "md5user");
    bool pg_ok = busy == 0 && idle_tx == 0 && total <= pool;
    bool pools_ok = true;
    if (admin) {
      row = show_pools(admin.get(), &found);
      long servers = row.get("sv_active") + row.get("sv_idle") + row.get("sv_used") +
                     row.get("sv_tested") + row.get("sv_login");
      pools_ok = found && row.get("cl_active") == 0 && row.get("cl_waiting") == 0 &&
                 row.get("sv_active") == 0 && row.get("sv_idle") + row.get("sv_used") <= pool &&
                 servers == total;
    }
    if (pg_ok && pools_ok) {
      clean = true;
      break;
    }
    sleep_ms(100);
  }
  MESSAGE("after the soak (" << seconds_since(ts) << " s): PostgreSQL backends of md5user: "
                             << total << " (active " << busy << ", idle in transaction " << idle_tx
                             << "); SHOW POOLS testdb/md5user:"
                             << (found ? row.text() : std::string(" (no row)")));
  CHECK_MESSAGE(clean, "pool not back to idle within "
                           << settle << " s: backends " << total << " (active " << busy
                           << ", idle in transaction " << idle_tx << "), SHOW POOLS:"
                           << (found ? row.text() : " (no row)") << " (pool size " << pool << ")");
  admin.reset();
  {
    Conn c = connect(p.conninfo());
    Reply r = query(c.get(), "select count(*) from fx_soak where kind = 'aborted'", 10);
    CHECK_MESSAGE(r.value() == "0",
                  "inserts of transactions whose client left before COMMIT "
                  "were committed: "
                      << r.describe());
  }
  cross_talk(p, env_int("FAULTS_XTALK_CLIENTS", 64), env_int("FAULTS_XTALK_TXNS", 300), qt);
  Conn c = connect(p.conninfo());
  exec_ok(c.get(), "drop table fx_soak");
}

// ---------------------------------------------------------------------------------------------
// 3. Memory bounds.

// Sends chunks from next() on a non-blocking socket until max_bytes or max_s, or until the
// peer stops reading for stall_s (back-pressure) or closes.
struct Flood {
  size_t sent = 0;
  bool stalled = false;
  bool closed = false;
  double secs = 0;
};

template <typename F>
Flood flood(int fd, F next, size_t max_bytes, double max_s, double stall_s) {
  Flood f;
  set_nonblocking(fd);
  auto t0 = Clock::now();
  auto last = Clock::now();
  std::string chunk = next();
  size_t off = 0;
  while (f.sent < max_bytes && seconds_since(t0) < max_s) {
    ssize_t w = send(fd, chunk.data() + off, chunk.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      f.sent += static_cast<size_t>(w);
      off += static_cast<size_t>(w);
      last = Clock::now();
      if (off == chunk.size()) {
        chunk = next();
        off = 0;
      }
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (seconds_since(last) > stall_s) {
        f.stalled = true;
        break;
      }
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, 50);
      continue;
    }
    f.closed = true;
    break;
  }
  f.secs = seconds_since(t0);
  return f;
}

TEST_CASE(
    "faults: memory before login: half-sent startup packets, a huge length, "
    "an unread SSLRequest flood") {
  Options o;
  o.extra_pgbouncer = "max_client_conn = 1000\n";
  Pooler p(o);
  {
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "select 1") == "1");
  }
  // Many connections that send part of a startup packet and stall. A pooler needs at most one
  // startup packet (PostgreSQL's limit: 10000 bytes) plus its per-connection state for each.
  if (!p.direct()) {
    const int n = env_int("FAULTS_PRELOGIN_CONNS", 200);
    const long per_conn_kb = 32;
    const long before = vm_rss_kb(p.pid());
    RssSampler s(p.pid());
    std::vector<Raw> conns;
    std::string partial = be32(9000) + be32(196608) + cstr("user") + cstr("md5user") +
                          cstr("application_name") + std::string(4000, 'a');
    for (int i = 0; i < n; ++i) {
      conns.push_back(Raw::tcp(p.port()));
      CHECK(conns.back().send_bytes(partial));
    }
    sleep_ms(500);
    long peak = s.stop();
    MESSAGE(n << " stalled half-logins: VmRSS " << before << " -> max " << peak << " kB, "
              << (peak - before) * 1024 / n << " bytes each (bound " << per_conn_kb
              << " kB each + 2 MB)");
    CHECK(peak - before <= n * per_conn_kb + 2048);
    conns.clear();
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "select 'still serving'") == "still serving");
  }
  // PostgreSQL answers one SSLRequest; a second one in a row is refused (0A000) and the
  // connection closed.
  {
    Raw r = Raw::tcp(p.port());
    std::string ssl = be32(8) + be32(80877103);
    REQUIRE(r.send_bytes(ssl));
    char ch = 0;
    pollfd pf{r.fd(), POLLIN, 0};
    REQUIRE(poll(&pf, 1, 5000) == 1);
    REQUIRE(recv(r.fd(), &ch, 1, 0) == 1);
    CHECK(ch == 'N');
    REQUIRE(r.send_bytes(ssl));
    bool closed = r.wait_closed(5);
    std::string tail = r.pending();
    CHECK_MESSAGE(closed, "a second SSLRequest in a row was not refused (PostgreSQL closes); got "
                              << tail.size() << " bytes: " << tail.substr(0, 8));
    if (!tail.empty() && tail[0] == 'E' && tail.size() > 5) {
      Msg m;
      m.type = 'E';
      m.body = tail.substr(5);
      CHECK(m.field('C') == "0A000");
    }
  }
  // A huge startup length, then data in 16 KiB pieces: refused at once, nothing buffered.
  {
    const long base = p.direct() ? 0 : vm_rss_kb(p.pid());
    RssSampler s(p.pid());
    Raw r = Raw::tcp(p.port());
    std::string head = be32(0x40000000) + be32(196608);
    std::string piece(16384, 'a');
    bool first = true;
    Flood f = flood(
        r.fd(),
        [&] {
          if (first) {
            first = false;
            return head;
          }
          return piece;
        },
        32u << 20, 4, 1);
    bool closed = f.closed || r.wait_closed(5);
    long peak = s.stop();
    MESSAGE("huge startup length: sent " << f.sent << " bytes in " << f.secs << " s, closed "
                                         << closed << "; VmRSS " << base << " -> max " << peak
                                         << " kB");
    CHECK_MESSAGE(closed, "a startup packet longer than 10000 bytes is not refused");
    if (!p.direct()) CHECK(peak - base <= 2048);
  }
  // SSLRequest and GSSENCRequest alternating, never read (PostgreSQL closes such a
  // connection): the 'N' answers must not pile up in the pooler.
  {
    const long base = p.direct() ? 0 : vm_rss_kb(p.pid());
    RssSampler s(p.pid());
    Raw r = Raw::tcp(p.port());
    std::string pair = be32(8) + be32(80877103) + be32(8) + be32(80877104);
    std::string chunk;
    for (int i = 0; i < 4096; ++i) chunk += pair;
    Flood f = flood(
        r.fd(), [&] { return chunk; }, 256u << 20, 4, 1);
    long peak = s.stop();
    MESSAGE("unread SSLRequest/GSSENCRequest flood: sent "
            << f.sent << " bytes in " << f.secs << " s (stalled " << f.stalled << ", closed "
            << f.closed << "); VmRSS " << base << " -> max " << peak << " kB (bound +2048 kB)");
    if (!p.direct()) CHECK(peak - base <= 2048);
  }
  Conn c = connect(p.conninfo());
  CHECK(scalar(c.get(), "select 'still serving'") == "still serving");
}

TEST_CASE("faults: memory: pipelined Syncs inside one transaction, read as they come") {
  Pooler p;
  const long total = env_int("FAULTS_PIPELINE_SYNCS", 600000);
  Raw r = take_socket(connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable")));
  REQUIRE(r.send_msg('Q', cstr("begin")));
  auto ms = r.read_until('Z', 5);
  REQUIRE(!ms.empty());
  REQUIRE(ms.back().type == 'Z');
  // Sends n Syncs, reads every answer (each must be ReadyForQuery 'T'); returns seconds.
  auto run = [&](long n, std::string* problem) {
    const std::string one = msg('S', "");
    std::string batch;
    for (int i = 0; i < 4096; ++i) batch += one;
    long queued = 0, got = 0;
    std::string out, in;
    auto t0 = Clock::now();
    auto last = Clock::now();
    while (got < n) {
      if (seconds_since(last) > 10) {
        *problem = "no progress for 10 s: " + std::to_string(got) + " of " + std::to_string(n) +
                   " answers";
        break;
      }
      if (out.empty() && queued < n) {
        long k = std::min<long>(4096, n - queued);
        out = batch.substr(0, static_cast<size_t>(k) * one.size());
        queued += k;
      }
      pollfd pf{r.fd(), static_cast<short>(POLLIN | (out.empty() ? 0 : POLLOUT)), 0};
      poll(&pf, 1, 100);
      if (!out.empty() && (pf.revents & POLLOUT)) {
        ssize_t w = send(r.fd(), out.data(), out.size(), MSG_NOSIGNAL);
        if (w > 0) out.erase(0, static_cast<size_t>(w));
      }
      if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        ssize_t rd = recv(r.fd(), buf, sizeof buf, 0);
        if (rd == 0 || (rd < 0 && errno != EAGAIN && errno != EINTR)) {
          *problem = "connection closed after " + std::to_string(got) + " answers";
          break;
        }
        if (rd > 0) {
          in.append(buf, static_cast<size_t>(rd));
          last = Clock::now();
          size_t pos = 0;
          while (in.size() - pos >= 6) {
            if (in.compare(pos, 6, std::string("Z\0\0\0\5T", 6)) != 0) {
              *problem = "answer " + std::to_string(got) + " is not ReadyForQuery 'T' (type '" +
                         std::string(1, in[pos]) + "')";
              return seconds_since(t0);
            }
            pos += 6;
            ++got;
          }
          in.erase(0, pos);
        }
      }
    }
    return seconds_since(t0);
  };
  std::string problem;
  run(20000, &problem);  // warm-up: buffers and allocator arenas reach their working size
  REQUIRE_MESSAGE(problem.empty(), problem);
  const long base = p.direct() ? 0 : vm_rss_kb(p.pid());
  RssSampler s(p.pid());
  double secs = run(total, &problem);
  long peak = s.stop();
  long after = p.direct() ? 0 : vm_rss_kb(p.pid());
  MESSAGE(total << " pipelined Syncs in " << secs << " s; pooler VmRSS " << base << " -> max "
                << peak << ", after " << after << " kB (growth " << peak - base
                << " kB; bound 8192 kB; PgBouncer: +0)");
  CHECK_MESSAGE(problem.empty(), problem);
  if (!p.direct()) CHECK(peak - base <= 8192);
  REQUIRE(r.send_msg('Q', cstr("rollback")));
  ms = r.read_until('Z', 5);
  REQUIRE(!ms.empty());
  CHECK(ms.back().type == 'Z');
  CHECK(ms.back().body == "I");
  hang_up(r, false);
}

TEST_CASE("faults: memory: a client that sends queries and never reads the answers") {
  Options o;
  o.default_pool_size = 2;
  Pooler p(o);
  {
    Conn c = connect(p.conninfo());
    CHECK(scalar(c.get(), "select 1") == "1");
  }
  const long base = p.direct() ? 0 : vm_rss_kb(p.pid());
  const double secs = env_double("FAULTS_FLOOD_SECONDS", 4);
  Raw r = take_socket(connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable")));
  RssSampler s(p.pid());
  // ~40-byte queries with ~4 kB answers: without back-pressure the answers (or the queries)
  // pile up in the pooler.
  std::string q = msg('Q', cstr("select repeat('x', 4000)"));
  std::string chunk;
  for (int i = 0; i < 1000; ++i) chunk += q;
  Flood f = flood(
      r.fd(), [&] { return chunk; }, 256u << 20, secs, 1.5);
  long peak = s.stop();
  MESSAGE("flood: sent " << f.sent << " bytes (" << f.sent / q.size() << " queries) in " << f.secs
                         << " s, stalled " << f.stalled << ", closed " << f.closed
                         << "; pooler VmRSS " << base << " -> max " << peak << " kB (growth "
                         << peak - base << " kB; bound 16384 kB)");
  if (!p.direct()) CHECK(peak - base <= 16384);
  CHECK_MESSAGE(bool(f.stalled || f.closed),
                "the never-reading client could send for " << f.secs << " s without pause");
  hang_up(r, true);
  // The flooding client's server comes back; another client is served promptly.
  Conn c = connect(p.conninfo());
  Reply rep = query(c.get(), "select 'after flood'", 10);
  CHECK(rep.value() == "after flood");
  auto t0 = Clock::now();
  int busy = -1;
  while (seconds_since(t0) < 10) {
    busy = count_backends("testdb", "md5user", "active");
    if (busy == 0) break;
    sleep_ms(100);
  }
  CHECK_MESSAGE(busy == 0, "a server still busy with the flood 10 s after the client left");
}

TEST_SUITE_END();

}  // namespace
}  // namespace it
