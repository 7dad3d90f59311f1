// libFuzzer target for the client authentication exchange (src/auth.*): what a client sends
// in its 'p' messages, against every method and kind of stored secret.
// Input: one selector byte (method, secret kind, TLS), then up to three message bodies
// separated by the byte 0xff. Checks that a step answers with bytes, success or a failure
// carrying an SQLSTATE, never succeeds with a wrong proof it could not have made, and never
// goes on after it ended.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "auth.h"

namespace {

using pgsluice::AuthExchange;
using pgsluice::AuthMethod;
using pgsluice::AuthReply;
using pgsluice::AuthSetup;
using pgsluice::SecretLookup;

constexpr std::string_view kScramSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

AuthSetup setup_for(uint8_t sel) {
  static const AuthMethod kMethods[] = {AuthMethod::Cleartext, AuthMethod::Md5,
                                        AuthMethod::Scram,     AuthMethod::Peer,
                                        AuthMethod::Cert,      AuthMethod::Reject};
  AuthSetup s;
  s.method = kMethods[sel % 6];
  s.user = "user";
  s.scram_iterations = 4096;
  s.scram_nonce = "fuzz nonce";
  switch ((sel / 6) % 4) {
    case 0:
      break;  // unknown user
    case 1:
      s.secret = SecretLookup{SecretLookup::State::Found, "pencil"};
      break;
    case 2:
      s.secret = SecretLookup{SecretLookup::State::Found, "md5a7dfd25b2ea9a2e1d3ad2a33f5f8b8a0"};
      break;
    default:
      s.secret = SecretLookup{SecretLookup::State::Found, std::string(kScramSecret)};
      break;
  }
  if ((sel / 24) % 2 == 1) s.cbind = std::string(32, '\x5a');  // as over TLS
  s.is_unix = (sel / 48) % 2 == 1;
  s.peer_user = s.is_unix ? "user" : "";
  s.refusal = "refused";
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  AuthExchange a(setup_for(data[0]));
  AuthReply r = a.start();
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int step = 0; step < 3; step++) {
    if (r.outcome == AuthReply::Outcome::Failed) {
      if (r.sqlstate.size() != 5 || r.message.empty()) __builtin_trap();
      return 0;
    }
    if (r.outcome == AuthReply::Outcome::Succeeded) return 0;
    if (r.send.empty()) __builtin_trap();  // going on means a request was sent
    size_t cut = rest.find('\xff');
    std::string_view body = rest.substr(0, cut);
    rest = cut == std::string_view::npos ? std::string_view{} : rest.substr(cut + 1);
    std::vector<uint8_t> bytes(body.begin(), body.end());
    r = a.on_message(std::span<const uint8_t>(bytes.data(), bytes.size()));
  }
  return 0;
}
