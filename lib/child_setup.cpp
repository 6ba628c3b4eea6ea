// The registry of private descriptors and the first steps of a forked child (see child_setup.hpp).
#include "child_setup.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <mutex>
#include <pthread.h>
#include <stdio_ext.h>
#include <string>
#include <sys/prctl.h>
#include <unistd.h>

namespace coproc::detail {

namespace {

// Its mutex is held across fork() (pthread_atfork), so a child never inherits it locked by a
// thread it does not have, and may read the list.
struct fd_registry {
    std::mutex mu;
    std::vector<int> fds;

    fd_registry() {
        pthread_atfork([] { instance().mu.lock(); }, [] { instance().mu.unlock(); },
                       [] { instance().mu.unlock(); });
    }
    static fd_registry& instance() {
        static fd_registry r;
        return r;
    }
};

} // namespace

void register_private_fd(int fd) {
    if (fd < 0)
        return;
    auto& r = fd_registry::instance();
    std::lock_guard lk(r.mu);
    r.fds.push_back(fd);
}

void unregister_private_fd(int fd) noexcept {
    if (fd < 0)
        return;
    auto& r = fd_registry::instance();
    std::lock_guard lk(r.mu);
    if (auto it = std::find(r.fds.begin(), r.fds.end(), fd); it != r.fds.end())
        r.fds.erase(it);
}

std::vector<int> private_fds() {
    auto& r = fd_registry::instance();
    std::lock_guard lk(r.mu);
    return r.fds;
}

void close_private_fds(std::span<const int> keep) noexcept {
    auto& r = fd_registry::instance();
    std::lock_guard lk(r.mu);
    for (int fd : r.fds)
        if (std::find(keep.begin(), keep.end(), fd) == keep.end())
            ::close(fd);
    r.fds.clear();
}

void close_fds_except(std::vector<int> keep) noexcept {
    keep.insert(keep.end(), {0, 1, 2});
    std::sort(keep.begin(), keep.end());
    unsigned first = 0;
    for (int k : keep) {
        if (k < 0 || static_cast<unsigned>(k) < first)
            continue;
        if (static_cast<unsigned>(k) > first && ::close_range(first, k - 1u, 0) != 0)
            for (unsigned fd = first; fd < static_cast<unsigned>(k); ++fd)
                ::close(static_cast<int>(fd));
        first = static_cast<unsigned>(k) + 1;
    }
    if (::close_range(first, UINT_MAX, 0) != 0) {
        const long max = std::min(::sysconf(_SC_OPEN_MAX), 1L << 20);
        for (long fd = first; fd < max; ++fd)
            ::close(static_cast<int>(fd));
    }
    auto& r = fd_registry::instance();
    std::lock_guard lk(r.mu);
    r.fds.clear();
}

void close_inherited_fds(std::span<const int> mine, const std::vector<int>* only) noexcept {
    if (!only)
        return close_private_fds(mine);
    std::vector<int> keep(*only);
    keep.insert(keep.end(), mine.begin(), mine.end());
    close_fds_except(std::move(keep));
}

void start_child(pid_t parent, int orphan_code, bool ignore_sigint, const sigset_t& mask) noexcept {
    // The signal fires when the forking *thread* exits: coproc forks on threads that live as
    // long as the process (see fork_thread.hpp).
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent)
        ::_exit(orphan_code);
    // Output the parent had buffered but not written belongs to the parent.
    __fpurge(stdout);
    __fpurge(stderr);
    // Handlers installed by the parent (Asio's signal_set, a test framework's) must not run.
    for (int s = 1; s < NSIG; ++s) {
        struct sigaction sa;
        if (::sigaction(s, nullptr, &sa) != 0)
            continue;
        if (sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            ::sigaction(s, &sa, nullptr);
        }
    }
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL; // and no SA_NOCLDWAIT: exits are reported, not reaped away
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGCHLD, &dfl, nullptr);
    if (ignore_sigint)
        std::signal(SIGINT, SIG_IGN);
    ::sigprocmask(SIG_SETMASK, &mask, nullptr);
}

void start_pool_child(pid_t parent) noexcept {
    sigset_t none;
    sigemptyset(&none);
    start_child(parent, 0, true, none);
}

std::vector<int> open_fds() {
    std::vector<int> out;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        const int self = ::dirfd(d);
        while (const dirent* e = ::readdir(d)) {
            char* end = nullptr;
            const long fd = std::strtol(e->d_name, &end, 10);
            if (end != e->d_name && *end == '\0' && fd != self)
                out.push_back(static_cast<int>(fd));
        }
        ::closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<int> register_new_fds(const std::vector<int>& before,
                                  std::span<const std::string_view> kinds) {
    std::vector<int> out;
    for (int fd : open_fds()) {
        if (std::binary_search(before.begin(), before.end(), fd))
            continue;
        char link[128];
        const std::string path = "/proc/self/fd/" + std::to_string(fd);
        const ssize_t n = ::readlink(path.c_str(), link, sizeof link);
        if (n <= 0)
            continue;
        const std::string_view target(link, static_cast<std::size_t>(n));
        if (std::any_of(kinds.begin(), kinds.end(),
                        [&](std::string_view k) { return target.starts_with(k); })) {
            register_private_fd(fd);
            out.push_back(fd);
        }
    }
    return out;
}

} // namespace coproc::detail
