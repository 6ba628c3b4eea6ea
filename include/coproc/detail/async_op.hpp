// coproc/detail/async_op.hpp — what coproc's asynchronous operations are built from.
//
//   async_poll<R>(attempt, token)        a channel operation: non-blocking attempts, and between
//                                        them a cancellable wait for a descriptor (fd_waiter)
//   async_blocking(runner, job, wake, token)   a wait with no descriptor (a futex), run on a
//                                        helper thread, that cancellation abandons at once
//
// Both go through asio::async_initiate with the completion signature op_signature_t<R>:
// void(std::exception_ptr) for R = void, else void(std::exception_ptr, R). The handler's
// associated executor runs the waits (Asio's system executor if it is no I/O executor, as for
// use_future and a plain callback) and the completion (work is kept on it while the operation
// is pending); its associated cancellation slot, if connected, cancels the operation: any
// cancellation type completes it at once with std::system_error(asio::error::operation_aborted)
// unless its outcome was already decided (then that outcome is delivered). An operation that
// completes within its initiating function is still delivered through asio::post.
#pragma once

#include <coproc/detail/handler_work.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>
#include <asio/system_executor.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace coproc::detail {

class blocking_runner;

/// The value an attempt of an operation without a result returns when it is done.
using op_done = std::monostate;

template <class R> struct op_traits {
    using signature = void(std::exception_ptr, R);
    using value = R;
};
template <> struct op_traits<void> {
    using signature = void(std::exception_ptr);
    using value = op_done;
};
/// void(std::exception_ptr) for void, else void(std::exception_ptr, R).
template <class R> using op_signature_t = typename op_traits<R>::signature;

/// The exception a cancelled operation completes with.
inline std::exception_ptr aborted_error() {
    return std::make_exception_ptr(std::system_error(asio::error::operation_aborted));
}

/// What an unfinished attempt waits for before the next one.
struct wait_for {
    int fd = -1;
    bool write = false; // writable, else readable (errors and hang-up count as ready)
    /// false while the operation is in a state that must not be abandoned (a frame half sent):
    /// a cancellation then takes effect at the next cancellable wait, or not at all if the
    /// operation finishes first.
    bool cancellable = true;
};

/// Waits, on an executor, until a descriptor is ready, cancellably and without changing the
/// descriptor's flags (through an epoll instance of its own, made on first use, see io.hpp).
/// One wait at a time; the caller serialises async_wait, cancel and destruction.
class fd_waiter {
  public:
    fd_waiter() noexcept;
    ~fd_waiter();
    fd_waiter(const fd_waiter&) = delete;
    fd_waiter& operator=(const fd_waiter&) = delete;
    /// Calls `done` on `ex` once `w.fd` is ready (an error code if the wait failed,
    /// asio::error::operation_aborted after cancel()). Throws std::system_error if the wait
    /// cannot be set up.
    void async_wait(const asio::any_io_executor& ex, const wait_for& w,
                    std::function<void(std::error_code)> done);
    /// Makes a pending wait complete with operation_aborted (nothing if none is pending).
    void cancel() noexcept;

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// A handler waiting for its outcome: work kept on its executor until it is invoked.
template <class Handler, class R> class pending_handler {
  public:
    using value_type = typename op_traits<R>::value;

    explicit pending_handler(Handler h)
        : handler_(std::move(h)), work_(detail::handler_work(handler_)) {}

    auto executor() const { return asio::get_associated_executor(handler_); }
    auto slot() const { return asio::get_associated_cancellation_slot(handler_); }

    /// Invokes the handler here and now (call it on the handler's executor).
    void invoke(std::exception_ptr e, std::optional<value_type> v) {
        auto h = std::move(handler_);
        work_.reset();
        if constexpr (std::is_void_v<R>)
            std::move(h)(std::move(e));
        else if (v)
            std::move(h)(std::move(e), std::move(*v));
        else
            std::move(h)(std::move(e), R{});
    }

  private:
    Handler handler_;
    std::optional<handler_work_t<Handler>> work_;
};

/// What an operation puts in its handler's cancellation slot: any type but `none` calls
/// `op->cancel()`.
template <class Op> struct cancel_on_signal {
    Op* op;
    void operator()(asio::cancellation_type type) {
        if (type != asio::cancellation_type::none)
            op->cancel();
    }
};

/// The executor an operation's waits run on: the handler's associated executor if it is an I/O
/// executor, else Asio's system executor (use_future's and a plain callback's case).
template <class Executor> asio::any_io_executor wait_executor(const Executor& ex) {
    if constexpr (std::is_convertible_v<Executor, asio::any_io_executor>)
        return ex;
    else
        return asio::system_executor();
}

/// The state of one async_poll operation (see below). Decisions are taken under `m_`: an
/// attempt and a cancellation never overlap, so an item is taken only by an operation that then
/// delivers it. Deliveries start after `m_` is released.
template <class Handler, class R, class Attempt>
class poll_op final : public std::enable_shared_from_this<poll_op<Handler, R, Attempt>> {
  public:
    poll_op(Handler h, Attempt a)
        : handler_(std::move(h)), attempt_(std::move(a)),
          wait_ex_(wait_executor(handler_.executor())) {}

    /// From the initiating function: the first attempt, then (unless decided) the slot and the
    /// first wait.
    void start() {
        std::unique_lock lk(m_);
        if (!attempt()) {
            if (auto slot = handler_.slot(); slot.is_connected()) {
                slot.template emplace<cancel_on_signal<poll_op>>(this);
                slot_used_ = true;
            }
            if (wait())
                return;
        }
        lk.unlock();
        post_delivery();
    }

  private:
    friend struct cancel_on_signal<poll_op>;

    // Under m_: one attempt; true once the outcome is decided.
    bool attempt() {
        try {
            if (auto v = (*attempt_)(next_)) {
                value_ = std::move(v);
                decided_ = true;
            }
        } catch (...) {
            error_ = std::current_exception();
            decided_ = true;
        }
        return decided_;
    }

    // Under m_, undecided: starts waiting for next_; false (decided) if the wait cannot start.
    bool wait() {
        try {
            waiter_.async_wait(
                wait_ex_, next_,
                [self = this->shared_from_this()](std::error_code ec) { self->on_ready(ec); });
            return true;
        } catch (...) {
            error_ = std::current_exception();
            decided_ = true;
            return false;
        }
    }

    // On the wait executor, when the wait ended.
    void on_ready(std::error_code ec) {
        std::unique_lock lk(m_);
        if (decided_)
            return; // cancelled: the delivery is on its way
        if (ec && ec != asio::error::operation_aborted) {
            error_ = std::make_exception_ptr(std::system_error(ec, "waiting for a descriptor"));
            decided_ = true;
        } else if (!attempt()) {
            if (cancel_requested_ && next_.cancellable)
                abort();
            else if (wait())
                return;
        }
        lk.unlock();
        asio::dispatch(handler_.executor(), [self = this->shared_from_this()] { self->deliver(); });
    }

    // From the cancellation slot (any thread). Holds the operation alive: the wait it cancels
    // may complete, and drop its reference, on another thread meanwhile.
    void cancel() {
        const auto self = this->shared_from_this();
        std::unique_lock lk(m_);
        if (decided_)
            return;
        if (!next_.cancellable) {
            cancel_requested_ = true;
            return;
        }
        abort();
        lk.unlock();
        post_delivery();
    }

    // Under m_, undecided: decides operation_aborted.
    void abort() noexcept {
        error_ = aborted_error();
        decided_ = true;
        waiter_.cancel();
    }

    void post_delivery() {
        post_from_any_thread(handler_.executor(),
                             [self = this->shared_from_this()] { self->deliver(); });
    }

    // On the handler's executor, decided.
    void deliver() {
        std::unique_lock lk(m_);
        if (slot_used_)
            handler_.slot().clear();
        attempt_.reset(); // an unfinished attempt gives back what it holds (a queue slot)
        auto e = std::move(error_);
        auto v = std::move(value_);
        lk.unlock();
        handler_.invoke(std::move(e), std::move(v));
    }

    std::mutex m_;
    pending_handler<Handler, R> handler_;
    std::optional<Attempt> attempt_;
    asio::any_io_executor wait_ex_;
    fd_waiter waiter_;
    wait_for next_;
    bool decided_ = false, slot_used_ = false, cancel_requested_ = false;
    std::exception_ptr error_;
    std::optional<typename op_traits<R>::value> value_;
};

/// An operation made of non-blocking attempts: `attempt(next)` returns the result (op_done for
/// R = void) once it is done, or nullopt after setting `next` to the descriptor to wait for;
/// it may throw (the operation then completes with that exception). It runs under the
/// operation's lock, first in the initiating function, then on the handler's executor each time
/// `next` is ready. Cancellation (any type) completes the operation at once with
/// operation_aborted unless an attempt already decided it: an attempt that took an item always
/// delivers it. An unfinished attempt is destroyed before the handler runs.
template <class R, class Attempt, class Token> auto async_poll(Attempt attempt, Token&& token) {
    return asio::async_initiate<Token, op_signature_t<R>>(
        [](auto handler, Attempt a) {
            using op = poll_op<decltype(handler), R, Attempt>;
            std::make_shared<op>(std::move(handler), std::move(a))->start();
        },
        token, std::move(attempt));
}

/// The state of one async_blocking operation (see below).
template <class Handler, class Wake>
class blocking_op final : public std::enable_shared_from_this<blocking_op<Handler, Wake>> {
  public:
    blocking_op(Handler h, Wake w) : handler_(std::move(h)), wake_(std::move(w)) {}

    template <class Job> void start(blocking_runner& runner, Job job);

  private:
    friend struct cancel_on_signal<blocking_op>;

    void cancel() {
        const auto self = this->shared_from_this(); // see poll_op::cancel
        std::unique_lock lk(m_);
        if (decided_)
            return;
        decided_ = true;
        error_ = aborted_error();
        stop_->store(true, std::memory_order_release);
        wake_();
        lk.unlock();
        post_delivery();
    }

    void finished(std::exception_ptr e) {
        std::unique_lock lk(m_);
        if (decided_)
            return;
        decided_ = true;
        error_ = std::move(e);
        lk.unlock();
        post_delivery();
    }

    void post_delivery() {
        post_from_any_thread(handler_.executor(), [self = this->shared_from_this()] {
            std::unique_lock lk(self->m_);
            if (self->slot_used_)
                self->handler_.slot().clear();
            auto e = std::move(self->error_);
            lk.unlock();
            self->handler_.invoke(std::move(e), std::nullopt);
        });
    }

    std::mutex m_;
    pending_handler<Handler, void> handler_;
    Wake wake_;
    std::shared_ptr<std::atomic<bool>> stop_ = std::make_shared<std::atomic<bool>>(false);
    bool decided_ = false, slot_used_ = false;
    std::exception_ptr error_;
};

/// Runs the blocking `job(stop)` on a helper thread of `runner` (see io.hpp) and completes
/// with what it threw, or with nothing. Cancellation (any type) sets `stop`, calls `wake()` to
/// make the job notice it, and completes the operation at once with operation_aborted; the job
/// then ends by itself and its outcome is dropped (so a job must not leave behind what only its
/// caller could undo).
template <class Job, class Wake, class Token>
auto async_blocking(blocking_runner& runner, Job job, Wake wake, Token&& token) {
    return asio::async_initiate<Token, void(std::exception_ptr)>(
        [&runner](auto handler, Job j, Wake w) {
            using op = blocking_op<decltype(handler), Wake>;
            std::make_shared<op>(std::move(handler), std::move(w))->start(runner, std::move(j));
        },
        token, std::move(job), std::move(wake));
}

/// Runs `job` on the helper thread of `runner`; `done(e)` runs on `ex` afterwards.
void run_blocking(blocking_runner& runner, const asio::any_io_executor& ex,
                  std::function<void()> job, std::function<void(std::exception_ptr)> done);

template <class Handler, class Wake>
template <class Job>
void blocking_op<Handler, Wake>::start(blocking_runner& runner, Job job) {
    std::unique_lock lk(m_);
    if (auto slot = handler_.slot(); slot.is_connected()) {
        slot.template emplace<cancel_on_signal<blocking_op>>(this);
        slot_used_ = true;
    }
    try {
        run_blocking(
            runner, wait_executor(handler_.executor()),
            [job = std::move(job), stop = stop_] { job(*stop); },
            [self = this->shared_from_this()](std::exception_ptr e) { self->finished(e); });
    } catch (...) {
        decided_ = true;
        error_ = std::current_exception();
        lk.unlock();
        post_delivery();
    }
}

} // namespace coproc::detail
