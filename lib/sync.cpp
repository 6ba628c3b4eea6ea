// event, semaphore, rlock, condition and barrier: futex words in shared memory mapped before the
// processes that use them are forked (as lock's, see lock.cpp). Blocking forms sleep in
// block_until(); async_* forms park on the primitive's sync_waits (sync_wait.cpp), whose helper
// thread runs the same attempt steps.
#include <coproc/barrier.hpp>
#include <coproc/condition.hpp>
#include <coproc/error.hpp>
#include <coproc/event.hpp>
#include <coproc/rlock.hpp>
#include <coproc/semaphore.hpp>
#include "sync_common.hpp"

#include <climits>
#include <pthread.h>
#include <string>
#include <sys/mman.h>

namespace coproc {

namespace detail {

namespace {

constexpr std::uint32_t top_bit = 1u << 31;

template <class T> void unmap(T* p, std::size_t bytes = sizeof(T)) noexcept { ::munmap(p, bytes); }

} // namespace

// ---- event: bit 0 set, bit 1 waiters, bits 2.. the number of set() calls.

namespace {
constexpr std::uint32_t set_bit = 1, sleepers_bit = 2, set_count_one = 4;
}

event_core::event_core()
    : word_(map_shared_object<std::atomic<std::uint32_t>>("event: mmap failed", 0u)),
      waits_(*word_, [this] { return prepare(); }) {}

event_core::~event_core() { unmap(word_); }

void event_core::set() noexcept {
    std::uint32_t v = word_->load(std::memory_order_relaxed);
    for (;;) {
        if (v & set_bit)
            return;
        const std::uint32_t next = ((v & ~(set_bit | sleepers_bit)) + set_count_one) | set_bit;
        if (word_->compare_exchange_weak(v, next, std::memory_order_release,
                                         std::memory_order_relaxed))
            break;
    }
    if (v & sleepers_bit)
        futex_wake(*word_, INT_MAX);
}

void event_core::clear() noexcept { word_->fetch_and(~set_bit, std::memory_order_relaxed); }

bool event_core::is_set() const noexcept {
    return word_->load(std::memory_order_acquire) & set_bit;
}

std::uint32_t event_core::stamp() const noexcept { return word_->load(std::memory_order_acquire); }

bool event_core::passed(std::uint32_t since) const noexcept {
    const std::uint32_t v = word_->load(std::memory_order_acquire);
    return (v & set_bit) || (v >> 2) != (since >> 2);
}

std::uint32_t event_core::prepare() noexcept {
    std::uint32_t v = word_->load(std::memory_order_relaxed);
    while (!(v & (set_bit | sleepers_bit)))
        if (word_->compare_exchange_weak(v, v | sleepers_bit, std::memory_order_relaxed))
            return v | sleepers_bit;
    return v;
}

bool event_core::wait_until(std::optional<clock::time_point> deadline) {
    const std::uint32_t since = stamp();
    const auto ready = [&] { return passed(since); };
    if (spin_until(ready, spin_budget))
        return true;
    return block_until(
        *word_, [this] { return prepare(); }, [&](bool) { return ready(); }, deadline);
}

// ---- semaphore: the count in the low 31 bits, the top bit when someone may sleep.

struct semaphore_core::shared {
    std::atomic<std::uint32_t> word;
    std::uint32_t initial;
    bool bounded;
};

namespace {
constexpr std::uint32_t count_mask = ~top_bit;
}

semaphore_core::semaphore_core(unsigned value, bool bounded)
    : shared_(map_shared_object<shared>("semaphore: mmap failed")),
      waits_(shared_->word, [this] { return prepare(); }) {
    if (value > count_mask) {
        unmap(shared_);
        throw coproc::error("semaphore: the initial value " + std::to_string(value) +
                            " is above the largest count, 2^31 - 1");
    }
    shared_->word.store(value, std::memory_order_relaxed);
    shared_->initial = value;
    shared_->bounded = bounded;
}

semaphore_core::~semaphore_core() { unmap(shared_); }

bool semaphore_core::try_acquire() noexcept {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (v & count_mask)
        if (shared_->word.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                                std::memory_order_relaxed))
            return true;
    return false;
}

std::uint32_t semaphore_core::prepare() noexcept {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (v == 0)
        if (shared_->word.compare_exchange_weak(v, top_bit, std::memory_order_relaxed))
            return top_bit;
    return v;
}

bool semaphore_core::acquire_until(std::optional<clock::time_point> deadline) {
    if (spin_until([this] { return try_acquire(); }, spin_budget))
        return true;
    return block_until(
        shared_->word, [this] { return prepare(); }, [this](bool) { return try_acquire(); },
        deadline);
}

void semaphore_core::release(unsigned n) {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    for (;;) {
        const std::uint32_t count = v & count_mask;
        if (shared_->bounded && n > shared_->initial - std::min(count, shared_->initial))
            throw coproc::error("bounded_semaphore: release() would raise the count to " +
                                std::to_string(std::uint64_t{count} + n) +
                                ", above its initial value " + std::to_string(shared_->initial));
        if (n > count_mask - count)
            throw coproc::error("semaphore: release() would raise the count past 2^31 - 1");
        // The sleepers bit goes: every sleeper wakes, and those that find no count set it again.
        if (shared_->word.compare_exchange_weak(v, count + n, std::memory_order_release,
                                                std::memory_order_relaxed))
            break;
    }
    if ((v & top_bit) && n > 0)
        futex_wake(shared_->word, INT_MAX);
}

unsigned semaphore_core::value() const noexcept {
    return shared_->word.load(std::memory_order_relaxed) & count_mask;
}

// ---- rlock: a lock_core plus the holding thread and the recursion count.

struct rlock_core::shared {
    std::atomic<std::uint64_t> thread;
    std::atomic<std::uint32_t> count;
};

rlock_core::rlock_core() : shared_(map_shared_object<shared>("rlock: mmap failed")) {}

rlock_core::~rlock_core() { unmap(shared_); }

std::uint64_t rlock_core::this_thread() noexcept {
    return static_cast<std::uint64_t>(::pthread_self());
}

bool rlock_core::mine() const noexcept {
    return inner_.held_here() && shared_->thread.load(std::memory_order_relaxed) == this_thread();
}

void rlock_core::adopt(std::uint64_t thread) noexcept {
    shared_->thread.store(thread, std::memory_order_relaxed);
    shared_->count.store(1, std::memory_order_relaxed);
}

// Re-enters if `thread` holds it (when `reenter`), else takes the inner lock with `take`.
template <class Take> bool rlock_core::attempt_with(Take take, std::uint64_t thread, bool reenter) {
    if (reenter && inner_.held_here() &&
        shared_->thread.load(std::memory_order_relaxed) == thread) {
        shared_->count.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    try {
        if (!take())
            return false;
    } catch (const owner_died&) {
        adopt(thread);
        throw;
    }
    adopt(thread);
    return true;
}

bool rlock_core::acquire_until(std::optional<clock::time_point> deadline) {
    return attempt_with([&] { return inner_.acquire_until(deadline); }, this_thread(), true);
}

bool rlock_core::try_acquire() {
    return attempt_with([&] { return inner_.try_acquire(); }, this_thread(), true);
}

bool rlock_core::attempt(bool timed_out, bool first, std::uint64_t thread) {
    return attempt_with([&] { return inner_.attempt(timed_out, first); }, thread, first);
}

void rlock_core::release() {
    if (!mine())
        throw coproc::error("rlock: release() by a thread that does not hold it");
    if (shared_->count.fetch_sub(1, std::memory_order_relaxed) == 1) {
        shared_->thread.store(0, std::memory_order_relaxed);
        inner_.release();
    }
}

// ---- condition: `seq` to sleep on; `counts` = waiting << 32 | notified (not yet woken).

struct condition_core::shared {
    std::atomic<std::uint32_t> seq;
    std::atomic<std::uint64_t> counts;
};

namespace {
constexpr std::uint64_t one_waiting = std::uint64_t{1} << 32;
constexpr std::uint64_t notified_mask = one_waiting - 1;
} // namespace

condition_core::condition_core(std::shared_ptr<lock_core> lock)
    : shared_(map_shared_object<shared>("condition: mmap failed")), lock_(std::move(lock)),
      waits_(shared_->seq, [this] { return shared_->seq.load(std::memory_order_relaxed); }) {}

condition_core::~condition_core() { unmap(shared_); }

void condition_core::enter(const std::shared_ptr<lock_core>& held) {
    if (held != lock_ || !lock_->held_here())
        throw coproc::error("condition: wait() needs a guard that holds the condition's lock");
    shared_->counts.fetch_add(one_waiting, std::memory_order_relaxed);
}

bool condition_core::take() noexcept {
    std::uint64_t v = shared_->counts.load(std::memory_order_acquire);
    while (v & notified_mask)
        if (shared_->counts.compare_exchange_weak(v, v - 1, std::memory_order_acquire))
            return true;
    return false;
}

bool condition_core::leave() noexcept {
    std::uint64_t v = shared_->counts.load(std::memory_order_acquire);
    for (;;) {
        // Still counted as waiting: stop counting. Else a notification turned this waiter (or
        // one that died) into a notified one: take it.
        if (v >= one_waiting) {
            if (shared_->counts.compare_exchange_weak(v, v - one_waiting))
                return false;
        } else if (v & notified_mask) {
            if (shared_->counts.compare_exchange_weak(v, v - 1))
                return true;
        } else {
            return false;
        }
    }
}

void condition_core::abandon() noexcept {
    if (!leave())
        return;
    // Pass the notification on, as notify(1) would.
    std::uint64_t v = shared_->counts.load(std::memory_order_relaxed);
    while (v >= one_waiting)
        if (shared_->counts.compare_exchange_weak(v, v - one_waiting + 1)) {
            shared_->seq.fetch_add(1, std::memory_order_release);
            futex_wake(shared_->seq, INT_MAX);
            return;
        }
}

bool condition_core::wait_until(std::optional<clock::time_point> deadline) {
    const bool woken = block_until(
        shared_->seq, [this] { return shared_->seq.load(std::memory_order_relaxed); },
        [this](bool) { return take(); }, deadline);
    return woken || leave();
}

void condition_core::notify(unsigned n) {
    if (!lock_->held_here())
        throw coproc::error("condition: notify() without holding the condition's lock");
    std::uint64_t v = shared_->counts.load(std::memory_order_relaxed);
    std::uint64_t k = 0;
    do {
        k = std::min<std::uint64_t>(v >> 32, n);
        if (k == 0)
            return;
    } while (!shared_->counts.compare_exchange_weak(v, v - k * one_waiting + k,
                                                    std::memory_order_release));
    shared_->seq.fetch_add(1, std::memory_order_release);
    futex_wake(shared_->seq, INT_MAX);
}

// ---- barrier: the word is broken << 31 | round << 16 | arrivals; slot i holds
// round << 32 | pid of the i-th arrival of the round.

struct barrier_core::shared {
    std::atomic<std::uint32_t> word;
    std::atomic<std::uint64_t> slots[1]; // parties of them
};

namespace {
constexpr std::uint32_t broken_bit = top_bit;
constexpr std::uint32_t round_mask = 0x7fff;
constexpr std::uint32_t arrivals_mask = 0xffff;
std::uint32_t round_of(std::uint32_t v) noexcept { return (v >> 16) & round_mask; }
std::uint32_t make_word(std::uint32_t round, std::uint32_t arrivals) noexcept {
    return (round & round_mask) << 16 | arrivals;
}
[[noreturn]] void throw_broken(const std::string& why) {
    throw broken_barrier("barrier: broken (" + why + ")");
}
std::size_t barrier_bytes(unsigned parties) {
    if (parties == 0 || parties > arrivals_mask)
        throw coproc::error("barrier: parties must be 1 to 65535, not " + std::to_string(parties));
    return sizeof(barrier_core::shared) + (parties - 1) * sizeof(std::atomic<std::uint64_t>);
}
} // namespace

// A zeroed mapping is a valid state: atomics of integers are their value's bytes.
barrier_core::barrier_core(unsigned parties)
    : parties_(parties),
      shared_(static_cast<shared*>(map_shared(barrier_bytes(parties), "barrier: mmap failed"))),
      bytes_(barrier_bytes(parties)),
      waits_(shared_->word, [this] { return shared_->word.load(std::memory_order_relaxed); }) {}

barrier_core::~barrier_core() { ::munmap(shared_, bytes_); }

barrier_core::ticket barrier_core::arrive() {
    std::uint32_t v = shared_->word.load(std::memory_order_acquire);
    for (;;) {
        if (v & broken_bit)
            throw_broken("aborted, timed out, or a party died or was cancelled; reset() it");
        const std::uint32_t arrived = v & arrivals_mask;
        const std::uint32_t round = round_of(v);
        if (arrived + 1 == parties_) {
            if (shared_->word.compare_exchange_weak(v, make_word(round + 1, 0),
                                                    std::memory_order_acq_rel)) {
                futex_wake(shared_->word, INT_MAX);
                return {arrived, round, true};
            }
        } else if (shared_->word.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) {
            shared_->slots[arrived].store(std::uint64_t{round} << 32 | this_pid(),
                                          std::memory_order_relaxed);
            return {arrived, round, false};
        }
    }
}

bool barrier_core::released(const ticket& t) const noexcept {
    return round_of(shared_->word.load(std::memory_order_acquire)) == ((t.round + 1) & round_mask);
}

bool barrier_core::passed(const ticket& t, bool check_parties) {
    const std::uint32_t v = shared_->word.load(std::memory_order_acquire);
    const std::uint32_t round = round_of(v);
    if (round == ((t.round + 1) & round_mask))
        return true;
    if (round != t.round)
        throw_broken("reset while waiting");
    if (v & broken_bit)
        throw_broken("aborted, timed out, or a party died or was cancelled while waiting");
    if (check_parties) {
        const std::uint32_t me = this_pid();
        for (std::uint32_t i = 0; i < (v & arrivals_mask); ++i) {
            const std::uint64_t s = shared_->slots[i].load(std::memory_order_relaxed);
            const auto pid = static_cast<std::uint32_t>(s);
            if ((s >> 32) == t.round && pid != 0 && pid != me && exited(pid)) {
                break_round(t);
                if (released(t)) // the round completed meanwhile
                    return true;
                throw_broken("party pid " + std::to_string(pid) + " died while waiting");
            }
        }
    }
    return false;
}

void barrier_core::break_round(const ticket& t) noexcept {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (!t.released && round_of(v) == t.round && !(v & broken_bit))
        if (shared_->word.compare_exchange_weak(v, v | broken_bit, std::memory_order_release)) {
            futex_wake(shared_->word, INT_MAX);
            return;
        }
}

unsigned barrier_core::wait_until(std::optional<clock::time_point> deadline, bool& timed_out) {
    const ticket t = arrive();
    if (t.released)
        return t.index;
    const auto word = [this] { return shared_->word.load(std::memory_order_relaxed); };
    if (block_until(
            shared_->word, word, [&](bool check) { return passed(t, check); }, deadline))
        return t.index;
    break_round(t);
    if (released(t)) // just before it broke
        return t.index;
    timed_out = true;
    return 0;
}

void barrier_core::abort() noexcept {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (!(v & broken_bit))
        if (shared_->word.compare_exchange_weak(v, v | broken_bit, std::memory_order_release)) {
            futex_wake(shared_->word, INT_MAX);
            return;
        }
}

void barrier_core::reset() noexcept {
    std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    while (!shared_->word.compare_exchange_weak(v, make_word(round_of(v) + 2, 0),
                                                std::memory_order_release)) {
    }
    futex_wake(shared_->word, INT_MAX);
}

unsigned barrier_core::n_waiting() const noexcept {
    const std::uint32_t v = shared_->word.load(std::memory_order_relaxed);
    return (v & broken_bit) ? 0 : v & arrivals_mask;
}

bool barrier_core::broken() const noexcept {
    return shared_->word.load(std::memory_order_relaxed) & broken_bit;
}

} // namespace detail

event::event() : shared_handle(std::in_place) {}

semaphore::semaphore(unsigned value, bool bounded) : shared_handle(std::in_place, value, bounded) {}

rlock::rlock() : shared_handle(std::in_place) {}

condition::condition(lock l) : shared_handle(std::in_place, std::move(l.core_)) {}

lock condition::get_lock() const { return lock(core_->lock()); }

void condition::enter(detail::condition_core& core, lock_guard& g) {
    core.enter(g.core_);
    auto held = std::move(g.core_);
    held->release();
}

bool condition::wait_until(lock_guard& g, std::optional<detail::clock::time_point> deadline) {
    enter(*core_, g);
    bool woken = false;
    try {
        woken = core_->wait_until(deadline);
    } catch (...) {
        core_->abandon();
        core_->lock()->acquire_until(std::nullopt);
        g.core_ = core_->lock();
        throw;
    }
    try {
        core_->lock()->acquire_until(std::nullopt);
    } catch (const owner_died&) {
        g.core_ = core_->lock();
        throw;
    }
    g.core_ = core_->lock();
    return woken;
}

bool condition::is_owner_died(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const owner_died&) {
        return true;
    } catch (...) {
        return false;
    }
}

barrier::barrier(unsigned parties) : shared_handle(std::in_place, parties) {}

} // namespace coproc
