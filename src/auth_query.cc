#include "auth_query.h"

#include "wire.h"

namespace pgsluice {

const char* const kLookupPrologue =
    "BEGIN; SET LOCAL search_path TO DEFAULT; "
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, ' OPERATOR(pg_catalog.||) "
    "pg_catalog.current_setting('search_path') OPERATOR(pg_catalog.||) ', pg_temp', true)";

std::string lookup_messages(std::string_view query, std::string_view user) {
  std::string m;
  wire::query(m, kLookupPrologue);
  wire::Writer(m).begin('P').cstr("").cstr(query).i16(0).end();
  // Bind: unnamed portal and statement, no format codes (text), one text parameter,
  // results in text.
  wire::Writer(m)
      .begin('B')
      .cstr("")
      .cstr("")
      .i16(0)
      .i16(1)
      .i32(static_cast<int32_t>(user.size()))
      .bytes(user)
      .i16(0)
      .end();
  wire::Writer(m).begin('D').u8('P').cstr("").end();
  wire::Writer(m).begin('E').cstr("").i32(0).end();
  wire::Writer(m).begin('S').end();
  wire::query(m, "COMMIT");
  return m;
}

void LookupReply::fail(std::string why) {
  if (failed_) return;
  failed_ = true;
  why_ = std::move(why);
}

void LookupReply::on_message(uint8_t type, std::span<const uint8_t> body) {
  wire::Reader r(body);
  // The prologue's own row (set_config) comes before the first ReadyForQuery; only the
  // query's rows, between the first and the second, are the answer.
  if ((type == 'T' || type == 'D') && ready_ != 1) return;
  switch (type) {
    case 'Z':
      ready_++;
      break;
    case 'E': {
      auto f = wire::parse_error(body);
      if (!failed_) sqlstate_ = f.sqlstate;
      fail("auth_query failed: " + f.message);
      break;
    }
    case 'T': {  // only the query's own row description comes (Describe portal)
      uint16_t cols = 0;
      if (!r.u16(cols))
        fail("bad RowDescription from auth_query");
      else if (cols != 2)
        fail("expected 2 columns from auth_query, not " + std::to_string(cols));
      break;
    }
    case 'D': {
      uint16_t cols = 0;
      int32_t len = 0;
      std::span<const uint8_t> name, secret;
      if (!r.u16(cols) || cols != 2) {
        fail("expected 2 columns from auth_query");
        break;
      }
      if (!r.i32(len) || len < -1 || (len >= 0 && !r.bytes(static_cast<size_t>(len), name))) {
        fail("malformed row from auth_query");
        break;
      }
      if (len == -1) {
        // A NULL name is "no such user": a function returning a record (PgBouncer's
        // documented user_lookup) answers an unknown name with one row of NULLs.
        if (!r.i32(len) || (len >= 0 && !r.bytes(static_cast<size_t>(len), secret)) || !r.at_end())
          fail("malformed row from auth_query");
        break;
      }
      if (!r.i32(len)) {
        fail("malformed row from auth_query");
        break;
      }
      if (++rows_ > 1) {
        fail("auth_query returned more than one row");
        break;
      }
      secret_.clear();
      if (len >= 0) {  // NULL (-1): no usable password, as an expired one
        if (static_cast<size_t>(len) > kMaxLookupSecret ||
            !r.bytes(static_cast<size_t>(len), secret)) {
          fail("auth_query returned an oversized or malformed secret");
          break;
        }
        secret_.assign(reinterpret_cast<const char*>(secret.data()), secret.size());
      }
      if (!r.at_end()) fail("malformed row from auth_query");
      break;
    }
    case '1':
    case '2':
    case 'C':
    case 'N':
    case 'S':
    case 'n':
    case 'A':
      break;
    default:
      fail(std::string("unexpected message from auth_query: ") + static_cast<char>(type));
      break;
  }
}

LookupReply::Result LookupReply::result() const {
  if (failed_) return Result::Failed;
  if (ready_ < kLookupReadyCount) return Result::Pending;
  return rows_ == 1 ? Result::Found : Result::NotFound;
}

}  // namespace pgsluice
