// Test that header file is self-contained.
#include <coproc/lock.hpp>
#include <coproc/pipe.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include "sync_test_util.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <set>
#include <sstream>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

/// An int in memory shared with children forked afterwards.
int* shared_int() {
    void* p = mmap(nullptr, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return static_cast<int*>(p);
}

void write_str(int fd, const std::string& s) {
    REQUIRE(write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size()));
}

// The seed: def f(l, i): l.acquire(); try: print('hello world', i) finally: l.release()
// Written piecewise, with pauses, so that unlocked writers would interleave.
void hello(coproc::lock l, int i, int out) {
    l.acquire();
    write_str(out, "hello ");
    std::this_thread::sleep_for(1ms);
    write_str(out, "world ");
    write_str(out, std::to_string(i) + "\n");
    l.release();
}

void count_up(coproc::lock l, int* counter, int n) {
    for (int i = 0; i < n; ++i) {
        auto g = l.scoped();
        volatile int* c = counter;
        *c = *c + 1;
    }
}

// Takes the lock, tells the parent, holds it for `ms`, releases it.
void hold_for(coproc::lock l, coproc::connection<int> ready, int ms) {
    l.acquire();
    ready.send(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    l.release();
}

// Takes the lock, tells the parent, and never lets go.
void hold_forever(coproc::lock l, coproc::connection<int> ready) {
    l.acquire();
    ready.send(1);
    for (;;)
        pause();
}

// Uses the lock (caching its pid), then starts a grandchild that takes the lock and is killed:
// the grandchild must have held it under its own pid, not this process's cached one.
void grandchild_dies_holding(coproc::lock l) {
    if (!l.try_acquire())
        _exit(2);
    l.release();
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_forever, l, w);
    p.start();
    if (r.recv() != 1)
        _exit(3);
    p.kill();
    p.join();
    try {
        l.acquire();
    } catch (const coproc::owner_died&) {
        l.release();
        _exit(0);
    }
    _exit(4); // the lock looked held by this process or free: the grandchild's pid was wrong
}

struct progress {
    int done = 0;
    int ticks = 0;
    int ticks_before_first = -1;
};

asio::awaitable<void> take_and_count(coproc::lock l, progress* p) {
    co_await l.async_acquire();
    if (p->done++ == 0)
        p->ticks_before_first = p->ticks;
    l.release();
}

bool try_in_worker(coproc::lock l) {
    if (!l.try_acquire())
        return false;
    l.release();
    return true;
}

} // namespace

TEST_SUITE_BEGIN("lock");

TEST_CASE("the seed: 10 processes print hello world under the lock, lines whole") {
    watchdog dog(30s);
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    coproc::lock lock;
    std::vector<coproc::process> procs;
    for (int num = 0; num < 10; ++num)
        procs.emplace_back(hello, lock, num, fds[1]);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    close(fds[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
        out.append(buf, static_cast<std::size_t>(n));
    close(fds[0]);
    std::istringstream lines(out);
    std::set<int> seen;
    int count = 0;
    for (std::string line; std::getline(lines, line); ++count) {
        REQUIRE_MESSAGE(line.rfind("hello world ", 0) == 0, "torn line: " << line);
        const std::string num = line.substr(12);
        REQUIRE(num.find_first_not_of("0123456789") == std::string::npos);
        seen.insert(std::stoi(num));
    }
    CHECK(count == 10);
    CHECK(seen.size() == 10);
}

TEST_CASE("4 processes x 100k increments under the lock give the exact total") {
    watchdog dog(120s);
    int* counter = shared_int();
    coproc::lock lock;
    std::vector<coproc::process> procs;
    for (int i = 0; i < 4; ++i)
        procs.emplace_back(count_up, lock, counter, 100'000);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs)
        p.join();
    CHECK(*counter == 400'000);
    munmap(counter, sizeof(int));
}

TEST_CASE("try_acquire, acquire_for, release and scoped in one process") {
    watchdog dog(10s);
    coproc::lock l;
    CHECK(l.try_acquire());
    CHECK_FALSE(l.try_acquire());
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(l.acquire_for(50ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    l.release();
    CHECK_THROWS_AS(l.release(), coproc::error);
    CHECK(l.acquire_for(1s));
    l.release();
    {
        auto g = l.scoped();
        CHECK(g.owns_lock());
        CHECK_FALSE(l.try_acquire());
        auto moved = std::move(g);
        CHECK_FALSE(g.owns_lock());
        moved.release();
        CHECK_FALSE(moved.owns_lock());
        CHECK(l.try_acquire());
        l.release();
    }
    { auto g = l.scoped(); }
    CHECK(l.try_acquire());
    l.release();
}

TEST_CASE("acquire_for times out while another process holds the lock, then succeeds") {
    watchdog dog(30s);
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 300);
    p.start();
    CHECK(r.recv() == 1);
    CHECK_FALSE(l.try_acquire());
    CHECK_FALSE(l.acquire_for(50ms));
    CHECK(l.acquire_for(10s));
    l.release();
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("a holder killed with SIGKILL: the next acquirer gets owner_died and holds the lock") {
    watchdog dog(30s);
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_forever, l, w);
    p.start();
    CHECK(r.recv() == 1);
    p.kill();
    // Not joined yet: a zombie holder counts as dead too.
    CHECK_THROWS_AS(l.acquire(), coproc::owner_died);
    CHECK_FALSE(l.try_acquire()); // we hold it now
    l.release();
    CHECK(l.try_acquire()); // reported once: the lock is an ordinary lock again
    l.release();
    p.join();
    CHECK(p.exitcode() == -SIGKILL);
}

TEST_CASE("try_acquire and acquire_for report a dead holder too") {
    watchdog dog(30s);
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_forever, l, w);
    p.start();
    CHECK(r.recv() == 1);
    p.kill();
    p.join();
    CHECK_THROWS_AS(l.try_acquire(), coproc::owner_died);
    l.release();
    coproc::process q(hold_forever, l, w);
    q.start();
    CHECK(r.recv() == 1);
    q.kill();
    CHECK_THROWS_AS(l.acquire_for(10s), coproc::owner_died);
    l.release();
    q.join();
}

TEST_CASE("each forked process holds the lock under its own pid, grandchildren too") {
    watchdog dog(30s);
    coproc::lock l;
    l.acquire(); // the parent's pid is cached before the fork
    l.release();
    coproc::process p(grandchild_dies_holding, l);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(l.try_acquire());
    l.release();
}

COPROC_TEST_CASE("1000 coroutines async_acquire while another process holds it; the loop runs") {
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 1000);
    p.start();
    CHECK(co_await r.async_recv() == 1);
    progress pr;
    for (int i = 0; i < 1000; ++i)
        asio::co_spawn(io, take_and_count(l, &pr), asio::detached);
    asio::steady_timer t(io);
    for (int i = 0; i < 2000 && pr.done < 1000; ++i) {
        t.expires_after(5ms);
        co_await t.async_wait(asio::use_awaitable);
        ++pr.ticks;
    }
    CHECK(pr.done == 1000);
    CHECK(pr.ticks_before_first >=
          20); // the loop kept running (ideally 200 ticks) while the child held the lock
    co_await p.async_join();
    CHECK(p.exitcode() == 0);
}

COPROC_TEST_CASE("async_scoped gives a guard; a free lock is taken at once") {
    coproc::lock l;
    {
        auto g = co_await l.async_scoped();
        CHECK(g.owns_lock());
        CHECK_FALSE(l.try_acquire());
    }
    CHECK(l.try_acquire());
    l.release();
}

TEST_CASE("a lock made before the pool is the same lock in its workers") {
    watchdog dog(60s);
    coproc::lock l;
    coproc::pool pool(1);
    l.acquire();
    CHECK_FALSE(pool.apply_async(try_in_worker, {l}).get());
    l.release();
    CHECK(pool.apply_async(try_in_worker, {l}).get());
    coproc::lock late;
    try {
        pool.apply_async(try_in_worker, {late}).get();
        FAIL("a lock made after the pool reached a worker");
    } catch (const coproc::error& e) {
        CHECK(std::string(e.what()).find("create it before the pool") != std::string::npos);
    }
}

TEST_CASE("locked() tells whether anyone holds the lock") {
    watchdog dog(30s);
    coproc::lock l;
    CHECK_FALSE(l.locked());
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 200);
    p.start();
    CHECK(r.recv() == 1);
    CHECK(l.locked());
    p.join();
    CHECK_FALSE(l.locked());
    l.acquire();
    CHECK(l.locked());
    l.release();
}

TEST_CASE("a cancelled async_acquire never holds the lock and leaves no helper thread") {
    watchdog dog(30s);
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 2000);
    p.start();
    CHECK(r.recv() == 1);
    asio::io_context io;
    const int threads = coproc::test::thread_count();
    std::chrono::steady_clock::duration took{};
    auto o = coproc::test::start_and_cancel(
        io, [&](auto token) { l.async_acquire(token); }, took);
    CHECK(o.aborted());
    CHECK(took < 1s); // at once, not when the child lets go
    CHECK(coproc::test::settle_threads(threads) == threads);
    p.join();
    CHECK_FALSE(l.locked()); // the cancelled acquire did not take it after the child released
    CHECK(l.try_acquire());
    l.release();
}

TEST_CASE("cancelling async_acquire many times while another process holds and releases") {
    watchdog dog(60s);
    coproc::lock l;
    asio::io_context io;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 300);
    p.start();
    CHECK(r.recv() == 1);
    int aborted = 0, acquired = 0;
    // Race cancellations against the release: each op either acquires (then releases) or is
    // aborted holding nothing.
    for (int i = 0; i < 200; ++i) {
        asio::cancellation_signal sig;
        coproc::test::outcome o;
        l.async_acquire(asio::bind_executor(io, coproc::test::recording(o, sig)));
        io.restart();
        io.run_for(std::chrono::milliseconds(i % 5));
        sig.emit(asio::cancellation_type::terminal);
        coproc::test::run_until_done(io, o, 2000ms);
        REQUIRE(o.done);
        if (o.error) {
            CHECK(o.aborted());
            ++aborted;
        } else {
            ++acquired;
            l.release();
        }
    }
    p.join();
    CHECK(aborted + acquired == 200);
    CHECK_FALSE(l.locked());
}

TEST_CASE("async_acquire takes any completion token") {
    watchdog dog(30s);
    coproc::lock l;
    asio::io_context io;
    auto work = asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });
    auto f = l.async_acquire(asio::bind_executor(io, asio::use_future));
    f.get();
    CHECK(l.locked());
    auto second = l.async_acquire(asio::bind_executor(io, asio::use_future));
    CHECK(second.wait_for(50ms) == std::future_status::timeout);
    l.release();
    second.get(); // the parked one got it
    l.release();
    std::promise<bool> got;
    l.async_scoped(asio::bind_executor(io, [&](std::exception_ptr e, coproc::lock_guard g) {
        got.set_value(!e && g.owns_lock());
    }));
    CHECK(got.get_future().get());
    for (int i = 0; i < 500 && l.locked(); ++i) // the guard goes when the handler returns
        std::this_thread::sleep_for(1ms);
    CHECK_FALSE(l.locked());
    auto op = l.async_acquire(asio::experimental::deferred);
    CHECK_FALSE(l.locked()); // deferred: nothing until it is started
    std::move(op)(asio::bind_executor(io, asio::use_future)).get();
    CHECK(l.locked());
    l.release();
    auto t = asio::co_spawn(
        io,
        [l]() mutable -> asio::awaitable<bool> {
            auto [e, g] =
                co_await l.async_scoped(asio::experimental::as_tuple(asio::use_awaitable));
            co_return !e && g.owns_lock();
        },
        asio::use_future);
    CHECK(t.get());
    work.reset();
    loop.join();
}

COPROC_TEST_CASE("async_acquire || a timer: the timer wins while another process holds it") {
    using namespace asio::experimental::awaitable_operators;
    coproc::lock l;
    auto [r, w] = coproc::pipe<int>(false);
    coproc::process p(hold_for, l, w, 500);
    p.start();
    CHECK(co_await r.async_recv() == 1);
    asio::steady_timer t(io);
    t.expires_after(100ms);
    auto acquire = l.async_acquire();
    auto timeout = t.async_wait(asio::use_awaitable);
    auto which = co_await (std::move(acquire) || std::move(timeout));
    CHECK(which.index() == 1);
    co_await p.async_join();
    CHECK_FALSE(l.locked());
}

TEST_SUITE_END();
