// Helpers of the synchronisation primitive tests: counting coroutines against a ticking timer,
// cancelling an operation, counting this process's threads.
#pragma once

#include "test_util.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <system_error>

namespace coproc::test {

/// How far a crowd of coroutines got while a timer kept ticking on the same loop.
struct progress {
    int done = 0;
    int ticks = 0;
    int ticks_before_first = -1;
    void finished_one() {
        if (done++ == 0)
            ticks_before_first = ticks;
    }
};

/// Ticks every 5 ms until `p.done` reaches `n` (or 20 s pass).
inline asio::awaitable<void> tick_until(asio::io_context& io, progress& p, int n) {
    asio::steady_timer t(io);
    for (int i = 0; i < 4000 && p.done < n; ++i) {
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(asio::use_awaitable);
        ++p.ticks;
    }
}

/// This process's thread count.
inline int thread_count() {
    int n = 0;
    if (DIR* d = opendir("/proc/self/task")) {
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.')
                ++n;
        closedir(d);
    }
    return n;
}

/// Waits (up to 2 s) for the thread count to fall to `n`; the count then.
inline int settle_threads(int n) {
    for (int i = 0; i < 200 && thread_count() > n; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return thread_count();
}

/// The outcome of an operation started with a callback token.
struct outcome {
    bool done = false;
    std::exception_ptr error;
    bool aborted() const { return is_aborted(error); }
};

/// Runs `io` until `o.done` or `limit` passes, then (if done) until it has no work left.
inline void run_until_done(asio::io_context& io, const outcome& o,
                           std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!o.done && std::chrono::steady_clock::now() < end) {
        io.restart();
        io.run_for(std::chrono::milliseconds(5));
    }
    if (o.done)
        settle(io);
}

/// A callback token recording into `o`, bound to `sig`'s slot.
inline auto recording(outcome& o, asio::cancellation_signal& sig) {
    return asio::bind_cancellation_slot(sig.slot(), [&o](std::exception_ptr e, auto&&...) {
        o.error = e;
        o.done = true;
    });
}

/// Starts an operation with `start(token)` (a callback token on `io`, bound to a cancellation
/// signal), checks it is still pending after 50 ms, cancels it with `type` and runs `io` until it
/// completes (1 s at most). `took`: how long it took to complete after the cancellation.
template <class Start>
outcome start_and_cancel(asio::io_context& io, Start start,
                         std::chrono::steady_clock::duration& took,
                         asio::cancellation_type type = asio::cancellation_type::terminal) {
    asio::cancellation_signal sig;
    outcome o;
    start(asio::bind_executor(io, recording(o, sig)));
    io.restart();
    io.run_for(std::chrono::milliseconds(50));
    CHECK_FALSE(o.done);
    const auto t0 = std::chrono::steady_clock::now();
    sig.emit(type);
    run_until_done(io, o, std::chrono::milliseconds(1000));
    took = std::chrono::steady_clock::now() - t0;
    CHECK(o.done);
    return o;
}

} // namespace coproc::test
