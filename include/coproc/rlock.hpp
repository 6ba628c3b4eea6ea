// coproc/rlock.hpp — rlock, a re-entrant lock shared by processes (Python's
// multiprocessing.RLock).
//
//   coproc::rlock r;                             // create before the processes that use it
//   r.acquire(); r.acquire(); r.release(); r.release();    { auto g = r.scoped(); ... }
//   co_await r.async_acquire();                  auto g = co_await r.async_scoped();
//
// Held by one thread of one process, which may acquire it again (each acquire needs its
// release); release() by any other thread or process throws coproc::error. A coroutine's
// async_acquire holds it for the thread that started the operation. If the holding process
// dies, the next acquirer gets coproc::owner_died (once) and then holds it, with a count of one,
// as with coproc::lock. A handle: copies share it; it passes to processes and pool tasks like
// lock.
//
// async_acquire and async_scoped are Asio asynchronous operations (any completion token, default
// asio::use_awaitable) completing on the handler's executor. Cancellation (any
// asio::cancellation_type): completes at once with std::system_error(operation_aborted), and a
// cancelled acquire never holds the lock.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/detail/sync_wait.hpp>
#include <coproc/lock.hpp>

#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

namespace coproc {

namespace detail {

/// A lock_core plus the holding thread and the recursion count, in shared memory.
class rlock_core final : public registered {
  public:
    rlock_core();
    ~rlock_core();
    bool acquire_until(std::optional<clock::time_point> deadline);
    bool try_acquire();
    void release();
    bool locked() const noexcept { return inner_.locked(); }
    /// Whether the calling thread (of this process) holds it.
    bool mine() const noexcept;
    /// One step of an asynchronous acquire for thread `thread` (see lock_core::attempt).
    bool attempt(bool timed_out, bool first, std::uint64_t thread);
    sync_waits& waits() noexcept { return inner_.waits(); }
    static std::uint64_t this_thread() noexcept;

  private:
    void adopt(std::uint64_t thread) noexcept;
    template <class Take> bool attempt_with(Take take, std::uint64_t thread, bool reenter);
    struct shared;
    lock_core inner_;
    shared* shared_;
};

} // namespace detail

/// Holds an rlock (one level) until destroyed or release()d. Move-only.
using rlock_guard = detail::release_guard<detail::rlock_core>;

/// A re-entrant lock shared by processes.
class rlock : public detail::shared_handle<detail::rlock_core, detail::handle_kind::rlock> {
  public:
    /// A new, unlocked rlock.
    rlock();

    /// Blocks until acquired (at once if the calling thread holds it). Throws owner_died if the
    /// holding process died (the caller then holds it).
    void acquire() { core_->acquire_until(std::nullopt); }
    /// Acquires if free or already held by the calling thread; never blocks.
    bool try_acquire() { return core_->try_acquire(); }
    /// Waits at most `timeout`; false if not acquired. Throws owner_died.
    template <class Rep, class Period>
    bool acquire_for(std::chrono::duration<Rep, Period> timeout) {
        return core_->acquire_until(detail::deadline_after(timeout));
    }
    /// Releases one level. Throws coproc::error unless the calling thread holds it.
    void release() { core_->release(); }
    /// Whether it is held (by anyone).
    bool locked() const noexcept { return core_->locked(); }

    /// acquire(), then a guard that releases one level.
    [[nodiscard]] rlock_guard scoped() {
        acquire();
        return rlock_guard(core_);
    }
    /// acquire() without blocking the event-loop thread, for the calling thread; see the top of
    /// the file. Example: `co_await r.async_acquire();`
    template <class Token = asio::use_awaitable_t<>> auto async_acquire(Token&& token = {}) {
        return detail::async_sync<void>(core_->waits(), core_, attempt<false>{core_},
                                        std::forward<Token>(token));
    }
    /// async_acquire(), completing with void(std::exception_ptr, rlock_guard).
    template <class Token = asio::use_awaitable_t<>> auto async_scoped(Token&& token = {}) {
        return detail::async_sync<rlock_guard>(core_->waits(), core_, attempt<true>{core_},
                                               std::forward<Token>(token));
    }

  private:
    template <bool Scoped> struct attempt {
        std::shared_ptr<detail::rlock_core> core;
        std::uint64_t thread = detail::rlock_core::this_thread();
        bool first = true;
        bool operator()(bool timed_out) {
            return core->attempt(timed_out, std::exchange(first, false), thread);
        }
        rlock_guard result() { return rlock_guard(core); }
    };
};

} // namespace coproc
