// The PostgreSQL wire codec: framing, bounded readers, message builders. Pure: no I/O.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common.h"

namespace pgsluice::wire {

constexpr size_t kHeaderLen = 5;  // type byte + Int32 length
constexpr uint32_t kProtocol30 = 196608;
constexpr uint32_t kCancelCode = 80877102;
constexpr uint32_t kSslCode = 80877103;
constexpr uint32_t kGssCode = 80877104;
constexpr size_t kMaxStartupLen = 10000;      // the server's MAX_STARTUP_PACKET_LENGTH
constexpr size_t kSmallMessageLimit = 10000;  // PQ_SMALL_MESSAGE_LIMIT
constexpr size_t kMaxAuthMessage = 65535 + 4;

inline uint32_t get_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint16_t get_u16(const uint8_t* p) {
  return static_cast<uint16_t>((uint32_t{p[0]} << 8) | uint32_t{p[1]});
}
inline void put_u32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

// Bounds-checked reader over a message body. Every call fails (returns false) rather
// than reading past the end; once failed it stays failed.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}
  Reader(const uint8_t* p, size_t n) : b_(p, n) {}
  bool u8(uint8_t& v);
  bool u16(uint16_t& v);
  bool i16(int16_t& v);
  bool u32(uint32_t& v);
  bool i32(int32_t& v);
  bool cstr(std::string_view& v);  // NUL-terminated string
  bool bytes(size_t n, std::span<const uint8_t>& v);
  size_t remaining() const { return ok_ ? b_.size() - pos_ : 0; }
  std::span<const uint8_t> rest() const { return b_.subspan(pos_); }
  bool ok() const { return ok_; }
  bool at_end() const { return ok_ && pos_ == b_.size(); }

 private:
  bool need(size_t n) {
    if (!ok_ || b_.size() - pos_ < n) ok_ = false;
    return ok_;
  }
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Appends one message to a string: begin() writes the type and a length placeholder,
// end() patches the length.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  Writer& begin(char type);
  Writer& begin_untyped();  // startup-phase packet: length only
  Writer& u8(uint8_t v);
  Writer& i16(int16_t v);
  Writer& i32(int32_t v);
  Writer& u32(uint32_t v);
  Writer& cstr(std::string_view s);
  Writer& bytes(std::string_view s);
  Writer& bytes(std::span<const uint8_t> s);
  void end();

 private:
  std::string& out_;
  size_t start_ = 0;
};

// A startup-phase packet from a client.
struct StartupPacket {
  enum class Kind : uint8_t { Startup, Ssl, Gss, Cancel };
  Kind kind = Kind::Startup;
  uint32_t version = 0;
  std::vector<std::pair<std::string, std::string>> params;  // Startup only, in order
  uint32_t cancel_pid = 0;                                  // Cancel only
  std::string cancel_key;                                   // Cancel only (4..256 bytes)
  const std::string* param(std::string_view name) const;
};

// Parses one whole startup-phase packet (including its 4-byte length). Checks the
// length, the layout, the terminating NUL. Does not judge parameters.
Result<StartupPacket> parse_startup(std::span<const uint8_t> packet);

// Splits a startup `options` value into -c name=value / --name=value settings, with
// backslash escapes, as the server does. Other switches are returned as errors.
Result<std::vector<std::pair<std::string, std::string>>> parse_options(std::string_view s);

// Fields of an ErrorResponse / NoticeResponse body.
struct ErrorFields {
  std::string severity;  // 'V' (or 'S')
  std::string sqlstate;  // 'C'
  std::string message;   // 'M'
};
ErrorFields parse_error(std::span<const uint8_t> body);

// Server messages read at login and on the data path. Each returns false when the body
// does not hold what its type promises; the views point into the body.
struct AuthRequest {                // 'R'
  int32_t code = -1;                // 0 ok, 3 cleartext, 5 md5, 10/11/12 SASL
  std::span<const uint8_t> salt;    // 5: the 4-byte salt
  bool scram_sha_256 = false;       // 10: SCRAM-SHA-256 among the offered mechanisms
  bool scram_sha_256_plus = false;  // 10: SCRAM-SHA-256-PLUS (channel binding) offered
  std::string_view sasl_data;       // 11, 12: the server's SCRAM message
};
bool parse_auth_request(std::span<const uint8_t> body, AuthRequest& out);
bool parse_parameter_status(std::span<const uint8_t> body, std::string_view& name,
                            std::string_view& value);  // 'S'
// 'K': the backend's pid and cancel key (4 bytes in protocol 3.0, at most 256 in 3.2).
bool parse_backend_key(std::span<const uint8_t> body, uint32_t& pid, std::span<const uint8_t>& key);

// Frontend (client) message types allowed after startup, and each type's length limit
// (the server's own limits). Returns 0 for a type that is not a frontend message.
size_t frontend_limit(uint8_t type);

// The largest length word (as in the message, so body + 4) pgsluice accepts for a backend
// message of `type` that it reads whole (ReadyForQuery, ParameterStatus, CommandComplete,
// ParseComplete, CloseComplete, errors it renames, login messages, and everything an
// unlinked server sends). PostgreSQL's fixed-size messages get their exact size; libpq
// itself refuses more than 30000 bytes for every type but T, D, d, V, E, N and A, so 64 KiB
// leaves margin for the other short ones; the long types get 1 MiB.
size_t backend_whole_limit(uint8_t type);

// ---- builders (append to `out`) ----
void error_response(std::string& out, std::string_view severity, std::string_view sqlstate,
                    std::string_view message);
void notice_response(std::string& out, std::string_view message);
void auth_ok(std::string& out);
void auth_request(std::string& out, int32_t code, std::span<const uint8_t> extra = {});
void auth_sasl(std::string& out, std::string_view mechanism);
void parameter_status(std::string& out, std::string_view name, std::string_view value);
void backend_key_data(std::string& out, uint32_t pid, std::string_view key);
void ready_for_query(std::string& out, char status);
void negotiate_protocol_version(std::string& out, uint32_t newest_minor,
                                const std::vector<std::string>& unrecognised);
void query(std::string& out, std::string_view sql);
void password_message(std::string& out, std::string_view password);
void sasl_initial_response(std::string& out, std::string_view mechanism, std::string_view data);
void sasl_response(std::string& out, std::string_view data);
void startup_message(std::string& out, const std::vector<std::pair<std::string, std::string>>& p);
void cancel_request(std::string& out, uint32_t pid, std::string_view key);
void terminate(std::string& out);

// Quotes a value as an SQL string literal ('...' with quotes doubled).
std::string sql_literal(std::string_view v);

}  // namespace pgsluice::wire
