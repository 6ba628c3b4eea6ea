// coproc-mpi-bench: mpi_pool's figures beside the local pool's (same workloads as coproc-bench's
// apply_latency and map_chunked: square over int64, two workers in all, here one per agent).
//   mpirun -np 3 build-release/bench/coproc-mpi-bench        (bench/mpi_run.sh: two fake hosts)
// Prints one JSON line per workload, as coproc-bench does.
#include <coproc/mpi.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <ranges>

namespace {

using clock = std::chrono::steady_clock;

std::int64_t square(std::int64_t x) { return x * x; }

std::size_t scaled(std::size_t n) {
    const char* e = std::getenv("BENCH_SCALE");
    const double s = e ? std::atof(e) : 1.0;
    return std::max<std::size_t>(1, static_cast<std::size_t>(static_cast<double>(n) * s));
}

void emit(const char* workload, double value, const char* unit, std::size_t count, bool ok) {
    std::printf("{\"workload\": \"%s\", \"impl\": \"coproc\", \"value\": %.4f, \"unit\": \"%s\", "
                "\"count\": %zu, \"ok\": %s}\n",
                workload, value, unit, count, ok ? "true" : "false");
    std::fflush(stdout);
}

double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
}

} // namespace

int main(int argc, char** argv) {
    coproc::mpi::session mpi(argc, argv);
    asio::io_context io;
    coproc::mpi_pool pool(mpi, io.get_executor(), {.processes_per_rank = 1, .spawn = 2});
    auto run = [&]() -> asio::awaitable<void> {
        for (std::int64_t i = 0; i < 100; ++i) // warm up
            co_await pool.apply(square, i);

        const std::size_t n = scaled(20'000);
        bool ok = true;
        auto t0 = clock::now();
        for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); ++i)
            ok &= co_await pool.apply(square, i) == i * i;
        emit("mpi_apply_latency", seconds_since(t0) * 1e6 / static_cast<double>(n), "us", n, ok);

        const std::size_t m = scaled(1'000'000);
        t0 = clock::now();
        auto r = co_await pool.map(square, std::views::iota(std::int64_t{0}, std::int64_t(m)));
        const double dt = seconds_since(t0);
        std::int64_t sum = std::accumulate(r.begin(), r.end(), std::int64_t{0});
        const auto k = static_cast<std::int64_t>(m) - 1;
        emit("mpi_map_chunked", static_cast<double>(m) / dt, "items/s", m,
             r.size() == m && sum == k * (k + 1) * (2 * k + 1) / 6);
        pool.close();
        co_await pool.async_join();
    };
    auto done = asio::co_spawn(io, run(), asio::use_future);
    io.run();
    done.get();
}
