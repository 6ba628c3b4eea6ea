// Task timeouts (see timeout_watch.hpp).
#include "timeout_watch.hpp"

namespace coproc::detail {

bool is_stuck(std::int64_t now, std::int64_t limit, std::uint64_t running, std::int64_t started,
              bool queued, std::int64_t& idle_since) noexcept {
    if (running != 0) {
        idle_since = 0;
        return now - started > limit;
    }
    if (!queued) {
        idle_since = 0;
        return false;
    }
    // Work is queued but the worker runs nothing (e.g. it was stopped).
    if (idle_since == 0)
        idle_since = now;
    return now - idle_since > limit;
}

timeout_watch::timeout_watch(const asio::any_io_executor& ex, std::chrono::milliseconds limit)
    : limit_(limit) {
    if (limit.count() > 0)
        timer_ = std::make_unique<asio::steady_timer>(ex);
}

} // namespace coproc::detail
