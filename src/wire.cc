// The PostgreSQL wire codec: framing, bounded readers, message builders. Pure: no I/O.
#include "wire.h"

namespace pgsluice::wire {

bool Reader::u8(uint8_t& v) {
  if (!need(1)) return false;
  v = b_[pos_++];
  return true;
}
bool Reader::u16(uint16_t& v) {
  if (!need(2)) return false;
  v = get_u16(b_.data() + pos_);
  pos_ += 2;
  return true;
}
bool Reader::i16(int16_t& v) {
  uint16_t u;
  if (!u16(u)) return false;
  v = static_cast<int16_t>(u);
  return true;
}
bool Reader::u32(uint32_t& v) {
  if (!need(4)) return false;
  v = get_u32(b_.data() + pos_);
  pos_ += 4;
  return true;
}
bool Reader::i32(int32_t& v) {
  uint32_t u;
  if (!u32(u)) return false;
  v = static_cast<int32_t>(u);
  return true;
}
bool Reader::cstr(std::string_view& v) {
  if (!ok_) return false;
  size_t left = b_.size() - pos_;
  if (left == 0) {  // no NUL to find (and an empty span's data() may be null)
    ok_ = false;
    return false;
  }
  const uint8_t* start = b_.data() + pos_;
  const void* nul = std::memchr(start, 0, left);
  if (nul == nullptr) {
    ok_ = false;
    return false;
  }
  size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nul) - start);
  v = std::string_view(reinterpret_cast<const char*>(start), n);
  pos_ += n + 1;
  return true;
}
bool Reader::bytes(size_t n, std::span<const uint8_t>& v) {
  if (!need(n)) return false;
  v = b_.subspan(pos_, n);
  pos_ += n;
  return true;
}

Writer& Writer::begin(char type) {
  out_.push_back(type);
  start_ = out_.size();
  out_.append(4, '\0');
  return *this;
}
Writer& Writer::begin_untyped() {
  start_ = out_.size();
  out_.append(4, '\0');
  return *this;
}
Writer& Writer::u8(uint8_t v) {
  out_.push_back(static_cast<char>(v));
  return *this;
}
Writer& Writer::i16(int16_t v) {
  auto u = static_cast<uint16_t>(v);
  out_.push_back(static_cast<char>(u >> 8));
  out_.push_back(static_cast<char>(u & 0xff));
  return *this;
}
Writer& Writer::i32(int32_t v) {
  return u32(static_cast<uint32_t>(v));
}
Writer& Writer::u32(uint32_t v) {
  uint8_t b[4];
  put_u32(b, v);
  out_.append(reinterpret_cast<const char*>(b), 4);
  return *this;
}
Writer& Writer::cstr(std::string_view s) {
  out_.append(s);
  out_.push_back('\0');
  return *this;
}
Writer& Writer::bytes(std::string_view s) {
  out_.append(s);
  return *this;
}
Writer& Writer::bytes(std::span<const uint8_t> s) {
  out_.append(reinterpret_cast<const char*>(s.data()), s.size());
  return *this;
}
void Writer::end() {
  size_t len = out_.size() - start_;
  put_u32(reinterpret_cast<uint8_t*>(out_.data() + start_), static_cast<uint32_t>(len));
}

const std::string* StartupPacket::param(std::string_view name) const {
  for (const auto& [k, v] : params)
    if (k == name) return &v;
  return nullptr;
}

Result<StartupPacket> parse_startup(std::span<const uint8_t> packet) {
  if (packet.size() < 8 || packet.size() > kMaxStartupLen)
    return Status::error("invalid length of startup packet");
  if (get_u32(packet.data()) != packet.size())
    return Status::error("invalid length of startup packet");
  StartupPacket sp;
  Reader r(packet.subspan(4));
  uint32_t code = 0;
  if (!r.u32(code)) return Status::error("invalid startup packet layout");
  if (code == kSslCode || code == kGssCode) {
    if (!r.at_end()) return Status::error("invalid startup packet layout");
    sp.kind = code == kSslCode ? StartupPacket::Kind::Ssl : StartupPacket::Kind::Gss;
    return sp;
  }
  if (code == kCancelCode) {
    sp.kind = StartupPacket::Kind::Cancel;
    if (!r.u32(sp.cancel_pid)) return Status::error("invalid cancel request");
    size_t k = r.remaining();
    if (k < 4 || k > 256) return Status::error("invalid cancel request");
    std::span<const uint8_t> key;
    if (!r.bytes(k, key)) return Status::error("invalid cancel request");
    sp.cancel_key.assign(reinterpret_cast<const char*>(key.data()), key.size());
    return sp;
  }
  sp.kind = StartupPacket::Kind::Startup;
  sp.version = code;
  if ((code >> 16) != 3) return sp;  // caller rejects the version with its own message
  sp.params.reserve(8);  // user, database, application_name and a few more: one allocation
  for (;;) {
    std::string_view name;
    if (!r.cstr(name))
      return Status::error("invalid startup packet layout: expected terminator as last byte");
    if (name.empty()) break;
    std::string_view value;
    if (!r.cstr(value))
      return Status::error("invalid startup packet layout: expected terminator as last byte");
    sp.params.emplace_back(std::string(name), std::string(value));
  }
  if (!r.at_end())
    return Status::error("invalid startup packet layout: expected terminator as last byte");
  return sp;
}

Result<std::vector<std::pair<std::string, std::string>>> parse_options(std::string_view s) {
  // Split on unescaped whitespace; a backslash escapes the next character.
  std::vector<std::string> words;
  std::string cur;
  bool have = false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size()) {
      cur.push_back(s[++i]);
      have = true;
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (have) words.push_back(std::move(cur));
      cur.clear();
      have = false;
    } else {
      cur.push_back(c);
      have = true;
    }
  }
  if (have) words.push_back(std::move(cur));
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < words.size(); i++) {
    std::string_view w = words[i];
    std::string_view kv;
    std::string joined;
    if (w == "-c") {
      if (i + 1 >= words.size()) return Status::error("invalid options: -c requires a value");
      kv = words[++i];
    } else if (w.size() > 2 && w.substr(0, 2) == "-c") {
      kv = w.substr(2);
    } else if (w.size() > 2 && w.substr(0, 2) == "--") {
      kv = w.substr(2);
    } else {
      return Status::error(
          "unsupported options startup parameter: only '-c name=value' and "
          "'--name=value' are supported");
    }
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return Status::error("invalid options: expected name=value");
    std::string name(kv.substr(0, eq));
    for (auto& ch : name)
      if (ch == '-') ch = '_';
    out.emplace_back(std::move(name), std::string(kv.substr(eq + 1)));
  }
  return out;
}

ErrorFields parse_error(std::span<const uint8_t> body) {
  ErrorFields f;
  Reader r(body);
  std::string s_field;
  for (;;) {
    uint8_t code = 0;
    if (!r.u8(code) || code == 0) break;
    std::string_view v;
    if (!r.cstr(v)) break;
    switch (code) {
      case 'V':
        f.severity = v;
        break;
      case 'S':
        s_field = v;
        break;
      case 'C':
        f.sqlstate = v;
        break;
      case 'M':
        f.message = v;
        break;
      default:
        break;
    }
  }
  if (f.severity.empty()) f.severity = s_field;
  return f;
}

bool parse_auth_request(std::span<const uint8_t> body, AuthRequest& out) {
  Reader r(body);
  out = AuthRequest();
  if (!r.i32(out.code)) return false;
  switch (out.code) {
    case 5:
      return r.bytes(4, out.salt);
    case 10: {
      std::string_view mech;
      while (r.cstr(mech) && !mech.empty())
        if (mech == "SCRAM-SHA-256")
          out.scram_sha_256 = true;
        else if (mech == "SCRAM-SHA-256-PLUS")
          out.scram_sha_256_plus = true;
      return true;
    }
    case 11:
    case 12: {
      auto rest = r.rest();
      out.sasl_data = std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size());
      return true;
    }
    default:
      return true;
  }
}

bool parse_parameter_status(std::span<const uint8_t> body, std::string_view& name,
                            std::string_view& value) {
  Reader r(body);
  return r.cstr(name) && r.cstr(value);
}

bool parse_backend_key(std::span<const uint8_t> body, uint32_t& pid,
                       std::span<const uint8_t>& key) {
  if (body.size() < 8 || body.size() > 260) return false;
  Reader r(body);
  if (!r.u32(pid)) return false;
  key = r.rest();
  return true;
}

size_t frontend_limit(uint8_t type) {
  switch (type) {
    case 'Q':
    case 'F':
    case 'P':
    case 'B':
    case 'd':
      return size_t{1} << 30;  // PQ_LARGE_MESSAGE_LIMIT
    case 'C':
    case 'D':
    case 'E':
    case 'H':
    case 'S':
    case 'X':
    case 'c':
    case 'f':
      return kSmallMessageLimit;
    case 'p':
      return kMaxAuthMessage;
    default:
      return 0;
  }
}

size_t backend_whole_limit(uint8_t type) {
  switch (type) {
    case 'Z':  // ReadyForQuery: one status byte
      return 5;
    case '1':  // ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
    case '2':  // EmptyQueryResponse, CopyDone: no body
    case '3':
    case 'n':
    case 's':
    case 'I':
    case 'c':
      return 4;
    case 'K':  // BackendKeyData: pid and a key of at most 256 bytes (protocol 3.2)
      return 4 + 4 + 256;
    case 'S':  // ParameterStatus, CommandComplete, authentication, NegotiateProtocolVersion
    case 'C':
    case 'R':
    case 'v':
      return 64 * 1024;
    default:  // ErrorResponse, NoticeResponse and the long types
      return 1024 * 1024;
  }
}

void error_response(std::string& out, std::string_view severity, std::string_view sqlstate,
                    std::string_view message) {
  Writer w(out);
  w.begin('E').u8('S').cstr(severity).u8('V').cstr(severity).u8('C').cstr(sqlstate);
  w.u8('M').cstr(message).u8(0).end();
}
void notice_response(std::string& out, std::string_view message) {
  Writer w(out);
  w.begin('N').u8('S').cstr("NOTICE").u8('V').cstr("NOTICE").u8('C').cstr("00000");
  w.u8('M').cstr(message).u8(0).end();
}
void auth_ok(std::string& out) {
  Writer(out).begin('R').i32(0).end();
}
void auth_request(std::string& out, int32_t code, std::span<const uint8_t> extra) {
  Writer(out).begin('R').i32(code).bytes(extra).end();
}
void auth_sasl(std::string& out, std::string_view mechanism) {
  Writer(out).begin('R').i32(10).cstr(mechanism).u8(0).end();
}
void parameter_status(std::string& out, std::string_view name, std::string_view value) {
  Writer(out).begin('S').cstr(name).cstr(value).end();
}
void backend_key_data(std::string& out, uint32_t pid, std::string_view key) {
  Writer(out).begin('K').u32(pid).bytes(key).end();
}
void ready_for_query(std::string& out, char status) {
  Writer(out).begin('Z').u8(static_cast<uint8_t>(status)).end();
}
void negotiate_protocol_version(std::string& out, uint32_t newest_minor,
                                const std::vector<std::string>& unrecognised) {
  Writer w(out);
  w.begin('v').u32(newest_minor).u32(static_cast<uint32_t>(unrecognised.size()));
  for (const auto& o : unrecognised) w.cstr(o);
  w.end();
}
void query(std::string& out, std::string_view sql) {
  Writer(out).begin('Q').cstr(sql).end();
}
void password_message(std::string& out, std::string_view password) {
  Writer(out).begin('p').cstr(password).end();
}
void sasl_initial_response(std::string& out, std::string_view mechanism, std::string_view data) {
  Writer(out).begin('p').cstr(mechanism).i32(static_cast<int32_t>(data.size())).bytes(data).end();
}
void sasl_response(std::string& out, std::string_view data) {
  Writer(out).begin('p').bytes(data).end();
}
void startup_message(std::string& out, const std::vector<std::pair<std::string, std::string>>& p) {
  Writer w(out);
  w.begin_untyped().u32(kProtocol30);
  for (const auto& [k, v] : p) w.cstr(k).cstr(v);
  w.u8(0).end();
}
void cancel_request(std::string& out, uint32_t pid, std::string_view key) {
  Writer(out).begin_untyped().u32(kCancelCode).u32(pid).bytes(key).end();
}
void terminate(std::string& out) {
  Writer(out).begin('X').end();
}

std::string sql_literal(std::string_view v) {
  std::string s = "'";
  for (char c : v) {
    if (c == '\'') s.push_back('\'');
    s.push_back(c);
  }
  s.push_back('\'');
  return s;
}

}  // namespace pgsluice::wire
