// coproc/this_task.hpp — what a task function may ask about the task it is running.
//
//   int count_up(int n) {                        // a polite task: it returns when cancelled
//       int i = 0;
//       for (; i < n && !coproc::this_task::stop_requested(); ++i) step();
//       return i;
//   }
//
// A pool call whose operation is cancelled (its cancellation slot, async_result::cancel(),
// an imap generator destroyed) drops its tasks that have not started; a task already running
// sees stop_requested() turn true and has pool_options::cancel_grace to return before its
// worker is killed and replaced. Whatever a cancelled task returns is discarded.
#pragma once

namespace coproc::this_task {

/// True once the pool task running in this worker process has been cancelled. Cheap (one
/// load from memory shared with the parent): poll it in long loops. Any thread of the task
/// may call it. Always false outside a pool task (in the parent, in a `process` target).
bool stop_requested() noexcept;

} // namespace coproc::this_task
