// What a child of coproc's starts with and what a worker may tell its pool: SIGCHLD, inherited
// descriptors and memory, worker exits nobody reports, buffers left behind, and replies a
// worker has no business sending.
#include <coproc/detail/wire.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/queue.hpp>
#include "../lib/child_setup.hpp"
#include "../lib/sanitizers.hpp"
#include "../lib/transport.hpp"
#include "tasks.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <linux/kcmp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

// ------------------------------------------------------------------ helpers

/// Runs `body` in a forked child and returns its exit code, or -1 if it had not finished after
/// `limit` (it is killed then): a hang fails the check instead of the suite.
int in_child(const std::function<int()>& body, std::chrono::seconds limit) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 99;
        try {
            code = body();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "in_child: %s\n", e.what());
            code = 98;
        } catch (...) {
            code = 98;
        }
        std::_Exit(code);
    }
    const int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    REQUIRE(pfd >= 0);
    pollfd p{pfd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(limit.count() * 1000));
    ::close(pfd);
    if (ready <= 0)
        ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (ready <= 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/// The descriptors open in process `pid` (in order).
std::vector<int> fds_of(pid_t pid) {
    std::vector<int> out;
    const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = ::opendir(dir.c_str())) {
        while (const dirent* e = ::readdir(d))
            if (e->d_name[0] != '.')
                out.push_back(std::atoi(e->d_name));
        ::closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

/// Which of this process's descriptors `mine` process `pid` shares (the same open file, as
/// kcmp(2) compares them).
std::vector<int> shared_with(pid_t pid, const std::vector<int>& mine) {
    std::vector<int> out;
    for (int theirs : fds_of(pid))
        for (int fd : mine)
            if (::syscall(SYS_kcmp, ::getpid(), pid, KCMP_FILE, fd, theirs) == 0)
                out.push_back(fd);
    return out;
}

/// shared_with() once the child is past its start-up (a child shares the descriptors it
/// inherited until it has closed them): waits up to 5 s for an empty answer.
std::vector<int> kept_by(pid_t pid, const std::vector<int>& mine) {
    auto shared = shared_with(pid, mine);
    for (int i = 0; i < 500 && !shared.empty(); ++i) {
        std::this_thread::sleep_for(10ms);
        shared = shared_with(pid, mine);
    }
    return shared;
}

/// The descriptors this process has open above stderr.
std::vector<int> open_fds_above_stdio() {
    auto fds = coproc::detail::open_fds();
    std::erase_if(fds, [](int fd) { return fd <= 2; });
    return fds;
}

bool maps_pool_slots(pid_t pid) {
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    std::string line;
    while (std::getline(maps, line))
        if (line.find("coproc-pool-slots") != std::string::npos)
            return true;
    return false;
}

[[maybe_unused]] long rss_kib(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string key;
    while (status >> key) {
        if (key == "VmRSS:") {
            long kib = 0;
            status >> kib;
            return kib;
        }
        status.ignore(1 << 20, '\n');
    }
    return -1;
}

pid_t parent_of(pid_t pid) {
    const auto table = coproc::test::process_table();
    const auto it = table.find(pid);
    return it == table.end() ? 0 : it->second.ppid;
}

// ------------------------------------------------------------------ task functions

[[noreturn]] int die() { std::abort(); }

/// Forks a grandchild that exits with 7 and waits for it: its exit status, or -errno.
int fork_and_wait() {
    const pid_t g = ::fork();
    if (g == 0)
        ::_exit(7);
    int st = 0;
    if (::waitpid(g, &st, 0) != g)
        return -errno;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1000;
}

int pid_of_worker() { return static_cast<int>(::getpid()); }

std::size_t open_in_worker() { return open_fds_above_stdio().size(); }

int put_pid(coproc::queue<int> q) {
    q.put(static_cast<int>(::getpid()));
    return 1;
}

[[maybe_unused]] std::string big_result(std::size_t n) { return std::string(n, 'x'); }

void send_to_pool(const std::vector<char>& frame) {
    const int fd = coproc::test::own_socket();
    if (fd < 0 || ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) !=
                      static_cast<ssize_t>(frame.size()))
        throw std::runtime_error("could not write to the worker's socket");
}

/// Sends an "initializer failed" frame, as only a starting worker may, then returns 1.
int claim_init_failed() {
    std::vector<char> out;
    const std::size_t at = begin_frame(out, coproc::detail::frame_kind::init_failed, 0, 0);
    try {
        throw std::runtime_error("forged initializer failure");
    } catch (...) {
        coproc::detail::encode_current_exception(out);
    }
    coproc::detail::end_frame(out, at, 0);
    send_to_pool(out);
    return 1;
}

/// Answers task `id` itself with 7 and a run time of 2^63 ns, then exits before the worker
/// loop could answer it again.
[[noreturn]] int absurd_duration(std::uint64_t id) {
    std::vector<char> out;
    const std::size_t at = begin_frame(out, coproc::detail::frame_kind::result, id, 0);
    coproc::serialize_into(out, 7);
    coproc::detail::end_frame(out, at, std::uint64_t{1} << 63);
    send_to_pool(out);
    ::_exit(0);
}

} // namespace

TEST_SUITE_BEGIN("isolation");

// ------------------------------------------------------------------ SIGCHLD

// A daemon that ignores SIGCHLD: the fork server and the workers start with the default action,
// so a dead worker is reported and replaced, and their own children can be waited for.
static int pool_with_sigchld(bool nocldwait) {
    tasks::no_core_dumps();
    struct sigaction sa{};
    sa.sa_handler = nocldwait ? SIG_DFL : SIG_IGN;
    sa.sa_flags = nocldwait ? SA_NOCLDWAIT : 0;
    ::sigaction(SIGCHLD, &sa, nullptr);
    coproc::pool pool(2);
    try {
        (void)pool.apply_async(die).get();
        return 10;
    } catch (const coproc::worker_lost&) {
    }
    for (int i = 0; i < 20; ++i)
        if (pool.apply_async(tasks::add, {i, 1}).get() != i + 1)
            return 11;
    if (pool.apply_async(fork_and_wait).get() != 7)
        return 12;
    for (int i = 0; pool.pids().size() != 2; ++i) {
        if (i == 500)
            return 13; // the dead worker was never replaced
        std::this_thread::sleep_for(10ms);
    }
    coproc::queue<int> q;
    coproc::process p(
        [](coproc::queue<int> q) { q.put(fork_and_wait()); }, q);
    p.start();
    const int status = q.get();
    try {
        p.join();
    } catch (const coproc::error&) { // its status is reaped away: SIGCHLD is ignored here
    }
    return status == 7 ? 0 : 14;
}

TEST_CASE("with SIGCHLD ignored, a dead worker still fails its task and is replaced") {
    CHECK(in_child([] { return pool_with_sigchld(false); }, 30s) == 0);
}

TEST_CASE("with SA_NOCLDWAIT set, a dead worker still fails its task and is replaced") {
    CHECK(in_child([] { return pool_with_sigchld(true); }, 30s) == 0);
}

// With SIGCHLD ignored, the kernel reaps a child the moment it ends: one that ends before its
// parent opened its pidfd must not make start() fail (or worse, leave it a reused pid).
TEST_CASE("with SIGCHLD ignored, processes that end at once still start and join") {
    CHECK(in_child(
              [] {
                  ::signal(SIGCHLD, SIG_IGN);
                  for (int i = 0; i < 1000; ++i) {
                      coproc::process p([] {});
                      p.start();
                      try {
                          p.join();
                      } catch (const coproc::error&) { // its status is reaped away
                      }
                  }
                  return 0;
              },
              120s) == 0);
}

TEST_CASE("a worker whose exit the fork server never reports still fails its task") {
    watchdog dog(60s);
    tasks::no_core_dumps();
    coproc::pool pool(1);
    const pid_t worker = pool.apply_async(pid_of_worker).get();
    const pid_t fork_server = parent_of(worker);
    REQUIRE(fork_server > 0);
    REQUIRE(fork_server != ::getpid());
    ::kill(fork_server, SIGSTOP); // it can neither reap the worker nor report its exit
    auto r = pool.apply_async(die);
    r.wait_for(10s);
    REQUIRE(r.ready());
    try {
        r.get();
        FAIL_CHECK("a task that aborted returned");
    } catch (const coproc::worker_lost& e) {
        CHECK(e.pid() == worker);
        CHECK(std::string(e.what()).find("not reported") != std::string::npos);
    }
    // The replacement comes from the pool itself once the stopped fork server is given up on.
    auto again = pool.apply_async(tasks::add, {1, 2});
    again.wait_for(20s);
    REQUIRE(again.ready());
    CHECK(again.get() == 3);
    ::kill(fork_server, SIGCONT);
}

// ------------------------------------------------------------------ inherited descriptors

TEST_CASE("a process child has none of the pools' private descriptors or memory") {
    watchdog dog(60s);
    coproc::pool a(2);
    coproc::pool b(2);
    const auto mine = coproc::detail::private_fds();
    // Per pool: 2 worker sockets, 2 pidfds, its slot memfd, its fork server's sockets, its
    // loop's reactor descriptors.
    REQUIRE(mine.size() >= 2 * 7);
    coproc::queue<int> q;
    coproc::process p([](coproc::queue<int> q) { q.get(); }, q);
    p.start();
    CHECK(kept_by(p.pid(), mine).empty());
    CHECK_FALSE(maps_pool_slots(p.pid()));
    CHECK(maps_pool_slots(::getpid()));
    q.put(1);
    p.join();
    CHECK(p.exitcode() == 0);
}

TEST_CASE("a worker holds no descriptor of another pool, also when the pool forks it itself") {
    watchdog dog(90s);
    coproc::pool a(2);
    coproc::pool b(2);
    for (int round = 0; round < 2; ++round) {
        CAPTURE(round);
        const auto mine = coproc::detail::private_fds();
        for (auto* pool : {&a, &b})
            for (pid_t worker : pool->pids())
                CHECK(kept_by(worker, mine).empty());
        if (round == 1)
            break;
        // Round two: b's fork server is gone, so b forks replacements from this process.
        const pid_t fork_server = parent_of(b.pids().at(0));
        REQUIRE(fork_server > 0);
        REQUIRE(fork_server != ::getpid());
        ::kill(fork_server, SIGKILL);
        for (int i = 0; b.pids().size() != 2 || parent_of(b.pids().at(0)) != ::getpid(); ++i) {
            REQUIRE(i < 1000);
            std::this_thread::sleep_for(10ms);
        }
    }
}

TEST_CASE("close_fds: a worker keeps only stdio, its socket and the handles") {
    watchdog dog(60s);
    int user_pipe[2];
    REQUIRE(::pipe(user_pipe) == 0); // inherited by any fork
    coproc::queue<int> q;
    const std::vector<int> user_files{user_pipe[0], user_pipe[1]};
    {
        coproc::pool plain(1);
        CHECK(shared_with(plain.pids().at(0), user_files).size() == 2);
    }
    coproc::pool pool(coproc::pool_options{.processes = 2, .close_fds = true});
    for (pid_t worker : pool.pids())
        CHECK(kept_by(worker, user_files).empty());
    // Left: its socket, the queue's descriptors, maybe the reply helper's timer.
    CHECK(pool.apply_async(open_in_worker).get() <= 5);
    CHECK(pool.apply_async(put_pid, {q}).get() == 1);
    CHECK(q.get() > 0);
    ::close(user_pipe[0]);
    ::close(user_pipe[1]);
}

// ------------------------------------------------------------------ buffers

#if !COPROC_ASAN // ASan keeps freed memory in quarantine: RSS says nothing
TEST_CASE("a large result's buffers are given back by the worker and the pool") {
    watchdog dog(120s);
    coproc::pool pool(1);
    const pid_t worker = pool.apply_async(pid_of_worker).get();
    const long parent_before = rss_kib(::getpid());
    {
        const std::string big = pool.apply_async(big_result, {std::size_t{256} << 20}).get();
        CHECK(big.size() == std::size_t{256} << 20);
    }
    CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // after the large reply is taken
    CHECK(rss_kib(worker) < 64 * 1024);
    CHECK(rss_kib(::getpid()) < parent_before + 64 * 1024);
}

TEST_CASE("a result over the inline frame limit arrives out of line; no buffer stays in its worker") {
    watchdog dog(120s);
    coproc::pool pool(1);
    const pid_t worker = pool.apply_async(pid_of_worker).get();
    const std::size_t over = coproc::detail::max_frame_payload + 1;
    {
        const std::string big = pool.apply_async(big_result, {over}).get();
        CHECK(big.size() == over);
        CHECK(big.find_first_not_of('x') == std::string::npos);
    }
    CHECK(pool.apply_async(pid_of_worker).get() == worker); // the same worker serves on
    CHECK(rss_kib(worker) < 64 * 1024);
}
#endif

// ------------------------------------------------------------------ what a worker may send

TEST_CASE("a worker that reports a failed initializer after answering is killed, not obeyed") {
    watchdog dog(60s);
    coproc::pool pool(coproc::pool_options{.processes = 1, .close_fds = true});
    const pid_t worker = pool.apply_async(pid_of_worker).get();
    try {
        (void)pool.apply_async(claim_init_failed).get();
        FAIL_CHECK("the task returned");
    } catch (const coproc::worker_lost& e) {
        CHECK(e.pid() == worker);
        CHECK(std::string(e.what()).find("malformed reply") != std::string::npos);
    }
    CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // not a broken pool
}

TEST_CASE("a reply claiming an absurd run time does not upset dispatch") {
    watchdog dog(60s);
    coproc::pool pool(coproc::pool_options{.processes = 1, .close_fds = true});
    CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3); // task 1
    CHECK(pool.apply_async(absurd_duration, {std::uint64_t{2}}).get() == 7);
    const auto squares = pool.map_async(tasks::square, tasks::iota(1000), 1).get();
    CHECK(squares == tasks::squares(1000));
}

TEST_SUITE_END();
