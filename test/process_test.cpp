// Test that header file is self-contained.
#include <coproc/process.hpp>
#include "async_checks.hpp"
#include "test_util.hpp"

#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::callback_probe;
using coproc::test::child_count;
using coproc::test::fd_count;
using coproc::test::is_aborted;
using coproc::test::watchdog;

namespace {

void nothing() {}
void throws() { throw std::invalid_argument("bad input to the child"); }
void exits_7() { _exit(7); }
void sleeps(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
void store(int* where, int value, std::string text) {
    *where = value + static_cast<int>(text.size());
}

// Reads what fd `out` received after redirecting the child's stderr there.
void throws_to(int out) {
    dup2(out, STDERR_FILENO);
    throw std::invalid_argument("bad input to the child");
}

} // namespace

TEST_SUITE_BEGIN("process");

TEST_CASE("exit codes: return 0, throw 1, _exit(7) 7, SIGKILL -9") {
    watchdog dog(30s);
    coproc::process ok(nothing), bad(throws), seven(exits_7), killed(sleeps, 10'000);
    CHECK_FALSE(ok.exitcode());
    CHECK(ok.pid() == 0);
    for (auto* p : {&ok, &bad, &seven, &killed})
        p->start();
    CHECK(killed.pid() > 0);
    CHECK(killed.is_alive());
    killed.kill();
    for (auto* p : {&ok, &bad, &seven, &killed})
        p->join();
    CHECK(ok.exitcode() == 0);
    CHECK(bad.exitcode() == 1);
    CHECK(seven.exitcode() == 7);
    CHECK(killed.exitcode() == -SIGKILL);
    CHECK_FALSE(killed.is_alive());
    killed.kill(); // already ended: nothing happens
}

TEST_CASE("terminate sends SIGTERM; the name appears in an escaping exception's report") {
    watchdog dog(30s);
    coproc::process p(sleeps, 10'000);
    CHECK(p.name.rfind("process-", 0) == 0);
    p.start();
    p.terminate();
    p.join();
    CHECK(p.exitcode() == -SIGTERM);

    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    coproc::process t(throws_to, fds[1]);
    t.name = "worker-x";
    t.start();
    t.join();
    close(fds[1]);
    char buf[512] = {};
    const ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    REQUIRE(n > 0);
    const std::string report(buf);
    CHECK(report.find("worker-x") != std::string::npos);
    CHECK(report.find("std::invalid_argument") != std::string::npos);
    CHECK(report.find("bad input to the child") != std::string::npos);
    CHECK(t.exitcode() == 1);
}

TEST_CASE("arguments are copied to the child by value") {
    watchdog dog(30s);
    void* mem =
        mmap(nullptr, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem != MAP_FAILED);
    int* where = static_cast<int*>(mem);
    coproc::process p([](int* w, int v) { *w = v; }, where, 41);
    p.start();
    p.join();
    CHECK(*where == 41);
    coproc::process q(store, where, 1, std::string("abc"));
    q.start();
    q.join();
    CHECK(*where == 4);
    munmap(mem, sizeof(int));
}

TEST_CASE("join_for times out on a running child, then succeeds") {
    watchdog dog(30s);
    coproc::process p(sleeps, 200);
    p.start();
    CHECK_FALSE(p.join_for(20ms));
    CHECK(p.is_alive());
    CHECK_FALSE(p.exitcode());
    CHECK(p.join_for(10s));
    CHECK(p.exitcode() == 0);
}

TEST_CASE("misuse is an error, not a crash") {
    coproc::process p(nothing);
    CHECK_THROWS_AS(p.join(), coproc::error);
    CHECK_THROWS_AS(p.kill(), coproc::error);
    CHECK_FALSE(p.is_alive());
    p.start();
    CHECK_THROWS_AS(p.start(), coproc::error);
    p.join();
    p.join(); // joining twice is fine
    CHECK(p.exitcode() == 0);
}

TEST_CASE("50 start/join cycles leave no zombie and no extra descriptor") {
    watchdog dog(60s);
    const int fds = fd_count();
    for (int i = 0; i < 50; ++i) {
        coproc::process p(nothing);
        p.start();
        p.join();
    }
    for (int i = 0; i < 10; ++i) { // destroyed without join(): the destructor joins
        coproc::process p(sleeps, 5);
        p.start();
    }
    CHECK(fd_count() == fds);
    const auto c = child_count();
    CHECK(c.total == 0);
    CHECK(c.zombies == 0);
}

TEST_CASE("a daemon process is terminated and reaped by its destructor") {
    watchdog dog(30s);
    pid_t pid;
    {
        coproc::process d(sleeps, 60'000);
        d.daemon = true;
        d.start();
        pid = d.pid();
        CHECK(d.is_alive());
    }
    CHECK(kill(pid, 0) == -1);
    CHECK(child_count().total == 0);
}

TEST_CASE("processes move into containers") {
    watchdog dog(30s);
    std::vector<coproc::process> v;
    for (int i = 0; i < 4; ++i)
        v.emplace_back(sleeps, 1);
    for (auto& p : v)
        p.start();
    std::vector<coproc::process> moved = std::move(v);
    for (auto& p : moved) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
}

COPROC_TEST_CASE("async_join waits without blocking the loop") {
    coproc::process p(sleeps, 200);
    p.start();
    int ticks = 0;
    asio::steady_timer t(io);
    auto tick = [](asio::steady_timer& t, int& ticks) -> asio::awaitable<void> {
        for (int i = 0; i < 10; ++i) {
            t.expires_after(5ms);
            co_await t.async_wait(asio::use_awaitable);
            ++ticks;
        }
    };
    asio::co_spawn(io, tick(t, ticks), asio::detached);
    co_await p.async_join();
    CHECK(ticks == 10);
    CHECK(p.exitcode() == 0);
    co_await p.async_join(); // already joined: returns at once
}

COPROC_TEST_CASE("async_join || a timer: the timer wins, the child keeps running and is joined "
                 "later") {
    coproc::process p(sleeps, 1000);
    p.start();
    auto join = p.async_join();
    co_await coproc::test::expect_timer_first(std::move(join), 20ms, 800ms);
    CHECK(p.is_alive());
    co_await p.async_join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("async_join: use_future, a callback, as_tuple, a strand; every cancellation type "
          "leaves the child running") {
    watchdog dog(60s);
    { // Asio's system executor makes its reactor's descriptors on first use: before counting
        asio::steady_timer warm_up(asio::system_executor{});
    }
    const auto fds = fd_count();
    {
        coproc::process p(sleeps, 50);
        p.start();
        auto f = p.async_join(asio::use_future);
        REQUIRE(f.wait_for(20s) == std::future_status::ready);
        f.get();
        CHECK(p.exitcode() == 0);
    }
    {
        coproc::process p(exits_7);
        p.start();
        callback_probe<void> probe;
        p.async_join(probe.handler());
        REQUIRE(probe.wait());
        CHECK_FALSE(probe.error);
        CHECK(p.exitcode() == 7);
    }
    {
        coproc::process never_started(nothing);
        auto f = never_started.async_join(asio::use_future);
        CHECK_THROWS_AS(f.get(), coproc::error); // misuse arrives through the completion
    }
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total}) {
        asio::io_context io;
        auto strand = asio::make_strand(io);
        coproc::process p(sleeps, 10'000);
        p.start();
        asio::cancellation_signal sig;
        bool done = false, in_strand = false;
        std::exception_ptr error;
        p.async_join(asio::bind_cancellation_slot(
            sig.slot(), asio::bind_executor(strand, [&](std::exception_ptr e) {
                in_strand = strand.running_in_this_thread();
                error = e;
                done = true;
            })));
        io.poll();
        CHECK_FALSE(done);
        sig.emit(type);
        coproc::test::run_until(io, done);
        CHECK(in_strand);
        CHECK(is_aborted(error));
        CHECK(p.is_alive());
        p.kill();
        io.restart();
        bool joined = false;
        asio::co_spawn(
            io,
            [](coproc::process& p) -> asio::awaitable<void> {
                const auto token = asio::experimental::as_tuple(asio::use_awaitable);
                auto [e] = co_await p.async_join(token);
                CHECK_FALSE(e);
            }(p),
            [&](std::exception_ptr e) {
                CHECK_FALSE(e);
                joined = true;
            });
        coproc::test::run_until(io, joined);
        CHECK(joined);
        CHECK(p.exitcode() == -SIGKILL);
    }
    CHECK(child_count().total == 0);
    CHECK(coproc::test::settled_fd_count(fds) == fds);
}

TEST_SUITE_END();
