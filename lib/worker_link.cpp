// The parent's side of one pool worker (see worker_link.hpp).
#include "worker_link.hpp"

#include <coproc/error.hpp>
#include "child_setup.hpp"
#include "io.hpp"

#include <csignal>
#include <cstring>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace coproc::detail {

namespace {
constexpr std::size_t small_frame = 8 * 1024;
// The most iovecs one sendmsg takes here.
constexpr std::size_t max_iov = 64;
// The most memfds a worker may pass ahead of the frames that claim them.
constexpr std::size_t max_unclaimed_fds = 16;
} // namespace

std::string describe(const job& j) {
    return "task " + std::to_string(j.id) + " (" + std::string(j.name) + ")";
}

void worker_link::attach(const asio::any_io_executor& ex, int fd, int pidfd) {
    sock_ = std::make_unique<socket_t>(ex, asio::local::stream_protocol(), fd);
    pidfd_ = std::make_unique<asio::posix::stream_descriptor>(ex, pidfd);
}

void worker_link::shut() {
    if (state_ >= link_state::shut || !sock_)
        return;
    state_ = link_state::shut;
    std::error_code ignored;
    sock_->shutdown(socket_t::shutdown_send, ignored);
}

void worker_link::mark_exited(std::optional<int> status) noexcept {
    if (state_ < link_state::exited)
        state_ = link_state::exited;
    status_ = status;
}

void worker_link::finalize() {
    state_ = link_state::finalized;
    release_io();
}

void worker_link::kill(kill_reason why, std::string message) noexcept {
    if (reason_ == kill_reason::none) {
        reason_ = why;
        if (why == kill_reason::protocol_error)
            protocol_error_ = std::move(message);
    }
    if (pidfd_)
        signal_pidfd(pidfd_->native_handle(), SIGKILL);
    else if (pid_ > 0 && !has_exited())
        ::kill(pid_, SIGKILL);
}

// Unregistered before they are closed, so a reused number is never taken for ours.
void worker_link::release_io() noexcept {
    std::error_code ignored;
    std::unique_lock reading(read_mu_);
    if (sock_) {
        unregister_private_fd(sock_->native_handle());
        sock_->close(ignored);
    }
    if (pidfd_) {
        unregister_private_fd(pidfd_->native_handle());
        pidfd_->close(ignored);
    }
    for (auto* t : {grace_.get(), cancel_grace_.get()})
        if (t)
            t->cancel();
    sock_.reset();
    reading.unlock();
    pidfd_.reset();
    grace_.reset();
    cancel_grace_.reset();
}

std::pair<int, int> worker_link::exit_info() const noexcept {
    if (!status_)
        return {0, -1};
    const int st = *status_;
    return {WIFSIGNALED(st) ? WTERMSIG(st) : 0, WIFEXITED(st) ? WEXITSTATUS(st) : -1};
}

std::string worker_link::how_it_ended() const {
    const auto [sig, code] = exit_info();
    if (sig)
        return "was killed by signal " + std::to_string(sig) + " (" + ::strsignal(sig) + ")";
    if (status_)
        return "exited with status " + std::to_string(code);
    return "exited (its exit status was not reported)";
}

std::exception_ptr worker_link::lost_error(const job& j, std::chrono::milliseconds timeout) const {
    if (reason_ == kill_reason::timeout)
        return std::make_exception_ptr(
            timeout_error(describe(j) + " ran longer than the task timeout of " +
                          std::to_string(timeout.count()) + " ms; its worker " +
                          std::to_string(pid_) + " was killed"));
    const std::string how = reason_ == kill_reason::protocol_error
                                ? "sent a malformed reply (" + protocol_error_ + ")"
                                : how_it_ended();
    const auto [sig, code] = exit_info();
    return std::make_exception_ptr(worker_lost("worker process " + std::to_string(pid_) + " " +
                                                   how + " while running " + describe(j),
                                               pid_, sig, code));
}

std::exception_ptr worker_link::result_lost_error(const job& j) const {
    const auto [sig, code] = exit_info();
    return std::make_exception_ptr(
        worker_lost("worker process " + std::to_string(pid_) + " died after running " +
                        describe(j) + " but before sending its result (it is not run again)",
                    pid_, sig, code));
}

// Small frames are copied together into one staging buffer, large ones are referenced where
// they are, and an out-of-line frame starts a buffer of its own (its memfd goes with it): one
// sendmsg for the whole batch, or one per out-of-line frame.
bool worker_link::begin_write() {
    if (writing || to_send.empty() || !sock_)
        return false;
    bufs_.clear();
    passes_.clear();
    staging_.clear();
    next_ = offset_ = 0;
    std::size_t small = 0;
    for (const job* j : to_send)
        if (j->frame.size() <= small_frame)
            small += j->frame.size();
    staging_.reserve(small); // no reallocation below: the buffers point into it
    bool last_staged = false;
    for (const job* j : to_send) {
        const bool staged = j->frame.size() <= small_frame;
        char* data = staged ? staging_.data() + staging_.size() : const_cast<char*>(j->frame.data());
        if (staged)
            staging_.insert(staging_.end(), j->frame.begin(), j->frame.end());
        if (staged && last_staged && !j->payload) {
            bufs_.back().iov_len += j->frame.size();
        } else {
            bufs_.push_back({data, j->frame.size()});
            passes_.push_back(j->payload.get());
        }
        last_staged = staged;
    }
    to_send.clear();
    writing = true;
    return true;
}

std::error_code worker_link::send_some() {
    if (!sock_)
        return asio::error::bad_descriptor;
    while (next_ < bufs_.size()) {
        // From bufs_[next_] up to the next buffer whose first byte carries a memfd.
        iovec iov[max_iov];
        std::size_t count = 0;
        for (std::size_t i = next_;
             i < bufs_.size() && count < max_iov && (i == next_ || passes_[i] < 0); ++i)
            iov[count++] = bufs_[i];
        iov[0].iov_base = static_cast<char*>(iov[0].iov_base) + offset_;
        iov[0].iov_len -= offset_;
        const int pass = offset_ == 0 ? passes_[next_] : -1;
        const ssize_t n =
            send_with_fd(sock_->native_handle(), {iov, count}, pass, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (would_block())
                return asio::error::would_block;
            return {errno, std::system_category()};
        }
        std::size_t left = static_cast<std::size_t>(n) + offset_;
        while (next_ < bufs_.size() && left >= bufs_[next_].iov_len)
            left -= bufs_[next_++].iov_len;
        offset_ = left;
    }
    return {};
}

std::error_code worker_link::receive(std::size_t& n, bool& full) {
    n = 0;
    full = false;
    std::lock_guard lk(read_mu_);
    if (!sock_)
        return asio::error::bad_descriptor;
    const auto area = dec.write_area();
    iovec iov{area.data(), area.size()};
    unique_fd passed[max_passed_fds];
    bool truncated = false;
    ssize_t r;
    do
        r = recv_with_fds(sock_->native_handle(), {&iov, 1}, passed, MSG_DONTWAIT, &truncated);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return would_block() ? std::error_code(asio::error::would_block)
                             : std::error_code(errno, std::system_category());
    if (r == 0)
        return asio::error::eof;
    for (auto& p : passed)
        if (p)
            fds.emplace_back(p.release());
    if (truncated || fds.size() > max_unclaimed_fds)
        throw error("protocol error: a worker passed descriptors no frame of it claims");
    n = static_cast<std::size_t>(r);
    full = n == area.size();
    return {};
}

std::vector<job_ptr> worker_link::end_write() {
    writing = false;
    if (staging_.capacity() > max_kept_buffer)
        std::vector<char>().swap(staging_);
    return std::exchange(parked, {});
}

} // namespace coproc::detail
