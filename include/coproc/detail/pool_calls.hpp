// coproc/detail/pool_calls.hpp — the calls behind pool's methods: apply's value_call,
// map/starmap's map_call, Python's default chunksize, and how a call keeps its input range.
#pragma once

#include <coproc/detail/archive.hpp>
#include <coproc/detail/chunked_call.hpp>
#include <coproc/detail/completion.hpp>
#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc::detail {

/// Python's default chunksize: ceil(n / (4 * workers)), at least 1.
constexpr std::size_t default_chunksize(std::size_t n, std::size_t workers) noexcept {
    const std::size_t d = 4 * std::max<std::size_t>(workers, 1);
    return std::max<std::size_t>(1, n / d + (n % d != 0));
}

template <class T> using value_t = wire_result_t<T>;

/// Starts the asynchronous operation that completes with the outcome of `c`, whose one
/// consumer it is: cancelling it cancels the call.
template <class T, class Token> auto async_take(std::shared_ptr<completion<T>> c, Token&& token) {
    return asio::async_initiate<Token, outcome_signature<T>>(
        [](auto handler, std::shared_ptr<completion<T>> c) {
            completion<T>::park(c, std::move(handler), true);
        },
        token, std::move(c));
}

/// The awaitable form of a call submitted already: cancelling the awaiting coroutine (its
/// cancellation slot, e.g. the loser of `||`) cancels the call.
template <class T> asio::awaitable<T> await_completion(std::shared_ptr<completion<T>> c) {
    co_return co_await async_take(std::move(c), asio::use_awaitable);
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

/// map/starmap: chunk k holds items [k * chunksize, ...); the results fill one vector. A job
/// holds one chunk until the call has measured its own items, then as many as
/// pool_core::chunks_per_job() says.
template <class T, class Fp, bool Star, class View> class map_call final : public chunked_call {
  public:
    map_call(std::shared_ptr<pool_core> core, std::shared_ptr<completion<std::vector<T>>> c, Fp fn,
             View items, std::size_t n, std::size_t chunksize, std::size_t workers)
        : chunked_call(std::move(core), window_for(workers, chunksize)), c_(std::move(c)),
          results_(sized_results(n)), chunksize_(chunksize), remaining_(n),
          encoder_(fn, std::move(items), chunksize) {}

    void on_result(const job& j, std::span<const char> payload) override {
        const std::size_t first = j.chunk * chunksize_;
        const std::size_t count = items_of(j);
        note_item_ns(j, count);
        try {
            const std::size_t last = first + count;
            if constexpr (is_number<T>) {
                read_numbers(payload, std::span(results_).subspan(first, last - first));
            } else {
                reader r(payload);
                for (std::size_t i = first; i < last; ++i) {
                    T v;
                    r(v);
                    results_[i] = std::move(v);
                }
                if (r.remaining() != 0)
                    throw error("malformed reply: bytes left after the results of a chunk");
            }
        } catch (...) {
            return on_error(j, undecodable_result(j));
        }
        if (remaining_.fetch_sub(count, std::memory_order_acq_rel) == count) {
            {
                std::lock_guard lk(m_);
                finished_locked(j);
            }
            return c_->set_value(take_results());
        }
        try {
            refill(&j);
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

    /// Connects the completion to this call, so cancelling it stops the call.
    void attach() { c_->attach(weak_from_this()); }

  protected:
    job_ptr encode_next(std::exception_ptr& error) override {
        const std::uint64_t item_ns = item_ns_.load(std::memory_order_relaxed);
        return encoder_.next(shared_from_this(), error, core_->chunks_per_job(chunksize_, item_ns));
    }

    // The whole call fails with the input's exception. Found by start() on the caller's
    // thread, the callbacks still run on the pool's loop thread, as for any call.
    void on_input_error(std::exception_ptr e) override {
        if (!c_->has_callbacks() || core_->on_loop_thread())
            return fail(std::move(e));
        if (failed_.exchange(true))
            return;
        stop_submitting();
        try {
            core_->post([c = c_, e] { c->set_error(e); });
        } catch (...) {
            c_->set_error(std::move(e));
        }
    }

  private:
    // A running average of how long this call's items run (results may arrive on several
    // threads at once: an update may be lost, which an average can bear).
    void note_item_ns(const job& j, std::size_t count) noexcept {
        if (j.ran_ns == 0 || count == 0)
            return;
        const auto item = static_cast<std::int64_t>(std::max<std::uint64_t>(j.ran_ns / count, 1));
        const auto avg = static_cast<std::int64_t>(item_ns_.load(std::memory_order_relaxed));
        const std::int64_t next =
            avg == 0 ? item : std::max<std::int64_t>(avg + (item - avg) / 8, 1);
        item_ns_.store(static_cast<std::uint64_t>(next), std::memory_order_relaxed);
    }

    // Python's map fails whole on the first error: stop sending chunks.
    void fail(std::exception_ptr e) {
        if (!failed_.exchange(true)) {
            stop_submitting();
            c_->set_error(std::move(e));
        }
    }

    // The results' vector, its memory populated first when it is large and of numbers (one
    // call maps its pages rather than a fault each as it is zeroed).
    static auto sized_results(std::size_t n) {
        std::vector<slot> v;
        if constexpr (std::is_arithmetic_v<slot>)
            reserve_populated(v, n);
        v.resize(n);
        return v;
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
    std::atomic<std::size_t> remaining_; // items
    std::atomic<std::uint64_t> item_ns_{0}; // 0 until a result is measured
    std::atomic<bool> failed_{false};
    chunk_encoder<Fp, Star, View> encoder_;
};

/// The input of a chunked call as a view the call can keep: lvalue ranges by reference (or
/// copied, with `Copy`), rvalues moved in, unsized ranges collected into a vector.
template <bool Copy, class Range> auto keep_range(Range&& r) {
    using plain = std::remove_cvref_t<Range>;
    constexpr bool collect =
        !std::ranges::sized_range<Range> ||
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

} // namespace coproc::detail
