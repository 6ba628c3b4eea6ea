// coproc/detail/imap_state.hpp — the shared state behind an async_generator: results by chunk,
// the parked consumer, the input window of an imap or imap_unordered.
#pragma once

#include <coproc/detail/chunked_call.hpp>
#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>

#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace coproc::detail {

/// The shared state of an imap: results by chunk, the parked consumer, the input window.
template <class R> class imap_state : public chunked_call {
  public:
    imap_state(std::shared_ptr<pool_core> core, bool ordered, call_window window)
        : chunked_call(std::move(core), window), ordered_(ordered) {}

    void on_result(const job& j, std::span<const char> payload) override {
        outcome o;
        try {
            // As many results as the request had items (a void task's result takes no bytes).
            const std::uint64_t n = read_header(j.frame.data()).aux;
            if constexpr (is_number<R>) {
                o.values.resize(n);
                read_numbers(payload, std::span(o.values));
            } else {
                reader r(payload);
                for (std::uint64_t i = 0; i < n; ++i) {
                    R v;
                    r(v);
                    o.values.push_back(std::move(v));
                }
                if (r.remaining() != 0)
                    throw error("malformed reply: bytes left after the results of a chunk");
            }
        } catch (...) {
            o.values.clear();
            o.error = undecodable_result(j);
        }
        deliver(j, std::move(o));
    }

    void on_error(const job& j, std::exception_ptr e) override {
        outcome o;
        o.error = std::move(e);
        deliver(j, std::move(o));
    }

    asio::awaitable<std::optional<R>> next() {
        for (;;) {
            std::optional<std::optional<R>> got;
            bool finished = false;
            {
                std::lock_guard lk(m_);
                got = pop_ready(); // rethrows a task's exception
                finished = !got && input_done_ && in_flight_ == 0 && arrived_.empty();
            }
            refill();
            if (got)
                co_return std::move(*got);
            if (finished)
                co_return std::nullopt;
            co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
                [this](auto handler) { this->park(std::move(handler)); }, asio::use_awaitable);
        }
    }

  protected:
    std::size_t buffered() const override { return arrived_.size(); }

    // The input threw: next() raises `e` once every chunk before it has been consumed.
    void on_input_error(std::exception_ptr e) override {
        std::lock_guard lk(m_);
        input_error_ = std::move(e);
        if (!waiter_.empty() && has_ready())
            wake_locked();
    }

  private:
    // Parks next()'s handler until has_ready(); a cancelled next() ends with operation_aborted
    // and takes nothing (the results stay for the next call).
    template <class Handler> void park(Handler handler) {
        auto finish = [](Handler& h, bool aborted) {
            std::move(h)(aborted ? operation_aborted() : nullptr);
        };
        auto on_cancel = [weak = this->weak_from_this(), this](waiter_list::id_type id) {
            auto keep = weak.lock();
            if (keep)
                waiter_.abort(m_, id);
        };
        std::unique_lock lk(m_);
        waiter_.park(std::move(handler), finish, on_cancel);
        if (has_ready())
            wake_locked();
    }

    // Posts the parked next(), under m_.
    void wake_locked() { waiter_.take_all().post(false); }

    struct outcome {
        std::vector<R> values;
        std::exception_ptr error;
    };

    // Whether next() has something to return now (a value, an error or the end), under m_.
    bool has_ready() const {
        if (!current_.empty() || pending_error_)
            return true;
        if (arrived_.empty())
            return in_flight_ == 0 && input_done_;
        return !ordered_ || arrived_.begin()->first == next_chunk_;
    }

    std::optional<std::optional<R>> pop_ready() {
        for (;;) {
            if (pending_error_)
                std::rethrow_exception(std::exchange(pending_error_, nullptr));
            if (!current_.empty()) {
                R v = std::move(current_.front());
                current_.pop_front();
                return std::optional<R>(std::move(v));
            }
            if (arrived_.empty()) {
                if (input_error_ && in_flight_ == 0) // after every result before it
                    std::rethrow_exception(std::exchange(input_error_, nullptr));
                return std::nullopt;
            }
            auto it = arrived_.begin();
            if (ordered_ && it->first != next_chunk_)
                return std::nullopt;
            outcome o = std::move(it->second);
            arrived_.erase(it);
            ++next_chunk_;
            for (auto& v : o.values)
                current_.push_back(std::move(v));
            pending_error_ = std::move(o.error);
        }
    }

    void deliver(const job& j, outcome o) {
        std::lock_guard lk(m_);
        finished_locked(j);
        // Unordered: chunks are numbered by arrival so the map pops them first come.
        arrived_.emplace(ordered_ ? j.chunk : arrival_++, std::move(o));
        if (!waiter_.empty() && has_ready())
            wake_locked();
    }

    const bool ordered_;
    waiter_list waiter_; // next() awaiting a result
    std::map<std::size_t, outcome> arrived_;
    std::deque<R> current_;
    std::exception_ptr pending_error_;
    std::exception_ptr input_error_; // what the input threw; raised after all results
    std::size_t next_chunk_ = 0;
    std::size_t arrival_ = 0;
};

/// An imap over an owned input view.
template <class R, class Fp, bool Star, class View> class imap_source final : public imap_state<R> {
  public:
    imap_source(std::shared_ptr<pool_core> core, bool ordered, Fp fn, View items,
                std::size_t chunksize, std::size_t workers)
        : imap_state<R>(std::move(core), ordered, window_for(workers, chunksize)),
          encoder_(fn, std::move(items), chunksize) {}

  protected:
    job_ptr encode_next(std::exception_ptr& error) override {
        return encoder_.next(this->shared_from_this(), error);
    }

  private:
    chunk_encoder<Fp, Star, View> encoder_;
};

} // namespace coproc::detail
