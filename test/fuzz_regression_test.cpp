// Replays the fuzz corpus and every crash the fuzzer found (test/fuzz/), and checks that bad
// frames and payloads give a clear coproc::error.
#include "fuzz/fuzz_frames.hpp"

#include "alloc_counter.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace fs = std::filesystem;
using coproc::detail::frame_decoder;
using coproc::detail::frame_header;

namespace {

std::vector<char> header(std::uint32_t size, std::uint16_t kind, std::uint16_t flags = 0) {
    const frame_header h{size, kind, flags, 7, 1};
    std::vector<char> out(sizeof h);
    std::memcpy(out.data(), &h, sizeof h);
    return out;
}

void feed(frame_decoder& d, const std::vector<char>& bytes) {
    auto area = d.write_area(bytes.size());
    std::memcpy(area.data(), bytes.data(), bytes.size());
    d.commit(bytes.size());
}

} // namespace

TEST_SUITE_BEGIN("fuzz");

TEST_CASE("every corpus and regression input decodes or fails cleanly, allocating under 8 MiB") {
    int replayed = 0;
    for (const char* dir : {"corpus", "regressions"}) {
        const fs::path p = fs::path(COPROC_SOURCE_DIR) / "test" / "fuzz" / dir;
        REQUIRE(fs::is_directory(p));
        for (const auto& e : fs::directory_iterator(p)) {
            std::ifstream f(e.path(), std::ios::binary);
            const std::string bytes{std::istreambuf_iterator<char>(f), {}};
            coproc::test::take_largest_allocation();
            coproc::fuzz::fuzz_one(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                   bytes.size());
            // The fuzzer's limit (run.sh: -malloc_limit_mb=8).
            CHECK_MESSAGE(coproc::test::take_largest_allocation() < (std::size_t{8} << 20),
                          e.path().filename().string());
            ++replayed;
        }
    }
    CHECK(replayed >= 5);
}

TEST_CASE("the seed frames decode back to what was sent") {
    frame_decoder d;
    std::size_t n = 0;
    for (const auto& f : coproc::fuzz::seed_frames()) {
        feed(d, f);
        auto got = d.next();
        REQUIRE(got);
        CHECK(got->payload.size() == f.size() - sizeof(frame_header));
        ++n;
    }
    CHECK(n == 12);
    CHECK_FALSE(d.next());
}

TEST_CASE("an oversized length prefix is a clear error") {
    frame_decoder d;
    feed(d, header(0xffffffffu, 2));
    CHECK_THROWS_WITH_AS(d.next(), doctest::Contains("exceeds the 1 GiB frame limit"),
                         coproc::error);
}

TEST_CASE("a frame header claiming a large payload does not allocate it up front") {
    frame_decoder d;
    feed(d, header(700u << 20, 2));
    CHECK_FALSE(d.next()); // waits for more bytes
    CHECK(d.write_area(1).size() < (1u << 20));
}

TEST_CASE("a header claiming a large payload, then a few bytes at a time: room grows with them") {
    frame_decoder d(16);
    feed(d, header(64u << 20, 2));
    coproc::test::take_largest_allocation();
    for (int i = 0; i < 256; ++i) {
        auto area = d.write_area(16);
        std::memset(area.data(), 0, 16);
        d.commit(16);
        CHECK_FALSE(d.next());
    }
    // 4 KiB arrived: neither the buffer nor any allocation is near the 64 MiB claimed.
    CHECK(coproc::test::take_largest_allocation() < (std::size_t{64} << 10));
    CHECK(d.write_area(1).size() < (std::size_t{64} << 10));
}

TEST_CASE("unknown kinds and flags are clear errors; a truncated frame waits") {
    frame_decoder bad_kind;
    feed(bad_kind, header(0, 99));
    CHECK_THROWS_WITH_AS(bad_kind.next(), doctest::Contains("unknown frame kind"), coproc::error);
    frame_decoder bad_flags;
    feed(bad_flags, header(0, 2, 4));
    CHECK_THROWS_WITH_AS(bad_flags.next(), doctest::Contains("unknown flags"), coproc::error);
    frame_decoder truncated;
    auto h = header(10, 2);
    h.resize(h.size() + 5);
    feed(truncated, h);
    CHECK_FALSE(truncated.next());
}

TEST_CASE("a forged length prefix inside a payload is refused, not allocated") {
    std::vector<char> bytes(8);
    const std::uint64_t huge = 1ull << 40;
    std::memcpy(bytes.data(), &huge, sizeof huge);
    std::string s;
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(bytes, s),
                         doctest::Contains("exceeds the 0 bytes left"), coproc::error);
    std::vector<int> v;
    CHECK_THROWS_AS(coproc::deserialize_from(bytes, v), coproc::error);
}

TEST_CASE("a truncated or overlong payload is a clear error") {
    std::vector<char> bytes;
    coproc::serialize_into(bytes, std::string("hello"), 42);
    std::string s;
    int i = 0;
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(std::span(bytes).first(bytes.size() - 1), s, i),
                         doctest::Contains("truncated"), coproc::error);
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(bytes, s), doctest::Contains("trailing bytes"),
                         coproc::error);
    coproc::deserialize_from(bytes, s, i);
    CHECK(s == "hello");
    CHECK(i == 42);
}

TEST_CASE("a bool that is neither 0 nor 1 is a clear error, not undefined behaviour") {
    const std::vector<char> bytes{17};
    bool b = false;
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(bytes, b), doctest::Contains("not 0 or 1"),
                         coproc::error);
    std::optional<int> o;
    CHECK_THROWS_AS(coproc::deserialize_from(bytes, o), coproc::error);
    const std::vector<char> one{0, 7, 0, 0, 0}; // cereal writes "nullopt" = false, then the value
    coproc::deserialize_from(one, o);
    CHECK(o == 7);
}

TEST_CASE("a malformed exception payload names its task") {
    const std::vector<char> junk{1, 2, 3};
    auto e = coproc::detail::decode_exception(junk, "task 9 (int (*)(int))");
    CHECK_THROWS_WITH_AS(std::rethrow_exception(e), doctest::Contains("task 9"), coproc::error);
}

TEST_SUITE_END();
