// Task errors, dead workers, timeouts and failing initializers (the pool's error paths).
#include "../lib/task_key.hpp"
#include "../lib/transport.hpp"
#include "../lib/worker.hpp"
#include "../lib/zygote.hpp"
#include "tasks.hpp"
#include "test_util.hpp"
#include <coproc/pool.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <future>
#include <numeric>
#include <optional>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <typeinfo>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

struct my_error : std::exception {
    const char* what() const noexcept override { return "my error happened"; }
};

int throw_invalid(int x) { throw std::invalid_argument("bad argument " + std::to_string(x)); }
int throw_out_of_range(int) { throw std::out_of_range("index out of range"); }
int throw_runtime(int) { throw std::runtime_error("it failed at runtime"); }
int throw_mine(int) { throw my_error{}; }
int throw_int(int x) { throw x; }
int fail_at_5(int x) {
    if (x == 5)
        throw std::invalid_argument("five");
    return x * x;
}
int fail_every_7th(int x) {
    if (x % 7 == 3)
        throw std::out_of_range("item " + std::to_string(x));
    return x;
}

int slow_last_four(int x) {
    if (x >= 1'996)
        std::this_thread::sleep_for(600ms);
    return x;
}

int abort_at_5(int x) {
    if (x == 5)
        std::abort();
    return x;
}
int sigkill_at_5(int x) {
    if (x == 5)
        ::raise(SIGKILL);
    return x;
}
int exit_at_5(int x) {
    if (x == 5)
        ::_exit(3);
    return x;
}
int hang_at_3(int x) {
    if (x == 3)
        for (;;)
            ::pause();
    return x;
}

void throwing_init() { throw std::runtime_error("the initializer broke"); }

/// Run counts per task, in memory the workers share with the test (made before the pool).
std::atomic<int>* g_runs = nullptr;
int count_run(int i) {
    g_runs[i].fetch_add(1, std::memory_order_relaxed);
    return i;
}

/// A user type whose load reads more than its save wrote: its value cannot be decoded.
struct lopsided {
    int x = 0;
    template <class Archive> void save(Archive& ar) const { ar(x); }
    template <class Archive> void load(Archive& ar) {
        std::string more;
        ar(x, more);
    }
};
lopsided make_lopsided(int x) { return {x}; }

/// Receives the outcome of one hand-made job.
struct capture_sink : coproc::detail::task_sink {
    std::promise<std::string> outcome; // "ok" or the error's what()
    void on_result(const coproc::detail::job&, std::span<const char>) override {
        outcome.set_value("ok");
    }
    void on_error(const coproc::detail::job&, std::exception_ptr e) override {
        try {
            std::rethrow_exception(e);
        } catch (const coproc::error& x) {
            outcome.set_value(std::string("coproc::error: ") + x.what());
        } catch (const std::exception& x) {
            outcome.set_value(std::string("other: ") + x.what());
        }
    }
};

/// Runs one job made for tasks::square(7), its task prefix (entry offset, function offset,
/// entry digest; the pool seals the digest into the frame's MAC) first altered by `tamper`;
/// returns what the sink got.
template <class Tamper> std::string run_tampered(coproc::detail::pool_core& core, Tamper tamper) {
    auto sink = std::make_shared<capture_sink>();
    auto fut = sink->outcome.get_future();
    auto j = coproc::detail::make_job(
        &tasks::square,
        [](coproc::detail::writer& w) {
            w(7);
            return 1;
        },
        sink, 0);
    std::int64_t prefix[3];
    char* at = j->frame.data() + sizeof(coproc::detail::frame_header);
    std::memcpy(prefix, at, sizeof prefix);
    tamper(prefix);
    std::memcpy(at, prefix, sizeof prefix);
    core.submit(std::move(j));
    if (fut.wait_for(10s) != std::future_status::ready)
        return "no outcome within 10 s";
    return fut.get();
}

using tasks::iota;
using tasks::squares;

/// Calls `f` and returns the exception of type E it threw (a failed check if it threw none).
template <class E, class F> std::optional<E> thrown(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e;
    } catch (const std::exception& e) {
        FAIL_CHECK("threw " << typeid(e).name() << ": " << e.what());
        return std::nullopt;
    }
    FAIL_CHECK("threw nothing");
    return std::nullopt;
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

bool wait_for_full_pool(const coproc::pool& pool, pid_t gone = -1) {
    const auto until = std::chrono::steady_clock::now() + 3s;
    for (;;) {
        const auto pids = pool.pids();
        if (pids.size() == pool.size() && std::find(pids.begin(), pids.end(), gone) == pids.end())
            return true;
        if (std::chrono::steady_clock::now() > until)
            return false;
        std::this_thread::sleep_for(5ms);
    }
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

} // namespace

TEST_SUITE_BEGIN("pool");

// ------------------------------------------------------------------ task exceptions

TEST_CASE("standard exceptions thrown by a task arrive as the same type with the same what()") {
    watchdog dog(30s);
    coproc::pool pool(2);
    if (auto e =
            thrown<std::invalid_argument>([&] { pool.apply_async(throw_invalid, {7}).get(); })) {
        const std::exception& thrown_as = *e;
        CHECK(typeid(thrown_as) == typeid(std::invalid_argument));
        CHECK(std::string(e->what()) == "bad argument 7");
    }
    if (auto e =
            thrown<std::out_of_range>([&] { pool.apply_async(throw_out_of_range, {1}).get(); })) {
        const std::exception& thrown_as = *e;
        CHECK(typeid(thrown_as) == typeid(std::out_of_range));
        CHECK(std::string(e->what()) == "index out of range");
    }
    if (auto e = thrown<std::runtime_error>([&] { pool.apply_async(throw_runtime, {1}).get(); })) {
        const std::exception& thrown_as = *e;
        CHECK(typeid(thrown_as) == typeid(std::runtime_error));
        CHECK(std::string(e->what()) == "it failed at runtime");
    }
    // get() may be called again: the same exception again.
    auto r = pool.apply_async(throw_invalid, {8});
    CHECK_THROWS_WITH_AS(r.get(), "bad argument 8", std::invalid_argument);
    CHECK_THROWS_WITH_AS(r.get(), "bad argument 8", std::invalid_argument);
}

TEST_CASE("other exceptions thrown by a task arrive as remote_error with type_name() and what()") {
    watchdog dog(30s);
    coproc::pool pool(2);
    if (auto e = thrown<coproc::remote_error>([&] { pool.apply_async(throw_mine, {1}).get(); })) {
        CHECK(contains(e->type_name(), "my_error"));
        CHECK(std::string(e->what()) == "my error happened");
    }
    if (auto e = thrown<coproc::remote_error>([&] { pool.apply_async(throw_int, {42}).get(); })) {
        CHECK(e->type_name() == "int");
        CHECK(std::string(e->what()).size() > 0);
    }
    CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3);
}

COPROC_TEST_CASE("task exceptions arrive in an awaiting coroutine") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    CHECK_THROWS_WITH_AS(co_await pool.apply(throw_invalid, 1), "bad argument 1",
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(co_await pool.apply(throw_out_of_range, 1), "index out of range",
                         std::out_of_range);
    CHECK_THROWS_WITH_AS(co_await pool.apply(throw_runtime, 1), "it failed at runtime",
                         std::runtime_error);
    CHECK_THROWS_WITH_AS(co_await pool.apply(throw_mine, 1), "my error happened",
                         coproc::remote_error);
    CHECK_THROWS_AS(co_await pool.apply(throw_int, 1), coproc::remote_error);
    CHECK_THROWS_WITH_AS(co_await pool.apply(tasks::check_positive, -4), "negative: -4",
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(co_await pool.map(fail_at_5, iota(10)), "five", std::invalid_argument);
    CHECK(co_await pool.apply(tasks::add, 1, 2) == 3);
    pool.close();
    co_await pool.async_join();
}

TEST_CASE("in map the first task error fails the whole call") {
    watchdog dog(30s);
    coproc::pool pool(2);
    for (std::size_t chunksize : {0, 1, 4, 100}) {
        CAPTURE(chunksize);
        CHECK_THROWS_WITH_AS(pool.map_async(fail_at_5, iota(20), chunksize).get(), "five",
                             std::invalid_argument);
        if (auto e = thrown<std::out_of_range>(
                [&] { pool.map_async(fail_every_7th, iota(40), chunksize).get(); })) {
            const std::string what = e->what();
            CHECK((what == "item 3" || what == "item 10" || what == "item 17" ||
                   what == "item 24" || what == "item 31" || what == "item 38"));
        }
        std::vector<std::tuple<int>> items{{1}, {5}};
        CHECK_THROWS_AS(pool.starmap_async(fail_at_5, items, chunksize).get(),
                        std::invalid_argument);
    }
    CHECK(pool.map_async(tasks::square, iota(20)).get() == squares(20)); // still usable
}

// ------------------------------------------------------------------ dead workers

namespace {

struct death {
    const char* name;
    int (*task)(int);
    int signal;
    int exit_status;
};
const death deaths[] = {
    {"abort()", abort_at_5, SIGABRT, -1},
    {"raise(SIGKILL)", sigkill_at_5, SIGKILL, -1},
    {"_exit(3)", exit_at_5, 0, 3},
};

void check_lost(const coproc::worker_lost& e, const death& d) {
    CHECK(e.pid() > 0);
    CHECK(e.pid() != ::getpid());
    CHECK(e.signal() == d.signal);
    CHECK(e.exit_status() == d.exit_status);
    const std::string what = e.what();
    CHECK(contains(what, std::to_string(e.pid())));
    CHECK(contains(what, "task"));
    CHECK(contains(what, "int (*)(int)"));
}

} // namespace

TEST_CASE("a worker that dies mid-map fails the call with worker_lost; the pool recovers") {
    watchdog dog(60s);
    tasks::no_core_dumps();
    coproc::pool pool(2);
    for (const auto& d : deaths) {
        CAPTURE(d.name);
        const auto before = pool.pids();
        REQUIRE(before.size() == 2);
        auto lost = thrown<coproc::worker_lost>([&] { pool.map_async(d.task, iota(20), 1).get(); });
        REQUIRE(lost);
        check_lost(*lost, d);
        CHECK(std::find(before.begin(), before.end(), lost->pid()) != before.end());
        CHECK(pool.map_async(tasks::square, iota(100)).get() == squares(100));
        CHECK(wait_for_full_pool(pool, lost->pid()));
        CHECK(pool.size() == 2);
    }
    // With apply_async, the task whose worker died fails; the others return, except those that
    // had finished in that worker but whose replies died with it (a task runs at most once).
    std::vector<coproc::async_result<int>> rs;
    for (int i = 0; i < 10; ++i)
        rs.push_back(pool.apply_async(exit_at_5, {i}));
    auto culprit = thrown<coproc::worker_lost>([&] { (void)rs[5].get(); });
    REQUIRE(culprit);
    CHECK(culprit->exit_status() == 3);
    for (int i = 0; i < 10; ++i) {
        if (i == 5)
            continue;
        CAPTURE(i);
        try {
            const int v = rs[i].get();
            CHECK(v == i);
        } catch (const coproc::worker_lost& e) {
            CHECK(e.pid() == culprit->pid());
            CHECK(contains(e.what(), "before sending its result"));
        }
    }
    CHECK(wait_for_full_pool(pool));
}

COPROC_TEST_CASE("a worker killed under an awaited map fails it with worker_lost") {
    tasks::no_core_dumps();
    coproc::pool pool(io.get_executor(), {.processes = 2});
    for (const auto& d : deaths) {
        CAPTURE(d.name);
        std::optional<coproc::worker_lost> lost;
        try {
            co_await pool.map(d.task, iota(20), 1);
        } catch (const coproc::worker_lost& e) {
            lost = e;
        }
        REQUIRE(lost);
        check_lost(*lost, d);
        CHECK(co_await pool.map(tasks::square, iota(50)) == squares(50));
        for (int i = 0; i < 300 && pool.pids().size() != 2; ++i)
            co_await sleep_for(10ms);
        CHECK(pool.pids().size() == 2);
    }
    pool.close();
    co_await pool.async_join();
}

// ------------------------------------------------------------------ timeouts

TEST_CASE("a task exceeding task_timeout fails with timeout_error; the others succeed") {
    watchdog dog(30s);
    coproc::pool pool({.processes = 2, .task_timeout = 200ms});
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<coproc::async_result<int>> rs;
    for (int i = 0; i < 8; ++i)
        rs.push_back(pool.apply_async(hang_at_3, {i}));
    for (int i = 0; i < 8; ++i) {
        CAPTURE(i);
        if (i == 3) {
            auto e = thrown<coproc::timeout_error>([&] { rs[i].get(); });
            REQUIRE(e);
            CHECK(contains(e->what(), "timeout"));
        } else {
            CHECK(rs[i].get() == i);
        }
    }
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= 200ms);
    CHECK(took < 5s);
    // A map with a hanging item fails as a whole; the pool keeps working.
    CHECK_THROWS_AS(pool.map_async(hang_at_3, iota(6), 1).get(), coproc::timeout_error);
    CHECK(pool.map_async(tasks::square, iota(30)).get() == squares(30));
    CHECK(pool.apply_async(tasks::sleep_ms, {50}).get() == 50); // under the limit: fine
    CHECK(wait_for_full_pool(pool));
}

// task_timeout bounds a job: with it, a map of items measured as short still sends one chunk
// per job, so items that each run well within the limit never fail together.
TEST_CASE("with task_timeout a map of short items whose last ones are slower does not time out") {
    watchdog dog(30s);
    coproc::pool pool({.processes = 2, .task_timeout = 1s});
    // The last four items take 600 ms each: any job of two of them would take 1.2 s.
    CHECK(pool.map_async(slow_last_four, iota(2'000), 1).get() == iota(2'000));
    pool.close();
    pool.join();
}

COPROC_TEST_CASE("task_timeout with an awaited apply") {
    coproc::pool pool(io.get_executor(), {.processes = 1, .task_timeout = 150ms});
    CHECK_THROWS_AS(co_await pool.apply(hang_at_3, 3), coproc::timeout_error);
    CHECK(co_await pool.apply(hang_at_3, 4) == 4);
    pool.close();
    co_await pool.async_join();
}

// ------------------------------------------------------------------ initializer

TEST_CASE("an initializer that throws fails tasks with coproc::error and spawns no more workers") {
    watchdog dog(30s);
    const auto before = coproc::test::child_count().total;
    {
        coproc::pool pool({.processes = 2, .initializer = throwing_init});
        for (int i = 0; i < 3; ++i) {
            auto e = thrown<coproc::error>([&] { pool.apply_async(tasks::add, {i, 1}).get(); });
            REQUIRE(e);
            CHECK(contains(e->what(), "the initializer broke"));
        }
        CHECK_THROWS_AS(pool.map_async(tasks::square, iota(10)).get(), coproc::error);
        // The workers exited and none was started again: only the pool's fork server is left.
        const auto fork_server = before + 1;
        for (int i = 0; i < 300 && coproc::test::child_count().total != fork_server; ++i)
            std::this_thread::sleep_for(10ms);
        CHECK(coproc::test::child_count().total == fork_server);
        std::this_thread::sleep_for(100ms);
        CHECK(coproc::test::child_count().total == fork_server);
        CHECK(pool.pids().empty());
    }
    CHECK(coproc::test::child_count().zombies == 0);
}

TEST_CASE("a task runs at most once, even when its worker dies before its result is sent") {
    watchdog dog(60s);
    constexpr int n = 200;
    void* mem = ::mmap(nullptr, n * sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem != MAP_FAILED);
    g_runs = new (mem) std::atomic<int>[n] {};
    {
        coproc::pool pool(1);
        // Known as fast: the worker batches the replies of the next tasks.
        CHECK(pool.map_async(tasks::square, iota(2000), 1).get() == squares(2000));
        std::vector<coproc::async_result<int>> runs;
        for (int i = 0; i < n; ++i)
            runs.push_back(pool.apply_async(count_run, {i}));
        auto killer = pool.apply_async(sigkill_at_5, {5});
        int returned = 0, lost_after_running = 0;
        for (int i = 0; i < n; ++i) {
            try {
                const int v = runs[i].get();
                CHECK(v == i);
                ++returned;
            } catch (const coproc::worker_lost& e) {
                CHECK(contains(e.what(), "before sending its result"));
                ++lost_after_running;
            }
        }
        CHECK_THROWS_AS(killer.get(), coproc::worker_lost);
        CHECK(returned + lost_after_running == n);
        for (int i = 0; i < n; ++i)
            CHECK(g_runs[i].load() == 1); // ran once, whatever its outcome
        CHECK(pool.apply_async(tasks::add, {1, 2}).get() == 3);
        MESSAGE(returned << " returned, " << lost_after_running << " lost after running");
    }
    ::munmap(mem, n * sizeof(std::atomic<int>));
}

// ------------------------------------------------------------------ the fork server

// What a pool gives its fork server: here with `slots` worker slots in a memfd (leaked).
coproc::detail::worker_config zygote_config(std::size_t slots) {
    coproc::detail::worker_config cfg;
    cfg.parent = ::getpid();
    cfg.segments = coproc::detail::mapped_segments();
    cfg.slots_fd = ::memfd_create("test-slots", MFD_CLOEXEC);
    REQUIRE(cfg.slots_fd >= 0);
    REQUIRE(::ftruncate(cfg.slots_fd, sizeof(coproc::detail::worker_slot) * slots) == 0);
    cfg.slots = slots;
    return cfg;
}

TEST_CASE("the fork server refuses a worker slot out of range and serves on") {
    watchdog dog(60s);
    const auto cfg = zygote_config(2);
    coproc::detail::zygote z(cfg);
    for (std::size_t bad : {std::size_t{2}, std::size_t{1000}, std::size_t{0xffffffff}}) {
        try {
            (void)z.spawn(bad);
            FAIL_CHECK("slot " << bad << " was accepted");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EINVAL);
            CHECK(contains(e.what(), "out-of-range worker slot"));
        }
    }
    const auto w = z.spawn(1); // still serving
    CHECK(w.pid > 0);
    ::close(w.fd); // EOF: the worker exits
    ::close(w.pidfd);
    z.stop();
    ::close(cfg.slots_fd);
}

TEST_CASE("a fork server that stops answering is killed, not waited for") {
    watchdog dog(60s);
    const auto cfg = zygote_config(1);
    coproc::detail::zygote z(cfg);
    ::kill(z.pid(), SIGSTOP);
    const auto t0 = std::chrono::steady_clock::now();
    try {
        (void)z.spawn(0);
        FAIL_CHECK("a stopped fork server answered");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == ETIMEDOUT);
        CHECK(contains(e.what(), "did not answer; it was killed"));
    }
    CHECK(std::chrono::steady_clock::now() - t0 < coproc::detail::zygote::answer_timeout + 5s);
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(z.pid()), &info, WEXITED | WNOWAIT) == 0);
    CHECK(info.si_code == CLD_KILLED); // dead (stop() reaps it)
    CHECK(info.si_status == SIGKILL);
}

// ------------------------------------------------------------------ bad frames and results

namespace {

namespace cd = coproc::detail;

/// Calls of fake_invoke, counted in memory the workers share with the test (made before the
/// pool).
std::atomic<int>* g_fake_calls = nullptr;
void fake_invoke(cd::erased_fn, cd::reader&, cd::writer& out, std::uint64_t, std::uint64_t& done) {
    g_fake_calls->fetch_add(1);
    out(49);
    done = 1;
}

/// A copy of a real entry in writable memory, its invoker swapped for fake_invoke.
cd::task_entry g_writable_entry{};

/// Looks like an entry (magic, signature) and lies in read-only data, but its invoker is not
/// code.
alignas(cd::task_entry) constexpr std::uint64_t g_readonly_entry[5] = {
    cd::entry_magic, cd::task_entry_for<int (*)(int)>.signature, 0x1000, 0, 0};

/// The digest the pool seals for an entry at `e` (read as bytes, as a worker reads it).
std::uint64_t digest_at(const void* e) {
    cd::task_entry copy;
    std::memcpy(&copy, e, sizeof copy);
    return cd::entry_digest(copy);
}

/// A task frame for tasks::square(7) with task id `id`, its MAC not yet sealed.
std::vector<char> square_frame(std::uint64_t id) {
    auto j = cd::make_job(
        &tasks::square,
        [](cd::writer& w) {
            w(7);
            return 1;
        },
        nullptr, 0);
    std::memcpy(j->frame.data() + offsetof(cd::frame_header, id), &id, sizeof id);
    return std::move(j->frame);
}

/// A worker forked from the test itself with the task key `key`, serving the frames the test
/// writes straight on its socket (as a forger holding a worker's socket would).
class bare_worker {
  public:
    explicit bare_worker(const cd::task_key& key) {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        cd::worker_config cfg;
        cfg.parent = ::getpid();
        cfg.close_fds = {sv[0]};
        cfg.segments = cd::mapped_segments();
        cfg.key = key;
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0)
            cd::worker_main(sv[1], &slot_, cfg);
        ::close(sv[1]);
        fd_ = sv[0];
    }
    ~bare_worker() {
        ::close(fd_); // EOF: the worker exits
        ::waitpid(pid_, nullptr, 0);
    }
    bare_worker(const bare_worker&) = delete;

    pid_t pid() const { return pid_; }
    bool alive() const { return ::waitpid(pid_, nullptr, WNOHANG) == 0; }

    /// Writes `frame`; returns "ok" for a result, "coproc::error: <what>" for an error.
    std::string run(const std::vector<char>& frame) {
        if (::send(fd_, frame.data(), frame.size(), MSG_NOSIGNAL) !=
            static_cast<ssize_t>(frame.size()))
            return "send failed";
        const auto until = std::chrono::steady_clock::now() + 10s;
        for (;;) {
            if (auto f = dec_.next()) {
                if (f->kind == cd::frame_kind::result)
                    return "ok";
                try {
                    std::rethrow_exception(cd::decode_exception(f->payload, "task"));
                } catch (const coproc::error& e) {
                    return std::string("coproc::error: ") + e.what();
                } catch (const std::exception& e) {
                    return std::string("other: ") + e.what();
                }
            }
            pollfd p{fd_, POLLIN, 0};
            if (std::chrono::steady_clock::now() > until || ::poll(&p, 1, 100) < 0)
                return "no reply within 10 s";
            if (!(p.revents & (POLLIN | POLLHUP)))
                continue;
            const auto area = dec_.write_area();
            const ssize_t n = ::read(fd_, area.data(), area.size());
            if (n <= 0)
                return "the worker closed its socket";
            dec_.commit(static_cast<std::size_t>(n));
        }
    }

  private:
    pid_t pid_ = -1;
    int fd_ = -1;
    cd::worker_slot slot_;
    cd::frame_decoder dec_;
};

} // namespace

TEST_CASE("siphash24 matches the reference vectors of the SipHash paper") {
    const cd::task_key key{0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull}; // bytes 00..0f
    unsigned char msg[16];
    for (int i = 0; i < 16; ++i)
        msg[i] = static_cast<unsigned char>(i);
    CHECK(cd::siphash24(key, msg, 0) == 0x726fdb47dd0e0e31ull);
    CHECK(cd::siphash24(key, msg, 1) == 0x74f839c593dc67fdull);
    CHECK(cd::siphash24(key, msg, 7) == 0xab0200f58b01d137ull);
    CHECK(cd::siphash24(key, msg, 8) == 0x93f5f5799a932462ull);
    CHECK(cd::siphash24(key, msg, 15) == 0xa129ca6149be45e5ull); // the paper's Appendix A
}

TEST_CASE("a task frame with a flipped MAC or sealed with another pool's key is refused and the "
          "worker serves on") {
    watchdog dog(60s);
    const auto key = cd::task_key::random();
    bare_worker w(key);
    auto good = square_frame(1);
    cd::seal_task_frame(good, key);
    CHECK(w.run(good) == "ok");
    auto flipped = good;
    flipped[sizeof(cd::frame_header) + offsetof(cd::task_prefix, mac)] ^= 1;
    CHECK(contains(w.run(flipped), "coproc::error: task frame failed authentication"));
    auto other_pool = square_frame(2);
    cd::seal_task_frame(other_pool, cd::task_key::random());
    CHECK(contains(w.run(other_pool), "coproc::error: task frame failed authentication"));
    const auto unsealed = square_frame(3); // what a forger without the key can make
    CHECK(contains(w.run(unsealed), "coproc::error: task frame failed authentication"));
    CHECK(w.run(good) == "ok");
    CHECK(w.alive()); // the same worker answered all of them
}

TEST_CASE("a task entry outside read-only data, or whose invoker is not code, is refused and "
          "never called") {
    watchdog dog(60s);
    void* shared = ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(shared != MAP_FAILED);
    g_fake_calls = new (shared) std::atomic<int>(0);
    g_writable_entry = cd::task_entry_for<int (*)(int)>;
    g_writable_entry.invoke = &fake_invoke;
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });
    auto core = cd::pool_core::create(io.get_executor(), {.processes = 1});
    const auto pid = core->pids();
    // A valid entry's bytes copied into writable memory: never trusted, whatever its MAC.
    CHECK(contains(run_tampered(*core,
                                [](std::int64_t* p) {
                                    p[0] = cd::offset_of(&g_writable_entry);
                                    p[2] = static_cast<std::int64_t>(digest_at(&g_writable_entry));
                                }),
                   "coproc::error: unknown task function: its entry offset does not point into "
                   "read-only data"));
    // An entry in read-only data whose invoker points outside executable code.
    CHECK(contains(run_tampered(*core,
                                [](std::int64_t* p) {
                                    p[0] = cd::offset_of(g_readonly_entry);
                                    p[2] = static_cast<std::int64_t>(digest_at(g_readonly_entry));
                                }),
                   "coproc::error: unknown task function: its entry's invoker is not in "
                   "executable code"));
    CHECK(g_fake_calls->load() == 0);
    CHECK(run_tampered(*core, [](std::int64_t*) {}) == "ok");
    CHECK(core->pids() == pid); // the same worker answered all of them
    core->close();
    core->join();
    guard.reset();
    loop.join();
    ::munmap(shared, sizeof(std::atomic<int>));
}

TEST_CASE("a forged function id or signature is a clear error and the worker serves on") {
    watchdog dog(60s);
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });
    auto core = coproc::detail::pool_core::create(io.get_executor(), {.processes = 1});
    const auto pid = core->pids();
    // The entry digest disagrees with the entry's signature and invoker: the MAC fails.
    CHECK(contains(run_tampered(*core, [](std::int64_t* p) { p[2] ^= 1; }),
                   "coproc::error: task frame failed authentication"));
    // The function offset points at data, not code.
    CHECK(contains(run_tampered(*core, [](std::int64_t* p) { p[1] = p[0]; }),
                   "coproc::error: unknown task function: its offset is not in executable code"));
    // The entry offset points outside the program, or at something that is not an entry.
    CHECK(contains(run_tampered(*core, [](std::int64_t* p) { p[0] = std::int64_t{1} << 46; }),
                   "coproc::error: unknown task function"));
    CHECK(contains(run_tampered(*core, [](std::int64_t* p) { p[0] = p[1] & ~std::int64_t{7}; }),
                   "coproc::error: unknown task function"));
    CHECK(run_tampered(*core, [](std::int64_t*) {}) == "ok");
    CHECK(core->pids() == pid); // the same worker answered all of them
    core->close();
    core->join();
    guard.reset();
    loop.join();
}

COPROC_TEST_CASE("a result that cannot be decoded fails its call with an error naming the task") {
    coproc::pool pool(io.get_executor(), {.processes = 2});
    try {
        (void)co_await pool.apply(make_lopsided, 1);
        FAIL_CHECK("apply returned a value that cannot be decoded");
    } catch (const coproc::error& e) {
        CHECK(contains(e.what(), "the result of task "));
        CHECK(contains(e.what(), "lopsided (*)(int)"));
        CHECK(contains(e.what(), "could not be decoded"));
    }
    CHECK_THROWS_WITH_AS(co_await pool.map(make_lopsided, iota(10)),
                         doctest::Contains("could not be decoded"), coproc::error);
    auto g = pool.imap(make_lopsided, iota(3));
    CHECK_THROWS_WITH_AS(co_await g.next(), doctest::Contains("lopsided (*)(int)"), coproc::error);
    CHECK(co_await pool.apply(tasks::add, 1, 2) == 3);
    pool.close();
    co_await pool.async_join();
}

COPROC_TEST_CASE("an initializer that throws fails an awaited task with coproc::error") {
    coproc::pool pool(io.get_executor(), {.processes = 2, .initializer = throwing_init});
    CHECK_THROWS_AS(co_await pool.apply(tasks::add, 1, 2), coproc::error);
    CHECK_THROWS_AS(co_await pool.map(tasks::square, iota(5)), coproc::error);
    pool.terminate();
    co_await pool.async_join();
}

TEST_SUITE_END();
