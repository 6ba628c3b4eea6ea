// What every child coproc forks does first, and the descriptors no child may keep (private).
//
// A pool's private descriptors (the parent's ends of its worker sockets, its fork server's
// sockets, pidfds, its slot memory, its own event loop's epoll/eventfd/timerfd) are entered in a
// process-wide registry. Every child coproc forks (a fork server, a worker forked by the
// parent, a coproc::process) closes them all except the ones it needs, so no child can write
// into another pool's workers or keep another pool's workers alive. O_CLOEXEC does not help
// here: these children never exec.
#pragma once

#include <csignal>
#include <cstddef>
#include <span>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace coproc::detail {

/// Enters `fd` in the registry of private descriptors (no-op for a negative fd).
void register_private_fd(int fd);
/// Removes `fd`; call it before closing `fd` (so a reused number is never taken for ours).
void unregister_private_fd(int fd) noexcept;
/// The registered descriptors (tests check that children do not have them).
std::vector<int> private_fds();

/// In a freshly forked child: closes every registered descriptor except those in `keep`, and
/// empties the registry.
void close_private_fds(std::span<const int> keep) noexcept;

/// In a freshly forked child: closes every descriptor except stdin, stdout, stderr and those in
/// `keep` (close_range where the kernel has it), and empties the registry.
void close_fds_except(std::vector<int> keep) noexcept;

/// In a freshly forked child: closes what it inherited but must not keep. With `only` null,
/// the registered private descriptors except `mine`; else every descriptor except stdio,
/// `mine` and `*only` (pool_options::close_fds).
void close_inherited_fds(std::span<const int> mine, const std::vector<int>* only) noexcept;

/// The first steps of every child coproc forks: it dies with `parent` (PR_SET_PDEATHSIG, and
/// _exit(orphan_code) if the parent is already gone), drops the stdio output the parent had
/// buffered, sets the parent's signal handlers back to default (SIGCHLD too, without
/// SA_NOCLDWAIT, so its own children can be waited for even if the parent ignores SIGCHLD),
/// ignores SIGINT if `ignore_sigint` (pool processes: the parent decides) and takes `mask` as
/// its signal mask.
void start_child(pid_t parent, int orphan_code, bool ignore_sigint, const sigset_t& mask) noexcept;
/// start_child() as a pool's fork server and workers run it: _exit(0) if `parent` is already
/// gone, SIGINT ignored, no signal blocked.
void start_pool_child(pid_t parent) noexcept;

/// The descriptors open in this process, in order.
std::vector<int> open_fds();
/// Registers as private the descriptors open now but not in `before` (from open_fds()) whose
/// /proc/self/fd link starts with one of `kinds` (e.g. "anon_inode:[eventpoll]"), and returns
/// them: for the descriptors Asio opens inside an io_context, which it does not expose.
std::vector<int> register_new_fds(const std::vector<int>& before,
                                  std::span<const std::string_view> kinds);

} // namespace coproc::detail
