// coproc/lock.hpp — lock, a lock shared by processes (Python's multiprocessing.Lock).
//
//   coproc::lock l;                              // create before the processes that use it
//   l.acquire(); ...; l.release();               { auto g = l.scoped(); ... } // released
//   l.try_acquire()   l.acquire_for(100ms)
//   co_await l.async_acquire();                  auto g = co_await l.async_scoped();
//   l.async_acquire(asio::bind_cancellation_slot(slot, token));   l.locked()
//
// A lock is a handle: copies refer to the same lock, in this process and in every process
// forked after it was made (a `process` target, a pool worker). Pass it to a pool task as an
// argument only if it was created before the pool: a lock made after the pool's workers started
// does not exist in them, and the task fails with coproc::error saying so.
//
// The lock is held by a process, not a thread (as Python's): any thread of the holder may
// release it; it is not recursive. If the holder dies, the next acquirer gets coproc::owner_died
// (once), and then holds the lock. A dead holder is noticed within about 50 ms.
//
// async_acquire and async_scoped are Asio asynchronous operations (any completion token, the
// default asio::use_awaitable). Cancellation (any asio::cancellation_type, through the handler's
// cancellation slot) completes the operation at once with std::system_error(operation_aborted),
// and a cancelled acquire never ends up holding the lock.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/detail/sync_wait.hpp>
#include <coproc/error.hpp>

#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

namespace coproc {

class lock_guard;

namespace detail {

/// The shared state of a lock: a futex word in shared memory holding the holder's pid.
class lock_core final : public registered {
  public:
    lock_core();
    ~lock_core();
    /// Waits until `deadline` (none: for ever); false on timeout. Throws owner_died.
    bool acquire_until(std::optional<clock::time_point> deadline);
    bool try_acquire();
    void release();
    bool locked() const noexcept;
    /// Whether this process holds the lock.
    bool held_here() const noexcept;
    /// One step of an asynchronous acquire (see sync_waits): takes the lock if it is free (a
    /// `first` attempt as a fresh acquirer, later ones as a woken waiter); after a timed-out
    /// wait, takes it over from a dead holder and throws owner_died.
    bool attempt(bool timed_out, bool first);
    sync_waits& waits() noexcept { return waits_; }

  private:
    std::uint32_t prepare() noexcept;
    bool try_take(std::uint32_t me) noexcept;
    void take_over_if_dead(std::uint32_t seen, std::uint32_t me);
    struct shared;
    shared* shared_;
    sync_waits waits_;
};

/// An asynchronous acquire of a lock; with `Scoped`, yields a guard.
template <bool Scoped> struct lock_attempt {
    std::shared_ptr<lock_core> core;
    bool first = true;
    bool operator()(bool timed_out) {
        return core->attempt(timed_out, std::exchange(first, false));
    }
    lock_guard result();
};

} // namespace detail

/// A lock shared by processes.
class lock {
  public:
    /// A new, unlocked lock.
    lock();

    /// Blocks until the lock is acquired. Throws owner_died if the previous holder died (the
    /// caller then holds the lock).
    void acquire() { core_->acquire_until(std::nullopt); }
    /// Acquires the lock if it is free; never blocks. Throws owner_died as acquire() does.
    bool try_acquire() { return core_->try_acquire(); }
    /// Waits at most `timeout`; false if the lock was not acquired. Throws owner_died.
    template <class Rep, class Period>
    bool acquire_for(std::chrono::duration<Rep, Period> timeout) {
        return core_->acquire_until(detail::deadline_after(timeout));
    }
    /// Releases the lock. Throws coproc::error if it is not held.
    void release() { core_->release(); }

    /// Acquires now; the returned guard releases when it dies. If this throws owner_died, the
    /// lock is held with no guard: repair, then release().
    /// Example: `{ auto g = l.scoped(); std::puts("alone"); }`
    [[nodiscard]] lock_guard scoped();
    /// Whether the lock is held (by any process).
    bool locked() const noexcept { return core_->locked(); }

    /// Acquires without blocking the event-loop thread (the wait runs on a helper thread).
    /// Completes with void(std::exception_ptr) on the handler's associated executor; the error
    /// is owner_died as acquire() throws it (the lock is then held). Keep that executor running
    /// until the operation completes: a lock acquired for a handler that never runs is never
    /// released.
    /// Cancellation (any type): completes at once with system_error(operation_aborted), not
    /// holding the lock.
    /// Example: `co_await l.async_acquire();`
    template <class Token = asio::use_awaitable_t<>> auto async_acquire(Token&& token = {}) {
        return detail::async_sync<void>(core_->waits(), core_, detail::lock_attempt<false>{core_},
                                        std::forward<Token>(token));
    }
    /// async_acquire(), completing with void(std::exception_ptr, lock_guard): a guard that
    /// releases (empty on error). Cancellation as for async_acquire().
    /// Example: `auto g = co_await l.async_scoped();`
    template <class Token = asio::use_awaitable_t<>> auto async_scoped(Token&& token = {}) {
        return detail::async_sync<lock_guard>(
            core_->waits(), core_, detail::lock_attempt<true>{core_}, std::forward<Token>(token));
    }

    /// cereal: a lock travels to a pool worker as its registry token (see the top of the file).
    template <class Archive> void save(Archive& ar) const { ar(core_->token()); }
    template <class Archive> void load(Archive& ar) {
        std::uint64_t token = 0;
        ar(token);
        core_ = detail::load_registered<detail::lock_core>(token, detail::handle_kind::lock);
    }

  private:
    friend class condition;
    explicit lock(std::shared_ptr<detail::lock_core> core) noexcept : core_(std::move(core)) {}
    std::shared_ptr<detail::lock_core> core_;
};

/// Holds a lock until destroyed or release()d. Move-only: release(), owns_lock().
class lock_guard : public detail::release_guard<detail::lock_core> {
  public:
    lock_guard() noexcept = default;

  private:
    friend class lock;
    friend class condition;
    friend struct detail::lock_attempt<true>;
    explicit lock_guard(std::shared_ptr<detail::lock_core> core) noexcept
        : release_guard(std::move(core)) {}
};

inline lock_guard lock::scoped() {
    acquire();
    return lock_guard(core_);
}

template <bool Scoped> lock_guard detail::lock_attempt<Scoped>::result() {
    return lock_guard(core);
}

} // namespace coproc
