// Code addresses that mean the same in every process running the same build (private to
// libcoproc_mpi).
//
// A local pool names a task function by its offset from coproc's anchor: its workers are forks,
// with the same address space. Ranks are separate processes: each loads the executable and the
// shared libraries at its own random base, so an offset from the anchor (in libcoproc) to a
// function (in the executable) differs from rank to rank. Across ranks an address travels as
// the name of the object that holds it (the executable: "") and its offset in that object, and
// the agent turns it back into an offset from its own anchor.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace coproc::detail {

struct code_address {
    std::string object; // the file name of the loaded object; "" for the executable
    std::int64_t offset = 0;
};

/// Where `p` lies; throws coproc::error if in no loaded object.
code_address locate(const void* p);
/// The address `a` names here; throws coproc::error if that object is not loaded.
const void* resolve(const code_address& a);

/// Rank 0: the message carrying task `id`, whose frame `frame` make_job made in this process,
/// to an agent: the id, the frame's function and task entry as code addresses, the frame.
std::vector<char> task_message(std::uint64_t id, const std::vector<char>& frame);
/// The task id of a task message (0 if it is too short to hold one).
std::uint64_t task_message_id(std::span<const char> message) noexcept;
/// The agent: the task frame of `message`, its function and entry as offsets from this
/// process's anchor (the entry's digest recomputed from what rank 0 said of it; the worker
/// checks the entry itself before it calls anything). Throws coproc::error if malformed.
std::vector<char> task_frame(std::span<const char> message);

} // namespace coproc::detail
