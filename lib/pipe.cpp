// pipe: frames (8-byte length, then payload) on an AF_UNIX stream socket.
//
// Send: one sendmsg of header and payload. Blocking calls make blocking syscalls (the socket
// stays in blocking mode, see io.hpp), so a send is one syscall; asynchronous operations pass
// MSG_DONTWAIT and wait, cancellably, on their handler's executor (async_op.hpp).
//
// Receive: one recv takes as much as the 64 KiB receive buffer holds, so a stream of small
// messages costs the receiver one syscall for many of them. The buffer is in memory shared by
// the processes that hold the end, so messages received from the socket by one process and not
// yet handed out are there for the next process that receives on the end (one that was forked
// before, too): an end can change hands at any point. (Two processes receiving on one end at the
// same time may split a message between them, with or without this buffer, as in Python.)
// Before the receiver sleeps on an empty socket it watches, for up to spin_budget, a byte
// counter the sender bumps in shared memory, so a steady stream or a quick reply is received
// without a sleep and a cross-CPU wake-up, the dominant cost on a VM.
// A frame cut short (an abandoned async_recv) stays for the next receive. A body too big for the
// receive buffer is received straight into this process's buffer kept for the next big frame
// (no allocation, zeroing or page faults per message; part of such a body stays for the next
// receive in this process only), and the typed recv() decodes from where the bytes are, without
// copying them first. That buffer grows as the body arrives (from 1 MiB, doubling), never to
// the size a header claims up front.
#include <coproc/pipe.hpp>
#include "io.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

namespace coproc::detail {

namespace {

// A length above this is a corrupt stream, not a message (cereal itself would give up first).
constexpr std::uint64_t max_frame = std::uint64_t{1} << 40;
constexpr std::uint32_t rx_capacity = 64 * 1024;
// A send of more than this is announced to the receiver while it is under way.
constexpr std::size_t big_send = 64 * 1024;
// A big-frame buffer larger than this is freed after use rather than kept.
constexpr std::size_t big_keep_limit = 16 << 20;
// A big-frame buffer starts at most this big and doubles as the body arrives, so that a header
// claiming more than is sent cannot make the receiver allocate it.
constexpr std::size_t big_first_size = 1 << 20;

using header = std::uint64_t;

[[noreturn]] void throw_eof(const char* what) { throw eof_error(what); }

} // namespace

/// What a receiving end keeps in memory shared by the processes that hold the pipe: two byte
/// counters that let a receiver see, without a syscall, whether the socket is empty and whether
/// a send has just completed (hints only: it always ends with a real recv); and the bytes
/// received from the socket and not yet handed out, [begin, end) of `data`, where whichever
/// process receives next on this end finds them.
struct conn_rx {
    alignas(64) std::atomic<std::uint64_t> sent{0}; // by the peer, after each sendmsg
    std::atomic<std::uint32_t> sending{0}; // big sends under way (their bytes flow before `sent`)
    alignas(64) std::atomic<std::uint64_t> received{0};
    std::uint32_t begin = 0, end = 0;
    alignas(64) char data[rx_capacity];
};

namespace {

/// The length in the header at `bytes`, if they hold a whole header.
std::optional<header> frame_length(const char* bytes, std::size_t avail) noexcept {
    header len;
    if (avail < sizeof len)
        return std::nullopt;
    std::memcpy(&len, bytes, sizeof len);
    return len;
}

/// A frame being sent.
class frame_out {
  public:
    frame_out(std::span<const std::byte> body, conn_rx* peer) noexcept
        : header_(body.size()), body_(body), peer_(peer) {}

    /// Sends what the socket takes (with MSG_DONTWAIT in `flags`) or everything (without: a
    /// blocking send on a blocking socket); true once everything is sent.
    bool step(int fd, int flags) {
        const std::size_t total = sizeof header_ + body_.size();
        // A big send returns only once the receiver has taken most of it: say it is under way,
        // so that the receiver does not wait for `sent` to move meanwhile.
        struct under_way {
            conn_rx* rx;
            explicit under_way(conn_rx* r) noexcept : rx(r) {
                if (rx)
                    rx->sending.fetch_add(1, std::memory_order_relaxed);
            }
            ~under_way() {
                if (rx)
                    rx->sending.fetch_sub(1, std::memory_order_relaxed);
            }
        } mark(total > big_send ? peer_ : nullptr);
        while (done_ < total) {
            iovec iov[2];
            int n = 0;
            if (done_ < sizeof header_)
                iov[n++] = {reinterpret_cast<char*>(&header_) + done_, sizeof header_ - done_};
            const std::size_t body_done = done_ > sizeof header_ ? done_ - sizeof header_ : 0;
            if (body_done < body_.size())
                iov[n++] = {const_cast<std::byte*>(body_.data()) + body_done,
                            body_.size() - body_done};
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = static_cast<std::size_t>(n);
            const ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (would_block())
                    return false;
                if (errno == EPIPE || errno == ECONNRESET)
                    throw_eof("connection: the other end was closed");
                throw os_error("connection: send failed");
            }
            done_ += static_cast<std::size_t>(w);
            peer_->sent.fetch_add(static_cast<std::uint64_t>(w), std::memory_order_release);
        }
        return true;
    }

    /// Whether part of the frame is out (it must then be finished).
    bool started() const noexcept { return done_ > 0; }

  private:
    header header_;
    std::span<const std::byte> body_;
    conn_rx* peer_;
    std::size_t done_ = 0;
};

} // namespace

conn_core::conn_core(int fd, bool readable, bool writable, std::shared_ptr<void> shared,
                     conn_rx* rx, conn_rx* peer_rx) noexcept
    : fd_(fd), readable_(readable), writable_(writable), shared_(std::move(shared)), rx_(rx),
      peer_rx_(peer_rx) {}

conn_core::~conn_core() { close(); }

void conn_core::close() noexcept {
    const int fd = fd_.exchange(-1);
    if (fd >= 0)
        ::close(fd);
}

int conn_core::fd_for(bool write) const {
    if (write ? !writable_ : !readable_)
        throw coproc::error(write ? "connection: this end only receives (pipe(false) gives "
                                    "(receiver, sender))"
                                  : "connection: this end only sends (pipe(false) gives "
                                    "(receiver, sender))");
    const int fd = fd_.load();
    if (fd < 0)
        throw coproc::error("connection: used after close()");
    return fd;
}

// The next frame, receiving what is needed: `flags` 0 blocks in recv (one syscall when a
// message arrives), MSG_DONTWAIT returns nullopt when nothing more has arrived. A blocking call
// on a socket someone made non-blocking returns nullopt too (the caller polls).
std::optional<std::span<const char>> conn_core::recv_step(int fd, int flags) {
    conn_rx& rx = *rx_;
    char* const data = rx.data;
    if (!big_pending_ && big_capacity_ > big_keep_limit) {
        big_.reset();
        big_capacity_ = 0;
    }
    for (;;) {
        if (big_pending_) {
            while (big_got_ < big_size_) {
                if (big_got_ == big_capacity_) {
                    const std::size_t cap = std::min(big_size_, 2 * big_capacity_);
                    std::unique_ptr<char[]> bigger(new char[cap]); // uninitialised: recv fills it
                    std::memcpy(bigger.get(), big_.get(), big_got_);
                    big_ = std::move(bigger);
                    big_capacity_ = cap;
                }
                const std::size_t room = std::min(big_size_, big_capacity_) - big_got_;
                const ssize_t r = ::recv(fd, big_.get() + big_got_, room, flags);
                if (r > 0) {
                    big_got_ += static_cast<std::size_t>(r);
                    rx.received.fetch_add(static_cast<std::uint64_t>(r), std::memory_order_relaxed);
                    continue;
                }
                if (r == 0 || errno == ECONNRESET) {
                    big_pending_ = false;
                    throw_eof("connection: the other end was closed in the middle of a message");
                }
                if (would_block())
                    return std::nullopt;
                if (errno != EINTR)
                    throw os_error("connection: recv failed");
            }
            big_pending_ = false;
            return std::span<const char>(big_.get(), big_size_);
        }
        const std::uint32_t b = rx.begin, e = rx.end;
        if (b > e || e > rx_capacity)
            throw coproc::error("connection: receive state corrupt (two threads receiving on one "
                                "end at once?)");
        const std::size_t avail = e - b;
        if (const auto length = frame_length(data + b, avail)) {
            const header len = *length;
            if (len > max_frame)
                throw coproc::error("connection: corrupt stream (a frame of " +
                                    std::to_string(len) + " bytes)");
            if (avail - sizeof len >= len) {
                const auto next = static_cast<std::uint32_t>(b + sizeof len + len);
                if (next == e)
                    rx.begin = rx.end = 0; // the next recv fills from the start
                else
                    rx.begin = next;
                return std::span<const char>(data + b + sizeof len, len);
            }
            if (sizeof len + len > rx_capacity) {
                const std::size_t have = avail - sizeof len;
                if (const std::size_t first = std::min<std::size_t>(len, big_first_size);
                    big_capacity_ < first) {
                    big_.reset(); // first, so that the old and new buffers never coexist
                    big_capacity_ = 0;
                    big_.reset(new char[first]); // uninitialised: recv fills it
                    big_capacity_ = first;
                }
                std::memcpy(big_.get(), data + b + sizeof len, have);
                big_size_ = len;
                big_got_ = have;
                big_pending_ = true;
                rx.begin = rx.end = 0;
                continue;
            }
        }
        // An incomplete frame (it fits in `data`, see above): receive the rest of it and
        // whatever follows, as far as `data` goes.
        std::uint32_t at = e;
        if (b > 0) {
            std::memmove(data, data + b, avail);
            rx.begin = 0;
            rx.end = at = static_cast<std::uint32_t>(avail);
        }
        const std::size_t want = rx_capacity - at;
        if (flags == 0 && avail == 0) {
            // About to sleep if the socket is empty: first watch for a send for a moment.
            const std::uint64_t got = rx.received.load(std::memory_order_relaxed);
            spin_until(
                [&] {
                    return rx.sent.load(std::memory_order_acquire) != got ||
                           rx.sending.load(std::memory_order_relaxed) != 0;
                },
                spin_budget);
        }
        const ssize_t r = ::recv(fd, data + at, want, flags);
        if (r > 0) {
            rx.end = at + static_cast<std::uint32_t>(r);
            rx.received.fetch_add(static_cast<std::uint64_t>(r), std::memory_order_relaxed);
            continue;
        }
        if (r == 0 || errno == ECONNRESET)
            throw_eof(avail == 0 ? "connection: the other end was closed"
                                 : "connection: the other end was closed in the middle of a "
                                   "message");
        if (would_block())
            return std::nullopt;
        if (errno != EINTR)
            throw os_error("connection: recv failed");
    }
}

void conn_core::send(std::span<const std::byte> payload) {
    const int fd = fd_for(true);
    frame_out f(payload, peer_rx_);
    while (!f.step(fd, 0))
        wait_fd(fd, POLLOUT, std::nullopt);
}

std::span<const char> conn_core::recv() {
    const int fd = fd_for(false);
    for (;;) {
        if (auto msg = recv_step(fd, 0))
            return *msg;
        wait_fd(fd, POLLIN, std::nullopt);
    }
}

bool conn_core::poll(clock::time_point deadline) {
    const int fd = fd_for(false);
    // A whole frame already received from the socket (part of one waits for the rest).
    const conn_rx& rx = *rx_;
    const std::size_t avail = rx.end > rx.begin ? rx.end - rx.begin : 0;
    if (const auto len = frame_length(rx.data + rx.begin, avail);
        len && avail - sizeof(header) >= *len)
        return true;
    return wait_fd(fd, POLLIN, deadline);
}

/// A frame being sent by async_send, with its payload and its connection.
struct async_send_state {
    async_send_state(std::shared_ptr<conn_core> c, std::vector<char> p, conn_rx* peer)
        : core(std::move(c)), payload(std::move(p)),
          frame(std::as_bytes(std::span(payload)), peer) {}
    std::shared_ptr<conn_core> core;
    std::vector<char> payload;
    frame_out frame;
};

std::shared_ptr<async_send_state> conn_core::start_send(std::shared_ptr<conn_core> self,
                                                        std::vector<char> payload) {
    conn_rx* const peer = self->peer_rx_;
    return std::make_shared<async_send_state>(std::move(self), std::move(payload), peer);
}

std::optional<op_done> conn_core::try_send(async_send_state& s, wait_for& next) {
    const int fd = s.core->fd_for(true);
    if (s.frame.step(fd, MSG_DONTWAIT))
        return op_done{};
    next = {fd, true, !s.frame.started()};
    return std::nullopt;
}

std::optional<std::span<const char>> conn_core::try_recv(wait_for& next) {
    const int fd = fd_for(false);
    auto msg = recv_step(fd, MSG_DONTWAIT);
    if (!msg)
        next = {fd, false};
    return msg;
}

std::pair<std::shared_ptr<conn_core>, std::shared_ptr<conn_core>> make_pipe(bool duplex) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw os_error("pipe: socketpair failed");
    unique_fd a(sv[0]), b(sv[1]);
    if (!duplex) {
        ::shutdown(sv[0], SHUT_WR);
        ::shutdown(sv[1], SHUT_RD);
    }
    // rx[0] receives at the first end (what the second sends), rx[1] at the second.
    auto* rx = static_cast<conn_rx*>(map_shared(2 * sizeof(conn_rx), "pipe: mmap failed"));
    new (&rx[0]) conn_rx;
    new (&rx[1]) conn_rx;
    std::shared_ptr<void> shared;
    try {
        shared = std::shared_ptr<void>(rx, [](void* p) { ::munmap(p, 2 * sizeof(conn_rx)); });
    } catch (...) {
        ::munmap(rx, 2 * sizeof(conn_rx));
        throw;
    }
    auto first = make_registered<conn_core>(handle_kind::connection, a.get(), true, duplex, shared,
                                            &rx[0], duplex ? &rx[1] : nullptr);
    a.release();
    auto second = make_registered<conn_core>(handle_kind::connection, b.get(), duplex, true,
                                             std::move(shared), duplex ? &rx[1] : nullptr, &rx[0]);
    b.release();
    return {std::move(first), std::move(second)};
}

} // namespace coproc::detail
