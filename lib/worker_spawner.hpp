// How a pool gets its workers (private to the library): the slot memory they share with the
// parent, the fork server (zygote.hpp) and the exits it reports, and the fallback fork from
// this process when there is no fork server.
//
// A spawner holds no lock of its own: the pool calls it under its mutex, except spawn(), which
// forks and is called without it.
#pragma once

#include "io.hpp"
#include "worker.hpp"
#include "zygote.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/buffer.hpp>
#include <asio/posix/stream_descriptor.hpp>

#include <cstddef>
#include <memory>
#include <optional>
#include <sys/types.h>
#include <system_error>

namespace coproc::detail {

class worker_spawner {
  public:
    /// Makes the slot memory for `cfg.slots` workers (a memfd mapped here, not inherited by
    /// other children) and completes `cfg` with it; throws std::system_error.
    worker_spawner(asio::any_io_executor ex, worker_config cfg);
    ~worker_spawner();
    worker_spawner(const worker_spawner&) = delete;
    worker_spawner& operator=(const worker_spawner&) = delete;

    /// Forks the fork server now, while this process may still be single-threaded; if it
    /// cannot be made, workers are forked from this process instead.
    void start_fork_server();
    /// The fork server, or null once it is lost or retired.
    std::shared_ptr<zygote> fork_server() const { return lost_ ? nullptr : zygote_; }
    /// The fork server failed: fork from this process from now on.
    void lose_fork_server() noexcept { lost_ = true; }
    /// Whether the fork server's exits are still read.
    bool listening() const noexcept { return events_ != nullptr; }
    /// Stops reading the fork server's exits.
    void stop_listening() noexcept;
    /// Stops reading exits and gives up the fork server; returns it for the caller to stop()
    /// (a blocking wait) without the pool's mutex.
    std::shared_ptr<zygote> retire_fork_server() noexcept;
    /// Gives up the slot memory's descriptor: no worker is forked any more.
    void close_slots() noexcept;

    /// The shared memory of worker slot `i`.
    worker_slot& slot(std::size_t i) noexcept { return slots_[i]; }

    /// Reads the fork server's next exit report; `handler(std::optional<zygote::exit_event>)`
    /// gets nullopt if the fork server is gone (its workers die with it).
    template <class Handler> void async_read_event(Handler&& handler) {
        if (!events_)
            return;
        events_->async_read_some(
            asio::buffer(&event_, sizeof event_),
            [this, h = std::forward<Handler>(handler)](std::error_code ec, std::size_t n) mutable {
                h(ec || n != sizeof event_ ? std::nullopt
                                           : std::optional<zygote::exit_event>(event_));
            });
    }

    struct spawned {
        pid_t pid;
        int fd;           // the parent's end of the worker's socket (O_CLOEXEC)
        int pidfd;        // the worker's pidfd (O_CLOEXEC)
        bool from_zygote; // forked by the fork server, which reports its exit
    };                    // fd and pidfd come registered as private (child_setup.hpp)
    /// Asks `server` (from fork_server(), taken under the pool's mutex) for a worker in
    /// `slot`; nullopt if the fork server failed (then call lose_fork_server()). Call without
    /// the pool's mutex.
    static std::optional<spawned> ask(zygote& server, std::size_t slot);
    /// Forks a worker in `slot` from this process. Call without the pool's mutex. Throws
    /// std::system_error.
    spawned fork_here(std::size_t slot);

  private:
    [[noreturn]] void fallback_worker_main(int fd, std::size_t slot) noexcept;

    asio::any_io_executor ex_;
    worker_config cfg_;
    unique_fd slots_fd_;
    worker_slot* slots_ = nullptr;
    std::shared_ptr<zygote> zygote_;
    std::unique_ptr<asio::posix::stream_descriptor> events_;
    zygote::exit_event event_{};
    bool lost_ = false;
};

} // namespace coproc::detail
