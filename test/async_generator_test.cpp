// Test that header file is self-contained.
#include <coproc/async_generator.hpp>
#include <coproc/pool.hpp>
#include "tasks.hpp"
#include "test_util.hpp"

#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tasks::point;

namespace {

using tasks::iota;
using tasks::squares;

template <class T> asio::awaitable<std::vector<T>> drain(coproc::async_generator<T> g) {
    std::vector<T> out;
    while (auto v = co_await g.next())
        out.push_back(std::move(*v));
    co_return out;
}

int fail_at_5(int x) {
    if (x == 5)
        throw std::invalid_argument("five");
    return x;
}

int slow_square(int x) {
    std::this_thread::sleep_for(2ms);
    return x * x;
}

std::atomic<int> pulled{0};
int count_pull(int x) {
    ++pulled;
    return x;
}

} // namespace

TEST_SUITE_BEGIN("pool");

COPROC_TEST_CASE("imap yields results in input order for every chunksize") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (std::size_t chunksize : {1, 3, 64, 1000}) {
        CAPTURE(chunksize);
        CHECK(co_await drain(pool.imap(tasks::square, iota(200), chunksize)) == squares(200));
    }
    // The first items finish last, yet come first.
    CHECK(co_await drain(pool.imap(tasks::late_first, iota(10))) == iota(10));
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("imap over strings, vectors and a user type") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    // (Braced lists are kept out of co_await expressions: g++ 12 rejects them there.)
    const std::vector<std::string> strings{"a", "bc"}, shouted{"A!", "BC!"};
    CHECK(co_await drain(pool.imap(tasks::shout, strings)) == shouted);
    const std::vector<std::vector<int>> vecs{{1, 2}, {}, {5}}, reversed{{2, 1}, {}, {5}};
    const std::vector<int> sums{3, 0, 5};
    CHECK(co_await drain(pool.imap(tasks::sum, vecs, 2)) == sums);
    CHECK(co_await drain(pool.imap(tasks::reversed, vecs)) == reversed);
    const std::vector<point> points{{1, 2, "p"}, {3, 4, "q"}}, flipped{{2, 1, "p'"}, {4, 3, "q'"}};
    CHECK(co_await drain(pool.imap(tasks::flip, points)) == flipped);
    auto unordered = co_await drain(pool.imap_unordered(tasks::flip, points));
    CHECK(unordered.size() == 2);
    CHECK(std::count(unordered.begin(), unordered.end(), point{2, 1, "p'"}) == 1);
    CHECK(std::count(unordered.begin(), unordered.end(), point{4, 3, "q'"}) == 1);
    CHECK((co_await drain(pool.imap(tasks::check_positive, iota(3)))).size() == 3);
}

COPROC_TEST_CASE("imap_unordered yields every result once, as they complete") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (std::size_t chunksize : {1, 3, 1000}) {
        CAPTURE(chunksize);
        auto got = co_await drain(pool.imap_unordered(tasks::square, iota(200), chunksize));
        std::multiset<int> a(got.begin(), got.end());
        const auto want = squares(200);
        CHECK(a == std::multiset<int>(want.begin(), want.end()));
    }
    // Item 0 takes 40 ms, the others none: it is not the first to come out.
    auto g = pool.imap_unordered(tasks::late_first, iota(10));
    auto first = co_await g.next();
    REQUIRE(first);
    CHECK(*first != 0);
    std::set<int> rest{*first};
    while (auto v = co_await g.next())
        rest.insert(*v);
    CHECK(rest == std::set<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("imap over an empty input ends at once") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const std::vector<int> none;
    auto g = pool.imap(tasks::square, none);
    CHECK_FALSE(co_await g.next());
    CHECK_FALSE(co_await g.next());
    auto u = pool.imap_unordered(tasks::square, none, 5);
    CHECK_FALSE(co_await u.next());
    CHECK_THROWS_AS((void)pool.imap(tasks::square, iota(3), 0), coproc::error);
}

COPROC_TEST_CASE("an imap error surfaces at its position and iteration goes on") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    auto g = pool.imap(fail_at_5, iota(10));
    std::vector<int> got;
    int errors = 0;
    for (;;) {
        try {
            auto v = co_await g.next();
            if (!v)
                break;
            got.push_back(*v);
        } catch (const std::invalid_argument& e) {
            CHECK(std::string(e.what()) == std::string("five"));
            CHECK(got.size() == 5); // after items 0..4, before 6
            ++errors;
        }
    }
    CHECK(errors == 1);
    CHECK(got == std::vector<int>{0, 1, 2, 3, 4, 6, 7, 8, 9});

    auto u = pool.imap_unordered(fail_at_5, iota(10));
    std::set<int> seen;
    errors = 0;
    for (;;) {
        try {
            auto v = co_await u.next();
            if (!v)
                break;
            seen.insert(*v);
        } catch (const std::invalid_argument&) {
            ++errors;
        }
    }
    CHECK(errors == 1);
    CHECK(seen == std::set<int>{0, 1, 2, 3, 4, 6, 7, 8, 9});
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("imap pulls its input lazily") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    pulled = 0;
    {
        auto g = pool.imap(tasks::square,
                           std::views::iota(0, 1'000'000) | std::views::transform(count_pull));
        for (int i = 0; i < 3; ++i)
            CHECK(co_await g.next() == i * i);
        CHECK(pulled > 0);
        CHECK(pulled < 5'000);
    }
    CHECK(co_await pool.apply(tasks::add, 1, 2) == 3);
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("an imap destroyed early cancels the rest and the pool works on") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    {
        auto g = pool.imap(slow_square, iota(20'000));
        for (int i = 0; i < 5; ++i)
            CHECK(co_await g.next() == i * i);
    }
    {
        auto u = pool.imap_unordered(slow_square, iota(20'000), 2);
        CHECK(co_await u.next());
    }
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(co_await pool.map(tasks::square, iota(100)) == squares(100));
    CHECK(std::chrono::steady_clock::now() - t0 < 3s); // not behind 20'000 slow tasks
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("an imap destroyed early on a pool with its own loop") {
    coproc::pool pool(2);
    const auto here = std::this_thread::get_id();
    {
        auto g = pool.imap(slow_square, iota(20'000));
        for (int i = 0; i < 3; ++i) {
            CHECK(co_await g.next() == i * i);
            CHECK(std::this_thread::get_id() == here); // resumes on the awaiting executor
        }
    }
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(co_await pool.map(tasks::square, iota(50)) == squares(50));
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("a fast result is not held back by a slow task queued behind it") {
    // The one worker reads the four tasks together (one write), runs three at once and starts
    // the slow one: their results must not wait for it to end.
    coproc::pool pool(io.get_executor(), {.processes = 1});
    CHECK(co_await pool.map(tasks::square, iota(1000), 1) == squares(1000)); // known as fast
    const std::vector<int> waits{0, 0, 0, 20'000};
    auto g = pool.imap(tasks::sleep_ms, waits);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i)
        CHECK(co_await g.next() == 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
    pool.terminate();
    co_await pool.async_join();
}

COPROC_TEST_CASE("imap on a closed or terminated pool throws pool_closed") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const std::vector<int> waits{0, 10'000, 10'000, 10'000};
    auto g = pool.imap(tasks::sleep_ms, waits);
    CHECK(co_await g.next() == 0); // the others are in flight now
    pool.close();
    CHECK_THROWS_AS((void)pool.imap(tasks::square, iota(3)), coproc::pool_closed);
    pool.terminate();
    CHECK_THROWS_AS(co_await g.next(), coproc::pool_closed);
    co_await pool.async_join();
}

TEST_SUITE_END();

TEST_SUITE_BEGIN("pool");

TEST_CASE("blocking(): a plain thread iterates imap in order, the generator taken over") {
    coproc::test::watchdog dog(60s);
    coproc::pool pool(2);
    std::vector<int> xs(50);
    std::iota(xs.begin(), xs.end(), 0);
    std::vector<int> got;
    for (auto& v : pool.imap(tasks::square, xs, 3).blocking())
        got.push_back(v);
    std::vector<int> want;
    for (int x : xs)
        want.push_back(x * x);
    CHECK(got == want);
    auto unordered = pool.imap_unordered(tasks::square, xs);
    std::set<int> seen;
    for (int v : unordered.blocking()) // an lvalue: the range refers to it
        seen.insert(v);
    CHECK(seen.size() == xs.size());
}

TEST_CASE("blocking(): a task's exception reaches the loop at its position") {
    coproc::test::watchdog dog(60s);
    coproc::pool pool(2);
    std::vector<int> xs{1, 2, 3, 4, 5, 6, 7};
    std::vector<int> got;
    auto gen = pool.imap(fail_at_5, xs);
    auto range = gen.blocking();
    try {
        for (int v : range)
            got.push_back(v);
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()) == "five");
    }
    CHECK(got == std::vector<int>{1, 2, 3, 4});
}

TEST_CASE("blocking() on the pool's own loop thread throws coproc::error") {
    coproc::test::watchdog dog(60s);
    asio::io_context io;
    coproc::pool pool(io.get_executor(), {.processes = 1});
    std::vector<int> xs{1, 2, 3};
    std::string message;
    asio::post(io, [&] {
        try {
            for (int v : pool.imap(tasks::square, xs).blocking())
                static_cast<void>(v);
        } catch (const coproc::error& e) {
            message = e.what();
        }
    });
    io.run_for(5s);
    CHECK(message.find("would deadlock") != std::string::npos);
}

TEST_SUITE_END();
