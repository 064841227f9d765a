// Replays files through the fuzz target without libFuzzer, so that ordinary
// builds (and the sanitizer preset) run the seed corpus as a test. Arguments
// are files or directories; a violated invariant aborts.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int *argc, char ***argv);
extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, std::size_t size);

namespace fs = std::filesystem;

static void replay(const fs::path &file)
{
    std::ifstream in(file, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
}

int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    std::size_t files = 0;
    for (int i = 1; i < argc; ++i) {
        const fs::path arg(argv[i]);
        if (fs::is_directory(arg)) {
            for (const auto &entry : fs::directory_iterator(arg))
                if (entry.is_regular_file()) {
                    replay(entry.path());
                    ++files;
                }
        } else {
            replay(arg);
            ++files;
        }
    }
    std::printf("replayed %zu inputs\n", files);
    // an empty corpus would make this test pass without checking anything
    return files > 0 ? 0 : 1;
}
