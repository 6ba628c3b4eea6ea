// coproc/detail/completion.hpp — where the outcome of a pool call lands (a value or an
// exception, set once), its callbacks, and the waiters of async_result and the awaitables.
#pragma once

#include <coproc/detail/futex.hpp>
#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

namespace coproc::detail {

/// While alive, marks this thread as running a result callback of the pool `core` (so that a
/// pool destroyed from inside its own callback can tell, see ~pool). Scopes nest.
class callback_scope {
  public:
    explicit callback_scope(const pool_core* core) noexcept;
    ~callback_scope();
    callback_scope(const callback_scope&) = delete;
    callback_scope& operator=(const callback_scope&) = delete;
    /// True if this thread is running a result callback of `core`.
    static bool inside(const pool_core* core) noexcept;

  private:
    const pool_core* core_;
    const callback_scope* outer_;
};

/// The completion signature of an operation yielding `R`: void(std::exception_ptr, R), or
/// void(std::exception_ptr) when R is void.
template <class R> struct outcome_signature_of {
    using type = void(std::exception_ptr, R);
};
template <> struct outcome_signature_of<void> {
    using type = void(std::exception_ptr);
};
template <class R> using outcome_signature = typename outcome_signature_of<R>::type;

/// Where a call's outcome lands: a value or an exception, set once. One is made per call
/// (an apply's is its value_call), so it is kept small: 88 bytes for a number, the callbacks
/// out of line when there are any.
template <class R> class completion {
  public:
    using stored = wire_result_t<R>;
    using callback_t = std::function<void(stored)>;
    using error_callback_t = std::function<void(std::exception_ptr)>;

    explicit completion(std::shared_ptr<pool_core> core, callback_t cb = {},
                        error_callback_t ecb = {})
        : core_(std::move(core)) {
        if (cb || ecb)
            callbacks_ = std::make_unique<callbacks>(std::move(cb), std::move(ecb));
    }

    void set_value(stored v) {
        {
            std::lock_guard lk(m_);
            if (settled())
                return;
            value_.emplace(std::move(v));
        }
        if (callbacks_ && callbacks_->on_value)
            run_callback([&] { callbacks_->on_value(*value_); });
        publish();
    }

    void set_error(std::exception_ptr e) {
        {
            std::lock_guard lk(m_);
            if (settled())
                return;
            error_ = e ? std::move(e) : std::make_exception_ptr(error("a call failed"));
        }
        if (callbacks_ && callbacks_->on_error)
            run_callback([&] { callbacks_->on_error(error_); });
        publish();
    }

    /// The call cancel() stops: its task_sink (apply's value_call is its own; a map's chunked
    /// call). Set once, before the completion is shared.
    void attach(std::weak_ptr<task_sink> call) noexcept { call_ = std::move(call); }

    /// Cancels the call (see pool_core::cancel()) and, unless it is already set, sets the
    /// outcome to operation_aborted. A callback then runs on the pool's loop thread, as always.
    static void cancel(const std::shared_ptr<completion>& c) {
        if (c->ready())
            return;
        if (auto call = c->call_.lock())
            call->cancel_in(*c->core_);
        if (c->has_callbacks() && !c->core_->on_loop_thread())
            c->core_->post([c] { c->set_error(operation_aborted()); });
        else
            c->set_error(operation_aborted());
    }

    /// Completes `handler` (signature outcome_signature<R>) with the outcome on its associated
    /// executor. `owner`: the handler is the call's one consumer (the value is moved to it), and
    /// its cancellation cancels the call; otherwise the value is copied and a cancellation only
    /// ends this wait, with operation_aborted.
    template <class Handler>
    static void park(const std::shared_ptr<completion>& c, Handler handler, bool owner) {
        auto finish = [c, owner](Handler& h, bool aborted) {
            if (aborted)
                return deliver(h, operation_aborted(), nullptr);
            if (c->error_)
                return deliver(h, c->error_, nullptr);
            deliver(h, nullptr, owner ? &c->value_ : nullptr, &c->value_);
        };
        std::weak_ptr<completion> weak = c;
        auto on_cancel = [weak, owner](waiter_list::id_type id) {
            auto c = weak.lock();
            if (!c)
                return;
            if (owner)
                return cancel(c);
            c->waiters_.abort(c->m_, id);
        };
        std::unique_lock lk(c->m_);
        c->waiters_.park(std::move(handler), std::move(finish), std::move(on_cancel));
        if (c->ready()) {
            auto all = c->waiters_.take_all();
            lk.unlock();
            all.post(false);
        }
    }

    bool ready() const noexcept { return ready_.is_set(); }
    bool has_callbacks() const noexcept { return callbacks_ != nullptr; }

    bool successful() const {
        if (!ready())
            throw error("async_result::successful() called before the result is ready");
        return !error_;
    }

    void wait() {
        if (ready())
            return;
        core_->check_blocking("async_result::wait()");
        ready_.wait(std::nullopt);
    }

    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> d) {
        if (ready())
            return true;
        core_->check_blocking("async_result::wait_for()");
        return ready_.wait(deadline_after(d));
    }

    /// The value (a copy, so get() may be called again) or the task's exception.
    stored get() {
        wait();
        if (error_)
            std::rethrow_exception(error_);
        return *value_;
    }

    /// The value, moved out: for a single consumer (the awaitable pool methods).
    stored take() {
        if (error_)
            std::rethrow_exception(error_);
        return std::move(*value_);
    }

  private:
    // Invokes `h` with `e` and the value: moved from `*take` if given, else copied from `*copy`.
    template <class Handler>
    static void deliver(Handler& h, std::exception_ptr e, std::optional<stored>* take,
                        std::optional<stored>* copy = nullptr) {
        if constexpr (std::is_void_v<R>) {
            std::move(h)(std::move(e));
        } else if (take) {
            std::move(h)(std::move(e), std::move(**take));
        } else if (copy) {
            std::move(h)(std::move(e), stored(**copy));
        } else {
            std::move(h)(std::move(e), stored{});
        }
    }

    template <class F> void run_callback(F&& f) noexcept {
        callback_scope in(core_.get());
        try {
            f();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "coproc: a result callback threw: %s\n", e.what());
        } catch (...) {
            std::fprintf(stderr, "coproc: a result callback threw a non-standard exception\n");
        }
    }

    // Whether set_value() or set_error() came first already. Under m_.
    bool settled() const noexcept { return value_ || error_; }

    void publish() {
        std::unique_lock lk(m_);
        ready_.set();
        auto all = waiters_.take_all();
        lk.unlock();
        all.post(false);
    }

    struct callbacks {
        callback_t on_value;
        error_callback_t on_error;
    };

    std::shared_ptr<pool_core> core_;
    std::unique_ptr<callbacks> callbacks_; // null if the call has none
    word_mutex m_;
    ready_flag ready_;
    std::optional<stored> value_;
    std::exception_ptr error_;
    std::weak_ptr<task_sink> call_;
    waiter_list waiters_; // the handlers of the operations awaiting the outcome
};

} // namespace coproc::detail
