// Test that header file is self-contained.
#include <coproc/barrier.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/shared_state.hpp>
#include "sync_test_util.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

constexpr int rounds = 5;

// Records its arrival index of each round in out[party * rounds + round].
void party(coproc::barrier b, coproc::array<int> out, int me) {
    for (int r = 0; r < rounds; ++r)
        out[static_cast<std::size_t>(me * rounds + r)] = static_cast<int>(b.wait());
}

// Exit status 7 if the wait broke, 0 if it passed.
void wait_expect_broken(coproc::barrier b) {
    try {
        b.wait();
        _exit(0);
    } catch (const coproc::broken_barrier&) {
        _exit(7);
    }
}

void wait_forever(coproc::barrier b) {
    b.wait();
    for (;;)
        pause();
}

// Waits (up to 10 s) until `n` parties wait.
void until_waiting(coproc::barrier& b, unsigned n) {
    for (int i = 0; i < 1000 && b.n_waiting() < n; ++i)
        std::this_thread::sleep_for(10ms);
    REQUIRE(b.n_waiting() == n);
}

unsigned wait_in_task(coproc::barrier b) { return b.wait(); }

asio::awaitable<void> arrive(coproc::barrier b, int* index, coproc::test::progress* p) {
    *index = static_cast<int>(co_await b.async_wait());
    p->finished_one();
}

} // namespace

TEST_SUITE_BEGIN("barrier");

TEST_CASE("4 processes pass 5 rounds; each round's indices are 0 to 3") {
    watchdog dog(60s);
    coproc::barrier b(4);
    coproc::array<int> out(4 * rounds);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 4; ++i)
        procs.emplace_back(party, b, out, i);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    for (int r = 0; r < rounds; ++r) {
        std::vector<int> seen;
        for (int i = 0; i < 4; ++i)
            seen.push_back(out[static_cast<std::size_t>(i * rounds + r)]);
        std::sort(seen.begin(), seen.end());
        CHECK(seen == std::vector<int>{0, 1, 2, 3});
    }
    CHECK(b.n_waiting() == 0);
    CHECK_FALSE(b.broken());
}

TEST_CASE("abort() while 3 processes wait: each gets broken_barrier within a second") {
    watchdog dog(60s);
    coproc::barrier b(4);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 3; ++i)
        procs.emplace_back(wait_expect_broken, b);
    for (auto& p : procs)
        p.start();
    until_waiting(b, 3);
    const auto t0 = std::chrono::steady_clock::now();
    b.abort();
    for (auto& p : procs) {
        CHECK(p.join_for(1s));
        CHECK(p.exitcode() == 7);
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    CHECK(b.broken());
    CHECK_THROWS_AS(b.wait(), coproc::broken_barrier);
    b.reset();
    CHECK_FALSE(b.broken());
}

TEST_CASE("a party killed mid-wait: every other waiter gets broken_barrier within a second") {
    watchdog dog(60s);
    coproc::barrier b(4);
    coproc::process victim(wait_forever, b);
    victim.start();
    until_waiting(b, 1);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 2; ++i)
        procs.emplace_back(wait_expect_broken, b);
    for (auto& p : procs)
        p.start();
    until_waiting(b, 3);
    const auto t0 = std::chrono::steady_clock::now();
    victim.kill();
    for (auto& p : procs) {
        CHECK(p.join_for(1s));
        CHECK(p.exitcode() == 7);
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    victim.join();
    CHECK(b.broken());
}

TEST_CASE("wait_for times out, breaking the barrier; reset() makes it usable again") {
    watchdog dog(60s);
    coproc::barrier b(2);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(b.wait_for(100ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
    CHECK(b.broken());
    CHECK_THROWS_AS(b.wait_for(10ms), coproc::broken_barrier);
    b.reset();
    coproc::process p(wait_expect_broken, b);
    p.start();
    CHECK(b.wait_for(10s));
    p.join();
    CHECK(p.exitcode() == 0); // it passed
    CHECK_THROWS_AS(coproc::barrier(0), coproc::error);
}

TEST_CASE("reset() while a process waits gives it broken_barrier") {
    watchdog dog(60s);
    coproc::barrier b(2);
    coproc::process p(wait_expect_broken, b);
    p.start();
    until_waiting(b, 1);
    b.reset();
    p.join();
    CHECK(p.exitcode() == 7);
    CHECK_FALSE(b.broken());
}

TEST_CASE("a barrier made before the pool is the same barrier in its workers") {
    watchdog dog(60s);
    coproc::barrier b(2);
    coproc::pool pool(1);
    auto r = pool.apply_async(wait_in_task, {b});
    const unsigned mine = b.wait();
    const unsigned theirs = r.get();
    CHECK(mine + theirs == 1);
    b.abort(); // a task's broken_barrier reaches the caller as itself
    CHECK_THROWS_AS(pool.apply_async(wait_in_task, {b}).get(), coproc::broken_barrier);
}

COPROC_TEST_CASE("1000 coroutines async_wait, a child arrives last; the loop runs") {
    coproc::barrier b(1001);
    coproc::test::progress pr;
    std::vector<int> indices(1000, -1);
    for (int i = 0; i < 1000; ++i)
        asio::co_spawn(io, arrive(b, &indices[static_cast<std::size_t>(i)], &pr), asio::detached);
    coproc::process p(wait_expect_broken, b);
    // Not started until the 1000 have arrived.
    asio::steady_timer t(io);
    for (int i = 0; i < 1000 && b.n_waiting() < 1000; ++i) {
        t.expires_after(5ms);
        co_await t.async_wait(asio::use_awaitable);
    }
    CHECK(b.n_waiting() == 1000);
    p.start();
    co_await coproc::test::tick_until(io, pr, 1000);
    CHECK(pr.done == 1000);
    std::sort(indices.begin(), indices.end());
    CHECK(indices.front() == 0);
    CHECK(indices.back() <= 1000);
    CHECK(std::adjacent_find(indices.begin(), indices.end()) == indices.end());
    co_await p.async_join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("a cancelled async_wait completes with operation_aborted and breaks the barrier") {
    watchdog dog(30s);
    coproc::barrier b(3);
    asio::io_context io;
    const int threads = coproc::test::thread_count();
    coproc::process p(wait_expect_broken, b);
    p.start();
    until_waiting(b, 1);
    std::chrono::steady_clock::duration took{};
    auto o = coproc::test::start_and_cancel(
        io, [&](auto token) { b.async_wait(token); }, took);
    CHECK(o.aborted());
    CHECK(took < 1s);
    p.join();
    CHECK(p.exitcode() == 7);
    CHECK(b.broken());
    CHECK(coproc::test::settle_threads(threads) == threads);
}

TEST_SUITE_END();
