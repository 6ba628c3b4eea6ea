// coproc/async_generator.hpp — async_generator<R>, what pool::imap and imap_unordered return.
//
//   while (auto v = co_await gen.next()) use(*v);
//   for (auto& v : pool.imap(f, xs).blocking()) use(v);     // from a plain thread
//
// The generator pulls its input lazily and keeps a bounded number of chunks in flight
// (backpressure). Destroying it early cancels every chunk that has not started.
#pragma once

#include <coproc/detail/imap_state.hpp>

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <cstddef>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <utility>

namespace coproc {

/// A lazy, asynchronous sequence of task results.
template <class R> class async_generator {
  public:
    explicit async_generator(std::shared_ptr<detail::imap_state<R>> s) : s_(std::move(s)) {}
    async_generator(async_generator&&) noexcept = default;
    async_generator& operator=(async_generator&& o) noexcept {
        if (this != &o) {
            if (s_)
                s_->stop();
            s_ = std::move(o.s_);
        }
        return *this;
    }
    ~async_generator() {
        if (s_)
            s_->stop();
    }

    /// The next result, or std::nullopt when all are consumed. Rethrows a task's exception at
    /// the position of its chunk (imap) or when it arrives (imap_unordered); iteration may go on
    /// afterwards. If reading or encoding the input throws (its iterator, or an item's save()),
    /// the results of every item before the bad one come first (in order for imap, any order
    /// for imap_unordered), then next() throws that same exception, then the sequence ends, as
    /// Python's imap does with an iterator that raises. Resumes on the awaiting coroutine's
    /// executor.
    asio::awaitable<std::optional<R>> next() {
        auto s = s_;
        co_return co_await s->next();
    }

    class blocking_range;
    /// An input range over the remaining results for plain threads, as Python's
    /// `for v in pool.imap(f, xs)`: each step blocks the calling thread until the next result
    /// (rethrowing a task's exception as next() does). Throws coproc::error when called on the
    /// thread that runs the pool's event loop (it would deadlock there). Called on an lvalue,
    /// the range refers to this generator, which must outlive it; on an rvalue it takes the
    /// generator over, so `for (auto& v : pool.imap(f, xs).blocking())` is safe.
    blocking_range blocking() & { return blocking_range(*this); }
    blocking_range blocking() && { return blocking_range(std::move(*this)); }

  private:
    // Runs next() on a private io_context of the calling thread; the pool's loop delivers to it.
    std::optional<R> next_blocking() {
        s_->check_blocking("async_generator::blocking()");
        asio::io_context ctx;
        std::optional<R> out;
        std::exception_ptr error;
        auto s = s_;
        asio::co_spawn(ctx, s->next(), [&](std::exception_ptr e, std::optional<R> v) {
            error = e;
            out = std::move(v);
        });
        ctx.run();
        if (error)
            std::rethrow_exception(error);
        return out;
    }

    std::shared_ptr<detail::imap_state<R>> s_;
};

/// See async_generator::blocking().
template <class R> class async_generator<R>::blocking_range {
  public:
    struct sentinel {};
    class iterator {
      public:
        using iterator_category = std::input_iterator_tag;
        using value_type = R;
        using difference_type = std::ptrdiff_t;
        using reference = R&;
        iterator() = default;
        R& operator*() const { return *r_->current_; }
        R* operator->() const { return &*r_->current_; }
        iterator& operator++() {
            r_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& i, sentinel) { return i.at_end(); }

      private:
        friend class blocking_range;
        bool at_end() const { return !r_->current_; }
        explicit iterator(blocking_range* r) : r_(r) {}
        blocking_range* r_ = nullptr;
    };

    /// Blocks for the first result.
    iterator begin() {
        if (!started_) {
            started_ = true;
            advance();
        }
        return iterator(this);
    }
    sentinel end() const noexcept { return {}; }

  private:
    friend class async_generator;
    friend class iterator;
    explicit blocking_range(async_generator& g) : gen_(&g) {}
    explicit blocking_range(async_generator&& g)
        : owned_(std::make_unique<async_generator>(std::move(g))), gen_(owned_.get()) {}
    void advance() {
        current_.reset();
        current_ = gen_->next_blocking();
    }
    std::unique_ptr<async_generator> owned_;
    async_generator* gen_;
    std::optional<R> current_;
    bool started_ = false;
};

} // namespace coproc
