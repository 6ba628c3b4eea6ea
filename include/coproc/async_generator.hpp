// coproc/async_generator.hpp — async_generator<R>, what pool::imap and imap_unordered return.
//
//   while (auto v = co_await gen.next()) use(*v);
//
// The generator pulls its input lazily and keeps a bounded number of chunks in flight
// (backpressure). Destroying it early cancels every chunk that has not started.
#pragma once

#include <coproc/detail/imap_state.hpp>

#include <asio/awaitable.hpp>

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

  private:
    std::shared_ptr<detail::imap_state<R>> s_;
};

} // namespace coproc
