// coproc/detail/handle.hpp — what queues, pipes and locks share: deadlines, and the per-process
// registry that lets a handle travel to a pool worker as a small token.
//
// A pool worker is a fork of the parent, so a queue, connection or lock created before the
// pool's workers started already exists in the worker: same descriptors, same shared memory,
// same registry. A handle is serialized as its registry token; loading looks the token up in the
// loading process's (inherited) registry. A handle created after the worker was forked is not
// there, and loading it throws coproc::error saying so.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace coproc::detail {

using clock = std::chrono::steady_clock;

/// The point `timeout` from now; a negative timeout is now, a huge one is far (not overflow).
template <class Rep, class Period>
clock::time_point deadline_after(std::chrono::duration<Rep, Period> timeout) {
    using namespace std::chrono;
    constexpr auto far = hours(24 * 365 * 100);
    const auto now = clock::now();
    if (timeout <= timeout.zero())
        return now;
    if (duration<double>(timeout) >= duration<double>(far))
        return now + far;
    return now + ceil<clock::duration>(timeout);
}

enum class handle_kind : std::uint32_t {
    queue = 1,
    connection = 2,
    lock = 3,
    event = 4,
    semaphore = 5,
    rlock = 6,
    condition = 7,
    barrier = 8,
    shared_block = 9,
};

/// Enters `core`, which holds descriptors `fds`, in this process's registry; returns its token
/// (random, never reused).
std::uint64_t register_handle(std::weak_ptr<void> core, handle_kind kind, std::vector<int> fds);
/// Removes a token (called by a core's destructor).
void unregister_handle(std::uint64_t token) noexcept;
/// The core registered under `token` in this process. Throws coproc::error if this process
/// does not have it (it was created after the process was forked) or it is of another kind.
std::shared_ptr<void> find_handle(std::uint64_t token, handle_kind kind);

/// The descriptors of every registered handle alive in this process (a pool started with
/// close_fds keeps them open in its workers).
std::vector<int> handle_descriptors();

/// Makes a `Core` and registers it with the descriptors its `descriptors()` names, if it has
/// that member; the core's `token_` member receives the token.
template <class Core, class... Args>
std::shared_ptr<Core> make_registered(handle_kind kind, Args&&... args) {
    auto core = std::make_shared<Core>(std::forward<Args>(args)...);
    std::vector<int> fds;
    if constexpr (requires { core->descriptors(); })
        fds = core->descriptors();
    core->token_ = register_handle(core, kind, std::move(fds));
    return core;
}

/// Loads the core of a handle from its token (see find_handle).
template <class Core> std::shared_ptr<Core> load_registered(std::uint64_t token, handle_kind kind) {
    return std::static_pointer_cast<Core>(find_handle(token, kind));
}

/// Base of every registered core: unregisters on destruction.
class registered {
  public:
    registered() = default;
    registered(const registered&) = delete;
    registered& operator=(const registered&) = delete;
    ~registered() {
        if (token_ != 0)
            unregister_handle(token_);
    }
    std::uint64_t token() const noexcept { return token_; }

  private:
    template <class Core, class... Args>
    friend std::shared_ptr<Core> make_registered(handle_kind, Args&&...);
    std::uint64_t token_ = 0;
};

} // namespace coproc::detail
