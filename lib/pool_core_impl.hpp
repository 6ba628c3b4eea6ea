// The parent side of a pool (private to the library): run state, submission, lifetime, and the
// handling of worker replies and exits, over the units that do the rest:
//
//   worker_spawner   slot memory, fork server and its exit reports, fallback fork
//   dispatcher       pending jobs, task ids, least-loaded choice, in-flight cap
//   worker_link      one worker: socket, pidfd, in-flight jobs, batched writes, how it ended
//   loss_rules       which jobs of a dead worker fail and which run again
//   timeout_watch    task timeouts
//
// All state, the units' included, is guarded by one mutex; handlers run on the pool's executor
// and take it. (Jobs submitted while it is held wait in the inbox, under a lock of its own.)
// Sinks (user-visible completions and callbacks) are always called with the mutex released (see
// effects), so a callback may call back into the pool. fork() is never called with the mutex
// held.
#pragma once

#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/pool_core.hpp>
#include "adaptive_mutex.hpp"
#include "dispatcher.hpp"
#include "timeout_watch.hpp"
#include "worker_link.hpp"
#include "worker_spawner.hpp"

#include <condition_variable>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <span>

namespace coproc::detail {

/// The message of exception `e`.
std::string what_of(const std::exception_ptr& e);

class core_impl final : public pool_core, public std::enable_shared_from_this<core_impl> {
  public:
    core_impl(asio::any_io_executor ex, pool_options opts, std::thread::id own_loop);

    void start();

    void submit(job_ptr j) override;
    void submit(std::vector<job_ptr> jobs) override;
    void submit_more(std::vector<job_ptr> jobs) override;
    void cancel(const std::shared_ptr<task_sink>& sink) noexcept override;
    void hold() noexcept override;
    void release() noexcept override;
    void post(std::function<void()> fn) override;
    void check_open() const override;

    void close() override;
    void terminate() override;
    void join() override;
    void park_join(const std::function<void(waiter_list&)>& park) override;
    void unpark_join(waiter_list::id_type id) noexcept override;
    void shutdown() noexcept override;

    std::size_t size() const noexcept override { return opt_.processes; }
    /// maxtasksperchild counts jobs and task_timeout times them: with either, a job is one
    /// chunk.
    std::size_t chunks_per_job(std::size_t chunksize,
                               std::uint64_t item_ns) const noexcept override {
        if (opt_.maxtasksperchild || opt_.task_timeout.count())
            return 1;
        return group_chunks(chunksize, item_ns);
    }
    std::vector<pid_t> pids() const override;
    bool on_loop_thread() const noexcept override;

  private:
    enum class run_state { running, closing, terminated };

    // What handling an event under mu_ leaves to do once mu_ is released: deliver replies, fail
    // jobs, start replacement workers (the shape of Asio's perform_io_cleanup_on_block_exit).
    // Declared before the lock_guard, so that its destructor runs after the unlock.
    class effects {
      public:
        explicit effects(core_impl& c) noexcept : c_(c) {}
        ~effects();
        effects(const effects&) = delete;
        effects& operator=(const effects&) = delete;

        /// Delivers `f`, the reply to `j` (its payload must stay valid until then; `mapped`, the
        /// payload out of line, is unmapped once it is).
        void reply(job_ptr j, const frame& f, mapped_payload mapped = {}) {
            replies_.push_back({std::move(j), f, std::move(mapped)});
        }
        /// Fails `j` with `e`; join() waits until it is delivered. `writer`: the worker whose
        /// write under way may still read the job's frame. Under mu_.
        void fail(job_ptr j, std::exception_ptr e, link_ptr writer = nullptr);
        /// Forks a worker into `slot` (spawning_ already counts it).
        void respawn(std::size_t slot) { respawns_.push_back(slot); }

      private:
        struct reply_to {
            job_ptr j;
            frame f;
            mapped_payload mapped;
        };
        struct failure {
            job_ptr j;
            std::exception_ptr e;
            link_ptr writer;
        };
        core_impl& c_;
        std::vector<reply_to> replies_;
        std::vector<failure> failed_;
        std::vector<std::size_t> respawns_;
    };

    // pool_core.cpp
    void check_open_locked() const;
    void enqueue(std::span<job_ptr> jobs);
    bool defer(std::span<job_ptr> jobs);
    void take_inbox_locked(bool close = false);
    bool finished_locked() const { return links_.empty() && spawning_ == 0; }
    // Finished, and every failed task's outcome is set: join() may return.
    bool joinable_locked() const { return finished_locked() && undelivered_ == 0; }
    void post_join_waiters();
    void wake_joiners_locked();
    // Fails every queued and in-flight job with `make_error()` and kills every worker.
    void fail_all_locked(effects& fx, const std::function<std::exception_ptr()>& make_error);
    void retire_zygote();

    // pool_core_events.cpp
    void spawn(std::size_t slot);
    void respawn(std::size_t slot);
    void pump();
    void maybe_shut(worker_link& w);
    void start_write(const link_ptr& w);
    void continue_write(const link_ptr& w, std::error_code ec);
    void end_write(const link_ptr& w);
    void start_read(const link_ptr& w);
    void start_wait(const link_ptr& w);
    void start_events();
    void on_read(const link_ptr& w, std::error_code ec);
    void take_frame(const link_ptr& w, const frame& f, effects& fx);
    void on_exit(const link_ptr& w);
    void on_unreported_exit(const link_ptr& w);
    void on_event(std::optional<zygote::exit_event> ev);
    void note_exit(const link_ptr& w, std::optional<int> status, effects& fx);
    void on_grace(const link_ptr& w);
    void finalize(const link_ptr& w, effects& fx);
    void arm_timer();
    void check_timeouts();
    void start_cancel_grace(const link_ptr& w, std::uint64_t id,
                            std::chrono::steady_clock::duration d);
    void on_cancel_grace(const link_ptr& w, std::uint64_t id, int waits);

    asio::any_io_executor ex_;
    pool_options opt_;
    std::thread::id own_loop_;
    task_key key_;
    worker_spawner spawner_;
    dispatcher dispatcher_;
    timeout_watch watch_;

    mutable adaptive_mutex mu_;
    std::condition_variable_any join_cv_;
    run_state state_ = run_state::running;
    std::exception_ptr broken_;
    std::vector<link_ptr> links_;
    std::size_t spawning_ = 0;
    std::size_t holds_ = 0; // calls with jobs still to submit
    // Failures collected under mu_ that effects have not delivered yet: join() waits for them.
    std::size_t undelivered_ = 0;
    waiter_list join_waiters_;
    std::map<pid_t, int> early_exits_; // exits reported before spawn() registered the worker

    // Jobs submitted while another thread held mu_ (the loop, handling replies): queued here
    // under a lock held only to append, rather than waiting for mu_, and taken in order by the
    // next holder of mu_ that submits, or by a handler posted for the first of them. close()
    // and fail_all_locked() take what is left and close it: then submissions take mu_ again.
    std::mutex inbox_mu_;
    std::vector<job_ptr> inbox_;
    bool inbox_open_ = true;
};

} // namespace coproc::detail
