// Test that header file is self-contained.
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/semaphore.hpp>
#include <coproc/shared_state.hpp>
#include "sync_test_util.hpp"

#include <chrono>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

// inside[0]: holders now; inside[1]: the most there ever were.
void hold_many(coproc::semaphore s, coproc::array<int> inside, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        auto g = s.scoped();
        int now = 0;
        {
            auto l = inside.get_lock().scoped();
            now = ++inside[0];
            if (now > inside[1])
                inside[1] = now;
        }
        std::this_thread::sleep_for(50us);
        auto l = inside.get_lock().scoped();
        --inside[0];
    }
}

void release_after(coproc::semaphore s, int ms, unsigned n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    s.release(n);
}

bool take_in_task(coproc::semaphore s) { return s.try_acquire(); }

asio::awaitable<void> take_and_count(coproc::semaphore s, coproc::test::progress* p) {
    co_await s.async_acquire();
    p->finished_one();
}

} // namespace

TEST_SUITE_BEGIN("semaphore");

TEST_CASE("8 processes never have more than 3 holders of semaphore(3) at once") {
    watchdog dog(120s);
    coproc::semaphore s(3);
    coproc::array<int> inside(2);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 8; ++i)
        procs.emplace_back(hold_many, s, inside, 300);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    CHECK(inside[0] == 0);
    CHECK(inside[1] <= 3);
    CHECK(inside[1] >= 2); // they did overlap
    CHECK(s.get_value() == 3);
}

TEST_CASE("try_acquire, acquire_for, release(n) and get_value") {
    watchdog dog(30s);
    coproc::semaphore s(2);
    CHECK(s.try_acquire());
    CHECK(s.try_acquire());
    CHECK_FALSE(s.try_acquire());
    CHECK(s.get_value() == 0);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(s.acquire_for(100ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
    s.release(3);
    CHECK(s.get_value() == 3); // an unbounded semaphore may go above its start
    {
        auto g = s.scoped();
        CHECK(s.get_value() == 2);
    }
    CHECK(s.get_value() == 3);
    coproc::semaphore zero(0);
    CHECK_FALSE(zero.try_acquire());
}

TEST_CASE("a bounded_semaphore's release above its initial value throws and changes nothing") {
    coproc::bounded_semaphore b(2);
    CHECK_THROWS_AS(b.release(), coproc::error);
    b.acquire();
    CHECK_THROWS_AS(b.release(2), coproc::error);
    CHECK(b.get_value() == 1);
    b.release();
    CHECK(b.get_value() == 2);
    CHECK_THROWS_AS(b.release(), coproc::error);
}

TEST_CASE("acquire blocks until another process releases") {
    watchdog dog(30s);
    coproc::semaphore s(0);
    coproc::process p(release_after, s, 300, 1u);
    const auto t0 = std::chrono::steady_clock::now();
    p.start();
    s.acquire();
    CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);
    p.join();
}

TEST_CASE("a semaphore made before the pool is the same semaphore in its workers") {
    watchdog dog(60s);
    coproc::semaphore s(1);
    coproc::pool pool(1);
    CHECK(pool.apply_async(take_in_task, {s}).get());
    CHECK_FALSE(pool.apply_async(take_in_task, {s}).get());
    CHECK(s.get_value() == 0);
}

COPROC_TEST_CASE("1000 coroutines async_acquire counts a child releases later; the loop runs") {
    coproc::semaphore s(0);
    coproc::test::progress pr;
    for (int i = 0; i < 1000; ++i)
        asio::co_spawn(io, take_and_count(s, &pr), asio::detached);
    coproc::process p(release_after, s, 1000, 1000u);
    p.start();
    co_await coproc::test::tick_until(io, pr, 1000);
    CHECK(pr.done == 1000);
    CHECK(pr.ticks_before_first >= 20);
    CHECK(s.get_value() == 0);
    co_await p.async_join();
}

TEST_CASE("a cancelled async_acquire takes no count; the semaphore works on") {
    watchdog dog(30s);
    coproc::semaphore s(0);
    asio::io_context io;
    const int threads = coproc::test::thread_count();
    std::chrono::steady_clock::duration took{};
    auto o = coproc::test::start_and_cancel(
        io, [&](auto token) { s.async_acquire(token); }, took, asio::cancellation_type::total);
    CHECK(o.aborted());
    CHECK(took < 1s);
    CHECK(coproc::test::settle_threads(threads) == threads);
    s.release();
    CHECK(s.get_value() == 1); // the cancelled acquire did not take it
    asio::cancellation_signal sig2;
    coproc::test::outcome o2;
    s.async_acquire(asio::bind_executor(io, coproc::test::recording(o2, sig2)));
    coproc::test::run_until_done(io, o2);
    CHECK(o2.done);
    CHECK_FALSE(o2.error);
    CHECK(s.get_value() == 0);
}

TEST_SUITE_END();
