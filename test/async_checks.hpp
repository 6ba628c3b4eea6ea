// Checks shared by the channel tests: one asynchronous operation completed through every
// completion token coproc supports, and random cancellations racing with a producer.
#pragma once

#include "test_util.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/system_executor.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <system_error>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

namespace coproc::test {

/// The value an operation yields: R, or std::monostate for void(std::exception_ptr).
template <class R> using value_of = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// What a plain callback handler received, and on which thread, waited for from the test's.
template <class R> class callback_probe {
  public:
    /// A handler `void(std::exception_ptr[, R])` recording into this probe.
    auto handler() {
        if constexpr (std::is_void_v<R>)
            return [this](std::exception_ptr e) { record(e, std::monostate{}); };
        else
            return [this](std::exception_ptr e, R v) { record(e, std::move(v)); };
    }
    /// Waits (at most 20 s) for the handler to run; false if it did not.
    bool wait() {
        std::unique_lock lk(m_);
        return cv_.wait_for(lk, std::chrono::seconds(20), [&] { return calls_ > 0; });
    }
    int calls() {
        std::lock_guard lk(m_);
        return calls_;
    }
    std::exception_ptr error;
    std::optional<value_of<R>> value;

  private:
    void record(std::exception_ptr e, value_of<R> v) {

        std::lock_guard lk(m_);
        error = e;
        value = std::move(v);
        ++calls_;
        cv_.notify_all();
    }
    std::mutex m_;
    std::condition_variable cv_;
    int calls_ = 0;
};

/// The number of open descriptors once it is `expected`, or after 5 s: an operation that
/// completed on another thread may close its wait descriptor a moment after its handler ran.
inline int settled_fd_count(int expected) {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int n;
    while ((n = fd_count()) != expected && std::chrono::steady_clock::now() < limit)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return n;
}

/// Runs `io` until `done` or 20 s pass, then (if done) until it has no work left.
inline void run_until(asio::io_context& io, const bool& done) {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done && std::chrono::steady_clock::now() < limit)
        io.run_one_for(std::chrono::milliseconds(10));
    if (done)
        settle(io);
}

/// Completes one operation `start(token)` with each completion token coproc supports. Each
/// operation is started first and `feed()` called after (so it waits), except where noted; `check`
/// sees every value delivered. Cancellation goes through bind_cancellation_slot with each
/// cancellation type: the operation completes with operation_aborted and `feed()` then serves
/// the next operation (nothing was consumed).
template <class R, class Start, class Feed, class Check>
void check_every_token(Start start, Feed feed, Check check) {
    using value = value_of<R>;
    auto await_value = [&](auto&& token) -> asio::awaitable<value> {
        if constexpr (std::is_void_v<R>) {
            co_await start(token);
            co_return value{};
        } else {
            co_return co_await start(token);
        }
    };
    { // Asio's system executor makes its reactor's descriptors on first use: before counting
        asio::steady_timer warm_up(asio::system_executor{});
    }
    const int fds = fd_count();
    // Runs `waiter` (a coroutine yielding the value) on an io_context until it waits, feeds it.
    auto run_fed = [&](auto make_waiter) {
        asio::io_context io;
        std::optional<value> got;
        bool done = false;
        asio::co_spawn(io, make_waiter(), [&](std::exception_ptr e, value v) {
            CHECK_FALSE(e);
            got = std::move(v);
            done = true;
        });
        io.poll(); // now it waits
        CHECK_FALSE(done);
        feed();
        run_until(io, done);
        REQUIRE(got);
        check(*got);
    };
    // use_awaitable: a coroutine waits on the io_context
    run_fed([&] { return await_value(asio::use_awaitable); });
    // use_future: no io_context at all (the wait runs on Asio's system executor)
    auto through_future = [&] {
        auto f = start(asio::use_future);
        feed();
        REQUIRE(f.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
        if constexpr (std::is_void_v<R>) {
            f.get();
            check(value{});
        } else {
            check(f.get());
        }
    };
    through_future();
    { // a plain callback void(std::exception_ptr[, R])
        callback_probe<R> probe;
        start(probe.handler());
        feed();
        REQUIRE(probe.wait());
        CHECK_FALSE(probe.error);
        check(*probe.value);
        CHECK(probe.calls() == 1);
    }
    // deferred: nothing starts until the deferred operation is launched
    run_fed([&] {
        return [](auto op) -> asio::awaitable<value> {
            if constexpr (std::is_void_v<R>) {
                co_await std::move(op)(asio::use_awaitable);
                co_return value{};
            } else {
                co_return co_await std::move(op)(asio::use_awaitable);
            }
        }(start(asio::experimental::deferred));
    });
    // as_tuple(use_awaitable): the exception comes as a value
    run_fed([&] {
        return [](Start& start) -> asio::awaitable<value> {
            const auto token = asio::experimental::as_tuple(asio::use_awaitable);
            auto result = co_await start(token);
            CHECK_FALSE(std::get<0>(result));
            if constexpr (std::is_void_v<R>)
                co_return value{};
            else
                co_return std::move(std::get<1>(result));
        }(start);
    });
    { // bind_executor(strand, callback): the callback runs in the strand
        asio::io_context io;
        auto strand = asio::make_strand(io);
        std::optional<value> got;
        bool done = false, in_strand = false;
        auto on_done = [&](std::exception_ptr e, auto&&... v) {
            CHECK_FALSE(e);
            in_strand = strand.running_in_this_thread();
            if constexpr (sizeof...(v) == 0)
                got.emplace();
            else
                got.emplace(std::move(v)...);
            done = true;
        };
        start(asio::bind_executor(strand, on_done));
        io.poll();
        CHECK_FALSE(done);
        feed();
        run_until(io, done);
        CHECK(in_strand);
        REQUIRE(got);
        check(*got);
    }
    // bind_cancellation_slot, every cancellation type, from the thread the operation waits on
    // and from another one
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        { // on the io_context's thread
            asio::io_context io;
            asio::cancellation_signal sig;
            callback_probe<R> probe;
            start(
                asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, probe.handler())));
            io.poll();
            CHECK(probe.calls() == 0);
            sig.emit(type);
            io.poll();
            CHECK(probe.calls() == 1);
            CHECK(is_aborted(probe.error));
        }
        { // from another thread than the one the wait runs on (Asio's system executor)
            asio::cancellation_signal sig;
            callback_probe<R> probe;
            start(asio::bind_cancellation_slot(sig.slot(), probe.handler()));
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            sig.emit(type);
            REQUIRE(probe.wait());
            CHECK(is_aborted(probe.error));
        }
        through_future(); // nothing was consumed: the next operation gets what feed() gives
    }
    CHECK(settled_fd_count(fds) == fds);
}

/// Awaits `op || a timer of `after``: the timer must win, within `limit`.
template <class Awaitable>
asio::awaitable<void> expect_timer_first(Awaitable op, std::chrono::milliseconds after,
                                         std::chrono::milliseconds limit) {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(co_await asio::this_coro::executor, after);
    const auto t0 = std::chrono::steady_clock::now();
    auto tick = timer.async_wait(asio::use_awaitable);
    const auto first = co_await (std::move(op) || std::move(tick));
    CHECK(first.index() == 1);
    CHECK(std::chrono::steady_clock::now() - t0 < limit);
}

/// Counts of a random-cancellation run.
struct cancel_counts {
    int delivered = 0;     // operations that completed with an item
    int aborted = 0;       // operations cancelled before they took one
    int late_cancels = 0;  // cancellations emitted after the item was taken (no effect)
    int aborted_early = 0; // cancelled while items were still to come
};

/// Starts `start(token)` over and over on an io_context, each with a timer that emits a
/// cancellation of a random type after a random 0..`max_delay`, until `items` items were
/// delivered and at least `min_aborted` operations were cancelled; `seen(v)` is called for each
/// delivered value. Each operation completes exactly once (checked).
template <class R, class Start, class Seen>
cancel_counts random_cancellations(Start start, Seen seen, int items, int min_aborted,
                                   std::chrono::microseconds max_delay) {
    struct round {
        explicit round(asio::io_context& io) : timer(io) {}
        asio::cancellation_signal sig;
        asio::steady_timer timer;
        int completions = 0;
        bool emitted = false;
    };
    asio::io_context io;
    std::mt19937 rng(12345);
    cancel_counts c;
    bool finished = false, twice = false;
    std::function<void()> next = [&] {
        if (c.delivered >= items && c.aborted >= min_aborted) {
            finished = true;
            return;
        }
        auto r = std::make_shared<round>(io);
        auto handler = [&, r](std::exception_ptr e, R v) {
            twice |= ++r->completions != 1;
            r->timer.cancel();
            if (is_aborted(e)) {
                ++c.aborted;
                c.aborted_early += c.delivered < items;
            } else {
                REQUIRE_FALSE(e);
                ++c.delivered;
                c.late_cancels += r->emitted;
                seen(v);
            }
            asio::post(io, next);
        };
        start(asio::bind_cancellation_slot(r->sig.slot(), asio::bind_executor(io, handler)));
        const auto types = {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                            asio::cancellation_type::total};
        const auto type = *(types.begin() + rng() % 3);
        r->timer.expires_after(std::chrono::microseconds(rng() % (max_delay.count() + 1)));
        r->timer.async_wait([r, type](std::error_code ec) {
            if (!ec && r->completions == 0) {
                r->emitted = true;
                r->sig.emit(type);
            }
        });
    };
    asio::post(io, next);
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!finished && std::chrono::steady_clock::now() < limit)
        io.run_one_for(std::chrono::milliseconds(100));
    REQUIRE_MESSAGE(finished, "random cancellations: stuck after "
                                  << c.delivered << " items and " << c.aborted << " cancellations");
    CHECK_FALSE(twice);
    return c;
}

} // namespace coproc::test
