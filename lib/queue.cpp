// queue: how items cross between any number of putters and getters.
//
// Transport: an AF_UNIX SOCK_SEQPACKET socket pair shared by every process (puts go into one
// end, gets read the other). The kernel keeps message boundaries and hands each message to
// exactly one recvmsg(), whole, however many processes read and write at once: no lock, no
// torn or duplicated item, and a dead process cannot leave the queue half-written.
//
// Why not a shared-memory ring (per-slot sequence numbers, futex wake-ups), which would save
// the kernel's per-message work: a producer that dies between claiming a slot and publishing it,
// or a consumer between claiming and releasing one, stalls every process behind that slot for
// ever unless the claim can be repaired, and a claim cannot name its owner atomically with the
// claim itself; a ring behind a robust lock is repairable but serialises every put and get on
// that lock, and async_get would need a descriptor to wait on (a futex has none) or a helper
// thread per waiter. The socket is correct under process death by construction, so the work
// went into making it cheap: the common case is exactly one syscall per put and one per get.
// put() and get() without a deadline make blocking sendmsg/recvmsg calls (the socket stays in
// blocking mode, see io.hpp) instead of try, poll, retry; and a getter that finds the queue
// empty first watches the `published` counter in shared memory for up to spin_budget before it
// sleeps in recvmsg, so a steady producer's items are taken without a sleep and a cross-CPU
// wake-up per item. The *_for forms and the asynchronous ones use MSG_DONTWAIT and wait
// with poll() or (cancellably) Asio.
//
// Items up to inline_limit (256 KiB, or half the socket's send buffer if that is less) travel in
// the message itself. A larger item is written to a memfd that travels with the message
// (SCM_RIGHTS) and is read back by the getter: a seqpacket message must fit the socket buffer
// whole. (A 64 KiB item measured twice as fast inline as through a memfd, whose creation,
// sealing and fresh pages cost more than the socket's copy.) The memfd is sealed; the getter
// reads only a sealed memfd whose size is the one announced.
//
// A bounded queue also holds an eventfd in semaphore mode counting free slots: put takes one
// (waiting while it is zero, with poll() or Asio), get gives one back. qsize() and join() use
// counters in shared memory; join() waits on the `unfinished` counter with a futex.
#include <coproc/queue.hpp>
#include "io.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

namespace coproc::detail {

struct queue_shared {
    std::atomic<std::int64_t> count{0};       // items put (or being put) and not yet got
    std::atomic<std::uint32_t> unfinished{0}; // items put and not yet task_done()
    // Bumped after each send: an empty queue's getter watches it for a moment before it sleeps
    // in recvmsg (a hint only; see spin_until).
    alignas(64) std::atomic<std::uint64_t> published{0};
    std::size_t inline_max = 0; // the largest item sent inline; set by the constructor
};

namespace {

constexpr std::size_t inline_limit = 256 * 1024;
constexpr std::size_t inline_floor = 64 * 1024; // inline even where the send buffer is unknown
constexpr int socket_buffer = 4 * 1024 * 1024;  // capped by the kernel's wmem_max if unprivileged
enum : char { tag_inline = 0, tag_memfd = 1 };

// An item too big to travel inline, in a sealed memfd.
unique_fd spill(std::span<const char> msg) {
    unique_fd fd = sealed_memfd("coproc-queue-item", msg);
    if (!fd)
        throw os_error("queue: copying an item into a sealed memfd failed");
    return fd;
}

// Reads an item from the memfd a message brought, after checking that it is sealed and as long
// as the message announced (a forged message must not make the getter allocate what it says).
std::vector<char> unspill(int fd, std::uint64_t size) {
    if (const std::string fault = sealed_memfd_fault(fd, size); !fault.empty())
        throw coproc::error("queue: received a malformed out-of-line item (not sent by a coproc "
                            "queue): " +
                            fault);
    std::vector<char> out;
    try {
        out.resize(size);
    } catch (const std::exception&) { // bad_alloc, length_error
        throw coproc::error("queue: an item of " + std::to_string(size) +
                            " bytes does not fit in memory");
    }
    for (std::size_t done = 0; done < size;) {
        const ssize_t r = ::pread(fd, out.data() + done, size - done, static_cast<off_t>(done));
        if (r == 0)
            throw coproc::error("queue: an out-of-line item is shorter than announced");
        if (r < 0 && errno != EINTR)
            throw os_error("queue: read of a memfd failed");
        if (r > 0)
            done += static_cast<std::size_t>(r);
    }
    return out;
}

} // namespace

/// One put in progress: takes a slot (bounded queues), then sends the message. Destroyed
/// before it is done (timeout, error, abandoned await), it gives back what it took.
class put_op {
  public:
    put_op(queue_core& q, std::span<const char> msg) : q_(q), msg_(msg) {
        if (msg.size() > q.shared_->inline_max) {
            big_ = spill(msg);
            size_ = msg.size();
        }
        if (q_.maxsize_ == 0)
            phase_ = phase::send;
    }
    put_op(const put_op&) = delete;
    put_op& operator=(const put_op&) = delete;
    ~put_op() {
        if (phase_ != phase::done)
            give_back();
    }

    /// Advances; true once the item is in the queue. `flags` 0 sends blocking (the socket is in
    /// blocking mode, see io.hpp), MSG_DONTWAIT does not wait for room.
    bool step(int flags) {
        if (phase_ == phase::slot) {
            std::uint64_t one;
            if (::read(q_.fd(q_.slots_fd_), &one, sizeof one) < 0) {
                if (would_block() || errno == EINTR)
                    return false;
                throw os_error("queue: read of the free-slot eventfd failed");
            }
            phase_ = phase::send;
            holds_slot_ = true;
        }
        if (!counted_) {
            q_.shared_->count.fetch_add(1, std::memory_order_relaxed);
            q_.shared_->unfinished.fetch_add(1, std::memory_order_relaxed);
            counted_ = true;
        }
        char tag = big_ ? tag_memfd : tag_inline;
        iovec iov[2] = {{&tag, 1}, {}};
        if (big_)
            iov[1] = {&size_, sizeof size_};
        else
            iov[1] = {const_cast<char*>(msg_.data()), msg_.size()};
        const int fd = q_.fd(q_.put_fd_);
        for (;;) {
            if (send_with_fd(fd, iov, big_ ? big_.get() : -1, flags) >= 0)
                break;
            if (would_block())
                return false;
            if (errno != EINTR)
                throw os_error("queue: sendmsg failed");
        }
        phase_ = phase::done;
        q_.shared_->published.fetch_add(1, std::memory_order_release);
        return true;
    }

    /// What to wait for when step() returned false.
    int wait_fd() const { return q_.fd(phase_ == phase::slot ? q_.slots_fd_ : q_.put_fd_); }
    short wait_events() const { return phase_ == phase::slot ? POLLIN : POLLOUT; }

  private:
    enum class phase { slot, send, done };

    void give_back() noexcept {
        if (counted_) {
            q_.shared_->count.fetch_sub(1, std::memory_order_relaxed);
            if (q_.shared_->unfinished.fetch_sub(1, std::memory_order_release) == 1)
                futex_wake(q_.shared_->unfinished, INT_MAX);
        }
        if (holds_slot_) {
            const std::uint64_t one = 1;
            const int fd = q_.slots_fd_.load();
            if (fd >= 0 && ::write(fd, &one, sizeof one) < 0) {
                // cannot fail: the count stays far below the eventfd's limit
            }
        }
    }

    queue_core& q_;
    std::span<const char> msg_;
    unique_fd big_;
    std::uint64_t size_ = 0;
    phase phase_ = phase::slot;
    bool holds_slot_ = false;
    bool counted_ = false;
};

queue_core::queue_core(std::size_t maxsize)
    : maxsize_(maxsize),
      shared_(new (map_shared(sizeof(queue_shared), "queue: mmap failed")) queue_shared) {
    try {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
            throw os_error("queue: socketpair failed");
        put_fd_ = sv[0];
        get_fd_ = sv[1];
        if (::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUFFORCE, &socket_buffer, sizeof socket_buffer))
            ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &socket_buffer, sizeof socket_buffer);
        int sndbuf = 0;
        socklen_t len = sizeof sndbuf;
        shared_->inline_max = inline_floor;
        if (::getsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0)
            shared_->inline_max =
                std::clamp(static_cast<std::size_t>(sndbuf) / 2, inline_floor, inline_limit);
        if (maxsize > 0) {
            slots_fd_ = ::eventfd(0, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
            if (slots_fd_ < 0)
                throw os_error("queue: eventfd failed");
            const std::uint64_t n = maxsize;
            if (::write(slots_fd_, &n, sizeof n) != sizeof n)
                throw coproc::error("queue: maxsize " + std::to_string(maxsize) + " is too big");
        }
        runner_ = std::make_unique<blocking_runner>();
    } catch (...) {
        close();
        ::munmap(shared_, sizeof(queue_shared));
        throw;
    }
}

queue_core::~queue_core() {
    close();
    ::munmap(shared_, sizeof(queue_shared));
}

void queue_core::close() noexcept {
    for (auto* f : {&put_fd_, &get_fd_, &slots_fd_}) {
        const int fd = f->exchange(-1);
        if (fd >= 0)
            ::close(fd);
    }
}

int queue_core::fd(const std::atomic<int>& f) const {
    const int fd = f.load();
    if (fd < 0)
        throw coproc::error("queue: used after close()");
    return fd;
}

std::size_t queue_core::qsize() const {
    (void)fd(get_fd_); // throws after close()
    const auto n = shared_->count.load(std::memory_order_relaxed);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
}

bool queue_core::put(std::span<const char> msg, std::optional<clock::time_point> deadline) {
    put_op op(*this, msg);
    while (!op.step(deadline ? MSG_DONTWAIT : 0))
        if (!wait_fd(op.wait_fd(), op.wait_events(), deadline))
            return false;
    return true;
}

/// A put_op that owns its item (async_put).
struct async_put_state {
    async_put_state(queue_core& q, std::vector<char> m) : msg(std::move(m)), op(q, msg) {}
    std::vector<char> msg;
    put_op op;
};

std::shared_ptr<async_put_state> queue_core::start_put(std::vector<char> msg) {
    return std::make_shared<async_put_state>(*this, std::move(msg));
}

std::optional<op_done> queue_core::try_put(async_put_state& p, wait_for& next) {
    if (p.op.step(MSG_DONTWAIT))
        return op_done{};
    next = {p.op.wait_fd(), p.op.wait_events() == POLLOUT};
    return std::nullopt;
}

// The next item: if one is there now (`flags` MSG_DONTWAIT), or waiting for one in recvmsg (0;
// nullopt only if someone made the socket non-blocking).
std::optional<std::vector<char>> queue_core::receive(int flags) {
    thread_local std::vector<char> buf(inline_limit + 1);
    iovec iov{buf.data(), buf.size()};
    const int fd = this->fd(get_fd_);
    if (flags == 0 && shared_->count.load(std::memory_order_relaxed) <= 0) {
        // Empty: about to sleep in recvmsg. First watch for a put for a moment.
        const std::uint64_t seen = shared_->published.load(std::memory_order_relaxed);
        spin_until([&] { return shared_->published.load(std::memory_order_acquire) != seen; },
                   spin_budget);
    }
    unique_fd big;
    bool truncated = false;
    ssize_t n;
    while ((n = recv_with_fd(fd, {&iov, 1}, big, flags, &truncated)) < 0) {
        if (would_block())
            return std::nullopt;
        if (errno != EINTR)
            throw os_error("queue: recvmsg failed");
    }
    // The item is ours now: account for it before anything can throw.
    shared_->count.fetch_sub(1, std::memory_order_relaxed);
    if (const int slots = slots_fd_.load(); slots >= 0) {
        const std::uint64_t one = 1;
        if (::write(slots, &one, sizeof one) < 0)
            throw os_error("queue: write to the free-slot eventfd failed");
    }
    if (n == 0 || truncated)
        throw coproc::error("queue: received a malformed message");
    if (buf[0] == tag_inline)
        return std::vector<char>(buf.begin() + 1, buf.begin() + n);
    std::uint64_t size;
    if (buf[0] != tag_memfd || !big || n != 1 + sizeof size)
        throw coproc::error("queue: received a malformed message");
    std::memcpy(&size, buf.data() + 1, sizeof size);
    return unspill(big.get(), size);
}

std::optional<std::vector<char>> queue_core::get(std::optional<clock::time_point> deadline) {
    for (;;) {
        if (auto msg = receive(deadline ? MSG_DONTWAIT : 0))
            return msg;
        if (!wait_fd(fd(get_fd_), POLLIN, deadline))
            return std::nullopt;
    }
}

std::optional<std::vector<char>> queue_core::try_get(wait_for& next) {
    auto msg = receive(MSG_DONTWAIT);
    if (!msg)
        next = {fd(get_fd_), false};
    return msg;
}

void queue_core::task_done() {
    auto& u = shared_->unfinished;
    std::uint32_t v = u.load(std::memory_order_relaxed);
    do {
        if (v == 0)
            throw coproc::error("joinable_queue: task_done() called more times than items were "
                                "put");
    } while (
        !u.compare_exchange_weak(v, v - 1, std::memory_order_release, std::memory_order_relaxed));
    if (v == 1)
        futex_wake(u, INT_MAX);
}

void queue_core::join() {
    auto& u = shared_->unfinished;
    for (std::uint32_t v; (v = u.load(std::memory_order_acquire)) != 0;)
        futex_wait(u, v, std::nullopt);
}

void queue_core::join(const std::atomic<bool>& stop) {
    // A bounded wait: a wake_joiners() that comes between the check of `stop` and the futex
    // wait is missed, and the next check comes at the latest this long after it.
    constexpr auto recheck = std::chrono::milliseconds(100);
    auto& u = shared_->unfinished;
    for (std::uint32_t v; (v = u.load(std::memory_order_acquire)) != 0;) {
        if (stop.load(std::memory_order_acquire))
            return;
        futex_wait(u, v, clock::now() + recheck);
    }
}

void queue_core::wake_joiners() noexcept { futex_wake(shared_->unfinished, INT_MAX); }

} // namespace coproc::detail
