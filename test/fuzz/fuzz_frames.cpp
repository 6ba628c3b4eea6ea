// libFuzzer target for coproc's frame and payload decoders (see fuzz_frames.hpp, run.sh).
#include "fuzz_frames.hpp"

#include <cstdlib>
#include <fstream>
#include <string>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // FUZZ_WRITE_CORPUS=dir: write the seed frames there first.
    if (const char* dir = std::getenv("FUZZ_WRITE_CORPUS")) {
        int i = 0;
        std::vector<char> all{0};
        for (const auto& f : coproc::fuzz::seed_frames()) {
            std::ofstream(std::string(dir) + "/seed" + std::to_string(i++), std::ios::binary)
                .write("\x3f", 1)
                .write(f.data(), static_cast<std::streamsize>(f.size()));
            all.insert(all.end(), f.begin(), f.end());
        }
        std::ofstream(std::string(dir) + "/seed-all", std::ios::binary)
            .write(all.data(), static_cast<std::streamsize>(all.size()));
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    coproc::fuzz::fuzz_one(data, size);
    return 0;
}
