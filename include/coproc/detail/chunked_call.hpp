// coproc/detail/chunked_call.hpp — calls over an input range (map, starmap, imap), encoded
// chunk by chunk as earlier chunks complete, so only a bounded window of the input is ever
// encoded and in flight, whatever the input's size.
#pragma once

#include <coproc/detail/pool_core.hpp>

#include <cstddef>
#include <mutex>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc::detail {

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

/// Encodes the items of a view, `chunksize` items per job.
template <class Fp, bool Star, class View> class chunk_encoder {
  public:
    chunk_encoder(Fp fn, View items, std::size_t chunksize)
        : fn_(fn), items_(std::move(items)), it_(std::ranges::begin(items_)),
          chunksize_(chunksize) {}
    chunk_encoder(const chunk_encoder&) = delete; // it_ points into items_

    /// The job for the next chunk, or nullptr when the input is exhausted.
    job_ptr next(std::shared_ptr<task_sink> sink, std::size_t chunk) {
        if (it_ == std::ranges::end(items_))
            return nullptr;
        return make_job(
            fn_,
            [&](writer& w) {
                std::size_t n = 0;
                for (; n < chunksize_ && it_ != std::ranges::end(items_); ++it_, ++n)
                    write_item<Star, typename fn_traits<Fp>::args>(w, *it_);
                return n;
            },
            std::move(sink), chunk);
    }

  private:
    Fp fn_;
    View items_;
    std::ranges::iterator_t<View> it_;
    const std::size_t chunksize_;
};

/// The submitting half of a chunked call: keeps at most `max_chunks` chunks (and about
/// max_bytes of requests) in flight, counting what `buffered()` says is still unconsumed.
class chunked_call : public task_sink {
  public:
    static constexpr std::size_t max_bytes = 64 << 20;

    /// Submits the first window; throws pool_closed if the pool no longer accepts tasks.
    void start() {
        core_->check_open();
        core_->hold();
        holding_ = true;
        refill();
    }

    /// Stops submitting (the consumer is gone, or the call failed); unsent chunks are dropped.
    void stop() {
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
    chunked_call(std::shared_ptr<pool_core> core, std::size_t max_chunks)
        : core_(std::move(core)), max_chunks_(max_chunks) {}

    /// The next chunk's job, or nullptr when the input is exhausted (called under m_).
    virtual job_ptr encode_next(std::size_t chunk) = 0;
    /// Completed chunks not yet consumed (under m_).
    virtual std::size_t buffered() const { return 0; }

    /// Accounts for a finished job (under m_).
    void finished_locked(const job& j) noexcept {
        --in_flight_;
        in_flight_bytes_ -= j.frame.size();
    }

    /// Encodes and submits chunks until the window is full or the input ends.
    void refill() {
        std::vector<job_ptr> jobs;
        bool ended = false;
        {
            std::lock_guard lk(m_);
            while (!input_done_ && in_flight_ + buffered() < max_chunks_ &&
                   (in_flight_bytes_ < max_bytes || in_flight_ == 0)) {
                job_ptr j = encode_next(submitted_);
                if (!j) {
                    input_done_ = true;
                    ended = std::exchange(holding_, false);
                    break;
                }
                ++submitted_;
                ++in_flight_;
                in_flight_bytes_ += j->frame.size();
                jobs.push_back(std::move(j));
            }
        }
        if (!jobs.empty()) {
            const std::size_t n = jobs.size();
            try {
                core_->submit_more(std::move(jobs));
            } catch (...) {
                {
                    std::lock_guard lk(m_);
                    in_flight_ -= n;
                    input_done_ = true;
                    ended = std::exchange(holding_, false);
                }
                if (ended)
                    core_->release();
                throw;
            }
        }
        if (ended)
            core_->release();
    }

    std::shared_ptr<pool_core> core_;
    std::mutex m_;
    std::size_t in_flight_ = 0;
    bool input_done_ = false;

  private:
    const std::size_t max_chunks_;
    std::size_t in_flight_bytes_ = 0;
    std::size_t submitted_ = 0;
    bool holding_ = false;
};

/// How many chunks a call keeps in flight: enough to batch small items, few large chunks.
inline std::size_t window_chunks(std::size_t workers, std::size_t chunksize) noexcept {
    return 2 * workers + (256 * workers + chunksize - 1) / chunksize;
}

} // namespace coproc::detail
