// coproc/serialize.hpp — how values cross the process boundary.
//
// coproc moves arguments, results and channel messages with cereal's binary archive.
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

#include <cereal/archives/binary.hpp>
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

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {

/// A streambuf that appends everything written to a std::vector<char>, which may not grow past
/// a limit (a frame's: a write that would is refused with coproc::error before anything is
/// copied). It keeps no buffer of its own, so its target may change between writes.
class vector_streambuf final : public std::streambuf {
  public:
    struct target_t {
        std::vector<char>* out;
        std::size_t limit;
    };
    target_t target(target_t t) noexcept { return std::exchange(t_, t); }

  protected:
    std::streamsize xsputn(const char* s, std::streamsize n) override {
        make_room(static_cast<std::size_t>(n));
        t_.out->insert(t_.out->end(), s, s + n);
        return n;
    }
    int_type overflow(int_type c) override {
        if (!traits_type::eq_int_type(c, traits_type::eof())) {
            make_room(1);
            t_.out->push_back(traits_type::to_char_type(c));
        }
        return traits_type::not_eof(c);
    }

  private:
    void make_room(std::size_t n) const {
        if (n > t_.limit - std::min(t_.limit, t_.out->size()))
            throw coproc::error("message exceeds the 1 GiB frame limit; pass large data in "
                                "pieces");
    }
    target_t t_{nullptr, 0};
};

/// A streambuf that reads from a span of bytes, which may change between reads.
class span_streambuf final : public std::streambuf {
  public:
    struct area {
        char *begin, *next, *end;
    };
    area target(std::span<const char> in) noexcept {
        char* p = const_cast<char*>(in.data()); // never written through: get area only
        return target(area{p, p, p + in.size()});
    }
    area target(area a) noexcept {
        const area old{eback(), gptr(), egptr()};
        setg(a.begin, a.next, a.end);
        return old;
    }
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(egptr() - gptr()); }
};

// Constructing a std::ostream/istream costs locale look-ups; each thread keeps one of each and
// points it at the buffer at hand (restoring the previous target, so uses may nest).
struct thread_streams {
    vector_streambuf out_buf;
    span_streambuf in_buf;
    std::ostream os{&out_buf};
    std::istream is{&in_buf};
    static thread_streams& get() {
        static thread_local thread_streams s;
        return s;
    }
};

/// Writes values to an output buffer through a cereal binary archive.
class writer {
  public:
    /// Appends to `out`, which may not grow past `limit` bytes (coproc::error).
    explicit writer(std::vector<char>& out, std::size_t limit = SIZE_MAX)
        : out_(out), s_(thread_streams::get()), prev_(s_.out_buf.target({&out, limit})),
          ar_(s_.os) {}
    ~writer() { s_.out_buf.target(prev_); }
    writer(const writer&) = delete;
    template <class... T> void operator()(const T&... v) { ar_(v...); }
    /// The buffer written to (values are appended to it as they are written).
    std::vector<char>& buffer() const noexcept { return out_; }

  private:
    std::vector<char>& out_;
    thread_streams& s_;
    vector_streambuf::target_t prev_;
    cereal::BinaryOutputArchive ar_;
};

/// Reads values from a byte span through a cereal binary archive.
class reader {
  public:
    explicit reader(std::span<const char> in)
        : s_(thread_streams::get()), prev_(s_.in_buf.target(in)), ar_(s_.is) {
        s_.is.clear();
    }
    ~reader() { s_.in_buf.target(prev_); }
    reader(const reader&) = delete;
    template <class... T> void operator()(T&... v) { ar_(v...); }
    std::size_t remaining() const noexcept { return s_.in_buf.remaining(); }

  private:
    thread_streams& s_;
    span_streambuf::area prev_;
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
