// LISTEN/NOTIFY in transaction pooling through one listening connection per pool and worker
// (issue 14; src/notify_hub.*): every notification reaches every listener of its channel
// once, in order, also while the listener has no server; no pooled server ever listens.
#include <doctest/doctest.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

using Clock = std::chrono::steady_clock;

struct Note {
  std::string channel, payload;
};

// Reads what arrived on c (without sending anything) into out.
void drain(PGconn* c, std::vector<Note>& out) {
  PQconsumeInput(c);
  while (PGnotify* n = PQnotifies(c)) {
    out.push_back({n->relname, n->extra});
    PQfreemem(n);
  }
}

// Polls the connections until done() or `seconds` pass, draining each into its vector.
template <typename Done>
void collect(std::vector<PGconn*> conns, std::vector<std::vector<Note>>& got, double seconds,
             Done done) {
  auto until = Clock::now() + std::chrono::milliseconds(static_cast<int>(seconds * 1000));
  while (!done() && Clock::now() < until) {
    std::vector<pollfd> fds;
    for (PGconn* c : conns) fds.push_back({PQsocket(c), POLLIN, 0});
    poll(fds.data(), fds.size(), 20);
    for (size_t i = 0; i < conns.size(); i++) drain(conns[i], got[i]);
  }
}

Options listen_options(int mport = 0) {
  Options o;
  o.pool_mode = "transaction";
  o.workers = 2;
  o.default_pool_size = 2;
  if (mport > 0) o.extra_pgbouncer = "metrics_port = " + std::to_string(mport) + "\n";
  return o;
}

std::string metric(int mport, const std::string& name) {
  CmdResult r = run_shell("curl -sS http://127.0.0.1:" + std::to_string(mport) + "/metrics", 10);
  size_t at = r.output.find("\n" + name + " ");
  if (at == std::string::npos) return std::string();
  size_t b = at + name.size() + 2, e = r.output.find('\n', b);
  return r.output.substr(b, e - b);
}

// Waits until metric `name` reads `want` (at most 10 s); returns the last reading.
std::string wait_metric(int mport, const std::string& name, const std::string& want) {
  std::string v;
  for (int i = 0; i < 100; i++) {
    v = metric(mport, name);
    if (v == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return v;
}

// The backends of the hubs (their application_name), seen from PostgreSQL.
std::vector<std::string> hub_pids() {
  Conn su = connect(superuser_conninfo());
  Result r = exec_ok(su.get(),
                     "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgsluice listen' "
                     "ORDER BY pid");
  std::vector<std::string> v;
  for (int i = 0; i < PQntuples(r.get()); i++) v.push_back(PQgetvalue(r.get(), i, 0));
  return v;
}

// Every pooled server, held at once by `n` clients in a transaction: how many channels each
// listens on (pg_listening_channels() is per session).
std::vector<std::string> pooled_listening(const Pooler& p, int n) {
  std::vector<Conn> cs;
  std::vector<std::string> counts, pids;
  for (int i = 0; i < n; i++) {
    cs.push_back(connect(p.conninfo()));
    exec_ok(cs.back().get(), "BEGIN");
    pids.push_back(scalar(cs.back().get(), "SELECT pg_backend_pid()"));
    counts.push_back(scalar(cs.back().get(), "SELECT count(*) FROM pg_listening_channels()"));
  }
  for (auto& c : cs) exec_ok(c.get(), "COMMIT");
  for (size_t i = 0; i < pids.size(); i++)
    for (size_t j = i + 1; j < pids.size(); j++) CHECK(pids[i] != pids[j]);
  return counts;
}

}  // namespace

TEST_SUITE("listen") {
  TEST_CASE("twenty listeners on three channels get every notification once, in order") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    // Spelled as applications do: unquoted (folded), quoted (case kept), with a comment.
    const std::vector<std::string> chans = {"alpha", "Beta", "gamma"};
    const std::vector<std::string> listen_sql = {"LISTEN ALPHA", "listen \"Beta\"",
                                                 "/* c */ LISTEN gamma;"};
    const std::vector<std::string> notify_name = {"alpha", "\"Beta\"", "Gamma"};
    constexpr int kListeners = 20, kSenders = 4, kPerSender = 150;
    std::vector<Conn> ls;
    std::vector<PGconn*> raw;
    for (int i = 0; i < kListeners; i++) {
      ls.push_back(connect(p.conninfo()));
      exec_ok(ls.back().get(), listen_sql[i % 3]);
      raw.push_back(ls.back().get());
    }
    std::atomic<int> send_errors{0};
    std::vector<std::thread> senders;
    for (int s = 0; s < kSenders; s++) {
      senders.emplace_back([&, s] {
        std::string err;
        Conn c = try_connect(p.conninfo(), &err);
        if (!c) {
          send_errors++;
          return;
        }
        for (int k = 0; k < kPerSender; k++) {
          std::string n = "NOTIFY " + notify_name[k % 3] + ", '" + std::to_string(s) + ":" +
                          std::to_string(k) + "'";
          // Some in a transaction of two (delivered at its commit, in order).
          std::string sql = (k % 10 == 0 && k + 1 < kPerSender)
                                ? "BEGIN; " + n + "; NOTIFY " + notify_name[(k + 1) % 3] + ", '" +
                                      std::to_string(s) + ":" + std::to_string(k + 1) + "'; COMMIT"
                                : n;
          if (!exec_nothrow(c.get(), sql, &err)) send_errors++;
          if (k % 10 == 0 && k + 1 < kPerSender) k++;
        }
      });
    }
    for (auto& t : senders) t.join();
    REQUIRE(send_errors == 0);
    // What each channel gets: kSenders * kPerSender / 3 notifications.
    std::vector<int> want(3, 0);
    for (int k = 0; k < kPerSender; k++) want[k % 3] += kSenders;
    std::vector<std::vector<Note>> got(kListeners);
    collect(raw, got, 30, [&] {
      for (int i = 0; i < kListeners; i++)
        if (static_cast<int>(got[i].size()) < want[i % 3]) return false;
      return true;
    });
    // A little longer: nothing more may come (no duplicate).
    collect(raw, got, 0.3, [] { return false; });
    int total = 0;
    for (int i = 0; i < kListeners; i++) {
      CAPTURE(i);
      const std::string& ch = chans[i % 3];
      CHECK(static_cast<int>(got[i].size()) == want[i % 3]);
      std::map<int, int> next;  // sender -> the next k expected on this channel
      for (int s = 0; s < kSenders; s++) next[s] = i % 3;
      for (const Note& n : got[i]) {
        CHECK(n.channel == ch);
        int s = std::stoi(n.payload.substr(0, n.payload.find(':')));
        int k = std::stoi(n.payload.substr(n.payload.find(':') + 1));
        CHECK(k == next[s]);  // in order per sender, none twice, none missing before it
        next[s] = k + 3;
      }
      total += static_cast<int>(got[i].size());
    }
    MESSAGE("notifications delivered: " << total << " (" << kSenders * kPerSender
                                        << " sent to 3 channels, 20 listeners)");
    CHECK(total == kSenders * kPerSender * kListeners / 3);
    // No pooled server listens: the hub did it for them.
    for (const std::string& n : pooled_listening(p, 2)) CHECK(n == "0");
  }

  TEST_CASE("UNLISTEN ch and UNLISTEN * stop delivery") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn a = connect(p.conninfo()), witness = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(a.get(), "LISTEN one");
    exec_ok(a.get(), "LISTEN two");
    exec_ok(a.get(), "LISTEN two");  // twice: still once
    exec_ok(witness.get(), "LISTEN one");
    exec_ok(witness.get(), "LISTEN two");
    std::vector<std::vector<Note>> got(2);
    auto round = [&](const std::string& sql, size_t witness_total) {
      exec_ok(tx.get(), sql);
      collect({a.get(), witness.get()}, got, 10, [&] { return got[1].size() >= witness_total; });
      collect({a.get(), witness.get()}, got, 0.3, [] { return false; });
      REQUIRE(got[1].size() == witness_total);
    };
    round("NOTIFY one, '1'; NOTIFY two, '2'", 2);
    CHECK(got[0].size() == 2);
    exec_ok(a.get(), "UNLISTEN one");
    exec_ok(a.get(), "UNLISTEN nothing_here");  // not listening: fine, as in PostgreSQL
    round("NOTIFY one, '3'; NOTIFY two, '4'", 4);
    REQUIRE(got[0].size() == 3);
    CHECK(got[0][2].channel == "two");
    CHECK(got[0][2].payload == "4");
    exec_ok(a.get(), "UNLISTEN *");
    round("NOTIFY one, '5'; NOTIFY two, '6'", 6);
    CHECK(got[0].size() == 3);
    // The command tags are PostgreSQL's.
    Result r(PQexec(a.get(), "LISTEN three"));
    CHECK(std::string(PQcmdStatus(r.get())) == "LISTEN");
    r.reset(PQexec(a.get(), "UNLISTEN *"));
    CHECK(std::string(PQcmdStatus(r.get())) == "UNLISTEN");
  }

  TEST_CASE("a listener that exits leaves the hub's set") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    int mport = free_port();
    Pooler p(listen_options(mport));
    CHECK(wait_metric(mport, "pgsluice_listen_clients", "0") == "0");
    Conn keep = connect(p.conninfo());
    exec_ok(keep.get(), "LISTEN keep");
    {
      Conn gone = connect(p.conninfo());
      exec_ok(gone.get(), "LISTEN gone");
      exec_ok(gone.get(), "LISTEN keep");
      CHECK(wait_metric(mport, "pgsluice_listen_clients", "2") == "2");
      // keep once or twice (one hub per worker the two clients are on), gone once.
      std::string ch = metric(mport, "pgsluice_listen_channels");
      CHECK((ch == "2" || ch == "3"));
      CHECK(!hub_pids().empty());
    }
    CHECK(wait_metric(mport, "pgsluice_listen_clients", "1") == "1");
    CHECK(wait_metric(mport, "pgsluice_listen_channels", "1") == "1");
    // The set shrank on PostgreSQL's side too: one hub, which still delivers "keep".
    for (int i = 0; i < 100 && hub_pids().size() != 1; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(hub_pids().size() == 1);
    Conn tx = connect(p.conninfo());
    exec_ok(tx.get(), "NOTIFY keep, 'k'");
    std::vector<std::vector<Note>> got(1);
    collect({keep.get()}, got, 10, [&] { return !got[0].empty(); });
    CHECK(got[0].size() == 1);
    // The last listener leaves: no channel, no hub.
    keep.reset();
    CHECK(wait_metric(mport, "pgsluice_listen_channels", "0") == "0");
    for (int i = 0; i < 100 && !hub_pids().empty(); i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(hub_pids().empty());
  }

  TEST_CASE("a listener that never reads is cut off, the others get everything") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn slow = connect(p.conninfo());
    exec_ok(slow.get(), "LISTEN flood");
    std::vector<Conn> fast;
    std::vector<PGconn*> raw;
    for (int i = 0; i < 3; i++) {
      fast.push_back(connect(p.conninfo()));
      exec_ok(fast.back().get(), "LISTEN flood");
      raw.push_back(fast.back().get());
    }
    // 2500 notifications of 7000 bytes (17.5 MB) to each listener; `slow` reads none.
    constexpr int kCount = 2500;
    const std::string pad(7000, 'x');
    std::vector<std::vector<Note>> got(raw.size());
    // The sender keeps within 100 notifications of the readers that read (however slowly
    // this test process runs), so only the one that never reads falls behind.
    std::atomic<int> read_by_all{0};
    std::thread sender([&] {
      std::string err;
      Conn c = try_connect(p.conninfo(), &err);
      auto until = Clock::now() + std::chrono::seconds(60);
      for (int k = 0; c && k < kCount; k++) {
        while (k - read_by_all.load() > 100 && Clock::now() < until)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        exec_nothrow(c.get(), "NOTIFY flood, '" + std::to_string(k) + ":" + pad + "'", &err);
      }
    });
    collect(raw, got, 60, [&] {
      size_t least = got[0].size();
      for (auto& g : got) least = std::min(least, g.size());
      read_by_all = static_cast<int>(least);
      return least >= static_cast<size_t>(kCount);
    });
    sender.join();
    for (auto& g : got) {
      CHECK(g.size() == static_cast<size_t>(kCount));
      for (size_t k = 0; k < g.size(); k++)
        if (g[k].payload.substr(0, g[k].payload.find(':')) != std::to_string(k)) {
          CHECK_MESSAGE(false, "out of order at " << k);
          break;
        }
    }
    // `slow` was disconnected: it reads what reached its socket, then the end.
    std::vector<std::vector<Note>> slow_got(1);
    std::string notice_state;
    PQsetNoticeReceiver(
        slow.get(),
        [](void* arg, const PGresult* r) {
          const char* st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
          if (st != nullptr) *static_cast<std::string*>(arg) = st;
        },
        &notice_state);
    collect({slow.get()}, slow_got, 20, [&] { return PQstatus(slow.get()) == CONNECTION_BAD; });
    drain(slow.get(), slow_got[0]);
    Result r(PQexec(slow.get(), "SELECT 1"));
    CHECK(PQresultStatus(r.get()) != PGRES_TUPLES_OK);
    MESSAGE("the reader that never read got " << slow_got[0].size() << " of " << kCount
                                              << " before it was cut off; SQLSTATE seen: '"
                                              << notice_state << "'");
    CHECK(slow_got[0].size() < static_cast<size_t>(kCount));
    if (!notice_state.empty()) CHECK(notice_state == "54000");
    CHECK(p.log().find("notification queue") != std::string::npos);
    // pgsluice goes on: a new listener gets a notification.
    Conn again = connect(p.conninfo());
    exec_ok(again.get(), "LISTEN flood");
    exec_ok(fast[0].get(), "NOTIFY flood, 'after'");
    std::vector<std::vector<Note>> g2(1);
    collect({again.get()}, g2, 10, [&] { return !g2[0].empty(); });
    REQUIRE(g2[0].size() == 1);
    CHECK(g2[0][0].payload == "after");
  }

  TEST_CASE("notifications reach a client idle without a server, and wait for its commit") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn l = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(l.get(), "LISTEN idle_ch");
    // Idle for a while: no server is linked, nothing is sent by the client.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    exec_ok(tx.get(), "NOTIFY idle_ch, 'while idle'");
    std::vector<std::vector<Note>> got(1);
    collect({l.get()}, got, 10, [&] { return !got[0].empty(); });
    REQUIRE(got[0].size() == 1);
    CHECK(got[0][0].payload == "while idle");
    // In a transaction the notification waits for the ReadyForQuery that ends it.
    exec_ok(l.get(), "BEGIN");
    exec_ok(l.get(), "SELECT 1");
    exec_ok(tx.get(), "NOTIFY idle_ch, 'during'");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    exec_ok(l.get(), "SELECT 2");
    drain(l.get(), got[0]);
    CHECK(got[0].size() == 1);  // not inside the transaction
    exec_ok(l.get(), "COMMIT");
    collect({l.get()}, got, 10, [&] { return got[0].size() >= 2; });
    REQUIRE(got[0].size() == 2);
    CHECK(got[0][1].payload == "during");
  }

  TEST_CASE("a listener in another client_encoding gets each payload in its own") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn l = connect(p.conninfo("md5user", "md5pass", "testdb", "client_encoding=LATIN1"));
    Conn u = connect(p.conninfo()), tx = connect(p.conninfo());
    REQUIRE(scalar(u.get(), "SHOW server_encoding") == "UTF8");
    exec_ok(l.get(), "LISTEN enc_ch");
    exec_ok(u.get(), "LISTEN enc_ch");
    exec_ok(tx.get(), "NOTIFY enc_ch, 'caf\xc3\xa9'");
    std::vector<std::vector<Note>> got(2);
    collect({l.get(), u.get()}, got, 10, [&] { return !got[0].empty() && !got[1].empty(); });
    REQUIRE(got[0].size() == 1);
    REQUIRE(got[1].size() == 1);
    CHECK(got[0][0].payload == "caf\xe9");  // LATIN1, as PostgreSQL converts it
    CHECK(got[1][0].payload == "caf\xc3\xa9");
    exec_ok(l.get(), "UNLISTEN *");
  }

  TEST_CASE("statement pooling listens through the hub too") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Options o = listen_options();
    o.pool_mode = "statement";
    Pooler p(o);
    Conn l = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(l.get(), "LISTEN st_ch");
    exec_ok(l.get(), "SELECT 1");
    exec_ok(tx.get(), "NOTIFY st_ch, 'st'");
    std::vector<std::vector<Note>> got(1);
    collect({l.get()}, got, 10, [&] { return !got[0].empty(); });
    REQUIRE(got[0].size() == 1);
    CHECK(got[0][0].payload == "st");
    CHECK(scalar(tx.get(), "SELECT count(*) FROM pg_listening_channels()") == "0");
  }

  TEST_CASE("no pooled server carries a LISTEN") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    std::vector<Conn> ls;
    for (int i = 0; i < 6; i++) {
      ls.push_back(connect(p.conninfo()));
      exec_ok(ls.back().get(), "LISTEN pooled_" + std::to_string(i % 2));
      exec_ok(ls.back().get(), "SELECT 1");  // and use pooled servers
    }
    // A LISTEN pgsluice does not answer itself (inside a transaction block) reaches a pooled
    // server; that server never goes back to the pool listening.
    Conn inblock = connect(p.conninfo());
    exec_ok(inblock.get(), "BEGIN; LISTEN in_block; COMMIT");
    exec_ok(inblock.get(), "SELECT 1");
    exec_ok(inblock.get(), "UNLISTEN *");  // it kept its server until now (pinning.h)
    for (const std::string& n : pooled_listening(p, 2)) CHECK(n == "0");
  }

  TEST_CASE("the hub's server terminated: reopened, later notifications arrive") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn l = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(l.get(), "LISTEN survive");
    std::vector<std::string> before = hub_pids();
    REQUIRE(before.size() == 1);
    {  // The hub shows in SHOW SERVERS: active, with no client linked.
      Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
      Result r(PQexec(admin.get(), "SHOW SERVERS"));
      REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
      int state = PQfnumber(r.get(), "state"), pid = PQfnumber(r.get(), "remote_pid");
      int hubs = 0;
      for (int i = 0; i < PQntuples(r.get()); i++)
        if (std::string(PQgetvalue(r.get(), i, pid)) == before[0]) {
          hubs++;
          CHECK(std::string(PQgetvalue(r.get(), i, state)) == "active");
        }
      CHECK(hubs == 1);
    }
    {
      Conn su = connect(superuser_conninfo());
      CHECK(scalar(su.get(), "SELECT pg_terminate_backend(" + before[0] + ")") == "t");
    }
    std::vector<std::string> after;
    for (int i = 0; i < 100; i++) {
      after = hub_pids();
      if (after.size() == 1 && after[0] != before[0]) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    REQUIRE(after.size() == 1);
    CHECK(after[0] != before[0]);
    // Its LISTEN is in force once its query is no longer running.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    exec_ok(tx.get(), "NOTIFY survive, 'after restart'");
    std::vector<std::vector<Note>> got(1);
    collect({l.get()}, got, 10, [&] { return !got[0].empty(); });
    REQUIRE(got[0].size() == 1);
    CHECK(got[0][0].payload == "after restart");
    CHECK(scalar(l.get(), "SELECT 1") == "1");  // the listener stayed connected
    CHECK(p.log().find("listens for notifications was lost") != std::string::npos);
  }

  TEST_CASE("RECONNECT renews the hub's server too; notifications go on") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn l = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(l.get(), "LISTEN renewed");
    std::vector<std::string> before = hub_pids();
    REQUIRE(before.size() == 1);
    {
      Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
      exec_ok(admin.get(), "RECONNECT");
    }
    std::vector<std::string> after;
    for (int i = 0; i < 100; i++) {
      after = hub_pids();
      if (after.size() == 1 && after[0] != before[0]) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    REQUIRE(after.size() == 1);
    CHECK(after[0] != before[0]);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    exec_ok(tx.get(), "NOTIFY renewed, 'r'");
    std::vector<std::vector<Note>> got(1);
    collect({l.get()}, got, 10, [&] { return !got[0].empty(); });
    REQUIRE(got[0].size() == 1);
    CHECK(got[0][0].payload == "r");
  }

  TEST_CASE("PAUSE closes the hub's server too, RESUME reopens it") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    Pooler p(listen_options());
    Conn l = connect(p.conninfo()), tx = connect(p.conninfo());
    exec_ok(l.get(), "LISTEN paused_ch");
    REQUIRE(hub_pids().size() == 1);
    Conn admin = connect(p.conninfo("md5user", "md5pass", "pgbouncer"));
    exec_ok(admin.get(), "PAUSE");
    for (int i = 0; i < 50 && !hub_pids().empty(); i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(hub_pids().empty());  // no connection to PostgreSQL is left (maintenance may go on)
    exec_ok(admin.get(), "RESUME");
    for (int i = 0; i < 50 && hub_pids().size() != 1; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(hub_pids().size() == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    exec_ok(tx.get(), "NOTIFY paused_ch, 'resumed'");
    std::vector<std::vector<Note>> got(1);
    collect({l.get()}, got, 10, [&] { return !got[0].empty(); });
    REQUIRE(got[0].size() == 1);
    CHECK(got[0][0].payload == "resumed");
  }

  TEST_CASE("a hub whose LISTEN PostgreSQL refuses (a standby): an error, no reconnect loop") {
    if (skip_in_direct_mode("the hub is pgsluice's")) return;
    ClusterSetup s;
    s.tag = "lsp";
    Cluster primary = start_cluster(s);
    Cluster standby = start_standby(primary, "lss");
    Options o = listen_options();
    o.databases =
        "testdb = host=127.0.0.1 port=" + std::to_string(standby.port) + " dbname=testdb\n";
    o.extra_pgbouncer = "server_login_retry = 30\n";
    Pooler p(o);
    Conn l = connect(p.conninfo());
    Result r(PQexec(l.get(), "LISTEN on_standby"));
    CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
    CHECK(std::string(PQresultErrorField(r.get(), PG_DIAG_SQLSTATE)) == "08006");
    CHECK(scalar(l.get(), "SELECT 1") == "1");  // the client goes on
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    size_t opened = 0, at = 0;
    std::string log = p.log();
    while ((at = log.find("listens for notifications failed", at)) != std::string::npos) {
      opened++;
      at++;
    }
    CHECK(opened == 1);  // tried once, then waits server_login_retry
  }
}

}  // namespace it
