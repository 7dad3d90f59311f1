// The pure pieces of a lost server's answer (lost_server.h): which texts end an aborted
// transaction block, and PostgreSQL's FATAL made an ERROR.
#include <doctest/doctest.h>

#include <string>

#include "lost_server.h"
#include "wire.h"

namespace pgsluice {
namespace {

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

TEST_CASE("classify_tx_exit: the statements that end an aborted block") {
  for (const char* s : {"ROLLBACK", "rollback;", "  Abort Work ; ; ", "COMMIT", "end transaction",
                        "commit and no chain", "/* a /* nested */ comment */ ROLLBACK -- bye",
                        "PREPARE TRANSACTION 'g1'", "rollback\n\ttransaction"}) {
    CAPTURE(s);
    CHECK(classify_tx_exit(s) == TxExit::End);
  }
  for (const char* s : {"COMMIT AND CHAIN", "rollback work and chain;"}) {
    CAPTURE(s);
    CHECK(classify_tx_exit(s) == TxExit::Chain);
  }
  std::string sp;
  CHECK(classify_tx_exit("ROLLBACK TO SAVEPOINT Sp1", &sp) == TxExit::ToSavepoint);
  CHECK(sp == "sp1");
  CHECK(classify_tx_exit("rollback transaction to \"A\"\"b\"", &sp) == TxExit::ToSavepoint);
  CHECK(sp == "A\"b");
  CHECK(classify_tx_exit("rollback to savepoint", &sp) == TxExit::ToSavepoint);
  CHECK(sp == "savepoint");
  for (const char* s : {"", " ; ;", "-- nothing", "/* nothing */"}) {
    CAPTURE(s);
    CHECK(classify_tx_exit(s) == TxExit::Empty);
  }
  for (const char* s :
       {"SELECT 1", "ROLLBACK; SELECT 1", "COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'",
        "RELEASE SAVEPOINT a", "BEGIN", "rollback and", "commit and no", "rollbackx",
        "ROLLBACK /* open", "PREPARE TRANSACTION E'x'", "PREPARE TRANSACTION 'a\\b'",
        "PREPARE TRANSACTION", "rollback to", "rollback to a b", "abort to savepoint a",
        "commit; commit", "\"rollback\"", "end if"}) {
    CAPTURE(s);
    CHECK(classify_tx_exit(s) == TxExit::Other);
  }
}

TEST_CASE("error_as_error: PostgreSQL's FATAL with severity ERROR, every other field kept") {
  std::string body;
  body += std::string("SFATAL") + '\0' + "VFATAL" + '\0' + "C57P01" + '\0' +
          "Mterminating connection due to administrator command" + '\0' + "Fpostgres.c" + '\0' +
          '\0';
  CHECK(error_is_fatal(bytes(body)));
  std::string m = error_as_error(bytes(body));
  REQUIRE(m.size() > wire::kHeaderLen);
  CHECK(m[0] == 'E');
  std::string out = m.substr(wire::kHeaderLen);
  CHECK(!error_is_fatal(bytes(out)));
  auto f = wire::parse_error(bytes(out));
  CHECK(f.severity == "ERROR");
  CHECK(f.sqlstate == "57P01");
  CHECK(f.message == "terminating connection due to administrator command");
  CHECK(out.find(std::string("SERROR") + '\0') != std::string::npos);
  CHECK(out.find(std::string("Fpostgres.c") + '\0') != std::string::npos);
  CHECK(wire::get_u32(reinterpret_cast<const uint8_t*>(m.data()) + 1) + 1 == m.size());
  std::string plain = std::string("SERROR") + '\0' + "VERROR" + '\0' + '\0';
  CHECK(!error_is_fatal(bytes(plain)));
  std::string panic = std::string("VPANIC") + '\0' + '\0';
  CHECK(error_is_fatal(bytes(panic)));
}

}  // namespace pgsluice
