// coproc/detail/wire.hpp — the frames a pool and its workers exchange over one AF_UNIX stream.
//
// Every frame is a 24-byte header followed by `size` payload bytes:
//
//   u32 size   payload bytes after the header (at most max_frame_payload)
//   u16 kind   frame_kind
//   u16 flags  0
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
#pragma once

#include <coproc/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
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

/// The largest payload one frame may carry (1 GiB); larger arguments or results fail with a
/// clear error instead of being sent.
inline constexpr std::size_t max_frame_payload = std::size_t{1} << 30;

/// A message buffer grown past this for a large frame is given back once the frame is done
/// with, rather than kept for the next message.
inline constexpr std::size_t max_kept_buffer = std::size_t{4} << 20;

/// A decoded frame; `payload` points into the buffer it was decoded from.
struct frame {
    frame_kind kind;
    std::uint64_t id;
    std::uint64_t aux;
    std::span<const char> payload;
};

/// Splits a byte stream into frames. Bytes are appended at `write_area()`/`commit()`,
/// complete frames are taken with `next()`; a bad header throws coproc::error.
class frame_decoder {
  public:
    explicit frame_decoder(std::size_t initial = 64 * 1024) : buf_(initial), initial_(initial) {}

    /// Room to read at least `min` more bytes into. A buffer grown past 4 MiB for a large frame
    /// shrinks back once that frame is taken.
    std::span<char> write_area(std::size_t min = 4096);
    void commit(std::size_t n) noexcept { end_ += n; }

    /// The next complete frame, or nullopt when more bytes are needed. The returned payload
    /// stays valid until the next call to write_area().
    std::optional<frame> next();

  private:
    std::vector<char> buf_;
    std::size_t initial_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

/// Starts a frame in `out` and returns its offset, for end_frame() to patch the size in.
std::size_t begin_frame(std::vector<char>& out, frame_kind kind, std::uint64_t id,
                        std::uint64_t aux);
/// Finishes the frame begun at `at`, setting its `aux`; throws coproc::error if its payload
/// is too large.
void end_frame(std::vector<char>& out, std::size_t at, std::uint64_t aux);

/// Reads the header at the front of `bytes` (which must hold at least 24 bytes).
inline frame_header read_header(const char* bytes) noexcept {
    frame_header h;
    std::memcpy(&h, bytes, sizeof h);
    return h;
}

} // namespace coproc::detail
