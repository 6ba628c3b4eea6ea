// Reuse of large message buffers (see reserve_message and keep_buffer in
// include/coproc/detail/archive.hpp):
// one bounded depot per process.
#include <coproc/detail/archive.hpp>

#include <algorithm>
#include <mutex>
#include <pthread.h>
#include <utility>
#include <vector>

namespace coproc::detail {

namespace {

constexpr std::size_t depot_max_buffers = 32;
constexpr std::size_t depot_max_bytes = std::size_t{32} << 20;
constexpr std::size_t max_reused_buffer = std::size_t{8} << 20;

// The mutex is held across fork() (pthread_atfork), so a child never inherits it locked by a
// thread it does not have. Never destroyed: threads may free buffers during exit.
struct depot {
    std::mutex mu;
    std::vector<std::vector<char>> buffers;
    std::size_t bytes = 0;

    depot() {
        buffers.reserve(depot_max_buffers); // keep() never allocates
        pthread_atfork([] { instance().mu.lock(); }, [] { instance().mu.unlock(); },
                       [] { instance().mu.unlock(); });
    }
    static depot& instance() {
        static depot* d = new depot;
        return *d;
    }
};

} // namespace

void reserve_message(std::vector<char>& out, std::size_t need, std::size_t fresh) {
    if (need <= out.capacity())
        return;
    if (need < reused_buffer_min)
        return out.reserve(fresh);
    std::vector<char> bigger;
    {
        depot& d = depot::instance();
        std::lock_guard lk(d.mu);
        auto best = d.buffers.end();
        for (auto it = d.buffers.begin(); it != d.buffers.end(); ++it)
            if (it->capacity() >= need &&
                (best == d.buffers.end() || it->capacity() < best->capacity()))
                best = it;
        if (best != d.buffers.end()) {
            bigger = std::move(*best);
            *best = std::move(d.buffers.back());
            d.buffers.pop_back();
            d.bytes -= bigger.capacity();
        }
    }
    if (bigger.capacity() == 0) {
        fresh = std::max(fresh, need);
        bigger.reserve(fresh);
        if (fresh >= populate_min_bytes)
            populate_for_write(bigger.data(), fresh);
    }
    bigger.assign(out.begin(), out.end());
    out.swap(bigger);
    keep_buffer(std::move(bigger));
}

void keep_buffer(std::vector<char>&& buf) noexcept {
    const std::size_t cap = buf.capacity();
    if (cap < reused_buffer_min || cap > max_reused_buffer)
        return;
    std::vector<char> kept = std::move(buf); // freed here, outside the lock, if not kept
    depot& d = depot::instance();
    std::lock_guard lk(d.mu);
    if (d.buffers.size() < depot_max_buffers && d.bytes + cap <= depot_max_bytes) {
        kept.clear();
        d.buffers.push_back(std::move(kept)); // reserved: does not allocate
        d.bytes += cap;
    }
}

void release_kept_buffers() noexcept {
    depot& d = depot::instance();
    std::lock_guard lk(d.mu);
    d.buffers.clear(); // keeps its capacity: keep() still never allocates
    d.bytes = 0;
}

std::size_t kept_buffer_bytes() noexcept {
    depot& d = depot::instance();
    std::lock_guard lk(d.mu);
    return d.bytes;
}

} // namespace coproc::detail
