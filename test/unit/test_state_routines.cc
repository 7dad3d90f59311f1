// Routines that may make session state: the catalog rows, the closure over calls, and what
// scan_pins makes of a text that calls one (state_routines.h).
#include "state_routines.h"

#include <doctest/doctest.h>

#include <initializer_list>
#include <string>

#include "data_row.h"

using namespace pgsluice;

namespace {

using test::data_row;

bool add(StateRoutines& r, std::initializer_list<const char*> vals) {
  std::string b = data_row(vals);
  return r.add_row(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size()));
}

StateRoutines sample() {
  StateRoutines r;
  REQUIRE(add(r, {"f", "20001", "set_sp", "plpgsql",
                  "BEGIN PERFORM set_config('search_path', $1, false); END"}));
  REQUIRE(add(r, {"f", "20002", "wrap", "sql", "SELECT set_sp($1)"}));
  REQUIRE(add(r, {"f", "20003", "harmless", "plpgsql", "BEGIN RETURN 1 + 1; END"}));
  REQUIRE(add(r, {"f", "20004", "py", "plpython3u", nullptr}));
  REQUIRE(add(r, {"f", "20005", "locker", "sql", "SELECT pg_advisory_lock(1)"}));
  REQUIRE(add(r, {"f", "20006", "atomic", "sql", ""}));
  REQUIRE(add(r, {"c", "20006", "set_config", "", nullptr}));
  REQUIRE(add(r, {"f", "20007", "dyn", "plpgsql",
                  "BEGIN EXECUTE 'SET search_path = ' || quote_ident($1); END"}));
  REQUIRE(
      add(r, {"f", "20008", "trg", "plpgsql", "BEGIN SET app.who = 'trigger'; RETURN NEW; END"}));
  REQUIRE(add(r, {"r", "20008", "audited", "", nullptr}));
  REQUIRE(add(r, {"r", "20003", "plain_view", "", nullptr}));
  REQUIRE(add(r, {"f", "20009", "unlocker", "sql", "SELECT pg_advisory_unlock_all()"}));
  r.finish();
  return r;
}

}  // namespace

TEST_CASE("StateRoutines: bodies, calls, languages and relations") {
  StateRoutines r = sample();
  const PinScan* f = r.find("set_sp");
  REQUIRE(f != nullptr);
  CHECK(f->pins == kPinUntrackedSetting);
  CHECK(f->names == std::vector<std::string>{"search_path"});
  CHECK(f->releases == kReleaseAny);
  CHECK(f->dirty);
  REQUIRE(r.find("wrap") != nullptr);  // through what it calls
  CHECK(r.find("wrap")->names == std::vector<std::string>{"search_path"});
  CHECK(r.find("harmless") == nullptr);
  REQUIRE(r.find("py") != nullptr);  // another language: anything
  CHECK(r.find("py")->dirty);
  REQUIRE(r.find("locker") != nullptr);
  CHECK(r.find("locker")->pins == kPinAdvisoryLock);
  CHECK(!r.find("locker")->dirty);
  REQUIRE(r.find("atomic") != nullptr);  // a SQL-standard body's dependency
  CHECK(r.find("atomic")->opaque);
  REQUIRE(r.find("dyn") != nullptr);
  CHECK(r.find("dyn")->opaque);
  REQUIRE(r.find("audited") != nullptr);  // its trigger sets app.who
  CHECK(r.find("audited")->names == std::vector<std::string>{"app.who"});
  CHECK(r.find("plain_view") == nullptr);  // its routine makes nothing
  REQUIRE(r.find("unlocker") != nullptr);  // releases: the check runs after it
  CHECK(r.find("unlocker")->pins == 0);
  CHECK(r.find("unlocker")->releases == kReleaseAny);
  CHECK(r.mentioned("select WRAP('x')"));
  CHECK(!r.mentioned("select 1"));
  CHECK(r.same(sample()));
  StateRoutines empty;
  empty.finish();
  CHECK(empty.empty());
  CHECK(!empty.same(r));
}

TEST_CASE("StateRoutines: rows not understood") {
  StateRoutines r;
  CHECK(!add(r, {"f", "1", "x", "sql"}));                        // four columns
  CHECK(!add(r, {"f", "x1", "x", "sql", "SELECT 1"}));           // not an oid
  CHECK(!add(r, {"z", "1", "x", "sql", "SELECT 1"}));            // unknown kind
  CHECK(!add(r, {nullptr, "1", "x", "sql", "SELECT 1"}));        // NULL kind
  CHECK(!add(r, {"f", "99999999999", "x", "sql", "SELECT 1"}));  // out of range
  std::string b = data_row({"f", "1", "x", "sql", "SELECT 1"});
  CHECK(!r.add_row(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size() - 2)));
}

TEST_CASE("StateRoutines: a recursive routine and a long chain end") {
  StateRoutines r;
  REQUIRE(add(r, {"f", "1", "a", "sql", "SELECT a(), b()"}));
  REQUIRE(add(r, {"f", "2", "b", "sql", "SELECT c()"}));
  REQUIRE(add(r, {"f", "3", "c", "plpgsql", "BEGIN PERFORM set_config('x.y', 'z', false); END"}));
  REQUIRE(add(r, {"f", "4", "d", "sql", "SELECT d()"}));
  r.finish();
  REQUIRE(r.find("a") != nullptr);
  CHECK(r.find("a")->names == std::vector<std::string>{"x.y"});
  CHECK(r.find("d") == nullptr);
}

TEST_CASE("scan_pins: a call of a routine that makes state, or a relation that runs one") {
  StateRoutines r = sample();
  auto scan = [&](std::string_view sql) { return scan_pins(sql, true, false, &r); };
  CHECK(scan("SELECT set_sp('pg_catalog')").names == std::vector<std::string>{"search_path"});
  CHECK(scan("SELECT public.WRAP('x')").pins == kPinUntrackedSetting);
  CHECK(scan("SELECT \"wrap\"('x')").pins == kPinUntrackedSetting);
  CHECK(scan("CALL locker()").pins == kPinAdvisoryLock);
  CHECK(scan("INSERT INTO audited VALUES (1)").names == std::vector<std::string>{"app.who"});
  CHECK(scan("UPDATE public.audited SET a = 1").dirty);
  CHECK(scan("DO $$BEGIN PERFORM wrap('x'); END$$").names ==
        std::vector<std::string>{"search_path"});
  CHECK(scan("SELECT harmless()").pins == 0);
  CHECK(scan("SELECT 'set_sp(1)'").pins == 0);
  CHECK(scan("SELECT 1").pins == 0);
  // Without the routines nothing is known of them.
  CHECK(scan_pins("SELECT set_sp('x')", true, false).pins == 0);
}

TEST_CASE("scan_pins: statements that may change what routines do") {
  auto catalog = [](std::string_view sql) { return scan_pins(sql, true, false).catalog; };
  CHECK(catalog("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"));
  CHECK(catalog("create or replace procedure p() language sql as $$ $$"));
  CHECK(catalog("CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()"));
  CHECK(catalog("CREATE CONSTRAINT TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()"));
  CHECK(catalog("ALTER TABLE x ALTER a SET DEFAULT f()"));
  CHECK(catalog("DROP VIEW IF EXISTS v"));
  CHECK(catalog("CREATE EXTENSION plpython3u"));
  CHECK(catalog("CREATE POLICY p ON x USING (f())"));
  CHECK(catalog("CREATE MATERIALIZED VIEW m AS SELECT 1"));
  CHECK(!catalog("CREATE TEMP TABLE t(a int)"));
  CHECK(!catalog("CREATE INDEX i ON x(a)"));
  CHECK(!catalog("SELECT 1"));
  CHECK(scan_pins("CREATE TEMP TABLE t(a int)", true, false).pins == kPinTempTable);
  CHECK(scan_pins("DROP FUNCTION f()", true, false).releases == kReleaseAny);
}

TEST_CASE("call_names: what a text calls, each once") {
  std::vector<std::string> out;
  bool many = false;
  call_names("SELECT f(1), public.G (2), \"Q\"(3), f(4), 'h(5)', (1+2) /* k( */", true, out, &many);
  CHECK(out == std::vector<std::string>{"f", "g", "Q"});
  CHECK(!many);
  std::string lots = "SELECT ";
  for (int i = 0; i < 40; i++) lots += "f" + std::to_string(i) + "(), ";
  out.clear();
  call_names(lots + "1", true, out, &many);
  CHECK(out.size() == kMaxCallNames);
  CHECK(many);
}

TEST_CASE("StateRoutines: a catalog larger than read leaves calls unknown") {
  StateRoutines r;
  const std::string body(1u << 20, ' ');  // 1 MiB of blanks in each routine's body
  size_t rows = 0;
  for (; rows <= StateRoutines::kMaxBytes / body.size() + 1; rows++) {
    const std::string oid = std::to_string(30000 + rows), name = "f" + std::to_string(rows);
    REQUIRE(add(r, {"f", oid.c_str(), name.c_str(), "sql", body.c_str()}));
  }
  // The last routine makes state, but lies beyond what is read.
  REQUIRE(add(r, {"f", "39999", "set_late", "sql", "SELECT set_config('app.x', 'y', false)"}));
  r.finish();
  CHECK_FALSE(r.complete());
  CHECK(r.find("set_late") == nullptr);

  RoutineReadings readings;
  readings.needed();
  CHECK(readings.take(0));
  readings.done(std::make_unique<StateRoutines>(std::move(r)), 0);
  CHECK(readings.current() != nullptr);
  CHECK(readings.unknown());  // so every call counts as one that may make state

  // A later reading that fits is known again.
  StateRoutines small;
  REQUIRE(add(small, {"f", "39999", "set_late", "sql", "SELECT set_config('app.x', 'y', false)"}));
  small.finish();
  CHECK(small.complete());
  CHECK(readings.take(RoutineReadings::kPeriod + 1));
  readings.done(std::make_unique<StateRoutines>(std::move(small)), RoutineReadings::kPeriod + 1);
  CHECK_FALSE(readings.unknown());
  CHECK(readings.current()->find("set_late") != nullptr);
}

TEST_CASE("StateRoutines: more than 64 names that make state: every text is read") {
  StateRoutines r;
  for (int i = 0; i < 70; i++) {
    const std::string oid = std::to_string(40000 + i), name = "setter" + std::to_string(i);
    REQUIRE(add(r, {"f", oid.c_str(), name.c_str(), "sql", "SELECT pg_advisory_lock(1)"}));
  }
  r.finish();
  CHECK(r.size() == 70);
  CHECK(r.mentioned("SELECT 1"));  // not searched name by name: read whole
  CHECK(r.find("setter69") != nullptr);
  StateRoutines few;
  REQUIRE(add(few, {"f", "40000", "setter0", "sql", "SELECT pg_advisory_lock(1)"}));
  few.finish();
  CHECK_FALSE(few.mentioned("SELECT 1"));
  CHECK(few.mentioned("SELECT SETTER0()"));
}

TEST_CASE("RoutineReadings: probes of the catalogs' fingerprint find changes made elsewhere") {
  RoutineReadings rr;
  rr.needed();
  CHECK_FALSE(rr.take_probe(100));  // nothing read yet: a reading, not a probe
  REQUIRE(rr.take(0));
  auto r = std::make_unique<StateRoutines>();
  REQUIRE(add(*r, {"v", "0", "3200.1/0.0", "", nullptr}));
  r->finish();
  CHECK(r->fingerprint() == "3200.1/0.0");
  rr.done(std::move(r), 0);
  CHECK_FALSE(rr.unknown());
  const double p = RoutineReadings::kProbePeriod;
  CHECK_FALSE(rr.take_probe(p / 2));  // too soon
  REQUIRE(rr.take_probe(p));
  CHECK_FALSE(rr.take_probe(p));  // one at a time
  CHECK_FALSE(rr.take(p));
  rr.probed("3200.1/0.0", p);  // the same: nothing to do
  CHECK_FALSE(rr.unknown());
  CHECK_FALSE(rr.take_probe(p * 1.5));
  REQUIRE(rr.take_probe(p * 2));
  rr.probed("", p * 2);  // failed: nothing known, nothing changed
  CHECK_FALSE(rr.unknown());
  REQUIRE(rr.take_probe(p * 3));
  rr.probed("3201.9/0.0", p * 3);  // a routine made by another connection
  CHECK(rr.unknown());
  CHECK_FALSE(rr.take_probe(p * 4));  // a reading is due instead
  REQUIRE(rr.take(p * 3));
  auto r2 = std::make_unique<StateRoutines>();
  REQUIRE(add(*r2, {"v", "0", "3201.9/0.0", "", nullptr}));
  r2->finish();
  rr.done(std::move(r2), p * 3);  // the same routines as before: not published, but known
  CHECK_FALSE(rr.unknown());
  REQUIRE(rr.take_probe(p * 4));
  rr.probed("3201.9/0.0", p * 4);
  CHECK_FALSE(rr.unknown());
}
