// libFuzzer target: the bytes a client sends before its startup packet (SSLRequest,
// GSSENCRequest, direct-TLS ClientHello prefixes, garbage), fed in chunks to the same
// classification the client state machine uses (startup.h), with the sslmode flags taken
// from the input. Asserts the promises Client relies on: an answer ('S' or 'N') only to a
// request with nothing behind it (CVE-2021-23214), one of each at most, never 'S' inside
// TLS or where TLS is not offered, direct TLS only at the first byte, no plain-text startup
// packet where TLS is required, and progress on every step.
#include <cstddef>
#include <cstdint>
#include <string>

#include "startup.h"
#include "wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgsluice;
  if (size < 2) return 0;
  Opening o;
  o.tls_offered = (data[0] & 1) != 0;
  o.tls_required = o.tls_offered && (data[0] & 2) != 0;  // config: require implies a context
  const bool handshake_ok = (data[0] & 4) == 0;
  const size_t chunk = 1 + data[1] % 32;
  data += 2;
  size -= 2;
  std::string buf;
  size_t pos = 0;
  int s_answers = 0, n_answers = 0;
  for (;;) {
    std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(buf.data()), buf.size());
    OpeningStep st = next_opening_step(o, in);
    switch (st.action) {
      case OpeningAction::NeedMore: {
        if (st.len <= buf.size() || st.len > wire::kMaxStartupLen) __builtin_trap();
        if (pos >= size) return 0;  // the client went quiet
        size_t n = size - pos < chunk ? size - pos : chunk;
        buf.append(reinterpret_cast<const char*>(data + pos), n);
        pos += n;
        continue;
      }
      case OpeningAction::DirectTls:
        if (o.started || !o.tls_offered || o.in_tls || buf.empty() ||
            static_cast<uint8_t>(buf[0]) != kTlsHandshakeRecord || st.len != buf.size())
          __builtin_trap();
        note_opening_step(o, st);
        if (!handshake_ok) return 0;
        buf.clear();  // OpenSSL took them; what follows is decrypted
        o.in_tls = true;
        continue;
      case OpeningAction::AnswerS:
        if (!o.tls_offered || o.in_tls || o.ssl_asked || buf.size() != 8 || st.len != 8 ||
            ++s_answers > 1)
          __builtin_trap();
        note_opening_step(o, st);
        buf.clear();
        if (!handshake_ok) return 0;
        o.in_tls = true;
        continue;
      case OpeningAction::AnswerN:
        if (buf.size() != 8 || st.len != 8 || o.in_tls || ++n_answers > 2) __builtin_trap();
        if (st.code == wire::kSslCode && (o.tls_offered || o.ssl_asked)) __builtin_trap();
        if (st.code == wire::kGssCode && o.gss_asked) __builtin_trap();
        note_opening_step(o, st);
        buf.clear();
        continue;
      case OpeningAction::RefuseTrailing:
        if (buf.size() <= 8) __builtin_trap();
        return 0;
      case OpeningAction::RefuseRepeated:
        if (!o.in_tls && !(st.code == wire::kSslCode ? o.ssl_asked : o.gss_asked)) __builtin_trap();
        return 0;
      case OpeningAction::RefuseDirectTls:
        if (o.tls_offered || o.started) __builtin_trap();
        return 0;
      case OpeningAction::BadLength:
        return 0;
      case OpeningAction::RefusePlain:
      case OpeningAction::Packet: {
        if (st.len < 8 || st.len > wire::kMaxStartupLen || st.len > buf.size()) __builtin_trap();
        auto sp = wire::parse_startup(in.subspan(0, st.len));
        using Kind = wire::StartupPacket::Kind;
        if (st.action == OpeningAction::RefusePlain) {
          if (!o.tls_required || o.in_tls) __builtin_trap();
          if (sp.ok() && sp->kind == Kind::Cancel) __builtin_trap();  // cancels stay plain
        } else if (o.tls_required && !o.in_tls && !(sp.ok() && sp->kind == Kind::Cancel) &&
                   sp.ok()) {
          __builtin_trap();  // a plain-text startup packet got through
        }
        // Well-formed encryption requests never reach the startup packet parser.
        if (sp.ok() && (sp->kind == Kind::Ssl || sp->kind == Kind::Gss)) __builtin_trap();
        return 0;
      }
    }
  }
}
