// Replaces the global operator new with one that records the largest single request and the
// total requested, so a test can check that a forged length prefix does not make coproc allocate
// much. Include it in exactly one file of a test binary (a replacement operator new may not be
// inline).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace coproc::test {

inline std::atomic<std::size_t> largest_allocation{0}, total_allocated{0};

/// The largest single allocation since the last call (or the start).
inline std::size_t take_largest_allocation() noexcept { return largest_allocation.exchange(0); }
/// The bytes allocated since the last call (or the start), freed or not.
inline std::size_t take_total_allocated() noexcept { return total_allocated.exchange(0); }

} // namespace coproc::test

// g++ warns when it inlines these into a caller of operator new and sees free(): they match.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(std::size_t n) {
    coproc::test::total_allocated += n;
    auto& largest = coproc::test::largest_allocation;
    for (std::size_t seen = largest.load(); n > seen && !largest.compare_exchange_weak(seen, n);) {
    }
    if (void* p = std::malloc(n == 0 ? 1 : n))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

#pragma GCC diagnostic pop
