// Python:
//   for v in pool.imap(square, range(10)): print(v)           # in order
//   for v in pool.imap_unordered(slow_square, range(10)): ...  # as they finish
// Inside an Asio program the pool runs on your io_context and every call is co_awaited.
#include <coproc/coproc.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <ranges>
#include <thread>

int square(int x) { return x * x; }

int slow_square(int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10 * (x % 3)));
    return x * x;
}

asio::awaitable<void> demo(coproc::pool& pool) {
    auto in_order = pool.imap(square, std::views::iota(0, 10));
    std::printf("imap:          ");
    while (auto v = co_await in_order.next())
        std::printf(" %d", *v);

    auto as_done = pool.imap_unordered(slow_square, std::views::iota(0, 10));
    std::printf("\nimap_unordered:");
    while (auto v = co_await as_done.next())
        std::printf(" %d", *v);

    std::printf("\n");
    auto all = co_await pool.map(square, std::views::iota(0, 100));
    int sum = 0;
    for (int v : all)
        sum += v;
    std::printf("sum of squares below 100: %d\n", sum);

    pool.close();
    co_await pool.async_join();
    std::puts("04_imap: ok");
}

int main() {
    asio::io_context io;
    coproc::pool pool(io.get_executor(), {.processes = 2});
    asio::co_spawn(io, demo(pool), asio::detached);
    io.run();
}
