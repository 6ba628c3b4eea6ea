// Which worker runs which job (private to the library): the queue of jobs not yet handed out,
// task ids, and how many jobs each worker may hold.
//
// A dispatcher holds no lock of its own: the pool calls it under its mutex.
#pragma once

#include <coproc/detail/pool_core.hpp>
#include "task_key.hpp"
#include "worker_link.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory_resource>
#include <span>
#include <utility>
#include <vector>

namespace coproc::detail {

class dispatcher {
  public:
    /// Seals task frames with `key`; with `maxtasks` (0: no limit), a worker retires after
    /// that many jobs.
    dispatcher(const task_key& key, std::size_t maxtasks) noexcept
        : macs_(key), maxtasks_(maxtasks) {}

    void push(job_ptr j) { pending_.push_back(std::move(j)); }
    /// Puts `jobs` back at the front of the queue, in their order (they run first).
    void requeue(std::vector<job_ptr> jobs);
    /// Takes the queued jobs of `sink` out.
    std::vector<job_ptr> take(const task_sink* sink);
    /// Takes every queued job out.
    std::vector<job_ptr> take_all();
    bool empty() const noexcept { return pending_.empty(); }
    std::size_t size() const noexcept { return pending_.size(); }

    /// Hands queued jobs, oldest first, each to the least-loaded of `links` that accepts work
    /// and holds fewer than cap() jobs, until none does; drops the jobs of cancelled calls.
    /// A job gets its id (and its frame the MAC) the first time it is handed out.
    void dispatch(std::span<const link_ptr> links);

    /// How many jobs a worker may hold: enough to cover ~2 ms of work so it never idles
    /// between batches, few while job durations are unknown so slow jobs spread evenly.
    std::size_t cap() const noexcept;
    /// A job ran for `ns` nanoseconds (a worker's figure: bounded here).
    void note_duration(std::uint64_t ns) noexcept;

    /// The longest run time a worker's figure counts for (1 hour).
    static constexpr std::uint64_t max_task_ns = 3'600'000'000'000;

  private:
    void assign_id(job& j) noexcept;

    mac_memo macs_;
    std::size_t maxtasks_;
    // The queue's blocks are recycled here, not given back to malloc: a block the submitting
    // thread allocates is often emptied by the loop thread.
    std::pmr::unsynchronized_pool_resource pending_blocks_;
    std::pmr::deque<job_ptr> pending_{&pending_blocks_};
    std::uint64_t next_id_ = 1;
    std::int64_t avg_ns_ = 0; // running average of job durations
};

} // namespace coproc::detail
