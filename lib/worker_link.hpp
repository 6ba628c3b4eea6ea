// The parent's side of one pool worker (private to the library): its socket and pidfd, the
// jobs handed to it, the batched write in progress, its lifecycle and how it ended.
//
// A link holds no lock of its own: the pool guards every link with its one mutex.
#pragma once

#include <coproc/detail/pool_core.hpp>
#include <coproc/detail/wire.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/buffer.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <string>
#include <sys/types.h>
#include <sys/uio.h>
#include <utility>
#include <vector>

namespace coproc::detail {

/// Where a worker is in its life. Only ever moves forward.
enum class link_state {
    serving,   // takes new jobs
    retiring,  // got maxtasksperchild jobs: it exits after answering them
    shut,      // our write side is shut: the worker exits when done
    exited,    // the process is gone; its last replies may still be read
    finalized, // its jobs are settled and its I/O released
};

/// Why the pool killed a worker, if it did.
enum class kill_reason { none, timeout, protocol_error, cancelled };

class worker_link {
  public:
    using socket_t = asio::local::stream_protocol::socket;

    /// A link to worker `pid` in `slot`, without I/O yet (see attach()).
    worker_link(pid_t pid, std::size_t slot, bool from_zygote) noexcept
        : pid_(pid), slot_(slot), from_zygote_(from_zygote) {}

    /// Takes ownership of the worker's socket `fd` and `pidfd` (registered private fds).
    void attach(const asio::any_io_executor& ex, int fd, int pidfd);

    pid_t pid() const noexcept { return pid_; }
    std::size_t slot() const noexcept { return slot_; }
    /// Its exit status is reported by the fork server (its parent), not waited for here.
    bool from_zygote() const noexcept { return from_zygote_; }
    link_state state() const noexcept { return state_; }
    bool has_exited() const noexcept { return state_ >= link_state::exited; }
    bool has_socket() const noexcept { return sock_ != nullptr; }

    /// Whether new jobs may be handed to it.
    bool accepts() const noexcept {
        return state_ == link_state::serving && !eof && reason_ == kill_reason::none;
    }
    /// It got its last job (maxtasksperchild).
    void retire() noexcept {
        if (state_ == link_state::serving)
            state_ = link_state::retiring;
    }
    /// Shuts our write side: the worker sees EOF and exits once its jobs are answered.
    void shut();
    /// The process is gone, with wait status `status` (none: unknown).
    void mark_exited(std::optional<int> status) noexcept;
    /// Its jobs are settled: releases its I/O.
    void finalize();

    /// Kills the worker with SIGKILL (through its pidfd where there is one, so a recycled pid
    /// is never hit), noting why unless a reason is already known.
    void kill(kill_reason why = kill_reason::none, std::string message = {}) noexcept;
    kill_reason reason() const noexcept { return reason_; }
    /// What was wrong with its replies (kill_reason::protocol_error).
    const std::string& protocol_error() const noexcept { return protocol_error_; }

    /// The signal that killed it (0: none) and its exit status (-1: none or unknown).
    std::pair<int, int> exit_info() const noexcept;
    /// How it ended: "was killed by signal 9 (Killed)", "exited with status 3"...
    std::string how_it_ended() const;
    /// The error for `j`, which it was running when it died (or every job of a worker that
    /// broke the protocol); `timeout` is the pool's task timeout.
    std::exception_ptr lost_error(const job& j, std::chrono::milliseconds timeout) const;
    /// The error for `j`, which it ran to the end, but whose reply died with it.
    std::exception_ptr result_lost_error(const job& j) const;

    /// Moves the jobs of to_send into one write: returns false if a write is under way or
    /// there is nothing to send (or no socket), else sets `writing`.
    bool begin_write();
    /// Sends what it can of the write begin_write() built without blocking (each out-of-line
    /// frame's memfd in the sendmsg that starts with its header): no error once all is sent,
    /// asio::error::would_block if the socket is full. Under the pool's mutex.
    std::error_code send_some();
    /// Calls `handler(error_code)` once the socket is writable.
    template <class Handler> void async_wait_writable(Handler&& handler) {
        sock_->async_wait(socket_t::wait_write, std::forward<Handler>(handler));
    }
    /// The write is over: returns the parked jobs, to be freed without the pool's mutex.
    std::vector<job_ptr> end_write();

    /// Calls `handler(error_code)` once the socket is readable (see receive()).
    template <class Handler> void async_wait_readable(Handler&& handler) {
        sock_->async_wait(socket_t::wait_read, std::forward<Handler>(handler));
    }
    /// Reads what has arrived of the worker's replies into the decoder without blocking (the
    /// memfds passed with them to `fds`); sets `n` to the bytes read and `full` to whether
    /// they filled the decoder's free space (else the socket held no more). Returns
    /// asio::error::eof at end of stream, would_block if nothing is there; throws
    /// coproc::error if the worker passed more descriptors than a message may carry. Called
    /// without the pool's mutex by the one read under way (it alone touches the decoder's free
    /// space and pushes to `fds`); its own lock keeps the socket from being closed meanwhile.
    std::error_code receive(std::size_t& n, bool& full);
    /// Waits until the pidfd is readable (the process exited); `handler(error_code)`.
    template <class Handler> void async_wait_exit(Handler&& handler) {
        pidfd_->async_wait(asio::posix::descriptor_base::wait_read, std::forward<Handler>(handler));
    }
    /// Calls `handler(error_code)` after `d` (one timer at a time: a new one replaces it).
    template <class Handler>
    void start_grace(const asio::any_io_executor& ex, std::chrono::steady_clock::duration d,
                     Handler&& handler) {
        grace_ = std::make_unique<asio::steady_timer>(ex, d);
        grace_->async_wait(std::forward<Handler>(handler));
    }

    /// Calls `handler(error_code)` after `d`: the grace of a cancelled task it runs (one at a
    /// time: a new one replaces it).
    template <class Handler>
    void start_cancel_grace(const asio::any_io_executor& ex, std::chrono::steady_clock::duration d,
                            Handler&& handler) {
        cancel_grace_ = std::make_unique<asio::steady_timer>(ex, d);
        cancel_grace_->async_wait(std::forward<Handler>(handler));
    }

    // Handed to this worker, oldest first. The loop thread empties the blocks the submitting
    // thread fills: they are recycled here, not given back to malloc.
    std::pmr::unsynchronized_pool_resource inflight_blocks;
    std::pmr::deque<job_ptr> inflight{&inflight_blocks};
    std::vector<job*> to_send;    // not yet part of a write
    std::vector<job_ptr> parked;  // failed jobs whose frames the write in progress still reads
    frame_decoder dec;
    std::deque<payload_fd> fds; // memfds received, not yet taken by their frames
    std::uint64_t assigned = 0;  // jobs handed to it, for maxtasksperchild
    std::uint64_t sent = 0;      // the last frame number (job::seq) given to it
    std::int64_t idle_since = 0; // for timeouts: when an idle worker with work was first seen
    bool eof = false;            // no more replies will be read
    bool writing = false;        // a write is under way
    bool answered = false;       // it has sent a reply (so its initializer ran)

  private:
    void release_io() noexcept;

    pid_t pid_;
    std::size_t slot_;
    bool from_zygote_;
    link_state state_ = link_state::serving;
    kill_reason reason_ = kill_reason::none;
    std::string protocol_error_;
    std::optional<int> status_; // its wait status, once known
    std::mutex read_mu_; // receive() against release_io() closing the socket
    std::unique_ptr<socket_t> sock_;
    std::unique_ptr<asio::posix::stream_descriptor> pidfd_;
    std::unique_ptr<asio::steady_timer> grace_;
    std::unique_ptr<asio::steady_timer> cancel_grace_;
    std::vector<char> staging_; // the small frames of the write in progress
    std::vector<iovec> bufs_;   // the write in progress, from bufs_[next_] + offset_ on
    std::vector<int> passes_;   // per buffer: the memfd to pass with its first byte, or -1
    std::size_t next_ = 0;
    std::size_t offset_ = 0;
};
using link_ptr = std::shared_ptr<worker_link>;

} // namespace coproc::detail
