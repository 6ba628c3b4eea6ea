// Test that header file is self-contained.
#include <coproc/condition.hpp>
#include <coproc/process.hpp>
#include <coproc/shared_state.hpp>
#include "sync_test_util.hpp"

#include <chrono>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

// counts[0]: waiting, counts[1]: woken (both under the condition's lock).
void wait_once(coproc::condition c, coproc::array<int> counts) {
    auto g = c.get_lock().scoped();
    ++counts[0];
    c.wait(g);
    if (!g.owns_lock())
        _exit(3);
    ++counts[1];
}

int read(coproc::condition& c, coproc::array<int>& counts, int i) {
    auto g = c.get_lock().scoped();
    return counts[i];
}

// Waits (up to 10 s) until `n` processes wait.
void until_waiting(coproc::condition& c, coproc::array<int>& counts, int n) {
    for (int i = 0; i < 1000 && read(c, counts, 0) < n; ++i)
        std::this_thread::sleep_for(10ms);
    REQUIRE(read(c, counts, 0) == n);
}

void notify_after(coproc::condition c, int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    auto g = c.get_lock().scoped();
    c.notify_all();
}

asio::awaitable<void> wait_async(coproc::condition c, coproc::lock_guard* g,
                                 coproc::test::progress* p) {
    co_await c.async_wait(*g);
    p->finished_one();
}

} // namespace

TEST_SUITE_BEGIN("condition");

TEST_CASE("notify wakes one waiting process, notify(2) two more, notify_all the rest") {
    watchdog dog(60s);
    coproc::condition c;
    coproc::array<int> counts(2);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 5; ++i)
        procs.emplace_back(wait_once, c, counts);
    for (auto& p : procs)
        p.start();
    until_waiting(c, counts, 5);
    {
        auto g = c.get_lock().scoped();
        c.notify();
    }
    std::this_thread::sleep_for(300ms);
    CHECK(read(c, counts, 1) == 1);
    {
        auto g = c.get_lock().scoped();
        c.notify(2);
    }
    std::this_thread::sleep_for(300ms);
    CHECK(read(c, counts, 1) == 3);
    {
        auto g = c.get_lock().scoped();
        c.notify_all();
    }
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    CHECK(read(c, counts, 1) == 5);
}

TEST_CASE("wait_for times out with false and holds the lock again; notify with none waiting") {
    watchdog dog(30s);
    coproc::condition c;
    auto g = c.get_lock().scoped();
    c.notify(); // nobody waits: lost, as in Python
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(c.wait_for(g, 100ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
    CHECK(g.owns_lock());
    CHECK(c.get_lock().locked());
}

TEST_CASE("wait_for returns true when a child notifies in time") {
    watchdog dog(30s);
    coproc::condition c;
    auto g = c.get_lock().scoped();
    coproc::process p(notify_after, c, 200);
    p.start();
    CHECK(c.wait_for(g, 10s));
    CHECK(g.owns_lock());
    g.release();
    p.join();
}

TEST_CASE("misuse throws coproc::error: notify without the lock, wait with another lock") {
    coproc::condition c;
    CHECK_THROWS_AS(c.notify(), coproc::error);
    CHECK_THROWS_AS(c.notify_all(), coproc::error);
    coproc::lock other;
    auto g = other.scoped();
    CHECK_THROWS_AS(c.wait_for(g, 10ms), coproc::error);
    CHECK(g.owns_lock());
    coproc::lock shared;
    coproc::condition over(shared);
    CHECK_FALSE(shared.locked());
    auto g2 = over.get_lock().scoped();
    CHECK(shared.locked());
}

COPROC_TEST_CASE("async_wait: woken by a child's notify_all while the loop runs") {
    coproc::condition c;
    auto g = co_await c.get_lock().async_scoped();
    coproc::process p(notify_after, c, 1000);
    p.start();
    coproc::test::progress pr;
    asio::co_spawn(io, wait_async(c, &g, &pr), asio::detached);
    co_await coproc::test::tick_until(io, pr, 1);
    CHECK(pr.done == 1);
    CHECK(pr.ticks_before_first >= 20);
    CHECK(g.owns_lock());
    g.release();
    co_await p.async_join();
}

TEST_CASE("a cancelled async_wait holds nothing; a notification it took goes to another waiter") {
    watchdog dog(30s);
    coproc::condition c;
    coproc::array<int> counts(2);
    asio::io_context io;
    auto g = c.get_lock().scoped();
    std::chrono::steady_clock::duration took{};
    auto o = coproc::test::start_and_cancel(
        io,
        [&](auto token) {
            c.async_wait(g, token);
            CHECK_FALSE(g.owns_lock()); // released while waiting
        },
        took);
    CHECK(o.aborted());
    CHECK(took < 1s);
    CHECK_FALSE(g.owns_lock());
    CHECK_FALSE(c.get_lock().locked());
    // A child waits; our notify reaches it (the cancelled waiter is not counted any more).
    coproc::process p(wait_once, c, counts);
    p.start();
    until_waiting(c, counts, 1);
    {
        auto n = c.get_lock().scoped();
        c.notify();
    }
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(read(c, counts, 1) == 1);
}

TEST_SUITE_END();
