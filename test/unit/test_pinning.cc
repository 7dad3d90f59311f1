// Pinning: reason names, the refusal message, the check query's answer (pinning.h).
#include "pinning.h"

#include <doctest/doctest.h>

#include <string>

#include "data_row.h"
#include "session_state.h"

using namespace pgsluice;

namespace {

using test::data_row;

uint8_t check(const std::string& body, uint8_t pinned) {
  return pin_check_row(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()), pinned);
}

}  // namespace

TEST_CASE("pinning: reason names and refusals") {
  CHECK(pin_reasons(0) == "");
  CHECK(pin_reasons(kPinAdvisoryLock | kPinListen) == "advisory_lock,listen");
  CHECK(pin_reasons(0x3f) ==
        "advisory_lock,temp_table,hold_cursor,listen,untracked_setting,prepare");
  CHECK(pin_reasons(kPinUnread | kPinListen) == "listen,unread");
  CHECK(pin_refusal(kPinAdvisoryLock, false) ==
        "session advisory locks are not supported in transaction pooling "
        "(pin_on_untracked_state = off)");
  CHECK(pin_refusal(kPinListen, true) == "LISTEN is not supported in statement pooling");
  CHECK(pin_refusal(kPinTempTable | kPinListen, false).rfind("temporary tables", 0) == 0);
}

TEST_CASE("pinning: the check's answer") {
  const uint8_t all = 0x3f;
  CHECK(check(data_row({"0", "0", "0", "0", "0", "0"}), all) == 0);
  CHECK(check(data_row({"2", "0", "0", "0", "0", "0"}), kPinTempTable) == kPinAdvisoryLock);
  CHECK(check(data_row({"0", "1", "0", "1", "0", "0"}), all) == (kPinTempTable | kPinListen));
  // Untracked settings and SQL-prepared statements count only for a client pinned for them.
  CHECK(check(data_row({"0", "0", "0", "0", "3", "4"}), kPinAdvisoryLock) == 0);
  CHECK(check(data_row({"0", "0", "0", "0", "3", "4"}), all) ==
        (kPinUntrackedSetting | kPinPrepare));
  CHECK(check(data_row({"0", "0", nullptr, "0", "0", "0"}), all) == 0);
  // A text not read: untracked settings count (a SET hidden in it), and the unread reason
  // itself ends with the check.
  CHECK(check(data_row({"0", "0", "0", "0", "1", "0"}), kPinUnread) == kPinUntrackedSetting);
  CHECK(check(data_row({"0", "0", "0", "0", "0", "0"}), kPinUnread) == 0);
  CHECK(check(data_row({"0", "0", "0", "0", "0", "2"}), kPinUnread) == 0);
  // Not understood: nothing changes.
  CHECK(check(data_row({"0", "0"}), kPinListen) == kPinListen);
  CHECK(check("", kPinListen) == kPinListen);
  CHECK(check(data_row({"0", "0", "0", "0", "0", "0"}).substr(0, 9), kPinListen) == kPinListen);
  CHECK(pin_check_sql({"search_path", "it's"}).find("'search_path','it''s'") != std::string::npos);
  CHECK(pin_check_sql({}).find("ARRAY['']") != std::string::npos);
  // pg_prepared_statements is read only for a client pinned for SQL PREPARE.
  CHECK(pin_check_sql({}).find("pg_prepared_statements") != std::string::npos);
  CHECK(pin_check_sql({}, {}, false).find("pg_prepared_statements") == std::string::npos);
}

TEST_CASE("pinning: the check reads watched settings back") {
  std::string sql = pin_check_sql({"search_path"}, {"app.tenant", "it's"});
  CHECK(sql.find("ARRAY['search_path','app.tenant','it''s']") != std::string::npos);
  CHECK(sql.find(",pg_catalog.current_setting('app.tenant', true),"
                 "pg_catalog.current_setting('it''s', true)") != std::string::npos);
  auto body = data_row({"0", "0", "0", "0", "0", "0", "b", nullptr});
  auto span = [&](size_t cut) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()),
                                    body.size() - cut);
  };
  std::vector<std::optional<std::string>> vals;
  CHECK(pin_check_row(span(0), kPinUntrackedSetting, 2, &vals) == 0);
  REQUIRE(vals.size() == 2);
  CHECK(vals[0] == std::optional<std::string>("b"));
  CHECK(!vals[1].has_value());
  // A row of another width, or cut short: nothing changes, no values.
  for (size_t nwatch : {size_t{1}, size_t{3}}) {
    CHECK(pin_check_row(span(0), kPinUntrackedSetting, nwatch, &vals) == kPinUntrackedSetting);
    CHECK(vals.empty());
  }
  CHECK(pin_check_row(span(1), kPinUntrackedSetting, 2, &vals) == kPinUntrackedSetting);
  CHECK(vals.empty());
}
