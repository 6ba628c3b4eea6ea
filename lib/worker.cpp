// The worker loop: blocking reads, batched replies, no Asio (see pool_core.cpp for the parent).
#include "worker.hpp"

#include <coproc/detail/function_id.hpp>
#include <coproc/detail/wire.hpp>
#include <coproc/this_task.hpp>
#include "child_setup.hpp"
#include "io.hpp"
#include "sanitizers.hpp"
#include "transport.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <link.h>
#include <mutex>
#include <poll.h>
#include <pthread.h>
#include <stdio_ext.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace coproc::detail {

static_assert(sizeof(task_prefix) == task_prefix_bytes);

std::int64_t monotonic_ns() noexcept {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::vector<segment> mapped_segments() {
    std::vector<segment> out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) {
            auto& v = *static_cast<std::vector<segment>*>(data);
            const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                const std::uintptr_t b = info->dlpi_addr + ph.p_vaddr;
                if (ph.p_type == PT_LOAD && (ph.p_flags & PF_R)) {
                    v.push_back(
                        {b, b + ph.p_memsz, (ph.p_flags & PF_X) != 0, (ph.p_flags & PF_W) != 0});
                } else if (ph.p_type == PT_GNU_RELRO) {
                    // The loader makes this read-only after relocation, up to its last whole
                    // page: constants holding pointers (task entries, in a PIE) live here.
                    const std::uintptr_t e = (b + ph.p_memsz) & ~(page - 1);
                    if (e > b)
                        v.push_back({b, e, false, false});
                }
            }
            return 0;
        },
        &out);
    return out;
}

namespace {

// The cancel mark of the task this worker is running (null when none) and its frame number:
// this_task::stop_requested() compares them.
const std::atomic<std::uint64_t>* stop_word = nullptr;
std::uint64_t stop_seq = 0;

[[noreturn]] void finish(int code) noexcept {
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(code);
}

// Writes all of [p, p + n) or exits: a parent that stopped reading is gone. `pass` (unless
// negative) goes with the first byte (SCM_RIGHTS).
void send_all(int fd, const char* p, std::size_t n, int pass = -1) noexcept {
    while (n > 0) {
        iovec iov{const_cast<char*>(p), n};
        const ssize_t w = send_with_fd(fd, {&iov, 1}, pass, 0);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            finish(0);
        }
        pass = -1;
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

void write_all(int fd, std::vector<char>& out) noexcept {
    send_all(fd, out.data(), out.size());
    out.clear();
}

// A worker batches the replies of fast tasks into few writes. A reply held back while the
// next task of the batch runs is written by a helper thread once it has waited `hold_limit`,
// so a fast task's result never waits behind a slow task queued after it. The helper sleeps
// on a timerfd: it wakes only when a task actually runs past the limit.
class reply_writer {
  public:
    static constexpr long hold_limit_ns = 500'000;

    reply_writer(int fd, worker_slot* slot) : fd_(fd), slot_(slot) {}

    /// The replies in `out` are complete and another task is about to run: they are written
    /// by write() after it, or by the helper thread if it runs longer than hold_limit_ns.
    void hold(std::vector<char>& out) {
        std::lock_guard lk(m_);
        if (timer_ < 0 && !start()) {
            write_all(fd_, out); // no helper: answer now rather than late
            return;
        }
        if (held_.empty())
            held_.swap(out);
        else
            held_.insert(held_.end(), out.begin(), out.end());
        out.clear();
        slot_->holding.store(1, std::memory_order_release);
        if (!armed_) {
            armed_ = true;
            deadline_ = monotonic_ns() + hold_limit_ns;
            const itimerspec due{{0, 0}, {0, hold_limit_ns}};
            ::timerfd_settime(timer_, 0, &due, nullptr);
        }
    }

    /// Writes what is held, then `out`. (A timer still armed wakes the helper for nothing.)
    void write(std::vector<char>& out) {
        std::lock_guard lk(m_);
        armed_ = false;
        if (!held_.empty()) {
            held_.insert(held_.end(), out.begin(), out.end());
            out.clear();
            write_held();
        } else if (!out.empty()) {
            write_all(fd_, out);
        }
    }

    /// Writes what is held, then `out`, whose frame at `at` carries out-of-line payload `fd`:
    /// the descriptor goes in the sendmsg that starts with that frame's header.
    void write(std::vector<char>& out, std::size_t at, int fd) {
        std::lock_guard lk(m_);
        armed_ = false;
        if (!held_.empty())
            write_held();
        send_all(fd_, out.data(), at);
        send_all(fd_, out.data() + at, out.size() - at, fd);
        out.clear();
    }

  private:
    // The helper blocks every signal: signals sent to the worker reach the task's thread.
    bool start() {
#if COPROC_TSAN || COPROC_ASAN
        // The sanitizers cannot start threads in a child forked from a threaded process:
        // ThreadSanitizer aborts ("dup thread with used id"); g++ 12's AddressSanitizer does not
        // take its thread registry's lock across fork(), so a worker whose fork server was
        // forked while a thread of the parent started or ended waits for that lock forever.
        // Under a sanitizer, workers answer at once instead.
        return false;
#endif
        timer_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
        if (timer_ < 0)
            return false;
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            std::thread([this] { run(); }).detach(); // lives as long as the process
        } catch (const std::system_error&) {
            ::close(timer_);
            timer_ = -1;
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return timer_ >= 0;
    }

    void run() {
        for (;;) {
            std::uint64_t expirations;
            if (::read(timer_, &expirations, sizeof expirations) < 0 && errno != EINTR)
                return;
            std::lock_guard lk(m_);
            if (armed_ && monotonic_ns() >= deadline_) {
                armed_ = false;
                write_held();
            }
        }
    }

    void write_held() {
        write_all(fd_, held_);
        slot_->holding.store(0, std::memory_order_release);
        if (held_.capacity() > max_kept_buffer)
            std::vector<char>().swap(held_);
    }

    const int fd_;
    worker_slot* slot_; // holding: replies are held back (a cancelled task's worker is not
                        // killed before they are written)
    int timer_ = -1;
    std::mutex m_;
    std::vector<char> held_;
    std::int64_t deadline_ = 0;
    bool armed_ = false;
};

// True if [p, p + len) lies in one segment that is executable (`exec`) or else read-only.
bool inside(const std::vector<segment>& segs, std::uintptr_t p, std::size_t len, bool exec) {
    for (const auto& s : segs)
        if (p >= s.begin && p + len <= s.end && p + len >= p && (exec ? s.exec : !s.writable))
            return true;
    return false;
}

class worker {
  public:
    worker(int fd, worker_slot* slot, const worker_config& cfg)
        : fd_(fd), slot_(slot), cfg_(cfg), macs_(cfg.key), replies_(fd, slot) {}

    [[noreturn]] void run() {
        frame_decoder dec;
        std::uint64_t done = 0;
        for (;;) {
            for (;;) {
                std::optional<frame> f;
                try {
                    f = dec.next();
                } catch (const std::exception& e) {
                    std::fprintf(stderr, "coproc worker %d: %s\n", getpid(), e.what());
                    finish(70);
                }
                if (!f)
                    break;
                if (!out_.empty())
                    replies_.hold(out_);
                run_frame(*f, ++seq_);
                if (reply_fd_) { // an out-of-line result goes at once, with its memfd
                    replies_.write(out_, reply_at_, reply_fd_.get());
                    reply_fd_.reset();
                }
                if (cfg_.maxtasks && ++done >= cfg_.maxtasks) {
                    replies_.write(out_);
                    finish(0);
                }
                // Slow tasks answer one by one; fast ones are batched into few writes.
                if (avg_ns_ > 20'000 || out_.size() >= 256 * 1024)
                    replies_.write(out_);
            }
            replies_.write(out_);
            if (out_.capacity() > max_kept_buffer) // a large result's buffer is not kept
                std::vector<char>().swap(out_);
            // Everything sent so far is answered. The next task of a steady stream usually
            // follows within microseconds: watch the socket for it for a moment (yielding the
            // CPU, see spin_until) rather than sleep at once and be woken by the parent's write.
            spin_until([&] { return wait_fd(fd_, POLLIN, clock::now()); }, spin_budget);
            const auto area = dec.write_area();
            iovec iov{area.data(), area.size()};
            unique_fd passed[max_passed_fds];
            bool truncated = false;
            const ssize_t n = recv_with_fds(fd_, {&iov, 1}, passed, 0, &truncated);
            if (n == 0)
                finish(0); // the pool closed our socket: close() or the parent is gone
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                finish(0);
            }
            if (truncated) { // the pool passes one descriptor per message
                std::fprintf(stderr, "coproc worker %d: too many descriptors in one message\n",
                             getpid());
                finish(70);
            }
            for (auto& p : passed)
                if (p)
                    fds_.emplace_back(p.release());
            dec.commit(static_cast<std::size_t>(n));
        }
    }

  private:
    // The entry a task frame names, once the frame is shown to come from this pool: the entry
    // lies in read-only data of this program, its invoker and the function in its code, and
    // the frame's MAC matches the one made from the entry found there with the pool's key.
    const task_entry* resolve(const task_prefix& p) const {
        const auto base = reinterpret_cast<std::uintptr_t>(&function_anchor);
        const std::uintptr_t e = base + static_cast<std::uintptr_t>(p.entry);
        const std::uintptr_t fn = base + static_cast<std::uintptr_t>(p.fn);
        if (e % alignof(task_entry) != 0 || !inside(cfg_.segments, e, sizeof(task_entry), false))
            throw coproc::error("unknown task function: its entry offset does not point into "
                                "read-only data of this program (a program linked with -z "
                                "norelro keeps task entries writable: link with RELRO)");
        const auto* entry = reinterpret_cast<const task_entry*>(e);
        if (entry->magic != entry_magic)
            throw coproc::error("unknown task function: no task entry at its offset");
        if (!inside(cfg_.segments, reinterpret_cast<std::uintptr_t>(entry->invoke), 1, true))
            throw coproc::error("unknown task function: its entry's invoker is not in executable "
                                "code");
        if (!inside(cfg_.segments, fn, 1, true))
            throw coproc::error("unknown task function: its offset is not in executable code");
        // One 64-bit comparison: it takes the same time whichever bits differ.
        if (macs_(p.entry, p.fn, entry_digest(*entry)) != p.mac)
            throw coproc::error("task frame failed authentication: its MAC does not match "
                                "(a forged frame, or one made by another pool)");
        return entry;
    }

    // The descriptor of out-of-line frame `f`: the oldest one received and not yet taken.
    payload_fd take_fd(const frame& f) {
        return f.out_of_line() ? take_payload_fd(fds_, "task frame") : payload_fd{};
    }

    // Runs frame number `seq` (counted from 1, as the parent numbers the frames it sends).
    void run_frame(const frame& f, std::uint64_t seq) {
        const std::int64_t t0 = monotonic_ns();
        slot_->start_ns.store(t0, std::memory_order_relaxed);
        // task_id before the cancel check, the parent's cancel mark before it reads task_id
        // (both seq_cst): a frame cancelled as it starts is skipped, or seen running there.
        slot_->task_id.store(f.id, std::memory_order_seq_cst);
        stop_word = &slot_->cancelled[seq % worker_slot::cancel_window];
        stop_seq = seq;
        const std::size_t at = begin_frame(out_, frame_kind::result, f.id, 0);
        std::uint64_t item = 0;
        try {
            payload_fd fd = take_fd(f); // taken first: a skipped frame still consumes its own
            if (slot_->is_cancelled(seq))
                throw coproc::error("the task was cancelled before it started");
            if (f.kind != frame_kind::task)
                throw coproc::error("malformed frame: a worker received a reply frame");
            task_prefix p;
            if (f.payload.size() < sizeof p)
                throw coproc::error("malformed task frame: shorter than its function id");
            std::memcpy(&p, f.payload.data(), sizeof p);
            const task_entry* entry = resolve(p);
            std::span<const char> args = f.payload.subspan(sizeof p);
            mapped_payload mapped; // the arguments out of line, unmapped once decoded
            if (fd) {
                const auto [inline_part, count] = f.split();
                if (inline_part.size() != sizeof p)
                    throw coproc::error("malformed task frame: out of line, with arguments inline");
                mapped = mapped_payload(std::move(fd), count);
                args = mapped.bytes();
            }
            reader in(args);
            {
                writer w(out_); // large results go out of line, bounded by memory only
                entry->invoke(
                    reinterpret_cast<erased_fn>(reinterpret_cast<std::uintptr_t>(&function_anchor) +
                                                static_cast<std::uintptr_t>(p.fn)),
                    in, w, f.aux, item);
            }
            if (in.remaining() != 0)
                throw coproc::error("malformed task frame: bytes left after the arguments");
            mapped.reset();
            reply_fd_ = move_out_of_line(out_, at, 0);
            reply_at_ = at;
            const std::int64_t dt = monotonic_ns() - t0;
            end_frame(out_, at, static_cast<std::uint64_t>(dt),
                      reply_fd_ ? frame_out_of_line : 0);
            avg_ns_ += (dt - avg_ns_) / 8;
        } catch (...) {
            reply_fd_.reset();
            out_.resize(at);
            const std::size_t eat = begin_frame(out_, frame_kind::error, f.id, item);
            encode_current_exception(out_);
            end_frame(out_, eat, item);
        }
        stop_word = nullptr;
        slot_->done_id.store(f.id, std::memory_order_relaxed);
        slot_->task_id.store(0, std::memory_order_release);
    }

    int fd_;
    worker_slot* slot_;
    const worker_config& cfg_;
    mutable mac_memo macs_; // a cache: checking a frame changes nothing else
    reply_writer replies_;
    std::vector<char> out_;
    std::deque<payload_fd> fds_; // descriptors received, not yet taken by their frames
    payload_fd reply_fd_;        // the memfd of the reply at reply_at_ in out_, if out of line
    std::size_t reply_at_ = 0;
    std::int64_t avg_ns_ = 0;
    std::uint64_t seq_ = 0; // frames received
};

} // namespace

void worker_slot::reset() noexcept {
    task_id.store(0);
    done_id.store(0);
    holding.store(0);
    for (auto& c : cancelled)
        c.store(0, std::memory_order_relaxed);
}

worker_slot* map_slots(int fd, std::size_t n) {
    void* m = ::mmap(nullptr, sizeof(worker_slot) * n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        throw std::system_error(errno, std::system_category(),
                                "mmap of the pool's worker slots failed");
    return static_cast<worker_slot*>(m);
}

void tune_worker_socket(int fd) noexcept {
    constexpr int bytes = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

void worker_main(int fd, worker_slot* slot, const worker_config& cfg) noexcept {
    for (int other : cfg.close_fds)
        ::close(other);
    if (cfg.initializer) {
        try {
            cfg.initializer();
        } catch (...) {
            std::vector<char> out;
            const std::size_t at = begin_frame(out, frame_kind::init_failed, 0, 0);
            encode_current_exception(out);
            end_frame(out, at, 0);
            write_all(fd, out);
            finish(1);
        }
    }
    try {
        worker(fd, slot, cfg).run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "coproc worker %d: %s\n", getpid(), e.what());
    }
    finish(70);
}

} // namespace coproc::detail

bool coproc::this_task::stop_requested() noexcept {
    const auto* w = detail::stop_word;
    // Acquire: a task that stops on its mark finds the marks set before it (see core_impl::cancel).
    return w && w->load(std::memory_order_acquire) == detail::stop_seq;
}
