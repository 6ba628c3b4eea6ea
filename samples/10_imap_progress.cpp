// Python:
//   for done, r in enumerate(pool.imap_unordered(work, range(n)), 1):
//       print(f"\r{bar(done / n)} {done}/{n} {rate:.0f} items/s ETA {eta:.1f} s", end="")
// A live progress bar on a terminal; a line every 10% when the output is a file or a pipe.
//
//   10_imap_progress [N]      N work items (default 100, about half a second)
#include <coproc/coproc.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ranges>
#include <string>
#include <thread>
#include <unistd.h>

using steady = std::chrono::steady_clock;

long long work(int x) { // uneven work items: 2 to 20 ms each
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + x * 7 % 19));
    return 1LL * x * x;
}

void show(int done, int n, double seconds, bool tty) {
    const double rate = done / seconds;
    const double eta = (n - done) / rate;
    if (tty) {
        const int width = 30, filled = width * done / n;
        std::string bar = std::string(filled, '#') + std::string(width - filled, '-');
        std::printf("\r[%s] %d/%d %3d%% %6.0f items/s  ETA %4.1f s", bar.c_str(), done, n,
                    100 * done / n, rate, eta);
    } else {
        std::printf("%3d%% %d/%d %.0f items/s ETA %.1f s\n", 100 * done / n, done, n, rate, eta);
    }
    std::fflush(stdout);
}

asio::awaitable<void> run(coproc::pool& pool, int n) {
    const bool tty = isatty(STDOUT_FILENO);
    const steady::time_point start = steady::now();
    steady::time_point last_shown = start;
    int done = 0, tenths_shown = 0;
    long long sum = 0;

    auto results = pool.imap_unordered(work, std::views::iota(0, n));
    while (auto r = co_await results.next()) {
        sum += *r;
        ++done;
        const steady::time_point now = steady::now();
        const double seconds = std::chrono::duration<double>(now - start).count();
        if (tty && (now - last_shown > std::chrono::milliseconds(50) || done == n)) {
            show(done, n, seconds, tty); // redraw at most 20 times a second
            last_shown = now;
        } else if (!tty && 10 * done / n > tenths_shown) {
            show(done, n, seconds, tty); // every 10%
            tenths_shown = 10 * done / n;
        }
    }
    if (tty)
        std::printf("\n");

    pool.close();
    co_await pool.async_join();
    std::printf("sum of squares below %d: %lld\n", n, sum);
    std::puts("10_imap_progress: ok");
}

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : 100;
    if (n < 1) {
        std::fprintf(stderr, "usage: 10_imap_progress [N], N >= 1 work items\n");
        return 2;
    }
    asio::io_context io;
    coproc::pool pool(io.get_executor(), {.processes = 4});
    asio::co_spawn(io, run(pool, n), asio::detached);
    io.run();
}
