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

#include <cstddef>
#include <istream>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <vector>

namespace coproc {

namespace detail {

/// A streambuf that appends everything written to a std::vector<char>.
class vector_streambuf final : public std::streambuf {
  public:
    explicit vector_streambuf(std::vector<char>& out) noexcept : out_(&out) {}

  protected:
    std::streamsize xsputn(const char* s, std::streamsize n) override {
        out_->insert(out_->end(), s, s + n);
        return n;
    }
    int_type overflow(int_type c) override {
        if (!traits_type::eq_int_type(c, traits_type::eof()))
            out_->push_back(traits_type::to_char_type(c));
        return traits_type::not_eof(c);
    }

  private:
    std::vector<char>* out_;
};

/// A streambuf that reads from a fixed span of bytes.
class span_streambuf final : public std::streambuf {
  public:
    explicit span_streambuf(std::span<const char> in) noexcept {
        char* p = const_cast<char*>(in.data()); // never written through: get area only
        setg(p, p, p + in.size());
    }
    std::size_t consumed() const noexcept { return static_cast<std::size_t>(gptr() - eback()); }
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(egptr() - gptr()); }
};

/// Writes values to an output buffer through a cereal binary archive.
class writer {
  public:
    explicit writer(std::vector<char>& out) : buf_(out), os_(&buf_), ar_(os_) {}
    template <class... T> void operator()(const T&... v) { ar_(v...); }

  private:
    vector_streambuf buf_;
    std::ostream os_;
    cereal::BinaryOutputArchive ar_;
};

/// Reads values from a byte span through a cereal binary archive. A read past the end or a
/// malformed value throws coproc::error naming `what` (e.g. "result of task 12").
class reader {
  public:
    explicit reader(std::span<const char> in) : buf_(in), is_(&buf_), ar_(is_) {}
    template <class... T> void operator()(T&... v) { ar_(v...); }
    std::size_t remaining() const noexcept { return buf_.remaining(); }

  private:
    span_streambuf buf_;
    std::istream is_;
    cereal::BinaryInputArchive ar_;
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
