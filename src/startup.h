// The opening of a client connection: what its first bytes ask for (SSLRequest,
// GSSENCRequest, direct TLS, a startup or cancel packet) and the client_tls_sslmode rules
// that decide each answer. Pure: no socket, no OpenSSL; Client and fuzz_prestartup use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace pgsluice {

// What the client side of one connection allows, and what happened so far.
struct Opening {
  bool tls_offered = false;   // a client TLS context exists and the socket is TCP
  bool tls_required = false;  // client_tls_sslmode require or stricter, and the socket is TCP
  bool in_tls = false;        // a TLS session is established (after 'S' or direct TLS)
  bool ssl_asked = false;     // an SSLRequest was answered, or TLS began directly
  bool gss_asked = false;     // a GSSENCRequest was answered
  bool started = false;       // bytes were consumed (direct TLS only at the first byte)
};

enum class OpeningAction : uint8_t {
  NeedMore,         // too few bytes to decide; `len` is how many are needed in all
  DirectTls,        // a TLS handshake record at the first byte: every byte read is early
                    // handshake data (`len` = all of them)
  RefuseDirectTls,  // a TLS record where TLS is not offered: close without an answer
  AnswerS,          // SSLRequest (8 bytes): answer 'S' and run the handshake
  AnswerN,          // SSLRequest without TLS, or GSSENCRequest (8 bytes): answer 'N'
  RefuseTrailing,   // bytes behind an SSLRequest or GSSENCRequest, before our answer:
                    // 08P01 "received unencrypted data after SSL request" (CVE-2021-23214)
  RefuseRepeated,   // a second SSLRequest (also inside TLS) or GSSENCRequest: 0A000
                    // "unsupported frontend protocol 1234.5679" as PostgreSQL
  BadLength,        // length word out of [8, 10000]: 08P01 "invalid length of startup packet"
  RefusePlain,      // a startup packet of `len` bytes in plain text where TLS is required:
                    // FATAL 28000
  Packet,           // a startup or cancel packet of `len` bytes for wire::parse_startup
};

struct OpeningStep {
  OpeningAction action = OpeningAction::NeedMore;
  size_t len = 0;     // bytes the step consumes (NeedMore: bytes needed in all)
  uint32_t code = 0;  // AnswerS/N, RefuseTrailing, RefuseRepeated: the request's code
};

// The first byte of a TLS handshake record; a startup packet's length word starts with 0.
inline constexpr uint8_t kTlsHandshakeRecord = 0x16;

// Decides what the bytes at the front of a connection that has not sent its startup packet
// yet ask for. `in` is everything read and not consumed.
OpeningStep next_opening_step(const Opening& o, std::span<const uint8_t> in);

// Updates `o` after the caller acted on `step` (consumed step.len bytes, answered).
void note_opening_step(Opening& o, const OpeningStep& step);

}  // namespace pgsluice
