// coproc/detail/handler_slot.hpp — parks one Asio completion handler until an event happens.
//
// Used to suspend a coroutine (`co_await`) until a result arrives from another thread: the
// handler is stored with outstanding work on its executor (so that executor's run() does not
// return while it waits), and completing it posts it to that executor.
#pragma once

#include <coproc/detail/handler_work.hpp>

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/error.hpp>

#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <type_traits>
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
        explicit holder(Handler&& h) : handler(std::move(h)), work(handler_work(handler)) {}
        void post() override {
            const auto ex = asio::get_associated_executor(handler);
            post_from_any_thread(ex, std::move(handler));
        }
        Handler handler;
        handler_work_t<Handler> work;
    };
    std::unique_ptr<base> h_;
};

/// The exception a cancelled operation completes with, as Asio's own operations report it.
inline std::exception_ptr operation_aborted() {
    return std::make_exception_ptr(
        std::system_error(asio::error::make_error_code(asio::error::operation_aborted)));
}

/// Parked completion handlers that may each be cancelled: the waiters of one event (a pool
/// call's outcome, a pool's join, an imap's next result). The owner guards the list with its
/// mutex. A handler is posted to its associated executor (with work counted there while it is
/// parked) and invoked there as `finish(handler, aborted)`, after its cancellation slot is
/// cleared. The list is linked through the parked handlers themselves: an empty one is two
/// words, and parking allocates only the handler's holder.
class waiter_list {
    struct node {
        virtual ~node() = default;
        virtual void post(bool aborted) = 0;
        std::uint64_t id = 0;
        std::unique_ptr<node> next;
    };

  public:
    using id_type = std::uint64_t;

    waiter_list() = default;
    waiter_list(waiter_list&&) = delete;
    ~waiter_list() { take_all(); }

    bool empty() const noexcept { return head_ == nullptr; }

    /// Parks `h`, after those parked already. If it has a cancellation slot, `on_cancel(id)`
    /// is installed there: the owner then calls abort(its mutex, id).
    template <class Handler, class Finish, class OnCancel>
    void park(Handler h, Finish finish, OnCancel on_cancel) {
        auto p = std::make_unique<holder<Handler, Finish>>(std::move(h), std::move(finish));
        const id_type id = p->id = next_id_++;
        auto slot = asio::get_associated_cancellation_slot(p->handler);
        if (slot.is_connected())
            slot.assign([on_cancel = std::move(on_cancel), id](asio::cancellation_type) mutable {
                on_cancel(id);
            });
        std::unique_ptr<node>* tail = &head_;
        while (*tail)
            tail = &(*tail)->next;
        *tail = std::move(p);
    }

    /// Parked waiters taken out of a list, to post() once the owner's mutex is released (those
    /// never posted are destroyed with their handlers).
    class waiters {
      public:
        waiters() = default;
        waiters(waiters&&) noexcept = default;
        waiters& operator=(waiters&& o) noexcept {
            clear();
            head_ = std::move(o.head_);
            return *this;
        }
        ~waiters() { clear(); }
        explicit operator bool() const noexcept { return head_ != nullptr; }
        /// Posts each, in the order they were parked.
        void post(bool aborted) {
            while (auto p = std::move(head_)) {
                head_ = std::move(p->next);
                p->post(aborted);
            }
        }

      private:
        friend class waiter_list;
        explicit waiters(std::unique_ptr<node> head) noexcept : head_(std::move(head)) {}
        void clear() noexcept { // iteratively: a long list would recurse deeply otherwise
            while (auto p = std::move(head_))
                head_ = std::move(p->next);
        }
        std::unique_ptr<node> head_;
    };

    /// Takes out waiter `id` (empty if it is gone already).
    waiters take(id_type id) {
        for (std::unique_ptr<node>* at = &head_; *at; at = &(*at)->next)
            if ((*at)->id == id) {
                auto p = std::move(*at);
                *at = std::move(p->next);
                return waiters(std::move(p));
            }
        return {};
    }

    /// What an owner's on_cancel does: takes waiter `id` out under `owner_mutex`, the mutex
    /// guarding this list, then posts it aborted once that mutex is released.
    template <class Mutex> void abort(Mutex& owner_mutex, id_type id) {
        waiters w;
        {
            std::lock_guard lk(owner_mutex);
            w = take(id);
        }
        w.post(true);
    }

    /// Takes out every waiter.
    waiters take_all() noexcept { return waiters(std::move(head_)); }

  private:
    template <class Handler, class Finish> struct holder final : node {
        holder(Handler&& h, Finish&& f)
            : handler(std::move(h)), finish(std::move(f)), work(handler_work(handler)) {}
        void post(bool aborted) override {
            const auto ex = asio::get_associated_executor(handler);
            post_from_any_thread(
                ex, [h = std::move(handler), f = std::move(finish), aborted]() mutable {
                    asio::get_associated_cancellation_slot(h).clear();
                    f(h, aborted);
                });
        }
        Handler handler;
        Finish finish;
        handler_work_t<Handler> work;
    };
    std::unique_ptr<node> head_;
    id_type next_id_ = 1;
};

} // namespace coproc::detail
