// pipe: frames (8-byte length, then payload) on an AF_UNIX stream socket. Sends and receives
// advance by non-blocking steps; the blocking forms wait with poll(), the awaitable ones on the
// awaiting coroutine's executor (see io.hpp).
#include "io.hpp"
#include <coproc/pipe.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace coproc::detail {

namespace {

// A length above this is a corrupt stream, not a message (cereal itself would give up first).
constexpr std::uint64_t max_frame = std::uint64_t{1} << 40;

[[noreturn]] void throw_eof(const char* what) { throw eof_error(what); }

bool would_block() noexcept { return errno == EAGAIN || errno == EWOULDBLOCK; }

/// A frame being sent.
class frame_out {
  public:
    explicit frame_out(std::span<const std::byte> body) noexcept
        : header_(body.size()), body_(body) {}

    /// Sends what the socket takes; true once everything is sent.
    bool step(int fd) {
        const std::size_t total = sizeof header_ + body_.size();
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
            const ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
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
        }
        return true;
    }

  private:
    std::uint64_t header_;
    std::span<const std::byte> body_;
    std::size_t done_ = 0;
};

/// A frame being received.
class frame_in {
  public:
    /// Reads what has arrived; true once the frame is complete.
    bool step(int fd) {
        while (got_ < sizeof header_) {
            const ssize_t r =
                read_some(fd, reinterpret_cast<char*>(&header_) + got_, sizeof header_ - got_);
            if (r < 0)
                return false;
            got_ += static_cast<std::size_t>(r);
            if (got_ == sizeof header_) {
                if (header_ > max_frame)
                    throw coproc::error("connection: corrupt stream (a frame of " +
                                        std::to_string(header_) + " bytes)");
                body_.resize(header_);
            }
        }
        while (got_ - sizeof header_ < body_.size()) {
            const std::size_t at = got_ - sizeof header_;
            const ssize_t r = read_some(fd, body_.data() + at, body_.size() - at);
            if (r < 0)
                return false;
            got_ += static_cast<std::size_t>(r);
        }
        return true;
    }

    std::vector<std::byte> take() noexcept { return std::move(body_); }

  private:
    // Bytes read (> 0), or -1 if nothing is available yet; end of stream throws.
    ssize_t read_some(int fd, void* p, std::size_t n) {
        for (;;) {
            const ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
            if (r > 0)
                return r;
            if (r == 0 || errno == ECONNRESET)
                throw_eof(got_ == 0 ? "connection: the other end was closed"
                                    : "connection: the other end was closed in the middle of "
                                      "a message");
            if (would_block())
                return -1;
            if (errno != EINTR)
                throw os_error("connection: recv failed");
        }
    }

    std::uint64_t header_ = 0;
    std::size_t got_ = 0;
    std::vector<std::byte> body_;
};

} // namespace

conn_core::conn_core(int fd, bool readable, bool writable) noexcept
    : fd_(fd), readable_(readable), writable_(writable) {}

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

void conn_core::send(std::span<const std::byte> payload) {
    const int fd = fd_for(true);
    frame_out f(payload);
    while (!f.step(fd))
        wait_fd(fd, POLLOUT, std::nullopt);
}

std::vector<std::byte> conn_core::recv() {
    const int fd = fd_for(false);
    frame_in f;
    while (!f.step(fd))
        wait_fd(fd, POLLIN, std::nullopt);
    return f.take();
}

bool conn_core::poll(clock::time_point deadline) {
    return wait_fd(fd_for(false), POLLIN, deadline);
}

asio::awaitable<void> conn_core::async_send(std::shared_ptr<conn_core> self,
                                            std::vector<char> payload) {
    const int fd = self->fd_for(true);
    frame_out f(std::as_bytes(std::span(payload)));
    while (!f.step(fd))
        co_await async_wait_fd(fd, true);
}

asio::awaitable<std::vector<std::byte>> conn_core::async_recv(std::shared_ptr<conn_core> self) {
    const int fd = self->fd_for(false);
    frame_in f;
    while (!f.step(fd))
        co_await async_wait_fd(fd, false);
    co_return f.take();
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
    auto first = make_registered<conn_core>(handle_kind::connection, a.get(), true, duplex);
    a.release();
    auto second = make_registered<conn_core>(handle_kind::connection, b.get(), duplex, true);
    b.release();
    return {std::move(first), std::move(second)};
}

} // namespace coproc::detail
