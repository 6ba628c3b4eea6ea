// The helper thread behind the asynchronous waits of lock, rlock, event, semaphore, condition
// and barrier (see coproc/detail/sync_wait.hpp).
//
// The race between an attempt and a cancellation: both take the state's mutex, and an attempt
// that finishes an operation removes it from the parked list before unlocking. A cancellation
// that finds the operation still parked removes it and completes it with operation_aborted (no
// attempt can have acquired for it); one that does not find it does nothing (the operation has
// finished, or is about to deliver, with what it acquired). So a cancelled operation never
// holds what it waited for, and an operation that acquired always delivers.
//
// The helper waits with futex_waitv on two words: the primitive's shared word and a private
// `kick` word that a cancellation bumps when it leaves nothing parked, so the helper wakes at
// once and exits instead of sleeping out its 50 ms period.
#include <coproc/detail/sync_wait.hpp>
#include <coproc/error.hpp>
#include "sync_common.hpp"

#include <asio/error.hpp>

#include <climits>
#include <ctime>
#include <deque>
#include <linux/futex.h>
#include <mutex>
#include <pthread.h>
#include <sys/syscall.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace coproc::detail {

namespace {

// Bumped in the child at every fork: a state made before (whose helper thread the child does
// not have, and whose mutex that thread may have held) is left alone and replaced.
std::atomic<std::uint64_t> fork_generation{0};

std::uint64_t generation_now() {
    static const bool registered = [] {
        pthread_atfork(nullptr, nullptr,
                       [] { fork_generation.fetch_add(1, std::memory_order_relaxed); });
        return true;
    }();
    static_cast<void>(registered);
    return fork_generation.load(std::memory_order_relaxed);
}

// futex_waitv on the shared `word` (expecting `seen`) and the private `kick` (expecting
// `kicked`) until `until`; false on timeout. Falls back to FUTEX_WAIT on `word` alone where the
// kernel lacks futex_waitv (before 5.16): a cancellation is then noticed within the period.
bool wait_two(std::atomic<std::uint32_t>& word, std::uint32_t seen,
              std::atomic<std::uint32_t>& kick, std::uint32_t kicked, clock::time_point until) {
#ifdef __NR_futex_waitv
    static std::atomic<bool> unsupported{false};
    if (!unsupported.load(std::memory_order_relaxed)) {
        futex_waitv w[2]{};
        w[0].val = seen;
        w[0].uaddr = reinterpret_cast<std::uintptr_t>(&word);
        w[0].flags = FUTEX_32;
        w[1].val = kicked;
        w[1].uaddr = reinterpret_cast<std::uintptr_t>(&kick);
        w[1].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
        // futex_waitv's timeout is absolute, on the clock named by the last argument.
        const auto left = until - clock::now();
        if (left <= clock::duration::zero())
            return false;
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        const auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(left).count() + now.tv_nsec;
        timespec ts{};
        ts.tv_sec = now.tv_sec + static_cast<time_t>(ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
        const long r = ::syscall(__NR_futex_waitv, w, 2u, 0u, &ts, CLOCK_MONOTONIC);
        if (r >= 0 || errno == EAGAIN || errno == EINTR)
            return true;
        if (errno == ETIMEDOUT)
            return false;
        if (errno != ENOSYS)
            throw os_error("futex_waitv failed");
        unsupported.store(true, std::memory_order_relaxed);
    }
#endif
    static_cast<void>(kick);
    static_cast<void>(kicked);
    return futex_wait(word, seen, until);
}

std::exception_ptr aborted() {
    return std::make_exception_ptr(std::system_error(asio::error::operation_aborted));
}

} // namespace

struct sync_waits::state : std::enable_shared_from_this<state> {
    struct parked {
        std::shared_ptr<sync_op> op;
        std::shared_ptr<void> keep;
    };
    struct outcome {
        std::shared_ptr<sync_op> op;
        std::exception_ptr error;
    };

    state(std::atomic<std::uint32_t>& w, std::function<std::uint32_t()> p)
        : word(w), prepare(std::move(p)) {}

    std::atomic<std::uint32_t>& word;
    const std::function<std::uint32_t()> prepare;
    const std::uint64_t generation = generation_now();
    std::atomic<std::uint32_t> kick{0};
    std::mutex mu;
    std::deque<parked> ops;
    bool running = false;

    // Attempts every parked operation (under mu); the finished ones go to `done`.
    void attempt_all(bool timed_out, std::vector<outcome>& done) {
        for (auto it = ops.begin(); it != ops.end();) {
            std::exception_ptr e;
            bool finished = false;
            try {
                finished = it->op->attempt(timed_out);
            } catch (...) {
                e = std::current_exception();
                finished = true;
            }
            if (finished) {
                done.push_back({std::move(it->op), e});
                it = ops.erase(it);
            } else {
                ++it;
            }
        }
    }

    void loop() {
        bool timed_out = false;
        for (;;) {
            std::vector<outcome> done;
            std::shared_ptr<void> keep; // the word stays mapped while we wait on it
            std::uint32_t seen = 0, kicked = 0;
            {
                std::lock_guard lk(mu);
                if (ops.empty()) {
                    running = false;
                    return;
                }
                keep = ops.front().keep;
                kicked = kick.load(std::memory_order_relaxed);
                seen = prepare();
                attempt_all(timed_out, done);
            }
            for (auto& d : done)
                sync_op::finish(std::move(d.op), d.error);
            timed_out = false;
            if (!done.empty())
                continue; // what they did may let others through: attempt again before waiting
            try {
                timed_out = !wait_two(word, seen, kick, kicked, clock::now() + liveness_period);
            } catch (...) {
                fail_all(std::current_exception());
            }
        }
    }

    void fail_all(std::exception_ptr e) {
        std::deque<parked> all;
        {
            std::lock_guard lk(mu);
            all.swap(ops);
        }
        for (auto& p : all)
            sync_op::finish(std::move(p.op), e);
    }
};

sync_waits::sync_waits(std::atomic<std::uint32_t>& word, std::function<std::uint32_t()> prepare)
    : state_(std::make_shared<state>(word, prepare)), word_(word), prepare_(std::move(prepare)) {}

sync_waits::~sync_waits() = default;

std::shared_ptr<sync_waits::state> sync_waits::current() {
    auto s = std::atomic_load(&state_);
    if (s->generation == generation_now())
        return s;
    // Forked since: the old state's helper is not in this process and its mutex may be held.
    // Leak it (never touch it) and start afresh.
    auto fresh = std::make_shared<state>(word_, prepare_);
    if (std::atomic_compare_exchange_strong(&state_, &s, fresh)) {
        static_cast<void>(new std::shared_ptr<state>(std::move(s)));
        return fresh;
    }
    return s;
}

std::weak_ptr<void> sync_waits::handle() { return current(); }

void sync_waits::start(std::shared_ptr<sync_op> op, std::shared_ptr<void> keep) {
    auto s = current();
    std::exception_ptr e;
    {
        std::lock_guard lk(s->mu);
        bool finished = false;
        try {
            finished = op->attempt(false);
        } catch (...) {
            e = std::current_exception();
            finished = true;
        }
        if (!finished) {
            s->ops.push_back({op, std::move(keep)});
            if (s->running)
                return;
            try {
                std::thread([s] { s->loop(); }).detach();
                s->running = true;
                return;
            } catch (...) {
                s->ops.pop_back();
                op->abandon();
                e = std::current_exception();
            }
        }
    }
    sync_op::finish(std::move(op), e);
}

void sync_waits::cancel(const std::weak_ptr<void>& waits,
                        const std::weak_ptr<sync_op>& op) noexcept {
    auto s = std::static_pointer_cast<state>(waits.lock());
    auto o = op.lock();
    if (!s || !o)
        return;
    std::shared_ptr<void> keep;
    bool found = false, emptied = false;
    {
        std::lock_guard lk(s->mu);
        for (auto it = s->ops.begin(); it != s->ops.end(); ++it)
            if (it->op == o) {
                keep = std::move(it->keep);
                s->ops.erase(it);
                found = true;
                emptied = s->ops.empty();
                break;
            }
    }
    if (!found)
        return;
    o->abandon();
    sync_op::finish(std::move(o), aborted());
    if (emptied) {
        s->kick.fetch_add(1, std::memory_order_relaxed);
        ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&s->kick), FUTEX_WAKE_PRIVATE, 1,
                  nullptr, nullptr, 0);
    }
}

} // namespace coproc::detail
