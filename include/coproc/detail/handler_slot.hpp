// coproc/detail/handler_slot.hpp — parks one Asio completion handler until an event happens.
//
// Used to suspend a coroutine (`co_await`) until a result arrives from another thread: the
// handler is stored with outstanding work on its executor (so that executor's run() does not
// return while it waits), and completing it posts it to that executor.
#pragma once

#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace coproc::detail {

class handler_slot {
  public:
    bool empty() const noexcept { return !h_; }

    template <class Handler> void set(Handler&& h) {
        h_ = std::make_unique<holder<std::decay_t<Handler>>>(std::forward<Handler>(h));
    }

    /// Posts the parked handler (if any) to its executor.
    void post() {
        if (auto h = std::move(h_))
            h->post();
    }

  private:
    struct base {
        virtual ~base() = default;
        virtual void post() = 0;
    };
    template <class Handler> struct holder final : base {
        explicit holder(Handler&& h)
            : handler(std::move(h)),
              work(asio::prefer(asio::get_associated_executor(handler),
                                asio::execution::outstanding_work.tracked)) {}
        void post() override {
            auto ex = asio::get_associated_executor(handler);
            asio::post(ex, std::move(handler));
        }
        Handler handler;
        decltype(asio::prefer(asio::get_associated_executor(std::declval<Handler&>()),
                              asio::execution::outstanding_work.tracked)) work;
    };
    std::unique_ptr<base> h_;
};

/// Parks any number of handlers (several coroutines awaiting one result); post() posts all.
class handler_slots {
  public:
    bool empty() const noexcept { return slots_.empty(); }

    template <class Handler> void set(Handler&& h) {
        slots_.emplace_back().set(std::forward<Handler>(h));
    }

    void post() {
        auto all = std::exchange(slots_, {});
        for (auto& s : all)
            s.post();
    }

  private:
    std::vector<handler_slot> slots_;
};

/// Completes (posts) at once if `ready()` holds under `m`, else parks the handler in `slot` (a
/// handler_slot or handler_slots); whoever makes `ready()` true later calls `slot.post()` under
/// the same mutex's protection.
template <class Token, class Slot, class Ready>
auto async_wait_until(std::mutex& m, Slot& slot, Ready ready, Token&& token) {
    return asio::async_initiate<Token, void()>(
        [&m, &slot, ready](auto handler) {
            std::unique_lock lk(m);
            if (ready()) {
                lk.unlock();
                auto ex = asio::get_associated_executor(handler);
                asio::post(ex, std::move(handler));
            } else {
                slot.set(std::move(handler));
            }
        },
        token);
}

} // namespace coproc::detail
