// The input the frame fuzzer (fuzz_frames.cpp, libFuzzer) and its regression test
// (test/fuzz_regression_test.cpp, doctest) both push through coproc's decoders: any byte string
// must end in frames or a coproc::error, never in a crash, a hang or a huge allocation.
#pragma once

#include "../../lib/transport.hpp"

#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include <coproc/serialize.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_set>
#include <variant>
#include <vector>

namespace coproc::fuzz {

/// Decodes `payload` as a `T`: anything but a value or a coproc::error is a bug.
template <class T> void try_decode(std::span<const char> payload) {
    try {
        T v{};
        deserialize_from(payload, v);
    } catch (const coproc::error&) {
    }
}

/// Decodes `data` as a stream of frames (fed in pieces whose sizes the first byte picks) and
/// every payload as an exception and as a few value types.
inline void fuzz_one(const std::uint8_t* data, std::size_t size) {
    if (size == 0)
        return;
    const std::size_t piece = 1 + data[0] % 64;
    std::span<const char> in(reinterpret_cast<const char*>(data) + 1, size - 1);

    detail::frame_decoder dec(16);
    try {
        while (!in.empty()) {
            const std::size_t n = std::min(piece, in.size());
            auto area = dec.write_area(n);
            std::copy_n(in.data(), n, area.data());
            dec.commit(n);
            in = in.subspan(n);
            while (auto f = dec.next()) {
                (void)detail::decode_exception(f->payload, "fuzzed frame");
                try_decode<std::tuple<int, std::optional<int>, std::string>>(f->payload);
                try_decode<std::map<std::string, std::vector<std::int64_t>>>(f->payload);
                try_decode<std::vector<std::array<char, 4096>>>(f->payload);
                try_decode<std::vector<std::vector<std::int64_t>>>(f->payload);
                try_decode<std::deque<std::string>>(f->payload);
                try_decode<std::list<std::u32string>>(f->payload);
                try_decode<std::vector<bool>>(f->payload);
                try_decode<std::vector<std::variant<std::monostate, int, std::string>>>(f->payload);
                try_decode<std::tuple<std::vector<std::monostate>, std::set<int>>>(f->payload);
                try_decode<std::unordered_set<std::string>>(f->payload);
            }
        }
    } catch (const coproc::error&) {
        // a clear error is the right answer to a malformed stream
    }
}

/// Real frames, the seeds of the corpus.
inline std::vector<std::vector<char>> seed_frames() {
    std::vector<std::vector<char>> out;
    auto add = [&](detail::frame_kind kind, std::uint64_t id, auto&&... values) {
        std::vector<char> f;
        const auto at = detail::begin_frame(f, kind, id, 1);
        serialize_into(f, values...);
        detail::end_frame(f, at, 1);
        out.push_back(std::move(f));
    };
    add(detail::frame_kind::result, 1,
        std::tuple<int, std::optional<int>, std::string>{42, {}, "hello"});
    add(detail::frame_kind::result, 2,
        std::map<std::string, std::vector<std::int64_t>>{{"a", {1, 2}}});
    add(detail::frame_kind::task, 3, std::int64_t{1}, std::int64_t{2}, std::uint64_t{3}, 7);
    add(detail::frame_kind::result, 5, std::vector<std::vector<std::int64_t>>{{1, 2}, {}, {3}});
    add(detail::frame_kind::result, 6, std::deque<std::string>{"a", "", "bc"});
    add(detail::frame_kind::result, 7, std::list<std::u32string>{U"x", U""});
    add(detail::frame_kind::result, 8, std::vector<bool>{true, false, true});
    add(detail::frame_kind::result, 9,
        std::vector<std::variant<std::monostate, int, std::string>>{{}, 4, "s"});
    add(detail::frame_kind::result, 10,
        std::tuple<std::vector<std::monostate>, std::set<int>>{std::vector<std::monostate>(3),
                                                               {1, 2}});
    add(detail::frame_kind::result, 11, std::vector<std::array<char, 4096>>(1));
    add(detail::frame_kind::result, 12, std::unordered_set<std::string>{"k", "key"});
    try {
        throw std::out_of_range("index 9");
    } catch (...) {
        std::vector<char> f;
        const auto at = detail::begin_frame(f, detail::frame_kind::error, 4, 0);
        detail::encode_current_exception(f);
        detail::end_frame(f, at, 0);
        out.push_back(std::move(f));
    }
    return out;
}

} // namespace coproc::fuzz
