// coproc/pool.hpp — pool, a pool of forked worker processes (Python's multiprocessing.Pool).
//
//   coproc::pool pool(4);                                  // runs its own event-loop thread
//   coproc::pool pool(io.get_executor(), {.processes = 4}); // runs on the caller's io_context
//
//   co_await pool.apply(f, a, b)            co_await pool.map(f, items [, chunksize])
//   co_await pool.starmap(f, tuples)        pool.imap(f, items) / imap_unordered -> generator
//   pool.apply_async(f, {a, b}, cb, ecb)    pool.map_async / starmap_async -> async_result
//   pool.async_apply(f, std::tuple{a, b}, token)   async_map / async_starmap(f, items, cs, token)
//   close() terminate() join() async_join([token]) size() pids()
//
// Task functions are plain functions or captureless lambdas; arguments and results are
// cereal-serializable (see serialize.hpp). apply/map/starmap submit the call when the method
// is called; co_await (or get()) waits for its outcome. Awaitables resume on the awaiting
// coroutine's executor. Errors: see error.hpp.
//
// Completion tokens: async_apply, async_map, async_starmap and async_join are Asio
// asynchronous operations. They take any completion token (asio::use_awaitable, use_future,
// deferred, as_tuple(...), a callback, bind_executor / bind_cancellation_slot...) and complete
// with void(std::exception_ptr, R) (void(std::exception_ptr) for no value) on the token's
// executor. Their call is submitted when the operation is initiated (for use_awaitable: when
// it is co_awaited).
//
// Cancellation: every pool operation honours its cancellation slot (any cancellation type),
// and so do the awaitables of apply/map/starmap (cancel the awaiting coroutine, e.g. the
// loser of `co_await (pool.apply(f, x) || timer.async_wait(asio::use_awaitable))`). The
// operation completes at once with std::system_error(asio::error::operation_aborted); the
// call's tasks that have not started are dropped and never run; a running task sees
// coproc::this_task::stop_requested() turn true, and if it has not returned within
// pool_options::cancel_grace its worker is killed and replaced. A task runs at most once.
// map/starmap cancel every chunk of the call. Destroying an imap generator cancels its running
// and queued chunks; async_result::cancel() does the same for blocking code. A result that
// arrives as the cancellation happens wins or loses as a whole: the operation completes once,
// with the value or with operation_aborted. An awaited apply/map whose awaitable is destroyed
// without being cancelled keeps running; its result is dropped.
#pragma once

#include <coproc/async_generator.hpp>
#include <coproc/async_result.hpp>
#include <coproc/detail/pool_calls.hpp>
#include <coproc/error.hpp>
#include <coproc/options.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {
struct own_loop;
} // namespace detail

/// A pool of worker processes that run task functions.
class pool {
  public:
    /// Starts `processes` workers (0: one per CPU) and its own event-loop thread.
    explicit pool(std::size_t processes = 0);
    /// Starts workers as `options` says, with its own event-loop thread.
    explicit pool(pool_options options);
    /// Starts workers; all I/O runs on `ex` (the caller's io_context). The pool's pending
    /// reads keep that io_context busy until close()/terminate() and the workers' exit.
    pool(asio::any_io_executor ex, pool_options options = {});
    /// terminate() then join(), like leaving Python's `with Pool() as p:`.
    ///
    /// Destroying a pool from inside one of its own result callbacks (the callback or
    /// error_callback of an `*_async` call) is a usage error: the destructor would wait there for
    /// the event loop that is running the callback. It neither hangs nor crashes: it terminates
    /// the pool (unfinished tasks fail with pool_closed, their error_callbacks run right there),
    /// prints one line on stderr saying so, and returns; the workers are reaped and the pool's own
    /// loop thread stopped once the callback has returned (with the caller's io_context, by a
    /// handler posted to it). Destroy the pool outside its callbacks, e.g. by posting the
    /// destruction elsewhere. Destroying a pool in a coroutine that runs on the pool's executor
    /// (not a callback) is the normal, blocking destruction.
    ~pool();
    pool(const pool&) = delete;
    pool& operator=(const pool&) = delete;

    /// Runs `fn(args...)` in a worker and yields its result.
    /// Resumes on the awaiting coroutine's executor. Throws what `fn` threw (see error.hpp),
    /// `worker_lost` if the worker died, `pool_closed` if the pool is closed.
    /// Example: `int s = co_await pool.apply(add, 1, 2);`
    template <class F, class... Args>
    [[nodiscard]] asio::awaitable<detail::task_result_t<F>> apply(F fn, Args&&... args) {
        using T = detail::task_result_t<F>;
        return detail::await_completion(
            submit_apply<T>(fn, detail::task_args_t<F>(std::forward<Args>(args)...), {}, {}));
    }

    /// Applies `fn` to every item; the results keep the input order. Items travel in chunks
    /// of `chunksize` (0: Python's default, ceil(n / (4 * size()))), encoded as earlier chunks
    /// complete, so only a bounded window of a large input is in flight. An lvalue range is
    /// read in place and must live until the call completes (an rvalue is moved in). The
    /// first task error fails the whole call, as in Python. So does an input that throws (its
    /// iterator, an item's conversion or its save()): the call fails with that same exception,
    /// and no chunk is sent after it. A chunksize larger than the input is one chunk.
    /// Example: `std::vector<int> sq = co_await pool.map(square, numbers);`
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] asio::awaitable<std::vector<detail::value_t<detail::task_result_t<F>>>>
    map(F fn, Range&& items, std::size_t chunksize = 0) {
        return detail::await_completion(
            submit_map<false, false>(fn, std::forward<Range>(items), chunksize, {}, {}));
    }

    /// As map, but each item is a tuple of arguments: `fn(std::get<0>(item), ...)`.
    /// Example: `auto sums = co_await pool.starmap(add, pairs);`
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] asio::awaitable<std::vector<detail::value_t<detail::task_result_t<F>>>>
    starmap(F fn, Range&& items, std::size_t chunksize = 0) {
        return detail::await_completion(
            submit_map<true, false>(fn, std::forward<Range>(items), chunksize, {}, {}));
    }

    /// Lazily applies `fn` to the items, yielding results in input order. The generator owns
    /// (a copy of) `items` and keeps a bounded number of chunks in flight. An input that
    /// throws part-way ends the sequence after the results before it with that exception (see
    /// async_generator::next()).
    /// Example: `auto g = pool.imap(square, v); while (auto x = co_await g.next()) use(*x);`
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] async_generator<detail::value_t<detail::task_result_t<F>>>
    imap(F fn, Range items, std::size_t chunksize = 1) {
        return make_imap<false>(fn, std::move(items), chunksize, true);
    }

    /// As imap, but yields results as they complete.
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] async_generator<detail::value_t<detail::task_result_t<F>>>
    imap_unordered(F fn, Range items, std::size_t chunksize = 1) {
        return make_imap<false>(fn, std::move(items), chunksize, false);
    }

    /// apply() as an Asio operation with any completion token: runs `fn` on the argument
    /// tuple `args` and completes with void(std::exception_ptr, R) (void(std::exception_ptr)
    /// for a void task) on the token's executor. See the top of the file for cancellation.
    /// Examples: `int s = co_await pool.async_apply(add, std::tuple{1, 2});`
    ///   `pool.async_apply(add, std::tuple{1, 2}, [](std::exception_ptr e, int s) {...});`
    ///   `auto [e, s] = co_await pool.async_apply(add, args, as_tuple(use_awaitable));`
    template <class F, class Token = asio::use_awaitable_t<>>
    auto async_apply(F fn, detail::task_args_t<F> args, Token&& token = {}) {
        using T = detail::task_result_t<F>;
        return asio::async_initiate<Token, detail::outcome_signature<T>>(
            [this, fn](auto handler, detail::task_args_t<F> args) {
                detail::completion<T>::park(start_call<T>([&] {
                    return submit_apply<T>(fn, std::move(args), {}, {});
                }),
                                            std::move(handler), true);
            },
            token, std::move(args));
    }

    /// map() as an Asio operation with any completion token; completes with
    /// void(std::exception_ptr, std::vector<R>). An lvalue range is read in place and must
    /// live until the operation completes (an rvalue is moved into the operation).
    template <class F, std::ranges::input_range Range, class Token = asio::use_awaitable_t<>>
    auto async_map(F fn, Range&& items, std::size_t chunksize, Token&& token = {}) {
        return async_chunked<false>(fn, std::forward<Range>(items), chunksize,
                                    std::forward<Token>(token));
    }

    /// starmap() as an Asio operation with any completion token.
    template <class F, std::ranges::input_range Range, class Token = asio::use_awaitable_t<>>
    auto async_starmap(F fn, Range&& items, std::size_t chunksize, Token&& token = {}) {
        return async_chunked<true>(fn, std::forward<Range>(items), chunksize,
                                   std::forward<Token>(token));
    }

    /// Runs `fn` on the argument tuple `args` (e.g. `pool.apply_async(add, {1, 2})`).
    /// `callback` (or `error_callback`) runs once on the pool's loop thread before ready().
    template <class F>
    [[nodiscard]] async_result<detail::task_result_t<F>>
    apply_async(F fn, detail::task_args_t<F> args = {},
                std::function<void(detail::value_t<detail::task_result_t<F>>)> callback = {},
                std::function<void(std::exception_ptr)> error_callback = {}) {
        using T = detail::task_result_t<F>;
        return async_result<T>(
            submit_apply<T>(fn, std::move(args), std::move(callback), std::move(error_callback)));
    }

    /// map(), for blocking code: returns at once; get() waits for the results. An lvalue
    /// range is copied first (pass it with std::move to avoid the copy). An input that throws
    /// does not make map_async throw: the result fails with the input's exception (get()
    /// rethrows it, error_callback receives it).
    template <class F, std::ranges::input_range Range,
              class T = detail::value_t<detail::task_result_t<F>>>
    [[nodiscard]] async_result<std::vector<T>>
    map_async(F fn, Range&& items, std::size_t chunksize = 0,
              std::function<void(std::vector<std::type_identity_t<T>>)> callback = {},
              std::function<void(std::exception_ptr)> error_callback = {}) {
        return async_result<std::vector<T>>(submit_map<false, true>(fn, std::forward<Range>(items),
                                                                    chunksize, std::move(callback),
                                                                    std::move(error_callback)));
    }

    /// starmap(), for blocking code.
    template <class F, std::ranges::input_range Range,
              class T = detail::value_t<detail::task_result_t<F>>>
    [[nodiscard]] async_result<std::vector<T>>
    starmap_async(F fn, Range&& items, std::size_t chunksize = 0,
                  std::function<void(std::vector<std::type_identity_t<T>>)> callback = {},
                  std::function<void(std::exception_ptr)> error_callback = {}) {
        return async_result<std::vector<T>>(submit_map<true, true>(fn, std::forward<Range>(items),
                                                                   chunksize, std::move(callback),
                                                                   std::move(error_callback)));
    }

    /// No new tasks; queued and running ones finish, then the workers exit.
    void close();
    /// Kills the workers now; unfinished tasks fail with pool_closed.
    void terminate();
    /// Waits until every worker has exited (after close() or terminate()). Throws
    /// coproc::error if the pool is still running, or if called on the pool's loop thread.
    void join();
    /// join() as an Asio operation with any completion token (void(std::exception_ptr)): fails
    /// with coproc::error if the pool is still running. Cancelling it ends the wait only.
    template <class Token = asio::use_awaitable_t<>> auto async_join(Token&& token = {}) {
        return asio::async_initiate<Token, void(std::exception_ptr)>(
            [core = core_](auto handler) {
                std::weak_ptr<detail::pool_core> weak = core;
                auto finish = [](auto& h, bool aborted) {
                    std::move(h)(aborted ? detail::operation_aborted() : nullptr);
                };
                auto on_cancel = [weak](detail::waiter_list::id_type id) {
                    if (auto c = weak.lock())
                        c->unpark_join(id);
                };
                std::exception_ptr refused;
                try {
                    core->park_join([&](detail::waiter_list& w) {
                        w.park(std::move(handler), finish, on_cancel);
                    });
                } catch (...) { // still running: park_join() did not take the handler
                    refused = std::current_exception();
                }
                if (refused) {
                    auto ex = asio::get_associated_executor(handler);
                    asio::post(ex, [h = std::move(handler), refused]() mutable {
                        std::move(h)(refused);
                    });
                }
            },
            token);
    }
    /// The number of worker processes.
    std::size_t size() const noexcept;
    /// The pids of the live workers.
    std::vector<pid_t> pids() const;

  protected:
    /// Makes the core of a pool whose tasks run elsewhere (mpi_pool), on the executor it is
    /// given; the thread id is that of the pool's own loop thread, if it has one.
    using core_factory =
        std::function<std::shared_ptr<detail::pool_core>(asio::any_io_executor, std::thread::id)>;
    /// A pool around the core `make` returns: on `ex` if given, else on its own loop thread.
    pool(const core_factory& make, std::optional<asio::any_io_executor> ex);

  private:
    // The completion `submit()` returns, or one holding what it threw (pool_closed...).
    template <class T, class Submit> std::shared_ptr<detail::completion<T>> start_call(Submit submit) {
        try {
            return submit();
        } catch (...) {
            auto c = std::make_shared<detail::completion<T>>(core_);
            c->set_error(std::current_exception());
            return c;
        }
    }

    template <bool Star, class F, class Range, class Token>
    auto async_chunked(F fn, Range&& items, std::size_t chunksize, Token&& token) {
        using T = std::vector<detail::value_t<detail::task_result_t<F>>>;
        return asio::async_initiate<Token, detail::outcome_signature<T>>(
            [this, fn, chunksize](auto handler, auto view) {
                detail::completion<T>::park(start_call<T>([&] {
                    return submit_map<Star, false>(fn, std::move(view), chunksize, {}, {});
                }),
                                            std::move(handler), true);
            },
            token, std::views::all(std::forward<Range>(items)));
    }


    template <class T, class F>
    std::shared_ptr<detail::completion<T>>
    submit_apply(F fn, detail::task_args_t<F> args,
                 typename detail::completion<T>::callback_t callback,
                 typename detail::completion<T>::error_callback_t error_callback) {
        auto call = std::make_shared<detail::value_call<T>>(core_, std::move(callback),
                                                            std::move(error_callback));
        call->attach(std::weak_ptr<detail::task_sink>(call));
        core_->submit(detail::make_job(
            detail::to_function_pointer(fn),
            [&](detail::writer& w) {
                w(args);
                return 1;
            },
            call, 0));
        return call;
    }

    template <bool Star, bool Copy, class F, class Range,
              class T = detail::value_t<detail::task_result_t<F>>>
    std::shared_ptr<detail::completion<std::vector<T>>>
    submit_map(F fn, Range&& items, std::size_t chunksize,
               std::function<void(std::vector<T>)> callback,
               std::function<void(std::exception_ptr)> error_callback) {
        using Fp = detail::function_pointer_t<F>;
        using View = decltype(detail::keep_range<Copy>(std::forward<Range>(items)));
        auto c = std::make_shared<detail::completion<std::vector<T>>>(core_, std::move(callback),
                                                                      std::move(error_callback));
        // The callbacks of a call settled here run on the pool's loop thread, as for any call.
        auto settle = [&](auto set) {
            if (c->has_callbacks())
                core_->post([c, set] { set(*c); });
            else
                set(*c);
        };
        std::optional<View> view;
        try {
            view.emplace(detail::keep_range<Copy>(std::forward<Range>(items)));
        } catch (...) { // an unsized input is read whole here
            settle([e = std::current_exception()](auto& r) { r.set_error(e); });
            return c;
        }
        const std::size_t n = std::ranges::size(*view);
        if (n == 0) {
            core_check_open();
            settle([](auto& r) { r.set_value({}); });
            return c;
        }
        const std::size_t cs =
            chunksize ? std::min(chunksize, n) : detail::default_chunksize(n, size());
        auto call = std::make_shared<detail::map_call<T, Fp, Star, View>>(
            core_, c, detail::to_function_pointer(fn), std::move(*view), n, cs, size());
        call->attach();
        call->start();
        return c;
    }

    template <bool Star, class F, class Range>
    async_generator<detail::value_t<detail::task_result_t<F>>>
    make_imap(F fn, Range items, std::size_t chunksize, bool ordered) {
        using T = detail::value_t<detail::task_result_t<F>>;
        using Fp = detail::function_pointer_t<F>;
        if (chunksize == 0)
            throw error("imap: chunksize must be at least 1");
        auto view = std::views::all(std::move(items));
        auto s = std::make_shared<detail::imap_source<T, Fp, Star, decltype(view)>>(
            core_, ordered, detail::to_function_pointer(fn), std::move(view), chunksize, size());
        s->start();
        return async_generator<T>(std::move(s));
    }

    void core_check_open() const;

    std::unique_ptr<detail::own_loop> loop_;
    std::shared_ptr<detail::pool_core> core_;
};

} // namespace coproc
