// The worker process side of a pool (private to the library).
#pragma once

#include "task_key.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <sys/types.h>
#include <vector>

namespace coproc::detail {

/// Shared memory of one worker and the parent. The worker writes which task it is running and
/// since when, and the last one it finished: they name the tasks to fail when the worker dies,
/// and drive task timeouts. The parent writes which of the frames it sent are cancelled.
struct alignas(64) worker_slot {
    /// More than the most frames a worker ever holds (dispatcher::cap()), so the frames it
    /// holds have distinct entries in `cancelled`.
    static constexpr std::size_t cancel_window = 2048;

    std::atomic<std::uint64_t> task_id{0}; // 0 when idle
    std::atomic<std::int64_t> start_ns{0}; // CLOCK_MONOTONIC
    std::atomic<std::uint64_t> done_id{0}; // the last task run to the end (its reply may still
                                           // be batched, unwritten); 0: none
    std::atomic<std::uint32_t> holding{0}; // 1 while it holds finished replies back (batching)
    /// cancelled[s % cancel_window] == s: the worker's frame number s (its job's seq) is
    /// cancelled: skipped if not started, else this_task::stop_requested() is true.
    alignas(64) std::atomic<std::uint64_t> cancelled[cancel_window];

    /// A fresh slot for a new worker (its frames are numbered from 1 again).
    void reset() noexcept;
    /// Whether frame `seq` is cancelled.
    bool is_cancelled(std::uint64_t seq) const noexcept {
        return cancelled[seq % cancel_window].load(std::memory_order_seq_cst) == seq;
    }
};

/// A mapped range of the process image: a PT_LOAD segment, or a PT_GNU_RELRO range (written
/// by the loader, then read-only).
struct segment {
    std::uintptr_t begin, end;
    bool exec;
    bool writable;
};
/// The process image's segments and RELRO ranges, read with dl_iterate_phdr (call in the
/// parent, not a child).
std::vector<segment> mapped_segments();

struct worker_config {
    pid_t parent = 0;
    void (*initializer)() = nullptr;
    std::size_t maxtasks = 0;
    std::vector<int> close_fds;    // the fork server's descriptors, closed at start
    std::vector<segment> segments; // where task entries and functions may live
    task_key key;                  // authenticates task frames (seal_task_frame)
    int slots_fd = -1;             // memfd of the pool's worker slots (see map_slots)
    std::size_t slots = 0;         // how many slots it holds
    bool only_needed_fds = false;  // pool_options::close_fds: close all but keep_fds at start
    std::vector<int> keep_fds;     // the descriptors of the handles that exist (queues...)
};

/// Maps the `n` worker slots held by memfd `fd`; throws std::system_error.
worker_slot* map_slots(int fd, std::size_t n);

/// Runs in a freshly forked child that has run start_pool_child() (as its first step, before
/// anything that allocates or blocks): serves task frames on `fd` until EOF, maxtasks or death.
[[noreturn]] void worker_main(int fd, worker_slot* slot, const worker_config& cfg) noexcept;

std::int64_t monotonic_ns() noexcept;

/// Larger socket buffers for a worker's socket: fewer wake-ups per large argument or result.
void tune_worker_socket(int fd) noexcept;

} // namespace coproc::detail
