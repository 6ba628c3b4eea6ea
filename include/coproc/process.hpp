// coproc/process.hpp — process, a function run in a forked child (Python's
// multiprocessing.Process).
//
//   coproc::process p(f, lock, 3);     // target and arguments; not started yet
//   p.start();  p.join();              // or p.join_for(1s), co_await p.async_join() (any token)
//   p.is_alive()  p.exitcode()  p.pid()  p.terminate()  p.kill()  p.name  p.daemon
//
// The target is a plain function or captureless lambda; the arguments are stored by value and
// reach the child as copies made by fork(), so they need not be serializable. Queues, pipes and
// locks passed as arguments are shared with the child (they are handles).
//
// In the child: signal handlers are reset to the default, output buffered but unwritten by the
// parent is dropped, and when the target returns the child flushes stdio and _exit(0)s (no
// atexit handlers, no destructors of the parent's objects). An exception escaping the target is
// printed to stderr ("Process <name>: <type>: <what>") and the exit code is 1.
//
// exitcode() is nullopt while the child runs, its exit status once it exited, and -N if signal
// N killed it (as Python). A non-daemon process is joined by the destructor (Python joins its
// children at exit); a daemon process is terminated, then killed if it lingers. Every child is
// reaped; no zombie stays.
//
// Parent death: every child, daemon or not, is killed by the kernel (PR_SET_PDEATHSIG, SIGKILL)
// if the parent process dies before it, so no child outlives a parent that was SIGKILLed,
// crashed, or left through std::exit/_exit without destroying its process objects (unlike
// Python, which joins non-daemon children in an atexit hook). The kernel ties that signal to the
// *thread* that forked, not to the process, so start() forks from a thread that lives as long as
// the process: the calling thread if it is the main thread, otherwise a helper thread that
// coproc starts on first use and keeps for the life of the process (start() waits for it). A
// process started from a short-lived thread thus keeps running after that thread has exited.
// Consequences: a child forked by the helper is a copy of the helper thread, so thread_local
// variables in the child are the helper's (fresh), not the caller's; and children started on
// the main thread are killed if the main thread ends with pthread_exit() while others go on.
#pragma once

#include <coproc/detail/async_op.hpp>
#include <coproc/detail/function_id.hpp>
#include <coproc/detail/handle.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <sys/types.h>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coproc {

namespace detail {

/// What a child runs: the target with its stored arguments.
struct process_body {
    virtual ~process_body() = default;
    virtual void run() = 0;
};

template <class Fp, class... Args> struct process_call final : process_body {
    process_call(Fp f, Args... a) : fn(f), args(std::move(a)...) {}
    void run() override { std::apply(fn, args); }
    Fp fn;
    std::tuple<Args...> args;
};

struct process_state;

} // namespace detail

/// A function run in a child process.
class process {
  public:
    /// A process that will run `target(args...)` when started.
    template <class F, class... Args>
    explicit process(F target, Args... args)
        : process(make_body(detail::to_function_pointer(target), std::move(args)...)) {}
    process(process&&) noexcept;
    process& operator=(process&&) noexcept;
    /// Joins a started non-daemon process; terminates (then kills) and reaps a daemon one.
    ~process();

    /// Forks the child (on the main thread or coproc's helper thread, see above). Throws
    /// coproc::error if already started, std::system_error if fork fails.
    void start();
    /// Waits for the child to end.
    void join();
    /// Waits at most `timeout`; true if the child ended.
    template <class Rep, class Period> bool join_for(std::chrono::duration<Rep, Period> timeout) {
        return join_until(detail::deadline_after(timeout));
    }
    /// Waits for the child to end without blocking the event-loop thread (waits on a pidfd):
    /// an asynchronous operation with completion signature `void(std::exception_ptr)` and any
    /// completion token (default `asio::use_awaitable`: `co_await p.async_join()`). Waits on
    /// the handler's associated executor and completes there; errors as join(). Keep this
    /// object alive until the operation completes.
    /// Cancellation (the handler's cancellation slot, any type): completes at once with
    /// std::system_error(asio::error::operation_aborted); the child keeps running and can be
    /// joined later.
    template <class Token = asio::use_awaitable_t<>> auto async_join(Token&& token = {}) {
        return detail::async_poll<void>(
            [s = state_.get()](detail::wait_for& next) { return try_join(s, next); },
            std::forward<Token>(token));
    }

    /// Started and not yet ended.
    bool is_alive() const;
    /// nullopt while running (or not started); the exit status, or -signal if killed.
    std::optional<int> exitcode() const;
    /// The child's pid; 0 before start().
    pid_t pid() const noexcept;
    /// Sends SIGTERM (nothing if the child already ended).
    void terminate();
    /// Sends SIGKILL (nothing if the child already ended).
    void kill();

    /// A name for messages ("process-N" unless set).
    std::string name;
    /// A daemon is terminated (not joined) when this object is destroyed. Daemon or not, the
    /// child is killed if the parent process dies.
    bool daemon = false;

  private:
    template <class Fp, class... Args>
    static std::unique_ptr<detail::process_body> make_body(Fp f, Args... args) {
        static_assert(std::is_invocable_v<Fp, Args&...>,
                      "process: the target cannot be called with these arguments");
        return std::make_unique<detail::process_call<Fp, Args...>>(f, std::move(args)...);
    }
    explicit process(std::unique_ptr<detail::process_body> body);
    detail::process_state& started_state(const char* what) const;
    bool join_until(detail::clock::time_point deadline);
    static std::optional<detail::op_done> try_join(detail::process_state* s,
                                                   detail::wait_for& next);
    void signal(int sig);

    std::unique_ptr<detail::process_state> state_;
};

} // namespace coproc
