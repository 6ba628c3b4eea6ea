// coproc-bench: the workloads of shared/bench/WORKLOADS.md, through coproc's public API.
//
//   coproc-bench [workload ...]        BENCH_SCALE=0.1 coproc-bench map_chunked
//
// Prints one JSON line per workload: {"workload", "impl": "coproc", "value", "unit", "count",
// "ok"}. Every result is verified; a wrong sum or a lost message prints "ok": false.
#include "bench.hpp"

#include <coproc/coproc.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <ranges>
#include <string>
#include <vector>

namespace bench {

double scale() {
    static const double s = [] {
        const char* e = std::getenv("BENCH_SCALE");
        return e ? std::atof(e) : 1.0;
    }();
    return s;
}

std::size_t n_of(std::size_t n, std::size_t lo) {
    return std::max<std::size_t>(lo, static_cast<std::size_t>(static_cast<double>(n) * scale()));
}

double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
}

void emit(const char* workload, double value, const char* unit, std::size_t count, bool ok) {
    if (std::isfinite(value))
        std::printf("{\"workload\": \"%s\", \"impl\": \"coproc\", \"value\": %.4f, \"unit\": "
                    "\"%s\", \"count\": %zu, \"ok\": %s}\n",
                    workload, value, unit, count, ok ? "true" : "false");
    else
        std::printf("{\"workload\": \"%s\", \"impl\": \"coproc\", \"value\": null, \"unit\": "
                    "\"%s\", \"count\": %zu, \"ok\": false}\n",
                    workload, unit, count);
    std::fflush(stdout);
}

int run_workloads(const std::vector<workload>& all, int argc, char** argv) {
    std::vector<std::string> chosen(argv + 1, argv + argc);
    for (const auto& c : chosen)
        if (std::none_of(all.begin(), all.end(), [&](const workload& w) { return c == w.name; })) {
            std::fprintf(stderr, "unknown workload '%s'; known:", c.c_str());
            for (const auto& w : all)
                std::fprintf(stderr, " %s", w.name);
            std::fprintf(stderr, "\n");
            return 2;
        }
    for (const auto& w : all) {
        if (!chosen.empty() && std::find(chosen.begin(), chosen.end(), w.name) == chosen.end())
            continue;
        try {
            w.run();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s failed: %s\n", w.name, e.what());
            emit(w.name, NAN, w.unit, 0, false);
        }
    }
    return 0;
}

void run_on_loop(std::function<asio::awaitable<void>(asio::io_context&)> body) {
    asio::io_context io(1);
    std::exception_ptr failure;
    asio::co_spawn(io, body(io), [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);
}

} // namespace bench

namespace {

using namespace bench;
constexpr std::size_t W = 2;
constexpr std::size_t MiB = 1 << 20;
using blob = std::vector<std::uint8_t>;

std::int64_t square(std::int64_t x) { return x * x; }
std::int64_t add(std::int64_t a, std::int64_t b) { return a + b; }
std::int64_t length(const blob& b) { return static_cast<std::int64_t>(b.size()); }
blob make_blob(std::int64_t i) { return blob(MiB, static_cast<std::uint8_t>(i % 256)); }

std::uint32_t burn_m() { return static_cast<std::uint32_t>(n_of(20'000'000)); }
std::uint32_t burn(std::uint32_t seed) {
    const std::uint32_t m = burn_m();
    std::uint32_t acc = seed;
    for (std::uint32_t i = 0; i < m; ++i)
        acc = acc * 31u + i * i;
    return acc;
}

// Σ i² for i < n, exact for the counts used here.
std::int64_t sum_sq(std::int64_t n) { return (n - 1) * n * (2 * n - 1) / 6; }

template <class Range> std::int64_t sum(const Range& r) {
    return std::accumulate(r.begin(), r.end(), std::int64_t{0});
}

void pool_startup() {
    const std::size_t n = n_of(20, 2);
    bool ok = true;
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < n; ++i) {
        coproc::pool p(W);
        ok &= p.apply_async(square, {3}).get() == 9;
        p.close();
        p.join();
    }
    emit("pool_startup", seconds_since(t0) * 1e3 / static_cast<double>(n), "ms", n, ok);
}

void apply_latency() {
    const std::size_t n = n_of(20'000);
    bool ok = true;
    double dt = 0;
    run_on_loop([&](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool p(io.get_executor(), {.processes = W});
        for (std::int64_t i = 0; i < 100; ++i)
            co_await p.apply(square, i);
        const auto t0 = clock::now();
        for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); ++i)
            ok &= co_await p.apply(square, i) == i * i;
        dt = seconds_since(t0);
        p.close();
        co_await p.async_join();
    });
    emit("apply_latency", dt * 1e6 / static_cast<double>(n), "us", n, ok);
}

void apply_async_throughput() {
    const std::size_t n = n_of(200'000);
    coproc::pool p(W);
    p.apply_async(square, {1}).get();
    const auto t0 = clock::now();
    std::vector<coproc::async_result<std::int64_t>> rs;
    rs.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
        rs.push_back(p.apply_async(square, {static_cast<std::int64_t>(i)}));
    std::int64_t s = 0;
    for (auto& r : rs)
        s += r.get();
    const double dt = seconds_since(t0);
    emit("apply_async_throughput", static_cast<double>(n) / dt, "tasks/s", n,
         s == sum_sq(static_cast<std::int64_t>(n)));
}

// Runs `body` with a warmed-up 2-worker pool on a fresh io_context, then closes and joins it.
void with_warm_pool(std::function<asio::awaitable<void>(coproc::pool&)> body) {
    run_on_loop([&](asio::io_context& io) -> asio::awaitable<void> {
        coproc::pool p(io.get_executor(), {.processes = W});
        co_await p.apply(square, 1);
        co_await body(p);
        p.close();
        co_await p.async_join();
    });
}

// map over range(n) with `chunksize` (0: default) from a coroutine on the caller's loop.
void map_range(const char* name, std::size_t n, std::size_t chunksize) {
    bool ok = false;
    double dt = 0;
    with_warm_pool([&](coproc::pool& p) -> asio::awaitable<void> {
        const auto t0 = clock::now();
        auto r =
            co_await p.map(square, std::views::iota(std::int64_t{0}, std::int64_t(n)), chunksize);
        dt = seconds_since(t0);
        ok = r.size() == n && sum(r) == sum_sq(static_cast<std::int64_t>(n));
    });
    emit(name, static_cast<double>(n) / dt, "items/s", n, ok);
}

void map_chunked() { map_range("map_chunked", n_of(1'000'000), 0); }
void map_chunksize1() { map_range("map_chunksize1", n_of(100'000), 1); }

void imap_workload(const char* name, bool ordered) {
    const std::size_t n = n_of(200'000);
    bool ok = true;
    double dt = 0;
    with_warm_pool([&](coproc::pool& p) -> asio::awaitable<void> {
        const auto t0 = clock::now();
        auto items = std::views::iota(std::int64_t{0}, std::int64_t(n));
        auto gen = ordered ? p.imap(square, items) : p.imap_unordered(square, items);
        std::int64_t i = 0, s = 0;
        while (auto v = co_await gen.next()) {
            if (ordered)
                ok &= *v == i * i;
            s += *v;
            ++i;
        }
        dt = seconds_since(t0);
        ok &= i == std::int64_t(n) && s == sum_sq(std::int64_t(n));
    });
    emit(name, static_cast<double>(n) / dt, "items/s", n, ok);
}

void imap_ordered() { imap_workload("imap_ordered", true); }
void imap_unordered() { imap_workload("imap_unordered", false); }

void starmap_small() {
    const std::size_t n = n_of(1'000'000);
    std::vector<std::tuple<std::int64_t, std::int64_t>> args(n);
    for (std::size_t i = 0; i < n; ++i)
        args[i] = {std::int64_t(i), std::int64_t(i) + 1};
    bool ok = false;
    double dt = 0;
    with_warm_pool([&](coproc::pool& p) -> asio::awaitable<void> {
        const auto t0 = clock::now();
        auto r = co_await p.starmap(add, args);
        dt = seconds_since(t0);
        ok = r.size() == n && sum(r) == std::int64_t(n) * std::int64_t(n);
    });
    emit("starmap_small", static_cast<double>(n) / dt, "items/s", n, ok);
}

void map_large_args() {
    const std::size_t n = n_of(512);
    std::vector<blob> blobs;
    blobs.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
        blobs.emplace_back(MiB, static_cast<std::uint8_t>(i % 256));
    bool ok = false;
    double dt = 0;
    with_warm_pool([&](coproc::pool& p) -> asio::awaitable<void> {
        const auto t0 = clock::now();
        auto r = co_await p.map(length, blobs, 1);
        dt = seconds_since(t0);
        ok = r.size() == n && std::ranges::all_of(r, [](auto x) { return x == MiB; });
    });
    emit("map_large_args", double(n * MiB) / 1e6 / dt, "MB/s", n, ok);
}

void map_large_results() {
    const std::size_t n = n_of(512);
    bool ok = true;
    double dt = 0;
    with_warm_pool([&](coproc::pool& p) -> asio::awaitable<void> {
        const auto t0 = clock::now();
        auto r = co_await p.map(make_blob, std::views::iota(std::int64_t{0}, std::int64_t(n)), 1);
        dt = seconds_since(t0);
        ok = r.size() == n;
        for (std::size_t i = 0; ok && i < n; ++i)
            ok = r[i].size() == MiB && r[i][0] == i % 256;
    });
    emit("map_large_results", double(n * MiB) / 1e6 / dt, "MB/s", n, ok);
}

// What map_large_results costs the parent before any worker or socket: keeping 512 results,
// each a fresh 1 MiB vector written once from a reply's bytes. A pool that returns its results
// pays at least this; the C limit, which reads every reply into one reused buffer, pays none of
// it. (Not a WORKLOADS.md workload: the bound beside map_large_results in the same run.)
void held_results_bound() {
    const std::size_t n = n_of(512);
    const blob reply(MiB, 7);
    std::vector<blob> held;
    held.reserve(n);
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < n; ++i)
        held.emplace_back(reply.begin(), reply.end());
    const double dt = seconds_since(t0);
    const bool ok = std::ranges::all_of(held, [](const blob& b) { return b.size() == MiB; });
    emit("held_results_bound", double(n * MiB) / 1e6 / dt, "MB/s", n, ok);
}

void cpu_scaling() {
    constexpr std::size_t tasks = 64;
    double t[3] = {};
    std::vector<std::uint32_t> res[3];
    for (std::size_t w : {1, 2}) {
        coproc::pool p(w);
        p.apply_async(square, {1}).get();
        const auto t0 = clock::now();
        res[w] = p.map_async(burn, std::views::iota(0u, std::uint32_t(tasks)), 1).get();
        t[w] = seconds_since(t0);
    }
    emit("cpu_scaling", t[1] / t[2], "x", tasks, res[1] == res[2] && res[1].size() == tasks);
}

} // namespace

int main(int argc, char** argv) {
    using namespace bench;
    std::vector<workload> all = {
        {"pool_startup", "ms", pool_startup},
        {"apply_latency", "us", apply_latency},
        {"apply_async_throughput", "tasks/s", apply_async_throughput},
        {"map_chunked", "items/s", map_chunked},
        {"map_chunksize1", "items/s", map_chunksize1},
        {"imap_ordered", "items/s", imap_ordered},
        {"imap_unordered", "items/s", imap_unordered},
        {"starmap_small", "items/s", starmap_small},
        {"map_large_args", "MB/s", map_large_args},
        {"map_large_results", "MB/s", map_large_results},
        {"held_results_bound", "MB/s", held_results_bound},
        {"cpu_scaling", "x", cpu_scaling},
    };
    add_channel_workloads(all);
    add_cancel_workloads(all);
    add_sync_workloads(all);
    return run_workloads(all, argc, argv);
}
