// coproc/detail/chunked_call.hpp — calls over an input range (map, starmap, imap), encoded
// chunk by chunk as earlier chunks complete, so only a bounded window of the input is ever
// encoded and in flight, whatever the input's size.
#pragma once

#include <coproc/detail/pool_core.hpp>
#include <coproc/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <ranges>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc::detail {

/// Chunks of `chunksize` items needed for `n` items (chunksize >= 1), without overflow.
constexpr std::size_t chunk_count(std::size_t n, std::size_t chunksize) noexcept {
    return n / chunksize + (n % chunksize != 0);
}

/// Reads `out.size()` numbers from `in`, which holds exactly their binary form, in one copy;
/// throws coproc::error if its size is not that.
template <class T> void read_numbers(std::span<const char> in, std::span<T> out) {
    static_assert(is_number<T>);
    if (in.size() != out.size_bytes())
        throw error("malformed reply: " + std::to_string(in.size()) + " bytes for " +
                    std::to_string(out.size()) + " numbers of " + std::to_string(sizeof(T)) +
                    " bytes");
    if (!out.empty())
        std::memcpy(out.data(), in.data(), in.size());
}

/// Writes one input item as the argument tuple `Args` of the task function. With `Star`, the
/// item is itself a tuple (or pair/array) of arguments, as in starmap.
template <bool Star, class Args, class Item> void write_item(writer& w, const Item& item) {
    if constexpr (Star) {
        static_assert(std::tuple_size_v<std::remove_cvref_t<Item>> == std::tuple_size_v<Args>,
                      "starmap: each item must be a tuple with one element per parameter of "
                      "the task function");
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (write_item<false, std::tuple<std::tuple_element_t<I, Args>>>(w, std::get<I>(item)),
             ...);
        }(std::make_index_sequence<std::tuple_size_v<Args>>{});
    } else {
        static_assert(std::tuple_size_v<Args> == 1,
                      "map/imap: the task function must take exactly one parameter (use "
                      "starmap for several)");
        using arg = std::tuple_element_t<0, Args>;
        static_assert(std::is_constructible_v<arg, const Item&>,
                      "map: an input item does not convert to the task function's parameter");
        if constexpr (std::is_same_v<std::remove_cvref_t<Item>, arg>) {
            w(item);
        } else {
            const arg converted(item);
            w(converted);
        }
    }
}

/// Encodes the items of a view, `chunksize` items per chunk and one or more whole chunks per job
/// (no more chunks once its frame holds max_group_bytes), numbering the chunks from 0. The
/// input ends at the first item that cannot be read or encoded (its iterator, its conversion to
/// the parameter type or its save() threw): the items before it in its chunk still make a
/// (shorter) job, returned with that item's exception, its own type. Python's imap drops that
/// partial chunk (`_get_tasks` slices whole chunks); coproc sends it, so every item before the
/// bad one has its result, as with chunksize 1, where both behave alike.
template <class Fp, bool Star, class View> class chunk_encoder {
  public:
    chunk_encoder(Fp fn, View items, std::size_t chunksize)
        : fn_(fn), items_(std::move(items)), it_(std::ranges::begin(items_)),
          chunksize_(chunksize) {}
    chunk_encoder(const chunk_encoder&) = delete; // it_ points into items_

    /// The job for the next `chunks` chunks (nullptr if it would be empty; its `chunk` is the
    /// first one's number), and in `error` what the input threw, if it did: the input ends
    /// there and the encoder is not used again.
    job_ptr next(std::shared_ptr<task_sink> sink, std::exception_ptr& error,
                 std::size_t chunks = 1) {
        try {
            if (it_ == std::ranges::end(items_))
                return nullptr;
            const std::size_t limit = chunksize_ * std::min(chunks, max_items / chunksize_);
            std::size_t n = 0;
            job_ptr j = make_job(
                fn_,
                [&](writer& w) {
                    std::vector<char>& frame = w.buffer();
                    if constexpr (raw_items)
                        return write_raw(frame, limit, n, error);
                    const std::size_t start = frame.size();
                    std::size_t boundary = chunksize_; // where the job's next chunk starts
                    for (; n < limit; ++n) {
                        const std::size_t before = frame.size();
                        if (n == boundary) {
                            if (before - start >= max_group_bytes)
                                break;
                            boundary += chunksize_;
                        }
                        bool written = false;
                        try {
                            if (n > 0 && it_ == std::ranges::end(items_))
                                break;
                            write_item<Star, typename fn_traits<Fp>::args>(w, *it_);
                            written = true;
                            ++it_;
                            if (n == 0)
                                reserve_like_first(frame, limit, frame.size() - before,
                                                   chunks > 1 ? max_group_bytes
                                                              : max_reserved_frame);
                        } catch (...) {
                            if (written)
                                ++n; // the iterator failed after this item: keep it
                            else
                                frame.resize(before); // drop what the bad item wrote
                            error = std::current_exception();
                            break;
                        }
                    }
                    return n;
                },
                std::move(sink), next_chunk_);
            next_chunk_ += chunk_count(n, chunksize_);
            return n > 0 ? std::move(j) : nullptr; // n == 0: the first item was bad
        } catch (...) {
            error = std::current_exception();
            return nullptr;
        }
    }

  private:
    using args = typename fn_traits<Fp>::args;
    using item = std::remove_cvref_t<std::ranges::range_reference_t<View>>;

    // Whether an input item is numbers only: a number for map, a tuple (or pair, array) of as
    // many numbers as there are parameters for starmap.
    static constexpr bool numbers_item() {
        if constexpr (!Star) {
            return std::is_arithmetic_v<item>;
        } else if constexpr (requires { std::tuple_size<item>::value; }) {
            if constexpr (std::tuple_size_v<item> != std::tuple_size_v<args>)
                return false;
            else
                return []<std::size_t... I>(std::index_sequence<I...>) {
                    return (std::is_arithmetic_v<std::tuple_element_t<I, item>> && ...);
                }
            (std::make_index_sequence<std::tuple_size_v<item>>{});
        } else {
            return false;
        }
    }

    /// A map or starmap of a random-access range of numbers into parameters that are numbers:
    /// each item's bytes are its numbers' own (cereal's binary form), written in one pass over
    /// the chunk.
    static constexpr bool raw_items =
        all_numbers<args>::value && std::ranges::random_access_range<View> &&
        std::sized_sentinel_for<std::ranges::sentinel_t<View>, std::ranges::iterator_t<View>> &&
        numbers_item();
    static constexpr std::size_t raw_item_bytes = numbers_bytes<args>;

    // Writes `x` at `out` as write_item() would: each number converted to its parameter's type.
    static void put_raw(char* out, const item& x) {
        auto put = [&]<class A, class V>(std::type_identity<A>, const V& v) {
            const A a(v);
            std::memcpy(out, &a, sizeof a);
            out += sizeof a;
        };
        if constexpr (Star)
            [&]<std::size_t... I>(std::index_sequence<I...>) {
                (put(std::type_identity<std::tuple_element_t<I, args>>{}, std::get<I>(x)), ...);
            }
        (std::make_index_sequence<std::tuple_size_v<args>>{});
        else put(std::type_identity<std::tuple_element_t<0, args>>{}, x);
    }

    /// The job's (at most `limit`) items as write_item() would write them, one after the other,
    /// counting them in `n`; an item that cannot be read ends the input there, as in next().
    std::size_t write_raw(std::vector<char>& frame, std::size_t limit, std::size_t& n,
                          std::exception_ptr& error) {
        constexpr std::size_t bytes = raw_item_bytes;
        const auto left = static_cast<std::size_t>(std::ranges::end(items_) - it_);
        std::size_t count = std::min(limit, left);
        if (count > chunksize_) // whole chunks, in about max_group_bytes
            count = std::min(count, std::max<std::size_t>(max_group_bytes / bytes / chunksize_, 1) *
                                        chunksize_);
        const std::size_t at = frame.size();
        reserve_message(frame, at + count * bytes, at + count * bytes);
        frame.resize(at + count * bytes);
        char* out = frame.data() + at;
        try {
            while (n < count) {
                put_raw(out + n * bytes, *it_);
                ++n;
                ++it_;
            }
        } catch (...) {
            frame.resize(at + n * bytes);
            error = std::current_exception();
        }
        return n;
    }

    /// Room for the rest of the job's `limit` items, if they take as many bytes as the first (for
    /// at most `most` more bytes): the frame then grows without copying itself over and over.
    void reserve_like_first(std::vector<char>& frame, std::size_t limit, std::size_t item_bytes,
                            std::size_t most) {
        using iter = std::ranges::iterator_t<View>;
        std::size_t rest = limit - 1;
        if constexpr (std::sized_sentinel_for<std::ranges::sentinel_t<View>, iter>)
            rest = std::min(rest, static_cast<std::size_t>(std::ranges::end(items_) - it_));
        if (rest == 0)
            return;
        const std::size_t more = item_bytes <= most / rest ? item_bytes * rest : most;
        reserve_message(frame, frame.size() + more, frame.size() + more);
    }

    static constexpr std::size_t max_reserved_frame = std::size_t{8} << 20;
    static constexpr std::size_t max_items = std::numeric_limits<std::size_t>::max();

    Fp fn_;
    View items_;
    std::ranges::iterator_t<View> it_;
    const std::size_t chunksize_;
    std::size_t next_chunk_ = 0;
};

/// How much of its input a chunked call keeps in flight.
struct call_window {
    std::size_t chunks;   // at most this many chunks, counting those not yet consumed
    std::size_t min_jobs; // at least this many jobs (one per worker), however large
};

/// The submitting half of a chunked call: keeps at most `window.chunks` chunks in flight,
/// counting what `buffered()` says is still unconsumed, and about max_bytes of requests once
/// `window.min_jobs` jobs are.
/// While the input has chunks left to submit the call holds the pool (close() keeps its
/// workers); every way the submitting ends (input exhausted, input error, stop(), the pool
/// refusing more jobs) gives that hold back.
class chunked_call : public task_sink {
  public:
    /// Large items are encoded no further ahead than this: each request then goes into a
    /// buffer that an answered one left, still in the cache (a map of 1 MiB items ran twice as
    /// fast with 8 MiB in flight as with 64, see bench/RESULTS.md).
    static constexpr std::size_t max_bytes = 8 << 20;

    /// Submits the first window; throws pool_closed if the pool no longer accepts tasks. An
    /// input error goes to on_input_error(), not to the caller.
    void start() {
        core_->check_open();
        core_->hold();
        {
            std::lock_guard lk(m_);
            holding_ = true;
        }
        refill();
    }

    /// Cancels the call (the consumer is gone, or cancelled it): nothing more is submitted,
    /// and its jobs are cancelled in the pool (see pool_core::cancel()).
    void stop() noexcept {
        stop_submitting();
        core_->cancel(shared_from_this());
    }
    void cancel_in(pool_core&) noexcept override { stop(); }

    /// Throws coproc::error if a blocking wait for this call here would deadlock.
    void check_blocking(const char* what) const { core_->check_blocking(what); }

    /// Stops submitting (the call failed): unsent chunks are dropped, sent ones run on.
    void stop_submitting() noexcept {
        cancel();
        bool was_holding;
        {
            std::lock_guard lk(m_);
            input_done_ = true;
            was_holding = std::exchange(holding_, false);
        }
        if (was_holding)
            core_->release();
    }

  protected:
    chunked_call(std::shared_ptr<pool_core> core, call_window window)
        : core_(std::move(core)), max_chunks_(window.chunks), min_jobs_(window.min_jobs) {}

    /// The next job (one or more chunks, numbered from 0 in input order), or nullptr when the
    /// input is exhausted (called under m_); sets `error` to what reading or encoding the input
    /// threw (the job holds the items before).
    virtual job_ptr encode_next(std::exception_ptr& error) = 0;
    /// Completed chunks not yet consumed (under m_).
    virtual std::size_t buffered() const { return 0; }
    /// The input threw `e` after the chunks submitted so far (not under m_, before those of
    /// them encoded by the same refill are submitted). The input is done; the hold is released
    /// by refill().
    virtual void on_input_error(std::exception_ptr e) = 0;

    /// Accounts for a finished job (under m_).
    void finished_locked(const job& j) noexcept {
        --in_flight_;
        in_flight_bytes_ -= request_bytes(j);
    }

    /// Encodes and submits chunks until the window is full or the input ends. While chunks
    /// are in flight it waits until an eighth of the window is free, so that a stream of small
    /// replies is answered by one submission (and one write) per batch, not one per reply.
    /// `finished`: a job to account for first (finished_locked), under the same lock.
    /// Throws only if the pool refuses the jobs (terminated).
    void refill(const job* finished = nullptr) {
        std::vector<job_ptr> jobs;
        std::size_t bytes = 0; // of their requests
        std::exception_ptr input_error;
        bool ended = false;
        {
            std::lock_guard lk(m_);
            if (finished)
                finished_locked(*finished);
            const std::size_t busy = in_flight_ + buffered();
            if (in_flight_ != 0 && busy < max_chunks_ && max_chunks_ - busy < (max_chunks_ + 7) / 8)
                return;
            try {
                while (!input_done_ && in_flight_ + buffered() < max_chunks_ &&
                       (in_flight_bytes_ < max_bytes || in_flight_ < min_jobs_)) {
                    job_ptr j = encode_next(input_error);
                    const bool more = j && !input_error;
                    if (j) {
                        const std::size_t b = request_bytes(*j);
                        jobs.push_back(std::move(j));
                        ++in_flight_;
                        in_flight_bytes_ += b;
                        bytes += b;
                    }
                    if (!more) {
                        input_done_ = true;
                        break;
                    }
                }
            } catch (...) {
                input_done_ = true;
                input_error = std::current_exception();
            }
            if (input_done_)
                ended = std::exchange(holding_, false);
        }
        // The hold goes once the input's last jobs are queued, on every path out of here.
        struct release_on_exit {
            pool_core* core;
            ~release_on_exit() {
                if (core)
                    core->release();
            }
        } release{ended ? core_.get() : nullptr};
        if (input_error)
            on_input_error(std::move(input_error));
        if (jobs.empty() || cancelled())
            return;
        const std::size_t n = jobs.size();
        try {
            core_->submit_more(std::move(jobs));
        } catch (...) {
            std::lock_guard lk(m_);
            in_flight_ -= n;
            in_flight_bytes_ -= bytes;
            input_done_ = true;
            if (std::exchange(holding_, false))
                release.core = core_.get();
            throw;
        }
    }

    std::shared_ptr<pool_core> core_;
    std::mutex m_;
    std::size_t in_flight_ = 0;
    bool input_done_ = false;

  private:
    const std::size_t max_chunks_;
    const std::size_t min_jobs_;
    std::size_t in_flight_bytes_ = 0;
    bool holding_ = false;
};

/// What a call keeps in flight: chunks enough to batch small items, few large chunks, and a
/// job for every worker.
inline call_window window_for(std::size_t workers, std::size_t chunksize) noexcept {
    return {2 * workers + chunk_count(256 * workers, chunksize), std::max<std::size_t>(workers, 1)};
}

} // namespace coproc::detail
