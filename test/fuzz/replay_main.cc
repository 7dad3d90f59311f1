// Replays a libFuzzer target's corpus as a plain program: each argument is a file or a
// directory of files; every input is fed to LLVMFuzzerTestOneInput once. Used by `make check`
// so that every corpus entry (and every crash ever found) stays a regression test.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static int run_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(buf.data()), buf.size());
  return 1;
}

int main(int argc, char** argv) {
  int n = 0;
  for (int i = 1; i < argc; i++) {
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) n += run_file(e.path());
    } else if (std::filesystem::exists(p)) {
      n += run_file(p);
    }
  }
  std::printf("replayed %d inputs\n", n);
  return 0;
}
