// coproc/error.hpp — the exceptions coproc throws.
//
//   error                 base of everything below (a std::runtime_error)
//   remote_error          a task threw something that is not a standard exception type
//   worker_lost           the worker running a task died (signal, abort, exit, OOM kill)
//   pool_closed           the pool was used after close()/terminate(), or terminated under a task
//   timeout_error         a task exceeded pool_options::task_timeout, or a *_for call timed out
//   eof_error             the other end of a pipe or queue was closed
//   owner_died            a lock's previous holder died; the caller now holds the lock
//   broken_barrier        a barrier was aborted, reset, timed out or lost a party while waiting
//
// Exceptions thrown by a task that are std::logic_error, std::runtime_error or one of their
// standard subclasses reach the caller as that same type, with the same what().
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace coproc {

/// Base class of every coproc exception.
class error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

/// A task threw an exception that cannot be rebuilt in the parent as its own type.
/// `type_name()` is the demangled name of the original type, `what()` its message.
class remote_error : public error {
  public:
    remote_error(std::string type_name, const std::string& what)
        : error(what), type_name_(std::move(type_name)) {}
    const std::string& type_name() const noexcept { return type_name_; }

  private:
    std::string type_name_;
};

/// The worker process running a task died before answering.
/// `pid()` is the worker, `signal()` the signal that killed it (0 if it exited) and
/// `exit_status()` its exit status (-1 if it was killed by a signal).
class worker_lost : public error {
  public:
    worker_lost(const std::string& what, pid_t pid, int signal, int exit_status)
        : error(what), pid_(pid), signal_(signal), exit_status_(exit_status) {}
    pid_t pid() const noexcept { return pid_; }
    int signal() const noexcept { return signal_; }
    int exit_status() const noexcept { return exit_status_; }

  private:
    pid_t pid_;
    int signal_;
    int exit_status_;
};

/// The pool no longer accepts or runs tasks (close() or terminate() was called).
class pool_closed : public error {
  public:
    using error::error;
};

/// A task ran longer than its timeout, or a timed wait (`get_for`, `put_for`) expired.
class timeout_error : public error {
  public:
    using error::error;
};

/// The other end of a channel was closed: nothing more will arrive.
class eof_error : public error {
  public:
    using error::error;
};

/// The previous holder of a lock died while holding it. The lock is now held by the caller,
/// who should repair whatever the lock protects before releasing it.
class owner_died : public error {
  public:
    using error::error;
};

/// A barrier broke while (or before) the caller waited on it: abort(), reset(), a wait_for()
/// that timed out, a cancelled async_wait(), or a party that died waiting (Python's
/// BrokenBarrierError).
class broken_barrier : public error {
  public:
    using error::error;
};

} // namespace coproc
