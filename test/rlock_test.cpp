// Test that header file is self-contained.
#include <coproc/pipe.hpp>
#include <coproc/process.hpp>
#include <coproc/rlock.hpp>
#include "sync_test_util.hpp"

#include <chrono>
#include <csignal>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

// Exit status 0 if the rlock could not be taken, nor released, by this process.
void cannot_take(coproc::rlock r) {
    if (r.try_acquire())
        _exit(1);
    try {
        r.release();
        _exit(2);
    } catch (const coproc::error&) {
    }
    _exit(r.acquire_for(50ms) ? 3 : 0);
}

void hold_forever(coproc::rlock r, coproc::connection<int> ready) {
    r.acquire();
    r.acquire();
    ready.send(1);
    for (;;)
        pause();
}

} // namespace

TEST_SUITE_BEGIN("rlock");

TEST_CASE("re-entry: the holder acquires again; another process gets it only when fully released") {
    watchdog dog(30s);
    coproc::rlock r;
    CHECK_FALSE(r.locked());
    r.acquire();
    CHECK(r.try_acquire());
    CHECK(r.acquire_for(10ms));
    CHECK(r.locked());
    r.release();
    r.release();
    coproc::process p(cannot_take, r);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    r.release();
    CHECK_FALSE(r.locked());
    CHECK_THROWS_AS(r.release(), coproc::error);
    {
        auto g = r.scoped();
        auto g2 = r.scoped();
        CHECK(g2.owns_lock());
    }
    CHECK_FALSE(r.locked());
}

TEST_CASE("release by a thread that does not hold it throws") {
    watchdog dog(30s);
    coproc::rlock r;
    r.acquire();
    bool threw = false, took = true;
    std::thread t([&] {
        try {
            r.release();
        } catch (const coproc::error&) {
            threw = true;
        }
        took = r.try_acquire();
    });
    t.join();
    CHECK(threw);
    CHECK_FALSE(took);
    r.release();
}

TEST_CASE("a holder killed holding it twice: the next acquirer gets owner_died, count one") {
    watchdog dog(30s);
    coproc::rlock r;
    auto [rx, tx] = coproc::pipe<int>(false);
    coproc::process p(hold_forever, r, tx);
    p.start();
    CHECK(rx.recv() == 1);
    p.kill();
    CHECK_THROWS_AS(r.acquire(), coproc::owner_died);
    CHECK(r.locked());
    r.release(); // one level, not the dead holder's two
    CHECK_FALSE(r.locked());
    p.join();
}

COPROC_TEST_CASE("async_acquire re-enters for the thread that holds it; async_scoped guards") {
    coproc::rlock r;
    co_await r.async_acquire();
    co_await r.async_acquire();
    {
        auto g = co_await r.async_scoped();
        CHECK(g.owns_lock());
    }
    r.release();
    CHECK(r.locked());
    r.release();
    CHECK_FALSE(r.locked());
}

TEST_CASE("a cancelled async_acquire never holds the rlock") {
    watchdog dog(30s);
    coproc::rlock r;
    r.acquire();
    asio::io_context io;
    bool cancelled = false;
    std::thread other([&] { // another thread: it must wait, then be cancelled
        std::chrono::steady_clock::duration took{};
        auto o = coproc::test::start_and_cancel(
            io, [&](auto token) { r.async_acquire(token); }, took);
        cancelled = o.aborted();
    });
    other.join();
    CHECK(cancelled);
    r.release();
    CHECK_FALSE(r.locked());
}

TEST_SUITE_END();
