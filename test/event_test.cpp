// Test that header file is self-contained.
#include <coproc/event.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include "sync_test_util.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_future.hpp>

#include <chrono>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

// Waits for `go` (at most 10 s), then sets `done`.
void relay(coproc::event go, coproc::event done) {
    if (go.wait_for(10s))
        done.set();
}

void set_after(coproc::event e, int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    e.set();
}

// Waits for a set() that is cleared again at once; exit status 0 if the wait saw it.
void see_pulse(coproc::event e, coproc::event waiting) {
    waiting.set();
    _exit(e.wait_for(10s) ? 0 : 1);
}

bool set_in_task(coproc::event e) {
    e.set();
    return true;
}

asio::awaitable<void> wait_and_count(coproc::event e, coproc::test::progress* p) {
    co_await e.async_wait();
    p->finished_one();
}

} // namespace

TEST_SUITE_BEGIN("event");

TEST_CASE("set, clear, is_set and wait_for timing in one process") {
    watchdog dog(30s);
    coproc::event e;
    CHECK_FALSE(e.is_set());
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(e.wait_for(100ms));
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= 100ms);
    CHECK(waited < 5s);
    e.set();
    CHECK(e.is_set());
    CHECK(e.wait_for(0ms));
    e.wait();
    e.set(); // twice is fine
    e.clear();
    CHECK_FALSE(e.is_set());
    CHECK_FALSE(e.wait_for(10ms));
}

TEST_CASE("a process blocked in wait() wakes when the parent sets the event") {
    watchdog dog(30s);
    coproc::event go, done;
    coproc::process p(relay, go, done);
    p.start();
    CHECK_FALSE(done.wait_for(200ms)); // the child waits for go
    go.set();
    CHECK(done.wait_for(10s));
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("wait_for in the parent returns once a child sets the event, not before") {
    watchdog dog(30s);
    coproc::event e;
    coproc::process p(set_after, e, 300);
    const auto t0 = std::chrono::steady_clock::now();
    p.start();
    CHECK(e.wait_for(10s));
    CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);
    p.join();
}

TEST_CASE("a waiter sees a set() that is cleared again at once") {
    watchdog dog(30s);
    coproc::event e, waiting;
    coproc::process p(see_pulse, e, waiting);
    p.start();
    CHECK(waiting.wait_for(10s));
    std::this_thread::sleep_for(100ms); // the child is asleep in wait_for
    e.set();
    e.clear();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK_FALSE(e.is_set());
}

TEST_CASE("an event made before the pool is the same event in its workers") {
    watchdog dog(60s);
    coproc::event e;
    coproc::pool pool(1);
    CHECK(pool.apply_async(set_in_task, {e}).get());
    CHECK(e.is_set());
}

COPROC_TEST_CASE("1000 coroutines async_wait while a child sets it later; the loop runs") {
    coproc::event e;
    coproc::test::progress pr;
    for (int i = 0; i < 1000; ++i)
        asio::co_spawn(io, wait_and_count(e, &pr), asio::detached);
    coproc::process p(set_after, e, 1000);
    p.start();
    co_await coproc::test::tick_until(io, pr, 1000);
    CHECK(pr.done == 1000);
    CHECK(pr.ticks_before_first >= 20); // the loop kept running while they waited
    co_await p.async_join();
}

TEST_CASE("a cancelled async_wait completes at once with operation_aborted; no helper is left") {
    watchdog dog(30s);
    coproc::event e;
    asio::io_context io;
    const int threads = coproc::test::thread_count();
    std::chrono::steady_clock::duration took{};
    auto o = coproc::test::start_and_cancel(
        io, [&](auto token) { e.async_wait(token); }, took);
    CHECK(o.aborted());
    CHECK(took < 1s);
    CHECK(coproc::test::settle_threads(threads) == threads);
    // The event works on.
    coproc::test::outcome o2;
    asio::cancellation_signal sig2;
    e.async_wait(asio::bind_executor(io, coproc::test::recording(o2, sig2)));
    e.set();
    coproc::test::run_until_done(io, o2);
    CHECK(o2.done);
    CHECK_FALSE(o2.error);
}

TEST_CASE("async_wait with use_future and as_tuple") {
    watchdog dog(30s);
    coproc::event e;
    asio::io_context io;
    auto work = asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });
    auto f = e.async_wait(asio::bind_executor(io, asio::use_future));
    CHECK(f.wait_for(50ms) == std::future_status::timeout);
    e.set();
    CHECK(f.wait_for(10s) == std::future_status::ready);
    f.get();
    std::exception_ptr got = std::make_exception_ptr(1);
    auto g = asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto [ep] = co_await e.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
            got = ep;
        },
        asio::use_future);
    g.get();
    CHECK_FALSE(got);
    work.reset();
    loop.join();
}

TEST_SUITE_END();
