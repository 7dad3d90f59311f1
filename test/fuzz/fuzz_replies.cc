// libFuzzer target: the reply bookkeeping (replies.h) driven by a script of client requests
// and server replies, as the data path feeds it. Asserts that no index it hands out dangles,
// that fake answers are well-formed messages, and that a finished exchange leaves no undo log.
#include <cstddef>
#include <cstdint>
#include <string>

#include "replies.h"
#include "wire.h"

namespace {
using namespace pgsluice;

struct Script {
  const uint8_t* p;
  size_t n;
  size_t i = 0;
  bool more() const { return i < n; }
  uint8_t byte() { return i < n ? p[i++] : 0; }
};

void check_indexes(const ReplyBook& b) {
  for (size_t k = 0; k < b.queue_.size(); k++) {
    const Request& r = b.queue_.at(k);
    if (r.rename >= 0 && !b.queue_.renames.valid(r.rename)) __builtin_trap();
    if (r.client_name >= 0 && !b.queue_.undos.valid(r.client_name)) __builtin_trap();
    if (r.type == 'Q' && r.action == ReqAction::Fake && !b.queue_.renames.valid(r.tag))
      __builtin_trap();
  }
}

void check_fakes(const std::string& out) {
  size_t pos = 0;
  while (pos < out.size()) {
    if (out.size() - pos < wire::kHeaderLen) __builtin_trap();
    size_t len = wire::get_u32(reinterpret_cast<const uint8_t*>(out.data()) + pos + 1);
    if (len < 4 || len > out.size() - pos - 1) __builtin_trap();
    pos += len + 1;
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char kReq[] = "QPBDECSF";
  static const char kReply[] = "Z123nTCIsEGHWDNAKRS";
  static const char* kNames[] = {"", "a", "b"};
  ReplyBook book;
  ClientStmts names;
  StmtRegistry& reg = stmt_registry();
  std::shared_ptr<const StmtEntry> entries[3] = {reg.get(std::string("select 1\0\0\0", 11)),
                                                 reg.get(std::string("select 2\0\0\0", 11)),
                                                 reg.get(std::string("select 3\0\0\0", 11))};
  Script s{data, size};
  while (s.more()) {
    uint8_t op = s.byte();
    if ((op & 1) == 0) {  // the client sends a request
      Request r;
      r.type = static_cast<uint8_t>(kReq[s.byte() % 8]);
      r.action = static_cast<ReqAction>(s.byte() % 3);
      uint8_t f = s.byte();
      const auto& e = entries[f % 3];
      if (f & 4) r.stmt = e->id;
      if (f & 8) r.rename = book.add_rename(e->server_name, kNames[(f >> 4) % 3]);
      if (f & 64) {
        std::string_view name = kNames[(f >> 4) % 3];
        const auto* prev = names.find(name);
        r.client_name = book.add_undo(name, prev ? *prev : nullptr);
        names.set(name, e);
      }
      if (r.type == 'Q' && r.action == ReqAction::Fake) r.tag = book.add_rename("DEALLOCATE", "");
      if (r.type == 'P' && r.stmt != 0) {
        book.stmts_.add(e);
        book.stmts_.set_pending(e->id, book.syncs_sent_);
      }
      if (r.type == 'S') {
        book.unsynced_ = false;
        book.syncs_sent_++;
      } else if (r.type != 'Q' && r.type != 'F') {
        book.unsynced_ = true;
      }
      book.queue_.push(r);
    } else {  // PostgreSQL answers
      uint8_t type = static_cast<uint8_t>(kReply[s.byte() % (sizeof kReply - 1)]);
      size_t len = s.byte() % 24;
      std::string body;
      for (size_t k = 0; k < len && s.more(); k++) body.push_back(static_cast<char>(s.byte()));
      if (type == 'Z' && (op & 2)) body = std::string(1, "ITE"[(op >> 2) % 3]);
      if (type == 'C' && (op & 2)) body = std::string("DEALLOCATE ALL\0", 15);
      std::span<const uint8_t> b(reinterpret_cast<const uint8_t*>(body.data()), body.size());
      if (!book.needs_whole(type)) b = {};
      ReplyVerdict v = book.on_reply(type, b, names, (op & 4) != 0);
      if (v.kind == ReplyVerdict::Kind::Close) break;  // the server is closed
      if (v.kind == ReplyVerdict::Kind::Rewrite) check_fakes(v.rewritten);
      if (v.kind == ReplyVerdict::Kind::Replay) {
        book.stmts_.remove(v.replay_stmt);
        book.queue_.push(Request{'C', ReqAction::Skip, 0, -1, -1, -1, 0});
      }
      if (type == 'Z' && v.kind == ReplyVerdict::Kind::Forward && book.queue_.empty() &&
          (!book.queue_.renames.empty() || !book.queue_.undos.empty()))
        __builtin_trap();
    }
    std::string fakes;
    book.take_fakes(fakes, (op & 8) ? nullptr : &names);
    check_fakes(fakes);
    check_indexes(book);
  }
  return 0;
}
