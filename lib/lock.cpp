// lock: a futex word in shared memory holding the holder's pid.
//
// Why not a PTHREAD_MUTEX_ROBUST mutex: it belongs to a thread. Python's Lock may be released by
// any thread, async_acquire takes the lock on a helper thread for a coroutine that releases it
// on another, and the kernel would declare the owner dead when that helper thread exits.
//
// The word is 0 (free), pid (held) or pid | waiters_bit (held, someone may sleep on it): the
// classic three-state futex mutex, with the holder's pid for robustness. A sleeping waiter wakes
// every liveness_period to check the holder: if it has exited (its pidfd is readable, zombies
// included) or is gone, one waiter replaces the dead pid with its own and reports owner_died.
// The pid is this_pid(), cached per process (a getpid() syscall per acquire cost ~50x the
// lock itself).
//
// Waiters sleep on a second word, `park`, that a release moves only when it finds the waiters
// bit, not on the lock word, which changes at every acquire: a holder that releases and takes
// the lock again in a loop would otherwise break every sleep at once, and pay a wake-up per
// release. An acquirer that finds the lock taken does not spin first: against such a holder,
// spinning catches the lock on most of its releases and moves it, and its cache line, from one
// CPU to the other on every acquire (two processes on two CPUs then make a third fewer acquires
// a second than when the waiter sleeps at once).
// Limitation: if a dead holder's pid is reused by a new process while the lock is held, the lock
// looks alive (pid_max makes that rare).
//
// async_acquire parks on the lock's sync_waits (sync_wait.cpp): its helper thread sets the
// waiters bit before it sleeps, like any waiter, and takes the lock with the bit kept.
#include <coproc/lock.hpp>
#include "sync_common.hpp"

#include <cerrno>
#include <poll.h>
#include <string>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace coproc {

namespace detail {

namespace {

constexpr std::uint32_t waiters_bit = 1u << 31;
constexpr std::uint32_t pid_mask = ~waiters_bit;

std::uint32_t self_id() noexcept { return this_pid(); }

[[noreturn]] void throw_owner_died(std::uint32_t pid) {
    throw owner_died("lock: its holder (pid " + std::to_string(pid) +
                     ") died while holding it; the caller now holds the lock");
}

} // namespace

bool exited(std::uint32_t pid) noexcept {
    const int fd = open_pidfd(static_cast<pid_t>(pid));
    if (fd < 0)
        return errno == ESRCH;
    pollfd p{fd, POLLIN, 0};
    const bool gone = ::poll(&p, 1, 0) > 0;
    ::close(fd);
    return gone;
}

/// The lock word, and the word its waiters sleep on: `park` moves only when a release finds
/// the waiters bit, so a sleeper is not woken by the holder taking and releasing the lock again
/// (it would be if it slept on `word`, which then changes at every acquire), and each of its
/// sleeps costs the holder one wake-up, not one per release. On its own cache line, so that
/// checking it before a sleep does not take `word`'s line from the holder.
struct lock_core::shared {
    alignas(64) std::atomic<std::uint32_t> word{0};
    alignas(64) std::atomic<std::uint32_t> park{0};
};

lock_core::lock_core()
    : shared_(map_shared_object<shared>("mmap of a lock failed")),
      waits_(shared_->park, [this] { return prepare(); }) {}

lock_core::~lock_core() { ::munmap(shared_, sizeof *shared_); }

bool lock_core::try_take(std::uint32_t me) noexcept {
    std::uint32_t free = 0;
    return shared_->word.compare_exchange_strong(free, me, std::memory_order_acquire,
                                                 std::memory_order_relaxed);
}

// If the holder in `seen` is dead, takes the lock over (keeping the waiters bit) and throws
// owner_died; returns if it is alive or another waiter took the lock first.
void lock_core::take_over_if_dead(std::uint32_t seen, std::uint32_t me) {
    const std::uint32_t holder = seen & pid_mask;
    if (holder == 0 || holder == me || !exited(holder))
        return;
    if (shared_->word.compare_exchange_strong(seen, me | (seen & waiters_bit),
                                              std::memory_order_acquire, std::memory_order_relaxed))
        throw_owner_died(holder);
}

bool lock_core::try_acquire() {
    const std::uint32_t me = self_id();
    if (try_take(me))
        return true;
    const std::uint32_t seen = shared_->word.load(std::memory_order_relaxed);
    if (seen == 0)
        return try_take(me);
    take_over_if_dead(seen, me);
    return false;
}

bool lock_core::acquire_until(std::optional<clock::time_point> deadline) {
    const std::uint32_t me = self_id();
    if (try_take(me))
        return true;
    for (;;) {
        // `park` first: a release that clears the bit seen below moves it after this read.
        const std::uint32_t parked = shared_->park.load(std::memory_order_acquire);
        std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
        if (v == 0) {
            // We may have been woken while others still sleep: keep the bit so release wakes
            // the next one.
            if (shared_->word.compare_exchange_weak(v, me | waiters_bit, std::memory_order_acquire,
                                                    std::memory_order_relaxed))
                return true;
            continue;
        }
        if (!(v & waiters_bit) &&
            !shared_->word.compare_exchange_weak(v, v | waiters_bit, std::memory_order_relaxed))
            continue;
        auto until = clock::now() + liveness_period;
        if (deadline && *deadline < until)
            until = *deadline;
        if (futex_wait(shared_->park, parked, until))
            continue;
        if (const std::uint32_t held = shared_->word.load(std::memory_order_relaxed); held != 0)
            take_over_if_dead(held, me);
        if (deadline && clock::now() >= *deadline) {
            std::uint32_t free = 0;
            return shared_->word.compare_exchange_strong(free, me | waiters_bit,
                                                         std::memory_order_acquire);
        }
    }
}

void lock_core::release() {
    if (shared_->word.load(std::memory_order_relaxed) == 0)
        throw coproc::error("lock: release() of a lock that is not held");
    if (shared_->word.exchange(0, std::memory_order_release) & waiters_bit) {
        shared_->park.fetch_add(1, std::memory_order_release);
        futex_wake(shared_->park, 1);
    }
}

bool lock_core::locked() const noexcept {
    return shared_->word.load(std::memory_order_relaxed) != 0;
}

bool lock_core::held_here() const noexcept {
    return (shared_->word.load(std::memory_order_relaxed) & pid_mask) == self_id();
}

// Before the helper sleeps: the bit that makes release() wake it, and the `park` value to sleep
// on (one it does not hold if the lock is free, so the helper attempts again at once).
std::uint32_t lock_core::prepare() noexcept {
    const std::uint32_t parked = shared_->park.load(std::memory_order_acquire);
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (v != 0 && !(v & waiters_bit) &&
           !shared_->word.compare_exchange_weak(v, v | waiters_bit, std::memory_order_relaxed)) {
    }
    return v == 0 ? parked - 1 : parked;
}

bool lock_core::attempt(bool timed_out, bool first) {
    const std::uint32_t me = self_id();
    if (first)
        return try_take(me);
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    if (v == 0)
        return shared_->word.compare_exchange_strong(v, me | waiters_bit, std::memory_order_acquire,
                                                     std::memory_order_relaxed);
    if (timed_out)
        take_over_if_dead(v, me);
    return false;
}

} // namespace detail

lock::lock() : core_(detail::make_registered<detail::lock_core>(detail::handle_kind::lock)) {}

} // namespace coproc
