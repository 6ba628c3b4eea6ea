// The parent side of a pool: dispatch, batched writes, replies, worker death and replacement.
//
// All state is guarded by one mutex; handlers run on the pool's executor and take it. Sinks
// (user-visible completions and callbacks) are always called with the mutex released, so a
// callback may call back into the pool. fork() is never called with the mutex held.
#include "child_setup.hpp"
#include "io.hpp"
#include "transport.hpp"
#include "worker.hpp"
#include "zygote.hpp"
#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <system_error>
#include <tuple>
#include <unistd.h>

namespace coproc::detail {

// The pool replaces the entry digest by the frame's MAC when it first hands the frame to a
// worker (seal_task_frame): only the pool holds the key.
void append_task_prefix(std::vector<char>& out, const task_entry* entry, erased_fn fn) {
    const task_prefix p{offset_of(entry), offset_of(reinterpret_cast<const void*>(fn)),
                        entry_digest(*entry)};
    const auto* bytes = reinterpret_cast<const char*>(&p);
    out.insert(out.end(), bytes, bytes + sizeof p);
}

namespace {

using socket_t = asio::local::stream_protocol::socket;

constexpr std::size_t small_frame = 8 * 1024; // copied together into one write buffer
constexpr auto exit_grace = std::chrono::milliseconds(200);
constexpr std::uint64_t max_task_ns = 3'600'000'000'000;
// Above this, a buffer is given back after use rather than kept for the next message.
constexpr std::size_t keep_capacity = 4 << 20;
// How long a worker forked by the fork server may be gone before the fork server's report of
// its exit status is given up on.
constexpr auto report_wait = std::chrono::milliseconds(1000);

std::string describe(const job& j) {
    return "task " + std::to_string(j.id) + " (" + std::string(j.name) + ")";
}

std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "a non-standard exception";
    }
}

struct worker_proc {
    pid_t pid = -1;
    std::size_t slot = 0;
    std::unique_ptr<socket_t> sock;
    std::unique_ptr<asio::posix::stream_descriptor> pidfd;
    std::unique_ptr<asio::steady_timer> grace; // waits for EOF after the process exited
    std::deque<job_ptr> inflight;              // handed to this worker, oldest first
    std::vector<job*> to_send;                 // not yet part of a write
    std::vector<char> staging;                 // the small frames of the write in progress
    std::vector<asio::const_buffer> bufs;      // the write in progress
    frame_decoder dec;
    std::uint64_t assigned = 0;
    std::int64_t idle_since = 0; // for timeouts: when an idle worker with work was first seen
    std::optional<int> status; // its wait status, once known
    bool writing = false;
    bool retiring = false; // got maxtasksperchild tasks: it exits after answering them
    bool shut = false;     // our write side is shut: the worker exits when done
    bool eof = false;
    bool exited = false;
    bool finalized = false;
    bool timed_out = false;
    bool from_zygote = false; // its exit status is reported by the fork server
    bool answered = false;    // it has sent a reply (so its initializer ran)
    std::string protocol_error;
    std::vector<job_ptr> parked; // failed jobs whose frames the write in progress still reads

    /// The signal that killed it (0: none) and its exit status (-1: none or unknown).
    std::pair<int, int> exit_info() const noexcept {
        const int st = status.value_or(0);
        if (!status)
            return {0, -1};
        return {WIFSIGNALED(st) ? WTERMSIG(st) : 0, WIFEXITED(st) ? WEXITSTATUS(st) : -1};
    }

    bool accepts() const noexcept {
        return !eof && !exited && !retiring && !timed_out && !shut && protocol_error.empty();
    }
};
using worker_ptr = std::shared_ptr<worker_proc>;

struct failure {
    job_ptr j;
    std::exception_ptr e;
    worker_ptr writer = nullptr; // set if a write to this worker may still read the job's frame
};

struct reply {
    job_ptr j;
    frame f;
};

class core_impl final : public pool_core, public std::enable_shared_from_this<core_impl> {
  public:
    core_impl(asio::any_io_executor ex, pool_options opts, std::thread::id own_loop)
        : ex_(std::move(ex)), opt_(opts), own_loop_(own_loop) {
        if (opt_.processes == 0)
            opt_.processes = std::max(1u, std::thread::hardware_concurrency());
        // Drawn first (nothing to undo if it throws), before the fork server: it and every
        // worker inherit the key.
        cfg_.key = task_key::random();
        // The slots live in a memfd that only this pool's fork server and workers map: the
        // parent's mapping is not inherited by other children (MADV_DONTFORK).
        slots_fd_.reset(::memfd_create("coproc-pool-slots", MFD_CLOEXEC));
        if (!slots_fd_ || ::ftruncate(slots_fd_.get(), slots_bytes()) != 0)
            throw os_error("memfd for the pool's worker slots failed");
        slots_ = new (map_slots(slots_fd_.get(), opt_.processes)) worker_slot[opt_.processes];
        ::madvise(slots_, slots_bytes(), MADV_DONTFORK);
        register_private_fd(slots_fd_.get());
        cfg_.slots_fd = slots_fd_.get();
        cfg_.slots = opt_.processes;
        cfg_.only_needed_fds = opt_.close_fds;
        if (opt_.close_fds)
            cfg_.keep_fds = handle_descriptors();
        slot_used_.assign(opt_.processes, false);
        cfg_.parent = ::getpid();
        cfg_.initializer = opt_.initializer;
        cfg_.maxtasks = opt_.maxtasksperchild;
        cfg_.segments = mapped_segments();
        if (opt_.task_timeout.count() > 0)
            timer_ = std::make_unique<asio::steady_timer>(ex_);
    }

    ~core_impl() override {
        ::munmap(slots_, slots_bytes());
        if (slots_fd_)
            unregister_private_fd(slots_fd_.get());
    }

    void start() {
        try {
            start_zygote();
            for (std::size_t i = 0; i < opt_.processes; ++i) {
                {
                    std::lock_guard lk(mu_);
                    slot_used_[i] = true;
                    ++spawning_;
                }
                spawn(i);
            }
        } catch (...) {
            shutdown();
            throw;
        }
    }

    // Workers are forked by a single-threaded fork server made now, never by this (possibly
    // multi-threaded) process; if it cannot be made, workers are forked here instead.
    void start_zygote() {
        try {
            zygote_ = std::make_shared<zygote>(cfg_);
            const int ev = ::fcntl(zygote_->events_fd(), F_DUPFD_CLOEXEC, 0);
            if (ev < 0)
                throw os_error("dup of the fork server's event socket failed");
            register_private_fd(ev);
            zygote_events_ = std::make_unique<asio::posix::stream_descriptor>(ex_, ev);
        } catch (const std::exception&) {
            drop_zygote_events();
            zygote_.reset();
            return;
        }
        std::lock_guard lk(mu_);
        start_events();
    }

    // ---------------------------------------------------------------- submission

    void submit(job_ptr j) override {
        std::lock_guard lk(mu_);
        check_open_locked();
        pending_.push_back(std::move(j));
        pump();
    }

    void submit(std::vector<job_ptr> jobs) override {
        std::lock_guard lk(mu_);
        check_open_locked();
        for (auto& j : jobs)
            pending_.push_back(std::move(j));
        pump();
    }

    void submit_more(std::vector<job_ptr> jobs) override {
        std::lock_guard lk(mu_);
        if (broken_)
            std::rethrow_exception(broken_);
        if (state_ == run_state::terminated)
            throw pool_closed("the pool was terminated before the task finished");
        for (auto& j : jobs)
            pending_.push_back(std::move(j));
        pump();
    }

    void hold() noexcept override {
        std::lock_guard lk(mu_);
        ++holds_;
    }

    void post(std::function<void()> fn) override { asio::post(ex_, std::move(fn)); }

    void release() noexcept override {
        std::lock_guard lk(mu_);
        --holds_;
        pump();
    }

    void check_open() const override {
        std::lock_guard lk(mu_);
        check_open_locked();
    }

    // ---------------------------------------------------------------- lifetime

    void close() override {
        std::lock_guard lk(mu_);
        if (state_ == run_state::running)
            state_ = run_state::closing;
        pump();
    }

    void terminate() override {
        std::vector<failure> failed;
        {
            std::lock_guard lk(mu_);
            if (state_ == run_state::terminated)
                return;
            state_ = run_state::terminated;
            auto closed = [] {
                return std::make_exception_ptr(
                    pool_closed("the pool was terminated before the task finished"));
            };
            for (auto& j : pending_)
                defer(failed, {std::move(j), closed()});
            pending_.clear();
            for (auto& w : workers_) {
                for (auto& j : w->inflight)
                    defer(failed, {std::move(j), closed(), w->writing ? w : nullptr});
                w->inflight.clear();
                w->to_send.clear();
                kill_worker(*w);
            }
            if (timer_)
                timer_->cancel();
        }
        run(failed);
    }

    void join() override {
        check_blocking("pool::join()");
        std::unique_lock lk(mu_);
        if (state_ == run_state::running)
            throw error("pool::join() called on a running pool: call close() or terminate() "
                        "first");
        join_cv_.wait(lk, [&] { return joinable_locked(); });
        if (auto z = zygote_) { // its workers are gone: so is the fork server when join returns
            lk.unlock();
            z->stop();
        }
    }

    asio::awaitable<void> async_join() override {
        {
            std::lock_guard lk(mu_);
            if (state_ == run_state::running)
                throw error("pool::async_join() called on a running pool: call close() or "
                            "terminate() first");
        }
        co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
            [this](auto handler) {
                std::unique_lock lk(mu_);
                join_waiters_.emplace_back();
                join_waiters_.back().set(std::move(handler));
                if (joinable_locked())
                    post_join_waiters();
            },
            asio::use_awaitable);
    }

    void shutdown() noexcept override {
        terminate();
        std::unique_lock lk(mu_);
        join_cv_.wait(lk, [&] { return spawning_ == 0; });
        for (auto& w : workers_) {
            if (!w->exited && !w->from_zygote) {
                int st = 0;
                while (::waitpid(w->pid, &st, 0) < 0 && errno == EINTR) {
                }
            }
            w->exited = true;
            release_io(*w);
            w->finalized = true;
        }
        workers_.clear();
        timer_.reset();
        drop_zygote_events();
        unregister_private_fd(slots_fd_.get()); // no worker is forked any more
        slots_fd_.reset();
        auto z = zygote_;
        post_join_waiters();
        join_cv_.notify_all();
        lk.unlock();
        if (z)
            z->stop(); // kills and reaps what is left of its workers, then is reaped
    }

    std::size_t size() const noexcept override { return opt_.processes; }

    std::vector<pid_t> pids() const override {
        std::lock_guard lk(mu_);
        std::vector<pid_t> out;
        for (const auto& w : workers_)
            if (!w->exited)
                out.push_back(w->pid);
        return out;
    }

    bool on_loop_thread() const noexcept override {
        if (own_loop_ != std::thread::id{})
            return std::this_thread::get_id() == own_loop_;
        if (const auto* io = ex_.target<asio::io_context::executor_type>())
            return io->running_in_this_thread();
        return false;
    }

  private:
    enum class run_state { running, closing, terminated };

    std::size_t slots_bytes() const noexcept { return sizeof(worker_slot) * opt_.processes; }

    void check_open_locked() const {
        if (broken_)
            std::rethrow_exception(broken_);
        if (state_ != run_state::running)
            throw pool_closed("the pool is closed: no new tasks after close() or terminate()");
    }

    bool finished_locked() const { return workers_.empty() && spawning_ == 0; }

    // Finished, and every failed task's outcome is set: join() may return.
    bool joinable_locked() const { return finished_locked() && undelivered_ == 0; }

    // Fails `f` once mu_ is released (see run()); join() waits until it is delivered.
    void defer(std::vector<failure>& failed, failure f) {
        ++undelivered_;
        failed.push_back(std::move(f));
    }

    void post_join_waiters() {
        for (auto& s : join_waiters_)
            s.post();
        join_waiters_.clear();
    }

    // ---------------------------------------------------------------- workers

    // Forks a worker into `slot`. Called with mu_ released; spawning_ was counted by the caller.
    void spawn(std::size_t slot) {
        struct uncount {
            core_impl* c;
            ~uncount() {
                std::lock_guard lk(c->mu_);
                --c->spawning_;
                c->join_cv_.notify_all();
            }
        } guard{this};
        std::shared_ptr<zygote> z;
        {
            std::lock_guard lk(mu_);
            if (state_ == run_state::terminated) {
                slot_used_[slot] = false;
                return;
            }
            slots_[slot].task_id.store(0);
            slots_[slot].done_id.store(0);
            if (!zygote_lost_)
                z = zygote_;
        }
        zygote::spawned s{-1, -1, -1};
        if (z) {
            try {
                s = z->spawn(slot);
            } catch (const std::system_error&) {
                std::lock_guard lk(mu_);
                zygote_lost_ = true; // fork here from now on
            }
        }
        const bool from_zygote = s.pid > 0;
        if (!from_zygote)
            s = fork_worker(slot);
        register_private_fd(s.fd);
        register_private_fd(s.pidfd);
        auto w = std::make_shared<worker_proc>();
        w->pid = s.pid;
        w->slot = slot;
        w->from_zygote = from_zygote;
        w->sock = std::make_unique<socket_t>(ex_, asio::local::stream_protocol(), s.fd);
        w->pidfd = std::make_unique<asio::posix::stream_descriptor>(ex_, s.pidfd);
        std::vector<failure> failed;
        std::optional<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            workers_.push_back(w);
            if (state_ == run_state::terminated)
                kill_worker(*w);
            start_read(w);
            start_wait(w);
            if (auto it = early_exits_.find(s.pid); from_zygote && it != early_exits_.end()) {
                const int st = it->second;
                early_exits_.erase(it);
                note_exit(w, st, failed, replace);
            }
            pump();
        }
        run(failed);
        if (replace)
            respawn(*replace);
    }

    // The fallback: fork a worker from this process. Returns its pid, our socket end and its
    // pidfd.
    zygote::spawned fork_worker(std::size_t slot) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            throw os_error("socketpair for a pool worker failed");
        register_private_fd(sv[0]); // no process child forked meanwhile may keep either end
        register_private_fd(sv[1]);
        tune_worker_socket(sv[0]);
        tune_worker_socket(sv[1]);
        const pid_t pid = ::fork();
        if (pid == 0)
            fallback_worker_main(sv[1], slot);
        const int err = errno;
        unregister_private_fd(sv[0]);
        unregister_private_fd(sv[1]);
        ::close(sv[1]);
        if (pid < 0) {
            ::close(sv[0]);
            errno = err;
            throw os_error("fork of a pool worker failed");
        }
        const int pfd = open_pidfd(pid);
        if (pfd < 0) {
            const auto e = os_error("pidfd_open of a pool worker failed (Linux >= 5.3 needed)");
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            ::close(sv[0]);
            throw e;
        }
        return {pid, sv[0], pfd};
    }

    // A worker forked by this (possibly threaded) process: it keeps only its own descriptors
    // and maps the slots itself (the parent's mapping is not inherited).
    [[noreturn]] void fallback_worker_main(int fd, std::size_t slot) noexcept {
        const int mine[] = {fd, cfg_.slots_fd};
        close_inherited_fds(mine, cfg_.only_needed_fds ? &cfg_.keep_fds : nullptr);
        worker_slot* slots = nullptr;
        try {
            slots = map_slots(cfg_.slots_fd, cfg_.slots);
        } catch (...) {
            _exit(71);
        }
        worker_config cfg = cfg_;
        cfg.close_fds = {cfg_.slots_fd};
        worker_main(fd, &slots[slot], cfg);
    }

    // A replacement for a worker that left `slot`; never throws into the event loop.
    void respawn(std::size_t slot) {
        try {
            spawn(slot);
        } catch (...) {
            std::vector<failure> failed;
            {
                std::lock_guard lk(mu_);
                slot_used_[slot] = false;
                if (workers_.empty() && spawning_ == 0) {
                    // Nobody is left to run the queue: fail it rather than hang.
                    auto e = std::current_exception();
                    for (auto& j : pending_)
                        defer(failed, {std::move(j), e});
                    pending_.clear();
                }
            }
            run(failed);
        }
    }

    void start_read(const worker_ptr& w) {
        if (!w->sock || w->eof)
            return;
        const auto area = w->dec.write_area();
        w->sock->async_read_some(asio::buffer(area.data(), area.size()),
                                 [self = shared_from_this(), w](std::error_code ec, std::size_t n) {
                                     self->on_read(w, ec, n);
                                 });
    }

    void start_wait(const worker_ptr& w) {
        w->pidfd->async_wait(asio::posix::descriptor_base::wait_read,
                             [self = shared_from_this(), w](std::error_code ec) {
                                 if (!ec)
                                     self->on_exit(w);
                             });
    }

    void on_read(const worker_ptr& w, std::error_code ec, std::size_t n) {
        std::vector<reply> replies;
        std::vector<failure> failed;
        std::optional<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            if (!w->sock || w->finalized)
                return;
            if (ec) {
                w->eof = true;
                if (w->exited)
                    finalize(w, failed, replace);
            } else {
                w->dec.commit(n);
                try {
                    while (auto f = w->dec.next())
                        take_frame(w, *f, replies, failed);
                } catch (const std::exception& e) {
                    // A worker that speaks garbage is killed; its tasks fail or move on.
                    w->protocol_error = e.what();
                    w->eof = true;
                    kill_worker(*w);
                }
                pump();
            }
        }
        deliver(replies);
        run(failed);
        if (replace)
            respawn(*replace);
        std::lock_guard lk(mu_);
        start_read(w);
    }

    void take_frame(const worker_ptr& w, const frame& f, std::vector<reply>& replies,
                    std::vector<failure>& failed) {
        switch (f.kind) {
        case frame_kind::result:
        case frame_kind::error: {
            if (w->inflight.empty() || w->inflight.front()->id != f.id)
                throw error("protocol error: a worker answered task " + std::to_string(f.id) +
                            ", which it was not running");
            job_ptr j = std::move(w->inflight.front());
            w->inflight.pop_front();
            w->answered = true;
            if (f.kind == frame_kind::result) // a worker's figure, so bounded: 1 hour at most
                avg_ns_ += (static_cast<std::int64_t>(std::min<std::uint64_t>(f.aux, max_task_ns)) -
                            avg_ns_) /
                           8;
            replies.push_back({std::move(j), f});
            return;
        }
        case frame_kind::init_failed: {
            if (w->answered) // an initializer runs before the first task, not after
                throw error("protocol error: a worker reported a failed initializer after it "
                            "had answered tasks");
            const auto e = decode_exception(f.payload, "the pool initializer");
            broken_ = std::make_exception_ptr(error("the pool initializer failed in worker " +
                                                    std::to_string(w->pid) + ": " + what_of(e)));
            for (auto& j : pending_)
                defer(failed, {std::move(j), broken_});
            pending_.clear();
            for (auto& other : workers_) {
                for (auto& j : other->inflight)
                    defer(failed, {std::move(j), broken_, other->writing ? other : nullptr});
                other->inflight.clear();
                other->to_send.clear();
                kill_worker(*other);
            }
            return;
        }
        case frame_kind::task:
            throw error("protocol error: a worker sent a task frame");
        }
    }

    // The worker's pidfd is readable: it has exited.
    void on_exit(const worker_ptr& w) {
        std::vector<failure> failed;
        std::optional<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            if (!w->pidfd || w->finalized || w->exited)
                return;
            if (w->from_zygote) {
                // The fork server reaps it and reports its status. Should that report never
                // come (the fork server stopped, say), the worker is gone all the same.
                w->grace = std::make_unique<asio::steady_timer>(ex_, report_wait);
                w->grace->async_wait([self = shared_from_this(), w](std::error_code ec) {
                    if (!ec)
                        self->on_unreported_exit(w);
                });
                return;
            }
            int st = 0;
            const pid_t r = ::waitpid(w->pid, &st, WNOHANG);
            if (r == 0) { // readable before the zombie is visible: wait again
                start_wait(w);
                return;
            }
            // r < 0: reaped by the kernel (this process ignores SIGCHLD); the status is lost.
            note_exit(w, r > 0 ? std::optional<int>(st) : std::nullopt, failed, replace);
        }
        run(failed);
        if (replace)
            respawn(*replace);
    }

    void on_unreported_exit(const worker_ptr& w) {
        std::vector<failure> failed;
        std::optional<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            if (w->finalized || w->exited)
                return;
            note_exit(w, std::nullopt, failed, replace);
        }
        run(failed);
        if (replace)
            respawn(*replace);
    }

    // The zygote reports the exits of the workers it forked (it is their parent).
    void start_events() {
        if (!zygote_events_)
            return;
        zygote_events_->async_read_some(
            asio::buffer(&event_, sizeof event_),
            [self = shared_from_this()](std::error_code ec, std::size_t n) {
                self->on_event(ec, n);
            });
    }

    void on_event(std::error_code ec, std::size_t n) {
        std::vector<failure> failed;
        std::vector<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            if (!zygote_events_)
                return;
            if (ec || n != sizeof event_) {
                // The fork server is gone (killed?), and its workers with it (PDEATHSIG).
                zygote_lost_ = true;
                drop_zygote_events();
                for (auto w : std::vector<worker_ptr>(workers_))
                    if (w->from_zygote && !w->exited) {
                        std::optional<std::size_t> r;
                        note_exit(w, SIGKILL, failed, r); // as if killed: it was
                        if (r)
                            replace.push_back(*r);
                    }
            } else {
                const auto it = std::find_if(workers_.begin(), workers_.end(), [&](const auto& w) {
                    return w->pid == event_.pid && w->from_zygote;
                });
                std::optional<std::size_t> r;
                if (it == workers_.end())
                    early_exits_[event_.pid] = event_.status; // spawn() has not seen it yet
                else if (worker_ptr w = *it; !w->exited)      // a copy: finalize() erases *it
                    note_exit(w, event_.status, failed, r);
                if (r)
                    replace.push_back(*r);
                start_events();
            }
        }
        run(failed);
        for (auto slot : replace)
            respawn(slot);
    }

    // Worker `w` has exited with wait status `st` (none: unknown): finalize once its replies
    // are read.
    void note_exit(const worker_ptr& w, std::optional<int> st, std::vector<failure>& failed,
                   std::optional<std::size_t>& replace) {
        w->exited = true;
        w->status = st;
        if (w->eof) {
            finalize(w, failed, replace);
        } else {
            // Its replies are still being read; EOF follows unless a grandchild holds the
            // socket open, in which case the grace timer ends the wait.
            w->grace = std::make_unique<asio::steady_timer>(ex_, exit_grace);
            w->grace->async_wait([self = shared_from_this(), w](std::error_code ec) {
                if (!ec)
                    self->on_grace(w);
            });
        }
    }

    void on_grace(const worker_ptr& w) {
        std::vector<failure> failed;
        std::optional<std::size_t> replace;
        {
            std::lock_guard lk(mu_);
            if (w->finalized)
                return;
            w->eof = true;
            finalize(w, failed, replace);
        }
        run(failed);
        if (replace)
            respawn(*replace);
    }

    std::exception_ptr lost(const worker_proc& w, const job& j) const {
        if (w.timed_out)
            return std::make_exception_ptr(
                timeout_error(describe(j) + " ran longer than the task timeout of " +
                              std::to_string(opt_.task_timeout.count()) + " ms; its worker " +
                              std::to_string(w.pid) + " was killed"));
        const auto [sig, code] = w.exit_info();
        std::string how =
            sig    ? "was killed by signal " + std::to_string(sig) + " (" + ::strsignal(sig) + ")"
            : w.status ? "exited with status " + std::to_string(code)
                       : std::string("exited (its exit status was not reported)");
        if (!w.protocol_error.empty())
            how = "sent a malformed reply (" + w.protocol_error + ")";
        return std::make_exception_ptr(worker_lost("worker process " + std::to_string(w.pid) + " " +
                                                       how + " while running " + describe(j),
                                                   w.pid, sig, code));
    }

    // Task `j` ran to the end on worker `w`, but its reply died with the worker.
    std::exception_ptr result_lost(const worker_proc& w, const job& j) const {
        const auto [sig, code] = w.exit_info();
        return std::make_exception_ptr(
            worker_lost("worker process " + std::to_string(w.pid) + " died after running " +
                            describe(j) + " but before sending its result (it is not run again)",
                        w.pid, sig, code));
    }

    // The worker is gone and its replies are read: fail the task it was running, give the
    // others to the remaining workers, and start a replacement if there is work to do.
    void finalize(const worker_ptr& w, std::vector<failure>& failed,
                  std::optional<std::size_t>& replace) {
        w->finalized = true;
        release_io(*w);
        std::erase(workers_, w);
        slot_used_[w->slot] = false;
        const std::uint64_t culprit = slots_[w->slot].task_id.load(std::memory_order_acquire);
        // A worker runs its jobs in the order of `inflight`: those up to the last it finished
        // ran to the end and their replies (batched, not yet written) died with it. They fail
        // rather than run a second time: a task runs at most once.
        const std::uint64_t finished = slots_[w->slot].done_id.load(std::memory_order_acquire);
        bool ran =
            finished != 0 && std::any_of(w->inflight.begin(), w->inflight.end(),
                                         [&](const job_ptr& j) { return j->id == finished; });
        std::deque<job_ptr> again;
        std::vector<failure> collateral; // failed after the culprit: a map reports the cause
        for (auto& j : w->inflight) {
            const bool was_run = ran;
            if (j->id == finished)
                ran = false;
            if (!w->protocol_error.empty() || (!was_run && j->id == culprit)) {
                auto e = lost(*w, *j); // before j is moved from
                defer(failed, {std::move(j), std::move(e)});
            } else if (was_run) {
                auto e = result_lost(*w, *j);
                collateral.push_back({std::move(j), std::move(e)});
            } else {
                again.push_back(std::move(j));
            }
        }
        for (auto& f : collateral)
            defer(failed, std::move(f));
        w->inflight.clear();
        w->to_send.clear();
        for (auto it = again.rbegin(); it != again.rend(); ++it)
            pending_.push_front(std::move(*it));
        if (!broken_ && (state_ == run_state::running ||
                         (state_ == run_state::closing && (!pending_.empty() || holds_ != 0)))) {
            slot_used_[w->slot] = true;
            ++spawning_;
            replace = w->slot;
        }
        pump();
        if (finished_locked()) {
            if (state_ != run_state::running)
                retire_zygote(); // before the join waiters, so it is done when they resume
            // With failures still to deliver, run() wakes the joiners once they are.
            if (undelivered_ == 0) {
                post_join_waiters();
                join_cv_.notify_all();
            }
        }
    }

    // A closed pool whose workers are all gone forks no more: stop the fork server, so that
    // nothing of the pool keeps a caller's io_context running.
    void retire_zygote() {
        drop_zygote_events();
        if (zygote_)
            asio::post(ex_, [z = zygote_] { z->stop(); }); // a blocking waitpid: not under mu_
    }

    void drop_zygote_events() noexcept {
        if (zygote_events_)
            unregister_private_fd(zygote_events_->native_handle());
        zygote_events_.reset();
    }

    // Signals through the pidfd where there is one, so a recycled pid is never hit.
    static void kill_worker(worker_proc& w) noexcept {
        if (w.pidfd)
            signal_pidfd(w.pidfd->native_handle(), SIGKILL);
        else if (w.pid > 0 && !w.exited)
            ::kill(w.pid, SIGKILL);
    }

    void release_io(worker_proc& w) {
        std::error_code ignored;
        if (w.sock) {
            unregister_private_fd(w.sock->native_handle());
            w.sock->close(ignored);
        }
        if (w.pidfd) {
            unregister_private_fd(w.pidfd->native_handle());
            w.pidfd->close(ignored);
        }
        if (w.grace)
            w.grace->cancel();
        w.sock.reset();
        w.pidfd.reset();
        w.grace.reset();
    }

    // ---------------------------------------------------------------- dispatch

    // How many jobs a worker may hold: enough to cover ~2 ms of work so it never idles
    // between batches, few while job durations are unknown so slow jobs spread evenly.
    std::size_t cap() const noexcept {
        if (avg_ns_ <= 0)
            return 4;
        return std::clamp<std::size_t>(static_cast<std::size_t>(2'000'000 / avg_ns_), 2, 1024);
    }

    void pump() {
        if (state_ == run_state::terminated || broken_)
            return;
        const std::size_t limit = cap();
        while (!pending_.empty()) {
            job_ptr& j = pending_.front();
            if (j->sink->cancelled()) {
                pending_.pop_front();
                continue;
            }
            worker_proc* best = nullptr;
            for (const auto& w : workers_)
                if (w->accepts() && w->inflight.size() < limit &&
                    (!best || w->inflight.size() < best->inflight.size()))
                    best = w.get();
            if (!best)
                break;
            if (j->id == 0) {
                j->id = next_id_++;
                std::memcpy(j->frame.data() + offsetof(frame_header, id), &j->id, sizeof j->id);
                seal_task_frame(j->frame, cfg_.key);
            }
            best->to_send.push_back(j.get());
            best->inflight.push_back(std::move(j));
            pending_.pop_front();
            if (opt_.maxtasksperchild && ++best->assigned >= opt_.maxtasksperchild)
                best->retiring = true;
        }
        for (const auto& w : workers_) {
            start_write(w);
            maybe_shut(*w);
        }
        arm_timer();
    }

    // After close(), a worker with nothing left to do is told to exit (EOF on its socket).
    void maybe_shut(worker_proc& w) {
        if (state_ != run_state::closing || !pending_.empty() || holds_ != 0 || w.shut || !w.sock ||
            !w.inflight.empty() || w.writing)
            return;
        w.shut = true;
        std::error_code ignored;
        w.sock->shutdown(socket_t::shutdown_send, ignored);
    }

    void start_write(const worker_ptr& w) {
        if (w->writing || w->to_send.empty() || !w->sock)
            return;
        w->bufs.clear();
        w->staging.clear();
        std::size_t small = 0;
        for (const job* j : w->to_send)
            if (j->frame.size() <= small_frame)
                small += j->frame.size();
        w->staging.reserve(small); // no reallocation below: the buffers point into it
        bool last_staged = false;
        for (const job* j : w->to_send) {
            if (j->frame.size() <= small_frame) {
                const std::size_t at = w->staging.size();
                w->staging.insert(w->staging.end(), j->frame.begin(), j->frame.end());
                if (last_staged) {
                    auto& b = w->bufs.back();
                    b = asio::const_buffer(b.data(), b.size() + j->frame.size());
                } else {
                    w->bufs.emplace_back(w->staging.data() + at, j->frame.size());
                }
                last_staged = true;
            } else {
                w->bufs.emplace_back(j->frame.data(), j->frame.size());
                last_staged = false;
            }
        }
        w->to_send.clear();
        w->writing = true;
        // transfer_all() would cap each writev at 64 KiB; ask for everything that is left.
        const std::size_t total = asio::buffer_size(w->bufs);
        auto all_of_it = [total](const std::error_code& ec, std::size_t done) -> std::size_t {
            return ec || done >= total ? 0 : total - done;
        };
        asio::async_write(*w->sock, w->bufs, all_of_it,
                          [self = shared_from_this(), w](std::error_code ec, std::size_t) {
                              std::vector<job_ptr> written; // freed without the mutex
                              std::lock_guard lk(self->mu_);
                              w->writing = false;
                              written.swap(w->parked);
                              if (w->staging.capacity() > keep_capacity)
                                  std::vector<char>().swap(w->staging);
                              if (ec || !w->sock)
                                  return; // the worker is gone: on_exit takes over
                              self->start_write(w);
                              self->maybe_shut(*w);
                          });
    }

    // ---------------------------------------------------------------- timeouts

    void arm_timer() {
        if (!timer_ || timer_armed_ || state_ == run_state::terminated)
            return;
        if (std::none_of(workers_.begin(), workers_.end(),
                         [](const auto& w) { return !w->inflight.empty(); }))
            return;
        timer_armed_ = true;
        timer_->expires_after(std::max<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(1), opt_.task_timeout / 10));
        timer_->async_wait([self = shared_from_this()](std::error_code ec) {
            std::lock_guard lk(self->mu_);
            self->timer_armed_ = false;
            if (!ec && self->timer_)
                self->check_timeouts();
        });
    }

    void check_timeouts() {
        const std::int64_t now = monotonic_ns();
        const std::int64_t limit =
            std::chrono::duration_cast<std::chrono::nanoseconds>(opt_.task_timeout).count();
        for (const auto& w : workers_) {
            if (w->timed_out || w->exited)
                continue;
            const auto& s = slots_[w->slot];
            const std::uint64_t id = s.task_id.load(std::memory_order_acquire);
            bool stuck = false;
            if (id != 0) {
                w->idle_since = 0;
                stuck = now - s.start_ns.load(std::memory_order_relaxed) > limit;
            } else if (!w->inflight.empty()) {
                // Work is queued but the worker runs nothing (e.g. it was stopped).
                if (w->idle_since == 0)
                    w->idle_since = now;
                stuck = now - w->idle_since > limit;
            } else {
                w->idle_since = 0;
            }
            if (stuck) {
                w->timed_out = true;
                kill_worker(*w);
            }
        }
        arm_timer();
    }

    // ---------------------------------------------------------------- completion

    static void deliver(std::vector<reply>& replies) {
        for (auto& r : replies) {
            job& j = *r.j;
            if (r.f.kind == frame_kind::result)
                j.sink->on_result(j, r.f.payload);
            else
                j.sink->on_error(j, decode_exception(r.f.payload, describe(j)));
        }
        replies.clear();
    }

    void run(std::vector<failure>& failed) {
        if (failed.empty())
            return;
        for (auto& f : failed)
            f.j->sink->on_error(*f.j, f.e);
        {
            std::lock_guard lk(mu_);
            // A job failed while its worker's write was under way (terminate, a failed
            // initializer) keeps its frame alive until that write completes.
            for (auto& f : failed)
                if (f.writer && f.writer->writing)
                    f.writer->parked.push_back(std::move(f.j));
            undelivered_ -= failed.size();
            if (joinable_locked()) { // delivered the last failure of a finished pool
                post_join_waiters();
                join_cv_.notify_all();
            }
        }
        failed.clear();
    }

    asio::any_io_executor ex_;
    pool_options opt_;
    std::thread::id own_loop_;
    worker_config cfg_;

    mutable std::mutex mu_;
    std::condition_variable join_cv_;
    run_state state_ = run_state::running;
    std::exception_ptr broken_;
    std::deque<job_ptr> pending_;
    std::vector<worker_ptr> workers_;
    std::size_t spawning_ = 0;
    std::size_t holds_ = 0; // calls with jobs still to submit
    // Failures collected under mu_ that run() has not delivered yet: join() waits for them.
    std::size_t undelivered_ = 0;
    std::uint64_t next_id_ = 1;
    unique_fd slots_fd_;
    worker_slot* slots_ = nullptr;
    std::vector<bool> slot_used_;
    std::int64_t avg_ns_ = 0;
    std::unique_ptr<asio::steady_timer> timer_;
    bool timer_armed_ = false;
    std::list<handler_slot> join_waiters_;
    std::shared_ptr<zygote> zygote_; // reset once a closed pool's workers are all gone
    std::unique_ptr<asio::posix::stream_descriptor> zygote_events_;
    zygote::exit_event event_{};
    std::map<pid_t, int> early_exits_; // exits reported before spawn() registered the worker
    bool zygote_lost_ = false;
};

} // namespace

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
