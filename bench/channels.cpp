// The queue, pipe and lock workloads of WORKLOADS.md (12-19), through coproc's public API.
// Children are coproc::process; they wait for a start signal (an event) so that process start-up
// stays outside the timed region, as the spec asks.
#include "bench.hpp"

#include <coproc/coproc.hpp>

#include <atomic>
#include <cstdint>
#include <sys/mman.h>
#include <vector>

namespace {

using namespace bench;
using blob = std::vector<std::uint8_t>;
constexpr std::size_t MiB = 1 << 20;
constexpr std::size_t KiB64 = 64 * 1024;

// A start signal: children block in wait() until the parent calls go(). An event, not a message
// on one pipe end per child: two processes receiving on one end at once may split a message
// between them, as with Python's Connection.
struct start_signal {
    coproc::event started;
    void wait() { started.wait(); }
    void go() { started.set(); }
};

// ---------------------------------------------------------------- queues

void produce_ints(coproc::queue<std::int64_t> q, start_signal s, std::int64_t n) {
    s.wait();
    for (std::int64_t i = 0; i < n; ++i)
        q.put(i);
    q.put(-1);
}

void queue_small() {
    const auto n = static_cast<std::int64_t>(n_of(1'000'000));
    coproc::queue<std::int64_t> q;
    start_signal s;
    coproc::process producer(produce_ints, q, s, n);
    producer.start();
    const auto t0 = clock::now();
    s.go();
    std::int64_t sum = 0, count = 0;
    for (std::int64_t v; (v = q.get()) != -1; ++count)
        sum += v;
    const double dt = seconds_since(t0);
    producer.join();
    emit("queue_small", double(n) / dt, "msgs/s", std::size_t(n),
         count == n && sum == n * (n - 1) / 2 && producer.exitcode() == 0);
}

void produce_blobs(coproc::queue<blob> q, start_signal s, std::int64_t n) {
    s.wait();
    blob b(KiB64);
    for (std::int64_t i = 0; i < n; ++i) {
        b[0] = static_cast<std::uint8_t>(i % 256);
        q.put(b);
    }
    q.put(blob{});
}

void queue_large() {
    const auto n = static_cast<std::int64_t>(n_of(20'000));
    coproc::queue<blob> q;
    start_signal s;
    coproc::process producer(produce_blobs, q, s, n);
    producer.start();
    const auto t0 = clock::now();
    s.go();
    bool ok = true;
    std::int64_t count = 0;
    for (blob v; !(v = q.get()).empty(); ++count)
        ok &= v.size() == KiB64 && v[0] == count % 256;
    const double dt = seconds_since(t0);
    producer.join();
    emit("queue_large", double(n * KiB64) / 1e6 / dt, "MB/s", std::size_t(n),
         ok && count == n && producer.exitcode() == 0);
}

void produce_range(coproc::queue<std::int64_t> q, start_signal s, std::int64_t lo,
                   std::int64_t hi) {
    s.wait();
    for (std::int64_t i = lo; i < hi; ++i)
        q.put(i);
    q.put(-1);
}

// Collects ids until the first sentinel; sends back a byte per id seen (2 on a duplicate).
void consume_ids(coproc::queue<std::int64_t> q, coproc::queue<blob> results, std::int64_t n) {
    blob seen(static_cast<std::size_t>(n));
    for (std::int64_t v; (v = q.get()) != -1;)
        seen[static_cast<std::size_t>(v)] += 1;
    results.put(seen);
}

void queue_mpmc() {
    const auto n = static_cast<std::int64_t>(n_of(500'000));
    coproc::queue<std::int64_t> q;
    coproc::queue<blob> results;
    start_signal s;
    std::vector<coproc::process> ps;
    ps.emplace_back(produce_range, q, s, std::int64_t{0}, n / 2);
    ps.emplace_back(produce_range, q, s, n / 2, n);
    ps.emplace_back(consume_ids, q, results, n);
    ps.emplace_back(consume_ids, q, results, n);
    for (auto& p : ps)
        p.start();
    const auto t0 = clock::now();
    s.go();
    const blob a = results.get(), b = results.get();
    const double dt = seconds_since(t0);
    bool ok = a.size() == std::size_t(n) && b.size() == std::size_t(n);
    for (std::size_t i = 0; ok && i < a.size(); ++i)
        ok = a[i] + b[i] == 1; // exactly once, across both consumers
    for (auto& p : ps) {
        p.join();
        ok &= p.exitcode() == 0;
    }
    emit("queue_mpmc", double(n) / dt, "msgs/s", std::size_t(n), ok);
}

// ---------------------------------------------------------------- pipes

void echo(coproc::connection<std::int64_t> c) {
    for (std::int64_t v; (v = c.recv()) != -1;)
        c.send(v);
}

void pipe_pingpong() {
    const auto n = static_cast<std::int64_t>(n_of(100'000));
    auto [a, b] = coproc::pipe<std::int64_t>();
    coproc::process child(echo, b);
    child.start();
    for (std::int64_t i = 0; i < 100; ++i) {
        a.send(i);
        (void)a.recv();
    }
    bool ok = true;
    const auto t0 = clock::now();
    for (std::int64_t i = 0; i < n; ++i) {
        a.send(i);
        ok &= a.recv() == i;
    }
    const double dt = seconds_since(t0);
    a.send(-1);
    child.join();
    emit("pipe_pingpong", dt * 1e6 / double(n), "us", std::size_t(n),
         ok && child.exitcode() == 0);
}

void send_ints(coproc::connection<std::int64_t> c, std::int64_t n) {
    (void)c.recv(); // start signal
    for (std::int64_t i = 0; i < n; ++i)
        c.send(i);
    c.send(-1);
}

void pipe_stream_small() {
    const auto n = static_cast<std::int64_t>(n_of(1'000'000));
    auto [a, b] = coproc::pipe<std::int64_t>();
    coproc::process child(send_ints, b, n);
    child.start();
    const auto t0 = clock::now();
    a.send(0);
    std::int64_t sum = 0, count = 0;
    for (std::int64_t v; (v = a.recv()) != -1; ++count)
        sum += v;
    const double dt = seconds_since(t0);
    child.join();
    emit("pipe_stream_small", double(n) / dt, "msgs/s", std::size_t(n),
         count == n && sum == n * (n - 1) / 2 && child.exitcode() == 0);
}

void send_blobs(coproc::connection<blob> c, std::int64_t n) {
    (void)c.recv(); // start signal
    blob b(MiB);
    for (std::int64_t i = 0; i < n; ++i) {
        b[0] = static_cast<std::uint8_t>(i % 256);
        c.send(b);
    }
    c.send(blob{});
}

void pipe_stream_large() {
    const auto n = static_cast<std::int64_t>(n_of(2'000));
    auto [a, b] = coproc::pipe<blob>();
    coproc::process child(send_blobs, b, n);
    child.start();
    const auto t0 = clock::now();
    a.send(blob{});
    bool ok = true;
    std::int64_t count = 0;
    for (blob v; !(v = a.recv()).empty(); ++count)
        ok &= v.size() == MiB && v[0] == count % 256;
    const double dt = seconds_since(t0);
    child.join();
    emit("pipe_stream_large", double(n * MiB) / 1e6 / dt, "MB/s", std::size_t(n),
         ok && count == n && child.exitcode() == 0);
}

// ---------------------------------------------------------------- locks

void lock_uncontended() {
    const std::size_t n = n_of(1'000'000);
    coproc::lock lk;
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < n; ++i) {
        lk.acquire();
        lk.release();
    }
    emit("lock_uncontended", seconds_since(t0) * 1e9 / double(n), "ns", n, true);
}

void add_under_lock(coproc::lock lk, int* counter, start_signal s, std::int64_t n) {
    s.wait();
    for (std::int64_t i = 0; i < n; ++i) {
        lk.acquire();
        *counter += 1; // a plain int: only the lock keeps the count exact
        lk.release();
    }
}

void lock_contended() {
    const auto per = static_cast<std::int64_t>(n_of(400'000, 2) / 2);
    void* shared = ::mmap(nullptr, sizeof(int), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        throw std::system_error(errno, std::system_category(), "mmap of the counter failed");
    int* counter = static_cast<int*>(shared);
    *counter = 0;
    coproc::lock lk;
    start_signal s;
    std::vector<coproc::process> ps;
    ps.emplace_back(add_under_lock, lk, counter, s, per);
    ps.emplace_back(add_under_lock, lk, counter, s, per);
    for (auto& p : ps)
        p.start();
    const auto t0 = clock::now();
    s.go();
    bool ok = true;
    for (auto& p : ps) {
        p.join();
        ok &= p.exitcode() == 0;
    }
    const double dt = seconds_since(t0);
    ok &= *counter == 2 * per;
    ::munmap(shared, sizeof(int));
    emit("lock_contended", double(2 * per) / dt, "ops/s", std::size_t(2 * per), ok);
}

} // namespace

namespace bench {

void add_channel_workloads(std::vector<workload>& all) {
    all.insert(all.end(), {
                              {"queue_small", "msgs/s", queue_small},
                              {"queue_large", "MB/s", queue_large},
                              {"queue_mpmc", "msgs/s", queue_mpmc},
                              {"pipe_pingpong", "us", pipe_pingpong},
                              {"pipe_stream_small", "msgs/s", pipe_stream_small},
                              {"pipe_stream_large", "MB/s", pipe_stream_large},
                              {"lock_uncontended", "ns", lock_uncontended},
                              {"lock_contended", "ops/s", lock_contended},
                          });
}

} // namespace bench
