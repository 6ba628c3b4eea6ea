// What an mpi_pool and its agents say to each other besides task frames (private to
// libcoproc_mpi); the tags are in progress.hpp.
//
// A task travels as the local pool's own task frame (include/coproc/detail/wire.hpp) with the
// caller's task id in its header; the agent's reply is a result or error frame with that id.
// An error frame's `aux` says which exception it carries: the transported exception of
// lib/transport.hpp, or one of coproc's own that must reach the caller as itself (worker_lost,
// pool_closed, timeout_error).
#pragma once

#include <coproc/options.hpp>

#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace coproc::detail {

/// tag_start: the local pool an agent runs, and the caller's build id.
struct start_request {
    std::string build_id;
    pool_options options;
};
std::vector<char> encode(const start_request& r);
start_request decode_start(std::span<const char> bytes);

/// tag_started: an agent's answer.
struct start_reply {
    bool ok = false;
    std::uint64_t workers = 0;
    std::string host;
    std::string error; // why it did not start
};
std::vector<char> encode(const start_reply& r);
start_reply decode_started(std::span<const char> bytes);

/// An identity of this executable, the same in every process that runs the same build: its
/// GNU build-id note, or a hash of the file where it has none.
const std::string& build_id();

/// The name an agent gives the tasks it runs; rank 0 puts the task's own description in its
/// place in error messages ("task 4 (@)" becomes "task 17 (int (*)(int))").
inline constexpr std::string_view task_placeholder = "@";

/// An error frame (header included) for task `id` carrying `e`.
std::vector<char> error_frame(std::uint64_t id, const std::exception_ptr& e);
/// The exception of an error frame's payload; `where` (e.g. "rank 2 on node7") starts the
/// message of coproc's own exceptions, `context` describes the task.
std::exception_ptr decode_error(std::uint64_t aux, std::span<const char> payload,
                                std::string_view where, std::string_view context);

} // namespace coproc::detail
