// mpi_pool across ranks: run under mpirun (rank 0 runs the cases, the other ranks are agents)
// or alone (each pool spawns two agents). See test/mpi/meson.build for the ways it runs.
// Test that header file is self-contained.
#include <coproc/mpi.hpp>

#define DOCTEST_CONFIG_IMPLEMENT
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>
#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unistd.h>
#include <vector>

namespace {

coproc::mpi::session* the_session = nullptr;

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }
pid_t worker_pid(int) { return ::getpid(); }
int throws_invalid(int x) { throw std::invalid_argument("bad item " + std::to_string(x)); }
int aborts(int) { std::abort(); }
int segfaults(int) {
    std::raise(SIGSEGV);
    return 0;
}
int slow(int ms) {
    ::usleep(static_cast<useconds_t>(ms) * 1000);
    return ms;
}

// Without mpirun each pool spawns its agents: two, so that there are several ranks here too,
// placed by the hostfile MPI_POOL_TEST_HOSTFILE names, if any.
coproc::mpi_pool_options opts(std::size_t per_rank = 2) {
    const char* hostfile = std::getenv("MPI_POOL_TEST_HOSTFILE");
    return {.processes_per_rank = per_rank, .spawn = 2, .hostfile = hostfile ? hostfile : ""};
}

std::size_t agent_ranks() {
    return the_session->size() > 1 ? static_cast<std::size_t>(the_session->size() - 1) : 2;
}

std::vector<int> iota(int n) {
    std::vector<int> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0);
    return v;
}

} // namespace

TEST_SUITE_BEGIN("mpi_pool");

TEST_CASE("apply, map and starmap run on the agents' workers") {
    coproc::mpi_pool pool(*the_session, opts());
    CHECK(pool.size() == 2 * agent_ranks());
    CHECK(pool.agents().size() == agent_ranks());
    CHECK(pool.pids().empty());

    CHECK(pool.apply_async(add, {2, 3}).get() == 5);
    const auto xs = iota(200);
    const auto squares = pool.map_async(square, xs).get();
    REQUIRE(squares.size() == xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i)
        CHECK(squares[i] == xs[i] * xs[i]);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(pool.starmap_async(add, pairs).get() == std::vector<int>{3, 7, 11});

    // The tasks ran in forked workers, not in this process nor in an agent rank itself: many
    // distinct pids, none of them ours.
    const auto pids = pool.map_async(worker_pid, iota(64), 1).get();
    std::vector<pid_t> distinct(pids);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    CHECK(distinct.size() >= 2);
    CHECK(std::find(distinct.begin(), distinct.end(), ::getpid()) == distinct.end());
    pool.close();
    pool.join();
}

TEST_CASE("chunks are spread over every agent") {
    coproc::mpi_pool pool(*the_session, opts(1));
    // Slow enough that one agent cannot take everything while the other waits.
    const auto pids = pool.map_async(worker_pid, iota(40), 1).get();
    std::vector<pid_t> distinct(pids);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    // One worker per agent: a pid per agent (workers of different ranks could share a pid
    // number only on different hosts; here they are different processes on one kernel).
    CHECK(distinct.size() == agent_ranks());
}

TEST_CASE("imap yields in order, imap_unordered every result") {
    coproc::mpi_pool pool(*the_session, opts());
    asio::io_context io;
    std::vector<int> ordered, unordered;
    auto run = [&]() -> asio::awaitable<void> {
        auto g = pool.imap(square, iota(50), 3);
        while (auto v = co_await g.next())
            ordered.push_back(*v);
        auto u = pool.imap_unordered(square, iota(50));
        while (auto v = co_await u.next())
            unordered.push_back(*v);
        const int s = co_await pool.apply(add, 20, 22);
        CHECK(s == 42);
        auto m = co_await pool.map(square, iota(10));
        CHECK(m.back() == 81);
    };
    auto done = asio::co_spawn(io, run(), asio::use_future);
    io.run();
    done.get();
    std::vector<int> expected;
    for (int x : iota(50))
        expected.push_back(x * x);
    CHECK(ordered == expected);
    std::sort(unordered.begin(), unordered.end());
    CHECK(unordered == expected);
}

TEST_CASE("a pool on the caller's io_context") {
    asio::io_context io;
    coproc::mpi_pool pool(*the_session, io.get_executor(), opts());
    int got = 0;
    auto run = [&]() -> asio::awaitable<void> {
        got = co_await pool.apply(square, 12);
        pool.close();
        co_await pool.async_join();
    };
    asio::co_spawn(io, run(), asio::detached);
    io.run(); // returns once the agents have stopped
    CHECK(got == 144);
}

TEST_CASE("task errors arrive as locally") {
    coproc::mpi_pool pool(*the_session, opts());
    CHECK_THROWS_WITH_AS(pool.apply_async(throws_invalid, {7}).get(), "bad item 7",
                         std::invalid_argument);
    CHECK_THROWS_AS(pool.map_async(throws_invalid, iota(10)).get(), std::invalid_argument);
}

TEST_CASE("a task that aborts on a remote rank fails with worker_lost; the pool serves on") {
    coproc::mpi_pool pool(*the_session, opts());
    for (auto f : {aborts, segfaults}) {
        try {
            pool.apply_async(f, {1}).get();
            FAIL("no worker_lost");
        } catch (const coproc::worker_lost& e) {
            CHECK(e.signal() == (f == aborts ? SIGABRT : SIGSEGV));
            const std::string what = e.what();
            CHECK(what.find("rank ") == 0);                        // where it ran
            CHECK(what.find("int (*)(int)") != std::string::npos); // which task
            CHECK(e.pid() > 0);
        }
    }
    CHECK(pool.map_async(square, iota(100)).get().back() == 99 * 99);
    CHECK(pool.apply_async(add, {1, 1}).get() == 2);
}

TEST_CASE("close lets queued tasks finish; terminate fails them with pool_closed") {
    {
        coproc::mpi_pool pool(*the_session, opts(1));
        auto r = pool.map_async(slow, std::vector<int>(8, 20), 1);
        pool.close();
        CHECK_THROWS_AS(static_cast<void>(pool.apply_async(square, {1})), coproc::pool_closed);
        pool.join();
        CHECK(r.get() == std::vector<int>(8, 20));
    }
    {
        coproc::mpi_pool pool(*the_session, opts(1));
        auto r = pool.map_async(slow, std::vector<int>(20, 200), 1);
        ::usleep(100 * 1000);
        pool.terminate();
        pool.join();
        CHECK_THROWS_AS(r.get(), coproc::pool_closed);
    }
}

TEST_CASE("one pool after another in one session") {
    for (int i = 0; i < 3; ++i) {
        coproc::mpi_pool pool(*the_session, opts(1));
        CHECK(pool.apply_async(add, {i, 1}).get() == i + 1);
    }
}

TEST_CASE("two pools at once are refused") {
    coproc::mpi_pool pool(*the_session, opts(1));
    CHECK_THROWS_AS(coproc::mpi_pool(*the_session, opts(1)), coproc::error);
    CHECK(pool.apply_async(add, {1, 2}).get() == 3);
}

TEST_CASE("without mpirun, a pool that cannot spawn its agents says why; the next one works") {
    if (the_session->size() > 1)
        return; // under mpirun the agents exist already
    auto bad = opts();
    bad.spawn = 0;
    CHECK_THROWS_WITH_AS(coproc::mpi_pool(*the_session, bad),
                         doctest::Contains("spawn must be at least 1"), coproc::error);
    coproc::mpi_pool pool(*the_session, opts(1));
    CHECK(pool.apply_async(add, {2, 2}).get() == 4);
}

// Run by test/mpi/check.sh only (skipped otherwise).

TEST_CASE("an agent of another build is refused" * doctest::skip()) {
    try {
        coproc::mpi_pool pool(*the_session, opts());
        FAIL("a pool started with an agent of another build");
    } catch (const coproc::error& e) {
        const std::string what = e.what();
        CHECK(what.find("runs a different build of the program") != std::string::npos);
        std::puts(e.what());
    }
}

TEST_CASE("serving until interrupted" * doctest::skip()) {
    coproc::mpi_pool pool(*the_session, opts());
    auto r = pool.map_async(slow, std::vector<int>(1000, 100), 1);
    ::usleep(300 * 1000);
    std::puts("serving until interrupted");
    std::fflush(stdout);
    r.wait();
    FAIL("not interrupted");
}

TEST_SUITE_END();

int main(int argc, char** argv) {
    coproc::mpi::session session(argc, argv); // agents serve here and exit
    the_session = &session;
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
