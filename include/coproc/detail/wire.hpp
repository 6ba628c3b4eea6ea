// coproc/detail/wire.hpp — the frames a pool and its workers exchange over one AF_UNIX stream.
//
// Every frame is a 24-byte header followed by `size` payload bytes:
//
//   u32 size   payload bytes after the header (at most max_frame_payload)
//   u16 kind   frame_kind
//   u16 flags  0, or frame_out_of_line
//   u64 id     task id (0 for control frames)
//   u64 aux    reply: nanoseconds the task ran; request: number of items in the task
//
// task request payload:  i64 entry offset, i64 function offset (both from function_anchor),
//                        u64 MAC (SipHash-2-4 under the pool's key of both offsets and the
//                        entry's signature hash and invoker; see function_id.hpp and
//                        lib/task_key.hpp), then `aux` argument tuples in cereal binary form
// result payload:        `aux`... results in cereal binary form (one per item)
// error payload:         a transported exception (lib/error.cpp)
// Many frames are written per syscall in both directions; the decoder takes any split.
//
// Out of line: a task's arguments or a reply's results of more than out_of_line_threshold
// bytes travel in a sealed memfd (F_SEAL_SHRINK|GROW|WRITE) passed with SCM_RIGHTS in the
// sendmsg that starts with the frame's header (so the descriptor arrives no later than the
// header's first byte, and descriptors arrive in the order of their frames). Such a frame has
// flags == frame_out_of_line and its inline payload is what stays inline (a task's prefix, a
// result's nothing) followed by a u64 count of the out-of-line bytes. The receiver checks the
// descriptor (a memfd, so sealed, exactly that size), maps it read-only and decodes in place.
#pragma once

#include <coproc/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace coproc::detail {

enum class frame_kind : std::uint16_t {
    task = 1,        // parent -> worker: run a function over `aux` items
    result = 2,      // worker -> parent: the results of task `id`
    error = 3,       // worker -> parent: task `id` threw
    init_failed = 4, // worker -> parent: the pool initializer threw (payload: error)
};

struct frame_header {
    std::uint32_t size;
    std::uint16_t kind;
    std::uint16_t flags;
    std::uint64_t id;
    std::uint64_t aux;
};
static_assert(sizeof(frame_header) == 24);

/// The largest inline payload one frame may carry (1 GiB); out-of-line payloads are bounded by
/// memory only.
inline constexpr std::size_t max_frame_payload = std::size_t{1} << 30;

/// The bytes of a task request's payload before its arguments (entry, function offsets, MAC).
inline constexpr std::size_t task_prefix_bytes = 24;

/// frame_header::flags: the payload continues out of line (see above).
inline constexpr std::uint16_t frame_out_of_line = 1;

/// Payloads (a task's arguments, a reply's results) larger than this travel out of line. (At
/// 1 MiB the memfd path, with its fresh shmem pages, mapping and unmapping, measured slower
/// than the socket on a 2-vCPU VM; above a few MiB it spares the copies and the 1 GiB cap.)
inline constexpr std::size_t out_of_line_threshold = std::size_t{4} << 20;

/// A message buffer grown past this for a large frame is given back once the frame is done
/// with, rather than kept for the next message.
inline constexpr std::size_t max_kept_buffer = std::size_t{4} << 20;

/// A decoded frame; `payload` points into the buffer it was decoded from.
struct frame {
    frame_kind kind;
    std::uint64_t id;
    std::uint64_t aux;
    std::span<const char> payload;
    std::uint16_t flags = 0;

    bool out_of_line() const noexcept { return flags == frame_out_of_line; }
    /// An out-of-line frame's inline part (without the count) and out-of-line byte count.
    std::pair<std::span<const char>, std::uint64_t> split() const noexcept {
        std::uint64_t n;
        std::memcpy(&n, payload.data() + payload.size() - sizeof n, sizeof n);
        return {payload.first(payload.size() - sizeof n), n};
    }
};

/// An owned descriptor of an out-of-line payload (closed on destruction). The process keeps
/// at most max_payload_fds of them for payloads it sends: past that, payloads that fit go
/// inline (queued jobs hold theirs until they are answered).
class payload_fd {
  public:
    static constexpr int max_payload_fds = 256;
    payload_fd() noexcept = default;
    /// Takes ownership of `fd` (counted while it lives).
    explicit payload_fd(int fd) noexcept;
    payload_fd(payload_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    payload_fd& operator=(payload_fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~payload_fd() { reset(); }
    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset() noexcept;

  private:
    int fd_ = -1;
};

/// The descriptor of the next out-of-line `frame` ("task frame", "reply"), taken from those
/// received (they arrive in the order of their frames); throws coproc::error if none came.
payload_fd take_payload_fd(std::deque<payload_fd>& received, std::string_view frame);

/// A received out-of-line payload mapped read-only (its descriptor is closed once mapped);
/// unmapped on destruction.
class mapped_payload {
  public:
    mapped_payload() noexcept = default;
    /// Checks that `fd` is a memfd sealed against shrinking, growing and writing that holds
    /// exactly `size` bytes, and maps it; throws coproc::error naming what is wrong.
    mapped_payload(payload_fd fd, std::uint64_t size);
    mapped_payload(mapped_payload&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    mapped_payload& operator=(mapped_payload&& o) noexcept {
        if (this != &o) {
            reset();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    ~mapped_payload() { reset(); }
    std::span<const char> bytes() const noexcept { return {data_, size_}; }
    void reset() noexcept;

  private:
    const char* data_ = nullptr;
    std::size_t size_ = 0;
};

/// If the frame begun at `at` in `out` has more than out_of_line_threshold payload bytes after
/// its first `keep`, moves those into a sealed memfd and returns it: the frame keeps `keep`
/// bytes and the count (end_frame() still to be called), and `out` no longer holds the large
/// buffer. Else, or if no memfd can be had and the payload fits inline, returns no descriptor.
/// Throws coproc::error if the payload neither fits inline nor goes out of line.
payload_fd move_out_of_line(std::vector<char>& out, std::size_t at, std::size_t keep);

/// Splits a byte stream into frames. Bytes are appended at `write_area()`/`commit()`,
/// complete frames are taken with `next()`; a bad header throws coproc::error.
class frame_decoder {
  public:
    explicit frame_decoder(std::size_t initial = 64 * 1024)
        : buf_(new char[initial]), size_(initial), capacity_(initial), initial_(initial) {}

    /// Room to read at least `min` more bytes into. A buffer grown past 4 MiB for a large frame
    /// shrinks back once that frame is taken.
    std::span<char> write_area(std::size_t min = 4096);
    void commit(std::size_t n) noexcept { end_ += n; }

    /// The next complete frame, or nullopt when more bytes are needed. The returned payload
    /// stays valid until the next call to write_area().
    std::optional<frame> next();

  private:
    /// Makes the buffer `size` bytes long, as std::vector::resize() would but leaving new
    /// bytes uninitialised.
    void resize(std::size_t size);

    // Uninitialised: reads fill it, so only the pages frames reach are ever touched (a new
    // worker's first frames touch one of its 16).
    std::unique_ptr<char[]> buf_;
    std::size_t size_;
    std::size_t capacity_;
    std::size_t initial_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

/// Starts a frame in `out` and returns its offset, for end_frame() to patch the size in.
std::size_t begin_frame(std::vector<char>& out, frame_kind kind, std::uint64_t id,
                        std::uint64_t aux);
/// Finishes the frame begun at `at`, setting its `aux` (and `flags`); throws coproc::error if
/// its payload is too large.
void end_frame(std::vector<char>& out, std::size_t at, std::uint64_t aux,
               std::uint16_t flags = 0);

/// Reads the header at the front of `bytes` (which must hold at least 24 bytes).
inline frame_header read_header(const char* bytes) noexcept {
    frame_header h;
    std::memcpy(&h, bytes, sizeof h);
    return h;
}

} // namespace coproc::detail
