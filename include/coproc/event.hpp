// coproc/event.hpp — event, a flag processes wait for (Python's multiprocessing.Event).
//
//   coproc::event ready;                         // create before the processes that use it
//   ready.set();  ready.clear();  ready.is_set();
//   ready.wait();  ready.wait_for(100ms);        co_await ready.async_wait();
//
// A handle: copies share the event, in this process and every process forked after it was
// made (a `process` target, pool workers made after it: pass it to a pool task as an argument).
// A futex word in shared memory; setting it wakes every waiter of every process.
//
// async_wait is an Asio asynchronous operation (any completion token, default
// asio::use_awaitable), completing with void(std::exception_ptr) on the handler's executor.
// Cancellation (any asio::cancellation_type): completes at once with
// std::system_error(operation_aborted).
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

/// The shared state of an event: a futex word, bit 0 set, bit 1 someone may sleep, the rest
/// counting set() calls (so a waiter sees a set() followed at once by clear()).
class event_core final : public registered {
  public:
    event_core();
    ~event_core();
    void set() noexcept;
    void clear() noexcept;
    bool is_set() const noexcept;
    bool wait_until(std::optional<clock::time_point> deadline);
    /// Where a wait starts; passed(stamp()) is true once the event is set or was set since.
    std::uint32_t stamp() const noexcept;
    bool passed(std::uint32_t since) const noexcept;
    sync_waits& waits() noexcept { return waits_; }

  private:
    std::uint32_t prepare() noexcept;
    std::atomic<std::uint32_t>* word_;
    sync_waits waits_;
};

} // namespace detail

/// A flag shared by processes.
class event : public detail::shared_handle<detail::event_core, detail::handle_kind::event> {
  public:
    /// A new event, clear.
    event();

    /// Sets the flag and wakes every waiter.
    void set() noexcept { core_->set(); }
    /// Clears the flag.
    void clear() noexcept { core_->clear(); }
    bool is_set() const noexcept { return core_->is_set(); }
    /// Blocks until the flag is set (or was set, then cleared, while waiting).
    void wait() { core_->wait_until(std::nullopt); }
    /// Waits at most `timeout`; whether the flag was set.
    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> timeout) {
        return core_->wait_until(detail::deadline_after(timeout));
    }
    /// wait() without blocking the event-loop thread; see the top of the file.
    /// Example: `co_await ready.async_wait();`
    template <class Token = asio::use_awaitable_t<>> auto async_wait(Token&& token = {}) {
        struct attempt {
            std::shared_ptr<detail::event_core> core;
            std::optional<std::uint32_t> since{};
            bool operator()(bool) noexcept {
                if (!since)
                    since = core->stamp();
                return core->passed(*since);
            }
        };
        return detail::async_sync<void>(core_->waits(), core_, attempt{core_},
                                        std::forward<Token>(token));
    }
};

} // namespace coproc
