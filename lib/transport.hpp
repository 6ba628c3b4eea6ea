// How an exception thrown by a task crosses to the parent (private to the library).
#pragma once

#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace coproc::detail {

/// Appends the exception being handled (call inside a catch block) to `out`.
void encode_current_exception(std::vector<char>& out);

/// Rebuilds an exception encoded by encode_current_exception. `context` (e.g. "task 7
/// (int (*)(int))") is used in the message if the payload itself is malformed.
std::exception_ptr decode_exception(std::span<const char> payload, std::string_view context);

/// The demangled name of the exception being handled.
std::string current_exception_type_name();

} // namespace coproc::detail
