// Descriptors, waits and futexes shared by process, pipe, queue and lock (private).
//
// Channel descriptors are used with MSG_DONTWAIT (or are O_NONBLOCK eventfds), so a call never
// blocks inside the kernel: blocking calls wait with poll() (with a deadline for the *_for
// forms), awaitable ones with an Asio descriptor on the awaiting coroutine's executor. Whether a
// descriptor blocks then never depends on who else uses it (Asio, another process).
#pragma once

#include <coproc/detail/handle.hpp>

#include <asio/awaitable.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <utility>

namespace coproc::detail {

/// std::system_error for the current errno: "`what`: <strerror>".
std::system_error os_error(const char* what);

/// An owned descriptor, closed on destruction.
class unique_fd {
  public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        reset(o.release());
        return *this;
    }
    ~unique_fd() { reset(); }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;
    explicit operator bool() const noexcept { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

/// Waits until `fd` has `events` (POLLIN/POLLOUT; errors and hang-up count as ready).
/// Returns false if `deadline` passed first; no deadline waits for ever.
bool wait_fd(int fd, short events, std::optional<clock::time_point> deadline);

/// Suspends the awaiting coroutine until `fd` is readable (or writable, with `write`), without
/// blocking its executor's thread.
asio::awaitable<void> async_wait_fd(int fd, bool write);

/// Milliseconds to `deadline` for poll(): -1 for none, 0 if passed.
int poll_timeout(std::optional<clock::time_point> deadline);

/// FUTEX_WAIT on a process-shared word; returns false on timeout. Spurious wake-ups happen.
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::optional<clock::time_point> deadline);
/// FUTEX_WAKE on a process-shared word.
void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept;

/// Maps `size` zeroed bytes shared with every process forked afterwards.
void* map_shared(std::size_t size, const char* what);

/// Runs blocking jobs for awaiting coroutines on a helper thread of this process, one at a
/// time, in order, and resumes each coroutine on its own executor when its job is done. The
/// thread exists only while there are jobs. Used where the kernel offers no descriptor to wait
/// on (futexes): the event loop thread never blocks.
class blocking_runner {
  public:
    blocking_runner();
    ~blocking_runner();
    /// Runs `job` on the helper thread; rethrows what it threw.
    asio::awaitable<void> run(std::function<void()> job);

  private:
    struct state;
    std::shared_ptr<state> current();
    std::shared_ptr<state> state_;
};

} // namespace coproc::detail
