// Task frame authentication: a per-pool key and the MAC a task frame carries (private to the
// library; the frame layout is in include/coproc/detail/wire.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace coproc::detail {

/// A 128-bit SipHash key. Each pool draws its own when it is made, before anything is forked,
/// so its fork server and workers inherit it (worker_config::key).
struct task_key {
    std::uint64_t k0 = 0;
    std::uint64_t k1 = 0;

    /// A fresh key from getrandom(2); throws std::system_error if the kernel gives none.
    static task_key random();
};

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of the `len` bytes at `data`.
std::uint64_t siphash24(const task_key& key, const void* data, std::size_t len) noexcept;

/// The prefix of a task frame's payload.
struct task_prefix {
    std::int64_t entry; // the task_entry's offset from function_anchor
    std::int64_t fn;    // the function's offset from function_anchor
    std::uint64_t mac;  // task_mac(); entry_digest() until the pool seals the frame
};

/// The MAC of a task frame: SipHash-2-4 under the pool's key of its entry and function offsets
/// and the entry's digest (its signature hash and invoker, see entry_digest()).
std::uint64_t task_mac(const task_key& key, std::int64_t entry, std::int64_t fn,
                       std::uint64_t digest) noexcept;

/// task_mac() under one key, computed again only when the prefix differs from the last one's:
/// the MAC depends on the key and the prefix alone, and a map's frames all carry one prefix.
class mac_memo {
  public:
    explicit mac_memo(const task_key& key) noexcept : key_(key) {}
    std::uint64_t operator()(std::int64_t entry, std::int64_t fn, std::uint64_t digest) noexcept;
    /// Replaces the entry digest in the prefix of the task frame `frame` (header included) by
    /// the frame's MAC. Call once per frame, when the pool first hands it to a worker.
    void seal(std::vector<char>& frame) noexcept;

  private:
    task_key key_;
    task_prefix last_{}; // the last prefix as unsealed: its `mac` holds the entry digest
    std::uint64_t last_mac_ = 0;
    bool known_ = false;
};

/// mac_memo(key).seal(frame).
void seal_task_frame(std::vector<char>& frame, const task_key& key) noexcept;

} // namespace coproc::detail
