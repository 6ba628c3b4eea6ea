// The non-template parts of coproc/detail/async_op.hpp: a cancellable descriptor wait and the
// hand-off of a blocking job to a helper thread.
#include <coproc/detail/async_op.hpp>
#include "io.hpp"

#include <asio/co_spawn.hpp>
#include <asio/posix/stream_descriptor.hpp>

#include <cerrno>
#include <sys/epoll.h>

namespace coproc::detail {

// Waits through an epoll instance watching the descriptor, and Asio waits for that instance to
// be readable: Asio then sets O_NONBLOCK on the instance, never on the channel's descriptor
// (shared with other processes, whose blocking calls rely on its mode; see io.hpp).
struct fd_waiter::impl {
    std::optional<asio::posix::stream_descriptor> sd;
    int watched = -1;
    bool write = false;
};

fd_waiter::fd_waiter() noexcept = default;
fd_waiter::~fd_waiter() = default;

void fd_waiter::async_wait(const asio::any_io_executor& ex, const wait_for& w,
                           std::function<void(std::error_code)> done) {
    if (!impl_)
        impl_ = std::make_unique<impl>();
    auto& s = *impl_;
    if (!s.sd) {
        unique_fd ep(::epoll_create1(EPOLL_CLOEXEC));
        if (!ep)
            throw os_error("epoll_create1 for an asynchronous wait failed");
        s.sd.emplace(ex, ep.get());
        ep.release();
    }
    const int ep = s.sd->native_handle();
    if (s.watched != w.fd || s.write != w.write) {
        if (s.watched >= 0)
            ::epoll_ctl(ep, EPOLL_CTL_DEL, s.watched, nullptr); // may be gone already: closed
        s.watched = -1;
        epoll_event ev{};
        ev.events = w.write ? EPOLLOUT : EPOLLIN;
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, w.fd, &ev) != 0 &&
            (errno != EEXIST || ::epoll_ctl(ep, EPOLL_CTL_MOD, w.fd, &ev) != 0))
            throw os_error("epoll_ctl for an asynchronous wait failed");
        s.watched = w.fd;
        s.write = w.write;
    }
    s.sd->async_wait(asio::posix::descriptor_base::wait_read, std::move(done));
}

void fd_waiter::cancel() noexcept {
    if (impl_ && impl_->sd) {
        std::error_code ignored;
        impl_->sd->cancel(ignored);
    }
}

void run_blocking(blocking_runner& runner, const asio::any_io_executor& ex,
                  std::function<void()> job, std::function<void(std::exception_ptr)> done) {
    asio::co_spawn(ex, runner.run(std::move(job)), std::move(done));
}

} // namespace coproc::detail
