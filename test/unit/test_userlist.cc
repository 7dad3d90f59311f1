// Unit tests for the auth_file reader (userlist.h).
#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "userlist.h"

namespace pgsluice {

TEST_CASE("userlist: the three secret kinds, escaped quotes and comments") {
  const std::string text =
      "; a comment\n"
      "# another comment\n"
      "\n"
      "   \t\n"
      "\"alice\" \"plainpw\"\n"
      "\"bob\" \"md5b2b3f1a8a5e8c5f9b7a6d5c4b3a29180\" \"ignored\" extra\n"
      "\"carol\" \"SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5\"\n"
      "\"d\"\"quote\"  \"pw with \"\"quotes\"\" and spaces\"\r\n"
      "  \"indented\"\t\"tab\"\n"
      "\"empty-secret\" \"\"\n";
  Userlist ul;
  std::vector<std::string> warnings;
  REQUIRE(parse_userlist(text, ul, &warnings, "users.txt").ok());
  CHECK(warnings.empty());
  CHECK(ul.secrets.size() == 6);
  REQUIRE(ul.find("alice") != nullptr);
  CHECK(*ul.find("alice") == "plainpw");
  CHECK(*ul.find("bob") == "md5b2b3f1a8a5e8c5f9b7a6d5c4b3a29180");
  CHECK(*ul.find("carol") == "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5");
  REQUIRE(ul.find("d\"quote") != nullptr);
  CHECK(*ul.find("d\"quote") == "pw with \"quotes\" and spaces");
  CHECK(*ul.find("indented") == "tab");
  CHECK(*ul.find("empty-secret") == "");
  CHECK(ul.find("nobody") == nullptr);
  CHECK(ul.find("Alice") == nullptr);  // user names are case-sensitive
}

TEST_CASE("userlist: malformed lines are warnings with file:line and are skipped") {
  const std::string text =
      "\"good\" \"pw\"\n"
      "bare words here\n"
      "\"onlyuser\"\n"
      "\"unterminated \"pw\n"
      "\"u\" \"unterminated secret\n"
      "\"u2\"\"x\" \n"
      "\"\" \"no name\"\n"
      "\"after\" \"ok\"\n";
  Userlist ul;
  std::vector<std::string> warnings;
  REQUIRE(parse_userlist(text, ul, &warnings, "/etc/ul.txt").ok());
  CHECK(ul.secrets.size() == 2);
  CHECK(ul.find("good") != nullptr);
  CHECK(ul.find("after") != nullptr);
  REQUIRE(warnings.size() == 6);
  CHECK(warnings[0].rfind("/etc/ul.txt:2: ", 0) == 0);
  CHECK(warnings[1].rfind("/etc/ul.txt:3: ", 0) == 0);
  CHECK(warnings[2].rfind("/etc/ul.txt:4: ", 0) == 0);
  CHECK(warnings[3].rfind("/etc/ul.txt:5: ", 0) == 0);
  CHECK(warnings[4].rfind("/etc/ul.txt:6: ", 0) == 0);
  CHECK(warnings[5].rfind("/etc/ul.txt:7: ", 0) == 0);
  // no warning may leak a secret
  for (const auto& w : warnings) CHECK(w.find("unterminated secret\"") == std::string::npos);
}

TEST_CASE("userlist: later duplicate wins, null warnings pointer is fine, no trailing newline") {
  Userlist ul;
  REQUIRE(
      parse_userlist("\"a\" \"one\"\n\"a\" \"two\"\ngarbage\n\"b\" \"x\"", ul, nullptr, "f").ok());
  CHECK(*ul.find("a") == "two");
  CHECK(*ul.find("b") == "x");
}

TEST_CASE("userlist: very long lines") {
  std::string user(3000, 'u');
  std::string secret(70000, 's');
  Userlist ul;
  std::vector<std::string> warnings;
  REQUIRE(parse_userlist("\"" + user + "\" \"" + secret + "\"\n", ul, &warnings, "f").ok());
  CHECK(warnings.empty());
  REQUIRE(ul.find(user) != nullptr);
  CHECK(ul.find(user)->size() == 70000);
}

TEST_CASE("userlist: load_userlist reads a file and reports an unreadable one") {
  std::string path = "/tmp/pgsluice_test_userlist_" + std::to_string(::getpid()) + ".txt";
  {
    std::ofstream f(path);
    f << "\"x\" \"y\"\nbroken\n";
  }
  Result<Userlist> r = load_userlist(path);
  REQUIRE(r.ok());
  CHECK(*r->find("x") == "y");
  std::vector<std::string> warnings;
  Result<Userlist> r2 = load_userlist(path, &warnings);
  REQUIRE(r2.ok());
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0] == path + ":2: expected a double-quoted user name, line ignored");
  std::remove(path.c_str());

  Result<Userlist> missing = load_userlist("/nonexistent/dir/userlist.txt");
  CHECK_FALSE(missing.ok());
  CHECK(missing.status().message().find("/nonexistent/dir/userlist.txt") != std::string::npos);
  CHECK_FALSE(load_userlist("/tmp").ok());  // a directory
}

}  // namespace pgsluice
