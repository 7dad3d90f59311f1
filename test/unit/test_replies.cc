// The reply bookkeeping (replies.h) without sockets: what each server message means for the
// requests in flight, and when the exchange is over.
#include <doctest/doctest.h>

#include <string>

#include "replies.h"
#include "wire.h"

namespace pgsluice {
namespace {

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

using Kind = ReplyVerdict::Kind;

// The client side as the data path does it: push a request, mark the segment.
void send(ReplyBook& b, char type) {
  b.queue_.push(static_cast<uint8_t>(type));
  if (type == 'S')
    b.unsynced_ = false;
  else if (type != 'Q')
    b.unsynced_ = true;
}

ReplyVerdict reply(ReplyBook& b, ClientStmts& names, char type, const std::string& body = {}) {
  return b.on_reply(static_cast<uint8_t>(type), bytes(body), names, false);
}

std::string error_body(const std::string& sqlstate, const std::string& msg) {
  std::string m;
  wire::error_response(m, "ERROR", sqlstate, msg);
  return m.substr(5);
}

}  // namespace

TEST_CASE("replies: a simple query and an extended segment pop their requests") {
  ReplyBook b;
  ClientStmts names;
  send(b, 'Q');
  CHECK(reply(b, names, 'T').kind == Kind::Forward);
  CHECK(reply(b, names, 'D').kind == Kind::Forward);
  CHECK(reply(b, names, 'C', std::string("SELECT 1\0", 9)).kind == Kind::Forward);
  auto z = reply(b, names, 'Z', "I");
  CHECK(z.ready);
  CHECK(b.queue_.empty());
  for (char t : {'P', 'B', 'D', 'E', 'S'}) send(b, t);
  for (char t : {'1', '2', 'T', 'D'}) CHECK(reply(b, names, t).kind == Kind::Forward);
  CHECK(b.queue_.size() == 2);  // Execute and Sync
  reply(b, names, 'C', std::string("SELECT 1\0", 9));
  CHECK(b.queue_.size() == 1);
  CHECK(!b.unsynced_);
  reply(b, names, 'Z', "I");
  CHECK(b.queue_.empty());
}

TEST_CASE("replies: extended COPY IN keeps the segment unsynced; CopyFail skips to a Sync") {
  ReplyBook b;
  ClientStmts names;
  for (char t : {'P', 'B', 'E', 'S'}) send(b, t);
  reply(b, names, '1');
  reply(b, names, '2');
  auto g = reply(b, names, 'G');
  CHECK(g.copy_in == 1);
  CHECK(b.copy_);
  CHECK(b.unsynced_);           // the Sync sent with the Execute is ignored by PostgreSQL
  CHECK(b.queue_.size() == 1);  // only the Execute: its Sync is dropped
  auto e = reply(b, names, 'E', error_body("57014", "COPY from stdin failed: no"));
  CHECK(e.copy_in == 0);
  CHECK(!b.copy_);
  CHECK(b.skip_to_sync_);  // PostgreSQL discards everything up to the next Sync
  CHECK(b.queue_.empty());
  CHECK(b.unsynced_);
}

TEST_CASE("replies: an error in a pipeline unwinds the rest of its segment only") {
  ReplyBook b;
  ClientStmts names;
  for (char t : {'P', 'B', 'E', 'S', 'P', 'B', 'E', 'S'}) send(b, t);
  reply(b, names, 'E', error_body("42601", "syntax error"));
  CHECK(b.skip_to_sync_);
  CHECK(b.queue_.size() == 5);  // the first Sync and the second segment
  reply(b, names, 'Z', "I");
  CHECK(!b.skip_to_sync_);
  CHECK(b.queue_.size() == 4);
  for (char t : {'1', '2'}) reply(b, names, t);
  reply(b, names, 'C', std::string("SELECT 1\0", 9));
  reply(b, names, 'Z', "I");
  CHECK(b.queue_.empty());
}

TEST_CASE("replies: injected requests are swallowed, fakes answered in order") {
  ReplyBook b;
  ClientStmts names;
  auto e = stmt_registry().get(std::string("select 42\0\0\0", 12));
  b.stmts_.add(e);
  b.stmts_.set_pending(e->id, 0);
  b.queue_.push(Request{'P', ReqAction::Skip, e->id, -1, -1, -1, 0});
  b.queue_.push(Request{'P', ReqAction::Fake, 0, -1, -1, -1, 0});
  b.queue_.push(Request{'B', ReqAction::Forward, e->id, -1, -1, -1, 0});
  std::string out;
  b.take_fakes(out, &names);
  CHECK(out.empty());  // the fake waits behind the injected Parse
  CHECK(reply(b, names, '1').kind == Kind::Swallow);
  CHECK(b.stmts_.confirmed(e->id));
  b.take_fakes(out, &names);
  CHECK(out == std::string("1\0\0\0\4", 5));
  CHECK(reply(b, names, '2').kind == Kind::Forward);
  CHECK(b.queue_.empty());
}

TEST_CASE("replies: an error about a remapped statement is renamed to the client's name") {
  ReplyBook b;
  ClientStmts names;
  auto e = stmt_registry().get(std::string("select $1\0\0\0", 12));
  names.set("mine", e);
  b.queue_.push(Request{'B', ReqAction::Forward, e->id, -1, -1, name_tag("mine"), 0});
  b.queue_.push(Request{'S', ReqAction::Forward, 0, -1, -1, -1, 0});
  auto v =
      reply(b, names, 'E',
            error_body("08P01", "bind message supplies 0 parameters, but prepared statement \"" +
                                    e->server_name + "\" requires 1"));
  REQUIRE(v.kind == Kind::Rewrite);
  CHECK(v.rewritten.find("\"mine\"") != std::string::npos);
  CHECK(v.rewritten.find(e->server_name) == std::string::npos);
}

TEST_CASE("replies: a skipped Parse gives the client's name back; DEALLOCATE ALL drops all") {
  ReplyBook b;
  ClientStmts names;
  auto e = stmt_registry().get(std::string("select 7\0\0\0", 11));
  int undo = b.add_undo("s1", nullptr);
  names.set("s1", e);
  b.queue_.push(Request{'B', ReqAction::Forward, 0, -1, -1, -1, 0});
  b.queue_.push(Request{'P', ReqAction::Forward, e->id, -1, undo, -1, 0});
  b.queue_.push(Request{'S', ReqAction::Forward, 0, -1, -1, -1, 0});
  reply(b, names, 'E', error_body("26000", "nope"));  // the Bind failed; the Parse is skipped
  CHECK(names.find("s1") == nullptr);
  reply(b, names, 'Z', "I");
  CHECK(b.queue_.undos.empty());
  names.set("s1", e);
  b.queue_.push(Request{'Q', ReqAction::Forward, 0, -1, -1, -1, 0});
  reply(b, names, 'C', std::string("DEALLOCATE ALL\0", 15));
  CHECK(names.size() == 0);
}

TEST_CASE("replies: protocol violations close the server") {
  ReplyBook b;
  ClientStmts names;
  send(b, 'Q');
  CHECK(reply(b, names, 'Z', "X").kind == Kind::Close);
  CHECK(reply(b, names, 'K').kind == Kind::Close);
  CHECK(reply(b, names, 'R').kind == Kind::Close);
}

}  // namespace pgsluice
