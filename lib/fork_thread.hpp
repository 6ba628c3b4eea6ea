// Where coproc forks children that must die with their parent (private to the library).
//
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not when the process
// does. A child forked on a short-lived thread (a process started from a worker thread, a pool's
// fork server made by a thread that then ends) would be SIGKILLed when that thread returns. So
// such forks run on a thread that lives as long as the process: the main thread when it is the
// caller, otherwise one helper thread, started on first use and never stopped.
#pragma once

#include <functional>

namespace coproc::detail {

/// Runs `fn` (which forks) on a thread that lives as long as this process: right here if the
/// caller is the main thread (or the helper itself), else on the helper thread, waiting for it.
/// The helper runs with every signal blocked. Rethrows what `fn` threw; throws
/// std::system_error if the helper thread cannot be started. In the child of a fork made by
/// `fn`, `fn` must not return (it runs the child and _exit()s).
void run_on_lasting_thread(const std::function<void()>& fn);

} // namespace coproc::detail
