// What the futex-based primitives share (private): the liveness period, the dead-process test,
// and the blocking wait loop their blocking forms run.
#pragma once

#include "io.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <new>
#include <optional>
#include <string>

namespace coproc::detail {

/// How often a sleeping waiter wakes to look for a dead holder (or a dead barrier party).
constexpr auto liveness_period = std::chrono::milliseconds(50);

/// Whether process `pid` has exited (zombies included) or never existed.
bool exited(std::uint32_t pid) noexcept;

/// Maps a `T` (zeroed, then constructed with `args`) shared with every process forked
/// afterwards.
template <class T, class... Args> T* map_shared_object(const char* what, Args&&... args) {
    return new (map_shared(sizeof(T), what)) T(std::forward<Args>(args)...);
}

/// The blocking form of a wait: `prepare()` returns the value to FUTEX_WAIT for on `word`,
/// `attempt(timed_out)` tries to finish (true: done); sleeps between attempts, waking at least
/// every liveness_period (then `timed_out` is true). False if `deadline` passed first.
template <class Prepare, class Attempt>
bool block_until(std::atomic<std::uint32_t>& word, Prepare prepare, Attempt attempt,
                 std::optional<clock::time_point> deadline) {
    bool timed_out = false;
    for (;;) {
        const std::uint32_t seen = prepare();
        if (attempt(timed_out))
            return true;
        const auto now = clock::now();
        if (deadline && now >= *deadline)
            return false;
        auto until = now + liveness_period;
        if (deadline && *deadline < until)
            until = *deadline;
        timed_out = !futex_wait(word, seen, until);
    }
}

} // namespace coproc::detail
