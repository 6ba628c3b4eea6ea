// Test that header file is self-contained.
#include <coproc/pipe.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include "alloc_counter.hpp"
#include "async_checks.hpp"
#include "test_util.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <optional>
#include <random>
#include <set>
#include <string>
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

// The seed: def f(conn): conn.send([42, None, 'hello']); conn.close()
void f(coproc::connection<item> conn) {
    conn.send({42, std::nullopt, "hello"});
    conn.close();
}

void close_now(coproc::connection<int> conn) { conn.close(); }
void sleep_holding(coproc::connection<int>) { std::this_thread::sleep_for(30s); }

std::string big_string() {
    std::string s(64 << 20, '\0');
    for (std::size_t i = 0; i < s.size(); ++i)
        s[i] = static_cast<char>(i * 31 + (i >> 12));
    return s;
}
void send_big(coproc::connection<std::string> conn) { conn.send(big_string()); }

void echo_twice(coproc::connection<int> conn) {
    for (int i = 0; i < 2; ++i)
        conn.send(conn.recv() * 2);
}

// Sizes around the 64 KiB receive buffer and far beyond it (a big one in between small ones).
std::vector<std::size_t> frame_sizes() {
    return {0,       1,       7,        8,      9,       65'519,  65'520,
            65'527,  65'528,  65'529,   65'536, 65'537,  1 << 20, 3,
            1 << 20, 200'000, 17 << 20, 5,      1 << 20, 100'000, 2};
}
std::string pattern(std::size_t size, std::size_t seed) {
    std::string s(size, '\0');
    for (std::size_t k = 0; k < size; ++k)
        s[k] = static_cast<char>(seed * 7 + k * 13 + (k >> 10));
    return s;
}
void send_sizes(coproc::connection<std::string> conn) {
    std::size_t i = 0;
    for (const auto size : frame_sizes())
        conn.send(pattern(size, i++));
}

// Receives the next message on an end the parent used before; exits 0 if it is 2.
void expect_two(coproc::connection<int> conn) { _exit(conn.recv() == 2 ? 0 : 1); }

// Once a message comes on `go`, receives the next two on `conn`; exits 0 if they are 2 and 3.
void expect_two_three(coproc::connection<int> conn, coproc::connection<int> go) {
    (void)go.recv();
    const int first = conn.recv();
    const int second = conn.recv();
    _exit(first == 2 && second == 3 ? 0 : 1);
}

void send_later(coproc::connection<int> conn, int v) {
    std::this_thread::sleep_for(50ms);
    conn.send(v);
}

void send_after(coproc::connection<int> conn, int v, int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    conn.send(v);
}

// Message i of the random-cancellation run: mostly small, every 16th from 64 to 320 KiB (it
// arrives in parts, so cancellations fall in the middle of frames).
std::string uneven_message(int i) {
    const std::size_t size = i % 16 == 5 ? 65'536 + static_cast<std::size_t>(i) * 997 % (1 << 18)
                                         : static_cast<std::size_t>(i % 100);
    return pattern(size, static_cast<std::size_t>(i));
}

// Sends uneven_message(0..n-1), with a random pause (up to 3 ms) after each; then waits for a
// message back before it closes its end.
void send_unevenly(coproc::connection<std::string> conn, int n) {
    std::mt19937 rng(11);
    for (int i = 0; i < n; ++i) {
        conn.send(uneven_message(i));
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    }
    conn.recv();
}

int send_from_worker(coproc::connection<int> conn, int v) {
    conn.send(v);
    return v;
}

/// Writes all of `bytes` to `fd`.
void write_all(int fd, const std::string& bytes) {
    for (std::size_t done = 0; done < bytes.size();) {
        const ssize_t w = write(fd, bytes.data() + done, bytes.size() - done);
        REQUIRE(w > 0);
        done += static_cast<std::size_t>(w);
    }
}

} // namespace

TEST_SUITE_BEGIN("pipe");

TEST_CASE("a header claiming 1 GiB, then 3 MiB and end of stream: eof_error, no 1 GiB buffer") {
    watchdog dog(60s);
    const auto before = socket_fds();
    auto [r, w] = coproc::pipe<std::string>(false);
    std::vector<int> added;
    for (int fd : socket_fds())
        if (!before.count(fd))
            added.push_back(fd);
    REQUIRE(added.size() == 2);
    const int send_end = added[1]; // socketpair gives (receiver, sender) in ascending order
    const std::uint64_t claimed = std::uint64_t{1} << 30;
    std::string bytes(sizeof claimed + (3 << 20), 'x');
    std::memcpy(bytes.data(), &claimed, sizeof claimed);

    const int writer = dup(send_end);
    REQUIRE(writer >= 0);
    w.close(); // the writer is the last descriptor of the sending end now
    coproc::test::take_largest_allocation();
    std::thread sender([&] {
        write_all(writer, bytes);
        close(writer);
    });
    CHECK_THROWS_WITH_AS(r.recv(), doctest::Contains("in the middle of a message"),
                         coproc::eof_error);
    sender.join();
    CHECK(coproc::test::take_largest_allocation() <= (std::size_t{16} << 20));
}

TEST_CASE("the seed: the child sends [42, None, 'hello'] and the parent receives it") {
    watchdog dog(30s);
    auto [parent_conn, child_conn] = coproc::pipe<item>();
    coproc::process p(f, child_conn);
    p.start();
    CHECK(parent_conn.recv() == item{42, std::nullopt, "hello"});
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("recv throws eof_error when the peer closes its end") {
    watchdog dog(30s);
    auto [parent_conn, child_conn] = coproc::pipe<int>();
    coproc::process p(close_now, child_conn);
    p.start();
    child_conn.close(); // the parent's copy of the child's end
    CHECK_THROWS_AS(parent_conn.recv(), coproc::eof_error);
    CHECK(parent_conn.poll()); // end of stream counts as readable
    p.join();
}

TEST_CASE("recv throws eof_error when the peer dies; send then throws eof_error too") {
    watchdog dog(30s);
    auto [parent_conn, child_conn] = coproc::pipe<int>();
    coproc::process p(sleep_holding, child_conn);
    p.start();
    child_conn.close();
    CHECK_FALSE(parent_conn.poll(20ms));
    p.kill();
    CHECK_THROWS_AS(parent_conn.recv(), coproc::eof_error);
    CHECK_THROWS_AS(parent_conn.send(1), coproc::eof_error);
    p.join();
}

TEST_CASE("a 64 MiB message arrives whole") {
    watchdog dog(60s);
    auto [r, w] = coproc::pipe<std::string>(false);
    coproc::process p(send_big, w);
    p.start();
    w.close();
    const std::string got = r.recv();
    CHECK(got.size() == std::size_t{64} << 20);
    CHECK(got == big_string());
    p.join();
}

TEST_CASE("duplex round trips, poll, raw bytes") {
    watchdog dog(30s);
    auto [a, b] = coproc::pipe<int>();
    coproc::process p(echo_twice, b);
    p.start();
    CHECK_FALSE(a.poll());
    a.send(21);
    CHECK(a.poll(5s));
    CHECK(a.recv() == 42);
    a.send(-1);
    CHECK(a.recv() == -2);
    p.join();

    const std::vector<std::byte> bytes{std::byte{1}, std::byte{0}, std::byte{255}};
    a.send_bytes(bytes);
    CHECK(b.recv_bytes() == bytes);
    b.send_bytes({});
    CHECK(a.recv_bytes().empty());
}

TEST_CASE("misuse: one-way ends, closed ends and unconnected handles throw coproc::error") {
    auto [r, w] = coproc::pipe<int>(false);
    CHECK_THROWS_AS(r.send(1), coproc::error);
    CHECK_THROWS_AS(w.recv(), coproc::error);
    w.send(5);
    CHECK(r.recv() == 5);
    auto copy = r; // a handle: the copy is the same end
    r.close();
    CHECK_THROWS_AS(copy.recv(), coproc::error);
    coproc::connection<int> none;
    CHECK_THROWS_AS(none.send(1), coproc::error);
    none.close();
}

TEST_CASE("a malformed message is an error, not a crash") {
    auto [a, b] = coproc::pipe<std::string>();
    const std::vector<std::byte> junk{std::byte{0xff}, std::byte{0xff}, std::byte{0xff}};
    a.send_bytes(junk);
    CHECK_THROWS_AS(b.recv(), coproc::error);
}

COPROC_TEST_CASE("async_send and async_recv on an io_context") {
    auto [a, b] = coproc::pipe<item>();
    coproc::process p(f, b);
    p.start();
    b.close();
    CHECK(co_await a.async_recv() == item{42, std::nullopt, "hello"});
    bool eof = false;
    try {
        co_await a.async_recv();
    } catch (const coproc::eof_error&) {
        eof = true;
    }
    CHECK(eof);
    co_await p.async_join();

    auto [x, y] = coproc::pipe<std::string>();
    const std::string big(3 << 20, 'x'); // larger than the socket buffer: sent in steps
    asio::co_spawn(
        io,
        [](coproc::connection<std::string> c, std::string s) { return c.async_send(s); }(x, big),
        asio::detached);
    CHECK(co_await y.async_recv() == big);
}

TEST_CASE("messages of many sizes, around the receive buffer and beyond, arrive whole in order") {
    watchdog dog(60s);
    auto [r, w] = coproc::pipe<std::string>(false);
    coproc::process p(send_sizes, w);
    p.start();
    w.close();
    std::size_t i = 0;
    for (const auto size : frame_sizes()) {
        const std::string got = r.recv();
        CHECK(got.size() == size);
        CHECK(got == pattern(size, i++));
    }
    CHECK_THROWS_AS(r.recv(), coproc::eof_error);
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("an end changes hands: a child receives what the parent left in it") {
    watchdog dog(30s);
    auto [a, b] = coproc::pipe<int>();
    b.send(1);
    b.send(2);
    CHECK(a.recv() == 1);
    coproc::process p(expect_two, a);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    b.send(3);
    CHECK(a.recv() == 3);
}

TEST_CASE("an end changes hands after its holder received several messages from the socket at "
          "once: a child started before gets the rest, and poll sees them") {
    watchdog dog(30s);
    auto [a, b] = coproc::pipe<int>();
    auto [go_r, go_w] = coproc::pipe<int>(false);
    coproc::process p(expect_two_three, a, go_r);
    p.start();
    for (const int v : {1, 2, 3})
        b.send(v);
    CHECK(a.recv() == 1);
    CHECK(a.poll(0ms));
    go_w.send(0);
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK_FALSE(a.poll(0ms));
    b.send(4);
    CHECK(a.recv() == 4);
}

COPROC_TEST_CASE("blocking calls work on an end after an async wait on it") {
    auto [a, b] = coproc::pipe<int>();
    coproc::process p(send_later, b, 5);
    p.start();
    CHECK(co_await a.async_recv() == 5); // waits: the child sends after 50 ms
    co_await p.async_join();
    b.send(6);
    CHECK(a.recv() == 6);
    a.send(7);
    CHECK(b.recv() == 7);
    CHECK_FALSE(a.poll(10ms));
}

TEST_CASE("a connection made before the pool reaches its tasks") {
    watchdog dog(60s);
    auto [r, w] = coproc::pipe<int>(false);
    coproc::pool pool(1);
    CHECK(pool.apply_async(send_from_worker, {w, 7}).get() == 7);
    CHECK(r.recv() == 7);
    auto [r2, w2] = coproc::pipe<int>(false);
    CHECK_THROWS_WITH_AS(pool.apply_async(send_from_worker, {w2, 8}).get(),
                         doctest::Contains("create it before the pool"), coproc::error);
}

TEST_CASE("async_recv completes through every completion token; a cancelled one takes no message") {
    watchdog dog(120s);
    auto [a, b] = coproc::pipe<int>();
    int next_sent = 0, next_got = 0;
    coproc::test::check_every_token<int>(
        [&, &a = a](auto&& token) { return a.async_recv(std::forward<decltype(token)>(token)); },
        [&, &b = b] { b.send(next_sent++); }, [&](int v) { CHECK(v == next_got++); });
    CHECK(next_got == next_sent);
    CHECK_FALSE(a.poll());
}

COPROC_TEST_CASE("async_recv || a timer: the timer wins, and the next recv gets the message sent "
                 "later") {
    auto [a, b] = coproc::pipe<int>();
    coproc::process p(send_after, b, 9, 1000);
    p.start();
    auto recv = a.async_recv();
    co_await coproc::test::expect_timer_first(std::move(recv), 10ms, 800ms);
    CHECK(co_await a.async_recv() == 9);
    co_await p.async_join();
}

TEST_CASE("a cancelled async_send that has sent part of its message finishes it; the receiver "
          "gets it whole") {
    watchdog dog(60s);
    asio::io_context io;
    auto [a, b] = coproc::pipe<std::string>();
    const std::string big = pattern(3 << 20, 1); // more than the socket takes at once
    asio::cancellation_signal sig;
    callback_probe<void> probe;
    a.async_send(
        big, asio::bind_cancellation_slot(sig.slot(), asio::bind_executor(io, probe.handler())));
    io.poll();
    CHECK(probe.calls() == 0); // part of it is out, the rest waits for room
    sig.emit(asio::cancellation_type::terminal);
    io.poll();
    CHECK(probe.calls() == 0); // not cut off
    std::string got;
    std::thread reader([&, &b = b] { got = b.recv(); });
    while (probe.calls() == 0)
        io.run_one_for(100ms);
    reader.join();
    CHECK_FALSE(probe.error);
    CHECK(got == big);
    a.send("after");
    CHECK(b.recv() == "after");
}

TEST_CASE("1,000 random cancellations of async_recv racing with a sender process, frames cut "
          "in parts among them: every message arrives once, whole, in order") {
    watchdog dog(240s);
    const int fds = fd_count();
    {
        constexpr int n = 1000;
        auto [r, w] = coproc::pipe<std::string>();
        coproc::process sender(send_unevenly, w, n);
        sender.start();
        w.close();
        std::vector<std::string> expected;
        for (int i = 0; i < n; ++i)
            expected.push_back(uneven_message(i));
        int next = 0, wrong = 0;
        const auto c = coproc::test::random_cancellations<std::string>(
            [&, &r = r](auto&& token) {
                return r.async_recv(std::forward<decltype(token)>(token));
            },
            [&](const std::string& m) { wrong += m != expected[static_cast<std::size_t>(next++)]; },
            n, 1000, 300us);
        r.send("done");
        sender.join();
        CHECK(sender.exitcode() == 0);
        CHECK(wrong == 0);
        CHECK(next == n);
        CHECK(c.delivered == n);
        CHECK(c.aborted >= 1000);
        CHECK(c.aborted_early >= 1000);               // while the producer was at work
        CHECK_THROWS_AS(r.recv(), coproc::eof_error); // nothing left over
        MESSAGE("delivered " << c.delivered << ", cancelled " << c.aborted << " ("
                             << c.aborted_early << " before the last message)"
                             << ", cancellations that came after the message was taken "
                             << c.late_cancels);
    }
    CHECK(fd_count() == fds);
}

TEST_SUITE_END();
