// coproc/detail/pool_core.hpp — the non-template heart of a pool (implemented in lib/).
//
// A call (apply, map, imap...) becomes one or more jobs: a request frame already encoded on
// the caller's thread plus the sink that receives its outcome. The core queues jobs, hands
// them to the least-loaded live worker, batches frames per write, reads replies, replaces
// dead workers and fails exactly the task a dead worker was running.
#pragma once

#include <coproc/detail/function_id.hpp>
#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/wire.hpp>
#include <coproc/options.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <thread>
#include <vector>

namespace coproc::detail {

/// Receives the outcome of the jobs of one call. Called on the pool's event loop, possibly
/// from several threads at once if that loop is run by several threads.
struct job;

/// Receives the outcome of the jobs of one call. Called on the pool's event loop, possibly
/// from several threads at once if that loop is run by several threads.
class pool_core;

class task_sink : public std::enable_shared_from_this<task_sink> {
  public:
    virtual ~task_sink() = default;
    /// Job `j` returned; `payload` holds its results, valid during the call only.
    virtual void on_result(const job& j, std::span<const char> payload) = 0;
    virtual void on_error(const job& j, std::exception_ptr e) = 0;
    /// A cancelled sink gets no more outcomes; its jobs that have not started never run (see
    /// pool_core::cancel()).
    bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
    /// Marks the sink cancelled (pool_core::cancel() also stops its jobs).
    void cancel() noexcept { cancelled_.store(true, std::memory_order_release); }
    /// Cancels this call in `core` (see pool_core::cancel()); a call with jobs still to submit
    /// also stops submitting.
    virtual void cancel_in(pool_core& core) noexcept;

  private:
    std::atomic<bool> cancelled_{false};
};

struct job { // a new field is reset in job_recycler (lib/job_pool.cpp) too
    std::vector<char> frame; // the request frame; its id is set when submitted
    payload_fd payload;      // its arguments, when they travel out of line (see wire.hpp)
    std::shared_ptr<task_sink> sink;
    std::size_t chunk = 0; // index of this job within its call
    std::uint64_t id = 0;
    std::uint64_t seq = 0; // its number among the frames sent to its worker (1, 2, ...)
    std::uint64_t ran_ns = 0; // answered: how long its worker says it ran (0: not known)
    std::string_view name; // the function's type, for error messages
};
/// Jobs are made on the submitting thread and freed on the pool's loop thread. Rather than
/// going back to malloc across threads (both threads then fight over one malloc arena's
/// lock), a freed job is kept for reuse: in a small cache of the freeing thread, moved in
/// batches through a shared depot to the threads that make jobs. A reused job keeps its frame's
/// capacity (up to job_kept_frame_bytes). Freeing a job drops its sink and closes its memfd at
/// once, as deleting it would.
struct job_recycler {
    void operator()(job* j) const noexcept;
};
using job_ptr = std::unique_ptr<job, job_recycler>;
/// An empty job, reused if one is kept.
job_ptr new_job();
/// Frees the jobs kept in the shared depot and in this thread's cache (before a fork, whose
/// child would share their pages).
void release_kept_jobs() noexcept;

inline constexpr std::size_t job_kept_frame_bytes = 1024;

/// Room reserved up front for a request frame: its header, task prefix and a few arguments.
inline constexpr std::size_t small_frame_bytes = 256;

void append_task_prefix(std::vector<char>& out, const task_entry* entry, erased_fn fn);

/// The number of items (argument tuples) job `j` carries.
inline std::size_t items_of(const job& j) noexcept {
    return static_cast<std::size_t>(read_header(j.frame.data()).aux);
}

/// The bytes job `j`'s request holds: its frame and its arguments out of line, if they are.
inline std::size_t request_bytes(const job& j) noexcept {
    std::size_t n = j.frame.size();
    if (j.payload) { // the frame ends with the count of bytes out of line (wire.hpp)
        std::uint64_t count;
        std::memcpy(&count, j.frame.data() + n - sizeof count, sizeof count);
        n += static_cast<std::size_t>(count);
    }
    return n;
}

/// A job of a map carries several chunks when one chunk runs so briefly that sending and
/// answering it would cost more than running it: as many as run in about group_ns, at most
/// max_group_chunks (and in a frame of about max_group_bytes, see chunk_encoder).
inline constexpr std::uint64_t group_ns = 20'000;
inline constexpr std::size_t max_group_chunks = 64;
inline constexpr std::size_t max_group_bytes = 64 * 1024;

/// How many chunks of `chunksize` items, each run in `item_ns` nanoseconds (0: not measured
/// yet, which gives 1), one job may carry (see above).
constexpr std::size_t group_chunks(std::size_t chunksize, std::uint64_t item_ns) noexcept {
    if (item_ns == 0 || chunksize == 0 || chunksize >= group_ns || item_ns >= group_ns)
        return 1;
    const std::uint64_t chunk_ns = item_ns * chunksize; // both under group_ns: no overflow
    return chunk_ns >= group_ns ? 1 : std::min<std::size_t>(group_ns / chunk_ns, max_group_chunks);
}

/// "task 7 (int (*)(int))": a job as error messages name it.
std::string describe(const job& j);

/// Inside a catch block: the error for a reply to `j` whose results could not be decoded (a
/// result type whose load does not read what its save wrote, say); it names the task.
std::exception_ptr undecodable_result(const job& j) noexcept;

/// Encodes a request running `fn` over the items `write_items(writer&)` writes; it returns
/// how many it wrote.
template <class Fp, class WriteItems>
job_ptr make_job(Fp fn, WriteItems&& write_items, std::shared_ptr<task_sink> sink,
                 std::size_t chunk) {
    job_ptr j = new_job();
    auto& out = j->frame;
    out.reserve(small_frame_bytes); // a small task's frame is allocated once
    const auto at = begin_frame(out, frame_kind::task, 0, 0);
    append_task_prefix(out, &task_entry_for<Fp>, reinterpret_cast<erased_fn>(fn));
    std::uint64_t count;
    {
        writer w(out); // large arguments go out of line, bounded by memory only
        count = static_cast<std::uint64_t>(write_items(w));
    }
    j->payload = move_out_of_line(out, at, task_prefix_bytes);
    end_frame(out, at, count, j->payload ? frame_out_of_line : 0);
    j->sink = std::move(sink);
    j->chunk = chunk;
    j->name = task_entry_for<Fp>.name;
    return j;
}

class pool_core {
  public:
    /// Forks the workers. `own_loop` is the id of the thread running `ex` when the pool owns
    /// that thread (so blocking calls made on it can be refused).
    static std::shared_ptr<pool_core> create(asio::any_io_executor ex, pool_options opts,
                                             std::thread::id own_loop = {});
    virtual ~pool_core() = default;

    /// Queues jobs; throws pool_closed if the pool no longer accepts tasks.
    virtual void submit(job_ptr j) = 0;
    virtual void submit(std::vector<job_ptr> jobs) = 0;

    /// Queues further jobs of a call already accepted (a map or imap encoding its input as it
    /// goes): still allowed after close(), refused after terminate().
    virtual void submit_more(std::vector<job_ptr> jobs) = 0;
    /// Cancels the call `sink`: it gets no more outcomes, its queued jobs are dropped, its jobs
    /// a worker holds but has not started are skipped there, and a running one sees
    /// this_task::stop_requested(); a worker still running it after pool_options::cancel_grace
    /// is killed and replaced. Thread-safe; never blocks on a worker.
    virtual void cancel(const std::shared_ptr<task_sink>& sink) noexcept = 0;
    /// While held, close() keeps the workers for a call that has more jobs to submit.
    virtual void hold() noexcept = 0;
    virtual void release() noexcept = 0;
    /// How many chunks of `chunksize` items one job of a map may carry, its items having run
    /// `item_ns` nanoseconds each on average (0: not measured yet): group_chunks(), or 1 where
    /// the pool counts or times jobs one by one. Thread-safe.
    virtual std::size_t chunks_per_job(std::size_t /*chunksize*/,
                                       std::uint64_t /*item_ns*/) const noexcept {
        return 1;
    }
    /// Runs `fn` on the pool's event loop (the callbacks of a call that needs no worker).
    virtual void post(std::function<void()> fn) = 0;
    /// Throws pool_closed (or the initializer's failure) if no new task would be accepted.
    virtual void check_open() const = 0;
    virtual void close() = 0;
    virtual void terminate() = 0;
    virtual void join() = 0;
    /// Calls `park(waiters)` under the pool's lock to park a join waiter there: it is posted
    /// when join() would return. Throws coproc::error if the pool is still running.
    virtual void park_join(const std::function<void(waiter_list&)>& park) = 0;
    /// Takes join waiter `id` out (its operation was cancelled) and posts it, aborted.
    virtual void unpark_join(waiter_list::id_type id) noexcept = 0;
    /// terminate(), then reap every worker without the event loop and release all I/O objects.
    virtual void shutdown() noexcept = 0;

    virtual std::size_t size() const noexcept = 0;
    virtual std::vector<pid_t> pids() const = 0;
    /// True when called on a thread that runs this pool's event loop, where blocking would
    /// deadlock.
    virtual bool on_loop_thread() const noexcept = 0;
    /// Throws coproc::error if a blocking wait here would deadlock; `what` names the call.
    void check_blocking(const char* what) const;
};

inline void task_sink::cancel_in(pool_core& core) noexcept { core.cancel(shared_from_this()); }

} // namespace coproc::detail
