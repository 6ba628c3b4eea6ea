// Shared test helpers: coroutine test cases with a watchdog, fd and zombie counts.
#pragma once

#include <asio/co_spawn.hpp>
#include <asio/error.hpp>
#include <asio/io_context.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <sys/socket.h>
#include <sys/uio.h>
#include <thread>
#include <unistd.h>

namespace coproc::test {

/// Aborts the test binary (so the run fails loudly instead of hanging) if not disarmed in time;
/// `on_timeout` may print what is stuck first.
class watchdog {
  public:
    explicit watchdog(std::chrono::seconds limit, std::string what = "test",
                      std::function<void()> on_timeout = {})
        : t_([this, limit, what = std::move(what), on_timeout = std::move(on_timeout)] {
              std::unique_lock lk(m_);
              if (!cv_.wait_for(lk, limit, [&] { return done_; })) {
                  std::fprintf(stderr, "watchdog: %s still running after %llds: aborting\n",
                               what.c_str(), static_cast<long long>(limit.count()));
                  if (on_timeout)
                      on_timeout();
                  std::abort();
              }
          }) {}
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
    std::thread t_;
};

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

/// Open file descriptors of this process.
/// The sockets this process holds.
inline std::set<int> socket_fds() {
    std::set<int> out;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(d)) {
            char link[64] = {};
            const std::string path = std::string("/proc/self/fd/") + e->d_name;
            if (e->d_name[0] != '.' && readlink(path.c_str(), link, sizeof link - 1) > 0 &&
                std::strncmp(link, "socket:", 7) == 0)
                out.insert(std::atoi(e->d_name));
        }
        closedir(d);
    }
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

inline int fd_count() {
    int n = 0;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.')
                ++n;
        closedir(d);
    }
    return n - 1; // the DIR's own descriptor
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
