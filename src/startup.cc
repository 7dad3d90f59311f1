// The opening of a client connection: encryption requests, direct TLS, sslmode rules.
#include "startup.h"

#include "wire.h"

namespace pgsluice {

OpeningStep next_opening_step(const Opening& o, std::span<const uint8_t> in) {
  OpeningStep st;
  if (in.empty()) {
    st.len = 1;
    return st;
  }
  if (!o.started && !o.in_tls && in[0] == kTlsHandshakeRecord) {
    // PostgreSQL 17's direct TLS: no length word can start with 0x16 (it would be hundreds
    // of megabytes). Only as the connection's first byte, and only once.
    st.action = o.tls_offered ? OpeningAction::DirectTls : OpeningAction::RefuseDirectTls;
    st.len = in.size();
    return st;
  }
  if (in.size() < 4) {
    st.len = 4;
    return st;
  }
  size_t len = wire::get_u32(in.data());
  if (len < 8 || len > wire::kMaxStartupLen) {
    st.action = OpeningAction::BadLength;  // at once, as soon as the length word is here
    return st;
  }
  if (in.size() < 8) {
    st.len = 8;
    return st;
  }
  uint32_t code = wire::get_u32(in.data() + 4);
  if (len == 8 && (code == wire::kSslCode || code == wire::kGssCode)) {
    st.code = code;
    st.len = 8;
    const bool ssl = code == wire::kSslCode;
    // One of each, in either order, as PostgreSQL; inside TLS neither (PostgreSQL reads
    // them as startup packets of protocol 1234.5679/5680 and refuses them).
    if (o.in_tls || (ssl ? o.ssl_asked : o.gss_asked)) {
      st.action = OpeningAction::RefuseRepeated;
    } else if (in.size() > 8) {
      // Sent before our answer: unencrypted, and perhaps injected by a man in the middle.
      st.action = OpeningAction::RefuseTrailing;
    } else {
      st.action = ssl && o.tls_offered ? OpeningAction::AnswerS : OpeningAction::AnswerN;
    }
    return st;
  }
  if (in.size() < len) {
    st.len = len;
    return st;
  }
  st.len = len;
  // A CancelRequest is answered in plain text whatever the mode (libpq sends it so).
  const bool cancel = code == wire::kCancelCode;
  st.action =
      o.tls_required && !o.in_tls && !cancel ? OpeningAction::RefusePlain : OpeningAction::Packet;
  return st;
}

void note_opening_step(Opening& o, const OpeningStep& step) {
  if (step.action == OpeningAction::NeedMore) return;
  o.started = true;
  switch (step.action) {
    case OpeningAction::DirectTls:
    case OpeningAction::AnswerS:
      o.ssl_asked = true;
      break;
    case OpeningAction::AnswerN:
      (step.code == wire::kSslCode ? o.ssl_asked : o.gss_asked) = true;
      break;
    default:
      break;
  }
}

}  // namespace pgsluice
