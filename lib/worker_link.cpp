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
// they are: one writev for the whole batch.
bool worker_link::begin_write() {
    if (writing || to_send.empty() || !sock_)
        return false;
    bufs_.clear();
    staging_.clear();
    std::size_t small = 0;
    for (const job* j : to_send)
        if (j->frame.size() <= small_frame)
            small += j->frame.size();
    staging_.reserve(small); // no reallocation below: the buffers point into it
    bool last_staged = false;
    for (const job* j : to_send) {
        if (j->frame.size() <= small_frame) {
            const std::size_t at = staging_.size();
            staging_.insert(staging_.end(), j->frame.begin(), j->frame.end());
            if (last_staged) {
                auto& b = bufs_.back();
                b = asio::const_buffer(b.data(), b.size() + j->frame.size());
            } else {
                bufs_.emplace_back(staging_.data() + at, j->frame.size());
            }
            last_staged = true;
        } else {
            bufs_.emplace_back(j->frame.data(), j->frame.size());
            last_staged = false;
        }
    }
    to_send.clear();
    writing = true;
    return true;
}

std::vector<job_ptr> worker_link::end_write() {
    writing = false;
    if (staging_.capacity() > max_kept_buffer)
        std::vector<char>().swap(staging_);
    return std::exchange(parked, {});
}

} // namespace coproc::detail
