// Descriptors, waits, futexes, the helper thread and the handle registry (see io.hpp).
#include "io.hpp"

#include <coproc/detail/handle.hpp>
#include <coproc/detail/handler_slot.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <linux/futex.h>
#include <mutex>
#include <poll.h>
#include <pthread.h>
#include <random>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

namespace coproc::detail {

namespace {

// Bumped in every child at fork: state made by another thread of the parent (which the child
// does not have) is recognised as stale and replaced instead of used.
std::atomic<std::uint64_t> fork_generation{0};

struct registry_entry {
    std::weak_ptr<void> core;
    handle_kind kind;
    std::vector<int> fds;
};

// The registry's mutex is held across fork() (pthread_atfork), so a child never inherits it
// locked by a thread it does not have.
struct registry {
    std::mutex mu;
    std::unordered_map<std::uint64_t, registry_entry> entries;
    std::uint64_t next = 0;

    registry() {
        std::random_device rd;
        next = (std::uint64_t{rd()} << 32 | rd()) | 1;
        pthread_atfork([] { instance().mu.lock(); }, [] { instance().mu.unlock(); },
                       [] {
                           instance().mu.unlock();
                           fork_generation.fetch_add(1, std::memory_order_relaxed);
                       });
    }
    static registry& instance() {
        static registry r;
        return r;
    }
};

const char* kind_name(handle_kind k) {
    switch (k) {
    case handle_kind::queue:
        return "queue";
    case handle_kind::connection:
        return "connection";
    case handle_kind::lock:
        return "lock";
    case handle_kind::event:
        return "event";
    case handle_kind::semaphore:
        return "semaphore";
    case handle_kind::rlock:
        return "rlock";
    case handle_kind::condition:
        return "condition";
    case handle_kind::barrier:
        return "barrier";
    case handle_kind::shared_block:
        return "value";
    }
    return "handle";
}

} // namespace

std::uint64_t register_handle(std::weak_ptr<void> core, handle_kind kind, std::vector<int> fds) {
    auto& r = registry::instance();
    std::lock_guard lk(r.mu);
    // An odd 64-bit Weyl sequence from a random start: unique, and unguessable enough that a
    // token from another program is not mistaken for one of ours.
    r.next += 0x9e3779b97f4a7c16ull;
    const std::uint64_t token = r.next;
    r.entries.emplace(token, registry_entry{std::move(core), kind, std::move(fds)});
    return token;
}

std::vector<int> handle_descriptors() {
    auto& r = registry::instance();
    std::lock_guard lk(r.mu);
    std::vector<int> out;
    for (const auto& [token, e] : r.entries)
        if (!e.core.expired())
            out.insert(out.end(), e.fds.begin(), e.fds.end());
    return out;
}

void unregister_handle(std::uint64_t token) noexcept {
    auto& r = registry::instance();
    std::lock_guard lk(r.mu);
    r.entries.erase(token);
}

std::shared_ptr<void> find_handle(std::uint64_t token, handle_kind kind) {
    auto& r = registry::instance();
    std::lock_guard lk(r.mu);
    const auto it = r.entries.find(token);
    if (it != r.entries.end() && it->second.kind == kind)
        if (auto core = it->second.core.lock())
            return core;
    const std::string k = kind_name(kind);
    throw coproc::error("coproc::" + k + " unknown in this process: the " + k +
                        " was created after the pool's workers (or this process) started; "
                        "create it before the pool");
}

std::atomic<std::uint32_t> cached_pid{0};

std::uint32_t load_pid() noexcept {
    // Registered once, before the first pid is cached: every fork() afterwards forgets it in
    // the child, which then loads its own on first use.
    static const bool registered = [] {
        pthread_atfork(nullptr, nullptr, [] { cached_pid.store(0, std::memory_order_relaxed); });
        return true;
    }();
    static_cast<void>(registered);
    const auto pid = static_cast<std::uint32_t>(::getpid());
    cached_pid.store(pid, std::memory_order_relaxed);
    return pid;
}

void yield_cpu() noexcept { ::sched_yield(); }

std::system_error os_error(const char* what) { return os_error(errno, what); }

std::system_error os_error(int err, const char* what) {
    return std::system_error(err, std::system_category(), what);
}

int open_pidfd(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int signal_pidfd(int pidfd, int sig) noexcept {
    return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

ssize_t send_with_fds(int sock, std::span<iovec> iov, std::span<const int> fds,
                      int flags) noexcept {
    msghdr m{};
    m.msg_iov = iov.data();
    m.msg_iovlen = iov.size();
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_passed_fds)];
    if (!fds.empty() && fds.size() <= max_passed_fds) {
        m.msg_control = control;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    return ::sendmsg(sock, &m, flags | MSG_NOSIGNAL);
}

ssize_t send_with_fd(int sock, std::span<iovec> iov, int fd, int flags) noexcept {
    return send_with_fds(sock, iov, fd >= 0 ? std::span<const int>(&fd, 1) : std::span<const int>(),
                         flags);
}

ssize_t recv_with_fds(int sock, std::span<iovec> iov, std::span<unique_fd> passed, int flags,
                      bool* truncated) noexcept {
    msghdr m{};
    m.msg_iov = iov.data();
    m.msg_iovlen = iov.size();
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_passed_fds)];
    m.msg_control = control;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * std::min(passed.size(), max_passed_fds));
    const ssize_t n = ::recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return n;
    if (truncated)
        *truncated = (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    std::size_t next = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (next < passed.size())
                passed[next++].reset(fd);
            else
                ::close(fd);
        }
    }
    return n;
}

ssize_t recv_with_fd(int sock, std::span<iovec> iov, unique_fd& passed, int flags,
                     bool* truncated) noexcept {
    return recv_with_fds(sock, iov, {&passed, 1}, flags, truncated);
}

void unique_fd::reset(int fd) noexcept {
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = fd;
}

int poll_timeout(std::optional<clock::time_point> deadline) {
    if (!deadline)
        return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - clock::now());
    if (left.count() <= 0)
        return 0;
    return static_cast<int>(std::min<std::int64_t>(left.count(), INT_MAX));
}

bool wait_fd(int fd, short events, std::optional<clock::time_point> deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, poll_timeout(deadline));
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            throw os_error("poll failed");
        if (n == 0 && deadline && clock::now() >= *deadline)
            return false;
    }
}

bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::optional<clock::time_point> deadline) {
    timespec ts{};
    if (deadline) {
        const auto left = *deadline - clock::now();
        if (left <= clock::duration::zero())
            return false;
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    }
    const long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT,
                             expected, deadline ? &ts : nullptr, nullptr, 0);
    if (r == 0 || errno == EAGAIN || errno == EINTR)
        return true;
    if (errno == ETIMEDOUT)
        return false;
    throw os_error("futex wait failed");
}

void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr,
              nullptr, 0);
}

void word_mutex::lock_contended(std::uint32_t seen) noexcept {
    // A holder's section is short: spin a little before sleeping.
    for (int i = 0; i < 100 && seen == 1; ++i) {
        cpu_relax();
        seen = 0;
        if (word_.compare_exchange_weak(seen, 1, std::memory_order_acquire))
            return;
    }
    if (seen != 2)
        seen = word_.exchange(2, std::memory_order_acquire);
    while (seen != 0) {
        futex_wait(word_, 2, std::nullopt);
        seen = word_.exchange(2, std::memory_order_acquire);
    }
}

bool ready_flag::wait(std::optional<clock::time_point> deadline) {
    for (;;) {
        std::uint32_t seen = 0;
        if (!word_.compare_exchange_strong(seen, 2, std::memory_order_acquire) && seen == 1)
            return true;
        if (!futex_wait(word_, 2, deadline))
            return is_set();
    }
}

namespace {
// What a sealed memfd may no longer do: its receiver trusts its size and reads it in place.
constexpr int memfd_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
} // namespace

unique_fd sealed_memfd(const char* name, std::span<const char> bytes) noexcept {
    unique_fd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd)
        return fd;
    for (std::size_t done = 0; done < bytes.size();) {
        const ssize_t w = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return {};
        done += static_cast<std::size_t>(w);
    }
    if (::fcntl(fd.get(), F_ADD_SEALS, memfd_seals | F_SEAL_SEAL) != 0)
        return {};
    return fd;
}

std::string sealed_memfd_fault(int fd, std::uint64_t size) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals < 0)
        return "its descriptor is not a memfd";
    if ((seals & memfd_seals) != memfd_seals)
        return "its memfd is not sealed against shrinking, growing and writing";
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return std::string("fstat of its memfd failed: ") + std::strerror(errno);
    if (static_cast<std::uint64_t>(st.st_size) != size)
        return "it claims " + std::to_string(size) + " bytes, its memfd holds " +
               std::to_string(st.st_size);
    return {};
}

void* map_shared(std::size_t size, const char* what) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        throw os_error(what);
    return p;
}

struct blocking_runner::state : std::enable_shared_from_this<state> {
    struct pending {
        std::function<void()> job;
        handler_slot slot;
        std::exception_ptr error;
    };

    const std::uint64_t generation = fork_generation.load(std::memory_order_relaxed);
    std::mutex mu;
    std::deque<std::shared_ptr<pending>> jobs;
    bool running = false;

    void push(const std::shared_ptr<pending>& p) {
        std::lock_guard lk(mu);
        jobs.push_back(p);
        if (running)
            return;
        try {
            std::thread([self = shared_from_this()] { self->loop(); }).detach();
            running = true;
        } catch (...) {
            jobs.pop_back();
            p->error = std::current_exception();
            p->slot.post();
        }
    }

    void loop() {
        for (;;) {
            std::shared_ptr<pending> p;
            {
                std::lock_guard lk(mu);
                if (jobs.empty()) {
                    running = false;
                    return;
                }
                p = std::move(jobs.front());
                jobs.pop_front();
            }
            try {
                p->job();
            } catch (...) {
                p->error = std::current_exception();
            }
            p->slot.post();
        }
    }
};

blocking_runner::blocking_runner() : state_(std::make_shared<state>()) {}
blocking_runner::~blocking_runner() = default;

std::shared_ptr<blocking_runner::state> blocking_runner::current() {
    auto s = std::atomic_load(&state_);
    if (s->generation == fork_generation.load(std::memory_order_relaxed))
        return s;
    // Forked since: the old state's thread is not in this process and its mutex may be held.
    // Leak it (never touch it) and start afresh.
    auto fresh = std::make_shared<state>();
    if (std::atomic_compare_exchange_strong(&state_, &s, fresh)) {
        static_cast<void>(new std::shared_ptr<state>(std::move(s)));
        return fresh;
    }
    return s;
}

asio::awaitable<void> blocking_runner::run(std::function<void()> job) {
    auto p = std::make_shared<state::pending>();
    p->job = std::move(job);
    auto s = current();
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
        [&](auto handler) {
            p->slot.set(std::move(handler));
            s->push(p);
        },
        asio::use_awaitable);
    if (p->error)
        std::rethrow_exception(p->error);
}

} // namespace coproc::detail
