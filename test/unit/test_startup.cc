// Unit tests for startup.h: what a client's first bytes ask for, under each sslmode.
#include <doctest/doctest.h>

#include <string>

#include "startup.h"
#include "wire.h"

namespace pgsluice {
namespace {

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; i++) s[static_cast<size_t>(i)] = static_cast<char>(v >> (24 - 8 * i));
  return s;
}
const std::string kSsl = be32(8) + be32(wire::kSslCode);
const std::string kGss = be32(8) + be32(wire::kGssCode);
std::string startup() {
  std::string body = be32(196608) + std::string("user\0u\0\0", 8);
  return be32(static_cast<uint32_t>(body.size() + 4)) + body;
}
const std::string kCancel = be32(16) + be32(wire::kCancelCode) + be32(1) + be32(2);

OpeningStep step(const Opening& o, const std::string& in) {
  return next_opening_step(
      o, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(in.data()), in.size()));
}

Opening tcp(bool offered, bool required) {
  Opening o;
  o.tls_offered = offered;
  o.tls_required = required;
  return o;
}

TEST_CASE("startup: SSLRequest is answered S where TLS is offered, N elsewhere") {
  CHECK(step(tcp(true, false), kSsl).action == OpeningAction::AnswerS);
  CHECK(step(tcp(false, false), kSsl).action == OpeningAction::AnswerN);
  CHECK(step(tcp(true, false), kGss).action == OpeningAction::AnswerN);
  OpeningStep s = step(tcp(true, false), kSsl);
  CHECK(s.len == 8);
  CHECK(s.code == wire::kSslCode);
}

TEST_CASE("startup: partial input waits; a bad length word is refused at once") {
  CHECK(step(tcp(true, false), "").action == OpeningAction::NeedMore);
  OpeningStep s = step(tcp(true, false), kSsl.substr(0, 3));
  CHECK(s.action == OpeningAction::NeedMore);
  CHECK(s.len == 4);
  s = step(tcp(true, false), kSsl.substr(0, 6));
  CHECK(s.action == OpeningAction::NeedMore);
  CHECK(s.len == 8);
  CHECK(step(tcp(true, false), be32(3)).action == OpeningAction::BadLength);
  CHECK(step(tcp(true, false), be32(10001)).action == OpeningAction::BadLength);
  std::string su = startup();
  s = step(tcp(false, false), su.substr(0, 10));
  CHECK(s.action == OpeningAction::NeedMore);
  CHECK(s.len == su.size());
}

TEST_CASE("startup: bytes behind a request before its answer are refused (CVE-2021-23214)") {
  for (bool offered : {true, false}) {
    CHECK(step(tcp(offered, false), kSsl + startup()).action == OpeningAction::RefuseTrailing);
    CHECK(step(tcp(offered, false), kSsl + "x").action == OpeningAction::RefuseTrailing);
    OpeningStep g = step(tcp(offered, false), kGss + "x");
    CHECK(g.action == OpeningAction::RefuseTrailing);
    CHECK(g.code == wire::kGssCode);
  }
}

TEST_CASE("startup: one request of each kind; none inside TLS") {
  Opening o = tcp(false, false);
  note_opening_step(o, step(o, kSsl));
  CHECK(o.ssl_asked);
  CHECK(step(o, kSsl).action == OpeningAction::RefuseRepeated);
  CHECK(step(o, kGss).action == OpeningAction::AnswerN);
  note_opening_step(o, step(o, kGss));
  CHECK(step(o, kGss).action == OpeningAction::RefuseRepeated);
  CHECK(step(o, startup()).action == OpeningAction::Packet);

  Opening t = tcp(true, true);
  note_opening_step(t, step(t, kSsl));
  t.in_tls = true;
  OpeningStep r = step(t, kSsl);
  CHECK(r.action == OpeningAction::RefuseRepeated);
  CHECK(r.code == wire::kSslCode);
  CHECK(step(t, kGss).action == OpeningAction::RefuseRepeated);
  CHECK(step(t, startup()).action == OpeningAction::Packet);
}

TEST_CASE("startup: direct TLS only as the first byte, only where TLS is offered") {
  std::string hello("\x16\x03\x01\x00\x10", 5);
  OpeningStep d = step(tcp(true, false), hello);
  CHECK(d.action == OpeningAction::DirectTls);
  CHECK(d.len == hello.size());
  CHECK(step(tcp(false, false), hello).action == OpeningAction::RefuseDirectTls);
  Opening o = tcp(true, false);
  note_opening_step(o, d);
  CHECK(o.ssl_asked);
  CHECK(o.started);
  // After an 'N', a TLS record is no length word: refused as a bad length.
  Opening n = tcp(false, false);
  note_opening_step(n, step(n, kSsl));
  CHECK(step(n, hello).action == OpeningAction::BadLength);
}

TEST_CASE("startup: require refuses a plain startup packet, not a cancel request") {
  CHECK(step(tcp(true, true), startup()).action == OpeningAction::RefusePlain);
  CHECK(step(tcp(true, true), kCancel).action == OpeningAction::Packet);
  CHECK(step(tcp(true, false), startup()).action == OpeningAction::Packet);
  Opening t = tcp(true, true);
  t.in_tls = true;
  t.started = true;
  CHECK(step(t, startup()).action == OpeningAction::Packet);
}

}  // namespace
}  // namespace pgsluice
