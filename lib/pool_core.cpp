// The parent side of a pool: run state, submission and lifetime (see pool_core_impl.hpp; the
// event loop's side is in pool_core_events.cpp).
#include <coproc/error.hpp>
#include "child_setup.hpp"
#include "pool_core_impl.hpp"
#include "transport.hpp"

#include <asio/async_result.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cerrno>
#include <sys/wait.h>
#include <unistd.h>

namespace coproc::detail {

namespace {

pool_options with_defaults(pool_options opts) {
    if (opts.processes == 0)
        opts.processes = std::max(1u, std::thread::hardware_concurrency());
    return opts;
}

worker_config config_for(const pool_options& opt, const task_key& key) {
    worker_config cfg;
    cfg.key = key;
    cfg.slots = opt.processes;
    cfg.only_needed_fds = opt.close_fds;
    if (opt.close_fds)
        cfg.keep_fds = handle_descriptors();
    cfg.parent = ::getpid();
    cfg.initializer = opt.initializer;
    cfg.maxtasks = opt.maxtasksperchild;
    cfg.segments = mapped_segments();
    return cfg;
}

} // namespace

std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "a non-standard exception";
    }
}

// The key is drawn first (nothing to undo if it throws), before the fork server: it and every
// worker inherit it.
core_impl::core_impl(asio::any_io_executor ex, pool_options opts, std::thread::id own_loop)
    : ex_(std::move(ex)), opt_(with_defaults(opts)), own_loop_(own_loop), key_(task_key::random()),
      spawner_(ex_, config_for(opt_, key_)), dispatcher_(key_, opt_.maxtasksperchild),
      watch_(ex_, opt_.task_timeout) {}

void core_impl::start() {
    try {
        spawner_.start_fork_server();
        {
            std::lock_guard lk(mu_);
            start_events();
        }
        for (std::size_t i = 0; i < opt_.processes; ++i) {
            {
                std::lock_guard lk(mu_);
                ++spawning_;
            }
            spawn(i);
        }
    } catch (...) {
        shutdown();
        throw;
    }
}

// ---------------------------------------------------------------- submission

void core_impl::submit(job_ptr j) { enqueue({&j, 1}); }

void core_impl::submit(std::vector<job_ptr> jobs) { enqueue(jobs); }

// A submitter that finds mu_ held does not wait for it: its jobs go to the inbox (see
// pool_core_impl.hpp). One that gets mu_ takes the inbox first, so that one thread's jobs are
// queued in the order it submitted them.
void core_impl::enqueue(std::span<job_ptr> jobs) {
    std::unique_lock lk(mu_, std::try_to_lock);
    if (!lk.owns_lock()) {
        if (defer(jobs))
            return;
        lk.lock();
    }
    check_open_locked();
    take_inbox_locked();
    for (auto& j : jobs)
        dispatcher_.push(std::move(j));
    pump();
}

// Queues `jobs` in the inbox, unless it is closed (the caller then takes mu_, and learns why).
// The first job of an empty inbox posts the handler that takes it.
bool core_impl::defer(std::span<job_ptr> jobs) {
    bool first = false;
    {
        std::lock_guard lk(inbox_mu_);
        if (!inbox_open_)
            return false;
        first = inbox_.empty();
        for (auto& j : jobs)
            inbox_.push_back(std::move(j));
    }
    if (first)
        asio::post(ex_, [self = shared_from_this()] {
            std::lock_guard lk(self->mu_);
            self->take_inbox_locked();
            self->pump();
        });
    return true;
}

// Moves the inbox's jobs to the dispatcher; `close`: for good (close(), terminate(), a broken
// pool), so that later submissions take mu_ and are refused there.
void core_impl::take_inbox_locked(bool close) {
    std::lock_guard lk(inbox_mu_);
    for (auto& j : inbox_)
        dispatcher_.push(std::move(j));
    inbox_.clear();
    if (close)
        inbox_open_ = false;
}

void core_impl::submit_more(std::vector<job_ptr> jobs) {
    std::lock_guard lk(mu_);
    if (broken_)
        std::rethrow_exception(broken_);
    if (state_ == run_state::terminated)
        throw pool_closed("the pool was terminated before the task finished");
    for (auto& j : jobs)
        dispatcher_.push(std::move(j));
    pump();
}

void core_impl::cancel(const std::shared_ptr<task_sink>& sink) noexcept {
    std::vector<job_ptr> dropped; // freed without the mutex
    std::lock_guard lk(mu_);
    sink->cancel();
    take_inbox_locked(); // a job still in the inbox is dropped with the queued ones
    dropped = dispatcher_.take(sink.get());
    for (const auto& w : links_) {
        if (w->has_exited() || w->reason() != kill_reason::none)
            continue;
        // The marks first, then task_id (both seq_cst, the worker does the opposite): the
        // worker skips a marked job, or runs it and is seen running it here. Newest job first:
        // the worker runs them oldest first, and the one it runs may stop as soon as it sees
        // its mark, by when the marks of those after it are set.
        worker_slot& s = spawner_.slot(w->slot());
        bool marked = false;
        for (auto it = w->inflight.rbegin(); it != w->inflight.rend(); ++it) {
            const job& j = **it;
            if (j.sink != sink)
                continue;
            s.cancelled[j.seq % worker_slot::cancel_window].store(j.seq, std::memory_order_seq_cst);
            marked = true;
        }
        if (!marked)
            continue;
        const std::uint64_t running = s.task_id.load(std::memory_order_seq_cst);
        for (const auto& j : w->inflight)
            if (j->sink == sink && j->id == running) {
                start_cancel_grace(w, running, opt_.cancel_grace);
                break;
            }
    }
}

void core_impl::hold() noexcept {
    std::lock_guard lk(mu_);
    ++holds_;
}

void core_impl::release() noexcept {
    std::lock_guard lk(mu_);
    --holds_;
    pump();
}

void core_impl::post(std::function<void()> fn) { asio::post(ex_, std::move(fn)); }

void core_impl::check_open() const {
    std::lock_guard lk(mu_);
    check_open_locked();
}

void core_impl::check_open_locked() const {
    if (broken_)
        std::rethrow_exception(broken_);
    if (state_ != run_state::running)
        throw pool_closed("the pool is closed: no new tasks after close() or terminate()");
}

// ---------------------------------------------------------------- lifetime

void core_impl::close() {
    std::lock_guard lk(mu_);
    take_inbox_locked(true); // submitted before close(): they run
    if (state_ == run_state::running)
        state_ = run_state::closing;
    pump();
}

void core_impl::terminate() {
    effects fx(*this);
    std::lock_guard lk(mu_);
    if (state_ == run_state::terminated)
        return;
    state_ = run_state::terminated;
    fail_all_locked(fx, [] {
        return std::make_exception_ptr(
            pool_closed("the pool was terminated before the task finished"));
    });
    watch_.cancel();
}

void core_impl::fail_all_locked(effects& fx,
                                const std::function<std::exception_ptr()>& make_error) {
    take_inbox_locked(true);
    for (auto& j : dispatcher_.take_all())
        fx.fail(std::move(j), make_error());
    for (auto& w : links_) {
        for (auto& j : w->inflight)
            fx.fail(std::move(j), make_error(), w->writing ? w : nullptr);
        w->inflight.clear();
        w->to_send.clear();
        w->kill();
    }
}

void core_impl::join() {
    check_blocking("pool::join()");
    std::unique_lock lk(mu_);
    if (state_ == run_state::running)
        throw error("pool::join() called on a running pool: call close() or terminate() first");
    join_cv_.wait(lk, [&] { return joinable_locked(); });
    if (auto z = spawner_.retire_fork_server()) { // its workers are gone: so is the fork server
        lk.unlock();
        z->stop();
    }
}

void core_impl::park_join(const std::function<void(waiter_list&)>& park) {
    std::lock_guard lk(mu_);
    if (state_ == run_state::running)
        throw error("pool::async_join() called on a running pool: call close() or terminate() "
                    "first");
    park(join_waiters_);
    if (joinable_locked())
        post_join_waiters();
}

void core_impl::unpark_join(waiter_list::id_type id) noexcept { join_waiters_.abort(mu_, id); }

void core_impl::shutdown() noexcept {
    terminate();
    std::unique_lock lk(mu_);
    join_cv_.wait(lk, [&] { return spawning_ == 0; });
    for (auto& w : links_) {
        if (!w->has_exited() && !w->from_zygote()) {
            int st = 0;
            while (::waitpid(w->pid(), &st, 0) < 0 && errno == EINTR) {
            }
        }
        w->finalize();
    }
    links_.clear();
    watch_.stop();
    auto z = spawner_.retire_fork_server();
    spawner_.close_slots(); // no worker is forked any more
    post_join_waiters();
    join_cv_.notify_all();
    lk.unlock();
    if (z)
        z->stop(); // kills and reaps what is left of its workers, then is reaped
}

std::vector<pid_t> core_impl::pids() const {
    std::lock_guard lk(mu_);
    std::vector<pid_t> out;
    for (const auto& w : links_)
        if (!w->has_exited())
            out.push_back(w->pid());
    return out;
}

bool core_impl::on_loop_thread() const noexcept {
    if (own_loop_ != std::thread::id{})
        return std::this_thread::get_id() == own_loop_;
    if (const auto* io = ex_.target<asio::io_context::executor_type>())
        return io->running_in_this_thread();
    return false;
}

void core_impl::post_join_waiters() { join_waiters_.take_all().post(false); }

void core_impl::wake_joiners_locked() {
    post_join_waiters();
    join_cv_.notify_all();
}

// A closed pool whose workers are all gone forks no more: stop the fork server, so that
// nothing of the pool keeps a caller's io_context running.
void core_impl::retire_zygote() {
    if (auto z = spawner_.retire_fork_server())
        asio::post(ex_, [z] { z->stop(); }); // a blocking waitpid: not under mu_
}

// ---------------------------------------------------------------- effects

void core_impl::effects::fail(job_ptr j, std::exception_ptr e, link_ptr writer) {
    ++c_.undelivered_;
    failed_.push_back({std::move(j), std::move(e), std::move(writer)});
}

// Replies first, then failures, then replacements; sinks do not throw.
core_impl::effects::~effects() {
    for (auto& r : replies_) {
        job& j = *r.j;
        if (j.sink->cancelled())
            continue;
        if (r.f.kind == frame_kind::result)
            j.sink->on_result(j, r.f.payload);
        else
            j.sink->on_error(j, decode_exception(r.f.payload, describe(j)));
        r.mapped.reset(); // decoded: nothing of it is kept
    }
    replies_.clear();
    if (!failed_.empty()) {
        for (auto& f : failed_)
            if (!f.j->sink->cancelled())
                f.j->sink->on_error(*f.j, f.e);
        std::lock_guard lk(c_.mu_);
        // A job failed while its worker's write was under way (terminate, a failed
        // initializer) keeps its frame alive until that write completes.
        for (auto& f : failed_)
            if (f.writer && f.writer->writing)
                f.writer->parked.push_back(std::move(f.j));
        c_.undelivered_ -= failed_.size();
        if (c_.joinable_locked()) // delivered the last failure of a finished pool
            c_.wake_joiners_locked();
    }
    failed_.clear(); // the jobs are freed without the mutex
    for (const std::size_t slot : respawns_)
        c_.respawn(slot);
}

// ---------------------------------------------------------------- entry points

std::exception_ptr undecodable_result(const job& j) noexcept {
    try {
        return std::make_exception_ptr(
            error("the result of " + describe(j) +
                  " could not be decoded: " + what_of(std::current_exception())));
    } catch (...) {
        return std::current_exception();
    }
}

std::shared_ptr<pool_core> pool_core::create(asio::any_io_executor ex, pool_options opts,
                                             std::thread::id own_loop) {
    auto c = std::make_shared<core_impl>(std::move(ex), opts, own_loop);
    c->start();
    return c;
}

} // namespace coproc::detail
