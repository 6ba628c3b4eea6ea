// The fork server of a pool (private to the library).
//
// Forking a multi-threaded process is unsafe: another thread may hold a lock (malloc's, a
// logger's, the dynamic loader's) at the instant of fork(), and the child inherits it locked.
// So a pool forks one single-threaded "zygote" when it starts, and every worker, the first ones
// and every replacement, is forked by the zygote, never by the (threaded) parent.
//
//   requests  (parent -> zygote, SOCK_SEQPACKET, blocking): "spawn a worker for slot k";
//             the answer is the worker's pid with the parent's end of its socket and a pidfd
//             (SCM_RIGHTS), opened by the zygote before it can reap the worker, so the pidfd
//             never names a reused pid.
//   events    (zygote -> parent, SOCK_SEQPACKET, read on the event loop): "pid P exited with
//             status S" — workers are the zygote's children, so it reaps them and reports.
//
// The zygote dies with the parent (PR_SET_PDEATHSIG) and its workers die with it; when the
// pool closes the request socket, the zygote kills and reaps its workers and exits.
#pragma once

#include "worker.hpp"

#include <chrono>
#include <cstddef>
#include <mutex>
#include <sys/types.h>

namespace coproc::detail {

class zygote {
  public:
    /// How long spawn() waits for the zygote's answer before it kills the zygote.
    static constexpr std::chrono::seconds answer_timeout{5};

    /// Forks the zygote. `cfg` (with the memfd of the worker slots) is what its workers run
    /// with.
    explicit zygote(const worker_config& cfg);
    ~zygote();
    zygote(const zygote&) = delete;
    zygote& operator=(const zygote&) = delete;

    struct spawned {
        pid_t pid;
        int fd;    // the parent's end of the worker's socket (O_CLOEXEC)
        int pidfd; // the worker's pidfd (O_CLOEXEC)
    };
    /// Asks the zygote for a worker in `slot`. Thread-safe. Throws std::system_error if the
    /// zygote cannot be reached or cannot fork, or `slot` is out of range (EINVAL).
    spawned spawn(std::size_t slot);

    /// The socket the zygote reports worker exits on: a stream of `exit_event`s.
    int events_fd() const noexcept { return events_; }
    struct exit_event {
        pid_t pid;
        int status; // as from waitpid
    };

    /// Stops the zygote: it kills and reaps its workers, then exits; reaps the zygote.
    void stop() noexcept;
    pid_t pid() const noexcept { return pid_; }

  private:
    /// The zygote did not answer within answer_timeout: kills it and throws.
    [[noreturn]] void wedged();
    std::mutex m_;
    pid_t pid_ = -1;
    int requests_ = -1;
    int events_ = -1;
};

} // namespace coproc::detail
