// Frame encoding and decoding (see include/coproc/detail/wire.hpp).
#include <coproc/detail/archive.hpp>
#include <coproc/detail/wire.hpp>
#include "io.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace coproc::detail {

namespace {

// Whether every page of [begin, end) (page-aligned) is in memory (false if that is unknown).
bool all_in_core(std::uintptr_t begin, std::uintptr_t end, std::uintptr_t page) noexcept {
    constexpr std::size_t batch = 1024;
    unsigned char in_core[batch];
    for (std::uintptr_t at = begin; at < end;) {
        const std::size_t pages = std::min<std::size_t>(batch, (end - at) / page);
        if (::mincore(reinterpret_cast<void*>(at), pages * page, in_core) != 0)
            return false;
        for (std::size_t k = 0; k < pages; ++k)
            if (!(in_core[k] & 1))
                return false;
        at += pages * page;
    }
    return true;
}

} // namespace

void populate_for_write(void* p, std::size_t n) noexcept {
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
    const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(page - 1);
    if (end <= begin)
        return;
    // Memory malloc hands out again is often in place already, and populating it would walk its
    // pages for nothing: only a range with a page that is not in place is populated.
    if (all_in_core(begin, end, page))
        return;
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

std::span<char> frame_decoder::write_area(std::size_t min) {
    if (begin_ == end_) {
        begin_ = end_ = 0;
        if (size_ > std::max(initial_, max_kept_buffer)) {
            buf_.reset(new char[initial_]);
            size_ = capacity_ = initial_;
        }
    } else if (size_ - end_ < min && begin_ > 0) {
        std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
    }
    // A large frame whose header we hold: room for more of it, as much as has arrived of it
    // (doubling), never what the header merely claims. (The buffer's geometric growth keeps
    // the many small resizes of a trickling frame amortised.)
    std::size_t want = min;
    if (end_ - begin_ >= sizeof(frame_header)) {
        const auto h = read_header(buf_.get() + begin_);
        const std::size_t whole = sizeof(frame_header) + h.size;
        if (h.size <= max_frame_payload && whole > end_ - begin_)
            want = std::max(want, std::min(whole - (end_ - begin_), end_ - begin_));
    }
    if (size_ - end_ < want)
        resize(end_ + want);
    return {buf_.get() + end_, size_ - end_};
}

void frame_decoder::resize(std::size_t size) {
    if (size > capacity_) {
        const std::size_t capacity = std::max(size, 2 * size_);
        std::unique_ptr<char[]> bigger(new char[capacity]);
        if (capacity >= populate_min_bytes)
            populate_for_write(bigger.get(), capacity);
        std::memcpy(bigger.get(), buf_.get(), end_);
        buf_ = std::move(bigger);
        capacity_ = capacity;
    }
    size_ = size;
}

std::optional<frame> frame_decoder::next() {
    const std::size_t have = end_ - begin_;
    if (have < sizeof(frame_header))
        return std::nullopt;
    const auto h = read_header(buf_.get() + begin_);
    if (h.size > max_frame_payload)
        throw error("malformed frame: payload of " + std::to_string(h.size) +
                    " bytes exceeds the 1 GiB frame limit");
    if (h.kind < static_cast<std::uint16_t>(frame_kind::task) ||
        h.kind > static_cast<std::uint16_t>(frame_kind::init_failed))
        throw error("malformed frame: unknown frame kind " + std::to_string(h.kind));
    if (h.flags != 0 && h.flags != frame_out_of_line)
        throw error("malformed frame: unknown flags " + std::to_string(h.flags));
    if (h.flags == frame_out_of_line && h.size < sizeof(std::uint64_t))
        throw error("malformed frame: an out-of-line frame without its byte count");
    if (have < sizeof(frame_header) + h.size)
        return std::nullopt;
    const char* payload = buf_.get() + begin_ + sizeof(frame_header);
    frame f{static_cast<frame_kind>(h.kind), h.id, h.aux, {payload, h.size}, h.flags};
    begin_ += sizeof(frame_header) + h.size;
    return f;
}

std::size_t begin_frame(std::vector<char>& out, frame_kind kind, std::uint64_t id,
                        std::uint64_t aux) {
    const std::size_t at = out.size();
    const frame_header h{0, static_cast<std::uint16_t>(kind), 0, id, aux};
    out.resize(at + sizeof h);
    std::memcpy(out.data() + at, &h, sizeof h);
    return at;
}

void end_frame(std::vector<char>& out, std::size_t at, std::uint64_t aux, std::uint16_t flags) {
    const std::size_t size = out.size() - at - sizeof(frame_header);
    if (size > max_frame_payload)
        throw error("message of " + std::to_string(size) +
                    " bytes exceeds the 1 GiB frame limit; pass large data in pieces");
    auto h = read_header(out.data() + at);
    h.size = static_cast<std::uint32_t>(size);
    h.aux = aux;
    h.flags = flags;
    std::memcpy(out.data() + at, &h, sizeof h);
}

namespace {
std::atomic<int> live_payload_fds{0};
} // namespace

payload_fd::payload_fd(int fd) noexcept : fd_(fd) {
    if (fd_ >= 0)
        live_payload_fds.fetch_add(1, std::memory_order_relaxed);
}

void payload_fd::reset() noexcept {
    if (fd_ >= 0) {
        ::close(fd_);
        live_payload_fds.fetch_sub(1, std::memory_order_relaxed);
    }
    fd_ = -1;
}

payload_fd move_out_of_line(std::vector<char>& out, std::size_t at, std::size_t keep) {
    const std::size_t from = at + sizeof(frame_header) + keep;
    const std::size_t n = out.size() - from;
    const bool fits = out.size() - at - sizeof(frame_header) <= max_frame_payload;
    if (n <= out_of_line_threshold ||
        (fits && live_payload_fds.load(std::memory_order_relaxed) >= payload_fd::max_payload_fds))
        return {};
    payload_fd fd(sealed_memfd("coproc-payload", {out.data() + from, n}).release());
    if (!fd) {
        if (fits)
            return fd; // inline, then
        throw error("message of " + std::to_string(n) +
                    " bytes exceeds the 1 GiB inline frame limit and no memfd could be made "
                    "for it: " + std::strerror(errno));
    }
    const std::uint64_t count = n;
    out.resize(from + sizeof count);
    std::memcpy(out.data() + from, &count, sizeof count);
    out.shrink_to_fit(); // the large buffer is not kept
    return fd;
}

payload_fd take_payload_fd(std::deque<payload_fd>& received, std::string_view frame) {
    if (received.empty())
        throw error("malformed " + std::string(frame) +
                    ": out of line, but no descriptor came with it");
    payload_fd fd = std::move(received.front());
    received.pop_front();
    return fd;
}

mapped_payload::mapped_payload(payload_fd fd, std::uint64_t size) {
    if (size == 0)
        throw error("malformed out-of-line payload: the frame claims 0 bytes");
    if (const std::string fault = sealed_memfd_fault(fd.get(), size); !fault.empty())
        throw error("malformed out-of-line payload: " + fault);
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd.get(), 0);
    if (m == MAP_FAILED)
        throw error("out-of-line payload of " + std::to_string(size) +
                    " bytes could not be mapped: " + std::strerror(errno));
    data_ = static_cast<const char*>(m);
    size_ = size;
}

void mapped_payload::reset() noexcept {
    if (data_)
        ::munmap(const_cast<char*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
}

} // namespace coproc::detail
