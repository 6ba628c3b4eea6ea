// coproc/serialize.hpp — how values cross the process boundary.
//
// coproc moves arguments, results and channel messages in cereal's binary format.
// Standard types (numbers, strings, vectors, maps, tuples, optionals, variants, ...) work
// out of the box; a user type provides a `serialize(Archive&)` member or free function:
//
//   struct point { int x, y; template <class A> void serialize(A& ar) { ar(x, y); } };
//
// `serialize_into` appends values to a byte buffer; `deserialize_from` reads them back and
// throws coproc::error when the bytes are malformed or truncated.
#pragma once

#include <coproc/detail/archive.hpp>
#include <coproc/error.hpp>

#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace coproc {

namespace detail {

/// Writes values to an output buffer in cereal's binary form.
class writer {
  public:
    /// Appends to `out`, which may not grow past `limit` bytes (coproc::error).
    explicit writer(std::vector<char>& out, std::size_t limit = SIZE_MAX)
        : out_(out), ar_(out, limit) {}
    writer(const writer&) = delete;
    template <class... T> void operator()(const T&... v) { ar_(v...); }
    /// The buffer written to (values are appended to it as they are written).
    std::vector<char>& buffer() const noexcept { return out_; }

  private:
    std::vector<char>& out_;
    vector_output_archive ar_;
};

/// Reads values in cereal's binary form from a byte span.
class reader {
  public:
    explicit reader(std::span<const char> in) : ar_(in) {}
    reader(const reader&) = delete;
    template <class... T> void operator()(T&... v) { ar_(v...); }
    std::size_t remaining() const noexcept { return ar_.remaining(); }
    /// The next `size` bytes, read in place; throws cereal::Exception if fewer remain.
    const char* take(std::size_t size) { return ar_.take(size); }

  private:
    checked_input_archive ar_;
};

[[noreturn]] void throw_malformed(std::string_view what, const char* why);

} // namespace detail

/// Appends the binary form of `values...` to `out`.
template <class... T> void serialize_into(std::vector<char>& out, const T&... values) {
    detail::writer w(out);
    w(values...);
}

/// Reads `values...` back from `in`; every byte of `in` must be consumed.
/// Throws coproc::error if the bytes are truncated, malformed or longer than the values.
template <class... T> void deserialize_from(std::span<const char> in, T&... values) {
    try {
        detail::reader r(in);
        r(values...);
        if (r.remaining() != 0)
            detail::throw_malformed("message", "trailing bytes after the last value");
    } catch (const cereal::Exception& e) {
        detail::throw_malformed("message", e.what());
    } catch (const std::length_error& e) {
        detail::throw_malformed("message", e.what());
    } catch (const std::bad_alloc&) {
        detail::throw_malformed("message", "a length prefix asks for more memory than exists");
    }
}

} // namespace coproc
