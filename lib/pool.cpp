// pool: the public class around pool_core, and the event-loop thread a pool may own.
#include <coproc/pool.hpp>
#include "child_setup.hpp"
#include "fork_thread.hpp"

#include <asio/detail/reactor.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

namespace coproc {

namespace detail {

namespace {
thread_local const callback_scope* innermost_callback = nullptr;
} // namespace

callback_scope::callback_scope(const pool_core* core) noexcept
    : core_(core), outer_(innermost_callback) {
    innermost_callback = this;
}

callback_scope::~callback_scope() { innermost_callback = outer_; }

bool callback_scope::inside(const pool_core* core) noexcept {
    for (const callback_scope* s = innermost_callback; s; s = s->outer_)
        if (s->core_ == core)
            return true;
    return false;
}

void pool_core::check_blocking(const char* what) const {
    if (on_loop_thread())
        throw coproc::error(std::string(what) +
                            " would deadlock: it was called on the thread that runs the pool's "
                            "event loop; co_await the async_ form instead");
}

// The descriptors Asio opens for `ctx`'s reactor, entered as private (see child_setup.hpp).
std::vector<int> register_reactor_fds(asio::io_context& ctx) {
    static constexpr std::string_view kinds[] = {"anon_inode:[eventpoll]", "anon_inode:[eventfd]",
                                                 "anon_inode:[timerfd]"};
    const auto before = open_fds();
    asio::use_service<asio::detail::reactor>(ctx);
    return register_new_fds(before, kinds);
}

struct own_loop {
    asio::io_context ctx{1};
    const std::vector<int> reactor_fds = register_reactor_fds(ctx);
    asio::executor_work_guard<asio::io_context::executor_type> guard{ctx.get_executor()};
    std::shared_ptr<pool_core> abandoned; // set by abandon(): this thread finishes the teardown
    std::mutex start_mu;
    std::condition_variable start_cv;
    bool parked = false;
    bool released = false;
    std::thread thread{[this] {
        park();
        run();
    }};

    // The pool forks its fork server just after starting this thread, and a fork must not
    // catch a thread mid-start-up (inside malloc or a sanitizer's bookkeeping, whose locks the
    // fork server and every worker would inherit held): the thread waits here, holding no lock,
    // until release().
    void park() {
        std::unique_lock lk(start_mu);
        parked = true;
        start_cv.notify_all();
        start_cv.wait(lk, [&] { return released; });
    }
    void wait_parked() {
        std::unique_lock lk(start_mu);
        start_cv.wait(lk, [&] { return parked; });
    }
    void release() noexcept {
        {
            std::lock_guard lk(start_mu);
            released = true;
        }
        start_cv.notify_all();
    }

    void run() noexcept {
        for (;;) {
            try {
                ctx.run();
                break;
            } catch (const std::exception& e) {
                std::fprintf(stderr, "coproc: a handler on the pool's loop threw: %s\n", e.what());
            } catch (...) {
                std::fprintf(stderr, "coproc: a handler on the pool's loop threw\n");
            }
        }
        if (abandoned) { // (stop() happens-before run() returns: no race with abandon())
            abandoned->shutdown();
            abandoned.reset();
            drain();
            thread.detach();
            delete this;
        }
    }

    // The pool was destroyed in one of its callbacks, which this thread may be running: it
    // cannot be joined there. Once run() returns, the thread shuts `core` down and deletes this.
    void abandon(std::shared_ptr<pool_core> core) noexcept {
        abandoned = std::move(core);
        guard.reset();
        ctx.stop();
    }

    // Handlers posted but not run yet (e.g. the callbacks of an empty map_async) run here, so
    // no result is left unfinished.
    void drain() noexcept {
        try {
            ctx.restart();
            ctx.poll();
        } catch (...) {
        }
    }

    ~own_loop() {
        for (int fd : reactor_fds)
            unregister_private_fd(fd);
        if (!thread.joinable())
            return; // abandoned: run() deletes this on its own thread
        release();  // if the pool failed to start
        guard.reset();
        ctx.stop();
        thread.join();
        drain();
    }
};

namespace {

// The pool's fork server dies with the thread that forks it (PR_SET_PDEATHSIG): fork it on a
// thread that lives as long as the process, not on a caller's thread that may end first.
std::shared_ptr<pool_core> create_core(asio::any_io_executor ex, const pool_options& options,
                                       std::thread::id own_loop) {
    std::shared_ptr<pool_core> core;
    run_on_lasting_thread([&] { core = pool_core::create(std::move(ex), options, own_loop); });
    return core;
}

} // namespace

} // namespace detail

pool::pool(std::size_t processes) : pool(pool_options{.processes = processes}) {}

pool::pool(pool_options options) : loop_(std::make_unique<detail::own_loop>()) {
    loop_->wait_parked();
    core_ = detail::create_core(loop_->ctx.get_executor(), options, loop_->thread.get_id());
    loop_->release();
}

pool::pool(asio::any_io_executor ex, pool_options options)
    : core_(detail::create_core(std::move(ex), options, {})) {}

pool::pool(const core_factory& make, std::optional<asio::any_io_executor> ex) {
    if (ex) {
        core_ = make(std::move(*ex), {});
        return;
    }
    loop_ = std::make_unique<detail::own_loop>();
    loop_->wait_parked();
    loop_->release(); // the core forks nothing here
    core_ = make(loop_->ctx.get_executor(), loop_->thread.get_id());
}

pool::~pool() {
    // The normal case: wait for the workers, then stop the loop thread.
    if (!detail::callback_scope::inside(core_.get()) && !(loop_ && core_->on_loop_thread())) {
        core_->shutdown();
        loop_.reset();
        return;
    }
    // Destroyed inside one of its own callbacks (the own loop thread runs nothing else), whose
    // caller still uses the pool's loop: waiting here for the loop, or for a replacement worker
    // the caller is about to start, would never end. Kill the workers now; reap them after the
    // callback returns.
    core_->terminate();
    std::fputs("coproc: pool destroyed inside one of its own callbacks: its tasks were "
               "terminated; destroy it from outside the callback\n",
               stderr);
    if (loop_) {
        loop_.release()->abandon(core_);
    } else {
        try {
            core_->post([core = core_] { core->shutdown(); });
        } catch (...) { // cannot post: the io_context is gone or out of memory; nothing to wait on
        }
    }
}

void pool::close() { core_->close(); }
void pool::terminate() { core_->terminate(); }
void pool::join() { core_->join(); }

std::size_t pool::size() const noexcept { return core_->size(); }
std::vector<pid_t> pool::pids() const { return core_->pids(); }
void pool::core_check_open() const { core_->check_open(); }

} // namespace coproc
