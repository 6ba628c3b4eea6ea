// process: fork, a pidfd to wait on (poll() when blocking, Asio when awaiting), waitpid to reap.
// Also the lasting thread that forks for threads which may not outlive their children.
#include <coproc/process.hpp>
#include "child_setup.hpp"
#include "fork_thread.hpp"
#include "io.hpp"
#include "transport.hpp"

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <exception>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <stdio_ext.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace coproc {

namespace detail {

namespace {

// The helper thread of run_on_lasting_thread: runs one request at a time, forever. One per
// process: a forked child that needs one starts its own (the copy it inherited belongs to a
// thread that does not exist in the child, its mutexes possibly held).
class lasting_thread {
  public:
    explicit lasting_thread(pid_t owner) noexcept : owner(owner) {}
    const pid_t owner;

    void run(const std::function<void()>& fn) {
        std::call_once(started_, [this] { start(); });
        std::lock_guard one_at_a_time(calls_);
        std::unique_lock lk(m_);
        request_ = &fn;
        done_ = false;
        cv_.notify_all();
        cv_.wait(lk, [&] { return done_; });
        if (auto e = std::exchange(error_, nullptr))
            std::rethrow_exception(e);
    }

    bool is_current() const noexcept { return tid_.load(std::memory_order_relaxed) == ::gettid(); }

  private:
    // With every signal blocked: signals sent to the process go to the threads that expect them.
    void start() {
        sigset_t all, old;
        sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            std::thread([this] { serve(); }).detach(); // lives as long as the process
        } catch (...) {
            ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    [[noreturn]] void serve() noexcept {
        tid_.store(::gettid(), std::memory_order_relaxed);
        std::unique_lock lk(m_);
        for (;;) {
            cv_.wait(lk, [&] { return request_ != nullptr; });
            const auto* fn = std::exchange(request_, nullptr);
            lk.unlock(); // a child forked by fn must not inherit it held
            std::exception_ptr e;
            try {
                (*fn)();
            } catch (...) {
                e = std::current_exception();
            }
            lk.lock();
            error_ = std::move(e);
            done_ = true;
            cv_.notify_all();
        }
    }

    std::once_flag started_;
    std::mutex calls_; // one request at a time
    std::mutex m_;
    std::condition_variable cv_;
    const std::function<void()>* request_ = nullptr;
    std::exception_ptr error_;
    bool done_ = false;
    std::atomic<pid_t> tid_{0};
};

// Never freed: the helper thread runs until the process exits.
std::atomic<lasting_thread*> lasting{nullptr};

lasting_thread& lasting_for_this_process() {
    const pid_t me = ::getpid();
    lasting_thread* cur = lasting.load(std::memory_order_acquire);
    while (!cur || cur->owner != me) {
        auto* fresh = new lasting_thread(me);
        if (lasting.compare_exchange_strong(cur, fresh, std::memory_order_acq_rel))
            return *fresh;
        delete fresh; // another thread won: use (or re-check) its helper
    }
    return *cur;
}

} // namespace

void run_on_lasting_thread(const std::function<void()>& fn) {
    if (::gettid() == ::getpid())
        return fn(); // the main thread lives as long as the process
    auto& helper = lasting_for_this_process();
    if (helper.is_current())
        return fn();
    helper.run(fn);
}

struct process_state {
    ~process_state() { unregister_private_fd(pidfd.get()); }

    std::unique_ptr<process_body> body;
    pid_t pid = 0;
    unique_fd pidfd; // open from start() to destruction: waits and signals never hit a reused pid
    mutable std::mutex mu;
    bool reaped = false;
    int exitcode = 0;

    bool started() const noexcept { return pid > 0; }

    // Reaps the child if it ended (waiting for it with `block`); true once reaped.
    bool reap(bool block) {
        std::lock_guard lk(mu);
        if (reaped)
            return true;
        int st = 0;
        pid_t r;
        while ((r = ::waitpid(pid, &st, block ? 0 : WNOHANG)) < 0 && errno == EINTR) {
        }
        if (r == 0)
            return false;
        if (r < 0) {
            if (errno == ECHILD)
                throw coproc::error("process: the exit status of pid " + std::to_string(pid) +
                                    " was lost (SIGCHLD is ignored, or someone else reaped it)");
            throw os_error("waitpid failed");
        }
        reaped = true;
        exitcode = WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
        return true;
    }
};

namespace {

std::atomic<unsigned> process_counter{0};

// Runs in the child, with every signal blocked until the handlers are reset.
[[noreturn]] void child_main(process_body& body, const std::string& name, pid_t parent,
                             const sigset_t& mask, const int (&gate)[2]) noexcept {
    // No child outlives its parent process: start() forks on a thread that lives as long as
    // the process (run_on_lasting_thread).
    start_child(parent, 1, false, mask);
    close_private_fds(gate); // no pool's worker sockets, no other process's pidfd
    // Wait until the parent holds our pidfd: a parent that ignores SIGCHLD would otherwise
    // find us reaped, and our pid possibly reused, if we ended first.
    ::close(gate[1]);
    char go;
    while (::read(gate[0], &go, 1) < 0 && errno == EINTR) {
    }
    ::close(gate[0]);
    int code = 0;
    try {
        body.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "Process %s: %s: %s\n", name.c_str(),
                     current_exception_type_name().c_str(), e.what());
        code = 1;
    } catch (...) {
        std::fprintf(stderr, "Process %s: %s\n", name.c_str(),
                     current_exception_type_name().c_str());
        code = 1;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(code);
}

} // namespace

} // namespace detail

process::process(std::unique_ptr<detail::process_body> body)
    : name("process-" + std::to_string(++detail::process_counter)),
      state_(std::make_unique<detail::process_state>()) {
    state_->body = std::move(body);
}

process::process(process&&) noexcept = default;

process& process::operator=(process&& o) noexcept {
    if (this != &o) {
        process old(std::move(*this));
        name = std::move(o.name);
        daemon = o.daemon;
        state_ = std::move(o.state_);
    }
    return *this;
}

process::~process() {
    if (!state_ || !state_->started())
        return;
    try {
        if (daemon && !state_->reap(false)) {
            signal(SIGTERM);
            if (!join_for(std::chrono::seconds(1)))
                signal(SIGKILL);
        }
        join();
    } catch (...) { // nothing sensible to do in a destructor; the child is as reaped as it gets
    }
}

void process::start() {
    if (!state_)
        throw coproc::error("process: start() of a moved-from process");
    if (state_->started())
        throw coproc::error("process: start() called twice (" + name + ")");
    const pid_t parent = ::getpid();
    sigset_t all, mask;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &mask); // the child starts with every signal blocked
    int gate[2]; // the child starts once its pidfd is open here (see child_main)
    if (::pipe2(gate, O_CLOEXEC) != 0) {
        ::pthread_sigmask(SIG_SETMASK, &mask, nullptr);
        throw detail::os_error("pipe for a process start failed");
    }
    const detail::unique_fd gate_read(gate[0]), gate_write(gate[1]);
    detail::register_private_fd(gate[0]); // no other child of ours may keep them
    detail::register_private_fd(gate[1]);
    pid_t pid = -1;
    int fork_errno = 0;
    try {
        detail::run_on_lasting_thread([&] {
            pid = ::fork();
            if (pid == 0)
                detail::child_main(*state_->body, name, parent, mask, gate);
            fork_errno = errno;
        });
    } catch (...) {
        ::pthread_sigmask(SIG_SETMASK, &mask, nullptr);
        detail::unregister_private_fd(gate[0]);
        detail::unregister_private_fd(gate[1]);
        throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &mask, nullptr);
    detail::unregister_private_fd(gate[0]);
    detail::unregister_private_fd(gate[1]);
    if (pid < 0) {
        errno = fork_errno;
        throw detail::os_error("fork failed");
    }
    const int pfd = detail::open_pidfd(pid); // the child waits at the gate: it is still there
    if (pfd < 0) {
        const auto e = detail::os_error("pidfd_open failed (Linux >= 5.3 needed)");
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw e;
    }
    state_->pid = pid;
    state_->pidfd.reset(pfd);
    detail::register_private_fd(pfd);
    const char go = 1;
    while (::write(gate[1], &go, 1) < 0 && errno == EINTR) {
    }
}

detail::process_state& process::started_state(const char* what) const {
    if (!state_ || !state_->started())
        throw coproc::error(std::string("process: ") + what + " of a process not started");
    return *state_;
}

void process::join() {
    auto& s = started_state("join()");
    detail::wait_fd(s.pidfd.get(), POLLIN, std::nullopt);
    s.reap(true);
}

bool process::join_until(detail::clock::time_point deadline) {
    auto& s = started_state("join_for()");
    return s.reap(false) || (detail::wait_fd(s.pidfd.get(), POLLIN, deadline) && s.reap(true));
}

std::optional<detail::op_done> process::try_join(detail::process_state* s, detail::wait_for& next) {
    if (!s || !s->started())
        throw coproc::error("process: async_join() of a process not started");
    if (s->reap(false))
        return detail::op_done{};
    next = {s->pidfd.get(), false};
    return std::nullopt;
}

bool process::is_alive() const { return state_ && state_->started() && !state_->reap(false); }

std::optional<int> process::exitcode() const {
    if (!state_ || !state_->started() || !state_->reap(false))
        return std::nullopt;
    return state_->exitcode;
}

pid_t process::pid() const noexcept { return state_ ? state_->pid : 0; }

void process::terminate() { signal(SIGTERM); }

void process::kill() { signal(SIGKILL); }

void process::signal(int sig) {
    auto& s = started_state(sig == SIGKILL ? "kill()" : "terminate()");
    std::lock_guard lk(s.mu);
    if (s.reaped)
        return;
    if (detail::signal_pidfd(s.pidfd.get(), sig) != 0 && errno != ESRCH)
        throw detail::os_error("pidfd_send_signal failed");
}

} // namespace coproc
