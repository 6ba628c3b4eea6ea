// coproc/condition.hpp — condition, a condition variable shared by processes (Python's
// multiprocessing.Condition).
//
//   coproc::condition c;                         // its own lock, or condition c(some_lock)
//   auto g = c.get_lock().scoped();
//   while (!ready()) c.wait(g);                  // releases the lock while it waits
//   c.wait_for(g, 100ms);                        co_await c.async_wait(g);
//   c.notify();  c.notify(2);  c.notify_all();   // with the lock held
//
// wait(g) releases the lock `g` holds, sleeps until notified, and takes the lock again before it
// returns; notify(n) wakes at most n waiters (of any process), notify_all() every one waiting.
// Wake-ups may be spurious (as with every condition variable, wait in a loop on the predicate):
// a waiter that died while waiting still counts for notify_all(), and the notification it
// would have taken wakes a later waiter once instead. The lock is a coproc::lock: a dead
// holder gives the next acquirer (a waiter taking it back, too) coproc::owner_died.
// A handle: copies share it; it passes to processes and pool tasks like lock.
//
// async_wait is an Asio asynchronous operation (any completion token, default
// asio::use_awaitable), completing with void(std::exception_ptr) on the handler's executor.
// The guard must stay alive until it completes. On success the guard holds the lock again; if
// the lock's holder died the error is owner_died and the guard holds it too. Cancellation (any
// asio::cancellation_type): completes at once with std::system_error(operation_aborted) and the
// guard empty (the lock is not held); a notification the cancelled wait had taken goes to
// another waiter.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/detail/sync_wait.hpp>
#include <coproc/lock.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

namespace coproc {

namespace detail {

/// The shared state of a condition: a sequence word to sleep on, and (waiting, notified)
/// counts in one 64-bit word.
class condition_core final : public registered {
  public:
    explicit condition_core(std::shared_ptr<lock_core> lock);
    ~condition_core();
    /// Counts the caller as waiting (it must hold the lock); the caller then releases the lock.
    void enter(const std::shared_ptr<lock_core>& held);
    /// Takes a notification if there is one.
    bool take() noexcept;
    /// Leaves without waiting longer: true if a notification was taken after all.
    bool leave() noexcept;
    /// leave(); a notification taken goes on to another waiter.
    void abandon() noexcept;
    /// Sleeps until notified or `deadline` (the lock released by the caller); false on timeout.
    bool wait_until(std::optional<clock::time_point> deadline);
    void notify(unsigned n);
    const std::shared_ptr<lock_core>& lock() const noexcept { return lock_; }
    sync_waits& waits() noexcept { return waits_; }

  private:
    struct shared;
    shared* shared_;
    std::shared_ptr<lock_core> lock_;
    sync_waits waits_;
};

} // namespace detail

/// A condition variable shared by processes.
class condition
    : public detail::shared_handle<detail::condition_core, detail::handle_kind::condition> {
  public:
    /// A condition over `l` (by default a new lock of its own).
    explicit condition(lock l = {});

    /// The lock (a handle to the same lock).
    lock get_lock() const;

    /// Releases the lock `g` holds (it must hold this condition's lock), waits until notified,
    /// and takes the lock back. Throws owner_died if the lock's holder died (then held).
    void wait(lock_guard& g) { wait_until(g, std::nullopt); }
    /// wait() for at most `timeout`; false on timeout (the lock is held again either way).
    template <class Rep, class Period>
    bool wait_for(lock_guard& g, std::chrono::duration<Rep, Period> timeout) {
        return wait_until(g, detail::deadline_after(timeout));
    }
    /// Wakes at most `n` waiters. Throws coproc::error unless this process holds the lock.
    void notify(unsigned n = 1) { core_->notify(n); }
    /// Wakes every waiter. Throws coproc::error unless this process holds the lock.
    void notify_all() { core_->notify(~0u); }

    /// wait() without blocking the event-loop thread; see the top of the file.
    /// Example: `while (!ready()) co_await c.async_wait(g);`
    template <class Token = asio::use_awaitable_t<>>
    auto async_wait(lock_guard& g, Token&& token = {}) {
        return asio::async_initiate<Token, void(std::exception_ptr)>(
            [](auto handler, std::shared_ptr<detail::condition_core> core, lock_guard* g) {
                start_async_wait(std::move(handler), std::move(core), *g);
            },
            token, core_, &g);
    }

  private:
    bool wait_until(lock_guard& g, std::optional<detail::clock::time_point> deadline);
    /// Checks that `g` holds this condition's lock, counts the caller as waiting and releases
    /// the lock (the guard keeps nothing).
    static void enter(detail::condition_core& core, lock_guard& g);

    // Two parked operations in turn: wait for a notification, then take the lock back.
    template <class Handler>
    static void start_async_wait(Handler handler, std::shared_ptr<detail::condition_core> core,
                                 lock_guard& g) {
        try {
            enter(*core, g);
        } catch (...) {
            detail::post_failure<void>(std::move(handler), std::current_exception());
            return;
        }
        struct notified {
            std::shared_ptr<detail::condition_core> core;
            bool operator()(bool) noexcept { return core->take(); }
            void abandon() noexcept { core->abandon(); }
        };
        auto ex = asio::get_associated_executor(handler);
        auto slot = asio::get_associated_cancellation_slot(handler);
        auto then = [handler = std::move(handler), core, g = &g,
                     slot](std::exception_ptr e) mutable {
            if (e) {
                std::move(handler)(e);
                return;
            }
            auto ex = asio::get_associated_executor(handler);
            auto relocked = [handler = std::move(handler), core, g](std::exception_ptr e) mutable {
                if (!e || is_owner_died(e))
                    g->core_ = core->lock();
                std::move(handler)(e);
            };
            auto lk = core->lock();
            detail::start_sync_op<void>(
                lk->waits(), lk, detail::lock_attempt<false>{lk},
                asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(relocked))));
        };
        detail::start_sync_op<void>(
            core->waits(), core, notified{core},
            asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(then))));
    }
    static bool is_owner_died(const std::exception_ptr& e) noexcept;
};

} // namespace coproc
