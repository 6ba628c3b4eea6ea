// The fork server of a pool (see zygote.hpp).
#include "zygote.hpp"

#include <coproc/detail/archive.hpp>
#include <coproc/detail/pool_core.hpp>
#include "child_setup.hpp"
#include "io.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <malloc.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace coproc::detail {

namespace {

struct spawn_reply {
    pid_t pid; // -1 if the fork failed
    int err;   // errno of the failure
};

ssize_t send_reply(int sock, const spawn_reply& r, std::span<const int> fds = {}) {
    iovec iov{const_cast<spawn_reply*>(&r), sizeof r};
    ssize_t n;
    do
        n = send_with_fds(sock, {&iov, 1}, fds, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

// The zygote's life: fork workers on request, reap them, report their exits.
[[noreturn]] void serve(int requests, int events, const worker_config& cfg) noexcept {
    start_pool_child(cfg.parent); // SIGCHLD too: if ignored, workers go unreported
    // Nothing of other pools (or, with close_fds, of the program) reaches the workers.
    const int mine[] = {requests, events, cfg.slots_fd};
    close_inherited_fds(mine, cfg.only_needed_fds ? &cfg.keep_fds : nullptr);
    worker_slot* slots = nullptr;
    try {
        slots = map_slots(cfg.slots_fd, cfg.slots);
    } catch (const std::system_error&) {
        _exit(71);
    }
    const pid_t self = ::getpid(); // the parent its workers check for
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, nullptr);
    const int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        _exit(71);

    std::vector<pid_t> children;
    std::deque<zygote::exit_event> unsent;
    auto reap = [&] {
        signalfd_siginfo info;
        while (::read(sfd, &info, sizeof info) > 0) {
        }
        int st = 0;
        for (pid_t p; (p = ::waitpid(-1, &st, WNOHANG)) > 0;) {
            std::erase(children, p);
            unsent.push_back({p, st});
        }
    };
    auto flush = [&] {
        while (!unsent.empty()) {
            const auto& e = unsent.front();
            if (::send(events, &e, sizeof e, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    return;     // the parent is behind: retry when writable
                unsent.clear(); // the parent is gone
                return;
            }
            unsent.pop_front();
        }
    };

    for (;;) {
        pollfd fds[3] = {{requests, POLLIN, 0}, {sfd, POLLIN, 0}, {events, POLLOUT, 0}};
        if (::poll(fds, unsent.empty() ? 2 : 3, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents & POLLIN)
            reap();
        flush();
        if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        std::uint32_t slot = 0;
        const ssize_t n = ::recv(requests, &slot, sizeof slot, 0);
        if (n == 0 || (n < 0 && errno != EINTR))
            break; // the pool stopped us, or is gone
        if (n != sizeof slot)
            continue;
        if (slot >= cfg.slots) {
            send_reply(requests, {-1, EINVAL});
            continue;
        }
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            send_reply(requests, {-1, errno});
            continue;
        }
        tune_worker_socket(sv[0]);
        tune_worker_socket(sv[1]);
        const pid_t pid = ::fork();
        if (pid == 0) {
            start_pool_child(self);
            worker_config mine = cfg;
            mine.parent = self;
            mine.close_fds = {requests, events, sfd, sv[0], cfg.slots_fd};
            worker_main(sv[1], &slots[slot], mine);
        }
        const int err = errno;
        ::close(sv[1]);
        if (pid < 0) {
            ::close(sv[0]);
            send_reply(requests, {-1, err});
            continue;
        }
        children.push_back(pid);
        // Opened before the worker can be reaped (only this process reaps it): never stale.
        const int pidfd = open_pidfd(pid);
        if (pidfd < 0) {
            const int perr = errno;
            ::kill(pid, SIGKILL);
            send_reply(requests, {-1, perr});
        } else {
            const int fds[] = {sv[0], pidfd};
            send_reply(requests, {pid, 0}, fds);
            ::close(pidfd);
        }
        ::close(sv[0]);
    }
    // Stopped: no worker outlives its zygote.
    for (pid_t c : children)
        ::kill(c, SIGKILL);
    for (pid_t c : children)
        while (::waitpid(c, nullptr, 0) < 0 && errno == EINTR) {
        }
    _exit(0);
}

} // namespace

zygote::zygote(const worker_config& cfg) {
    int req[2], ev[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, req) != 0)
        throw os_error(errno, "socketpair for the pool's fork server failed");
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ev) != 0) {
        const int err = errno;
        ::close(req[0]);
        ::close(req[1]);
        throw os_error(err, "socketpair for the pool's fork server failed");
    }
    // A fork server that stops answering (stopped, wedged) must not hold up the pool's loop,
    // which waits for its answers: after answer_timeout it is killed (see spawn()).
    const timeval limit{answer_timeout.count(), 0};
    ::setsockopt(req[0], SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    ::setsockopt(req[0], SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    // The fork server shares every page of this process copy-on-write for the pool's life.
    // Heap pages that are free now would be copied on their next write (4 KiB at a time);
    // given back to the kernel first, they are neither copied by fork() nor shared after it
    // (large message buffers and jobs kept for reuse, too).
    release_kept_buffers();
    release_kept_jobs();
    ::malloc_trim(0);
    pid_ = ::fork();
    if (pid_ == 0) {
        ::close(req[0]);
        ::close(ev[0]);
        serve(req[1], ev[1], cfg);
    }
    const int err = errno;
    ::close(req[1]);
    ::close(ev[1]);
    requests_ = req[0];
    events_ = ev[0];
    if (pid_ < 0) {
        ::close(requests_);
        ::close(events_);
        throw os_error(err, "fork of the pool's fork server failed");
    }
    register_private_fd(requests_);
    register_private_fd(events_);
}

zygote::~zygote() { stop(); }

// Its workers die with it (PDEATHSIG), the pool sees the event socket close and forks
// replacements itself from then on.
void zygote::wedged() {
    ::kill(pid_, SIGKILL);
    throw os_error(ETIMEDOUT, "the pool's fork server did not answer; it was killed");
}

zygote::spawned zygote::spawn(std::size_t slot) {
    std::lock_guard lk(m_);
    if (requests_ < 0)
        throw os_error(ESRCH, "the pool's fork server has stopped");
    const auto s = static_cast<std::uint32_t>(slot);
    ssize_t n;
    do
        n = ::send(requests_, &s, sizeof s, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        wedged();
    if (n != sizeof s)
        throw os_error(n < 0 ? errno : EPIPE, "the pool's fork server does not answer");

    spawn_reply r{};
    iovec iov{&r, sizeof r};
    unique_fd fds[2]; // the worker's socket, its pidfd
    do
        n = recv_with_fds(requests_, {&iov, 1}, fds, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        wedged();
    if (n != sizeof r)
        throw os_error(n < 0 ? errno : EPIPE, "the pool's fork server died");
    if (r.err == EINVAL)
        throw os_error(EINVAL, "the pool's fork server refused an out-of-range worker slot");
    if (r.pid < 0 || !fds[0] || !fds[1])
        throw os_error(r.err ? r.err : EPROTO, "the pool's fork server could not fork a worker");
    return {r.pid, fds[0].release(), fds[1].release()};
}

void zygote::stop() noexcept {
    std::lock_guard lk(m_);
    if (requests_ >= 0) {
        ::shutdown(requests_, SHUT_RDWR); // the zygote kills and reaps its workers, then exits
        unregister_private_fd(requests_);
        ::close(requests_);
        requests_ = -1;
    }
    if (events_ >= 0) {
        unregister_private_fd(events_);
        ::close(events_);
        events_ = -1;
    }
    if (pid_ > 0) {
        while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
    }
}

} // namespace coproc::detail
