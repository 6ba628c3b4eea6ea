// The input the frame fuzzer (fuzz_frames.cpp, libFuzzer) and its regression test
// (test/fuzz_regression_test.cpp, doctest) both push through coproc's decoders: any byte string
// must end in frames or a coproc::error, never in a crash, a hang or a huge allocation.
#pragma once

#include "../../lib/transport.hpp"

#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include <coproc/serialize.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace coproc::fuzz {

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
                try {
                    std::tuple<int, std::optional<int>, std::string> t;
                    deserialize_from(f->payload, t);
                } catch (const coproc::error&) {
                }
                try {
                    std::map<std::string, std::vector<std::int64_t>> m;
                    deserialize_from(f->payload, m);
                } catch (const coproc::error&) {
                }
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
    add(detail::frame_kind::result, 1, std::tuple<int, std::optional<int>, std::string>{42, {}, "hello"});
    add(detail::frame_kind::result, 2, std::map<std::string, std::vector<std::int64_t>>{{"a", {1, 2}}});
    add(detail::frame_kind::task, 3, std::int64_t{1}, std::int64_t{2}, std::uint64_t{3}, 7);
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
