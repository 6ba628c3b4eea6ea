// coproc/pipe.hpp — pipe<T>, two connected ends (Python's multiprocessing.Pipe).
//
//   auto [parent_conn, child_conn] = coproc::pipe<std::string>();    // duplex
//   auto [r, w] = coproc::pipe<int>(false);     // one-way: r receives, w sends (Python's order)
//   conn.send(v)   conn.recv()   conn.poll(100ms)   conn.send_bytes(bytes)   conn.recv_bytes()
//   co_await conn.async_send(v)   co_await conn.async_recv()   conn.close()   (any Asio token)
//
// Messages are length-prefixed frames of cereal-binary payload (send_bytes: raw bytes) on a
// Unix stream socket; any size works. A connection is a handle: copies share one descriptor,
// which processes forked afterwards inherit (pass one end to a `process` target). Pass it to a
// pool task only if it was made before the pool: a connection made after the pool's workers
// started does not exist in them, and the task fails with coproc::error saying so.
//
// End of stream: recv() throws coproc::eof_error once every copy of the other end is closed
// (close(), or its processes exited) and nothing is left to read; send() throws eof_error when
// the other end is gone. As in Python, the parent should close() its copy of the child's end
// after starting the child, or it keeps that end open itself.
//
// One sender and one receiver at a time per end (as in Python): concurrent sends or recvs on the
// same end may interleave frames. An end may change hands between processes; an async_recv
// cancelled (or abandoned) mid-message leaves its part for the next recv on that end in the same
// process.
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
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace coproc {

namespace detail {

struct conn_rx;
struct async_send_state;

/// One end of a pipe: a socket, which ways it may be used, the frame being received, and
/// counters shared with the other end (see pipe.cpp).
class conn_core final : public registered {
  public:
    /// Owns `fd` from the start. `rx`: this end's receive state (null if it only sends), `peer_rx`
    /// the other end's (null if this end only receives), both in `shared`.
    conn_core(int fd, bool readable, bool writable, std::shared_ptr<void> shared, conn_rx* rx,
              conn_rx* peer_rx) noexcept;
    ~conn_core();
    void send(std::span<const std::byte> payload);
    /// The next message; valid until the next receive on this end in this process.
    std::span<const char> recv();
    bool poll(clock::time_point deadline);
    void close() noexcept;
    /// A send for async_send that owns its payload; try_send() advances it.
    static std::shared_ptr<async_send_state> start_send(std::shared_ptr<conn_core> self,
                                                        std::vector<char> payload);
    /// One non-blocking step of `s`: op_done once the whole frame is sent, else nullopt with
    /// `next` set (not cancellable once part of the frame is out).
    static std::optional<op_done> try_send(async_send_state& s, wait_for& next);
    /// One non-blocking receive: the next message (valid until the next receive on this end in
    /// this process), or nullopt with `next` set; a partial frame stays in this end.
    std::optional<std::span<const char>> try_recv(wait_for& next);
    /// Its descriptor, which a pool started with close_fds keeps open in its workers.
    std::vector<int> descriptors() const { return {fd_}; }

  private:
    int fd_for(bool write) const;
    std::optional<std::span<const char>> recv_step(int fd, int flags);
    std::atomic<int> fd_;
    const bool readable_, writable_;
    std::shared_ptr<void> shared_;
    conn_rx* const rx_;
    conn_rx* const peer_rx_;
    // A message too big for the receive buffer (in *rx_) is received here.
    std::unique_ptr<char[]> big_;
    std::size_t big_capacity_ = 0, big_size_ = 0, big_got_ = 0;
    bool big_pending_ = false;
};

std::pair<std::shared_ptr<conn_core>, std::shared_ptr<conn_core>> make_pipe(bool duplex);

inline std::span<const char> as_chars(const std::vector<std::byte>& v) noexcept {
    return {reinterpret_cast<const char*>(v.data()), v.size()};
}

template <class T> T decode(std::span<const char> bytes) {
    T v{};
    deserialize_from(bytes, v);
    return v;
}

} // namespace detail

template <class T> class connection;

/// A pair of connected ends: duplex (both send and receive), or one-way (first receives,
/// second sends). Throws std::system_error if the socket cannot be made.
template <class T> std::pair<connection<T>, connection<T>> pipe(bool duplex = true) {
    auto [a, b] = detail::make_pipe(duplex);
    return {connection<T>(std::move(a)), connection<T>(std::move(b))};
}

/// One end of a pipe carrying values of type `T`.
template <class T> class connection {
  public:
    /// Not connected; every operation throws coproc::error (assign a pipe end to it).
    connection() noexcept = default;

    /// Sends `v` (blocks while the socket is full). Throws eof_error if the other end is gone.
    void send(const T& v) {
        std::vector<char> buf;
        serialize_into(buf, v);
        core().send(std::as_bytes(std::span(buf)));
    }
    /// Receives the next value. Throws eof_error once the other end is closed and drained.
    T recv() { return detail::decode<T>(core().recv()); }
    /// Whether data (or end of stream) is ready to read: now, or within `timeout`.
    bool poll() { return core().poll(detail::clock::now()); }
    template <class Rep, class Period> bool poll(std::chrono::duration<Rep, Period> timeout) {
        return core().poll(detail::deadline_after(timeout));
    }
    /// Sends raw bytes as one message (read with recv_bytes()).
    void send_bytes(std::span<const std::byte> bytes) { core().send(bytes); }
    /// Receives one message as raw bytes.
    std::vector<std::byte> recv_bytes() {
        const auto msg = std::as_bytes(core().recv());
        return {msg.begin(), msg.end()};
    }

    /// Sends `v` without blocking the event-loop thread: an asynchronous operation with
    /// completion signature `void(std::exception_ptr)` and any completion token (default
    /// `asio::use_awaitable`: `co_await conn.async_send(v)`). Waits on the handler's associated
    /// executor and completes there. Errors as send().
    /// Cancellation (the handler's cancellation slot, any type): completes at once with
    /// std::system_error(asio::error::operation_aborted) if no byte of the message was sent
    /// (nothing is sent then). A message partly sent (larger than the socket takes at once) is
    /// never cut: the send finishes it and completes successfully.
    template <class Token = asio::use_awaitable_t<>> auto async_send(T v, Token&& token = {}) {
        std::vector<char> buf;
        serialize_into(buf, v);
        return detail::async_poll<void>(
            [send = detail::conn_core::start_send(core_ptr(), std::move(buf))](
                detail::wait_for& next) { return detail::conn_core::try_send(*send, next); },
            std::forward<Token>(token));
    }
    /// Receives the next value without blocking the event-loop thread: an asynchronous
    /// operation with completion signature `void(std::exception_ptr, T)` and any completion
    /// token (default `asio::use_awaitable`: `T v = co_await conn.async_recv()`). Waits on the
    /// handler's associated executor and completes there. Errors as recv().
    /// Cancellation (the handler's cancellation slot, any type): completes at once with
    /// std::system_error(asio::error::operation_aborted) and consumes no message: the next
    /// receive on this end gets it (part of a message already read stays in this end, for the
    /// next receive in this process). A message already received is delivered instead.
    template <class Token = asio::use_awaitable_t<>> auto async_recv(Token&& token = {}) {
        return detail::async_poll<T>(
            [core = core_ptr()](detail::wait_for& next) -> std::optional<T> {
                if (auto msg = core->try_recv(next))
                    return detail::decode<T>(*msg);
                return std::nullopt;
            },
            std::forward<Token>(token));
    }

    /// Closes this process's descriptor of this end (every copy of the handle here).
    void close() noexcept {
        if (core_)
            core_->close();
    }

    /// cereal: a connection travels to a pool worker as its registry token (see the top).
    template <class Archive> void save(Archive& ar) const { ar(core_ptr()->token()); }
    template <class Archive> void load(Archive& ar) {
        std::uint64_t token = 0;
        ar(token);
        core_ = detail::load_registered<detail::conn_core>(token, detail::handle_kind::connection);
    }

  private:
    template <class U> friend std::pair<connection<U>, connection<U>> pipe(bool);
    explicit connection(std::shared_ptr<detail::conn_core> c) noexcept : core_(std::move(c)) {}

    const std::shared_ptr<detail::conn_core>& core_ptr() const {
        if (!core_)
            throw coproc::error("connection: not connected (default-constructed)");
        return core_;
    }
    detail::conn_core& core() const { return *core_ptr(); }

    std::shared_ptr<detail::conn_core> core_;
};

} // namespace coproc
