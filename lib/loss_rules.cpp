// What becomes of a dead worker's jobs (see loss_rules.hpp).
#include "loss_rules.hpp"

#include <algorithm>

namespace coproc::detail {

loss_plan plan_losses(std::span<const std::uint64_t> inflight, std::uint64_t running,
                      std::uint64_t finished, bool protocol_error) {
    loss_plan plan;
    std::vector<loss_plan::failure> ran_to_the_end; // failed after the culprit
    // Jobs before `finished` (and it) ran: a worker runs its jobs in order.
    bool ran =
        finished != 0 && std::find(inflight.begin(), inflight.end(), finished) != inflight.end();
    for (std::size_t i = 0; i < inflight.size(); ++i) {
        const bool was_run = ran;
        if (inflight[i] == finished)
            ran = false;
        if (protocol_error || (!was_run && inflight[i] == running))
            plan.failures.push_back({i, false});
        else if (was_run)
            ran_to_the_end.push_back({i, true});
        else
            plan.requeue.push_back(i);
    }
    plan.failures.insert(plan.failures.end(), ran_to_the_end.begin(), ran_to_the_end.end());
    return plan;
}

} // namespace coproc::detail
