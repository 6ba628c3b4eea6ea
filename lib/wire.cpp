// Frame encoding and decoding (see include/coproc/detail/wire.hpp).
#include <coproc/detail/wire.hpp>

#include <algorithm>
#include <string>

namespace coproc::detail {

std::span<char> frame_decoder::write_area(std::size_t min) {
    if (begin_ == end_) {
        begin_ = end_ = 0;
        if (buf_.size() > std::max(initial_, max_kept_buffer))
            std::vector<char>(initial_).swap(buf_);
    } else if (buf_.size() - end_ < min && begin_ > 0) {
        std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
    }
    // A large frame whose header we hold: room for more of it, as much as has arrived of it
    // (doubling), never what the header merely claims. (std::vector's own growth keeps the
    // many small resizes of a trickling frame amortised.)
    std::size_t want = min;
    if (end_ - begin_ >= sizeof(frame_header)) {
        const auto h = read_header(buf_.data() + begin_);
        const std::size_t whole = sizeof(frame_header) + h.size;
        if (h.size <= max_frame_payload && whole > end_ - begin_)
            want = std::max(want, std::min(whole - (end_ - begin_), end_ - begin_));
    }
    if (buf_.size() - end_ < want)
        buf_.resize(end_ + want);
    return {buf_.data() + end_, buf_.size() - end_};
}

std::optional<frame> frame_decoder::next() {
    const std::size_t have = end_ - begin_;
    if (have < sizeof(frame_header))
        return std::nullopt;
    const auto h = read_header(buf_.data() + begin_);
    if (h.size > max_frame_payload)
        throw error("malformed frame: payload of " + std::to_string(h.size) +
                    " bytes exceeds the 1 GiB frame limit");
    if (h.kind < static_cast<std::uint16_t>(frame_kind::task) ||
        h.kind > static_cast<std::uint16_t>(frame_kind::init_failed))
        throw error("malformed frame: unknown frame kind " + std::to_string(h.kind));
    if (h.flags != 0)
        throw error("malformed frame: unknown flags " + std::to_string(h.flags));
    if (have < sizeof(frame_header) + h.size)
        return std::nullopt;
    frame f{static_cast<frame_kind>(h.kind), h.id, h.aux,
            {buf_.data() + begin_ + sizeof(frame_header), h.size}};
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

void end_frame(std::vector<char>& out, std::size_t at, std::uint64_t aux) {
    const std::size_t size = out.size() - at - sizeof(frame_header);
    if (size > max_frame_payload)
        throw error("message of " + std::to_string(size) +
                    " bytes exceeds the 1 GiB frame limit; pass large data in pieces");
    auto h = read_header(out.data() + at);
    h.size = static_cast<std::uint32_t>(size);
    h.aux = aux;
    std::memcpy(out.data() + at, &h, sizeof h);
}

} // namespace coproc::detail
