// What becomes of a dead worker's jobs (private to the library): a task runs at most once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace coproc::detail {

/// What becomes of a dead worker's jobs, as indexes into its in-flight list.
struct loss_plan {
    struct failure {
        std::size_t job;
        bool ran; // it ran to the end, but its reply died with the worker
    };
    std::vector<failure> failures;    // in delivery order: the lost jobs before those that ran
    std::vector<std::size_t> requeue; // never started: run again, in this order
};

/// `inflight` holds the ids of the jobs handed to a worker that died, in the order it runs
/// them; `running` is the id it was running (its slot's task_id, 0: none), `finished` the last
/// it ran to the end (done_id, 0: none). The job it was running fails, and so does every job
/// of a worker that broke the protocol; those up to `finished` ran to the end but their
/// replies (batched, unwritten) died with it: they fail rather than run twice; the others are
/// run again. The culprit's failure comes first, so a call reports the cause.
loss_plan plan_losses(std::span<const std::uint64_t> inflight, std::uint64_t running,
                      std::uint64_t finished, bool protocol_error);

} // namespace coproc::detail
