// coproc/barrier.hpp — barrier, a rendezvous of a fixed number of processes (Python's
// multiprocessing.Barrier).
//
//   coproc::barrier b(4);                        // create before the processes that use it
//   unsigned i = b.wait();                       // returns when 4 parties have called wait()
//   b.wait_for(1s);  co_await b.async_wait();  b.abort();  b.reset();
//
// wait() returns the caller's arrival index in its round (0 for the first, parties - 1 for the
// last), and the barrier starts a new round. A broken barrier throws coproc::broken_barrier in
// every waiter, at once, and in every later wait() until reset(). It breaks when abort() is
// called, when a wait_for() times out (that waiter returns false; Python's wait(timeout)), when
// an async_wait() is cancelled, and when a party dies while it waits (noticed within about 50 ms).
// reset() returns it to its empty, unbroken state; parties still waiting get broken_barrier.
// A handle: copies share it; it passes to processes and pool tasks like lock.
//
// async_wait is an Asio asynchronous operation (any completion token, default
// asio::use_awaitable), completing with void(std::exception_ptr, unsigned) (the arrival index)
// on the handler's executor. Cancellation (any asio::cancellation_type): completes at once with
// std::system_error(operation_aborted), and breaks the barrier for the other parties (the
// cancelled party had arrived: the round cannot complete without it).
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

/// The shared state of a barrier: a futex word (broken bit, round, arrivals) and the pid of
/// each party that arrived in the current round.
class barrier_core final : public registered {
  public:
    explicit barrier_core(unsigned parties);
    ~barrier_core();
    /// Where an arrival stands: its index and its round.
    struct ticket {
        unsigned index = 0;
        std::uint32_t round = 0;
        bool released = false; // the last party: the round is over already
    };
    /// Arrives (throws broken_barrier if broken).
    ticket arrive();
    /// Whether `t`'s round is over (throws broken_barrier if it broke or was reset first);
    /// `check_parties`: look for parties that died waiting, breaking the barrier if one did.
    bool passed(const ticket& t, bool check_parties);
    /// Whether `t`'s round is over (never throws).
    bool released(const ticket& t) const noexcept;
    /// Breaks `t`'s round if it is still on.
    void break_round(const ticket& t) noexcept;
    unsigned wait_until(std::optional<clock::time_point> deadline, bool& timed_out);
    void abort() noexcept;
    void reset() noexcept;
    unsigned parties() const noexcept { return parties_; }
    unsigned n_waiting() const noexcept;
    bool broken() const noexcept;
    sync_waits& waits() noexcept { return waits_; }

    struct shared;

  private:
    const unsigned parties_;
    shared* shared_;
    std::size_t bytes_;
    sync_waits waits_;
};

} // namespace detail

/// A barrier shared by processes.
class barrier : public detail::shared_handle<detail::barrier_core, detail::handle_kind::barrier> {
  public:
    /// A barrier for `parties` processes (or threads, or coroutines): 1 to 65535.
    explicit barrier(unsigned parties);
    /// An empty handle, to be assigned or loaded (a task argument is decoded into one); any
    /// other use throws coproc::error.
    barrier() noexcept = default;

    /// Waits until every party has arrived; the caller's arrival index. Throws broken_barrier.
    unsigned wait() {
        bool timed_out = false;
        return core().wait_until(std::nullopt, timed_out);
    }
    /// wait() for at most `timeout`: false on timeout, which breaks the barrier for the others.
    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> timeout) {
        bool timed_out = false;
        core().wait_until(detail::deadline_after(timeout), timed_out);
        return !timed_out;
    }
    /// Breaks the barrier: every waiter, and every wait() until reset(), throws broken_barrier.
    void abort() { core().abort(); }
    /// Back to empty and unbroken; parties still waiting get broken_barrier.
    void reset() { core().reset(); }
    unsigned parties() const { return core().parties(); }
    /// How many parties wait in the current round.
    unsigned n_waiting() const { return core().n_waiting(); }
    bool broken() const { return core().broken(); }

    /// wait() without blocking the event-loop thread; see the top of the file.
    /// Example: `unsigned i = co_await b.async_wait();`
    template <class Token = asio::use_awaitable_t<>> auto async_wait(Token&& token = {}) {
        struct attempt {
            std::shared_ptr<detail::barrier_core> core;
            detail::barrier_core::ticket t{};
            bool arrived = false;
            bool operator()(bool timed_out) {
                if (!std::exchange(arrived, true))
                    t = core->arrive();
                return t.released || core->passed(t, timed_out);
            }
            void abandon() noexcept { core->break_round(t); }
            unsigned result() const noexcept { return t.index; }
        };
        return detail::async_sync<unsigned>(core().waits(), core_, attempt{core_},
                                            std::forward<Token>(token));
    }
};

} // namespace coproc
