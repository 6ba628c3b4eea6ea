// coproc/detail/archive.hpp — cereal's binary format, written straight into a byte vector and
// read straight from a byte span, made safe for untrusted bytes.
//
// Both archives keep cereal::BinaryOutputArchive's byte format, but move the bytes themselves
// instead of through a std::streambuf (a virtual call per number, which was most of the time a
// map of small values took to encode and decode).
//
// cereal::BinaryInputArchive trusts length prefixes: a forged prefix of 2^33 makes a string
// allocate 8 GiB before the read fails, and cereal's sequence loads resize to the prefix before
// reading, so even a prefix the message could hold as bytes asks for bytes × element size (a
// 64 KiB message read as a vector of 4 KiB arrays: 256 MiB). The input archive reads the same
// format but refuses a length prefix larger than the bytes left in the message (every element
// takes at least one byte, except empty types such as std::monostate, which take none: a fixed
// ceiling bounds those), loads vectors, strings, deques and lists element by element (memory
// grows with what was actually read; numbers and characters are checked as bytes × size
// first), and refuses a bool that is neither 0 nor 1.
#pragma once

#include <coproc/error.hpp>

#include <cereal/cereal.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace coproc::detail {

/// A message buffer that must hold this many bytes or more takes a larger buffer kept for
/// reuse, if one is (see reserve_message).
inline constexpr std::size_t reused_buffer_min = std::size_t{64} << 10;

/// From this many bytes, memory a message is about to be written into has its pages populated
/// first (see populate_for_write).
inline constexpr std::size_t populate_min_bytes = std::size_t{256} << 10;

/// Makes `out` able to hold `need` bytes (no-op if it can), so that a large message is written
/// into memory whose pages are in place, not into fresh pages that fault in one by one under the
/// copy: from reused_buffer_min, the smallest buffer of large messages kept for reuse that holds
/// `need`; else a new one of `fresh` (>= need) bytes, populated from populate_min_bytes.
/// `out`'s contents move into it. Below that, `out` reserves `fresh` as std::vector does.
void reserve_message(std::vector<char>& out, std::size_t need, std::size_t fresh);
/// Keeps `buf` for reserve_message if its capacity is between reused_buffer_min and 8 MiB and the
/// process keeps fewer than 32 such buffers of 32 MiB in all; else frees it.
void keep_buffer(std::vector<char>&& buf) noexcept;
/// Frees every kept buffer (before a fork, whose child would share their pages).
void release_kept_buffers() noexcept;
/// The capacity of the buffers kept now, in bytes.
std::size_t kept_buffer_bytes() noexcept;

/// Appends cereal's binary form of what it is given to a std::vector<char>, which may not grow
/// past a limit (a frame's: a write that would is refused with coproc::error before anything is
/// copied).
class vector_output_archive
    : public cereal::OutputArchive<vector_output_archive, cereal::AllowEmptyClassElision> {
  public:
    vector_output_archive(std::vector<char>& out, std::size_t limit)
        : OutputArchive(this), out_(out), limit_(limit) {}

    void saveBinary(const void* data, std::size_t size) {
        if (size > limit_ - std::min(limit_, out_.size())) [[unlikely]]
            too_large();
        if (size > out_.capacity() - out_.size()) [[unlikely]]
            reserve_message(out_, out_.size() + size,
                            std::max(out_.size() + size, 2 * out_.capacity()));
        const char* bytes = static_cast<const char*>(data);
        out_.insert(out_.end(), bytes, bytes + size);
    }

  private:
    [[noreturn, gnu::cold, gnu::noinline]] static void too_large() {
        throw coproc::error("message exceeds the 1 GiB frame limit; pass large data in pieces");
    }

    std::vector<char>& out_;
    std::size_t limit_;
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(vector_output_archive& ar,
                                                                    const T& t) {
    ar.saveBinary(std::addressof(t), sizeof(t));
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(vector_output_archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
}

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(vector_output_archive& ar, const cereal::BinaryData<T>& t) {
    ar.saveBinary(t.data, static_cast<std::size_t>(t.size));
}

/// Reads cereal's binary form from a span of bytes, checking what it reads (see above).
class checked_input_archive
    : public cereal::InputArchive<checked_input_archive, cereal::AllowEmptyClassElision> {
  public:
    explicit checked_input_archive(std::span<const char> in)
        : InputArchive(this), next_(in.data()), end_(in.data() + in.size()) {}

    void loadBinary(void* const data, std::size_t size) {
        const char* bytes = take(size);
        if (size != 0)
            std::memcpy(data, bytes, size);
    }

    /// The next `size` bytes, read in place (they stay valid as long as the message).
    const char* take(std::size_t size) {
        if (size > remaining()) [[unlikely]]
            truncated(size);
        return std::exchange(next_, next_ + size);
    }

    /// Bytes not read yet.
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - next_); }

  private:
    [[noreturn, gnu::cold, gnu::noinline]] void truncated(std::size_t size) const {
        throw cereal::Exception("truncated: needed " + std::to_string(size) +
                                " more bytes, found " + std::to_string(remaining()));
    }

    const char* next_;
    const char* end_;
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>
CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, T& t) {
    ar.loadBinary(std::addressof(t), sizeof(t));
}

/// A bool is one byte that must be 0 or 1: any other value would be undefined behaviour.
inline void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, bool& b) {
    unsigned char byte = 0;
    ar.loadBinary(&byte, 1);
    if (byte > 1)
        throw cereal::Exception("a bool holds " + std::to_string(byte) + ", not 0 or 1");
    b = byte != 0;
}

template <class A>
inline constexpr bool is_coproc_archive =
    std::is_same_v<A, vector_output_archive> || std::is_same_v<A, checked_input_archive>;

/// In the binary format a name-value pair is its value alone, both ways.
template <class A, class T>
requires is_coproc_archive<A>
void CEREAL_SERIALIZE_FUNCTION_NAME(A& ar, cereal::NameValuePair<T>& t) { ar(t.value); }

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(checked_input_archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
    if (static_cast<std::size_t>(t.size) > ar.remaining())
        throw cereal::Exception("a length prefix of " + std::to_string(t.size) + " exceeds the " +
                                std::to_string(ar.remaining()) + " bytes left in the message");
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, cereal::BinaryData<T>& t) {
    ar.loadBinary(t.data, static_cast<std::size_t>(t.size));
}

/// The most elements of an empty type (no bytes each) a sequence may claim beyond the bytes left.
inline constexpr std::size_t max_empty_elements = std::size_t{1} << 20;

/// Reads the element count of a sequence whose elements take at least `bytes_each` bytes (0:
/// empty types, bounded by max_empty_elements instead), refusing a count that the bytes left in
/// the message cannot hold.
inline std::size_t load_count(checked_input_archive& ar, std::size_t bytes_each) {
    cereal::size_type n = 0;
    ar.loadBinary(&n, sizeof n);
    const std::size_t left = ar.remaining();
    const std::size_t limit =
        bytes_each == 0 ? std::max(left, max_empty_elements) : left / bytes_each;
    if (n > limit)
        throw cereal::Exception(
            "a count of " + std::to_string(n) +
            (bytes_each == 0
                 ? " empty elements exceeds the limit of " + std::to_string(limit)
                 : " elements of " + std::to_string(bytes_each) + " bytes or more exceeds the " +
                       std::to_string(left) + " bytes left in the message"));
    return static_cast<std::size_t>(n);
}

/// Loads a vector, deque or list one element at a time, so that its memory grows with the
/// elements actually read; a vector reserves no more than the bytes left in the message.
template <class Seq> void load_elements(checked_input_archive& ar, Seq& seq) {
    using T = typename Seq::value_type;
    const std::size_t n = load_count(ar, std::is_empty_v<T> ? 0 : 1);
    seq.clear();
    if constexpr (requires { seq.reserve(n); })
        seq.reserve(std::min(n, ar.remaining() / sizeof(T)));
    for (std::size_t i = 0; i < n; ++i)
        ar(seq.emplace_back());
}

/// Loads an unordered set one key at a time; it reserves no more buckets (a pointer each) than
/// fit in the bytes left in the message.
template <class Set> void load_keys(checked_input_archive& ar, Set& set) {
    using K = typename Set::key_type;
    const std::size_t n = load_count(ar, std::is_empty_v<K> ? 0 : 1);
    set.clear();
    set.reserve(std::min(n, ar.remaining() / sizeof(void*)));
    for (std::size_t i = 0; i < n; ++i) {
        K key{};
        ar(key);
        set.emplace(std::move(key));
    }
}

// These overloads are more specialised than cereal's (whose archive is a template parameter),
// so they are the ones chosen. std::vector<bool> keeps cereal's: a count of bits is bounded by
// the bytes left, one per bit.

template <class T, class A>
requires(!std::is_arithmetic_v<T>) void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar,
                                                                  std::vector<T, A>& v) {
    load_elements(ar, v);
}

/// Maps the whole pages of [p, p + n) writable in one call (MADV_POPULATE_WRITE), as writing
/// them would but without a page fault each; their contents are unchanged. Best effort: a
/// kernel without it leaves the pages to fault in as they are written.
void populate_for_write(void* p, std::size_t n) noexcept;

/// If `n` elements of `seq` take populate_min_bytes or more, empties it and reserves them with
/// their memory populated (see populate_for_write); else leaves it as it is.
template <class Seq> void reserve_populated(Seq& seq, std::size_t n) {
    const std::size_t bytes = n * sizeof(typename Seq::value_type);
    if (bytes >= populate_min_bytes) {
        seq.clear();
        seq.reserve(n);
        populate_for_write(seq.data(), bytes);
    }
}

/// Loads the elements of a vector or string of numbers or characters as bytes. Elements of a
/// character type that may alias bytes (char, signed and unsigned char) are copied from the
/// message in one pass: a large result's fresh memory is written once, not zeroed first. Others,
/// which may sit unaligned in the message, are sized, then copied. A large one's memory is
/// populated before the copy (about a fifth less time than a fault per page).
template <class Seq> void load_bytes(checked_input_archive& ar, Seq& seq) {
    using T = typename Seq::value_type;
    const std::size_t n = load_count(ar, sizeof(T));
    reserve_populated(seq, n);
    if constexpr (sizeof(T) == 1 && !std::is_same_v<T, char8_t>) {
        const auto* first = reinterpret_cast<const T*>(ar.take(n));
        seq.assign(first, first + n);
    } else {
        seq.resize(n);
        ar.loadBinary(seq.data(), n * sizeof(T));
    }
}

template <class T, class A>
requires(std::is_arithmetic_v<T> &&
         !std::is_same_v<T, bool>) void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar,
                                                                  std::vector<T, A>& v) {
    load_bytes(ar, v);
}

template <class C, class Traits, class A>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, std::basic_string<C, Traits, A>& s) {
    load_bytes(ar, s);
}

template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, std::deque<T, A>& d) {
    load_elements(ar, d);
}

template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, std::list<T, A>& l) {
    load_elements(ar, l);
}

template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, std::unordered_set<K, H, E, A>& set) {
    load_keys(ar, set);
}

template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar,
                               std::unordered_multiset<K, H, E, A>& set) {
    load_keys(ar, set);
}

} // namespace coproc::detail

CEREAL_REGISTER_ARCHIVE(coproc::detail::vector_output_archive)
CEREAL_REGISTER_ARCHIVE(coproc::detail::checked_input_archive)

namespace cereal::traits::detail {
template <> struct get_output_from_input<coproc::detail::checked_input_archive> {
    using type = coproc::detail::vector_output_archive;
};
template <> struct get_input_from_output<coproc::detail::vector_output_archive> {
    using type = coproc::detail::checked_input_archive;
};
} // namespace cereal::traits::detail
