// Unit tests for password.h: secret kinds, md5 secrets, responses and verification.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>

#include "password.h"

namespace pgsluice {
namespace {

const uint8_t kSalt[4] = {1, 2, 3, 4};

TEST_CASE("secret_kind classifies stored secrets") {
  CHECK(secret_kind("md520c46e3762c864548e296b33c3406aa9") == SecretKind::Md5);
  CHECK(secret_kind("md520C46E3762C864548E296B33C3406AA9") == SecretKind::Plain);   // uppercase
  CHECK(secret_kind("md520c46e3762c864548e296b33c3406aa") == SecretKind::Plain);    // 31 hex
  CHECK(secret_kind("md520c46e3762c864548e296b33c3406aa9f") == SecretKind::Plain);  // 33 hex
  CHECK(secret_kind("md520c46e3762c864548e296b33c3406aag") == SecretKind::Plain);
  CHECK(secret_kind("SCRAM-SHA-256$4096:abc$def:ghi") == SecretKind::Scram);
  CHECK(secret_kind("SCRAM-SHA-256$") == SecretKind::Scram);
  CHECK(secret_kind("SCRAM-SHA-256") == SecretKind::Plain);
  CHECK(secret_kind("pencil") == SecretKind::Plain);
  CHECK(secret_kind("") == SecretKind::Plain);
}

TEST_CASE("md5_secret matches md5sum of password+user") {
  // printf 'penciluser' | md5sum  ->  20c46e3762c864548e296b33c3406aa9
  CHECK(md5_secret("pencil", "user") == "md520c46e3762c864548e296b33c3406aa9");
  CHECK(secret_kind(md5_secret("x", "y")) == SecretKind::Md5);
}

TEST_CASE("md5_response matches an independent computation") {
  // python: 'md5' + md5(md5(b'penciluser').hexdigest().encode() + bytes([1,2,3,4])).hexdigest()
  const std::string want = "md54376eb6913b38f9aaff38dc7cf19ca76";
  CHECK(md5_response("pencil", "user", kSalt) == want);
  CHECK(md5_response(md5_secret("pencil", "user"), "user", kSalt) == want);
  CHECK(md5_response("SCRAM-SHA-256$4096:a$b:c", "user", kSalt).empty());
}

TEST_CASE("md5_verify round trip") {
  const std::string secret = md5_secret("pencil", "user");
  const std::string resp = md5_response("pencil", "user", kSalt);
  CHECK(md5_verify("pencil", "user", kSalt, resp));
  CHECK(md5_verify(secret, "user", kSalt, resp));
  CHECK_FALSE(md5_verify("pencil", "other", kSalt, resp));
  CHECK_FALSE(md5_verify("pencil2", "user", kSalt, resp));
  const uint8_t other_salt[4] = {1, 2, 3, 5};
  CHECK_FALSE(md5_verify("pencil", "user", other_salt, resp));
  CHECK_FALSE(md5_verify("pencil", "user", kSalt, resp.substr(0, 34)));
  CHECK_FALSE(md5_verify("pencil", "user", kSalt, ""));
  CHECK_FALSE(md5_verify("", "user", kSalt, md5_response("", "user", kSalt)));
  CHECK_FALSE(md5_verify("SCRAM-SHA-256$4096:a$b:c", "user", kSalt, resp));
  // The stored md5 secret is password-equivalent: a client holding it can answer.
  CHECK(md5_verify("pencil", "user", kSalt, md5_response(secret, "user", kSalt)));
}

TEST_CASE("constant_time_eq and random_bytes") {
  CHECK(constant_time_eq("", ""));
  CHECK(constant_time_eq("abc", "abc"));
  CHECK_FALSE(constant_time_eq("abc", "abd"));
  CHECK_FALSE(constant_time_eq("abc", "ab"));
  uint8_t a[32] = {}, b[32] = {};
  REQUIRE(random_bytes(a, sizeof(a)));
  REQUIRE(random_bytes(b, sizeof(b)));
  CHECK(hex_encode(a, sizeof(a)) != hex_encode(b, sizeof(b)));
  CHECK(random_bytes(a, 0));
  const uint8_t h[3] = {0x00, 0xab, 0xff};
  CHECK(hex_encode(h, 3) == "00abff");
}

TEST_CASE("random_bytes: small draws from the buffer never repeat, across refills") {
  std::set<std::string> seen;
  for (int i = 0; i < 200; i++) {  // 200 x 12 bytes: several refills of the 256-byte buffer
    uint8_t r[12];
    REQUIRE(random_bytes(r, sizeof r));
    CHECK(seen.insert(hex_encode(r, sizeof r)).second);
  }
  uint8_t big[300];  // above the buffer's draws: straight from RAND_bytes
  REQUIRE(random_bytes(big, sizeof big));
}

TEST_CASE("random_bytes: a forked child does not hand out its parent's buffered bytes") {
  uint8_t first[4];
  REQUIRE(random_bytes(first, sizeof first));  // the buffer now holds bytes not handed out
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    uint8_t c[16] = {};
    bool ok = random_bytes(c, sizeof c);
    ssize_t w = write(fds[1], c, sizeof c);
    _exit(ok && w == static_cast<ssize_t>(sizeof c) ? 0 : 1);
  }
  close(fds[1]);
  uint8_t parent[16], child[16] = {};
  REQUIRE(random_bytes(parent, sizeof parent));
  ssize_t got = read(fds[0], child, sizeof child);
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(got == static_cast<ssize_t>(sizeof child));
  CHECK(hex_encode(parent, sizeof parent) != hex_encode(child, sizeof child));
}

}  // namespace
}  // namespace pgsluice
