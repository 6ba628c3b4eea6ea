// coproc/pool.hpp — pool, a pool of forked worker processes (Python's multiprocessing.Pool).
//
//   coproc::pool pool(4);                                  // runs its own event-loop thread
//   coproc::pool pool(io.get_executor(), {.processes = 4}); // runs on the caller's io_context
//
//   co_await pool.apply(f, a, b)            co_await pool.map(f, items [, chunksize])
//   co_await pool.starmap(f, tuples)        pool.imap(f, items) / imap_unordered -> generator
//   pool.apply_async(f, {a, b}, cb, ecb)    pool.map_async / starmap_async -> async_result
//   close() terminate() join() async_join() size() pids()
//
// Task functions are plain functions or captureless lambdas; arguments and results are
// cereal-serializable (see serialize.hpp). A call is submitted when the method is called;
// co_await (or get()) waits for its outcome. Awaitables resume on the awaiting coroutine's
// executor. Errors: see error.hpp.
//
// Cancellation: destroying an imap generator cancels its chunks that have not started.
// An awaited apply/map keeps running if the awaiting coroutine is destroyed; its result is
// dropped.
#pragma once

#include <coproc/async_generator.hpp>
#include <coproc/async_result.hpp>
#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>
#include <coproc/options.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {

struct own_loop;

/// Python's default chunksize: ceil(n / (4 * workers)), at least 1.
constexpr std::size_t default_chunksize(std::size_t n, std::size_t workers) noexcept {
    const std::size_t d = 4 * std::max<std::size_t>(workers, 1);
    return std::max<std::size_t>(1, n / d + (n % d != 0));
}

template <class T> using value_t = wire_result_t<T>;

template <class T> asio::awaitable<T> await_completion(std::shared_ptr<completion<T>> c) {
    co_await c->async_wait();
    if constexpr (std::is_void_v<T>)
        c->take();
    else
        co_return c->take();
}

/// A single-task call (apply): the completion is its own sink (one allocation per call).
template <class T> class value_call final : public completion<T>, public task_sink {
  public:
    using completion<T>::completion;
    void on_result(const job& j, std::span<const char> payload) override {
        try {
            value_t<T> v;
            deserialize_from(payload, v);
            this->set_value(std::move(v));
        } catch (...) {
            this->set_error(undecodable_result(j));
        }
    }
    void on_error(const job&, std::exception_ptr e) override { this->set_error(std::move(e)); }
};

/// map/starmap: chunk k holds items [k * chunksize, ...); the results fill one vector.
template <class T, class Fp, bool Star, class View> class map_call final : public chunked_call {
  public:
    map_call(std::shared_ptr<pool_core> core, std::shared_ptr<completion<std::vector<T>>> c, Fp fn,
             View items, std::size_t n, std::size_t chunksize, std::size_t workers)
        : chunked_call(std::move(core), window_chunks(workers, chunksize)), c_(std::move(c)),
          results_(n), chunksize_(chunksize), remaining_(chunk_count(n, chunksize)),
          encoder_(fn, std::move(items), chunksize) {}

    void on_result(const job& j, std::span<const char> payload) override {
        try {
            const std::size_t first = j.chunk * chunksize_;
            const std::size_t last = first + std::min(chunksize_, results_.size() - first);
            reader r(payload);
            for (std::size_t i = first; i < last; ++i) {
                T v;
                r(v);
                results_[i] = std::move(v);
            }
            if (r.remaining() != 0)
                throw error("malformed reply: bytes left after the results of a chunk");
        } catch (...) {
            return on_error(j, undecodable_result(j));
        }
        {
            std::lock_guard lk(m_);
            finished_locked(j);
        }
        if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1)
            return c_->set_value(take_results());
        try {
            refill();
        } catch (...) {
            fail(std::current_exception());
        }
    }

    void on_error(const job& j, std::exception_ptr e) override {
        {
            std::lock_guard lk(m_);
            finished_locked(j);
        }
        fail(std::move(e));
    }

  protected:
    job_ptr encode_next(std::size_t chunk, std::exception_ptr& error) override {
        return encoder_.next(shared_from_this(), chunk, error);
    }

    // The whole call fails with the input's exception. Found by start() on the caller's
    // thread, the callbacks still run on the pool's loop thread, as for any call.
    void on_input_error(std::exception_ptr e) override {
        if (!c_->has_callbacks() || core_->on_loop_thread())
            return fail(std::move(e));
        if (failed_.exchange(true))
            return;
        stop();
        try {
            core_->post([c = c_, e] { c->set_error(e); });
        } catch (...) {
            c_->set_error(std::move(e));
        }
    }

  private:
    // Python's map fails whole on the first error: stop sending chunks.
    void fail(std::exception_ptr e) {
        if (!failed_.exchange(true)) {
            stop();
            c_->set_error(std::move(e));
        }
    }

    std::vector<T> take_results() {
        if constexpr (std::is_same_v<T, bool>)
            return std::vector<bool>(results_.begin(), results_.end());
        else
            return std::move(results_);
    }

    // std::vector<bool> packs its elements into shared words, which chunks completing at once
    // on different threads would both write: bools are kept one per byte until the end.
    using slot = std::conditional_t<std::is_same_v<T, bool>, unsigned char, T>;

    std::shared_ptr<completion<std::vector<T>>> c_;
    std::vector<slot> results_;
    const std::size_t chunksize_;
    std::atomic<std::size_t> remaining_;
    std::atomic<bool> failed_{false};
    chunk_encoder<Fp, Star, View> encoder_;
};

/// The input of a chunked call as a view the call can keep: lvalue ranges by reference (or
/// copied, with `Copy`), rvalues moved in, unsized ranges collected into a vector.
template <bool Copy, class Range> auto keep_range(Range&& r) {
    using plain = std::remove_cvref_t<Range>;
    constexpr bool collect = !std::ranges::sized_range<Range> ||
                             (Copy && std::is_lvalue_reference_v<Range> && !std::ranges::view<plain>);
    if constexpr (collect) {
        std::vector<std::ranges::range_value_t<Range>> v;
        if constexpr (std::ranges::sized_range<Range>)
            v.reserve(std::ranges::size(r));
        for (auto&& x : r)
            v.push_back(std::forward<decltype(x)>(x));
        return std::views::all(std::move(v));
    } else {
        return std::views::all(std::forward<Range>(r));
    }
}

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
        return detail::await_completion(submit_apply<T>(
            fn, detail::task_args_t<F>(std::forward<Args>(args)...), {}, {}));
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

    /// Runs `fn` on the argument tuple `args` (e.g. `pool.apply_async(add, {1, 2})`).
    /// `callback` (or `error_callback`) runs once on the pool's loop thread before ready().
    template <class F>
    [[nodiscard]] async_result<detail::task_result_t<F>> apply_async(
        F fn, detail::task_args_t<F> args = {},
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
    /// join() for coroutines; resumes on the awaiting coroutine's executor.
    [[nodiscard]] asio::awaitable<void> async_join();
    /// The number of worker processes.
    std::size_t size() const noexcept;
    /// The pids of the live workers.
    std::vector<pid_t> pids() const;

  private:
    template <class T, class F>
    std::shared_ptr<detail::completion<T>>
    submit_apply(F fn, detail::task_args_t<F> args,
                 typename detail::completion<T>::callback_t callback,
                 typename detail::completion<T>::error_callback_t error_callback) {
        auto call = std::make_shared<detail::value_call<T>>(core_, std::move(callback),
                                                            std::move(error_callback));
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
        auto c = std::make_shared<detail::completion<std::vector<T>>>(
            core_, std::move(callback), std::move(error_callback));
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
