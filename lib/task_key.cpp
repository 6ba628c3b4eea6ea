// SipHash-2-4 and task frame sealing (see task_key.hpp).
#include "task_key.hpp"

#include <coproc/detail/wire.hpp>

#include <bit>
#include <cerrno>
#include <cstring>
#include <sys/random.h>
#include <system_error>

namespace coproc::detail {

task_key task_key::random() {
    std::uint64_t words[2];
    auto* p = reinterpret_cast<unsigned char*>(words);
    std::size_t got = 0;
    while (got < sizeof words) {
        const ssize_t n = ::getrandom(p + got, sizeof words - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            throw std::system_error(errno, std::system_category(),
                                    "getrandom for the pool's task key failed");
        got += static_cast<std::size_t>(n);
    }
    return {words[0], words[1]};
}

namespace {

struct sip_state {
    std::uint64_t v0, v1, v2, v3;

    void round() noexcept {
        v0 += v1;
        v1 = std::rotl(v1, 13) ^ v0;
        v0 = std::rotl(v0, 32);
        v2 += v3;
        v3 = std::rotl(v3, 16) ^ v2;
        v0 += v3;
        v3 = std::rotl(v3, 21) ^ v0;
        v2 += v1;
        v1 = std::rotl(v1, 17) ^ v2;
        v2 = std::rotl(v2, 32);
    }

    void absorb(std::uint64_t m) noexcept { // two compression rounds
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
};

std::uint64_t load_le64(const unsigned char* p) noexcept {
    std::uint64_t w;
    std::memcpy(&w, p, sizeof w);
    if constexpr (std::endian::native == std::endian::big)
        w = __builtin_bswap64(w);
    return w;
}

} // namespace

std::uint64_t siphash24(const task_key& key, const void* data, std::size_t len) noexcept {
    sip_state s{key.k0 ^ 0x736f6d6570736575ull, key.k1 ^ 0x646f72616e646f6dull,
                key.k0 ^ 0x6c7967656e657261ull, key.k1 ^ 0x7465646279746573ull};
    const auto* p = static_cast<const unsigned char*>(data);
    const std::size_t whole = len - len % 8;
    for (std::size_t i = 0; i < whole; i += 8)
        s.absorb(load_le64(p + i));
    // The last block: the remaining bytes, little-endian, and the length's low byte on top.
    std::uint64_t last = static_cast<std::uint64_t>(len) << 56;
    for (std::size_t i = whole; i < len; ++i)
        last |= std::uint64_t{p[i]} << (8 * (i - whole));
    s.absorb(last);
    s.v2 ^= 0xff; // four finalization rounds
    s.round();
    s.round();
    s.round();
    s.round();
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

std::uint64_t task_mac(const task_key& key, std::int64_t entry, std::int64_t fn,
                       std::uint64_t digest) noexcept {
    const std::uint64_t words[3] = {static_cast<std::uint64_t>(entry),
                                    static_cast<std::uint64_t>(fn), digest};
    return siphash24(key, words, sizeof words);
}

std::uint64_t mac_memo::operator()(std::int64_t entry, std::int64_t fn,
                                   std::uint64_t digest) noexcept {
    if (!known_ || entry != last_.entry || fn != last_.fn || digest != last_.mac) {
        last_ = {entry, fn, digest};
        last_mac_ = task_mac(key_, entry, fn, digest);
        known_ = true;
    }
    return last_mac_;
}

void mac_memo::seal(std::vector<char>& frame) noexcept {
    task_prefix p;
    if (frame.size() < sizeof(frame_header) + sizeof p)
        return; // not a task frame: the worker refuses it as malformed
    char* at = frame.data() + sizeof(frame_header);
    std::memcpy(&p, at, sizeof p);
    p.mac = (*this)(p.entry, p.fn, p.mac);
    std::memcpy(at, &p, sizeof p);
}

void seal_task_frame(std::vector<char>& frame, const task_key& key) noexcept {
    mac_memo(key).seal(frame);
}

} // namespace coproc::detail
