// Large payloads: arguments and results above out_of_line_threshold travel in a sealed memfd
// passed next to a small frame; what a worker may pass is checked, and nothing leaks.
#include <coproc/detail/wire.hpp>
#include <coproc/pool.hpp>
#include <coproc/serialize.hpp>
#include "../lib/sanitizers.hpp"
#include "tasks.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::detail::frame_kind;
using coproc::detail::out_of_line_threshold;
using coproc::test::fd_count;
using coproc::test::watchdog;

namespace {

// The bytes a std::vector<char> of `n` elements takes in a payload (cereal's u64 size first).
constexpr std::size_t payload_of(std::size_t n) { return n + sizeof(std::uint64_t); }

// Elements of a std::vector<char> whose payload is `bytes`.
constexpr std::size_t elements_for(std::size_t bytes) { return bytes - sizeof(std::uint64_t); }

// The helpers below walk raw pointers, not vector iterators: the sanitizer builds are -O0, where
// every operator[] or iterator step over many MiB is a call.
std::vector<char> pattern(std::size_t n, unsigned seed) {
    std::vector<char> v(n);
    char* p = v.data();
    for (std::size_t i = 0; i < n; ++i)
        p[i] = static_cast<char>((i * 131 + seed) & 0xff);
    return v;
}

// Whether this process maps an out-of-line payload now (a worker, while it runs a task).
bool maps_payload() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line))
        if (line.find("memfd:coproc-payload") != std::string::npos)
            return true;
    return false;
}

// The task's arguments arrived in a mapped memfd (or not), and their checksum.
std::pair<bool, std::uint64_t> inspect(std::vector<char> v) {
    std::uint64_t sum = 0;
    const char* p = v.data();
    for (std::size_t i = 0, n = v.size(); i < n; ++i)
        sum = sum * 31 + static_cast<unsigned char>(p[i]);
    return {maps_payload(), sum};
}

std::uint64_t checksum(const std::vector<char>& v) { return inspect(v).second; }

std::vector<char> make_bytes(std::size_t n, unsigned seed) { return pattern(n, seed); }

std::vector<char> reverse_bytes(std::vector<char> v) {
    char* p = v.data();
    for (std::size_t i = 0, n = v.size(); i < n / 2; ++i) {
        const char t = p[i];
        p[i] = p[n - 1 - i];
        p[n - 1 - i] = t;
    }
    return v;
}

int worker_fds() { return fd_count(); }

// Payload sizes around the threshold, and a large one.
std::vector<std::size_t> edge_sizes() {
    const std::size_t t = out_of_line_threshold;
    return {t - 1, t, t + 1, t + 4096, std::size_t{64} << 20};
}

// ------------------------------------------------------------------ forged replies

// Sends `bytes` to the pool with `fd` attached (unless negative).
void send_to_pool(const std::vector<char>& bytes, int fd) {
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    if (coproc::test::send_with_fd(coproc::test::own_socket(), &iov, 1, fd, MSG_NOSIGNAL) !=
        static_cast<ssize_t>(bytes.size()))
        throw std::runtime_error("could not write to the worker's socket");
}

enum class forgery {
    valid,           // a well-formed out-of-line result holding 42
    pipe,            // the descriptor is a pipe, not a memfd
    unsealed,        // a memfd without seals
    larger_than_fd,  // the frame claims more than the memfd holds
    smaller_than_fd, // the frame claims less than the memfd holds
    no_descriptor,   // the frame says out of line, no descriptor came
    cut_short,       // the descriptor and half a header, then the worker exits
};

// An out-of-line result frame for task `id` claiming `claimed` bytes.
std::vector<char> result_frame(std::uint64_t id, std::uint64_t claimed) {
    std::vector<char> out;
    const std::size_t at = coproc::detail::begin_frame(out, frame_kind::result, id, 0);
    out.resize(out.size() + sizeof claimed);
    std::memcpy(out.data() + at + sizeof(coproc::detail::frame_header), &claimed, sizeof claimed);
    coproc::detail::end_frame(out, at, 1, coproc::detail::frame_out_of_line);
    return out;
}

// A memfd holding 42 as a result payload, sealed with `seals`.
int memfd_of_42(int seals) {
    std::vector<char> payload;
    coproc::serialize_into(payload, 42);
    const int fd = ::memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ::write(fd, payload.data(), payload.size()) !=
                      static_cast<ssize_t>(payload.size()))
        throw std::runtime_error("memfd");
    if (seals && ::fcntl(fd, F_ADD_SEALS, seals) != 0)
        throw std::runtime_error("seals");
    return fd;
}

// Answers task `id` itself as `kind` says, then exits before the worker loop could answer.
[[noreturn]] int forge(std::uint64_t id, forgery kind) {
    constexpr int sealed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
    std::vector<char> probe;
    coproc::serialize_into(probe, 42);
    const std::uint64_t size = probe.size();
    switch (kind) {
    case forgery::valid:
        send_to_pool(result_frame(id, size), memfd_of_42(sealed));
        break;
    case forgery::pipe: {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe");
        send_to_pool(result_frame(id, size), p[0]);
        break;
    }
    case forgery::unsealed:
        send_to_pool(result_frame(id, size), memfd_of_42(0));
        break;
    case forgery::larger_than_fd:
        send_to_pool(result_frame(id, size + 4096), memfd_of_42(sealed));
        break;
    case forgery::smaller_than_fd:
        send_to_pool(result_frame(id, size - 1), memfd_of_42(sealed));
        break;
    case forgery::no_descriptor:
        send_to_pool(result_frame(id, size), -1);
        break;
    case forgery::cut_short: {
        auto frame = result_frame(id, size);
        frame.resize(10);
        send_to_pool(frame, memfd_of_42(sealed));
        break;
    }
    }
    ::pause(); // killed for a malformed reply, or exits below
    ::_exit(0);
}

// Like forge(), but a valid reply exits at once (the worker loop must not answer again).
[[noreturn]] int forge_and_exit(std::uint64_t id, forgery kind) {
    if (kind == forgery::valid || kind == forgery::cut_short) {
        constexpr int sealed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
        std::vector<char> probe;
        coproc::serialize_into(probe, 42);
        auto frame = result_frame(id, probe.size());
        if (kind == forgery::cut_short)
            frame.resize(10);
        send_to_pool(frame, memfd_of_42(sealed));
        ::_exit(0);
    }
    forge(id, kind);
}

} // namespace

TEST_SUITE_BEGIN("large_payload");

// ------------------------------------------------------------------ the wire

TEST_CASE("a payload goes out of line only above the threshold, in a sealed memfd") {
    for (const std::size_t extra : {0, 1, 4096}) {
        CAPTURE(extra);
        std::vector<char> out;
        const std::size_t at = coproc::detail::begin_frame(out, frame_kind::result, 7, 0);
        out.resize(out.size() + out_of_line_threshold + extra, 'a');
        auto fd = coproc::detail::move_out_of_line(out, at, 0);
        CHECK(static_cast<bool>(fd) == (extra != 0));
        if (!fd) {
            CHECK(out.size() == sizeof(coproc::detail::frame_header) + out_of_line_threshold);
            continue;
        }
        CHECK(out.size() == sizeof(coproc::detail::frame_header) + sizeof(std::uint64_t));
        CHECK(out.capacity() == out.size()); // the large buffer is not kept
        CHECK((::fcntl(fd.get(), F_GET_SEALS) & F_SEAL_WRITE) != 0);
        coproc::detail::end_frame(out, at, 0, coproc::detail::frame_out_of_line);
        coproc::detail::frame_decoder dec;
        auto area = dec.write_area(out.size());
        std::memcpy(area.data(), out.data(), out.size());
        dec.commit(out.size());
        const auto f = dec.next();
        REQUIRE(f);
        REQUIRE(f->out_of_line());
        const auto [inline_part, count] = f->split();
        CHECK(inline_part.empty());
        CHECK(count == out_of_line_threshold + extra);
        coproc::detail::mapped_payload m(std::move(fd), count);
        CHECK(m.bytes().size() == count);
        CHECK(std::all_of(m.bytes().begin(), m.bytes().end(), [](char c) { return c == 'a'; }));
    }
}

TEST_CASE("a received descriptor is refused unless it is a sealed memfd of the claimed size") {
    using coproc::detail::mapped_payload;
    using coproc::detail::payload_fd;
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    ::close(p[1]);
    CHECK_THROWS_WITH_AS(mapped_payload(payload_fd(p[0]), 8), doctest::Contains("not a memfd"),
                         coproc::error);
    CHECK_THROWS_WITH_AS(mapped_payload(payload_fd(memfd_of_42(0)), 4),
                         doctest::Contains("not sealed"), coproc::error);
    constexpr int sealed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
    CHECK_THROWS_WITH_AS(mapped_payload(payload_fd(memfd_of_42(sealed)), 1 << 20),
                         doctest::Contains("its memfd holds 4"), coproc::error);
    CHECK_THROWS_WITH_AS(mapped_payload(payload_fd(memfd_of_42(sealed)), 0),
                         doctest::Contains("claims 0 bytes"), coproc::error);
    mapped_payload ok(payload_fd(memfd_of_42(sealed)), 4);
    int v = 0;
    coproc::deserialize_from(ok.bytes(), v);
    CHECK(v == 42);
}

// ------------------------------------------------------------------ through a pool

TEST_CASE("arguments below, at and above the threshold arrive whole; only those above mapped") {
    watchdog dog(120s);
    coproc::pool pool(2);
    for (const std::size_t bytes : edge_sizes()) {
        CAPTURE(bytes);
        const auto v = pattern(elements_for(bytes), 3);
        REQUIRE(payload_of(v.size()) == bytes);
        const auto [mapped, sum] = pool.apply_async(inspect, {v}).get();
        CHECK(mapped == (bytes > out_of_line_threshold));
        CHECK(sum == checksum(v));
    }
}

TEST_CASE("results below, at and above the threshold arrive whole, by apply and map") {
    watchdog dog(120s);
    coproc::pool pool(2);
    for (const std::size_t bytes : edge_sizes()) {
        CAPTURE(bytes);
        const std::size_t n = elements_for(bytes);
        CHECK(pool.apply_async(make_bytes, {n, 5u}).get() == pattern(n, 5));
        // A chunk of two results is one payload of twice the size.
        const auto both = pool.map_async(reverse_bytes, std::vector{pattern(n, 1), pattern(n, 2)},
                                         2)
                              .get();
        REQUIRE(both.size() == 2);
        const auto r1 = reverse_bytes(pattern(n, 1)), r2 = reverse_bytes(pattern(n, 2));
        CHECK(both[0] == r1);
        CHECK(both[1] == r2);
    }
}

TEST_CASE("a map of many distinct 1 MiB arguments: each task gets its own bytes, whole") {
    // Their frames' buffers are reused from one job to the next: every byte of a reused buffer
    // must be the new frame's.
    watchdog dog(120s);
    coproc::pool pool(2);
    std::vector<std::vector<char>> blobs;
    std::vector<std::pair<bool, std::uint64_t>> expected;
    for (unsigned i = 0; i < 48; ++i) {
        blobs.push_back(pattern((std::size_t{1} << 20) - 8 * i, i));
        expected.emplace_back(false, checksum(blobs.back()));
    }
    CHECK(pool.map_async(inspect, blobs, 1).get() == expected);
    CHECK(pool.map_async(inspect, blobs, 3).get() == expected);
}

#if COPROC_ASAN || COPROC_TSAN
constexpr int large_call_rounds = 2; // 4 MiB each way costs seconds per call under a sanitizer
#else
constexpr int large_call_rounds = 4; // more calls than payload descriptors (256) in all
#endif

TEST_CASE("four hundred large calls (200 under a sanitizer) leave no descriptor behind, in the "
          "pool or its workers") {
    watchdog dog(300s);
    coproc::pool pool(2);
    const std::size_t n = out_of_line_threshold + 1000;
    const auto v = pattern(n, 9);
    // Warm up both workers, then count.
    for (int i = 0; i < 8; ++i)
        CHECK(pool.apply_async(reverse_bytes, {v}).get().size() == n);
    const int before = fd_count();
    const auto workers_before = pool.starmap_async(worker_fds, std::vector<std::tuple<>>(8), 1).get();
    std::vector<coproc::async_result<std::vector<char>>> calls;
    for (int round = 0; round < large_call_rounds; ++round) {
        calls.clear();
        for (int i = 0; i < 100; ++i)
            calls.push_back(pool.apply_async(reverse_bytes, {v}));
        for (auto& c : calls)
            CHECK(c.get().size() == n);
    }
    calls.clear();
    // The last jobs are freed on the pool's loop just after their results are set.
    for (int i = 0; i < 200 && fd_count() != before; ++i)
        std::this_thread::sleep_for(10ms);
    CHECK(fd_count() == before);
    const auto workers_after = pool.starmap_async(worker_fds, std::vector<std::tuple<>>(8), 1).get();
    CHECK(*std::max_element(workers_after.begin(), workers_after.end()) ==
          *std::max_element(workers_before.begin(), workers_before.end()));
}

TEST_CASE("more large jobs than payload descriptors: the rest go inline, all arrive") {
    watchdog dog(300s);
    coproc::pool pool(2);
    const std::size_t count = coproc::detail::payload_fd::max_payload_fds + 20;
    const auto v = pattern(out_of_line_threshold + 64, 4);
    std::vector<coproc::async_result<std::pair<bool, std::uint64_t>>> calls;
    for (std::size_t i = 0; i < count; ++i)
        calls.push_back(pool.apply_async(inspect, {v}));
    std::size_t mapped = 0;
    const auto expected = checksum(v);
    for (auto& c : calls) {
        const auto [was_mapped, sum] = c.get();
        mapped += was_mapped;
        CHECK(sum == expected);
    }
    CHECK(mapped >= coproc::detail::payload_fd::max_payload_fds / 2);
}

// ------------------------------------------------------------------ what a worker may pass

TEST_CASE("a well-formed out-of-line reply from a worker is taken") {
    watchdog dog(60s);
    const int before = fd_count();
    {
        coproc::pool pool(coproc::pool_options{.processes = 1, .close_fds = true});
        CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // task 1
        CHECK(pool.apply_async(forge_and_exit, {std::uint64_t{2}, forgery::valid}).get() == 42);
        CHECK(pool.apply_async(tasks::add, {2, 3}).get() == 5);
    }
    CHECK(fd_count() == before);
}

TEST_CASE("a forged out-of-line reply is refused with a clear error and its worker replaced") {
    struct forged_case {
        forgery kind;
        const char* message;
    };
    const forged_case cases[] = {
        {forgery::pipe, "not a memfd"},
        {forgery::unsealed, "not sealed"},
        {forgery::larger_than_fd, "its memfd holds"},
        {forgery::smaller_than_fd, "its memfd holds"},
        {forgery::no_descriptor, "no descriptor came with it"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.message);
        watchdog dog(60s);
        const int before = fd_count();
        {
            coproc::pool pool(coproc::pool_options{.processes = 1, .close_fds = true});
            CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // task 1
            try {
                (void)pool.apply_async(forge, {std::uint64_t{2}, c.kind}).get();
                FAIL_CHECK("the forged reply was taken");
            } catch (const coproc::worker_lost& e) {
                const std::string what = e.what();
                CHECK(what.find("malformed reply") != std::string::npos);
                CHECK(what.find(c.message) != std::string::npos);
            }
            CHECK(pool.apply_async(tasks::add, {2, 3}).get() == 5); // a new worker serves
        }
        CHECK(fd_count() == before);
    }
}

TEST_CASE("a worker that dies after passing a result's memfd with half its frame leaks nothing") {
    watchdog dog(60s);
    const int before = fd_count();
    {
        coproc::pool pool(coproc::pool_options{.processes = 1, .close_fds = true});
        CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // task 1
        CHECK_THROWS_AS(
            (void)pool.apply_async(forge_and_exit, {std::uint64_t{2}, forgery::cut_short}).get(),
            coproc::worker_lost);
        CHECK(pool.apply_async(tasks::add, {2, 3}).get() == 5);
    }
    CHECK(fd_count() == before);
}

TEST_CASE("a worker killed while it returns a large result: the task is lost, nothing leaks") {
    watchdog dog(120s);
    const int before = fd_count();
    {
        coproc::pool pool(1);
        const int worker = pool.apply_async(tasks::worker_pid).get();
        // Killed while it builds, writes or sends its 256 MiB result.
        auto r = pool.apply_async(make_bytes, {std::size_t{256} << 20, 1u});
        std::this_thread::sleep_for(50ms);
        ::kill(worker, SIGKILL);
        try {
            (void)r.get();
            // It may have finished first on a fast machine: then the result is whole.
        } catch (const coproc::worker_lost& e) {
            CHECK(e.pid() == worker);
        }
        CHECK(pool.apply_async(tasks::add, {2, 3}).get() == 5);
    }
    CHECK(fd_count() == before);
}

// ------------------------------------------------------------------ memory

// ASan keeps freed memory in quarantine (RSS says nothing); TSan cannot start threads in a
// child forked from a threaded process (the pool in the child below).
#if !COPROC_ASAN && !COPROC_TSAN
TEST_CASE("map of 512 x 1 MiB results peaks below twice the result size in the parent") {
    watchdog dog(300s);
    constexpr std::size_t items = 512, item = std::size_t{1} << 20;
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        int code = 1;
        try {
            coproc::pool pool(2);
            (void)pool.apply_async(tasks::add, {1, 2}).get(); // workers up
            rusage ru{};
            ::getrusage(RUSAGE_SELF, &ru);
            const long base_kib = ru.ru_maxrss;
            std::vector<std::tuple<std::size_t, unsigned>> args(items, {item, 1u});
            auto call = pool.starmap_async(make_bytes, args);
            call.wait(); // get() returns a copy: the peak of the call itself is measured
            ::getrusage(RUSAGE_SELF, &ru);
            const long grown_kib = ru.ru_maxrss - base_kib;
            const long result_kib = static_cast<long>(items * item / 1024);
            std::fprintf(stderr, "map of 512 x 1 MiB: parent max RSS grew by %ld MiB\n",
                         grown_kib / 1024);
            const auto results = call.get();
            code = results.size() == items && results.back() == pattern(item, 1) &&
                           grown_kib < 2 * result_kib
                       ? 0
                       : 2;
        } catch (...) {
            code = 3;
        }
        ::_exit(code);
    }
    int st = 0;
    REQUIRE(::waitpid(child, &st, 0) == child);
    REQUIRE(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
}
#endif

TEST_SUITE_END();
