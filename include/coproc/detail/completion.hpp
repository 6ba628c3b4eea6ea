// coproc/detail/completion.hpp — where the outcome of a pool call lands (a value or an
// exception, set once), its callbacks, and the waiters of async_result and the awaitables.
#pragma once

#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>

#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
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

/// Where a call's outcome lands: a value or an exception, set once.
template <class R> class completion {
  public:
    using stored = wire_result_t<R>;
    using callback_t = std::function<void(stored)>;
    using error_callback_t = std::function<void(std::exception_ptr)>;

    explicit completion(std::shared_ptr<pool_core> core, callback_t cb = {},
                        error_callback_t ecb = {})
        : core_(std::move(core)), callback_(std::move(cb)), error_callback_(std::move(ecb)) {}

    void set_value(stored v) {
        {
            std::lock_guard lk(m_);
            if (done_)
                return;
            done_ = true;
            value_.emplace(std::move(v));
        }
        if (callback_)
            run_callback([&] { callback_(*value_); });
        publish();
    }

    void set_error(std::exception_ptr e) {
        {
            std::lock_guard lk(m_);
            if (done_)
                return;
            done_ = true;
            error_ = std::move(e);
        }
        if (error_callback_)
            run_callback([&] { error_callback_(error_); });
        publish();
    }

    bool ready() const noexcept { return ready_.load(std::memory_order_acquire); }
    bool has_callbacks() const noexcept { return callback_ || error_callback_; }

    bool successful() const {
        if (!ready())
            throw error("async_result::successful() called before the result is ready");
        return !error_;
    }

    void wait() {
        if (ready())
            return;
        core_->check_blocking("async_result::wait()");
        std::unique_lock lk(m_);
        cv_.wait(lk, [&] { return ready(); });
    }

    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> d) {
        if (ready())
            return true;
        core_->check_blocking("async_result::wait_for()");
        std::unique_lock lk(m_);
        return cv_.wait_for(lk, d, [&] { return ready(); });
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

    asio::awaitable<void> async_wait() {
        co_await async_wait_until(
            m_, waiters_, [this] { return ready(); }, asio::use_awaitable);
    }

  private:
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

    void publish() {
        std::unique_lock lk(m_);
        ready_.store(true, std::memory_order_release);
        waiters_.post();
        lk.unlock();
        cv_.notify_all();
    }

    std::shared_ptr<pool_core> core_;
    callback_t callback_;
    error_callback_t error_callback_;
    std::mutex m_;
    std::condition_variable cv_;
    std::atomic<bool> ready_{false};
    bool done_ = false;
    std::optional<stored> value_;
    std::exception_ptr error_;
    handler_slots waiters_; // every coroutine awaiting async_get()
};

} // namespace coproc::detail
