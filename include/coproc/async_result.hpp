// coproc/async_result.hpp — async_result<R>, the handle *_async pool methods return
// (Python's AsyncResult), usable from plain blocking code and from coroutines.
//
//   ready() successful() wait() wait_for(d) get() get_for(d) async_get() cancel()
//
// Callbacks given to apply_async/map_async/starmap_async run once, in the parent, on the
// pool's event loop thread, before ready() turns true (the error_callback of a task failed by
// terminate() runs on the thread calling terminate()). Several coroutines may co_await
// async_get() of one result.
#pragma once

#include <coproc/detail/completion.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>
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

namespace coproc {

/// The eventual outcome of an `*_async` pool call.
template <class R> class async_result {
  public:
    explicit async_result(std::shared_ptr<detail::completion<R>> c) : c_(std::move(c)) {}

    /// True once the task has finished (and its callback has run).
    bool ready() const noexcept { return c_->ready(); }
    /// True if the task returned rather than threw; throws coproc::error if !ready().
    bool successful() const { return c_->successful(); }
    /// Blocks until ready. Throws coproc::error on the pool's own loop thread.
    void wait() { c_->wait(); }
    /// Blocks until ready or `d` passed; returns ready().
    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> d) {
        return c_->wait_for(d);
    }
    /// Blocks until ready, then returns the result or rethrows the task's exception.
    R get() {
        if constexpr (std::is_void_v<R>)
            c_->get();
        else
            return c_->get();
    }
    /// As get(), but throws coproc::timeout_error if not ready within `d`.
    template <class Rep, class Period> R get_for(std::chrono::duration<Rep, Period> d) {
        if (!c_->wait_for(d))
            throw timeout_error("async_result::get_for(): the result was not ready in time");
        return get();
    }
    /// Suspends the awaiting coroutine until ready, then returns the result (a copy) or
    /// rethrows the task's exception; resumes on its executor. Cancelling the awaiting
    /// coroutine ends this wait with operation_aborted; the call goes on (see cancel()).
    asio::awaitable<R> async_get() {
        auto c = c_;
        co_return co_await asio::async_initiate<decltype(asio::use_awaitable),
                                                detail::outcome_signature<R>>(
            [](auto handler, std::shared_ptr<detail::completion<R>> c) {
                detail::completion<R>::park(c, std::move(handler), false);
            },
            asio::use_awaitable, std::move(c));
    }

    /// Cancels the call, as a cancelled pool operation does (see pool.hpp): its tasks that
    /// have not started never run, a running one sees this_task::stop_requested(), and unless
    /// the result is ready already it becomes std::system_error(asio::error::operation_aborted)
    /// (get() throws it, error_callback receives it on the pool's loop thread). Thread-safe.
    void cancel() { detail::completion<R>::cancel(c_); }

  private:
    std::shared_ptr<detail::completion<R>> c_;
};

} // namespace coproc
