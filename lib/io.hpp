// Descriptors, waits and futexes shared by process, pipe, queue and lock (private).
//
// Channel sockets stay in blocking mode (shared by every process that holds them, so the mode is
// never changed: asynchronous waits go through an epoll instance of their own, see
// detail/async_op.hpp, because Asio sets O_NONBLOCK on what it waits on). Blocking calls without a deadline therefore make one
// blocking send or recv, the fewest syscalls there are; everything else passes MSG_DONTWAIT per
// call and waits with poll() (with a deadline for the *_for forms) or, awaiting, with Asio on the
// awaiting coroutine's executor. Code never relies on the mode: a blocking call that gets EAGAIN
// (a descriptor someone made non-blocking) waits with poll() and tries again. Eventfds are
// O_NONBLOCK and always waited for with poll() or Asio.
#pragma once

#include <coproc/detail/futex.hpp>
#include <coproc/detail/handle.hpp>

#include <asio/awaitable.hpp>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <system_error>
#include <utility>

namespace coproc::detail {

/// std::system_error for the current errno: "`what`: <strerror>".
std::system_error os_error(const char* what);
/// std::system_error for `err`: "`what`: <strerror>".
std::system_error os_error(int err, const char* what);

/// errno says a non-blocking call would have blocked.
inline bool would_block() noexcept { return errno == EAGAIN || errno == EWOULDBLOCK; }

/// pidfd_open(2): a pidfd for `pid` (O_CLOEXEC), or -1 with errno set.
int open_pidfd(pid_t pid) noexcept;
/// pidfd_send_signal(2): 0, or -1 with errno set.
int signal_pidfd(int pidfd, int sig) noexcept;

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

/// A memfd (O_CLOEXEC) named `name` holding `bytes`, sealed against shrinking, growing,
/// writing and further seals; no descriptor (errno set) if one cannot be made.
unique_fd sealed_memfd(const char* name, std::span<const char> bytes) noexcept;

/// What is wrong with a received `fd` that should be what sealed_memfd() makes, holding `size`
/// bytes ("its descriptor is not a memfd", "its memfd is not sealed ...", "it claims N bytes,
/// its memfd holds M"), or an empty string if nothing is: then its size can be trusted.
std::string sealed_memfd_fault(int fd, std::uint64_t size);

/// The most descriptors one message passes.
inline constexpr std::size_t max_passed_fds = 4;

/// One sendmsg of `iov` with descriptors `fds` attached (SCM_RIGHTS; at most max_passed_fds);
/// MSG_NOSIGNAL is added to `flags`. Returns what sendmsg returns (errno set on failure).
ssize_t send_with_fds(int sock, std::span<iovec> iov, std::span<const int> fds, int flags) noexcept;
/// One recvmsg into `iov`; the descriptors passed with the message (made O_CLOEXEC) go to
/// `passed` in order (extra ones are closed). `truncated` as for recv_with_fd.
ssize_t recv_with_fds(int sock, std::span<iovec> iov, std::span<unique_fd> passed, int flags,
                      bool* truncated = nullptr) noexcept;

/// One sendmsg of `iov` with descriptor `fd` attached (SCM_RIGHTS) unless `fd` is negative;
/// MSG_NOSIGNAL is added to `flags`. Returns what sendmsg returns (errno set on failure).
ssize_t send_with_fd(int sock, std::span<iovec> iov, int fd, int flags) noexcept;

/// One recvmsg into `iov`; a descriptor passed with the message (made O_CLOEXEC) goes to
/// `passed`. Returns what recvmsg returns (errno set on failure); `truncated` tells whether the
/// message or its descriptors did not fit.
ssize_t recv_with_fd(int sock, std::span<iovec> iov, unique_fd& passed, int flags,
                     bool* truncated = nullptr) noexcept;

#define COPROC_PRIVATE __attribute__((visibility("hidden")))

/// This process's pid once known, else 0; forgotten in the child of every fork() (pthread_atfork;
/// a child made by a raw clone() or _Fork() without exec must not use locks).
COPROC_PRIVATE extern std::atomic<std::uint32_t> cached_pid;
/// getpid(), cached.
COPROC_PRIVATE std::uint32_t load_pid() noexcept;

/// sched_yield().
void yield_cpu() noexcept;

/// This process's pid, without a syscall (a lock takes it on every acquire).
inline std::uint32_t this_pid() noexcept {
    const std::uint32_t pid = cached_pid.load(std::memory_order_relaxed);
    return pid != 0 ? pid : load_pid();
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/// How long a receiver polls shared memory for a message before it sleeps in the kernel. A
/// sleep costs a wake-up on the sender's side and a context switch on the receiver's (tens of
/// microseconds between the vCPUs of a VM); a message that arrives within this is received
/// without either.
constexpr std::chrono::microseconds spin_budget{50};

/// Polls `ready()` for about `budget` (pausing, and yielding the CPU every few microseconds so a
/// peer on the same CPU can run); whether it turned true. Only a hint: callers then make the
/// blocking call either way.
template <class Ready> bool spin_until(Ready ready, std::chrono::microseconds budget) {
    if (ready())
        return true;
    const auto start = clock::now();
    auto yielded = start;
    for (unsigned i = 1;; ++i) {
        cpu_relax();
        if (ready())
            return true;
        if (i % 32 == 0) {
            const auto now = clock::now();
            if (now - start >= budget)
                return false;
            if (now - yielded >= std::chrono::microseconds(5)) {
                yield_cpu();
                yielded = now;
            }
        }
    }
}

/// Waits until `fd` has `events` (POLLIN/POLLOUT; errors and hang-up count as ready).
/// Returns false if `deadline` passed first; no deadline waits for ever.
bool wait_fd(int fd, short events, std::optional<clock::time_point> deadline);

/// Milliseconds to `deadline` for poll(): -1 for none, 0 if passed.
int poll_timeout(std::optional<clock::time_point> deadline);

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
