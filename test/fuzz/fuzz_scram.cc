// libFuzzer target for the SCRAM and secret parsers: server and client sessions, stored secrets.
// Input: one selector byte, then the payload. For the sessions the payload is two messages
// separated by the first '\n' (first message, final message).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "password.h"
#include "scram.h"

namespace {

using pgsluice::ScramClientSession;
using pgsluice::ScramKeys;
using pgsluice::ScramServerSession;

// RFC 7677 credentials; the server nonce is fixed so the fuzzer can learn a matching final.
constexpr std::string_view kSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr char kServerNonce[] = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kClientNonce = "rOprNGfwEbeRWgbNEkqO";

void split(std::string_view in, std::string_view& a, std::string_view& b) {
  size_t nl = in.find('\n');
  a = in.substr(0, nl);
  b = nl == std::string_view::npos ? std::string_view{} : in.substr(nl + 1);
}

void fuzz_server(std::string_view in, bool mock) {
  std::string_view first, final_msg;
  split(in, first, final_msg);
  auto keys = pgsluice::parse_scram_secret(kSecret);
  if (!keys) __builtin_trap();
  ScramServerSession s(*keys, mock, kServerNonce);
  auto sf = s.handle_client_first(first);
  if (!sf) return;
  if (sf->size() > pgsluice::kScramMaxMessageLen + 64) __builtin_trap();
  auto fin = s.handle_client_final(final_msg);
  if (fin.ok() && (mock || !s.succeeded())) __builtin_trap();
}

void fuzz_client(std::string_view in) {
  std::string_view first, final_msg;
  split(in, first, final_msg);
  // Pass-through keys: no PBKDF2, so a huge i= costs nothing here.
  std::array<uint8_t, 32> ck{}, sk{};
  ck[0] = 1;
  sk[0] = 2;
  ScramClientSession c = ScramClientSession::with_keys(ck, sk);
  c.set_fixed_nonce_for_testing(kClientNonce, "user");
  if (c.client_first().empty()) __builtin_trap();
  auto cf = c.handle_server_first(first);
  if (!cf) return;
  if (cf->size() > 2 * pgsluice::kScramMaxMessageLen) __builtin_trap();
  (void)c.verify_server_final(final_msg);
}

void fuzz_secret(std::string_view in) {
  (void)pgsluice::secret_kind(in);
  auto k = pgsluice::parse_scram_secret(in);
  if (!k) return;
  // What we serialise must parse back to the same keys.
  auto again = pgsluice::parse_scram_secret(pgsluice::scram_secret_string(*k));
  if (!again || again->iterations != k->iterations || again->salt != k->salt ||
      again->stored_key != k->stored_key || again->server_key != k->server_key)
    __builtin_trap();
}

void fuzz_base64(std::string_view in) {
  auto d = pgsluice::base64_decode(in, 4096);
  if (d && pgsluice::base64_decode(pgsluice::base64_encode(*d), 4096) != d) __builtin_trap();
  if (pgsluice::base64_decode(pgsluice::base64_encode(in), 1 << 20) != std::string(in))
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 5) {
    case 0:
      fuzz_server(in, false);
      break;
    case 1:
      fuzz_server(in, true);
      break;
    case 2:
      fuzz_client(in);
      break;
    case 3:
      fuzz_secret(in);
      break;
    default:
      fuzz_base64(in);
      break;
  }
  return 0;
}
