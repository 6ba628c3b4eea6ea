// coproc/detail/sync_wait.hpp — asynchronous waits on a futex word in shared memory, the engine
// behind every async_* operation of lock, rlock, event, semaphore, condition and barrier.
//
// A futex offers no descriptor an event loop could wait on, so a helper thread waits instead:
// one per primitive and process, alive only while some operation of this process is parked on
// the primitive. An operation is first attempted on the initiating thread; if that does not
// finish it, it is parked, and the helper (FUTEX_WAIT on the word, woken by whoever changes it,
// and at least every 50 ms to look for dead holders) attempts every parked operation again
// after each wake-up. Attempts and cancellation both run under one mutex of the process, so
// an operation either finishes (acquires) or is cancelled, never both: a cancelled acquire
// never holds the primitive. Cancelling the last parked operation wakes the helper (it waits
// on a private word too, with futex_waitv), which then exits: no helper thread stays blocked.
//
// Completions are posted to the handler's associated executor; outstanding work is kept on it
// while the operation is pending. The cancellation slot is cleared there, before the handler
// runs.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/detail/handler_work.hpp>

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/post.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace coproc::detail {

/// Throws coproc::error: `what` is an empty (default-constructed) handle.
[[noreturn]] void throw_empty_handle(const char* what);
[[noreturn]] void throw_empty_handle(handle_kind kind);

/// Base of the handles of the futex primitives: the shared core, and cereal save/load as the
/// core's registry token (see coproc/lock.hpp).
template <class Core, handle_kind Kind> class shared_handle {
  public:
    template <class Archive> void save(Archive& ar) const { ar(core().token()); }
    template <class Archive> void load(Archive& ar) {
        std::uint64_t token = 0;
        ar(token);
        core_ = load_registered<Core>(token, Kind);
    }

  protected:
    shared_handle() noexcept = default;
    template <class... Args>
    explicit shared_handle(std::in_place_t, Args&&... args)
        : core_(make_registered<Core>(Kind, std::forward<Args>(args)...)) {}
    /// The core; throws coproc::error for an empty (default-constructed) handle.
    Core& core() const {
        if (!core_)
            throw_empty_handle(Kind);
        return *core_;
    }
    std::shared_ptr<Core> core_;
};

/// One asynchronous operation parked on a futex word.
class sync_op {
  public:
    virtual ~sync_op() = default;
    /// Tries to finish (acquire, find the event set, ...): true when done. `timed_out`: the
    /// helper's wait ran out (time to look for dead holders). May throw: the operation then
    /// completes with that exception. Runs under the waits' mutex, never at the same time as
    /// the operation's cancellation.
    virtual bool attempt(bool timed_out) = 0;
    /// The operation was cancelled before it finished (undo what starting it did).
    virtual void abandon() noexcept {}
    /// Delivers the outcome (posts the handler to its executor), taking `op`'s reference: the
    /// posted handler then holds the last one, so the operation, with the work it keeps on the
    /// handler's executor, ends there and never on a helper thread after the executor's
    /// context is gone. Called once per operation.
    static void finish(std::shared_ptr<sync_op>&& op, std::exception_ptr e) noexcept {
        sync_op& o = *op;
        o.post_completion(std::move(op), std::move(e));
    }

  private:
    /// finish(): `self` is this operation.
    virtual void post_completion(std::shared_ptr<sync_op> self, std::exception_ptr e) noexcept = 0;
};

/// The parked asynchronous operations of this process on one futex word.
class sync_waits {
  public:
    /// `prepare()` runs before every round of attempts and returns the value to FUTEX_WAIT for
    /// (it sets whatever bit makes the word's wakers wake).
    sync_waits(std::atomic<std::uint32_t>& word, std::function<std::uint32_t()> prepare);
    ~sync_waits();
    sync_waits(const sync_waits&) = delete;
    sync_waits& operator=(const sync_waits&) = delete;

    /// Attempts `op` now; parks it if that does not finish it. `keep` (the primitive) stays
    /// alive while the operation is parked.
    void start(std::shared_ptr<sync_op> op, std::shared_ptr<void> keep);
    /// What a cancellation handler holds: cancel(handle(), op) completes `op` with
    /// operation_aborted if it is still parked.
    std::weak_ptr<void> handle();
    static void cancel(const std::weak_ptr<void>& waits, const std::weak_ptr<sync_op>& op) noexcept;

  private:
    struct state;
    std::shared_ptr<state> current();
    std::shared_ptr<state> state_;
    std::atomic<std::uint32_t>& word_;
    std::function<std::uint32_t()> prepare_;
};

/// A parked operation that completes `Handler` with void(std::exception_ptr) (R void) or
/// void(std::exception_ptr, R). `Attempt` is callable as bool(bool timed_out); it may have
/// abandon() and, for R not void, result() (called on success, on the handler's executor).
template <class Handler, class Attempt, class R> class handler_op final : public sync_op {
  public:
    handler_op(Handler h, Attempt a)
        : handler_(std::move(h)), attempt_(std::move(a)), work_(detail::handler_work(handler_)) {}

    bool attempt(bool timed_out) override { return attempt_(timed_out); }
    void abandon() noexcept override {
        if constexpr (requires { attempt_.abandon(); })
            attempt_.abandon();
    }
    Handler& handler() noexcept { return handler_; }

  private:
    void post_completion(std::shared_ptr<sync_op> self, std::exception_ptr e) noexcept override {
        const auto ex = asio::get_associated_executor(handler_);
        post_from_any_thread(ex, [self = std::static_pointer_cast<handler_op>(std::move(self)),
                                  e]() mutable { self->complete(e); });
    }

    // On the handler's executor. The work is given back here, where its context is alive.
    void complete(std::exception_ptr e) {
        auto slot = asio::get_associated_cancellation_slot(handler_);
        if (slot.is_connected())
            slot.clear();
        work_.reset();
        if constexpr (std::is_void_v<R>) {
            std::move(handler_)(e);
        } else {
            R r{};
            if (!e)
                r = attempt_.result();
            std::move(handler_)(e, std::move(r));
        }
    }

    Handler handler_;
    Attempt attempt_;
    std::optional<handler_work_t<Handler>> work_;
};

/// Starts a parked operation for `handler` on `waits`, its cancellation slot (if connected)
/// cancelling it.
template <class R, class Handler, class Attempt>
void start_sync_op(sync_waits& waits, std::shared_ptr<void> keep, Attempt attempt,
                   Handler handler) {
    using op_type = handler_op<std::decay_t<Handler>, Attempt, R>;
    auto op = std::make_shared<op_type>(std::move(handler), std::move(attempt));
    auto slot = asio::get_associated_cancellation_slot(op->handler());
    if (slot.is_connected())
        slot.assign([w = waits.handle(), o = std::weak_ptr<sync_op>(op)](asio::cancellation_type) {
            sync_waits::cancel(w, o);
        });
    waits.start(std::move(op), std::move(keep));
}

/// The completion signature of an operation yielding R.
template <class R> struct sync_signature { using type = void(std::exception_ptr, R); };
template <> struct sync_signature<void> { using type = void(std::exception_ptr); };

/// An Asio asynchronous operation that runs `attempt` on `waits` (see start_sync_op).
template <class R, class Token, class Attempt>
auto async_sync(sync_waits& waits, std::shared_ptr<void> keep, Attempt attempt, Token&& token) {
    return asio::async_initiate<Token, typename sync_signature<R>::type>(
        [&waits](auto handler, std::shared_ptr<void> keep, Attempt attempt) {
            start_sync_op<R>(waits, std::move(keep), std::move(attempt), std::move(handler));
        },
        token, std::move(keep), std::move(attempt));
}

/// Posts `handler(e)` (or `handler(e, R{})`) to its executor: an operation that failed before
/// it could start.
template <class R, class Handler> void post_failure(Handler handler, std::exception_ptr e) {
    auto ex = asio::get_associated_executor(handler);
    asio::post(ex, [h = std::move(handler), e]() mutable {
        if constexpr (std::is_void_v<R>)
            std::move(h)(e);
        else
            std::move(h)(e, R{});
    });
}

/// Releases `Core` (anything with release()) when destroyed, unless released or moved from;
/// what scoped() of rlock and semaphore return.
template <class Core> class release_guard {
  public:
    release_guard() noexcept = default;
    explicit release_guard(std::shared_ptr<Core> core) noexcept : core_(std::move(core)) {}
    release_guard(release_guard&& o) noexcept : core_(std::move(o.core_)) {}
    release_guard& operator=(release_guard&& o) noexcept {
        if (this != &o) {
            unlock_quietly();
            core_ = std::move(o.core_);
        }
        return *this;
    }
    ~release_guard() { unlock_quietly(); }

    /// Releases now (the guard then holds nothing).
    void release() {
        if (auto c = std::move(core_))
            c->release();
    }
    /// Whether the guard still holds.
    bool owns_lock() const noexcept { return core_ != nullptr; }

  protected:
    std::shared_ptr<Core> core_;

  private:
    void unlock_quietly() noexcept {
        try {
            release();
        } catch (...) { // released by someone else meanwhile: nothing left to do
        }
    }
};

} // namespace coproc::detail
