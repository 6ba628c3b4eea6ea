// map, starmap and imap over inputs that throw, huge chunksizes, bool results written by
// several loop threads, many chunks per job, and replies with bytes left over.
#include <coproc/pool.hpp>
#include "../lib/sanitizers.hpp"
#include "tasks.hpp"
#include "test_util.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <list>
#include <optional>
#include <ranges>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;
using tasks::iota;
using tasks::squares;

namespace {

/// The ints 0..n-1, sized; its iterator throws std::out_of_range on reading item `bad`.
struct throwing_input {
    int n = 0;
    int bad = -1;

    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int bad = -1;
        int operator*() const {
            if (i == bad)
                throw std::out_of_range("cannot read item " + std::to_string(i));
            return i;
        }
        iterator& operator++() {
            ++i;
            return *this;
        }
        iterator operator++(int) {
            iterator old = *this;
            ++i;
            return old;
        }
        bool operator==(const iterator& o) const { return i == o.i; }
    };

    iterator begin() const { return {0, bad}; }
    iterator end() const { return {n, bad}; }
    std::size_t size() const { return static_cast<std::size_t>(n); }
};
static_assert(std::ranges::forward_range<throwing_input>);
static_assert(std::ranges::sized_range<throwing_input>);

/// An int whose save() throws std::domain_error for negative values.
struct unsendable {
    int x = 0;
    template <class Archive> void save(Archive& ar) const {
        if (x < 0)
            throw std::domain_error("cannot encode " + std::to_string(x));
        ar(x);
    }
    template <class Archive> void load(Archive& ar) { ar(x); }
};

int unwrap(unsendable u) { return u.x; }
int add_unwrapped(unsendable a, int b) { return a.x + b; }

/// 0..n-1 with item `bad` unsendable.
std::vector<unsendable> with_unsendable(int n, int bad) {
    std::vector<unsendable> v;
    for (int i = 0; i < n; ++i)
        v.push_back({i == bad ? -1 : i});
    return v;
}

int identity(int x) { return x; }
int fail_at_2(int x) {
    if (x == 2)
        throw std::invalid_argument("two");
    return x;
}
int fail_at_15000(int x) {
    if (x == 15'000)
        throw std::invalid_argument("15000");
    return x;
}
bool is_odd(int x) { return x % 2 != 0; }
/// The worker's pid, after 100 ms.
int sleepy_pid(int) {
    std::this_thread::sleep_for(100ms);
    return static_cast<int>(::getpid());
}

/// A result whose save() writes more than its load() reads.
struct short_read {
    int x = 0;
    template <class Archive> void save(Archive& ar) const { ar(x, std::string("extra")); }
    template <class Archive> void load(Archive& ar) { ar(x); }
};
short_read make_short_read(int x) { return {x}; }

/// Drains `g`: the values before an error, the error's type ("out_of_range", "domain_error"
/// or "other"; empty if none), and whether next() then ends the sequence.
struct drained {
    std::vector<int> values;
    std::string error;
    bool ended_after = false;
};
asio::awaitable<drained> drain(coproc::async_generator<int> g) {
    drained d;
    try {
        while (auto v = co_await g.next())
            d.values.push_back(*v);
        co_return d;
    } catch (const std::out_of_range&) {
        d.error = "out_of_range";
    } catch (const std::domain_error&) {
        d.error = "domain_error";
    } catch (...) {
        d.error = "other";
    }
    d.ended_after = !(co_await g.next());
    co_return d;
}

double halve(double x) { return x / 2; }
std::int64_t cube(std::int64_t x) { return x * x * x; }
double weigh(long a, double b, short c) { return static_cast<double>(a) * b + c; }
long add_failing_at_2(long a, long b) {
    if (a == 2)
        throw std::invalid_argument("2");
    return a + b;
}

std::vector<int> sorted(std::vector<int> v) {
    std::sort(v.begin(), v.end());
    return v;
}

const std::vector<std::size_t> huge_chunksizes{SIZE_MAX, SIZE_MAX / 2};

} // namespace

TEST_SUITE_BEGIN("pool");

// ------------------------------------------------------------------ inputs that throw: map

TEST_CASE("map_async over an item whose save() throws fails with it and the pool still joins") {
    watchdog dog(30s);
    coproc::pool pool(2);
    // Item 2 is in the first window; item 9000 is reached by a later refill on the loop thread.
    for (int bad : {0, 2, 9000}) {
        CAPTURE(bad);
        auto r = pool.map_async(unwrap, with_unsendable(10'000, bad), 1);
        CHECK_THROWS_WITH_AS(r.get(), "cannot encode -1", std::domain_error);
        CHECK_FALSE(r.successful());
    }
    std::exception_ptr seen;
    auto r = pool.map_async(
        unwrap, with_unsendable(10, 2), 0, [](std::vector<int>) {},
        [&](std::exception_ptr e) { seen = e; });
    CHECK_THROWS_AS(r.get(), std::domain_error);
    CHECK(seen); // the error_callback ran before ready()
    CHECK(pool.map_async(tasks::square, iota(10)).get() == squares(10));
    pool.close();
    pool.join();
}

TEST_CASE("map_async over an input whose iterator throws fails with it and the pool still joins") {
    watchdog dog(30s);
    coproc::pool pool(2);
    for (int bad : {0, 2, 9000}) {
        CAPTURE(bad);
        auto r = pool.map_async(identity, throwing_input{10'000, bad}, 1);
        CHECK_THROWS_WITH_AS(r.get(), ("cannot read item " + std::to_string(bad)).c_str(),
                             std::out_of_range);
    }
    // An unsized input is read whole first: the same error, from the result.
    auto unsized = std::views::iota(0, 10) | std::views::filter([](int x) {
                       if (x == 3)
                           throw std::out_of_range("unsized");
                       return true;
                   });
    auto r = pool.map_async(identity, unsized);
    CHECK_THROWS_WITH_AS(r.get(), "unsized", std::out_of_range);
    auto s = pool.starmap_async(add_unwrapped,
                                std::vector<std::tuple<unsendable, int>>{{{1}, 1}, {{-1}, 2}});
    CHECK_THROWS_AS(s.get(), std::domain_error);
    pool.close();
    pool.join();
}

COPROC_TEST_CASE("an awaited map or starmap over a throwing input fails with its exception") {
    watchdog dog(30s);
    coproc::pool pool(io.get_executor(), {.processes = 2});
    CHECK_THROWS_AS(co_await pool.map(unwrap, with_unsendable(10, 2)), std::domain_error);
    CHECK_THROWS_AS(co_await pool.map(unwrap, with_unsendable(5'000, 4'000), 1), std::domain_error);
    const throwing_input bad_at_2{10, 2};
    const throwing_input bad_at_4000{5'000, 4'000};
    CHECK_THROWS_AS(co_await pool.map(identity, bad_at_2), std::out_of_range);
    CHECK_THROWS_AS(co_await pool.map(identity, bad_at_4000, 1), std::out_of_range);
    const std::vector<std::tuple<unsendable, int>> pairs{{{1}, 1}, {{2}, 2}, {{-1}, 3}};
    CHECK_THROWS_AS(co_await pool.starmap(add_unwrapped, pairs), std::domain_error);
    CHECK(co_await pool.map(tasks::square, iota(10)) == squares(10));
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("an imap over a throwing input lets the pool join") {
    watchdog dog(30s);
    coproc::pool pool(io.get_executor(), {.processes = 2});
    auto g = pool.imap(identity, throwing_input{10'000, 9'000});
    auto u = pool.imap_unordered(unwrap, with_unsendable(10, 3), 2);
    pool.close(); // both generators are still alive and unread
    const drained d = co_await drain(std::move(g));
    CHECK(d.values == iota(9'000));
    CHECK(d.error == "out_of_range");
    const drained e = co_await drain(std::move(u));
    CHECK(sorted(e.values) == iota(3));
    CHECK(e.error == "domain_error");
    co_await pool.async_join();
}

TEST_CASE("an imap over a throwing input that is never read lets a closed pool join") {
    watchdog dog(30s);
    coproc::pool pool(2);
    auto g = pool.imap(unwrap, with_unsendable(10, 5), 3);
    pool.close();
    pool.join();
}

// ------------------------------------------------------------------ inputs that throw: imap

COPROC_TEST_CASE("imap yields the results before a throwing item, then its exception, then ends") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (std::size_t chunksize : {1, 3}) {
        for (int bad : {0, 1, 5, 9}) {
            CAPTURE(chunksize);
            CAPTURE(bad);
            const throwing_input input{10, bad};
            auto g = pool.imap(identity, input, chunksize);
            const drained d = co_await drain(std::move(g));
            CHECK(d.values == iota(bad));
            CHECK(d.error == "out_of_range");
            CHECK(d.ended_after);

            auto gs = pool.imap(unwrap, with_unsendable(10, bad), chunksize);
            const drained s = co_await drain(std::move(gs));
            CHECK(s.values == iota(bad));
            CHECK(s.error == "domain_error");
            CHECK(s.ended_after);

            // A lazy view whose transform throws.
            auto lazy = std::views::iota(0, 10) | std::views::transform([bad](int x) {
                            if (x == bad)
                                throw std::out_of_range("lazy");
                            return x;
                        });
            auto gl = pool.imap(identity, lazy, chunksize);
            const drained l = co_await drain(std::move(gl));
            CHECK(l.values == iota(bad));
            CHECK(l.error == "out_of_range");
            CHECK(l.ended_after);
        }
    }
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("imap_unordered yields every result before a throwing item, then its exception") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (std::size_t chunksize : {1, 3}) {
        for (int bad : {0, 1, 5, 9}) {
            CAPTURE(chunksize);
            CAPTURE(bad);
            const throwing_input input{10, bad};
            auto g = pool.imap_unordered(tasks::late_first, input, chunksize);
            const drained d = co_await drain(std::move(g));
            CHECK(sorted(d.values) == iota(bad));
            CHECK(d.error == "out_of_range");
            CHECK(d.ended_after);

            auto gs = pool.imap_unordered(unwrap, with_unsendable(10, bad), chunksize);
            const drained s = co_await drain(std::move(gs));
            CHECK(sorted(s.values) == iota(bad));
            CHECK(s.error == "domain_error");
            CHECK(s.ended_after);
        }
    }
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("a task error before a throwing item comes at its position and imap goes on") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const throwing_input input{10, 6};
    auto g = pool.imap(fail_at_2, input);
    std::vector<int> got;
    std::vector<std::string> errors;
    for (;;) {
        try {
            auto v = co_await g.next();
            if (!v)
                break;
            got.push_back(*v);
        } catch (const std::invalid_argument&) {
            errors.push_back("task at " + std::to_string(got.size()));
        } catch (const std::out_of_range&) {
            errors.push_back("input at " + std::to_string(got.size()));
        }
    }
    CHECK(got == std::vector<int>{0, 1, 3, 4, 5});
    CHECK(errors == std::vector<std::string>{"task at 2", "input at 5"});
    pool.close();
    co_await pool.async_join();
}

// ------------------------------------------------------------------ chunksize overflow

TEST_CASE("map_async and starmap_async with a huge chunksize complete") {
    watchdog dog(30s);
    coproc::pool pool(2);
    const std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    for (std::size_t chunksize : huge_chunksizes) {
        CAPTURE(chunksize);
        CHECK(pool.map_async(tasks::square, iota(5), chunksize).get() == squares(5));
        CHECK(pool.starmap_async(tasks::add, pairs, chunksize).get() == std::vector<int>{3, 7, 11});
    }
    pool.close();
    pool.join();
}

COPROC_TEST_CASE("awaited map and starmap and imap with a huge chunksize complete") {
    watchdog dog(30s);
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    const std::vector<int> sums{3, 7, 11};
    for (std::size_t chunksize : huge_chunksizes) {
        CAPTURE(chunksize);
        CHECK(co_await pool.map(tasks::square, iota(5), chunksize) == squares(5));
        CHECK(co_await pool.starmap(tasks::add, pairs, chunksize) == sums);
        auto g = pool.imap(tasks::square, iota(5), chunksize);
        const drained d = co_await drain(std::move(g));
        CHECK(d.values == squares(5));
        CHECK(d.error.empty());
        auto gu = pool.imap_unordered(tasks::square, iota(5), chunksize);
        const drained u = co_await drain(std::move(gu));
        CHECK(sorted(u.values) == squares(5));
    }
    pool.close();
    co_await pool.async_join();
}

// ------------------------------------------------------------------ bool results

TEST_CASE("map of bool results on a loop run by 4 threads gets every result right") {
    watchdog dog(120s);
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    // Made before the loop's threads start: its fork must not catch one mid-start-up.
    std::optional<coproc::pool> made;
    made.emplace(io.get_executor(), coproc::pool_options{.processes = 4});
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] { io.run(); });
    {
        coproc::pool& pool = *made;
        // Under a sanitizer the full run is too slow; ThreadSanitizer flags a race in one map.
#if COPROC_TSAN || COPROC_ASAN
        const std::vector<int> v = iota(20'000);
        const int rounds = 3;
#else
        const std::vector<int> v = iota(200'000);
        const int rounds = 48;
#endif
        for (int round = 0; round < rounds; ++round) {
            const std::size_t chunksize = 1 + round % 3;
            CAPTURE(chunksize);
            const std::vector<bool> got = pool.map_async(is_odd, v, chunksize).get();
            REQUIRE(got.size() == v.size());
            std::size_t wrong = 0;
            for (std::size_t i = 0; i < v.size(); ++i)
                wrong += got[i] != (i % 2 == 1);
            CHECK(wrong == 0);
        }
        pool.close();
        pool.join();
        made.reset();
    }
    guard.reset();
    for (auto& t : threads)
        t.join();
}

// ------------------------------------------------------------------ numbers

// A map over a random-access range of numbers writes each chunk's items in one pass, and
// results that are numbers are read in one copy; any other range goes item by item. Both must
// give what the task gives for each item, converted to its parameter type as one item would be.
COPROC_TEST_CASE("a map over numbers gives every result, from every kind of range and chunking") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (const int n : {0, 1, 10, 1001}) {
        const std::vector<int> ints = iota(n);
        std::vector<std::int64_t> cubes;
        std::vector<double> halves;
        for (const int x : ints) {
            cubes.push_back(std::int64_t{x} * x * x);
            halves.push_back(x / 2.0);
        }
        const std::list<int> list(ints.begin(), ints.end());
        const std::vector<short> shorts(ints.begin(), ints.end());
        for (const std::size_t chunksize :
             {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000}, SIZE_MAX}) {
            CAPTURE(n);
            CAPTURE(chunksize);
            CHECK(co_await pool.map(cube, ints, chunksize) == cubes); // int -> int64 parameter
            CHECK(co_await pool.map(cube, list, chunksize) == cubes); // item by item
            CHECK(co_await pool.map(cube, shorts, chunksize) == cubes);
            CHECK(co_await pool.map(halve, ints, chunksize) == halves); // int -> double
            CHECK(co_await pool.map(halve, list, chunksize) == halves);
            auto view = std::views::iota(0, n) | std::views::transform([](int x) { return x; });
            CHECK(co_await pool.map(cube, view, chunksize) == cubes);
            const std::span<const int> span(ints);
            CHECK(co_await pool.map(cube, span, chunksize) == cubes);
            std::vector<std::int64_t> got;
            auto g = pool.imap(cube, ints, chunksize == 0 ? 1 : chunksize);
            while (auto v = co_await g.next())
                got.push_back(*v);
            CHECK(got == cubes);
            if (n > 2) // a task throwing on item 2 of a chunk of numbers fails the map with it
                CHECK_THROWS_AS(co_await pool.map(fail_at_2, ints, chunksize),
                                std::invalid_argument);
        }
    }
    pool.close();
    co_await pool.async_join();
}

// A starmap over a random-access range of tuples (pairs, arrays) of numbers into a function of
// numbers writes each chunk in one pass, and the worker reads its arguments in place; any other
// range goes item by item. Both must give what the task gives for each item, each number
// converted to its parameter's type as one item would be.
COPROC_TEST_CASE("a starmap over numbers gives every result, from every kind of range and "
                 "chunking") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (const int n : {0, 1, 10, 1001}) {
        std::vector<std::tuple<int, float, int>> tuples;
        std::vector<std::array<short, 3>> arrays;
        std::vector<std::pair<long, long>> pairs;
        std::vector<double> weighed, weighed_arrays;
        for (int i = 0; i < n; ++i) {
            tuples.emplace_back(i, 0.5f * static_cast<float>(i), -i);
            weighed.push_back(weigh(i, 0.5f * static_cast<float>(i), static_cast<short>(-i)));
            arrays.push_back({static_cast<short>(i), 3, 7});
            weighed_arrays.push_back(weigh(i, 3, 7));
            pairs.emplace_back(i, 10);
        }
        const std::list<std::tuple<int, float, int>> tuple_list(tuples.begin(), tuples.end());
        const std::list<std::array<short, 3>> array_list(arrays.begin(), arrays.end());
        for (const std::size_t chunksize :
             {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000}, SIZE_MAX}) {
            CAPTURE(n);
            CAPTURE(chunksize);
            CHECK(co_await pool.starmap(weigh, tuples, chunksize) == weighed); // in one pass
            CHECK(co_await pool.starmap(weigh, tuple_list, chunksize) == weighed);
            CHECK(co_await pool.starmap(weigh, arrays, chunksize) == weighed_arrays);
            CHECK(co_await pool.starmap(weigh, array_list, chunksize) == weighed_arrays);
            if (n > 2) // a task throwing on item 2 of a chunk of numbers fails the starmap
                CHECK_THROWS_WITH_AS(co_await pool.starmap(add_failing_at_2, pairs, chunksize), "2",
                                     std::invalid_argument);
        }
    }
    const short three = 3;
    CHECK(co_await pool.apply(weigh, 2L, 1.5, three) == 6.0); // one task of numbers
    pool.close();
    co_await pool.async_join();
}

// Once a map has measured its items as short, a job carries many chunks
// (pool_core::chunks_per_job): each job's results must still land at its own items, whatever
// the path (numbers, strings, starmap's tuples), with a short last chunk and a failing item.
COPROC_TEST_CASE("a map of short items gives every result in order with many chunks per job") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const int n = 20'011; // no chunksize divides it
    const std::vector<int> ints = iota(n);
    std::vector<std::int64_t> cubes;
    std::vector<std::string> words, shouted;
    std::vector<std::tuple<int, int>> pairs;
    std::vector<int> sums;
    for (const int x : ints) {
        cubes.push_back(std::int64_t{x} * x * x);
        words.push_back("w" + std::to_string(x));
        shouted.push_back("W" + std::to_string(x) + "!");
        pairs.emplace_back(x, 1);
        sums.push_back(x + 1);
    }
    const std::list<int> list(ints.begin(), ints.end());
    for (const std::size_t chunksize : {std::size_t{1}, std::size_t{3}, std::size_t{7}}) {
        CAPTURE(chunksize);
        CHECK(co_await pool.map(cube, ints, chunksize) == cubes); // numbers in one pass
        CHECK(co_await pool.map(cube, list, chunksize) == cubes); // item by item
        CHECK(co_await pool.map(tasks::shout, words, chunksize) == shouted);
        CHECK(co_await pool.starmap(tasks::add, pairs, chunksize) == sums);
        const throwing_input bad_late{n, n - 5};
        CHECK_THROWS_WITH_AS(co_await pool.map(identity, bad_late, chunksize),
                             ("cannot read item " + std::to_string(n - 5)).c_str(),
                             std::out_of_range);
        CHECK_THROWS_WITH_AS(co_await pool.map(fail_at_15000, ints, chunksize), "15000",
                             std::invalid_argument);
    }
    pool.close();
    co_await pool.async_join();
}

// Each map measures its own items: short tasks run before do not make a map of slow items
// put several of them in one job (its first jobs are one chunk each).
COPROC_TEST_CASE("a few slow items mapped after many short ones still spread over the workers") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    CHECK(co_await pool.map(tasks::square, iota(20'000), 1) == squares(20'000));
    const std::vector<int> pids = co_await pool.map(sleepy_pid, iota(4), 1);
    CHECK(std::set<int>(pids.begin(), pids.end()).size() == 2);
    pool.close();
    co_await pool.async_join();
}

TEST_CASE("numbers read in one copy must fill the reply exactly") {
    const std::vector<std::int64_t> sent{1, -2, 3};
    std::vector<char> bytes(sent.size() * sizeof(std::int64_t));
    std::memcpy(bytes.data(), sent.data(), bytes.size());
    std::vector<std::int64_t> got(3);
    coproc::detail::read_numbers(std::span<const char>(bytes), std::span(got));
    CHECK(got == sent);
    std::vector<std::int64_t> two(2), four(4);
    CHECK_THROWS_WITH_AS(coproc::detail::read_numbers(std::span<const char>(bytes), std::span(two)),
                         "malformed reply: 24 bytes for 2 numbers of 8 bytes", coproc::error);
    CHECK_THROWS_WITH_AS(
        coproc::detail::read_numbers(std::span<const char>(bytes), std::span(four)),
        "malformed reply: 24 bytes for 4 numbers of 8 bytes", coproc::error);
    std::vector<std::int64_t> none;
    coproc::detail::read_numbers(std::span<const char>(), std::span(none));
    CHECK(none.empty());
}

// ------------------------------------------------------------------ malformed replies

COPROC_TEST_CASE("a map reply with bytes left after its results fails the call") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (std::size_t chunksize : {1, 3}) {
        CAPTURE(chunksize);
        CHECK_THROWS_WITH_AS(co_await pool.map(make_short_read, iota(10), chunksize),
                             doctest::Contains("could not be decoded"), coproc::error);
    }
    CHECK(co_await pool.map(tasks::square, iota(10)) == squares(10));
    pool.close();
    co_await pool.async_join();
}

TEST_SUITE_END();
