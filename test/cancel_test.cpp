// Pool operations as Asio operations: completion tokens, and cancellation that reaches the
// worker (queued tasks dropped, running ones asked to stop, then killed after the grace).
#include <coproc/pool.hpp>
#include <coproc/this_task.hpp>

#include "tasks.hpp"
#include "test_util.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/use_future.hpp>

#include <atomic>
#include <future>
#include <random>
#include <sys/mman.h>
#include <system_error>
#include <tuple>
#include <variant>

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using clock_type = std::chrono::steady_clock;

namespace {

// ------------------------------------------------------------------ shared with the workers

/// Memory shared with every worker (mapped before any pool exists; workers inherit it).
struct shared_state {
    static constexpr int slots = 4096;
    std::atomic<int> runs[slots];      // runs[i]: how often task i started
    std::atomic<int> saw_stop[slots];  // a polite task saw stop_requested()
    std::atomic<int> started[slots];   // a task started (so a test can cancel it running)
};
static_assert(std::atomic<int>::is_always_lock_free);

shared_state& shared() {
    static shared_state* const s = [] {
        void* m = ::mmap(nullptr, sizeof(shared_state), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            throw std::runtime_error("mmap of the cancel test's shared state failed");
        return new (m) shared_state;
    }();
    return *s;
}
const bool mapped_early = (shared(), true);

void reset_shared() {
    for (int i = 0; i < shared_state::slots; ++i) {
        shared().runs[i] = 0;
        shared().saw_stop[i] = 0;
        shared().started[i] = 0;
    }
}

/// Counts its run, then returns i * 10.
int counted(int i) {
    shared().runs[i].fetch_add(1);
    return i * 10;
}
/// Counts its run and sleeps `ms`.
int counted_sleep(int i, int ms) {
    shared().runs[i].fetch_add(1);
    shared().started[i] = 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return i;
}
/// Runs until asked to stop (at most 20 s), then notes that it saw the request.
int polite(int i) {
    shared().runs[i].fetch_add(1);
    shared().started[i] = 1;
    const auto end = clock_type::now() + 20s;
    while (!coproc::this_task::stop_requested() && clock_type::now() < end)
        std::this_thread::sleep_for(1ms);
    shared().saw_stop[i] = coproc::this_task::stop_requested() ? 1 : 2;
    return -1;
}
/// Polite, but returns by itself after `ms`.
int polite_for(int i, int ms) {
    shared().runs[i].fetch_add(1);
    const auto end = clock_type::now() + std::chrono::milliseconds(ms);
    while (!coproc::this_task::stop_requested() && clock_type::now() < end)
        std::this_thread::sleep_for(100us);
    return i;
}
/// Ignores cancellation: sleeps `ms` whatever happens.
int stubborn(int i, int ms) { return counted_sleep(i, ms); }
int polite_item(int i) { return polite(i); }

using coproc::test::is_aborted;

/// Waits (polling) until `pred()` holds, at most `limit`.
template <class Pred> bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
    const auto end = clock_type::now() + limit;
    while (!pred()) {
        if (clock_type::now() > end)
            return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

// Waits (on the coroutine's loop) until `pred()` holds, at most `limit`.
template <class Pred>
asio::awaitable<bool> eventually_co(Pred pred, std::chrono::milliseconds limit = 10s) {
    const auto end = clock_type::now() + limit;
    while (!pred()) {
        if (clock_type::now() > end)
            co_return false;
        co_await sleep_for(2ms);
    }
    co_return true;
}

} // namespace

// ------------------------------------------------------------------ completion tokens

TEST_CASE("async_apply, async_map and async_starmap take every completion token") {
    coproc::test::watchdog dog(60s);
    coproc::pool pool(2);
    const std::vector<int> xs{1, 2, 3, 4, 5};
    const std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
    const std::vector<int> squares{1, 4, 9, 16, 25};
    const std::vector<int> sums{3, 7};
    const auto args = std::tuple{3, 4};

    SUBCASE("use_future") {
        CHECK(pool.async_apply(tasks::add, args, asio::use_future).get() == 7);
        CHECK(pool.async_map(tasks::square, xs, 2, asio::use_future).get() == squares);
        CHECK(pool.async_starmap(tasks::add, pairs, 0, asio::use_future).get() == sums);
    }
    SUBCASE("a callback, run on the pool's loop when no executor is bound") {
        std::promise<std::tuple<int, std::vector<int>, std::vector<int>>> done;
        std::atomic<int> calls{0};
        int a = 0;
        std::vector<int> m;
        pool.async_apply(tasks::add, args, [&](std::exception_ptr e, int v) {
            CHECK(!e);
            a = v;
            ++calls;
            pool.async_map(tasks::square, xs, 0, [&](std::exception_ptr e2, std::vector<int> r) {
                CHECK(!e2);
                m = std::move(r);
                ++calls;
                pool.async_starmap(tasks::add, pairs, 1,
                                   [&](std::exception_ptr e3, std::vector<int> s) {
                                       CHECK(!e3);
                                       ++calls;
                                       done.set_value({a, m, std::move(s)});
                                   });
            });
        });
        auto [a2, m2, s2] = done.get_future().get();
        CHECK(a2 == 7);
        CHECK(m2 == squares);
        CHECK(s2 == sums);
        CHECK(calls == 3);
    }
    SUBCASE("a callback gets a task's exception and a default value") {
        std::promise<std::exception_ptr> failed;
        pool.async_apply(tasks::check_positive, std::tuple{-4},
                         [&](std::exception_ptr e) { failed.set_value(e); });
        const auto e = failed.get_future().get();
        REQUIRE(e);
        CHECK_THROWS_AS(std::rethrow_exception(e), std::invalid_argument);
    }
    SUBCASE("use_awaitable, deferred, as_tuple, bind_executor and bind_cancellation_slot") {
        coproc::test::run_coroutine([&](asio::io_context& io) -> asio::awaitable<void> {
            CHECK(co_await pool.async_apply(tasks::add, args) == 7);
            CHECK(co_await pool.async_apply(tasks::add, args, asio::use_awaitable) == 7);
            CHECK(co_await pool.async_map(tasks::square, xs, 0) == squares);
            CHECK(co_await pool.async_starmap(tasks::add, pairs, 0) == sums);

            auto lazy = pool.async_apply(tasks::add, args, asio::experimental::deferred);
            CHECK(co_await std::move(lazy)(asio::use_awaitable) == 7);
            auto lazy_map = pool.async_map(tasks::square, xs, 0, asio::experimental::deferred);
            CHECK(co_await std::move(lazy_map)(asio::use_awaitable) == squares);

            auto tup = asio::experimental::as_tuple(asio::use_awaitable);
            auto [e1, v1] = co_await pool.async_apply(tasks::add, args, tup);
            CHECK(!e1);
            CHECK(v1 == 7);
            auto [e2, v2] = co_await pool.async_starmap(tasks::add, pairs, 0, tup);
            CHECK(!e2);
            CHECK(v2 == sums);
            const auto bad = std::tuple{-1};
            auto [e3] = co_await pool.async_apply(tasks::check_positive, bad, tup);
            CHECK(e3);

            // bind_executor: the callback runs on the strand, on the test's loop thread.
            auto strand = asio::make_strand(io);
            std::optional<int> got;
            bool on_strand = false;
            pool.async_apply(tasks::add, args,
                             asio::bind_executor(strand, [&](std::exception_ptr, int v) {
                                 on_strand = strand.running_in_this_thread();
                                 got = v;
                             }));
            CHECK(co_await eventually_co([&] { return got.has_value(); }));
            CHECK(on_strand);
            CHECK(got == 7);

            asio::cancellation_signal never;
            CHECK(co_await pool.async_map(
                      tasks::square, xs, 1,
                      asio::bind_cancellation_slot(never.slot(), asio::use_awaitable)) == squares);
            CHECK(co_await pool.async_apply(
                      tasks::add, args,
                      asio::bind_cancellation_slot(never.slot(), asio::use_awaitable)) == 7);
        });
    }
}

TEST_CASE("the awaitable apply, map and starmap equal their async_ forms") {
    coproc::test::run_coroutine([](asio::io_context&) -> asio::awaitable<void> {
        coproc::pool pool(2);
        const std::vector<int> xs{1, 2, 3};
        const std::vector<std::tuple<int, int>> pairs{{1, 2}};
        const auto args = std::tuple{1, 2};
        CHECK(co_await pool.apply(tasks::add, 1, 2) ==
              co_await pool.async_apply(tasks::add, args, asio::use_awaitable));
        CHECK(co_await pool.map(tasks::square, xs) == co_await pool.async_map(tasks::square, xs, 0));
        CHECK(co_await pool.starmap(tasks::add, pairs) ==
              co_await pool.async_starmap(tasks::add, pairs, 0));
        pool.close();
        co_await pool.async_join();
    });
}

TEST_CASE("a closed pool fails async_apply through the token, not by throwing") {
    coproc::pool pool(1);
    pool.close();
    auto f = pool.async_apply(tasks::square, std::tuple{2}, asio::use_future);
    CHECK_THROWS_AS(f.get(), coproc::pool_closed);
    const std::vector<int> xs{1};
    auto g = pool.async_map(tasks::square, xs, 0, asio::use_future);
    CHECK_THROWS_AS(g.get(), coproc::pool_closed);
    pool.join();
}

// ------------------------------------------------------------------ cancellation

TEST_CASE("|| with a timer returns when the timer fires, and the next call is served at once") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 200ms});
        const auto before = pool.pids();
        asio::steady_timer timer(io, 200ms);
        const auto t0 = clock_type::now();
        auto r = co_await (pool.apply(stubborn, 0, 5000) || timer.async_wait(asio::use_awaitable));
        const auto took = clock_type::now() - t0;
        CHECK(r.index() == 1);
        CHECK(took < 1500ms); // 200 ms and the time to cancel, with room for a loaded machine
        const auto t1 = clock_type::now();
        CHECK(co_await pool.apply(tasks::square, 7) == 49);
        // The stubborn task outlived the grace: its worker was killed and replaced.
        CHECK(clock_type::now() - t1 < 3s);
        CHECK(pool.pids() != before);
        CHECK(shared().runs[0] == 1);
    });
}

TEST_CASE("a cancelled task that has not started never runs") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(1);
        const auto busy_args = std::tuple{1, 400};
        auto busy = pool.apply_async(counted_sleep, busy_args);
        // Queued behind the busy task (held by the worker or by the pool): cancelled.
        asio::cancellation_signal sig;
        std::optional<std::exception_ptr> outcome;
        const auto args = std::tuple{2};
        pool.async_apply(counted, args,
                         asio::bind_cancellation_slot(
                             sig.slot(), asio::bind_executor(io, [&](std::exception_ptr e, int) {
                                 outcome = e;
                             })));
        const auto t0 = clock_type::now();
        sig.emit(asio::cancellation_type::terminal);
        CHECK(co_await eventually_co([&] { return outcome.has_value(); }));
        CHECK(clock_type::now() - t0 < 300ms); // at once, not after the busy task
        CHECK(is_aborted(*outcome));
        CHECK(co_await busy.async_get() == 1);
        CHECK(co_await pool.apply(counted, 3) == 30); // runs after the cancelled one would have
        CHECK(shared().runs[2] == 0);
        CHECK(shared().runs[3] == 1);
        const auto pids = pool.pids();
        CHECK(pids.size() == 1);
    });
}

TEST_CASE("a polite task sees stop_requested(), returns within the grace and keeps its worker") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 10s});
        const auto before = pool.pids();
        asio::steady_timer timer(io, 100ms);
        auto r = co_await (pool.apply(polite, 5) || timer.async_wait(asio::use_awaitable));
        CHECK(r.index() == 1);
        CHECK(co_await eventually_co([] { return shared().saw_stop[5].load() != 0; }, 5s));
        CHECK(shared().saw_stop[5] == 1);
        CHECK(co_await pool.apply(tasks::square, 3) == 9);
        CHECK(pool.pids() == before);
        CHECK(!coproc::this_task::stop_requested()); // the parent runs no task
    });
}

TEST_CASE("cancel_grace 0 kills a running cancelled task's worker at once") {
    reset_shared();
    coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 0ms});
    const auto before = pool.pids();
    auto r = pool.apply_async(stubborn, std::tuple{7, 10000});
    REQUIRE(eventually([] { return shared().started[7].load() == 1; }));
    const auto t0 = clock_type::now();
    r.cancel();
    CHECK_THROWS_AS(r.get(), std::system_error);
    CHECK(pool.apply_async(tasks::square, std::tuple{4}).get() == 16);
    CHECK(clock_type::now() - t0 < 3s);
    CHECK(pool.pids() != before);
}

TEST_CASE("async_result::cancel(): get() throws operation_aborted, the error_callback gets it") {
    reset_shared();
    coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 5s});
    std::promise<std::exception_ptr> called;
    auto r = pool.apply_async(polite, std::tuple{9}, {},
                              [&](std::exception_ptr e) { called.set_value(e); });
    REQUIRE(eventually([] { return shared().started[9].load() == 1; }));
    r.cancel();
    CHECK(r.ready() == r.ready()); // ready() may lag until the loop ran the callback
    try {
        r.get();
        FAIL("get() returned");
    } catch (const std::system_error& e) {
        CHECK(e.code() == asio::error::operation_aborted);
    }
    CHECK(is_aborted(called.get_future().get()));
    CHECK(eventually([] { return shared().saw_stop[9].load() == 1; }));
    r.cancel(); // again: nothing happens
    CHECK(!r.successful());

    auto done = pool.apply_async(tasks::square, std::tuple{5});
    CHECK(done.get() == 25);
    done.cancel(); // after the result: the result stays
    CHECK(done.get() == 25);
}

TEST_CASE("cancelling a map cancels every chunk: queued ones never run") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(coproc::pool_options{.processes = 2, .cancel_grace = 0ms});
        std::vector<std::tuple<int, int>> items;
        for (int i = 0; i < 40; ++i)
            items.emplace_back(100 + i, 200);
        asio::steady_timer timer(io, 300ms);
        auto r =
            co_await (pool.starmap(stubborn, items, 1) || timer.async_wait(asio::use_awaitable));
        CHECK(r.index() == 1);
        co_await sleep_for(600ms);
        int ran = 0;
        for (int i = 0; i < 40; ++i) {
            CHECK(shared().runs[100 + i] <= 1);
            ran += shared().runs[100 + i];
        }
        CHECK(ran >= 2);
        CHECK(ran <= 6); // 2 workers x 300 ms / 200 ms each, give or take the start
        const std::vector<int> xs{1, 2, 3};
        const std::vector<int> expected{1, 4, 9};
        const auto got = co_await pool.map(tasks::square, xs);
        CHECK(got == expected);
    });
}

TEST_CASE("destroying an imap generator stops its running chunk") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context&) -> asio::awaitable<void> {
        coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 10s});
        const auto before = pool.pids();
        {
            const std::vector<int> items{20, 21, 22};
            auto g = pool.imap(polite_item, items);
            CHECK(co_await eventually_co([] { return shared().started[20].load() == 1; }));
        }
        CHECK(co_await eventually_co([] { return shared().saw_stop[20].load() != 0; }, 5s));
        CHECK(shared().saw_stop[20] == 1);
        CHECK(co_await pool.apply(tasks::square, 2) == 4);
        CHECK(shared().runs[21] == 0);
        CHECK(shared().runs[22] == 0);
        CHECK(pool.pids() == before);
    });
}

TEST_CASE("a cancelled imap next() takes no result: the next call gets it") {
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(1);
        const std::vector<std::tuple<int, int>> items{{1, 300}, {2, 0}};
        auto g = pool.imap(
            [](std::tuple<int, int> t) { return tasks::sleep_ms(std::get<1>(t)) + std::get<0>(t); },
            items);
        asio::steady_timer timer(io, 50ms);
        auto r = co_await (g.next() || timer.async_wait(asio::use_awaitable));
        CHECK(r.index() == 1);
        auto a = co_await g.next();
        auto b = co_await g.next();
        auto c = co_await g.next();
        CHECK(a == 301);
        CHECK(b == 2);
        CHECK(!c);
    });
}

TEST_CASE("async_join takes a token, and cancelling it ends only the wait") {
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(1);
        auto busy = pool.apply_async(tasks::sleep_ms, std::tuple{400});
        pool.close();
        asio::steady_timer timer(io, 50ms);
        auto r = co_await (pool.async_join() || timer.async_wait(asio::use_awaitable));
        CHECK(r.index() == 1);
        auto tup = asio::experimental::as_tuple(asio::use_awaitable);
        auto [e] = co_await pool.async_join(tup);
        CHECK(!e);
        CHECK(busy.get() == 400);
        auto f = pool.async_join(asio::use_future);
        f.get();
    });
}

TEST_CASE("cancellation racing with completion gives the value or operation_aborted, once") {
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(coproc::pool_options{.processes = 2, .cancel_grace = 50ms});
        std::mt19937 rng(12345);
        int values = 0, aborted = 0;
        for (int i = 0; i < 300; ++i) {
            asio::cancellation_signal sig;
            int calls = 0;
            std::exception_ptr err;
            int value = -1;
            const auto args = std::tuple{i};
            pool.async_apply(tasks::square, args,
                             asio::bind_cancellation_slot(
                                 sig.slot(), asio::bind_executor(io, [&](std::exception_ptr e, int v) {
                                     ++calls;
                                     err = e;
                                     value = v;
                                 })));
            // Cancel after 0..400 us: around the time the result comes back.
            const auto delay = std::chrono::microseconds(rng() % 400);
            const auto until = clock_type::now() + delay;
            while (clock_type::now() < until && calls == 0)
                co_await asio::post(io, asio::use_awaitable);
            if (calls == 0)
                sig.emit(asio::cancellation_type::terminal);
            CHECK(co_await eventually_co([&] { return calls > 0; }, 5s));
            co_await asio::post(io, asio::use_awaitable);
            CHECK(calls == 1);
            if (err) {
                CHECK(is_aborted(err));
                ++aborted;
            } else {
                CHECK(value == i * i);
                ++values;
            }
        }
        MESSAGE("race: " << values << " values, " << aborted << " aborted");
        CHECK(values + aborted == 300);
    });
}

TEST_CASE("1,000 random cancellations among normal calls: each ends once, none runs twice") {
    reset_shared();
    const int fds_before = coproc::test::fd_count();
    {
        coproc::test::run_coroutine(
            [](asio::io_context& io) -> asio::awaitable<void> {
                coproc::pool pool(coproc::pool_options{.processes = 2, .cancel_grace = 20ms});
                std::mt19937 rng(2026);
                constexpr int n = 1000;
                std::vector<int> ends(n, 0);
                std::vector<std::exception_ptr> errs(n);
                std::vector<int> vals(n, -1);
                std::vector<std::unique_ptr<asio::cancellation_signal>> sigs;
                int cancelled = 0;
                for (int i = 0; i < n; ++i) {
                    sigs.push_back(std::make_unique<asio::cancellation_signal>());
                    const int ms = static_cast<int>(rng() % 4); // 0..3 ms
                    const auto args = std::tuple{i, ms};
                    auto h = asio::bind_cancellation_slot(
                        sigs.back()->slot(),
                        asio::bind_executor(io, [&, i](std::exception_ptr e, int v) {
                            ++ends[i];
                            errs[i] = e;
                            vals[i] = v;
                        }));
                    if (rng() % 3 == 0)
                        pool.async_apply(polite_for, std::tuple{i, 3 * ms}, std::move(h));
                    else
                        pool.async_apply(counted_sleep, args, std::move(h));
                    // Cancel a random earlier call (some done, some queued, some running).
                    if (rng() % 2 == 0) {
                        const int k = static_cast<int>(rng() % (i + 1));
                        sigs[k]->emit(asio::cancellation_type::terminal);
                        ++cancelled;
                    }
                    if (i % 16 == 0)
                        co_await sleep_for(std::chrono::milliseconds(rng() % 3));
                }
                CHECK(co_await eventually_co(
                    [&] { return std::all_of(ends.begin(), ends.end(), [](int e) { return e > 0; }); },
                    30s));
                co_await sleep_for(50ms);
                int ok = 0, aborted = 0, twice = 0, other = 0;
                for (int i = 0; i < n; ++i) {
                    CHECK(ends[i] == 1);
                    if (shared().runs[i] > 1)
                        ++twice;
                    if (!errs[i]) {
                        ++ok;
                        CHECK(shared().runs[i] == 1);
                    } else if (is_aborted(errs[i])) {
                        ++aborted;
                    } else {
                        ++other;
                    }
                }
                MESSAGE("random cancellations: " << cancelled << " cancel requests, " << ok
                                                 << " completed, " << aborted << " aborted, "
                                                 << other << " other errors");
                CHECK(twice == 0);
                CHECK(other == 0);
                CHECK(ok + aborted == n);
                pool.close();
                co_await pool.async_join();
            },
            120s);
    }
    CHECK(coproc::test::fd_count() == fds_before);
    CHECK(eventually([] { return coproc::test::child_count().total == 0; }));
}

TEST_CASE("|| with a timer on a pool that runs on the caller's io_context") {
    reset_shared();
    coproc::test::run_coroutine([](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool pool(io.get_executor(),
                          coproc::pool_options{.processes = 1, .cancel_grace = 100ms});
        asio::steady_timer timer(io, 200ms);
        const auto t0 = clock_type::now();
        auto r = co_await (pool.apply(stubborn, 0, 5000) || timer.async_wait(asio::use_awaitable));
        CHECK(r.index() == 1);
        CHECK(clock_type::now() - t0 < 1500ms);
        CHECK(co_await pool.apply(tasks::square, 7) == 49);
        pool.close();
        co_await pool.async_join();
    });
}
