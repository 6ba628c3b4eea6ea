// Task timeouts (private to the library): a timer that looks at the workers every tenth of the
// timeout, and the rule that says a worker is stuck.
//
// A watch holds no lock of its own: the pool calls it under its mutex.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>

namespace coproc::detail {

/// Whether a worker is stuck at time `now` (ns, CLOCK_MONOTONIC) with task timeout `limit`
/// (ns): it has been running task `running` (0: none) since `started` for longer, or it has
/// had jobs (`queued`) but run none for longer, as `idle_since` (0: not idle with work;
/// updated here) records.
bool is_stuck(std::int64_t now, std::int64_t limit, std::uint64_t running, std::int64_t started,
              bool queued, std::int64_t& idle_since) noexcept;

class timeout_watch {
  public:
    /// A watch for task timeout `limit`; none (enabled() is false) if it is zero.
    timeout_watch(const asio::any_io_executor& ex, std::chrono::milliseconds limit);

    bool enabled() const noexcept { return timer_ != nullptr; }
    /// A call to the handler given to arm() is due.
    bool armed() const noexcept { return armed_; }
    std::chrono::milliseconds limit() const noexcept { return limit_; }
    std::int64_t limit_ns() const noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(limit_).count();
    }

    /// Calls `handler(error_code)` a tenth of the timeout from now, unless a call is already
    /// due; the handler calls fired() first (under the pool's mutex).
    template <class Handler> void arm(Handler&& handler) {
        if (!timer_ || armed_)
            return;
        armed_ = true;
        timer_->expires_after(std::max<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(1), limit_ / 10));
        timer_->async_wait(std::forward<Handler>(handler));
    }
    void fired() noexcept { armed_ = false; }
    void cancel() noexcept {
        if (timer_)
            timer_->cancel();
    }
    /// No more timeouts: the timer is destroyed (enabled() turns false).
    void stop() noexcept { timer_.reset(); }

  private:
    std::chrono::milliseconds limit_;
    std::unique_ptr<asio::steady_timer> timer_;
    bool armed_ = false;
};

} // namespace coproc::detail
