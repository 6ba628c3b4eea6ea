// coproc/detail/futex.hpp — waits on a 32-bit word (Linux futexes), and word_mutex, a mutex
// of one such word for the state kept per pool call, where std::mutex and
// std::condition_variable (88 bytes) would be most of it.
#pragma once

#include <coproc/detail/handle.hpp>

#include <atomic>
#include <cstdint>
#include <optional>

namespace coproc::detail {

/// FUTEX_WAIT on `word` (private or shared between processes); false on timeout. Spurious
/// wake-ups happen.
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::optional<clock::time_point> deadline);
/// FUTEX_WAKE on `word`, waking up to `count` waiters.
void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept;

/// A mutex in one futex word: 0 unlocked, 1 locked, 2 locked and maybe waited for (Drepper,
/// "Futexes Are Tricky", mutex 3). An unlock wakes no one unless someone waits. For short
/// sections; not recursive.
class word_mutex {
  public:
    void lock() noexcept {
        std::uint32_t seen = 0;
        if (!word_.compare_exchange_strong(seen, 1, std::memory_order_acquire))
            lock_contended(seen);
    }
    bool try_lock() noexcept {
        std::uint32_t seen = 0;
        return word_.compare_exchange_strong(seen, 1, std::memory_order_acquire);
    }
    void unlock() noexcept {
        if (word_.exchange(0, std::memory_order_release) == 2)
            futex_wake(word_, 1);
    }

  private:
    void lock_contended(std::uint32_t seen) noexcept;
    std::atomic<std::uint32_t> word_{0};
};

/// A flag set once, that threads may block on until it is set: 0 unset, 1 set, 2 unset and
/// waited for. Setting it makes a syscall only if someone waits.
class ready_flag {
  public:
    bool is_set() const noexcept { return word_.load(std::memory_order_acquire) == 1; }
    /// Sets the flag (release) and wakes every waiter.
    void set() noexcept {
        if (word_.exchange(1, std::memory_order_acq_rel) == 2)
            futex_wake(word_, INT32_MAX);
    }
    /// Blocks until the flag is set or `deadline` passes; returns is_set().
    bool wait(std::optional<clock::time_point> deadline);

  private:
    std::atomic<std::uint32_t> word_{0};
};

} // namespace coproc::detail
