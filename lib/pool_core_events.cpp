// The parent side of a pool on its event loop: spawning, dispatch and writes, replies, worker
// exits and what becomes of a dead worker's jobs, timeouts (see pool_core_impl.hpp).
#include <coproc/error.hpp>
#include "child_setup.hpp"
#include "loss_rules.hpp"
#include "pool_core_impl.hpp"
#include "transport.hpp"

#include <asio/post.hpp>

#include <algorithm>
#include <csignal>
#include <sys/wait.h>

namespace coproc::detail {

namespace {
constexpr auto exit_grace = std::chrono::milliseconds(200);
// How long a worker forked by the fork server may be gone before the fork server's report of
// its exit status is given up on.
constexpr auto report_wait = std::chrono::milliseconds(1000);
// A cancelled task's worker is killed only once it has written the replies it held back (its
// helper writes them within ~0.5 ms): it checks again this often, this many times at most.
constexpr auto held_replies_wait = std::chrono::milliseconds(1);
constexpr int held_replies_checks = 50;
} // namespace

// ---------------------------------------------------------------- workers

// Forks a worker into `slot`. Called with mu_ released; spawning_ was counted by the caller.
void core_impl::spawn(std::size_t slot) {
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
        if (state_ == run_state::terminated)
            return;
        spawner_.slot(slot).reset();
        z = spawner_.fork_server();
    }
    std::optional<worker_spawner::spawned> s;
    if (z) {
        s = worker_spawner::ask(*z, slot);
        if (!s) {
            std::lock_guard lk(mu_);
            spawner_.lose_fork_server(); // fork here from now on
        }
    }
    if (!s)
        s = spawner_.fork_here(slot);
    auto w = std::make_shared<worker_link>(s->pid, slot, s->from_zygote);
    w->attach(ex_, s->fd, s->pidfd);
    effects fx(*this);
    std::lock_guard lk(mu_);
    links_.push_back(w);
    if (state_ == run_state::terminated)
        w->kill();
    start_read(w);
    start_wait(w);
    if (auto it = early_exits_.find(s->pid); s->from_zygote && it != early_exits_.end()) {
        const int st = it->second;
        early_exits_.erase(it);
        note_exit(w, st, fx);
    }
    pump();
}

// A replacement for a worker that left `slot`; never throws into the event loop.
void core_impl::respawn(std::size_t slot) {
    try {
        spawn(slot);
    } catch (...) {
        effects fx(*this);
        std::lock_guard lk(mu_);
        if (finished_locked()) { // nobody is left to run the queue: fail it rather than hang
            auto e = std::current_exception();
            for (auto& j : dispatcher_.take_all())
                fx.fail(std::move(j), e);
        }
    }
}

// ---------------------------------------------------------------- dispatch and writes

void core_impl::pump() {
    if (state_ == run_state::terminated || broken_)
        return;
    dispatcher_.dispatch(links_);
    for (const auto& w : links_) {
        start_write(w);
        maybe_shut(*w);
    }
    arm_timer();
}

// After close(), a worker with nothing left to do is told to exit (EOF on its socket).
void core_impl::maybe_shut(worker_link& w) {
    if (state_ != run_state::closing || !dispatcher_.empty() || holds_ != 0 ||
        !w.inflight.empty() || w.writing)
        return;
    w.shut();
}

// The write stays under way until its completion runs on the loop, so that jobs submitted
// meanwhile are batched into the next one.
void core_impl::start_write(const link_ptr& w) {
    if (w->begin_write())
        continue_write(w, {});
}

// Sends what it can of the write under way; waits for room, or completes it.
void core_impl::continue_write(const link_ptr& w, std::error_code ec) {
    if (!ec && w->has_socket())
        ec = w->send_some();
    if (ec == asio::error::would_block)
        return w->async_wait_writable([self = shared_from_this(), w](std::error_code ec) {
            std::lock_guard lk(self->mu_);
            self->continue_write(w, ec);
        });
    asio::post(ex_, [self = shared_from_this(), w, ec] {
        std::lock_guard lk(self->mu_);
        self->end_write(w);
        if (ec || !w->has_socket())
            return; // the worker is gone: on_exit takes over
        self->start_write(w);
        self->maybe_shut(*w);
    });
}

// The write is over; jobs parked for it are freed on the loop, without the mutex.
void core_impl::end_write(const link_ptr& w) {
    if (auto parked = w->end_write(); !parked.empty())
        asio::post(ex_, [parked = std::make_shared<std::vector<job_ptr>>(std::move(parked))] {});
}

// ---------------------------------------------------------------- replies

void core_impl::start_read(const link_ptr& w) {
    if (!w->has_socket() || w->eof)
        return;
    w->async_wait_readable([self = shared_from_this(), w](std::error_code ec) {
        self->on_read(w, ec);
    });
}

// Reads what has arrived (without the mutex: submitters are not kept waiting on the syscall)
// and takes its frames; while a read fills the buffer, reads again at once (a few times)
// before waiting for the socket. A read that did not fill it found the socket empty: the wait
// follows at once, without a read that would only say so. (The wait re-arms the socket's
// edge-triggered readiness, so bytes that arrived meanwhile, or that a read stopped short of
// at a message with descriptors, wake it at once.)
void core_impl::on_read(const link_ptr& w, std::error_code ec) {
    for (int round = 0;; ++round) {
        std::size_t n = 0;
        bool full = false;
        std::string bad; // the worker broke the protocol
        if (!ec) {
            try {
                ec = w->receive(n, full);
            } catch (const std::exception& e) {
                bad = e.what();
            }
            if (ec == asio::error::would_block && round > 0)
                break; // nothing more yet: wait for the socket
        }
        {
            effects fx(*this); // delivered before the next read reuses the decoder's buffer
            std::lock_guard lk(mu_);
            if (!w->has_socket())
                return;
            if (ec && ec != asio::error::would_block) {
                w->eof = true;
                if (w->has_exited())
                    finalize(w, fx);
                return;
            }
            try {
                if (!bad.empty())
                    throw error(bad);
                w->dec.commit(n);
                while (auto f = w->dec.next())
                    take_frame(w, *f, fx);
            } catch (const std::exception& e) {
                // A worker that speaks garbage is killed; its tasks fail or move on.
                w->eof = true;
                w->kill(kill_reason::protocol_error, e.what());
            }
            pump();
            if (!full || w->eof || round == 3)
                break;
        }
        ec = {};
    }
    std::lock_guard lk(mu_);
    start_read(w);
}

void core_impl::take_frame(const link_ptr& w, const frame& f, effects& fx) {
    switch (f.kind) {
    case frame_kind::result:
    case frame_kind::error: {
        if (w->inflight.empty() || w->inflight.front()->id != f.id)
            throw error("protocol error: a worker answered task " + std::to_string(f.id) +
                        ", which it was not running");
        mapped_payload mapped; // a result out of line: mapped until it is delivered
        frame reply = f;
        if (f.out_of_line()) {
            if (f.kind != frame_kind::result || !f.split().first.empty())
                throw error("malformed reply: out of line, but not a result");
            mapped = mapped_payload(take_payload_fd(w->fds, "reply"), f.split().second);
            reply.payload = mapped.bytes();
        }
        job_ptr j = std::move(w->inflight.front());
        w->inflight.pop_front();
        w->answered = true;
        if (!w->writing) // answered: its arguments are never sent again
            j->payload.reset();
        if (f.kind == frame_kind::result) {
            // A worker's figure, bounded before anything averages it: a map divides it by its
            // items in signed arithmetic.
            j->ran_ns = std::min(f.aux, dispatcher::max_task_ns);
            dispatcher_.note_duration(j->ran_ns);
        }
        fx.reply(std::move(j), reply, std::move(mapped));
        return;
    }
    case frame_kind::init_failed: {
        if (f.out_of_line())
            throw error("malformed frame: an initializer failure out of line");
        if (w->answered) // an initializer runs before the first task, not after
            throw error("protocol error: a worker reported a failed initializer after it had "
                        "answered tasks");
        const auto e = decode_exception(f.payload, "the pool initializer");
        broken_ = std::make_exception_ptr(error("the pool initializer failed in worker " +
                                                std::to_string(w->pid()) + ": " + what_of(e)));
        fail_all_locked(fx, [this] { return broken_; });
        return;
    }
    case frame_kind::task:
        throw error("protocol error: a worker sent a task frame");
    }
}

// ---------------------------------------------------------------- exits

void core_impl::start_wait(const link_ptr& w) {
    w->async_wait_exit([self = shared_from_this(), w](std::error_code ec) {
        if (!ec)
            self->on_exit(w);
    });
}

// The worker's pidfd is readable: it has exited.
void core_impl::on_exit(const link_ptr& w) {
    effects fx(*this);
    std::lock_guard lk(mu_);
    if (w->has_exited())
        return;
    if (w->from_zygote()) {
        // The fork server reaps it and reports its status. Should that report never come (the
        // fork server stopped, say), the worker is gone all the same.
        w->start_grace(ex_, report_wait, [self = shared_from_this(), w](std::error_code ec) {
            if (!ec)
                self->on_unreported_exit(w);
        });
        return;
    }
    int st = 0;
    const pid_t r = ::waitpid(w->pid(), &st, WNOHANG);
    if (r == 0) { // readable before the zombie is visible: wait again
        start_wait(w);
        return;
    }
    // r < 0: reaped by the kernel (this process ignores SIGCHLD); the status is lost.
    note_exit(w, r > 0 ? std::optional<int>(st) : std::nullopt, fx);
}

void core_impl::on_unreported_exit(const link_ptr& w) {
    effects fx(*this);
    std::lock_guard lk(mu_);
    if (!w->has_exited())
        note_exit(w, std::nullopt, fx);
}

// The fork server reports the exits of the workers it forked (it is their parent).
void core_impl::start_events() {
    spawner_.async_read_event(
        [self = shared_from_this()](std::optional<zygote::exit_event> ev) { self->on_event(ev); });
}

void core_impl::on_event(std::optional<zygote::exit_event> ev) {
    effects fx(*this);
    std::lock_guard lk(mu_);
    if (!spawner_.listening())
        return;
    if (!ev) {
        // The fork server is gone (killed?), and its workers with it (PDEATHSIG).
        spawner_.lose_fork_server();
        spawner_.stop_listening();
        for (const auto& w : std::vector<link_ptr>(links_)) // a copy: finalize() erases
            if (w->from_zygote() && !w->has_exited())
                note_exit(w, SIGKILL, fx); // as if killed: it was
        return;
    }
    const auto it = std::find_if(links_.begin(), links_.end(), [&](const link_ptr& w) {
        return w->pid() == ev->pid && w->from_zygote();
    });
    if (it == links_.end())
        early_exits_[ev->pid] = ev->status;      // spawn() has not seen it yet
    else if (link_ptr w = *it; !w->has_exited()) // a copy: finalize() erases *it
        note_exit(w, ev->status, fx);
    start_events();
}

// Worker `w` has exited with wait status `status` (none: unknown): finalize once its replies
// are read.
void core_impl::note_exit(const link_ptr& w, std::optional<int> status, effects& fx) {
    w->mark_exited(status);
    if (w->eof)
        return finalize(w, fx);
    // Its replies are still being read; EOF follows unless a grandchild holds the socket open,
    // in which case the grace timer ends the wait.
    w->start_grace(ex_, exit_grace, [self = shared_from_this(), w](std::error_code ec) {
        if (!ec)
            self->on_grace(w);
    });
}

void core_impl::on_grace(const link_ptr& w) {
    effects fx(*this);
    std::lock_guard lk(mu_);
    if (w->state() == link_state::finalized)
        return;
    w->eof = true;
    finalize(w, fx);
}

// The worker is gone and its replies are read: fail the task it was running, give the others
// to the remaining workers, and start a replacement if there is work to do.
void core_impl::finalize(const link_ptr& w, effects& fx) {
    w->finalize();
    std::erase(links_, w);
    const worker_slot& s = spawner_.slot(w->slot());
    std::vector<std::uint64_t> ids;
    for (const auto& j : w->inflight)
        ids.push_back(j->id);
    const auto plan = plan_losses(ids, s.task_id.load(std::memory_order_acquire),
                                  s.done_id.load(std::memory_order_acquire),
                                  w->reason() == kill_reason::protocol_error);
    for (const auto& f : plan.failures) {
        job_ptr& j = w->inflight[f.job];
        auto e = f.ran ? w->result_lost_error(*j) : w->lost_error(*j, opt_.task_timeout);
        fx.fail(std::move(j), std::move(e));
    }
    std::vector<job_ptr> again;
    for (const std::size_t i : plan.requeue)
        again.push_back(std::move(w->inflight[i]));
    w->inflight.clear();
    w->to_send.clear();
    dispatcher_.requeue(std::move(again));
    if (!broken_ && (state_ == run_state::running ||
                     (state_ == run_state::closing && (!dispatcher_.empty() || holds_ != 0)))) {
        ++spawning_;
        fx.respawn(w->slot());
    }
    pump();
    if (finished_locked()) {
        if (state_ != run_state::running)
            retire_zygote(); // before the join waiters, so it is done when they resume
        // With failures still to deliver, effects wake the joiners once they are.
        if (undelivered_ == 0)
            wake_joiners_locked();
    }
}

// ---------------------------------------------------------------- cancellation

// The job of the running task `id` of worker `w` was cancelled: unless it returns within `d`,
// the worker is killed.
void core_impl::start_cancel_grace(const link_ptr& w, std::uint64_t id,
                                   std::chrono::steady_clock::duration d) {
    w->start_cancel_grace(ex_, d, [self = shared_from_this(), w, id, waits = 0](std::error_code ec) {
        if (!ec)
            self->on_cancel_grace(w, id, waits);
    });
}

void core_impl::on_cancel_grace(const link_ptr& w, std::uint64_t id, int waits) {
    std::lock_guard lk(mu_);
    if (w->has_exited() || w->reason() != kill_reason::none)
        return;
    const worker_slot& s = spawner_.slot(w->slot());
    if (s.task_id.load(std::memory_order_seq_cst) != id)
        return; // it returned in time
    if (s.holding.load(std::memory_order_acquire) && waits < held_replies_checks) {
        // Finished replies of other tasks wait to be written: killing it now would lose them.
        w->start_cancel_grace(ex_, held_replies_wait,
                              [self = shared_from_this(), w, id, waits](std::error_code ec) {
                                  if (!ec)
                                      self->on_cancel_grace(w, id, waits + 1);
                              });
        return;
    }
    w->kill(kill_reason::cancelled);
}

// ---------------------------------------------------------------- timeouts

void core_impl::arm_timer() {
    if (!watch_.enabled() || watch_.armed() || state_ == run_state::terminated ||
        std::none_of(links_.begin(), links_.end(),
                     [](const link_ptr& w) { return !w->inflight.empty(); }))
        return;
    watch_.arm([self = shared_from_this()](std::error_code ec) {
        std::lock_guard lk(self->mu_);
        self->watch_.fired();
        if (!ec && self->watch_.enabled())
            self->check_timeouts();
    });
}

void core_impl::check_timeouts() {
    const std::int64_t now = monotonic_ns();
    for (const auto& w : links_) {
        if (w->reason() != kill_reason::none || w->has_exited())
            continue;
        const worker_slot& s = spawner_.slot(w->slot());
        if (is_stuck(now, watch_.limit_ns(), s.task_id.load(std::memory_order_acquire),
                     s.start_ns.load(std::memory_order_relaxed), !w->inflight.empty(),
                     w->idle_since))
            w->kill(kill_reason::timeout);
    }
    arm_timer();
}

} // namespace coproc::detail
