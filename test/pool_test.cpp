// Test that header file is self-contained.
#include <coproc/pool.hpp>

#include "test_util.hpp"

#include <asio/use_awaitable.hpp>

#include <numeric>

namespace {
int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }
} // namespace

TEST_SUITE_BEGIN("pool");

TEST_CASE("starmap_async from plain blocking code") {
    coproc::pool pool(2);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    auto r = pool.starmap_async(add, pairs);
    CHECK(r.get() == std::vector<int>{3, 7, 11});
}

COPROC_TEST_CASE("map keeps input order on the caller's io_context") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    std::vector<int> v(1000);
    std::iota(v.begin(), v.end(), 0);
    auto r = co_await pool.map(square, v);
    REQUIRE(r.size() == v.size());
    for (int i = 0; i < 1000; ++i)
        CHECK(r[i] == i * i);
    pool.close();
    co_await pool.async_join();
}

TEST_SUITE_END();
