// The event and semaphore workloads (coproc's own, no Python anchor):
//   event_pingpong       two events between two processes; the parent sets `ping` and waits for
//                        `pong`, the child waits for `ping`, clears it and sets `pong`.
//                        value = total_us / N round trips (lower is better)
//   semaphore_contended  2 processes each N/2 x (acquire; counter += 1 in shared memory, a
//                        plain int; release) on semaphore(1). Verify counter == N.
//                        value = N / s (higher is better)
#include <coproc/coproc.hpp>
#include "bench.hpp"

#include <cstdint>
#include <vector>

namespace {

using namespace bench;

void pong_side(coproc::event ping, coproc::event pong, coproc::event ready, std::int64_t n) {
    ready.set();
    for (std::int64_t i = 0; i < n; ++i) {
        ping.wait();
        ping.clear();
        pong.set();
    }
}

void event_pingpong() {
    const auto n = static_cast<std::int64_t>(n_of(100'000));
    coproc::event ping, pong, ready;
    coproc::process child(pong_side, ping, pong, ready, n);
    child.start();
    ready.wait();
    const auto t0 = clock::now();
    for (std::int64_t i = 0; i < n; ++i) {
        ping.set();
        pong.wait();
        pong.clear();
    }
    const double dt = seconds_since(t0);
    child.join();
    emit("event_pingpong", dt * 1e6 / double(n), "us", std::size_t(n), child.exitcode() == 0);
}

void add_under_semaphore(coproc::semaphore s, coproc::value<int> counter, coproc::barrier start,
                         std::int64_t n) {
    int* c = counter.get();
    start.wait();
    for (std::int64_t i = 0; i < n; ++i) {
        s.acquire();
        *c += 1; // a plain int: only the semaphore keeps the count exact
        s.release();
    }
}

void semaphore_contended() {
    const auto per = static_cast<std::int64_t>(n_of(400'000, 2) / 2);
    coproc::semaphore s(1);
    coproc::value<int> counter(0);
    coproc::barrier start(3);
    std::vector<coproc::process> ps;
    ps.emplace_back(add_under_semaphore, s, counter, start, per);
    ps.emplace_back(add_under_semaphore, s, counter, start, per);
    for (auto& p : ps)
        p.start();
    start.wait();
    const auto t0 = clock::now();
    bool ok = true;
    for (auto& p : ps) {
        p.join();
        ok &= p.exitcode() == 0;
    }
    const double dt = seconds_since(t0);
    ok &= counter.load() == 2 * per;
    emit("semaphore_contended", double(2 * per) / dt, "ops/s", std::size_t(2 * per), ok);
}

} // namespace

namespace bench {

void add_sync_workloads(std::vector<workload>& all) {
    all.insert(all.end(), {
                              {"event_pingpong", "us", event_pingpong},
                              {"semaphore_contended", "ops/s", semaphore_contended},
                          });
}

} // namespace bench
