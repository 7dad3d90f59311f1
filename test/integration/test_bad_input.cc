// Malformed input on raw sockets: every case ends in an ErrorResponse or a clean close (never a
// hang), pgsluice stays up, and a good client opened beforehand keeps working.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "integration/harness.h"

namespace it {
namespace {

struct Reaction {
  bool error = false;   // an ErrorResponse ('E') arrived first
  bool closed = false;  // the peer closed the connection
  bool needed_half_close = false;
  std::string sqlstate;
  std::string first_bytes;
};

// Waits for the server's reaction to what was just sent. When nothing happens within the
// timeout and `lenient` is set (the bytes are a prefix of something that could still become
// valid), half-closes our side and waits again.
Reaction react(Raw& r, bool lenient, double timeout_s = 5) {
  Reaction out;
  out.closed = r.wait_closed(timeout_s);
  if (!out.closed && r.pending().empty() && lenient) {
    out.needed_half_close = true;
    r.shutdown_write();
    out.closed = r.wait_closed(timeout_s);
  }
  const std::string& b = r.pending();
  out.first_bytes = b.substr(0, 16);
  if (!b.empty() && b[0] == 'E') {
    out.error = true;
    if (b.size() >= 5) {
      Msg m;
      m.type = 'E';
      m.body = b.substr(5);
      out.sqlstate = m.field('C');
    }
  }
  return out;
}

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string o;
  for (unsigned char ch : s) {
    o += d[ch >> 4];
    o += d[ch & 15];
    o += ' ';
  }
  return o;
}

struct Case {
  const char* name;
  std::string bytes;
  bool after_login;  // sent on an authenticated session
  bool half_close;   // we close our write side right after sending
  bool lenient;      // the server may wait for more bytes until we half-close
};

std::vector<Case> cases() {
  const uint32_t v3 = 196608;
  std::vector<Case> cs;
  cs.push_back({"startup length 3", be32(3), false, false, false});
  cs.push_back({"startup length 0", be32(0) + be32(v3), false, false, false});
  cs.push_back({"startup length 100000", be32(100000) + be32(v3) + cstr("user") + cstr("md5user"),
                false, false, false});
  cs.push_back({"startup length larger than the bytes sent, then EOF",
                be32(200) + be32(v3) + cstr("user") + cstr("md5user"), false, true, true});
  cs.push_back({"protocol version 2.0",
                startup_packet({{"user", "md5user"}, {"database", "testdb"}}, 0x00020000), false,
                false, false});
  cs.push_back({"unknown protocol code", startup_packet({{"user", "md5user"}}, 0x12345678), false,
                false, false});
  cs.push_back({"startup packet without user", startup_packet({{"database", "testdb"}}), false,
                false, false});
  cs.push_back({"20000-byte startup packet",
                startup_packet({{"user", "md5user"},
                                {"database", "testdb"},
                                {"application_name", std::string(20000, 'a')}}),
                false, false, false});
  {
    std::string body = be32(v3) + "user" + std::string(1, '\0') + "md5user";  // no terminators
    cs.push_back({"startup parameters not terminated",
                  be32(static_cast<uint32_t>(body.size() + 4)) + body, false, false, false});
  }
  cs.push_back({"cancel request with a short length", be32(12) + be32(80877102) + be32(1), false,
                false, true});
  cs.push_back({"EOF right after connect", "", false, true, true});
  cs.push_back({"invalid message type byte after login", msg('\x01', ""), true, false, false});
  cs.push_back({"message length 2 after login", std::string("Q") + be32(2), true, false, false});
  cs.push_back({"message length 0x7fffffff after login",
                std::string("Q") + be32(0x7fffffff) + "select 1", true, false, false});
  cs.push_back({"password message after login", msg('p', cstr("md5pass")), true, false, false});
  cs.push_back({"query message truncated by EOF after login",
                std::string("Q") + be32(100) + "select", true, true, true});
  return cs;
}

TEST_CASE("malformed input gets an error or a close, never a hang") {
  Pooler p;
  Conn good = connect(p.conninfo());
  CHECK(scalar(good.get(), "select 1") == "1");
  for (const Case& c : cases()) {
    INFO("case: " << std::string(c.name));
    Conn holder;
    Raw r;
    if (c.after_login) {
      holder = connect(p.conninfo("md5user", "md5pass", "testdb", "sslmode=disable"));
      CHECK(scalar(holder.get(), "select 1") == "1");
      r = Raw::from_libpq(holder.get());
    } else {
      r = Raw::tcp(p.port());
    }
    if (!c.bytes.empty()) CHECK(r.send_bytes(c.bytes));
    if (c.half_close) r.shutdown_write();
    auto t0 = Clock::now();
    Reaction re = react(r, c.lenient);
    std::string desc = std::string(c.name) + ": ";
    if (re.error) desc += "ErrorResponse " + re.sqlstate + ",";
    desc += re.closed ? " closed" : " still open";
    if (re.needed_half_close) desc += " (after our EOF)";
    desc += " in " + std::to_string(seconds_since(t0)) + " s";
    if (!re.error && !re.first_bytes.empty()) desc += "; got " + hex(re.first_bytes);
    MESSAGE(desc);
    CHECK_MESSAGE((re.error || re.closed), "no reaction: " << desc);
    if (!re.error)
      CHECK_MESSAGE(re.first_bytes.empty(), "unexpected bytes " << hex(re.first_bytes));
    // The good client is unaffected and the pooler is alive.
    CHECK(scalar(good.get(), "select 'still good'") == "still good");
    if (!p.direct()) CHECK(p.alive());
  }
  // New logins still work after all of that.
  Conn after = connect(p.conninfo("scramuser", "scrampass"));
  CHECK(scalar(after.get(), "select 2") == "2");
}

TEST_CASE("many half-open and garbage connections at once") {
  Pooler p;
  Conn good = connect(p.conninfo());
  std::vector<Raw> raws;
  for (int i = 0; i < 50; ++i) {
    raws.push_back(Raw::tcp(p.port()));
    // Every other one sends half a startup packet and stalls.
    if (i % 2 == 0) raws.back().send_bytes(be32(40) + be32(196608));
  }
  CHECK(scalar(good.get(), "select 'busy but fine'") == "busy but fine");
  Conn fresh = connect(p.conninfo());
  CHECK(scalar(fresh.get(), "select 3") == "3");
  raws.clear();
  CHECK(scalar(good.get(), "select 4") == "4");
  if (!p.direct()) CHECK(p.alive());
}

}  // namespace
}  // namespace it
