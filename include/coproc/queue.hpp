// coproc/queue.hpp — queue<T> and joinable_queue<T>, shared by processes (Python's
// multiprocessing.Queue and JoinableQueue).
//
//   coproc::queue<std::string> q;          // unbounded; queue<T> q(8): at most 8 items
//   q.put(v)   q.get()   q.put_for(v, 1s)   q.get_for(1s)   q.qsize()   q.empty()   q.close()
//   co_await q.async_put(v)   co_await q.async_get()      (or any Asio completion token)
//   coproc::joinable_queue<int> jq;   jq.task_done()   jq.join()   co_await jq.async_join()
//
// Any number of processes put and get; each item is delivered to exactly one getter, whole.
// A queue is a handle: copies refer to the same queue, in this process and in every process
// forked after it was made (a `process` target, a pool worker). Pass it to a pool task only if it
// was created before the pool: a queue made after the pool's workers started does not exist in
// them, and the task fails with coproc::error saying so.
//
// put() blocks while a bounded queue is full. An unbounded queue holds what the kernel's socket
// buffer holds (thousands of small items, any size each: big items travel out of line), then
// put() waits for getters, like writing to a pipe. So, as in Python, do not join a process
// that still has items to put before getting them. qsize() is approximate while others work.
#pragma once

#include <coproc/detail/async_op.hpp>
#include <coproc/detail/handle.hpp>
#include <coproc/error.hpp>
#include <coproc/serialize.hpp>

#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {

class blocking_runner;
struct queue_shared;
struct async_put_state;

/// The shared state of a queue: a SOCK_SEQPACKET socket pair, an eventfd counting free slots
/// (bounded queues) and counters in shared memory.
class queue_core final : public registered {
  public:
    explicit queue_core(std::size_t maxsize);
    ~queue_core();
    /// false if `deadline` passed first (none: wait for ever).
    bool put(std::span<const char> msg, std::optional<clock::time_point> deadline);
    std::optional<std::vector<char>> get(std::optional<clock::time_point> deadline);
    /// A put for async_put that owns its item; try_put() advances it, destroying it before it
    /// is done gives back what it took.
    std::shared_ptr<async_put_state> start_put(std::vector<char> msg);
    /// One non-blocking step of `p`: op_done once the item is in, else nullopt with `next` set.
    static std::optional<op_done> try_put(async_put_state& p, wait_for& next);
    /// One non-blocking get: the next item, or nullopt with `next` set to what to wait for.
    std::optional<std::vector<char>> try_get(wait_for& next);
    std::size_t qsize() const;
    void close() noexcept;
    void task_done();
    void join();
    /// join() that also returns once `stop` is set and wake_joiners() called (async_join).
    void join(const std::atomic<bool>& stop);
    void wake_joiners() noexcept;
    blocking_runner& runner() noexcept { return *runner_; }
    /// Its descriptors, which a pool started with close_fds keeps open in its workers.
    std::vector<int> descriptors() const { return {put_fd_, get_fd_, slots_fd_}; }

  private:
    friend class put_op;
    int fd(const std::atomic<int>& f) const;
    std::optional<std::vector<char>> receive(int flags);

    const std::size_t maxsize_;
    std::atomic<int> put_fd_{-1}, get_fd_{-1}, slots_fd_{-1};
    queue_shared* shared_;
    std::unique_ptr<blocking_runner> runner_;
};

template <class T> std::vector<char> encode(const T& v) {
    std::vector<char> buf;
    serialize_into(buf, v);
    return buf;
}

} // namespace detail

/// A multi-producer, multi-consumer queue of `T` shared by processes.
template <class T> class queue {
  public:
    /// A new queue holding at most `maxsize` items (0: unbounded, see the top of the file).
    explicit queue(std::size_t maxsize = 0)
        : core_(detail::make_registered<detail::queue_core>(detail::handle_kind::queue, maxsize)) {}

    /// Puts `v`, waiting while the queue is full.
    void put(const T& v) { core_->put(detail::encode(v), std::nullopt); }
    /// Puts `v` if room appears within `timeout`; false if not (nothing was put).
    template <class Rep, class Period>
    bool put_for(const T& v, std::chrono::duration<Rep, Period> timeout) {
        return core_->put(detail::encode(v), detail::deadline_after(timeout));
    }
    /// Takes the next item, waiting until there is one.
    T get() { return decode(*core_->get(std::nullopt)); }
    /// Takes the next item if one arrives within `timeout`.
    template <class Rep, class Period>
    std::optional<T> get_for(std::chrono::duration<Rep, Period> timeout) {
        auto msg = core_->get(detail::deadline_after(timeout));
        if (!msg)
            return std::nullopt;
        return decode(*msg);
    }

    /// Puts `v` without blocking the event-loop thread: an asynchronous operation with
    /// completion signature `void(std::exception_ptr)` and any completion token (default
    /// `asio::use_awaitable`: `co_await q.async_put(v)`). Waits on the handler's associated
    /// executor and completes there. Errors as put().
    /// Cancellation (the handler's cancellation slot, any type): completes at once with
    /// std::system_error(asio::error::operation_aborted) if the item was not put yet (nothing
    /// is put then); an item already in the queue completes the operation successfully.
    template <class Token = asio::use_awaitable_t<>> auto async_put(T v, Token&& token = {}) {
        return detail::async_poll<void>(
            [put = core_->start_put(detail::encode(v))](detail::wait_for& next) {
                return detail::queue_core::try_put(*put, next);
            },
            std::forward<Token>(token));
    }
    /// Takes the next item without blocking the event-loop thread: an asynchronous operation
    /// with completion signature `void(std::exception_ptr, T)` and any completion token
    /// (default `asio::use_awaitable`: `T v = co_await q.async_get()`). Waits on the handler's
    /// associated executor and completes there. Errors as get().
    /// Cancellation (the handler's cancellation slot, any type): completes at once with
    /// std::system_error(asio::error::operation_aborted) and takes no item (the next get gets
    /// it), unless an item was already taken (it is then delivered).
    /// Example: `co_await (q.async_get() || timer.async_wait(asio::use_awaitable))`.
    template <class Token = asio::use_awaitable_t<>> auto async_get(Token&& token = {}) {
        return detail::async_poll<T>(
            [core = core_](detail::wait_for& next) -> std::optional<T> {
                if (auto msg = core->try_get(next))
                    return decode(*msg);
                return std::nullopt;
            },
            std::forward<Token>(token));
    }

    /// Whether the queue holds no items (approximate while others put and get). Throws
    /// coproc::error after close().
    bool empty() const { return qsize() == 0; }
    /// The number of items in the queue (approximate while others put and get). Throws
    /// coproc::error after close().
    std::size_t qsize() const { return core_->qsize(); }
    /// Releases this process's descriptors of the queue (for every copy of the handle here);
    /// using the queue afterwards in this process throws coproc::error. Others are unaffected.
    void close() noexcept { core_->close(); }

    /// cereal: a queue travels to a pool worker as its registry token (see the top of the file).
    template <class Archive> void save(Archive& ar) const { ar(core_->token()); }
    template <class Archive> void load(Archive& ar) {
        std::uint64_t token = 0;
        ar(token);
        core_ = detail::load_registered<detail::queue_core>(token, detail::handle_kind::queue);
    }

  protected:
    static T decode(std::span<const char> msg) {
        T v{};
        deserialize_from(msg, v);
        return v;
    }

    std::shared_ptr<detail::queue_core> core_;
};

/// A queue whose getters report each item done (Python's JoinableQueue).
template <class T> class joinable_queue : public queue<T> {
  public:
    using queue<T>::queue;

    /// Marks one item taken with get() as processed. Throws coproc::error if called more
    /// times than items were put.
    void task_done() { this->core_->task_done(); }
    /// Waits until every item put has been marked with task_done().
    void join() { this->core_->join(); }
    /// join() without blocking the event-loop thread (the wait runs on a helper thread): an
    /// asynchronous operation with completion signature `void(std::exception_ptr)` and any
    /// completion token (default `asio::use_awaitable`). Completes on the handler's associated
    /// executor.
    /// Cancellation (any type): completes at once with
    /// std::system_error(asio::error::operation_aborted); the helper thread stops waiting.
    template <class Token = asio::use_awaitable_t<>> auto async_join(Token&& token = {}) {
        auto& core = this->core_;
        return detail::async_blocking(
            core->runner(), [core](const std::atomic<bool>& stop) { core->join(stop); },
            [core] { core->wake_joiners(); }, std::forward<Token>(token));
    }
};

} // namespace coproc
