// coproc/detail/handler_work.hpp — outstanding work on a completion handler's executor, and
// posting a completion to that executor from a thread that does not run it.
#pragma once

#include <asio/associated_executor.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <type_traits>
#include <utility>

namespace coproc::detail {

/// `Handler`'s associated executor, counted as outstanding work while it exists: what a pending
/// operation keeps, so that the executor's run() does not return while it waits.
template <class Handler>
using handler_work_t =
    std::decay_t<decltype(asio::prefer(asio::get_associated_executor(std::declval<Handler&>()),
                                       asio::execution::outstanding_work.tracked))>;

template <class Handler> handler_work_t<Handler> handler_work(const Handler& h) {
    return asio::prefer(asio::get_associated_executor(h),
                        asio::execution::outstanding_work.tracked);
}

/// Posts `fn` to `ex` from a thread that may not be running `ex` (a helper thread, the pool's
/// loop thread). Asio's scheduler wakes a sleeping run() by signalling its condition variable
/// after releasing its mutex: were `fn` the context's last work, run() could return and the
/// context be destroyed before that signal is made. Work held on `ex` until post() has
/// returned keeps run() going until then.
template <class Executor, class Fn> void post_from_any_thread(const Executor& ex, Fn&& fn) {
    [[maybe_unused]] const auto busy = asio::prefer(ex, asio::execution::outstanding_work.tracked);
    asio::post(ex, std::forward<Fn>(fn));
}

} // namespace coproc::detail
