// Client authentication through pgsluice: md5, scram-sha-256, plain, trust, any; secrets of
// each kind in the auth_file; wrong passwords and unknown users fail alike with 28P01.
#include <doctest/doctest.h>

#include <string>

#include "integration/harness.h"

namespace it {
namespace {

void login_ok(const Pooler& p, const std::string& user, const std::string& password,
              const std::string& expect_user) {
  INFO("login as " << user);
  std::string err;
  Conn c = try_connect(p.conninfo(user, password), &err);
  CHECK_MESSAGE(c != nullptr, "login as " << user << " failed: " << err);
  if (!c) return;
  CHECK(scalar(c.get(), "select current_user") == expect_user);
  CHECK(scalar(c.get(), "select 1 + 1") == "2");
}

// A refused login: libpq fails with "password authentication failed", and the raw protocol
// shows SQLSTATE 28P01 after a wrong answer to the auth challenge.
void login_refused(const Pooler& p, const std::string& user, const std::string& password) {
  INFO("refused login as " << user);
  std::string err;
  Conn c = try_connect(p.conninfo(user, password), &err);
  CHECK_MESSAGE(c == nullptr, "login as " << user << " with a wrong password succeeded");
  CHECK_MESSAGE(err.find("password authentication failed") != std::string::npos, err);
  CHECK_MESSAGE(err.find("does not exist") == std::string::npos, err);
  Msg m = login_with_wrong_password(p.port(), user, "testdb");
  CHECK_MESSAGE(m.type == 'E', "expected ErrorResponse, got type " << int(m.type));
  CHECK(m.field('C') == "28P01");
  CHECK_MESSAGE(m.field('M').find("does not exist") == std::string::npos, m.field('M'));
}

// First authentication request code sent for user (3 cleartext, 5 md5, 10 SASL), -1 if none.
int first_auth_code(const Pooler& p, const std::string& user) {
  Raw r = Raw::tcp(p.port());
  REQUIRE(r.send_bytes(startup_packet({{"user", user}, {"database", "testdb"}})));
  Msg m;
  if (r.read_msg(&m, 5) != ReadStatus::Ok || m.type != 'R' || m.body.size() < 4) return -1;
  return static_cast<unsigned char>(m.body[3]);
}

TEST_CASE("auth_type=md5: md5, SCRAM and plain secrets") {
  Options o;
  o.auth_type = "md5";
  Pooler p(o);
  login_ok(p, "md5user", "md5pass", "md5user");
  login_ok(p, "scramuser", "scrampass", "scramuser");
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_refused(p, "md5user", "wrong");
  login_refused(p, "scramuser", "wrong");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "nosuchuser", "whatever");
  CHECK(first_auth_code(p, "md5user") == 5);
  // A SCRAM secret cannot answer an md5 challenge: md5 is upgraded to SCRAM.
  CHECK(first_auth_code(p, "scramuser") == 10);
  // The second login of the same SCRAM user (cached keys on the pooler side) works too.
  login_ok(p, "scramuser", "scrampass", "scramuser");
}

TEST_CASE("auth_type=scram-sha-256") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "scram-sha-256";
  Pooler p(o);
  login_ok(p, "scramuser", "scrampass", "scramuser");
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_refused(p, "scramuser", "wrong");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "nosuchuser", "whatever");
  CHECK(first_auth_code(p, "scramuser") == 10);
  CHECK(first_auth_code(p, "plainuser") == 10);
  CHECK(first_auth_code(p, "nosuchuser") == 10);
  // PgBouncer: with scram-sha-256 the auth_file must hold SCRAM or plain secrets; an md5
  // secret cannot verify a SCRAM exchange, so that user cannot log in.
  std::string err;
  Conn c = try_connect(p.conninfo("md5user", "md5pass"), &err);
  CHECK_MESSAGE(c == nullptr, "md5-secret user logged in under auth_type=scram-sha-256");
}

TEST_CASE("auth_type=plain") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "plain";
  Pooler p(o);
  CHECK(first_auth_code(p, "plainuser") == 3);
  login_ok(p, "plainuser", "plainpass", "plainuser");
  login_ok(p, "md5user", "md5pass", "md5user");
  login_refused(p, "plainuser", "wrong");
  login_refused(p, "md5user", "wrong");
  login_refused(p, "nosuchuser", "whatever");
}

TEST_CASE("auth_type=trust") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  Options o;
  o.auth_type = "trust";
  Pooler p(o);
  // No password asked; the server login uses the auth_file secret.
  login_ok(p, "md5user", "", "md5user");
  login_ok(p, "md5user", "not-the-password", "md5user");
  login_ok(p, "plainuser", "", "plainuser");
  CHECK(first_auth_code(p, "md5user") == 0);
  // PgBouncer: under trust the user must still exist in auth_file.
  std::string err;
  Conn c = try_connect(p.conninfo("nosuchuser", ""), &err);
  CHECK_MESSAGE(c == nullptr, "unknown user accepted under auth_type=trust");
}

TEST_CASE("auth_type=any with a forced database user") {
  if (skip_in_direct_mode("auth_type is pooler configuration")) return;
  const Cluster& cl = cluster();
  Options o;
  o.auth_type = "any";
  o.databases = "testdb = host=127.0.0.1 port=" + std::to_string(cl.port) +
                " dbname=testdb user=md5user password=md5pass\n";
  Pooler p(o);
  login_ok(p, "whoever", "", "md5user");
  login_ok(p, "someone_else", "bogus", "md5user");
  CHECK(first_auth_code(p, "whoever") == 0);
}

}  // namespace
}  // namespace it
