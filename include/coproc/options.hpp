// coproc/options.hpp — pool_options, the knobs of a pool (Python's Pool() arguments).
#pragma once

#include <chrono>
#include <cstddef>

namespace coproc {

struct pool_options {
    /// Number of worker processes; 0 means std::thread::hardware_concurrency().
    std::size_t processes = 0;
    /// Run once in each worker when it starts. If it throws, the pool fails every task with
    /// coproc::error naming the exception, and starts no more workers.
    void (*initializer)() = nullptr;
    /// 0: a worker runs any number of tasks; else a worker is replaced after this many tasks
    /// (a chunk of map/imap counts as one task, as in Python). No task is lost.
    std::size_t maxtasksperchild = 0;
    /// 0: no limit; else a task running longer is failed with coproc::timeout_error and its
    /// worker is killed and replaced.
    std::chrono::milliseconds task_timeout{0};
    /// How long a cancelled task that is already running may take to return (it sees
    /// coproc::this_task::stop_requested() turn true) before its worker is killed and replaced.
    /// 0: killed at once. The cancelled operation itself completes at once either way.
    std::chrono::milliseconds cancel_grace{1000};
    /// false: a worker inherits the parent's descriptors, as a forked child does (coproc's own
    /// private ones, such as other pools' worker sockets, are always closed). true: a worker
    /// keeps only stdin, stdout, stderr, its own socket and the descriptors of the queues, pipes
    /// and locks that exist when the pool starts (Python's forkserver and spawn start methods).
    bool close_fds = false;
};

} // namespace coproc
