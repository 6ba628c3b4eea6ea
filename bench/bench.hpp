// Shared pieces of coproc-bench (see bench.cpp).
#pragma once

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

struct workload {
    const char* name;
    const char* unit;
    void (*run)();
};

/// N scaled by BENCH_SCALE, at least `lo`.
std::size_t n_of(std::size_t n, std::size_t lo = 1);
double seconds_since(clock::time_point t0);
/// One JSON result line; a non-finite value prints as null with ok false.
void emit(const char* workload, double value, const char* unit, std::size_t count, bool ok);
/// Runs `body` as a coroutine on a fresh io_context until it finishes; rethrows its error.
void run_on_loop(std::function<asio::awaitable<void>(asio::io_context&)> body);

/// The queue, pipe and lock workloads (channels.cpp).
void add_channel_workloads(std::vector<workload>& all);
/// The event and semaphore workloads (sync.cpp).
void add_sync_workloads(std::vector<workload>& all);

/// The cancellation workloads (cancel.cpp).
void add_cancel_workloads(std::vector<workload>& all);

/// Runs the named workloads (all when none are named) in table order; 2 on an unknown name.
int run_workloads(const std::vector<workload>& all, int argc, char** argv);

} // namespace bench
