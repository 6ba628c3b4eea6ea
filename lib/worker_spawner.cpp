// How a pool gets its workers (see worker_spawner.hpp).
#include "worker_spawner.hpp"

#include "child_setup.hpp"

#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <iterator>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace coproc::detail {

worker_spawner::worker_spawner(asio::any_io_executor ex, worker_config cfg)
    : ex_(std::move(ex)), cfg_(std::move(cfg)) {
    // The slots live in a memfd that only this pool's fork server and workers map: the
    // parent's mapping is not inherited by other children (MADV_DONTFORK).
    const std::size_t bytes = sizeof(worker_slot) * cfg_.slots;
    slots_fd_.reset(::memfd_create("coproc-pool-slots", MFD_CLOEXEC));
    if (!slots_fd_ || ::ftruncate(slots_fd_.get(), static_cast<off_t>(bytes)) != 0)
        throw os_error("memfd for the pool's worker slots failed");
    slots_ = new (map_slots(slots_fd_.get(), cfg_.slots)) worker_slot[cfg_.slots];
    ::madvise(slots_, bytes, MADV_DONTFORK);
    register_private_fd(slots_fd_.get());
    cfg_.slots_fd = slots_fd_.get();
}

worker_spawner::~worker_spawner() {
    ::munmap(slots_, sizeof(worker_slot) * cfg_.slots);
    close_slots();
}

void worker_spawner::close_slots() noexcept {
    if (slots_fd_)
        unregister_private_fd(slots_fd_.get());
    slots_fd_.reset();
}

// Workers are forked by a single-threaded fork server made now, never by this (possibly
// multi-threaded) process.
void worker_spawner::start_fork_server() {
    try {
        zygote_ = std::make_shared<zygote>(cfg_);
        const int ev = ::fcntl(zygote_->events_fd(), F_DUPFD_CLOEXEC, 0);
        if (ev < 0)
            throw os_error("dup of the fork server's event socket failed");
        register_private_fd(ev);
        events_ = std::make_unique<asio::posix::stream_descriptor>(ex_, ev);
    } catch (const std::exception&) {
        stop_listening();
        zygote_.reset();
    }
}

void worker_spawner::stop_listening() noexcept {
    if (events_)
        unregister_private_fd(events_->native_handle());
    events_.reset();
}

std::shared_ptr<zygote> worker_spawner::retire_fork_server() noexcept {
    stop_listening();
    return zygote_;
}

std::optional<worker_spawner::spawned> worker_spawner::ask(zygote& server, std::size_t slot) {
    try {
        const auto s = server.spawn(slot);
        register_private_fd(s.fd);
        register_private_fd(s.pidfd);
        return spawned{s.pid, s.fd, s.pidfd, true};
    } catch (const std::system_error&) {
        return std::nullopt;
    }
}

// The fallback: fork a worker from this process.
worker_spawner::spawned worker_spawner::fork_here(std::size_t slot) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw os_error("socketpair for a pool worker failed");
    register_private_fd(sv[0]); // no process child forked meanwhile may keep either end
    register_private_fd(sv[1]);
    tune_worker_socket(sv[0]);
    tune_worker_socket(sv[1]);
    const pid_t pid = ::fork();
    if (pid == 0)
        fallback_worker_main(sv[1], slot);
    const int err = errno;
    unregister_private_fd(sv[1]); // the worker's end; ours stays registered
    ::close(sv[1]);
    if (pid < 0) {
        unregister_private_fd(sv[0]);
        ::close(sv[0]);
        errno = err;
        throw os_error("fork of a pool worker failed");
    }
    const int pfd = open_pidfd(pid);
    if (pfd < 0) {
        const auto e = os_error("pidfd_open of a pool worker failed (Linux >= 5.3 needed)");
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        unregister_private_fd(sv[0]);
        ::close(sv[0]);
        throw e;
    }
    register_private_fd(pfd);
    return {pid, sv[0], pfd, false};
}

// A worker forked by this (possibly threaded) process: it keeps only its own descriptors and
// maps the slots itself (the parent's mapping is not inherited).
void worker_spawner::fallback_worker_main(int fd, std::size_t slot) noexcept {
    start_pool_child(cfg_.parent);
    const int mine[] = {fd, cfg_.slots_fd};
    close_inherited_fds(mine, cfg_.only_needed_fds ? &cfg_.keep_fds : nullptr);
    worker_slot* slots = nullptr;
    try {
        slots = map_slots(cfg_.slots_fd, cfg_.slots);
    } catch (...) {
        _exit(71);
    }
    worker_config cfg = cfg_;
    cfg.close_fds = {cfg_.slots_fd};
    worker_main(fd, &slots[slot], cfg);
}

} // namespace coproc::detail
