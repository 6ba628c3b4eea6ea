// coproc/semaphore.hpp — semaphore and bounded_semaphore shared by processes (Python's
// multiprocessing.Semaphore and BoundedSemaphore).
//
//   coproc::semaphore slots(3);                  // create before the processes that use it
//   slots.acquire(); ...; slots.release();       { auto g = slots.scoped(); ... } // released
//   slots.try_acquire()   slots.acquire_for(100ms)   co_await slots.async_acquire();
//   coproc::bounded_semaphore b(2);  b.release(); // throws coproc::error above 2
//
// A handle: copies share the semaphore, in this process and every process forked after it was
// made (pass it to a pool task as an argument if it was made before the pool).
//
// A process that dies holding a count does not give it back: as in Python, the count is lost
// (a semaphore is not owned: any process may release what another acquired, so there is no
// holder to recover from). Use a lock (owner_died) where a holder's death must be noticed.
//
// async_acquire is an Asio asynchronous operation (any completion token, default
// asio::use_awaitable), completing with void(std::exception_ptr) on the handler's executor.
// Cancellation (any asio::cancellation_type): completes at once with
// std::system_error(operation_aborted), and a cancelled acquire never takes a count.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/detail/sync_wait.hpp>

#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

namespace coproc {

namespace detail {

/// The shared state of a semaphore: the count in a futex word (top bit: someone may sleep).
class semaphore_core final : public registered {
  public:
    /// `bounded`: release() may not raise the count above `value`.
    semaphore_core(unsigned value, bool bounded);
    ~semaphore_core();
    bool acquire_until(std::optional<clock::time_point> deadline);
    bool try_acquire() noexcept;
    void release(unsigned n = 1);
    unsigned value() const noexcept;
    sync_waits& waits() noexcept { return waits_; }

  private:
    std::uint32_t prepare() noexcept;
    struct shared;
    shared* shared_;
    sync_waits waits_;
};

} // namespace detail

/// Holds one count of a semaphore until destroyed or release()d. Move-only.
using semaphore_guard = detail::release_guard<detail::semaphore_core>;

/// A counting semaphore shared by processes.
class semaphore
    : public detail::shared_handle<detail::semaphore_core, detail::handle_kind::semaphore> {
  public:
    /// A semaphore whose count starts at `value` (at most 2^31 - 1).
    explicit semaphore(unsigned value = 1) : semaphore(value, false) {}

    /// Blocks until the count is above zero, then decrements it.
    void acquire() { core_->acquire_until(std::nullopt); }
    /// Decrements the count if it is above zero; never blocks.
    bool try_acquire() noexcept { return core_->try_acquire(); }
    /// Waits at most `timeout`; false if no count was taken.
    template <class Rep, class Period>
    bool acquire_for(std::chrono::duration<Rep, Period> timeout) {
        return core_->acquire_until(detail::deadline_after(timeout));
    }
    /// Adds `n` to the count, waking as many waiters. Throws coproc::error past the bound of
    /// a bounded_semaphore (the count is then unchanged), or past 2^31 - 1.
    void release(unsigned n = 1) { core_->release(n); }
    /// The current count (Python's get_value()).
    unsigned get_value() const noexcept { return core_->value(); }

    /// acquire(), then a guard that releases one count when it dies.
    /// Example: `{ auto g = slots.scoped(); use_the_slot(); }`
    [[nodiscard]] semaphore_guard scoped() {
        acquire();
        return semaphore_guard(core_);
    }
    /// acquire() without blocking the event-loop thread; see the top of the file.
    /// Example: `co_await slots.async_acquire();`
    template <class Token = asio::use_awaitable_t<>> auto async_acquire(Token&& token = {}) {
        struct attempt {
            std::shared_ptr<detail::semaphore_core> core;
            bool operator()(bool) const noexcept { return core->try_acquire(); }
        };
        return detail::async_sync<void>(core_->waits(), core_, attempt{core_},
                                        std::forward<Token>(token));
    }

  protected:
    semaphore(unsigned value, bool bounded);
};

/// A semaphore whose release() may not raise the count above its initial value.
class bounded_semaphore : public semaphore {
  public:
    explicit bounded_semaphore(unsigned value = 1) : semaphore(value, true) {}
};

} // namespace coproc
