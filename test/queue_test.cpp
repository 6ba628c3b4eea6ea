// Test that header file is self-contained.
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/queue.hpp>
#include "async_checks.hpp"
#include "test_util.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::callback_probe;
using coproc::test::fd_count;
using coproc::test::is_aborted;
using coproc::test::socket_fds;
using coproc::test::watchdog;

namespace {

using item = std::tuple<int, std::optional<int>, std::string>;

// The seed: def f(q): q.put([42, None, 'hello'])
void f(coproc::queue<item> q) { q.put({42, std::nullopt, "hello"}); }

constexpr int producers = 4, consumers = 4, per_producer = 50'000;

void produce(coproc::queue<int> q, int first, int n) {
    for (int i = 0; i < n; ++i)
        q.put(first + i);
}

void consume(coproc::queue<int> q, std::uint8_t* seen) {
    for (int v; (v = q.get()) >= 0;)
        __atomic_fetch_add(&seen[v], 1, __ATOMIC_RELAXED);
}

/// `size` bytes that differ from position to position, starting from `seed`.
std::string pattern(std::size_t size, char seed) {
    std::string s(size, '\0');
    for (std::size_t k = 0; k < size; ++k)
        s[k] = static_cast<char>(seed + k * 13);
    return s;
}

// Messages of many sizes, some far beyond the inline limit; each carries its own check.
std::string payload(int i) {
    const std::size_t size = static_cast<std::size_t>(i % 7 == 0 ? 300'000 + i : 10 * i);
    return pattern(size, static_cast<char>(i));
}

void produce_sized(coproc::queue<std::pair<int, std::string>> q, int first, int n) {
    for (int i = first; i < first + n; ++i)
        q.put({i, payload(i)});
}

void consume_sized(coproc::queue<std::pair<int, std::string>> q, std::uint8_t* seen) {
    for (;;) {
        auto [i, s] = q.get();
        if (i < 0)
            return;
        if (s == payload(i))
            __atomic_fetch_add(&seen[i], 1, __ATOMIC_RELAXED);
        else
            __atomic_fetch_add(&seen[i], 100, __ATOMIC_RELAXED);
    }
}

void put_ten(coproc::queue<int> q) {
    for (int i = 0; i < 10; ++i)
        q.put(i);
}

void work_and_mark(coproc::joinable_queue<int> q, int* sum) {
    for (int v; (v = q.get()) >= 0; q.task_done()) {
        std::this_thread::sleep_for(1ms);
        __atomic_fetch_add(sum, v, __ATOMIC_RELAXED);
    }
    q.task_done();
}

void put_later(coproc::queue<int> q, int v) {
    std::this_thread::sleep_for(50ms);
    q.put(v);
}

void put_after(coproc::queue<int> q, int v, int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    q.put(v);
}

int put_from_worker(coproc::queue<int> q, int v) {
    q.put(v);
    return v;
}

/// A queue and the end of its socket pair that puts go into, to forge messages with: the lower
/// of the two sockets its constructor opened (socketpair takes the lowest free descriptors).
template <class T> std::pair<coproc::queue<T>, int> queue_and_put_socket() {
    const auto before = socket_fds();
    coproc::queue<T> q;
    std::vector<int> added;
    for (int fd : socket_fds())
        if (!before.count(fd))
            added.push_back(fd);
    REQUIRE(added.size() == 2);
    return {q, added[0]};
}

/// A memfd holding `bytes`, sealed against changes if `sealed`.
int memfd_holding(const std::string& bytes, bool sealed) {
    const int fd = memfd_create("forged-item", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    if (sealed)
        REQUIRE(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == 0);
    return fd;
}

/// Sends what a putter sends for an out-of-line item: tag 1, the announced size, the memfd.
void send_out_of_line(int sock, int memfd, std::uint64_t announced) {
    char tag = 1;
    iovec iov[2] = {{&tag, 1}, {&announced, sizeof announced}};
    REQUIRE(coproc::test::send_with_fd(sock, iov, 2, memfd) ==
            1 + static_cast<ssize_t>(sizeof announced));
    close(memfd);
}

// Puts 0..n-1, with a random pause (up to 3 ms) after each.
void put_unevenly(coproc::queue<int> q, int n) {
    std::mt19937 rng(7);
    for (int i = 0; i < n; ++i) {
        q.put(i);
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    }
}

template <class T> T* shared_array(std::size_t n) {
    void* p =
        mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return static_cast<T*>(p);
}

} // namespace

TEST_SUITE_BEGIN("queue");

TEST_CASE("the seed: the child puts [42, None, 'hello'] and the parent gets it") {
    watchdog dog(30s);
    coproc::queue<item> q;
    coproc::process p(f, q);
    p.start();
    CHECK(q.get() == item{42, std::nullopt, "hello"});
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("4 producers, 4 consumers, 200k messages: each delivered exactly once") {
    watchdog dog(120s);
    constexpr int total = producers * per_producer;
    auto* seen = shared_array<std::uint8_t>(total);
    coproc::queue<int> q;
    std::vector<coproc::process> procs;
    for (int c = 0; c < consumers; ++c)
        procs.emplace_back(consume, q, seen);
    for (int p = 0; p < producers; ++p)
        procs.emplace_back(produce, q, p * per_producer, per_producer);
    for (auto& p : procs)
        p.start();
    for (int p = consumers; p < consumers + producers; ++p)
        procs[static_cast<std::size_t>(p)].join();
    for (int c = 0; c < consumers; ++c)
        q.put(-1);
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    int wrong = 0;
    for (int i = 0; i < total; ++i)
        wrong += seen[i] != 1;
    CHECK(wrong == 0);
    CHECK(q.empty());
    munmap(seen, total);
}

TEST_CASE("large and small items from 2 producers to 2 consumers arrive whole, once") {
    watchdog dog(120s);
    constexpr int n = 200;
    auto* seen = shared_array<std::uint8_t>(n);
    coproc::queue<std::pair<int, std::string>> q;
    std::vector<coproc::process> procs;
    procs.emplace_back(consume_sized, q, seen);
    procs.emplace_back(consume_sized, q, seen);
    procs.emplace_back(produce_sized, q, 0, n / 2);
    procs.emplace_back(produce_sized, q, n / 2, n / 2);
    for (auto& p : procs)
        p.start();
    procs[2].join();
    procs[3].join();
    q.put({-1, ""});
    q.put({-1, ""});
    for (auto& p : procs)
        p.join();
    int wrong = 0;
    for (int i = 0; i < n; ++i)
        wrong += seen[i] != 1;
    CHECK(wrong == 0);
    munmap(seen, n);
}

// Sizes on both sides of the inline limits (64 KiB where the send buffer is unknown, 256 KiB).
constexpr std::size_t edge_sizes[] = {0,       65'535,  65'536,  65'537,  200'000,
                                      262'143, 262'144, 262'145, 300'000, 1 << 20};

void put_edge_sizes(coproc::queue<std::string> q) {
    for (std::size_t size : edge_sizes)
        q.put(pattern(size, static_cast<char>(size % 251)));
}

TEST_CASE("items on both sides of the inline limits arrive whole from another process") {
    watchdog dog(60s);
    coproc::queue<std::string> q;
    coproc::process p(put_edge_sizes, q);
    p.start();
    for (std::size_t size : edge_sizes) {
        const std::string item = q.get();
        CHECK(item.size() == size);
        CHECK((item == pattern(size, static_cast<char>(size % 251))));
    }
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("a bounded queue makes producers wait (back-pressure)") {
    watchdog dog(30s);
    coproc::queue<int> q(2);
    coproc::process p(put_ten, q);
    p.start();
    std::this_thread::sleep_for(200ms);
    CHECK(q.qsize() == 2);
    CHECK(p.is_alive()); // blocked in put()
    for (int i = 0; i < 10; ++i)
        CHECK(q.get() == i);
    p.join();
    CHECK(q.empty());
}

TEST_CASE("put_for and get_for time out") {
    watchdog dog(30s);
    coproc::queue<int> q(2);
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(q.get_for(50ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    CHECK(q.put_for(1, 0s));
    CHECK(q.put_for(2, 10ms));
    t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(q.put_for(3, 50ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    CHECK(q.qsize() == 2);
    CHECK(q.get_for(1s) == 1);
    CHECK(q.put_for(3, 1s));
    CHECK(q.get() == 2);
    CHECK(q.get() == 3);
    CHECK_FALSE(q.get_for(0s));
    CHECK(q.empty());
}

COPROC_TEST_CASE("async_get and async_put on an io_context, the loop still running") {
    coproc::queue<item> q;
    coproc::process p(f, q);
    p.start();
    CHECK(co_await q.async_get() == item{42, std::nullopt, "hello"});
    co_await p.async_join();

    coproc::queue<int> bounded(1);
    co_await bounded.async_put(1);
    int ticks = 0;
    asio::co_spawn(
        io,
        [](coproc::queue<int> q, int* ticks) -> asio::awaitable<void> {
            asio::steady_timer t(co_await asio::this_coro::executor);
            for (int i = 0; i < 5; ++i) {
                t.expires_after(5ms);
                co_await t.async_wait(asio::use_awaitable);
                ++*ticks;
            }
            CHECK(co_await q.async_get() == 1);
        }(bounded, &ticks),
        asio::detached);
    co_await bounded.async_put(2); // full until the coroutine above gets
    CHECK(ticks == 5);
    CHECK(co_await bounded.async_get() == 2);
}

TEST_CASE("joinable_queue: join waits for task_done of every item") {
    watchdog dog(30s);
    int* sum = shared_array<int>(1);
    coproc::joinable_queue<int> q;
    coproc::process w1(work_and_mark, q, sum), w2(work_and_mark, q, sum);
    w1.start();
    w2.start();
    for (int i = 1; i <= 100; ++i)
        q.put(i);
    q.join();
    CHECK(*sum == 5050);
    q.put(-1);
    q.put(-1);
    w1.join();
    w2.join();
    q.join();
    CHECK_THROWS_AS(q.task_done(), coproc::error);
    munmap(sum, sizeof(int));
}

COPROC_TEST_CASE("joinable_queue: async_join resumes when the last item is done") {
    int* sum = shared_array<int>(1);
    coproc::joinable_queue<int> q;
    co_await q.async_join(); // nothing put: done at once
    coproc::process w(work_and_mark, q, sum);
    w.start();
    for (int i = 1; i <= 20; ++i)
        co_await q.async_put(i);
    co_await q.async_join();
    CHECK(*sum == 210);
    q.put(-1);
    co_await w.async_join();
    munmap(sum, sizeof(int));
}

TEST_CASE("get waits for a put made later by another process; async and blocking mix") {
    watchdog dog(30s);
    coproc::queue<int> q;
    coproc::process p(put_later, q, 1);
    p.start();
    CHECK(q.get() == 1); // spins briefly, then sleeps in recvmsg until the put
    p.join();
    asio::io_context io;
    asio::co_spawn(
        io, [](coproc::queue<int> q) -> asio::awaitable<void> { co_await q.async_put(2); }(q),
        asio::detached);
    io.run();
    CHECK(q.get() == 2);
    coproc::process p2(put_later, q, 3);
    p2.start();
    std::optional<int> got;
    asio::co_spawn(
        io,
        [](coproc::queue<int> q, std::optional<int>* got) -> asio::awaitable<void> {
            *got = co_await q.async_get(); // waits on the event loop
        }(q, &got),
        asio::detached);
    io.restart();
    io.run();
    CHECK(got == 3);
    p2.join();
    q.put(4);
    CHECK(q.get() == 4); // blocking again after the async wait
}

TEST_CASE("close, then use, is an error; copies share the queue") {
    coproc::queue<std::string> q;
    auto copy = q;
    q.put("x");
    CHECK(copy.get() == "x");
    copy.close();
    CHECK_THROWS_AS(q.put("y"), coproc::error);
    CHECK_THROWS_AS(q.get(), coproc::error);
}

TEST_CASE("qsize and empty after close() throw, like every other use") {
    coproc::queue<int> q;
    q.put(1);
    CHECK(q.qsize() == 1);
    CHECK_FALSE(q.empty());
    q.close();
    CHECK_THROWS_WITH_AS(q.qsize(), doctest::Contains("after close()"), coproc::error);
    CHECK_THROWS_WITH_AS(q.empty(), doctest::Contains("after close()"), coproc::error);
}

TEST_CASE("a forged out-of-line item is a clear error, and the queue goes on working") {
    watchdog dog(60s);
    auto [q, sock] = queue_and_put_socket<std::string>();
    const std::string big(100'000, 'b');
    std::vector<char> encoded;
    coproc::serialize_into(encoded, big);
    const std::string item(encoded.begin(), encoded.end());

    // 10 bytes announced as 1 TiB: refused before anything is allocated for it.
    send_out_of_line(sock, memfd_holding("0123456789", true), std::uint64_t{1} << 40);
    CHECK_THROWS_WITH_AS(q.get(), doctest::Contains("1099511627776 bytes"), coproc::error);
    // The right size in a memfd whose sender could still change it.
    send_out_of_line(sock, memfd_holding(item, false), item.size());
    CHECK_THROWS_WITH_AS(q.get(), doctest::Contains("not sealed"), coproc::error);
    // Sealed and announced right, it is an item like any other.
    send_out_of_line(sock, memfd_holding(item, true), item.size());
    CHECK(q.get() == big);

    q.put(big);
    q.put("small");
    CHECK(q.get() == big);
    CHECK(q.get() == "small");
}

TEST_CASE("a queue made before the pool reaches its tasks; one made after is refused") {
    watchdog dog(60s);
    coproc::queue<int> q;
    coproc::pool pool(2);
    CHECK(pool.apply_async(put_from_worker, {q, 5}).get() == 5);
    CHECK(q.get() == 5);
    coproc::queue<int> late;
    CHECK_THROWS_WITH_AS(pool.apply_async(put_from_worker, {late, 6}).get(),
                         doctest::Contains("create it before the pool"), coproc::error);
}

TEST_CASE("async_get completes through every completion token; a cancelled one takes no item") {
    watchdog dog(120s);
    coproc::queue<int> q;
    int next_put = 0, next_got = 0;
    coproc::test::check_every_token<int>(
        [&](auto&& token) { return q.async_get(std::forward<decltype(token)>(token)); },
        [&] { q.put(next_put++); }, [&](int v) { CHECK(v == next_got++); });
    CHECK(next_got == next_put);
    CHECK(q.empty());
}

TEST_CASE("async_put on a full queue completes through every completion token; a cancelled one "
          "puts nothing") {
    watchdog dog(120s);
    coproc::queue<int> q(1);
    q.put(-1);
    int next = 0, last_started = -1;
    std::vector<int> went_in{-1}, got;
    coproc::test::check_every_token<void>(
        [&](auto&& token) {
            last_started = next++;
            return q.async_put(last_started, std::forward<decltype(token)>(token));
        },
        [&] { got.push_back(q.get()); }, [&](std::monostate) { went_in.push_back(last_started); });
    got.push_back(q.get());
    CHECK(got == went_in);
    CHECK(went_in.size() < static_cast<std::size_t>(next + 1)); // the cancelled ones are missing
    CHECK_FALSE(q.get_for(0s));
}

COPROC_TEST_CASE("async_get || a timer: the timer wins, and the next get gets the item put later") {
    coproc::queue<int> q;
    coproc::process p(put_after, q, 7, 1000);
    p.start();
    auto get = q.async_get();
    co_await coproc::test::expect_timer_first(std::move(get), 10ms, 800ms);
    CHECK(co_await q.async_get() == 7);
    co_await p.async_join();
    CHECK(q.empty());
}

TEST_CASE("cancellation: a put that found no room puts nothing; a put or get already done is "
          "delivered; the free slots stay right") {
    watchdog dog(30s);
    asio::io_context io;
    coproc::queue<int> q(1);
    q.put(1);
    {
        asio::cancellation_signal sig;
        callback_probe<void> probe;
        q.async_put(
            2, asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, probe.handler())));
        io.poll();
        CHECK(probe.calls() == 0); // full: waiting
        sig.emit(asio::cancellation_type::terminal);
        io.poll();
        CHECK(probe.calls() == 1);
        CHECK(is_aborted(probe.error));
    }
    CHECK(q.qsize() == 1);
    CHECK(q.get() == 1);
    CHECK_FALSE(q.get_for(20ms)); // 2 was not put
    {
        // Room: the item goes in within the initiating function; a cancellation emitted before
        // the handler runs changes nothing.
        asio::cancellation_signal sig;
        callback_probe<void> probe;
        q.async_put(
            3, asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, probe.handler())));
        sig.emit(asio::cancellation_type::total);
        io.restart();
        io.poll();
        CHECK(probe.calls() == 1);
        CHECK_FALSE(probe.error);
    }
    {
        // An item taken is delivered, not dropped.
        asio::cancellation_signal sig;
        callback_probe<int> probe;
        q.async_get(
            asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, probe.handler())));
        sig.emit(asio::cancellation_type::terminal);
        io.restart();
        io.poll();
        CHECK(probe.calls() == 1);
        CHECK_FALSE(probe.error);
        CHECK(probe.value == 3);
    }
    CHECK(q.put_for(4, 0s)); // exactly one slot, as at the start
    CHECK_FALSE(q.put_for(5, 10ms));
    CHECK(q.get() == 4);
}

COPROC_TEST_CASE("joinable_queue: a cancelled async_join completes at once; a later one joins") {
    int* sum = shared_array<int>(1);
    coproc::joinable_queue<int> q;
    q.put(5);
    auto join = q.async_join(); // nobody marks the item done
    co_await coproc::test::expect_timer_first(std::move(join), 20ms, 500ms);
    coproc::process w(work_and_mark, q, sum);
    w.start();
    co_await q.async_join();
    CHECK(*sum == 5);
    q.put(-1);
    co_await w.async_join();
    munmap(sum, sizeof(int));
}

TEST_CASE("1,000 random cancellations of async_get racing with a producer process: every item "
          "arrives exactly once, no descriptor leaks") {
    watchdog dog(240s);
    const int fds = fd_count();
    {
        constexpr int n = 1000;
        coproc::queue<int> q;
        coproc::process producer(put_unevenly, q, n);
        producer.start();
        std::vector<int> seen(n);
        const auto c = coproc::test::random_cancellations<int>(
            [&](auto&& token) { return q.async_get(std::forward<decltype(token)>(token)); },
            [&](int v) {
                REQUIRE((v >= 0 && v < n));
                ++seen[static_cast<std::size_t>(v)];
            },
            n, 1000, 300us);
        producer.join();
        int once = 0;
        for (int k : seen)
            once += k == 1;
        CHECK(once == n);
        CHECK(c.delivered == n);
        CHECK(c.aborted >= 1000);
        CHECK(c.aborted_early >= 1000); // while the producer was at work
        CHECK_FALSE(q.get_for(0s));
        MESSAGE("delivered " << c.delivered << ", cancelled " << c.aborted << " ("
                             << c.aborted_early << " before the last item)"
                             << ", cancellations that came after the item was taken "
                             << c.late_cancels);
    }
    CHECK(fd_count() == fds);
}

TEST_SUITE_END();
