// Test that header file is self-contained.
#include "tasks.hpp"
#include "test_util.hpp"
#include <coproc/pool.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <fstream>
#include <list>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;
using tasks::point;

namespace {

std::vector<int> iota(int n, int from = 0) {
    std::vector<int> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), from);
    return v;
}

std::vector<int> squares(const std::vector<int>& v) {
    std::vector<int> out;
    for (int x : v)
        out.push_back(x * x);
    return out;
}

const std::vector<std::string> words{"alpha", "beta", "", "gamma delta"};
const std::vector<std::string> shouted{"ALPHA!", "BETA!", "!", "GAMMA DELTA!"};
const std::vector<std::vector<int>> vecs{{1, 2, 3}, {}, {7}, {4, 5}};
const std::vector<std::vector<int>> vecs_reversed{{3, 2, 1}, {}, {7}, {5, 4}};
const std::vector<point> points{{1, 2, "a"}, {3, 4, "b"}, {-5, 6, ""}};
const std::vector<point> points_flipped{{2, 1, "a'"}, {4, 3, "b'"}, {6, -5, "'"}};

// A pool's pids() returns to size() entries after a worker was replaced.
bool wait_for_full_pool(const coproc::pool& pool, std::chrono::milliseconds limit = 3s) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
        if (pool.pids().size() == pool.size())
            return true;
        std::this_thread::sleep_for(5ms);
    }
    return pool.pids().size() == pool.size();
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

int global_initialized = 0;
void init_worker() { global_initialized = static_cast<int>(::getpid()); }
std::pair<int, int> initialized_and_pid(int) {
    return {global_initialized, static_cast<int>(::getpid())};
}

// Task functions must be plain functions or captureless lambdas.
constexpr auto triple = [](int x) { return 3 * x; };
int captured_value = 1;
[[maybe_unused]] auto capturing = [k = captured_value](int x) { return x + k; };
static_assert(coproc::detail::converts_to_function_pointer<decltype(triple)>);
static_assert(!coproc::detail::converts_to_function_pointer<decltype(capturing)>);

} // namespace

TEST_SUITE_BEGIN("pool");

// ------------------------------------------------------------------ blocking code

TEST_CASE("apply_async from blocking code: ints, strings, vectors and a user type") {
    watchdog dog(30s);
    coproc::pool pool(2);
    CHECK(pool.size() == 2);
    CHECK(pool.pids().size() == 2);
    CHECK(pool.apply_async(tasks::add, {2, 3}).get() == 5);
    CHECK(pool.apply_async(tasks::shout, {std::string("hi")}).get() == "HI!");
    CHECK(pool.apply_async(tasks::concat, {"a", "b"}).get() == "a+b");
    CHECK(pool.apply_async(tasks::reversed, {std::vector<int>{1, 2, 3}}).get() ==
          std::vector<int>{3, 2, 1});
    CHECK(pool.apply_async(tasks::sum, {std::vector<int>{1, 2, 3, 4}}).get() == 10);
    CHECK(pool.apply_async(tasks::move_by, {point{1, 2, "p"}, 5}).get() == point{6, 2, "p"});
    const int parent = static_cast<int>(::getpid());
    const int worker = pool.apply_async(tasks::worker_pid).get();
    CHECK(worker != parent);
    const auto pids = pool.pids();
    CHECK(std::find(pids.begin(), pids.end(), worker) != pids.end());
}

namespace {
/// User plus system CPU time of process `pid` so far, in clock ticks (/proc/PID/stat).
long cpu_ticks(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    REQUIRE(std::getline(f, line));
    std::istringstream rest(line.substr(line.rfind(')') + 2)); // fields from the 3rd (state)
    std::string field;
    for (int i = 3; i < 14; ++i)
        rest >> field;
    long utime = 0, stime = 0;
    rest >> utime >> stime;
    return utime + stime;
}
} // namespace

TEST_CASE("an idle worker sleeps: it polls for the next task only for a moment") {
    watchdog dog(30s);
    coproc::pool pool(2);
    const auto squares = pool.map_async(tasks::square, std::vector<int>(2000, 3), 1).get();
    CHECK(squares == std::vector<int>(2000, 9));
    std::this_thread::sleep_for(50ms); // far past the poll (tens of microseconds)
    const auto pids = pool.pids();
    std::vector<long> before;
    for (pid_t pid : pids)
        before.push_back(cpu_ticks(pid));
    std::this_thread::sleep_for(500ms);
    for (std::size_t i = 0; i < pids.size(); ++i) {
        CAPTURE(pids[i]);
        // A worker still polling would have used about 50 ticks (at 100 per second).
        CHECK(cpu_ticks(pids[i]) - before[i] <= 5);
    }
}

TEST_CASE("map_async and starmap_async from blocking code") {
    watchdog dog(30s);
    coproc::pool pool(2);
    const auto v = iota(100);
    CHECK(pool.map_async(tasks::square, v).get() == squares(v));
    CHECK(pool.map_async(tasks::shout, words).get() == shouted);
    CHECK(pool.map_async(tasks::reversed, vecs).get() == vecs_reversed);
    CHECK(pool.map_async(tasks::flip, points).get() == points_flipped);

    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(pool.starmap_async(tasks::add, pairs).get() == std::vector<int>{3, 7, 11});
    std::vector<std::pair<std::string, std::string>> spairs{{"x", "y"}, {"", "z"}};
    CHECK(pool.starmap_async(tasks::concat, spairs).get() == std::vector<std::string>{"x+y", "+z"});
    std::vector<std::tuple<point, int>> moves{{{1, 1, "a"}, 1}, {{0, 0, "b"}, -2}};
    CHECK(pool.starmap_async(tasks::move_by, moves).get() ==
          std::vector<point>{{2, 1, "a"}, {-2, 0, "b"}});
}

TEST_CASE("the seed's starmap_async example polls ready() and gets the sums") {
    watchdog dog(30s);
    coproc::pool pool(2);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    auto results = pool.starmap_async(tasks::add, pairs);
    while (!results.ready())
        std::this_thread::sleep_for(1ms);
    CHECK(results.successful());
    CHECK(results.get() == std::vector<int>{3, 7, 11});
}

TEST_CASE("empty inputs give empty results") {
    watchdog dog(30s);
    coproc::pool pool(2);
    const std::vector<int> none;
    CHECK(pool.map_async(tasks::square, none).get().empty());
    CHECK(pool.map_async(tasks::square, none, 1).get().empty());
    CHECK(pool.starmap_async(tasks::add, std::vector<std::tuple<int, int>>{}).get().empty());
    CHECK(pool.map_async(tasks::shout, std::vector<std::string>{}).get().empty());
}

TEST_CASE("map keeps input order for every chunksize") {
    watchdog dog(30s);
    coproc::pool pool(2);
    const auto v = iota(100);
    for (std::size_t chunksize : {0, 1, 3, 7, 100, 1000}) {
        CAPTURE(chunksize);
        CHECK(pool.map_async(tasks::square, v, chunksize).get() == squares(v));
    }
    // The first items finish last; the results still come in input order.
    CHECK(pool.map_async(tasks::late_first, iota(12), 1).get() == iota(12));
}

TEST_CASE("map accepts ranges that are not vectors") {
    watchdog dog(30s);
    coproc::pool pool(2);
    CHECK(pool.map_async(tasks::square, std::views::iota(0, 10)).get() == squares(iota(10)));
    std::list<int> l{3, 1, 2};
    CHECK(pool.map_async(tasks::square, l).get() == std::vector<int>{9, 1, 4});
    auto odd = std::views::iota(0, 20) | std::views::filter([](int x) { return x % 2 == 1; });
    CHECK(pool.map_async(tasks::square, odd).get().size() == 10);
}

TEST_CASE("a map of numbers large enough to have its results' memory populated fills every one") {
    // 90,000 int results take 360 KB: past populate_min_bytes, their pages are mapped first.
    watchdog dog(60s);
    coproc::pool pool(2);
    const auto v = iota(90'000, -45'000); // squares up to 45,000^2: no int overflow
    CHECK(pool.map_async(tasks::square, v).get() == squares(v));
    CHECK(pool.map_async(tasks::square, v, 7).get() == squares(v));
}

TEST_CASE("void task functions with apply_async and map_async") {
    watchdog dog(30s);
    coproc::pool pool(2);
    auto ok = pool.apply_async(tasks::check_positive, {1});
    CHECK_NOTHROW(ok.get());
    CHECK(ok.successful());
    pool.apply_async(tasks::nothing).get();
    auto bad = pool.apply_async(tasks::check_positive, {-1});
    CHECK_THROWS_WITH_AS(bad.get(), "negative: -1", std::invalid_argument);
    CHECK_FALSE(bad.successful());
    CHECK(pool.map_async(tasks::check_positive, iota(5)).get().size() == 5);
    CHECK(tasks::g_effect == 0); // the task ran in a worker, not here
}

TEST_CASE("a captureless lambda is a task function") {
    watchdog dog(30s);
    coproc::pool pool(2);
    CHECK(pool.apply_async(triple, {4}).get() == 12);
    CHECK(pool.apply_async([](std::string s) { return s.size(); }, {"four"}).get() == 4);
    CHECK(pool.map_async([](int x) { return x - 1; }, iota(4)).get() ==
          std::vector<int>{-1, 0, 1, 2});
}

TEST_CASE("the initializer runs once in each worker before its tasks") {
    watchdog dog(30s);
    coproc::pool pool({.processes = 2, .initializer = init_worker});
    const auto r = pool.map_async(initialized_and_pid, iota(50), 1).get();
    REQUIRE(r.size() == 50);
    for (const auto& [initialized, pid] : r)
        CHECK(initialized == pid);
    CHECK(global_initialized == 0); // never in the parent
}

TEST_CASE("maxtasksperchild=1 replaces the worker after every task and loses none") {
    watchdog dog(60s);
    coproc::pool pool({.processes = 2, .maxtasksperchild = 1});
    const auto r = pool.map_async(tasks::square_and_pid, iota(1000), 1).get();
    REQUIRE(r.size() == 1000);
    std::set<int> pids;
    for (int i = 0; i < 1000; ++i) {
        CHECK(r[i].first == i * i);
        pids.insert(r[i].second);
    }
    CHECK(pids.size() > 2);
    CHECK(wait_for_full_pool(pool));
    CHECK(pool.apply_async(tasks::add, {1, 1}).get() == 2);
}

TEST_CASE("close() lets submitted tasks finish, then join() returns") {
    watchdog dog(30s);
    coproc::pool pool(2);
    auto r = pool.map_async(tasks::sleep_ms, std::vector<int>(10, 5), 1);
    pool.close();
    CHECK_THROWS_AS((void)pool.apply_async(tasks::add, {1, 2}), coproc::pool_closed);
    CHECK_THROWS_AS((void)pool.map_async(tasks::square, iota(3)), coproc::pool_closed);
    CHECK_THROWS_AS((void)pool.imap(tasks::square, iota(3)), coproc::pool_closed);
    pool.join();
    CHECK(r.ready());
    CHECK(r.get() == std::vector<int>(10, 5));
    CHECK(pool.pids().empty());
    pool.join(); // again: returns at once
}

TEST_CASE("join() on a running pool throws coproc::error") {
    watchdog dog(30s);
    coproc::pool pool(2);
    CHECK_THROWS_AS(pool.join(), coproc::error);
    CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // still running
}

TEST_CASE("terminate() fails running and queued tasks with pool_closed, without hanging") {
    watchdog dog(30s);
    coproc::pool pool(2);
    std::vector<coproc::async_result<int>> running;
    for (int i = 0; i < 12; ++i)
        running.push_back(pool.apply_async(tasks::sleep_ms, {10'000}));
    auto mapped = pool.map_async(tasks::sleep_ms, std::vector<int>(6, 10'000), 1);
    std::this_thread::sleep_for(20ms);
    const auto t0 = std::chrono::steady_clock::now();
    pool.terminate();
    for (auto& r : running)
        CHECK_THROWS_AS(r.get(), coproc::pool_closed);
    CHECK_THROWS_AS(mapped.get(), coproc::pool_closed);
    pool.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    CHECK(pool.pids().empty());
    CHECK_THROWS_AS((void)pool.apply_async(tasks::add, {1, 2}), coproc::pool_closed);
    pool.terminate(); // again: nothing to do
}

// Submitting threads meet the pool's loop, which holds the pool's lock while it takes replies:
// their jobs then queue without the lock and are taken in order.
TEST_CASE("tasks from several threads while replies stream in: none lost, each thread's in order") {
    watchdog dog(120s);
    coproc::pool pool(1); // one worker runs the tasks in the order they were queued
    constexpr int threads = 3, each = 3000;
    std::vector<std::vector<coproc::async_result<long>>> results(threads);
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t)
        submitters.emplace_back([&, t] {
            for (int i = 0; i < each; ++i)
                results[t].push_back(pool.apply_async(tasks::ticket, {t}));
        });
    for (auto& s : submitters)
        s.join();
    std::set<long> seen;
    for (auto& rs : results) {
        long last = -1;
        for (auto& r : rs) {
            const long ticket = r.get();
            CHECK(ticket > last); // this thread's tasks ran in the order it submitted them
            last = ticket;
            seen.insert(ticket);
        }
    }
    CHECK(seen.size() == std::size_t{threads * each}); // every task ran once
}

// Whatever the interleaving, a submission is either refused or runs.
TEST_CASE("close() or terminate() while threads submit: each task refused, run or failed") {
    watchdog dog(120s);
    for (const bool terminate : {false, true}) {
        CAPTURE(terminate);
        coproc::pool pool(2);
        constexpr int threads = 3;
        std::vector<std::vector<std::pair<int, coproc::async_result<int>>>> results(threads);
        constexpr int before_close = 100; // tasks each thread has queued when the pool closes
        std::array<std::atomic<int>, threads> accepted{};
        std::atomic<int> refused{0};
        std::vector<std::thread> submitters;
        for (int t = 0; t < threads; ++t)
            submitters.emplace_back([&, t] {
                for (int i = 0;; ++i) {
                    try {
                        results[t].emplace_back(i, pool.apply_async(tasks::square, {i % 1000}));
                        ++accepted[t];
                    } catch (const coproc::pool_closed&) {
                        ++refused;
                        return;
                    }
                }
            });
        while (std::ranges::any_of(accepted, [](const auto& n) { return n < before_close; }))
            std::this_thread::sleep_for(1ms);
        terminate ? pool.terminate() : pool.close();
        for (auto& s : submitters)
            s.join();
        pool.join();
        CHECK(refused == threads); // every thread was refused once the pool closed
        std::size_t ran = 0, failed = 0;
        for (auto& rs : results)
            for (auto& [i, r] : rs) {
                REQUIRE(r.ready()); // after join(), every outcome is set
                try {
                    const int v = r.get();
                    CHECK(v == (i % 1000) * (i % 1000));
                    ++ran;
                } catch (const coproc::pool_closed&) {
                    CHECK(terminate); // only terminate() fails accepted tasks
                    ++failed;
                }
            }
        CHECK(ran + failed >= std::size_t{threads * before_close});
        CHECK_THROWS_AS((void)pool.apply_async(tasks::square, {1}), coproc::pool_closed);
    }
}

TEST_CASE("terminate() while large arguments are being written neither crashes nor hangs") {
    watchdog dog(30s);
    const std::vector<int> big(1 << 20, 1); // 4 MiB per request: written in many rounds
    for (int round = 0; round < 5; ++round) {
        coproc::pool pool(1);
        // The one worker is busy for long, so the large requests behind it are still queued or
        // half written when terminate() comes.
        auto busy = pool.apply_async(tasks::sleep_ms, {10'000});
        std::vector<coproc::async_result<int>> rs;
        for (int i = 0; i < 6; ++i)
            rs.push_back(pool.apply_async(tasks::sum, {big}));
        std::this_thread::sleep_for(std::chrono::milliseconds(round));
        pool.terminate();
        CHECK_THROWS_AS(busy.get(), coproc::pool_closed);
        int closed = 0;
        for (auto& r : rs) {
            try {
                const int total = r.get(); // (a throw inside CHECK would not reach the catch)
                CHECK(total == 1 << 20);
            } catch (const coproc::pool_closed&) {
                ++closed;
            }
        }
        CHECK(closed == 6);
        pool.join();
    }
}

TEST_CASE("200 pool create/destroy cycles leave no zombie and no descriptor behind") {
    watchdog dog(60s);
    { // the first pool may create lazily-initialized process-wide descriptors
        coproc::pool warmup(2);
        CHECK(warmup.apply_async(tasks::add, {1, 1}).get() == 2);
    }
    const int fds = coproc::test::fd_count();
    const auto before = coproc::test::child_count();
    for (int i = 0; i < 200; ++i) {
        coproc::pool pool(2);
        if (i % 20 == 0)
            REQUIRE(pool.apply_async(tasks::add, {i, 1}).get() == i + 1);
        if (i % 3 == 0) {
            pool.close();
            pool.join();
        }
    }
    CHECK(coproc::test::fd_count() == fds);
    const auto after = coproc::test::child_count();
    CHECK(after.zombies == 0);
    CHECK(after.total == before.total);
}

TEST_CASE("a pool destroyed with tasks in flight does not hang") {
    watchdog dog(30s);
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<coproc::async_result<int>> r;
    {
        coproc::pool pool(2);
        r.emplace(pool.apply_async(tasks::sleep_ms, {10'000}));
    }
    CHECK_THROWS_AS(r->get(), coproc::pool_closed);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}

// ------------------------------------------------------------------ coroutines

COPROC_TEST_CASE("apply, map and starmap on the caller's io_context") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    CHECK(co_await pool.apply(tasks::add, 2, 3) == 5);
    CHECK(co_await pool.apply(tasks::shout, std::string("hey")) == std::string("HEY!"));
    // (Braced lists are kept out of co_await expressions: g++ 12 rejects them there.)
    const std::vector<int> one_two{1, 2}, two_one{2, 1};
    CHECK(co_await pool.apply(tasks::reversed, one_two) == two_one);
    const point o{0, 0, "o"}, moved{-1, 0, "o"};
    CHECK(co_await pool.apply(tasks::move_by, o, -1) == moved);
    co_await pool.apply(tasks::nothing);
    co_await pool.apply(tasks::check_positive, 3);
    CHECK(co_await pool.apply(triple, 5) == 15);

    const auto v = iota(1000);
    CHECK(co_await pool.map(tasks::square, v) == squares(v));
    CHECK(co_await pool.map(tasks::shout, words) == shouted);
    CHECK(co_await pool.map(tasks::reversed, vecs) == vecs_reversed);
    CHECK(co_await pool.map(tasks::flip, points) == points_flipped);
    CHECK((co_await pool.map(tasks::check_positive, iota(3))).size() == 3);

    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    const std::vector<int> sums{3, 7, 11};
    CHECK(co_await pool.starmap(tasks::add, pairs) == sums);
    std::vector<std::tuple<std::string, std::string>> spairs{{"x", "y"}};
    const std::vector<std::string> joined{"x+y"};
    CHECK(co_await pool.starmap(tasks::concat, spairs) == joined);
    std::vector<std::tuple<point, int>> moves{{{1, 1, "a"}, 1}};
    const std::vector<point> moved_points{{2, 1, "a"}};
    CHECK(co_await pool.starmap(tasks::move_by, moves) == moved_points);
    pool.close();
    co_await pool.async_join();
    CHECK(pool.pids().empty());
}

COPROC_TEST_CASE("the *_async methods awaited with async_get() on the caller's io_context") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    CHECK(co_await pool.apply_async(tasks::add, std::tuple(4, 5)).async_get() == 9);
    const std::tuple<std::string> a("a");
    CHECK(co_await pool.apply_async(tasks::shout, a).async_get() == std::string("A!"));
    CHECK(co_await pool.map_async(tasks::reversed, vecs).async_get() == vecs_reversed);
    CHECK(co_await pool.map_async(tasks::flip, points, 1).async_get() == points_flipped);
    std::vector<std::tuple<point, int>> moves{{{1, 1, "a"}, 1}, {{2, 2, "b"}, 2}};
    const std::vector<point> moved{{2, 1, "a"}, {4, 2, "b"}};
    CHECK(co_await pool.starmap_async(tasks::move_by, moves).async_get() == moved);
    co_await pool.apply_async(tasks::nothing).async_get();
}

COPROC_TEST_CASE("empty inputs and every chunksize on the caller's io_context") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    const std::vector<int> none;
    const std::vector<std::tuple<int, int>> no_pairs;
    CHECK((co_await pool.map(tasks::square, none)).empty());
    CHECK((co_await pool.starmap(tasks::add, no_pairs)).empty());
    CHECK((co_await pool.map_async(tasks::square, none).async_get()).empty());
    const auto v = iota(50);
    for (std::size_t chunksize : {0, 1, 4, 50, 51, 500}) {
        CAPTURE(chunksize);
        CHECK(co_await pool.map(tasks::square, v, chunksize) == squares(v));
        std::vector<std::tuple<int, int>> pairs;
        for (int x : v)
            pairs.emplace_back(x, 1);
        CHECK(co_await pool.starmap(tasks::add, pairs, chunksize) == iota(50, 1));
    }
    CHECK(co_await pool.map(tasks::late_first, iota(8), 1) == iota(8));
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("a pool with its own loop awaited from another io_context resumes there") {
    coproc::pool pool(2);
    const auto here = std::this_thread::get_id();
    CHECK(co_await pool.apply(tasks::add, 1, 2) == 3);
    CHECK(std::this_thread::get_id() == here);
    CHECK(co_await pool.map(tasks::shout, words) == shouted);
    CHECK(std::this_thread::get_id() == here);
    std::vector<std::tuple<int, int>> pairs{{1, 2}};
    const std::vector<int> three{3}, small_squares{0, 1, 4};
    CHECK(co_await pool.starmap(tasks::add, pairs) == three);
    CHECK(std::this_thread::get_id() == here);
    CHECK(co_await pool.map_async(tasks::square, iota(3)).async_get() == small_squares);
    CHECK(std::this_thread::get_id() == here);
    pool.close();
    co_await pool.async_join();
    CHECK(std::this_thread::get_id() == here);
}

COPROC_TEST_CASE("100 coroutines awaiting one pool concurrently all get their results") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    int done = 0;
    int wrong = 0;
    std::exception_ptr failure;
    for (int c = 0; c < 100; ++c) {
        asio::co_spawn(
            io,
            [&pool, &wrong, c]() -> asio::awaitable<void> {
                for (int k = 0; k < 5; ++k) {
                    if (co_await pool.apply(tasks::add, c, k) != c + k)
                        ++wrong;
                }
                const std::vector<int> two{c, c + 1}, want{c * c, (c + 1) * (c + 1)};
                const auto r = co_await pool.map(tasks::square, two);
                if (r != want)
                    ++wrong;
            },
            [&](std::exception_ptr e) {
                ++done;
                if (e)
                    failure = e;
            });
    }
    while (done < 100)
        co_await sleep_for(2ms);
    CHECK(wrong == 0);
    CHECK_FALSE(failure);
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("terminate() fails awaited tasks with pool_closed") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    auto one = pool.apply(tasks::sleep_ms, 10'000);
    auto many = pool.map(tasks::sleep_ms, std::vector<int>(8, 10'000), 1);
    co_await sleep_for(20ms);
    pool.terminate();
    CHECK_THROWS_AS(co_await std::move(one), coproc::pool_closed);
    CHECK_THROWS_AS(co_await std::move(many), coproc::pool_closed);
    co_await pool.async_join();
    CHECK_THROWS_AS(co_await pool.apply(tasks::add, 1, 2), coproc::pool_closed);
}

COPROC_TEST_CASE("async_join() on a running pool throws coproc::error") {
    coproc::pool pool(io.get_executor(), {.processes = 1});
    CHECK_THROWS_AS(co_await pool.async_join(), coproc::error);
    CHECK(co_await pool.apply(tasks::add, 1, 2) == 3);
}

COPROC_TEST_CASE("pools on the caller's io_context created and destroyed leave nothing behind") {
    {
        coproc::pool warmup(io.get_executor(), {.processes = 1});
        CHECK(co_await warmup.apply(tasks::add, 1, 1) == 2);
    }
    const int fds = coproc::test::fd_count();
    for (int i = 0; i < 50; ++i) {
        coproc::pool pool(io.get_executor(), {.processes = 2});
        if (i % 10 == 0)
            CHECK(co_await pool.apply(tasks::add, i, 1) == i + 1);
        if (i % 2 == 0) {
            pool.close();
            co_await pool.async_join();
        }
    }
    CHECK(coproc::test::fd_count() == fds);
    CHECK(coproc::test::child_count().zombies == 0);
    CHECK(coproc::test::child_count().total == 0);
}

TEST_SUITE_END();
