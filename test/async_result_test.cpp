// Test that header file is self-contained.
#include "tasks.hpp"
#include "test_util.hpp"
#include <coproc/async_result.hpp>
#include <coproc/pool.hpp>

#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

int fail_at_2(int x) {
    if (x == 2)
        throw std::invalid_argument("two");
    return x;
}

/// What the callbacks of one call saw.
struct calls {
    std::mutex m;
    int values = 0;
    int errors = 0;
    std::vector<std::thread::id> threads;
    std::string error_what;
    bool was_ready = false; // ready() seen true inside a callback

    void saw(bool error, bool ready_now) {
        std::lock_guard lk(m);
        (error ? errors : values) += 1;
        threads.push_back(std::this_thread::get_id());
        was_ready = was_ready || ready_now;
    }
};

std::string what_of(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    }
}

/// Gives a callback access to the async_result its call returned: the callback waits until
/// the caller has stored it (a callback may run before apply_async returns).
template <class R> struct handle {
    std::atomic<coproc::async_result<R>*> p{nullptr};
    coproc::async_result<R>& get() {
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (!p.load() && std::chrono::steady_clock::now() < until)
            std::this_thread::yield();
        REQUIRE(p.load());
        return *p.load();
    }
};

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

} // namespace

TEST_SUITE_BEGIN("pool");

TEST_CASE("apply_async callback runs once, on the pool's loop thread, before ready()") {
    watchdog dog(30s);
    coproc::pool pool(2);
    calls c;
    int got = 0;
    handle<int> h;
    auto r = pool.apply_async(
        tasks::add, {20, 22},
        [&](int v) {
            got = v;
            c.saw(false, h.get().ready());
        },
        [&](std::exception_ptr) { c.saw(true, h.get().ready()); });
    h.p = &r;
    CHECK(r.get() == 42);
    CHECK(r.ready());
    CHECK(got == 42); // the callback finished before get() returned
    CHECK(pool.apply_async(tasks::add, {1, 1}).get() == 2); // give a double call time to show
    std::lock_guard lk(c.m);
    CHECK(c.values == 1);
    CHECK(c.errors == 0);
    CHECK_FALSE(c.was_ready);
    REQUIRE(c.threads.size() == 1);
    CHECK(c.threads[0] != std::this_thread::get_id());
}

TEST_CASE("apply_async error_callback runs once with the task's exception, before ready()") {
    watchdog dog(30s);
    coproc::pool pool(2);
    calls c;
    handle<int> h;
    auto r = pool.apply_async(
        fail_at_2, {2}, [&](int) { c.saw(false, h.get().ready()); },
        [&](std::exception_ptr e) {
            c.error_what = what_of(e);
            c.saw(true, h.get().ready());
        });
    h.p = &r;
    CHECK_THROWS_WITH_AS(r.get(), "two", std::invalid_argument);
    CHECK_FALSE(r.successful());
    CHECK(pool.apply_async(tasks::add, {1, 1}).get() == 2);
    std::lock_guard lk(c.m);
    CHECK(c.values == 0);
    CHECK(c.errors == 1);
    CHECK(c.error_what == "two");
    CHECK_FALSE(c.was_ready);
    REQUIRE(c.threads.size() == 1);
    CHECK(c.threads[0] != std::this_thread::get_id());
}

TEST_CASE("map_async and starmap_async callbacks run once on the loop thread") {
    watchdog dog(30s);
    coproc::pool pool(2);
    calls ok, bad, empty, star;
    std::vector<int> got;
    handle<std::vector<int>> hok, hbad, hempty, hstar;
    auto r1 = pool.map_async(
        tasks::square, std::vector<int>{1, 2, 3}, 1,
        [&](std::vector<int> v) {
            got = v;
            ok.saw(false, hok.get().ready());
        },
        [&](std::exception_ptr) { ok.saw(true, hok.get().ready()); });
    hok.p = &r1;
    auto r2 = pool.map_async(
        fail_at_2, std::vector<int>{1, 2, 3}, 1, [&](std::vector<int>) { bad.saw(false, false); },
        [&](std::exception_ptr e) {
            bad.error_what = what_of(e);
            bad.saw(true, hbad.get().ready());
        });
    hbad.p = &r2;
    auto r3 = pool.map_async(
        tasks::square, std::vector<int>{}, 0,
        [&](std::vector<int> v) { empty.saw(!v.empty(), hempty.get().ready()); },
        [&](std::exception_ptr) { empty.saw(true, false); });
    hempty.p = &r3;
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
    auto r4 = pool.starmap_async(
        tasks::add, pairs, 0,
        [&](std::vector<int> v) {
            star.saw(v != std::vector<int>{3, 7}, hstar.get().ready());
        },
        [&](std::exception_ptr) { star.saw(true, false); });
    hstar.p = &r4;
    CHECK(r1.get() == std::vector<int>{1, 4, 9});
    CHECK_THROWS_AS(r2.get(), std::invalid_argument);
    CHECK(r3.get().empty());
    CHECK(r4.get() == std::vector<int>{3, 7});
    CHECK(got == std::vector<int>{1, 4, 9});
    CHECK(pool.apply_async(tasks::add, {1, 1}).get() == 2);
    for (calls* c : {&ok, &empty, &star}) {
        std::lock_guard lk(c->m);
        CHECK(c->values == 1);
        CHECK(c->errors == 0);
        CHECK_FALSE(c->was_ready);
        REQUIRE(c->threads.size() == 1);
        CHECK(c->threads[0] != std::this_thread::get_id());
    }
    std::lock_guard lk(bad.m);
    CHECK(bad.values == 0);
    CHECK(bad.errors == 1);
    CHECK(bad.error_what == "two");
    CHECK_FALSE(bad.was_ready);
    REQUIRE(bad.threads.size() == 1);
    CHECK(bad.threads[0] != std::this_thread::get_id());
    // Every callback of this pool ran on the same thread: its loop thread.
    CHECK(ok.threads[0] == bad.threads[0]);
    CHECK(ok.threads[0] == empty.threads[0]);
    CHECK(ok.threads[0] == star.threads[0]);
}

COPROC_TEST_CASE("with the caller's io_context, callbacks run on the thread running it") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    int values = 0, errors = 0;
    bool on_loop = true;
    auto r1 = pool.apply_async(
        tasks::add, {1, 2},
        [&](int v) {
            values += v == 3;
            on_loop = on_loop && io.get_executor().running_in_this_thread();
        },
        [&](std::exception_ptr) { ++errors; });
    auto r2 = pool.map_async(
        fail_at_2, std::vector<int>{2}, 0, [&](std::vector<int>) { ++values; },
        [&](std::exception_ptr) {
            ++errors;
            on_loop = on_loop && io.get_executor().running_in_this_thread();
        });
    auto r3 = pool.map_async(tasks::square, std::vector<int>{}, 0, [&](std::vector<int>) {
        ++values;
        on_loop = on_loop && io.get_executor().running_in_this_thread();
    });
    CHECK(co_await r1.async_get() == 3);
    CHECK_THROWS_AS(co_await r2.async_get(), std::invalid_argument);
    CHECK((co_await r3.async_get()).empty());
    CHECK(values == 2);
    CHECK(errors == 1);
    CHECK(on_loop);
    pool.close();
    co_await pool.async_join();
}

TEST_CASE("blocking calls on the pool's own loop thread throw coproc::error, not deadlock") {
    watchdog dog(30s);
    coproc::pool pool(2);
    auto slow = pool.apply_async(tasks::sleep_ms, {300});
    std::atomic<int> refused{0};
    std::string message;
    auto fast = pool.apply_async(tasks::add, {1, 2}, [&](int) {
        try {
            slow.get();
        } catch (const coproc::error& e) {
            message = e.what();
            ++refused;
        }
        try {
            slow.wait();
        } catch (const coproc::error&) {
            ++refused;
        }
        try {
            (void)slow.wait_for(1s);
        } catch (const coproc::error&) {
            ++refused;
        }
        try {
            pool.join();
        } catch (const coproc::error&) {
            ++refused;
        }
    });
    CHECK(fast.get() == 3);
    CHECK(refused == 4);
    CHECK(message.find("deadlock") != std::string::npos);
    CHECK(slow.get() == 300);
}

COPROC_TEST_CASE("get() on the thread running the caller's io_context throws coproc::error") {
    coproc::pool pool(io.get_executor(), {.processes = 1});
    auto r = pool.apply_async(tasks::sleep_ms, {50});
    CHECK_THROWS_AS(r.get(), coproc::error);
    CHECK_THROWS_AS(r.wait(), coproc::error);
    CHECK(co_await r.async_get() == 50);
    CHECK(r.get() == 50); // ready: returns at once
    pool.close();
    co_await pool.async_join();
}

TEST_CASE("ready, successful, wait_for and get_for") {
    watchdog dog(30s);
    coproc::pool pool(2);
    auto slow = pool.apply_async(tasks::sleep_ms, {300});
    CHECK_FALSE(slow.ready());
    CHECK_THROWS_AS((void)slow.successful(), coproc::error);
    CHECK_FALSE(slow.wait_for(10ms));
    CHECK_THROWS_AS(slow.get_for(10ms), coproc::timeout_error);
    CHECK(slow.get_for(10s) == 300);
    CHECK(slow.ready());
    CHECK(slow.successful());
    CHECK(slow.wait_for(0ms));
    CHECK(slow.get() == 300); // get() again: the same value

    auto fails = pool.apply_async(fail_at_2, {2});
    fails.wait();
    CHECK(fails.ready());
    CHECK_FALSE(fails.successful());
    CHECK_THROWS_AS(fails.get_for(1s), std::invalid_argument);

    auto v = pool.apply_async(tasks::nothing);
    v.wait();
    CHECK(v.successful());
}

COPROC_TEST_CASE("several coroutines awaiting one async_result all resume") {
    coproc::pool pool(io.get_executor(), {.processes = 1});
    auto r = pool.apply_async(tasks::sleep_ms, {100});
    int done = 0, right = 0;
    for (int i = 0; i < 3; ++i)
        asio::co_spawn(
            io,
            [r, &right]() mutable -> asio::awaitable<void> {
                right += co_await r.async_get() == 100;
            },
            [&](std::exception_ptr) { ++done; });
    for (int i = 0; i < 500 && done < 3; ++i)
        co_await sleep_for(10ms);
    CHECK(done == 3);
    CHECK(right == 3);
    pool.close();
    co_await pool.async_join();
}

TEST_SUITE_END();
