// Shared test helpers: coroutine test cases with a watchdog, fd and zombie counts.
#pragma once

#include "current_case.hpp"

#include <asio/co_spawn.hpp>
#include <asio/error.hpp>
#include <asio/io_context.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <exception>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace coproc::test {

/// One line per thread of this process and per descendant of it: pid, name, state and kernel
/// wait channel, to stderr; what a watchdog prints before it aborts a hung test.
inline void print_process_state() {
    const auto read = [](const std::string& path) {
        std::ifstream f(path);
        std::string s;
        std::getline(f, s);
        return s;
    };
    const auto describe = [&](const std::string& dir) {
        const std::string stat = read(dir + "/stat"); // pid (comm) state ...
        const auto close = stat.rfind(')');
        const bool known = close != std::string::npos && close + 2 < stat.size();
        return read(dir + "/comm") + " " + (known ? stat[close + 2] : '?') + " " +
               read(dir + "/wchan");
    };
    // Each thread's line, then its children's, depth first.
    const std::function<void(const std::string&, const std::string&)> show =
        [&](const std::string& pid, const std::string& indent) {
            const std::string tasks = "/proc/" + pid + "/task";
            DIR* d = ::opendir(tasks.c_str());
            if (!d)
                return;
            std::vector<std::string> children;
            while (const dirent* e = ::readdir(d)) {
                if (e->d_name[0] == '.')
                    continue;
                const std::string dir = tasks + "/" + e->d_name;
                std::fprintf(stderr, "%s%s/%s: %s\n", indent.c_str(), pid.c_str(), e->d_name,
                             describe(dir).c_str());
                std::istringstream kids(read(dir + "/children"));
                for (std::string kid; kids >> kid;)
                    children.push_back(kid);
            }
            ::closedir(d);
            for (const auto& kid : children)
                show(kid, indent + "  ");
        };
    show(std::to_string(::getpid()), "  ");
}

/// Aborts the test binary (so the run fails loudly instead of hanging) if not disarmed in time,
/// after printing the test case, its threads and children; `on_timeout` may print more first.
class watchdog {
  public:
    explicit watchdog(std::chrono::seconds limit, std::string what = "test",
                      std::function<void()> on_timeout = {})
        : t_([this, limit, what = std::move(what), on_timeout = std::move(on_timeout)] {
              std::unique_lock lk(m_);
              started_ = true;
              cv_.notify_all();
              if (!cv_.wait_for(lk, limit, [&] { return done_; })) {
                  std::fprintf(stderr,
                               "watchdog: %s in \"%s\" still running after %llds: aborting\n",
                               what.c_str(), current_test_case.load(),
                               static_cast<long long>(limit.count()));
                  print_process_state();
                  if (on_timeout)
                      on_timeout();
                  // Not through doctest's SIGABRT handler: it would report from this thread while
                  // the stuck one still runs.
                  std::signal(SIGABRT, SIG_DFL);
                  std::abort();
              }
          }) {
        // A pool made next forks at once, and a fork must not catch this thread mid-start-up
        // (inside malloc or the sanitizer's thread bookkeeping, whose locks the child would
        // inherit held): wait until it waits, holding no lock.
        std::unique_lock lk(m_);
        cv_.wait(lk, [&] { return started_; });
    }
    ~watchdog() {
        {
            std::lock_guard lk(m_);
            done_ = true;
        }
        cv_.notify_all();
        t_.join();
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false;
    bool started_ = false;
    std::thread t_;
};

/// Runs `io` until no work is left on it (5 s at most). A coproc operation completed from
/// another thread (the pool's loop, a futex helper) keeps work on its handler's executor until
/// its post there has returned: a context run only until the handler has run must still run out
/// that work before it is destroyed.
inline void settle(asio::io_context& io) {
    io.restart();
    io.run_for(std::chrono::seconds(5));
}

/// Runs `body(io)` as a coroutine on a fresh io_context until it finishes; an escaping
/// exception fails the test.
template <class Body>
void run_coroutine(Body body, std::chrono::seconds limit = std::chrono::seconds(60)) {
    watchdog dog(limit);
    asio::io_context io;
    std::exception_ptr failure;
    bool finished = false;
    asio::co_spawn(io, body(io), [&](std::exception_ptr e) {
        failure = e;
        finished = true;
    });
    while (!finished && io.run_one() > 0) {
    }
    REQUIRE_MESSAGE(finished, "the test coroutine never finished");
    settle(io);
    if (failure) {
        try {
            std::rethrow_exception(failure);
        } catch (const std::exception& e) {
            FAIL("coroutine threw: " << e.what());
        }
    }
}

/// Whether `e` is the std::system_error(operation_aborted) of a cancelled operation.
inline bool is_aborted(const std::exception_ptr& e) {
    if (!e)
        return false;
    try {
        std::rethrow_exception(e);
    } catch (const std::system_error& err) {
        return err.code() == asio::error::operation_aborted;
    } catch (...) {
        return false;
    }
}

/// The descriptors this process has open, each with what /proc/self/fd links it to (one closed
/// since the listing is left out). Only /proc is read: fstat or fcntl on another thread's
/// descriptor is an access ThreadSanitizer reports as racing with that thread's close.
inline std::map<int, std::string> fd_targets() {
    std::vector<std::string> names;
    if (DIR* d = opendir("/proc/self/fd")) {
        const std::string own = std::to_string(dirfd(d));
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.' && e->d_name != own)
                names.emplace_back(e->d_name);
        closedir(d);
    }
    std::map<int, std::string> out;
    for (const auto& name : names) {
        char target[256];
        const ssize_t len = ::readlink(("/proc/self/fd/" + name).c_str(), target, sizeof target);
        if (len >= 0)
            out.emplace(std::stoi(name), std::string(target, static_cast<std::size_t>(len)));
    }
    return out;
}

/// The sockets this process holds.
inline std::set<int> socket_fds() {
    std::set<int> out;
    for (const auto& [fd, target] : fd_targets())
        if (target.starts_with("socket:"))
            out.insert(fd);
    return out;
}

/// Sends the buffers `iov[0..n)` on socket `sock` with descriptor `fd` attached in SCM_RIGHTS
/// (none if negative); returns what sendmsg returns.
inline ssize_t send_with_fd(int sock, iovec* iov, std::size_t n, int fd, int flags = 0) {
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
        m.msg_control = control;
        m.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    return ::sendmsg(sock, &m, flags);
}

/// In a pool worker: its own socket, the only AF_UNIX stream socket above stderr (with
/// pool_options::close_fds, which closes every other descriptor).
inline int own_socket() {
    for (int fd = 3; fd < 1024; ++fd) {
        int type = 0, domain = 0;
        socklen_t len = sizeof type;
        if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
            continue;
        len = sizeof domain;
        if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX &&
            type == SOCK_STREAM)
            return fd;
    }
    return -1;
}

/// Whether descriptor `fd` is close-on-exec, as /proc/self/fdinfo says.
inline bool close_on_exec(int fd) {
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(fd));
    std::string key;
    unsigned long flags = 0;
    while (info >> key && key != "flags:") {
    }
    return (info >> std::oct >> flags) && (flags & O_CLOEXEC);
}

/// The number of open descriptors, not counting pipes without close-on-exec. The sanitizers'
/// runtime probes memory through such a pipe (pipe2 without flags, then close) on any thread at
/// any time; every descriptor coproc makes is close-on-exec, its pipes included.
inline int fd_count() {
    int n = 0;
    for (const auto& [fd, target] : fd_targets())
        if (!target.starts_with("pipe:") || close_on_exec(fd))
            ++n;
    return n;
}

/// One live process as /proc/PID/stat shows it.
struct proc_entry {
    pid_t ppid = 0;
    char state = 0; // 'R', 'S', 'Z', ...
};

/// Every live process: pid -> (parent, state).
inline std::map<pid_t, proc_entry> process_table() {
    std::map<pid_t, proc_entry> out;
    if (DIR* d = opendir("/proc")) {
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
            std::string line;
            if (!std::getline(f, line))
                continue;
            const auto close = line.rfind(')'); // the command name may hold spaces and ')'
            if (close == std::string::npos || close + 2 >= line.size())
                continue;
            std::istringstream rest(line.substr(close + 2));
            proc_entry p;
            rest >> p.state >> p.ppid;
            out[static_cast<pid_t>(std::atoi(e->d_name))] = p;
        }
        closedir(d);
    }
    return out;
}

/// Children of this process (state, any), and how many are zombies.
struct children {
    int total = 0;
    int zombies = 0;
};
inline children child_count() {
    children c;
    const pid_t me = getpid();
    for (const auto& [pid, p] : process_table())
        if (p.ppid == me) {
            ++c.total;
            c.zombies += p.state == 'Z';
        }
    return c;
}

} // namespace coproc::test

#define COPROC_TEST_CAT2(a, b) a##b
#define COPROC_TEST_CAT(a, b) COPROC_TEST_CAT2(a, b)

/// A doctest case whose body is a coroutine: `COPROC_TEST_CASE("x") { co_await ...; }`.
/// `io` (the io_context running it) is in scope.
#define COPROC_TEST_CASE(name)                                                                     \
    static asio::awaitable<void> COPROC_TEST_CAT(coproc_test_body_, __LINE__)(asio::io_context&);  \
    TEST_CASE(name) {                                                                              \
        ::coproc::test::run_coroutine([](asio::io_context& io) {                                   \
            return COPROC_TEST_CAT(coproc_test_body_, __LINE__)(io);                               \
        });                                                                                        \
    }                                                                                              \
    static asio::awaitable<void> COPROC_TEST_CAT(coproc_test_body_,                                \
                                                 __LINE__)([[maybe_unused]] asio::io_context & io)
