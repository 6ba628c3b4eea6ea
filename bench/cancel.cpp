// The cancellation workloads (coproc only; no anchor can cancel a running task):
//   cancel_queued   µs from emitting a queued call's cancellation until its operation completes
//   cancel_running  ms from cancelling a running task (cancel_grace 0) until its worker's
//                   replacement has served the next call
#include "bench.hpp"

#include <coproc/coproc.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/post.hpp>

#include <atomic>
#include <cstdint>
#include <sys/mman.h>
#include <system_error>
#include <thread>
#include <tuple>

namespace {

using namespace bench;
using namespace std::chrono_literals;

// Set by a task once it runs (shared with the workers: mapped before any pool starts).
std::atomic<int>& running_flag() {
    static auto* const flag = [] {
        void* m = ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            throw std::system_error(errno, std::system_category(), "mmap");
        return new (m) std::atomic<int>(0);
    }();
    return *flag;
}
const bool mapped_early = (running_flag(), true);

std::int64_t square(std::int64_t x) { return x * x; }

// Keeps its worker busy until cancelled (at most a minute).
int busy_until_cancelled() {
    running_flag() = 1;
    const auto end = clock::now() + 60s;
    while (!coproc::this_task::stop_requested() && clock::now() < end)
        std::this_thread::sleep_for(1ms);
    return 0;
}

// Ignores cancellation.
int sleep_long() {
    running_flag() = 1;
    std::this_thread::sleep_for(30s);
    return 0;
}

bool aborted(const std::exception_ptr& e) {
    try {
        if (e)
            std::rethrow_exception(e);
    } catch (const std::system_error& x) {
        return x.code() == asio::error::operation_aborted;
    } catch (...) {
    }
    return false;
}

void cancel_queued() {
    const std::size_t n = n_of(2000, 50);
    coproc::pool pool(2);
    // Both workers busy: every call below waits in the queue until it is cancelled.
    auto b1 = pool.apply_async(busy_until_cancelled);
    auto b2 = pool.apply_async(busy_until_cancelled);
    bool ok = true;
    double total_us = 0;
    run_on_loop([&](asio::io_context& io) -> asio::awaitable<void> {
        const auto args = std::tuple<std::int64_t>{7};
        for (std::size_t i = 0; i < n; ++i) {
            asio::cancellation_signal sig;
            bool done = false;
            pool.async_apply(square, args,
                             asio::bind_cancellation_slot(
                                 sig.slot(), asio::bind_executor(io, [&](std::exception_ptr e,
                                                                         std::int64_t) {
                                     ok = ok && aborted(e);
                                     done = true;
                                 })));
            const auto t0 = clock::now();
            sig.emit(asio::cancellation_type::terminal);
            while (!done)
                co_await asio::post(io, asio::use_awaitable);
            total_us += seconds_since(t0) * 1e6;
        }
    });
    b1.cancel();
    b2.cancel();
    emit("cancel_queued", total_us / double(n), "us", n, ok);
}

void cancel_running() {
    const std::size_t n = n_of(20, 5);
    coproc::pool pool(coproc::pool_options{.processes = 1, .cancel_grace = 0ms});
    bool ok = pool.apply_async(square, {3}).get() == 9;
    double total_ms = 0;
    for (std::size_t i = 0; i < n; ++i) {
        running_flag() = 0;
        auto r = pool.apply_async(sleep_long);
        while (running_flag() == 0)
            std::this_thread::sleep_for(100us);
        const auto t0 = clock::now();
        r.cancel();
        ok = ok && pool.apply_async(square, {5}).get() == 25;
        total_ms += seconds_since(t0) * 1e3;
        try {
            r.get();
            ok = false;
        } catch (const std::system_error& e) {
            ok = ok && e.code() == asio::error::operation_aborted;
        }
    }
    emit("cancel_running", total_ms / double(n), "ms", n, ok);
}

} // namespace

namespace bench {

void add_cancel_workloads(std::vector<workload>& all) {
    all.push_back({"cancel_queued", "us", cancel_queued});
    all.push_back({"cancel_running", "ms", cancel_running});
}

} // namespace bench
