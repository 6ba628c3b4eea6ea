// coproc/detail/archive.hpp — cereal's binary input archive, made safe for untrusted bytes.
//
// cereal::BinaryInputArchive trusts length prefixes: a forged prefix of 2^33 makes a string
// allocate 8 GiB before the read fails. This archive reads the same format but refuses a
// length prefix larger than the bytes left in the message (every element of a container
// takes at least one byte, except empty types such as std::monostate), and a bool that is
// neither 0 nor 1.
#pragma once

#include <cereal/archives/binary.hpp>
#include <cereal/cereal.hpp>

#include <cstddef>
#include <istream>
#include <memory>
#include <string>
#include <type_traits>

namespace coproc::detail {

class checked_input_archive
    : public cereal::InputArchive<checked_input_archive, cereal::AllowEmptyClassElision> {
  public:
    explicit checked_input_archive(std::istream& stream)
        : InputArchive(this), stream_(stream) {}

    void loadBinary(void* const data, std::streamsize size) {
        const auto got = stream_.rdbuf()->sgetn(static_cast<char*>(data), size);
        if (got != size)
            throw cereal::Exception("truncated: needed " + std::to_string(size) +
                                    " more bytes, found " + std::to_string(got));
    }

    /// Bytes not read yet.
    std::size_t remaining() const { return static_cast<std::size_t>(stream_.rdbuf()->in_avail()); }

  private:
    std::istream& stream_;
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

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(checked_input_archive& ar, cereal::NameValuePair<T>& t) {
    ar(t.value);
}

template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(checked_input_archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
    if (static_cast<std::size_t>(t.size) > ar.remaining())
        throw cereal::Exception("a length prefix of " + std::to_string(t.size) +
                                " exceeds the " + std::to_string(ar.remaining()) +
                                " bytes left in the message");
}

template <class T> void CEREAL_LOAD_FUNCTION_NAME(checked_input_archive& ar, cereal::BinaryData<T>& t) {
    ar.loadBinary(t.data, static_cast<std::streamsize>(t.size));
}

} // namespace coproc::detail

CEREAL_REGISTER_ARCHIVE(coproc::detail::checked_input_archive)

namespace cereal::traits::detail {
template <> struct get_output_from_input<coproc::detail::checked_input_archive> {
    using type = cereal::BinaryOutputArchive;
};
} // namespace cereal::traits::detail
