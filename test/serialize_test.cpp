// Test that header file is self-contained.
#include <coproc/serialize.hpp>
#include "alloc_counter.hpp"

#include <cereal/archives/binary.hpp>
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <sys/mman.h>
#include <tuple>
#include <unistd.h>
#include <unordered_set>
#include <variant>
#include <vector>

namespace {

struct point {
    int x = 0, y = 0;
    std::string label;
    template <class A> void serialize(A& ar) { ar(x, y, label); }
    bool operator==(const point&) const = default;
};

// Written with names, as code shared with cereal's text archives is; binary drops them.
struct named {
    int id = 0;
    std::string text;
    template <class A> void serialize(A& ar) { ar(CEREAL_NVP(id), cereal::make_nvp("t", text)); }
    bool operator==(const named&) const = default;
};

template <class T> T round_trip(const T& v) {
    std::vector<char> buf;
    coproc::serialize_into(buf, v);
    T out{};
    coproc::deserialize_from(buf, out);
    return out;
}

/// A message: an element count, then `body` bytes `fill`.
std::vector<char> count_then(std::uint64_t count, std::size_t body, char fill = 0) {
    std::vector<char> msg(sizeof count + body, fill);
    std::memcpy(msg.data(), &count, sizeof count);
    return msg;
}

/// Decodes `msg` as a `T`, which must fail with coproc::error; returns the largest single
/// allocation made meanwhile.
template <class T> std::size_t largest_allocation_refusing(const std::vector<char>& msg) {
    T out{};
    coproc::test::take_largest_allocation();
    CHECK_THROWS_AS(coproc::deserialize_from(msg, out), coproc::error);
    return coproc::test::take_largest_allocation();
}

/// Decodes `msg` as a `T`, which must fail with coproc::error; returns the bytes allocated
/// meanwhile.
template <class T> std::size_t total_allocated_refusing(const std::vector<char>& msg) {
    T out{};
    coproc::test::take_total_allocated();
    CHECK_THROWS_AS(coproc::deserialize_from(msg, out), coproc::error);
    return coproc::test::take_total_allocated();
}

} // namespace

TEST_SUITE_BEGIN("serialize");

TEST_CASE("values of every standard container come back as they were sent") {
    CHECK(round_trip(42) == 42);
    CHECK(round_trip(std::string("hello")) == "hello");
    CHECK(round_trip(std::string()).empty());
    CHECK(round_trip(std::wstring(L"wide")) == L"wide");
    CHECK(round_trip(std::u32string(U"\U0001F600 x")) == U"\U0001F600 x");
    CHECK(round_trip(std::vector<bool>{true, false, true}) == std::vector<bool>{true, false, true});
    CHECK(round_trip(std::vector<double>{}).empty());
    CHECK(round_trip(std::vector<std::int64_t>{1, -2, 3}) == std::vector<std::int64_t>{1, -2, 3});
    const std::vector<std::vector<int>> nested{{1, 2}, {}, {3}};
    CHECK(round_trip(nested) == nested);
    const std::vector<std::array<char, 16>> arrays(3, std::array<char, 16>{'a', 'b'});
    CHECK(round_trip(arrays) == arrays);
    CHECK(round_trip(std::array<int, 3>{7, 8, 9}) == std::array<int, 3>{7, 8, 9});
    const std::deque<std::string> words{"a", "", "ccc"};
    CHECK(round_trip(words) == words);
    CHECK(round_trip(std::list<int>{4, 5, 6}) == std::list<int>{4, 5, 6});
    const std::deque<std::vector<std::string>> deep{{"x", "y"}, {}};
    CHECK(round_trip(deep) == deep);
    const std::vector<point> points{{1, 2, "p"}, {3, 4, ""}};
    CHECK(round_trip(points) == points);
    const std::map<std::string, std::vector<std::int64_t>> m{{"a", {1, 2}}, {"b", {}}};
    CHECK(round_trip(m) == m);
    CHECK(round_trip(std::set<int>{3, 1, 2}) == std::set<int>{1, 2, 3});
    CHECK(round_trip(std::unordered_set<std::string>{"u", "v"}) ==
          std::unordered_set<std::string>{"u", "v"});
    CHECK(round_trip(std::unordered_multiset<int>{1, 1, 2}) ==
          std::unordered_multiset<int>{1, 1, 2});
}

TEST_CASE("sequences of one-byte elements come back byte for byte, every byte value") {
    std::vector<std::uint8_t> bytes(256 * 4);
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::uint8_t>(i);
    CHECK(round_trip(bytes) == bytes);
    const std::vector<std::int8_t> signed_bytes(bytes.begin(), bytes.end());
    CHECK(round_trip(signed_bytes) == signed_bytes);
    const std::vector<char> chars(bytes.begin(), bytes.end());
    CHECK(round_trip(chars) == chars);
    const std::string text(bytes.begin(), bytes.end());
    CHECK(round_trip(text) == text);
    const std::u8string utf8(bytes.begin(), bytes.end());
    CHECK(round_trip(utf8) == utf8);
    // Loaded into a longer one, only what was sent is left.
    std::vector<char> buf;
    coproc::serialize_into(buf, std::string("ab"), std::vector<std::uint8_t>{1});
    std::string s(100, 'x');
    std::vector<std::uint8_t> v(100, 9);
    coproc::deserialize_from(buf, s, v);
    CHECK(s == "ab");
    CHECK(v == std::vector<std::uint8_t>{1});
    // A count one past the bytes sent is refused, not read beyond the message.
    CHECK_THROWS_AS(coproc::deserialize_from(count_then(11, 10), v), coproc::error);
}

TEST_CASE("a large sequence of numbers or bytes loads into populated memory, as it was sent") {
    // From populate_min_bytes on, a load populates its memory before it copies into it.
    const std::size_t n = coproc::detail::populate_min_bytes + 4097;
    std::vector<std::uint8_t> bytes(n);
    std::string text(n, ' ');
    std::vector<std::int32_t> ints(n / 4 + 3);
    for (std::size_t i = 0; i < n; ++i) {
        bytes[i] = static_cast<std::uint8_t>(i * 7);
        text[i] = static_cast<char>('a' + i % 26);
    }
    for (std::size_t i = 0; i < ints.size(); ++i)
        ints[i] = static_cast<std::int32_t>(i * 2654435761u);
    CHECK(round_trip(bytes) == bytes);
    CHECK(round_trip(text) == text);
    CHECK(round_trip(ints) == ints);
    // Loaded over longer and shorter ones, only what was sent is left.
    std::vector<char> buf;
    coproc::serialize_into(buf, bytes, text, ints);
    std::vector<std::uint8_t> b(2 * n, 1);
    std::string t("short");
    std::vector<std::int32_t> i(3, 9);
    coproc::deserialize_from(buf, b, t, i);
    CHECK(b == bytes);
    CHECK(t == text);
    CHECK(i == ints);
}

TEST_CASE("populating memory for a write leaves its bytes as they were") {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t pages = 64;
    auto* fresh = static_cast<unsigned char*>(
        ::mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(fresh != MAP_FAILED);
    // Only the whole pages inside the range are populated: here all but the first and last.
    coproc::detail::populate_for_write(fresh + 100, pages * page - 200);
    std::vector<unsigned char> in_core(pages);
    REQUIRE(::mincore(fresh, pages * page, in_core.data()) == 0);
    if (::madvise(fresh, page, MADV_POPULATE_WRITE) != 0) {
        MESSAGE("this kernel has no MADV_POPULATE_WRITE: pages fault in as they are written");
    } else {
        for (std::size_t k = 1; k + 1 < pages; ++k)
            CHECK((in_core[k] & 1) == 1);
    }
    unsigned char probe = 0;
    for (std::size_t k = 0; k < pages * page; ++k)
        probe |= fresh[k];
    CHECK(probe == 0);
    // Memory already in place, holding data: skipped or populated, it keeps its bytes.
    for (std::size_t k = 0; k < pages * page; ++k)
        fresh[k] = static_cast<unsigned char>(k * 31);
    coproc::detail::populate_for_write(fresh, pages * page);
    coproc::detail::populate_for_write(fresh + page / 2, page); // no whole page: nothing to do
    bool kept = true;
    for (std::size_t k = 0; k < pages * page; ++k)
        kept &= fresh[k] == static_cast<unsigned char>(k * 31);
    CHECK(kept);
    ::munmap(fresh, pages * page);
}

TEST_CASE("a large write goes into the smallest kept buffer that fits it, and reads back whole") {
    using namespace coproc::detail;
    release_kept_buffers();
    REQUIRE(kept_buffer_bytes() == 0);
    std::vector<char> big, small, tiny, huge;
    big.reserve(std::size_t{1} << 20);
    small.reserve(std::size_t{256} << 10);
    tiny.reserve(reused_buffer_min - 1);
    huge.reserve(std::size_t{16} << 20);
    const char* big_at = big.data();
    const char* small_at = small.data();
    keep_buffer(std::move(big));
    keep_buffer(std::move(small));
    CHECK(kept_buffer_bytes() == (std::size_t{1} << 20) + (std::size_t{256} << 10));
    keep_buffer(std::move(tiny)); // too small, and too large: freed, not kept
    keep_buffer(std::move(huge));
    CHECK(kept_buffer_bytes() == (std::size_t{1} << 20) + (std::size_t{256} << 10));

    std::vector<std::uint8_t> sent(std::size_t{200} << 10);
    for (std::size_t i = 0; i < sent.size(); ++i)
        sent[i] = static_cast<std::uint8_t>(i * 13);
    std::vector<char> out;
    coproc::serialize_into(out, std::int32_t{7}, sent);
    CHECK(out.data() == small_at); // the smallest that fits, with what was written before
    CHECK(kept_buffer_bytes() == std::size_t{1} << 20);
    std::int32_t seven = 0;
    std::vector<std::uint8_t> got;
    coproc::deserialize_from(out, seven, got);
    CHECK(seven == 7);
    CHECK(got == sent);

    std::vector<char> out2;
    const std::vector<std::uint8_t> larger(std::size_t{600} << 10, 9);
    coproc::serialize_into(out2, larger);
    CHECK(out2.data() == big_at);
    CHECK(kept_buffer_bytes() == 0);
    keep_buffer(std::move(out2));
    CHECK(kept_buffer_bytes() == std::size_t{1} << 20);
    release_kept_buffers();
    CHECK(kept_buffer_bytes() == 0);
}

TEST_CASE("a message buffer with no kept buffer to take grows into populated memory") {
    using namespace coproc::detail;
    release_kept_buffers();
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    std::vector<char> out{'a', 'b', 'c'};
    // Small: reserved as std::vector would, and no kept buffer is taken for it.
    std::vector<char> spare;
    spare.reserve(reused_buffer_min);
    keep_buffer(std::move(spare));
    reserve_message(out, 100, 200);
    CHECK(out.capacity() >= 200);
    CHECK(kept_buffer_bytes() == reused_buffer_min);
    release_kept_buffers();
    // Large, none kept: a buffer of `fresh` bytes whose pages are all in place before any write.
    const std::size_t fresh = 4 * populate_min_bytes;
    reserve_message(out, populate_min_bytes, fresh);
    REQUIRE(out.capacity() >= fresh);
    CHECK(out == std::vector<char>{'a', 'b', 'c'});
    const auto first = (reinterpret_cast<std::uintptr_t>(out.data()) + page - 1) & ~(page - 1);
    const std::size_t pages = (fresh - page) / page;
    std::vector<unsigned char> in_core(pages);
    REQUIRE(::mincore(reinterpret_cast<void*>(first), pages * page, in_core.data()) == 0);
    void* probe = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(probe != MAP_FAILED);
    const bool populates = ::madvise(probe, page, MADV_POPULATE_WRITE) == 0;
    ::munmap(probe, page);
    if (!populates) {
        MESSAGE("this kernel has no MADV_POPULATE_WRITE: pages fault in as they are written");
    } else {
        std::size_t resident = 0;
        for (unsigned char c : in_core)
            resident += c & 1;
        CHECK(resident == pages);
    }
    // The smaller buffer it left is kept if it is large enough: this one was not.
    CHECK(kept_buffer_bytes() == 0);
    release_kept_buffers();
}

TEST_CASE("the buffers kept for reuse are bounded in number and bytes") {
    using namespace coproc::detail;
    release_kept_buffers();
    for (int i = 0; i < 100; ++i) {
        std::vector<char> b;
        b.reserve(reused_buffer_min);
        keep_buffer(std::move(b));
    }
    CHECK(kept_buffer_bytes() == 32 * reused_buffer_min); // 32 buffers at most
    release_kept_buffers();
    for (int i = 0; i < 10; ++i) {
        std::vector<char> b;
        b.reserve(std::size_t{6} << 20);
        keep_buffer(std::move(b));
    }
    CHECK(kept_buffer_bytes() == 5 * (std::size_t{6} << 20)); // 32 MiB in all at most
    release_kept_buffers();
}

TEST_CASE("loading into a non-empty container replaces what it held") {
    std::vector<char> buf;
    coproc::serialize_into(buf, std::vector<std::string>{"new"}, std::deque<int>{1},
                           std::list<int>{2}, std::vector<int>{3});
    std::vector<std::string> v{"old", "older"};
    std::deque<int> d{9, 9, 9};
    std::list<int> l{9, 9};
    std::vector<int> i{9, 9, 9, 9};
    coproc::deserialize_from(buf, v, d, l, i);
    CHECK(v == std::vector<std::string>{"new"});
    CHECK(d == std::deque<int>{1});
    CHECK(l == std::list<int>{2});
    CHECK(i == std::vector<int>{3});
}

TEST_CASE("a sequence of empty values (std::monostate) takes no bytes per element") {
    const std::vector<std::monostate> five(5);
    CHECK(round_trip(five).size() == 5);
    const std::tuple<std::deque<std::monostate>, int> t{std::deque<std::monostate>(3), 7};
    CHECK(round_trip(t) == t);
    // Without bytes to bound it, a count of empty values has a fixed ceiling.
    const auto msg = count_then(std::uint64_t{1} << 40, 0);
    CHECK(largest_allocation_refusing<std::vector<std::monostate>>(msg) < 4096);
}

TEST_CASE("a forged count of 4 KiB elements in a 64 KiB message fails without allocating much") {
    const std::size_t body = 64 * 1024;
    const auto msg = count_then(body, body); // as many elements as bytes: each would take 4 KiB
    using page = std::array<char, 4096>;
    CHECK(largest_allocation_refusing<std::vector<page>>(msg) <= 2 * body);
    CHECK(largest_allocation_refusing<std::deque<page>>(msg) <= 2 * body);
    CHECK(total_allocated_refusing<std::list<page>>(msg) <= 2 * body);
    // The first element's own count (all bits set) is refused at once.
    const auto bad_inner = count_then(body, body, '\xff');
    using nested = std::vector<std::vector<std::int64_t>>;
    CHECK(largest_allocation_refusing<nested>(bad_inner) <= 2 * body);
    CHECK(largest_allocation_refusing<std::vector<std::string>>(bad_inner) <= 2 * body);
    CHECK(largest_allocation_refusing<std::unordered_set<std::string>>(bad_inner) <= 2 * body);
    CHECK(largest_allocation_refusing<std::vector<page>>(count_then(std::uint64_t{1} << 40, body)) <
          4096);
}

TEST_CASE("a count of numbers or wide characters must fit in the bytes left, before allocating") {
    const std::size_t body = 64 * 1024;
    const auto msg = count_then(body, body);
    CHECK(largest_allocation_refusing<std::vector<std::int64_t>>(msg) < body);
    CHECK(largest_allocation_refusing<std::vector<double>>(msg) < body);
    CHECK(largest_allocation_refusing<std::u32string>(msg) < body);
    std::vector<std::int64_t> v;
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(msg, v), doctest::Contains("65536"),
                         coproc::error);
    // The same count with enough bytes is a real vector.
    CHECK_NOTHROW(coproc::deserialize_from(count_then(body / 8, body), v));
    CHECK(v.size() == body / 8);
}

TEST_CASE("the bytes are cereal's binary format, both ways") {
    const std::tuple<int, double, bool, std::string, std::vector<std::int64_t>, std::vector<point>,
                     std::map<std::string, std::uint8_t>, named>
        sent{-7,         2.5,        true, "text", {1, -2, 3}, {{1, 2, "a"}, {3, 4, "bc"}},
             {{"k", 9}}, {5, "five"}};

    std::vector<char> ours;
    coproc::serialize_into(ours, sent);
    std::ostringstream theirs;
    {
        cereal::BinaryOutputArchive ar(theirs);
        ar(sent);
    }
    CHECK(std::string(ours.begin(), ours.end()) == theirs.str());

    auto got = sent;
    got = {};
    coproc::deserialize_from(ours, got);
    CHECK(got == sent);
}

TEST_CASE("a writer with a limit refuses the value that would cross it, copying none of it") {
    std::vector<char> out;
    coproc::detail::writer w(out, 12);
    w(std::int64_t{1});
    CHECK(out.size() == 8);
    CHECK_THROWS_WITH_AS(w(std::int64_t{2}), doctest::Contains("1 GiB frame limit"), coproc::error);
    CHECK(out.size() == 8);
    w(std::int32_t{3}); // what still fits is written
    CHECK(out.size() == 12);
    const std::string s = "abc";
    CHECK_THROWS_AS(w(s), coproc::error); // the length prefix alone crosses it
    CHECK(out.size() == 12);
}

TEST_CASE("a truncated number names the bytes it needed and found") {
    const std::vector<char> three(3, '\0');
    std::int64_t v = 0;
    CHECK_THROWS_WITH_AS(coproc::deserialize_from(three, v),
                         doctest::Contains("needed 8 more bytes, found 3"), coproc::error);
}

TEST_SUITE_END();
